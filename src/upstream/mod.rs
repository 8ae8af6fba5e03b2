//! The upstream side, one subsystem behind one entry point, [`Upstreams::send`]: a pool of
//! keep-alive connections per upstream ([`pool`]), the HTTP/1.1 exchange over them written for
//! measured reasons ([`wire`]: framing checked exactly, heads written without a `HeaderMap`
//! copy), HTTP/2 over one multiplexed connection for `protocol = "h2c"`/`"h2"` upstreams
//! ([`h2`], hyper's client: gRPC), TLS to `https` upstreams (through [`crate::tls`]), and how a
//! forwarded request fails ([`error`]).
//! The request body is watched on its way up ([`NotifyEnd`]): `body_read_timeout` and
//! `max_body_bytes` hold while it streams.

mod error;
mod exchange;
mod h2;
mod health;
pub(crate) mod pool;
mod tunnel;
pub mod wire;

pub use error::{BodyStalled, BodyTooLarge, ProxyError};
pub use h2::is_grpc;
pub use wire::HeadRewrite;

use crate::body::{self, Body};
use crate::config::{Config, UpstreamConfig};
use crate::telemetry::Metrics;
use http::{Request, Response};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use pool::Pool;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// What a route asks of its requests' exchanges.
#[derive(Debug, Clone, Copy)]
pub struct RouteLimits {
    /// The largest request body sent; `None`: no limit.
    pub max_body: Option<u64>,
    /// The route's `request_timeout`; `None`: the upstream's.
    pub request_timeout: Option<Duration>,
}

/// The endpoint a request went to last (the one whose answer, or failure, it got), for the
/// access log: set by the pool and the HTTP/2 client as they pick one.
#[derive(Debug)]
pub struct Tried(std::sync::atomic::AtomicU8);

impl Tried {
    pub fn new() -> Tried {
        Tried(std::sync::atomic::AtomicU8::new(u8::MAX))
    }

    pub(crate) fn set(&self, endpoint: usize) {
        let e = u8::try_from(endpoint).unwrap_or(u8::MAX);
        self.0.store(e, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<usize> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            u8::MAX => None,
            e => Some(usize::from(e)),
        }
    }
}

impl Default for Tried {
    fn default() -> Tried {
        Tried::new()
    }
}

/// One connection pool per upstream, built from the config.
pub struct Upstreams {
    clients: Vec<UpstreamClient>,
    body_read_timeout: Duration,
}

struct UpstreamClient {
    config: UpstreamConfig,
    /// `max_requests`: a place for each request in flight, and the gauge that counts them.
    limit: Option<(
        Arc<tokio::sync::Semaphore>,
        prometheus_client::metrics::gauge::Gauge,
    )>,
    pool: Arc<Pool>,
    /// `protocol = "h2c"` or `"h2"`: the multiplexed connection, made over `pool`'s sockets.
    h2: Option<h2::H2Client>,
}

impl Upstreams {
    /// Builds the pools. No connection is made until the first request.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Upstreams {
        let workers = crate::worker::count(config.server.listening.worker_threads);
        let clients = config
            .upstreams
            .iter()
            .map(|u| {
                let pool = Pool::new(u, metrics.clone(), workers);
                UpstreamClient {
                    limit: u.max_requests.map(|(n, _)| {
                        let gauge = metrics.upstream_in_flight(&u.name);
                        (Arc::new(tokio::sync::Semaphore::new(n)), gauge)
                    }),
                    config: u.clone(),
                    h2: (u.protocol != crate::config::Protocol::Http1)
                        .then(|| h2::H2Client::new(u, pool.clone())),
                    pool,
                }
            })
            .collect();
        Upstreams {
            clients,
            body_read_timeout: config.server.body_read_timeout,
        }
    }

    /// Every upstream and its endpoints as they stand, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        self.clients
            .iter()
            .map(|u| {
                let c = &u.config;
                serde_json::json!({
                    "name": c.name,
                    "url": format!("{}://{}", c.scheme, c.authority),
                    "protocol": match c.protocol {
                        crate::config::Protocol::Http1 => "http1",
                        crate::config::Protocol::H2c => "h2c",
                        crate::config::Protocol::H2 => "h2",
                    },
                    "endpoints": u.pool.status(c.health_check.is_some()),
                })
            })
            .collect()
    }

    /// Starts the upstreams' `health_check` tasks, which end when these upstreams are dropped
    /// (a reload's replacement, once its last request is done). The serving process calls it;
    /// `explain` and other one-off users of a gateway do not.
    pub fn start_health_checks(&self) {
        for up in &self.clients {
            if let Some(check) = &up.config.health_check {
                health::spawn(&up.pool, check.clone());
            }
        }
    }

    /// Takes the health checks' verdicts from `old` for each upstream of the same name, the
    /// same endpoints and a `health_check` in both (before [`Upstreams::start_health_checks`]).
    pub(crate) fn carry_health_of(&self, old: &Upstreams) {
        for up in self
            .clients
            .iter()
            .filter(|u| u.config.health_check.is_some())
        {
            let same = old.clients.iter().find(|o| {
                o.config.name == up.config.name
                    && o.config.endpoints == up.config.endpoints
                    && o.config.health_check.is_some()
            });
            if let Some(o) = same {
                for i in 0..up.pool.endpoint_count() {
                    up.pool.mark_unhealthy(i, o.pool.is_unhealthy(i));
                }
            }
        }
    }

    /// Sets the scrape-time gauges of the upstreams: each endpoint's requests in flight, for
    /// the upstreams that balance by them.
    pub(crate) fn export_gauges(&self) {
        for up in self.clients.iter().filter(|u| u.config.least_request) {
            up.pool.export_in_flight();
        }
    }

    /// Upstream config by index (as routes refer to it).
    pub fn config(&self, idx: usize) -> &UpstreamConfig {
        &self.clients[idx].config
    }

    /// Sends `req` (already rewritten by [`crate::forward::prepare_request`]) and waits for the response head.
    /// Returns the response and the time to its head.
    pub async fn send(
        &self,
        idx: usize,
        mut req: Request<Body>,
        rewrite: &HeadRewrite,
        timer: &RequestTimer,
        limits: RouteLimits,
        tried: &Tried,
    ) -> Result<(Response<Body>, Duration), ProxyError> {
        let RouteLimits {
            max_body,
            request_timeout,
        } = limits;
        let up = &self.clients[idx];
        let start = Instant::now();
        // A route's own request_timeout, else the upstream's.
        let request_timeout = request_timeout.unwrap_or(up.config.request_timeout);
        // Boxed, and only for an upstream with `max_requests`: the others pay one branch.
        let place = match &up.limit {
            None => None,
            Some(limit) => Some(Box::pin(wait_for_place(limit, &up.config)).await?),
        };
        // The upstream's time starts once the request has a place; a client's gRPC deadline
        // counts the wait for one too.
        let sent = match place {
            Some(_) => Instant::now(),
            None => start,
        };
        // gRPC's deadline (`grpc-timeout`) caps the wait: past it the client has given up. Only
        // HTTP/2 upstreams carry gRPC, so HTTP/1 requests skip the lookup.
        let deadline = up.h2.as_ref().and_then(|_| grpc_timeout(req.headers()));
        let client_upgrade =
            (rewrite.upgrade && up.h2.is_none()).then(|| hyper::upgrade::on(&mut req));
        // request_timeout counts from the end of the request body, so a long upload is not cut
        // off by it: the upstream cannot answer before it has the whole body. Until then the
        // body itself is bounded: no pause longer than body_read_timeout.
        let (req, body_done) = if req.body().is_end_stream() {
            (req, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let req = req.map(|inner| {
                body::boxed(NotifyEnd {
                    inner,
                    tx: Some(tx),
                    stall: crate::timer::Stall::new(self.body_read_timeout),
                    left: max_body,
                })
            });
            (req, Some(rx))
        };
        let upgrade = client_upgrade.is_some();
        let fut = async {
            match &up.h2 {
                // Boxed: HTTP/2 upstreams' state would otherwise size every HTTP/1 request's
                // future too (hyper moves it into place once a request).
                Some(h2) => Box::pin(h2.send(req, rewrite, tried))
                    .await
                    .map(|r| (r, None)),
                None => {
                    up.pool
                        .send(req, rewrite, upgrade, tried, request_timeout)
                        .await
                }
            }
        };
        tokio::pin!(fut);
        // A stalled body fails `fut` itself, with `BodyTimeout` (the pool reads the cause off
        // the body's error), and drops the half-sent request: its connection is not reused.
        let early = match body_done {
            Some(done) => tokio::select! {
                r = &mut fut => Some(r),
                _ = done => None,
            },
            None => None,
        };
        let result = match early {
            Some(r) => r,
            None => {
                let timeout = match deadline {
                    // The deadline counts from the request's start, request_timeout from here.
                    Some(d) => d
                        .saturating_sub(start.elapsed())
                        .clamp(Duration::from_millis(1), request_timeout),
                    None => request_timeout,
                };
                timer.run(timeout, fut).await.ok_or(ProxyError::Timeout)?
            }
        };
        let elapsed = sent.elapsed();
        let (resp, upgraded) = result?;
        // The place is given back when the response body ends (or, upgraded, now).
        let resp = match place {
            Some(place) if upgraded.is_none() => resp.map(|inner| {
                body::boxed(Placed {
                    inner,
                    _place: place,
                })
            }),
            _ => resp,
        };
        if let (Some(mut upstream), Some(client_upgrade)) = (upgraded, client_upgrade) {
            let idle = up.config.tunnel_idle_timeout;
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Ok(client) = client_upgrade.await {
                    let mut client = TokioIo::new(client);
                    // What the upstream sent right after its 101 belongs to the new protocol.
                    if client.write_all(&upstream.leftover).await.is_ok() {
                        tunnel::tunnel(&mut client, &mut upstream.stream, idle).await;
                    }
                }
            });
        }
        Ok((resp, elapsed))
    }
}

/// A request's place among an upstream's `max_requests`; given back when dropped.
struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A place among `max_requests`, waited for in arrival order up to `queue_timeout`.
async fn wait_for_place(
    (limit, gauge): &(
        Arc<tokio::sync::Semaphore>,
        prometheus_client::metrics::gauge::Gauge,
    ),
    config: &UpstreamConfig,
) -> Result<Place, ProxyError> {
    let queue = config.max_requests.map_or(Duration::ZERO, |(_, q)| q);
    let permit = match limit.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) if queue.is_zero() => return Err(ProxyError::Overloaded),
        Err(_) => tokio::time::timeout(queue, limit.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(ProxyError::Overloaded)?,
    };
    gauge.inc();
    Ok(Place {
        _permit: permit,
        gauge: gauge.clone(),
    })
}

/// A response body that holds its request's place among `max_requests` until it ends.
struct Placed {
    inner: Body,
    _place: Place,
}

impl http_body::Body for Placed {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, `H` hours to
/// `n` nanoseconds); `None` when absent or malformed.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A connection's `request_timeout` timer, kept from one request to the next (see
/// [`crate::timer`] for why). HTTP/1 runs one exchange at a time; concurrent h2 streams that
/// find the timer taken make their own.
#[derive(Default)]
pub struct RequestTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl RequestTimer {
    /// Runs `fut` for at most `timeout`; `None` when the time ran out first.
    pub async fn run<F: Future>(&self, timeout: Duration, fut: F) -> Option<F::Output> {
        let mut kept = self.slot().take();
        crate::timer::rearm(&mut kept, timeout);
        let mut sleep = kept.expect("rearm makes the timer");
        let mut fut = std::pin::pin!(fut);
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await;
        *self.slot() = Some(sleep);
        out
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<tokio::time::Sleep>>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request body that says when it has ended (sent in full, failed or dropped), and fails with
/// [`BodyStalled`] when the client sends nothing for `body_read_timeout` while it is being
/// waited for (nginx's `client_body_timeout`: time the upstream spends not reading does not
/// count).
pub(crate) struct NotifyEnd {
    inner: Body,
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    stall: crate::timer::Stall,
    /// Bytes the body may still bring (`max_body_bytes`); `None`: no limit.
    left: Option<u64>,
}

impl NotifyEnd {
    /// `inner` under the bounds a body on its way upstream has (no pause past `pause`, at most
    /// `max` bytes), for a phase that reads it whole before forwarding it (an `mcp` route's).
    pub(crate) fn bounded(inner: Body, pause: Duration, max: u64) -> NotifyEnd {
        // Nobody waits for the end: the reader itself sees it.
        let (tx, _) = tokio::sync::oneshot::channel();
        NotifyEnd {
            inner,
            tx: Some(tx),
            stall: crate::timer::Stall::new(pause),
            left: Some(max),
        }
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl http_body::Body for NotifyEnd {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // A body without a declared length (chunked, or h2) is counted as it comes: the byte
        // past the limit fails it, and what went before never makes a whole request upstream.
        if let (Some(left), Poll::Ready(Some(Ok(frame)))) = (&mut self.left, &r) {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(n) {
                Some(l) => *left = l,
                None => {
                    self.end();
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
            }
        }
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.end(),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        if self.tx.is_some() && self.stall.expired(cx, &r) {
            self.end();
            return Poll::Ready(Some(Err(Box::new(BodyStalled))));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
