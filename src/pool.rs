//! Keep-alive connections to one upstream, on hyper's low-level HTTP/1 client.
//!
//! Why not hyper-util's pooled `Client`: a bare hyper proxy in front of the same nginx upstream,
//! on one core, did 31k requests/s with it and 36-38k with this design (nginx: 38k). The legacy
//! client pays for generality bearward does not use (any connector, HTTP/2 negotiation,
//! per-request pool keys and waiters); here a connection is a
//! `SendRequest` handle whose connection task is spawned once, taken from a LIFO list and put
//! back the moment its response body has been read to the end.
//!
//! - a pooled connection whose request could not even be written (closed under us) is retried
//!   once on a fresh connection: the request never reached the upstream, so this is safe for
//!   any method;
//! - idle connections older than `idle_timeout` are closed when next looked at; at most
//!   `max_idle_connections` are kept;
//! - upgrades (101) take the connection out of the pool for good.

use crate::body::{self, Body, BoxError};
use crate::proxy::ProxyError;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Longest wait for a pooled connection to finish its previous exchange.
const READY_WAIT: Duration = Duration::from_millis(100);

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// The pool for one upstream.
pub struct Pool {
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    /// A pool for `host:port`.
    pub fn new(
        addr: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            addr,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn pop_idle(&self) -> Option<Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// A connection ready for a request, and whether it was reused.
    async fn checkout(&self) -> Result<(SendRequest<Body>, bool), ProxyError> {
        while let Some(mut idle) = self.pop_idle() {
            if idle.tx.is_closed() || idle.since.elapsed() > self.idle_timeout {
                continue;
            }
            // Checked in as soon as its body ended; the connection task may need one more turn
            // to be ready for the next request.
            if idle.tx.is_ready() {
                return Ok((idle.tx, true));
            }
            // Bounded: a connection that does not become ready soon is not worth waiting for.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, idle.tx.ready()).await {
                return Ok((idle.tx, true));
            }
        }
        self.connect().await.map(|tx| (tx, false))
    }

    async fn connect(&self) -> Result<SendRequest<Body>, ProxyError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(&self.addr),
        )
        .await
        {
            Err(_) => return Err(ProxyError::ConnectTimeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::ConnectTimeout)
            }
            Ok(Err(_)) => return Err(ProxyError::Unreachable),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ProxyError::Unreachable)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn checkin(&self, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Sends a request and waits for the response head. The response body hands the connection
    /// back to the pool when it has been read to the end.
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let (mut tx, reused) = self.checkout().await?;
        let resp = match tx.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Never written: the pooled connection had just closed. Once more, fresh.
                Some(req) if reused => {
                    tx = self.connect().await?;
                    tx.send_request(req)
                        .await
                        .map_err(|_| ProxyError::Unreachable)?
                }
                _ => return Err(ProxyError::Unreachable),
            },
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgrade.
            return Ok(resp.map(body::boxed));
        }
        let pool = self.clone();
        Ok(resp.map(|inner| {
            let done = inner.is_end_stream();
            let mut b = PooledBody {
                inner,
                tx: Some(tx),
                pool,
            };
            if done {
                b.release();
            }
            body::boxed(b)
        }))
    }
}

/// An upstream response body that returns its connection at the end.
struct PooledBody {
    inner: Incoming,
    tx: Option<SendRequest<Body>>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.checkin(tx);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body breaks the connection: it must not be reused.
            Poll::Ready(Some(Err(_))) => self.tx = None,
            _ => {}
        }
        r.map(|o| o.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
