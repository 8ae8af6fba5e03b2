//! One HTTP/1.1 exchange over a pooled connection ([`super::pool`]): the request head written,
//! its body streamed while the response head is read (an upstream may answer early), interim
//! responses skipped, and the response body read from the socket as the client takes it, the
//! connection going back to the pool when the body ends cleanly.

use super::pool::{Conn, Pool};
use crate::body::{Body, BoxError};
use crate::timer::Stall;
use crate::tls::Stream;
use crate::upstream::wire::{self, Chunked, Decoded, Malformed, RequestFraming};
use crate::upstream::ProxyError;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most interim (1xx) responses before the final one.
const MAX_INTERIM: usize = 8;
/// Room made in a connection's read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
pub(super) enum Failure {
    /// The request head could not be written: the upstream cannot have acted on it.
    NotSent,
    /// The connection closed (or reset) before any byte of a response.
    NoResponse,
    Proxy(ProxyError),
}

impl From<Malformed> for Failure {
    fn from(m: Malformed) -> Failure {
        tracing::debug!(error = %m, "upstream response refused");
        Failure::Proxy(ProxyError::BadResponse)
    }
}

pub(super) fn into_response(head: wire::ResponseHead, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// Writes the request, streams its body and reads the final response head. An early response
/// (the upstream answered before the body was sent in full) ends the body and the connection.
pub(super) async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    req_body: &mut Option<Body>,
    framing: RequestFraming,
    method: &Method,
    stall_timeout: Duration,
) -> Result<wire::ResponseHead, Failure> {
    match send_all(&mut conn.stream, &mut &head[..], stall_timeout).await {
        Ok(()) => {}
        Err(WriteFailure::Stalled) => return Err(Failure::Proxy(ProxyError::Timeout)),
        Err(_) => return Err(Failure::NotSent),
    }
    let Some(req_body) = req_body.take() else {
        return read_head(&mut conn.stream, &mut conn.buf, method).await;
    };
    // The head is read while the body is written: the upstream may answer early.
    let buf = &mut conn.buf;
    match &mut conn.stream {
        Stream::Plain(s) => {
            let (rd, wr) = s.split();
            head_and_body(rd, wr, buf, req_body, framing, method, stall_timeout).await
        }
        Stream::Tls(s) => {
            let (rd, wr) = tokio::io::split(&mut **s);
            head_and_body(rd, wr, buf, req_body, framing, method, stall_timeout).await
        }
        Stream::Unix(s) => {
            let (rd, wr) = s.split();
            head_and_body(rd, wr, buf, req_body, framing, method, stall_timeout).await
        }
    }
}

async fn head_and_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: R,
    mut wr: W,
    buf: &mut BytesMut,
    req_body: Body,
    framing: RequestFraming,
    method: &Method,
    stall_timeout: Duration,
) -> Result<wire::ResponseHead, Failure> {
    let read = read_head(&mut rd, buf, method);
    let write = write_body(&mut wr, req_body, framing, stall_timeout);
    tokio::pin!(read, write);
    tokio::select! {
        biased;
        r = &mut read => {
            let mut resp = r?;
            resp.keep_alive = false;
            Ok(resp)
        }
        w = &mut write => match w {
            Ok(()) => read.await,
            // The client's body failed or stalled: nothing sensible can follow on this
            // connection.
            Err(WriteFailure::Client(e)) => Err(Failure::Proxy(e)),
            Err(WriteFailure::Stalled) => Err(Failure::Proxy(ProxyError::Timeout)),
            // The upstream stopped taking the body; it may still have answered (413, 401...).
            Err(WriteFailure::Io) => read.await.map(|mut resp| {
                resp.keep_alive = false;
                resp
            }),
        },
    }
}

async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<wire::ResponseHead, Failure> {
    let mut interim = 0;
    let mut got_any = false;
    loop {
        if !buf.is_empty() {
            match wire::parse_head(buf, method)? {
                Some(h) if h.is_interim() => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(Malformed("too many interim responses").into());
                    }
                    continue;
                }
                Some(h) => return Ok(h),
                None => {}
            }
        }
        buf.reserve(READ_CHUNK);
        let read = rd.read_buf(buf).await;
        // In TLS 1.3 the server checks a client certificate after the client's handshake is
        // done, so its refusal arrives here, as an alert, rather than from the handshake.
        if let Some(e) = read.as_ref().err().and_then(crate::tls::session_error) {
            tracing::warn!(error = %e, "the upstream ended the TLS session");
            return Err(Failure::Proxy(ProxyError::Tls));
        }
        match read {
            Ok(n) if n > 0 => got_any = true,
            _ if got_any => return Err(Failure::Proxy(ProxyError::Unreachable)),
            _ => return Err(Failure::NoResponse),
        }
    }
}

/// Why a write to the upstream (request head or body) failed.
enum WriteFailure {
    /// The client's body failed (`BodyTimeout` when it stalled) or broke its declared length.
    Client(ProxyError),
    /// Writing to the upstream failed.
    Io,
    /// The upstream took no bytes for `stall_timeout`.
    Stalled,
}

/// Writes all of `buf`, failing if the upstream takes nothing for `limit`. A write that can
/// go at once (the usual case) is tried first with no timer at all: making one cost ~470
/// instructions per request (benches/instructions.py).
async fn send_all<W: AsyncWrite + Unpin, B: Buf>(
    wr: &mut W,
    buf: &mut B,
    limit: Duration,
) -> Result<(), WriteFailure> {
    while buf.has_remaining() {
        let written = match wr.write_buf(buf).now_or_never() {
            Some(r) => r,
            None => tokio::time::timeout(limit, wr.write_buf(buf))
                .await
                .map_err(|_| WriteFailure::Stalled)?,
        };
        let n = written.map_err(|_| WriteFailure::Io)?;
        if n == 0 {
            return Err(WriteFailure::Io);
        }
    }
    // TLS may hold what was written until flushed; on a bare socket this is a no-op.
    let flushed = match wr.flush().now_or_never() {
        Some(r) => r,
        None => tokio::time::timeout(limit, wr.flush())
            .await
            .map_err(|_| WriteFailure::Stalled)?,
    };
    flushed.map_err(|_| WriteFailure::Io)
}

async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: Body,
    framing: RequestFraming,
    limit: Duration,
) -> Result<(), WriteFailure> {
    let broken = WriteFailure::Client(ProxyError::ClientBody);
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| WriteFailure::Client(ProxyError::of_client_body(e.as_ref())))?;
        // Trailers are dropped (see the module doc).
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Length(n) if sent > n => return Err(broken),
            RequestFraming::Chunked => {
                let size = format!("{:X}\r\n", data.len());
                let mut chunk = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
                send_all(wr, &mut chunk, limit).await?;
            }
            _ => send_all(wr, &mut data, limit).await?,
        }
    }
    match framing {
        RequestFraming::Length(n) if sent != n => Err(broken),
        RequestFraming::Chunked => send_all(wr, &mut &b"0\r\n\r\n"[..], limit).await,
        _ => Ok(()),
    }
}

pub(super) enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// An upstream response body, read from the connection as the client takes it. At its exact
/// end the connection goes back to the pool; dropped before that, it is closed. A pause longer
/// than the upstream's `request_timeout` breaks it (nginx's `proxy_read_timeout` counts the
/// same way); a client that reads slowly does not count, since the clock runs only while this
/// body waits on the upstream.
pub(super) struct UpstreamBody {
    conn: Option<Conn>,
    /// The endpoint `conn` goes to, for the log of a body that broke off.
    endpoint: u8,
    state: BodyState,
    keep_alive: bool,
    stall: Stall,
    pool: Arc<Pool>,
    /// `least_request`: the request is in flight until the body ends.
    lease: Option<super::pool::Lease>,
}

impl UpstreamBody {
    /// The body of a response read from `conn` as `state` says; the connection goes back to
    /// `pool` when the body ends cleanly and the upstream keeps connections alive.
    pub(super) fn new(
        conn: Conn,
        state: BodyState,
        keep_alive: bool,
        pool: Arc<Pool>,
        stall: Duration,
        lease: Option<super::pool::Lease>,
    ) -> Self {
        UpstreamBody {
            lease,
            endpoint: conn.endpoint,
            conn: Some(conn),
            state,
            keep_alive,
            stall: Stall::new(stall),
            pool,
        }
    }

    fn finish(&mut self) {
        self.state = BodyState::Done;
        self.lease = None;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(conn);
            }
        }
    }

    /// Reads more from the upstream: `Ready(Ok(0))` is the close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        conn.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let (data, ended) = match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    *left -= n as u64;
                    (Some(conn.buf.split_to(n).freeze()), *left == 0)
                }
                BodyState::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Decoded::Data(d)) => (Some(d), false),
                    Ok(Decoded::End) => (None, true),
                    Ok(Decoded::NeedMore) => (None, false),
                    Err(m) => {
                        this.conn = None;
                        this.pool
                            .aborted(usize::from(this.endpoint), "upstream_bad_chunk", &m);
                        return Poll::Ready(Some(Err(m.into())));
                    }
                },
                BodyState::Close if !conn.buf.is_empty() => {
                    (Some(conn.buf.split().freeze()), false)
                }
                BodyState::Length(_) | BodyState::Close => (None, false),
            };
            if ended {
                this.finish();
            }
            if let Some(d) = data {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if ended {
                return Poll::Ready(None);
            }
            let filled = this.poll_fill(cx);
            if this.stall.expired(cx, &filled) {
                this.conn = None;
                let e = "upstream response body paused past request_timeout";
                this.pool
                    .aborted(usize::from(this.endpoint), "upstream_body_timeout", &e);
                return Poll::Ready(Some(Err(e.into())));
            }
            match std::task::ready!(filled) {
                Ok(0) if matches!(this.state, BodyState::Close) => {
                    this.conn = None;
                    this.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    let e = "upstream closed mid-body";
                    this.pool
                        .aborted(usize::from(this.endpoint), "upstream_closed_mid_body", &e);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.pool
                        .aborted(usize::from(this.endpoint), "upstream_read_error", &e);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
