//! The byte tunnel of an upgraded (WebSocket) connection, bounded by `tunnel_idle_timeout`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Copies an upgraded connection both ways until both sides have closed, or until no byte has
/// gone either way for `idle` (`tunnel_idle_timeout`): past the 101 nothing else bounds it, and
/// a silent tunnel would hold two sockets for good. Each side's reads mark the shared clock;
/// a watchdog sleeps until the earliest moment the tunnel could be idle, so a busy tunnel
/// wakes it about once per `idle`.
pub(crate) async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let mut a = Marked {
        io: a,
        start,
        last: &last,
    };
    let mut b = Marked {
        io: b,
        start,
        last: &last,
    };
    let watchdog = async {
        loop {
            let since = start.elapsed().saturating_sub(Duration::from_millis(
                last.load(std::sync::atomic::Ordering::Relaxed),
            ));
            if since >= idle {
                tracing::debug!(idle = ?idle, "closing an idle upgraded connection");
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        () = watchdog => {}
    }
}

/// One side of a tunnel: each read that brings bytes notes the time (ms after `start`).
struct Marked<'a, T> {
    io: &'a mut T,
    start: tokio::time::Instant,
    last: &'a std::sync::atomic::AtomicU64,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Marked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.start.elapsed().as_millis() as u64;
            self.last.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Marked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
