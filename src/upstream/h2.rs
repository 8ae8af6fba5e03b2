//! HTTP/2 to an upstream (`protocol = "h2c"` or `"h2"`): hyper's HTTP/2 client over one
//! multiplexed connection per endpoint, made on first use and made again when it closes.
//!
//! - With several `endpoints`, each request takes the pool's rotation's next endpoint and that
//!   endpoint's connection, so gRPC calls spread over the instances rather than all riding one
//!   connection to one of them (what a single connection behind an L4 balancer does). A
//!   connection that cannot be made takes its endpoint out (`endpoint_fail_timeout`) and the
//!   request goes on to the next, as the pool's own connections do ([`Pool::to_try`]).
//!
//! - The upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` and flow control are h2's: streams past
//!   the limit wait in h2 for a slot; a body is read from the client only as fast as the
//!   upstream's window opens, so a large upload is streamed, never gathered.
//! - A connection made longer than `max_connection_age` ago takes no new stream: the next
//!   request makes a new one (the name resolved again), and the old one's streams run to
//!   their end before it closes. So does one that has been given
//!   `max_requests_per_connection` streams.
//! - A connection idle for `h2_keepalive_interval` is PINGed; one that does not answer within
//!   `h2_keepalive_timeout` is closed and the next request makes a new one.
//! - GOAWAY: streams the upstream took go on to their end. A request the upstream says it never
//!   processed (a stream above GOAWAY's last stream id, a `REFUSED_STREAM` reset, or one the
//!   closing connection never sent) is sent again on a new connection, at most
//!   [`MAX_ATTEMPTS`] times in all (RFC 9113 8.7), with what was read of its body if that was
//!   at most [`REPLAY_BYTES`]. Any other failure is a 502: the upstream may have acted on it.
//! - Request and response trailers pass (gRPC's status travels in them).

use super::pool::{Lease, Pool};
use super::{HeadRewrite, ProxyError};
use crate::body::{self, Body, BoxError};
use crate::config::UpstreamConfig;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Sends of one request, the first included, when the upstream refuses it unprocessed.
const MAX_ATTEMPTS: usize = 3;
/// A request body is kept for a second send only up to this size; past it, a refused stream is
/// a 502 (the bytes already went to the refusing upstream and were dropped there).
pub(crate) const REPLAY_BYTES: usize = 64 * 1024;

/// The HTTP/2 connections to one upstream, one per endpoint.
pub(crate) struct H2Client {
    pool: Arc<Pool>,
    /// `http` or `https`: the `:scheme` the upstream is told.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    keepalive: Option<std::time::Duration>,
    keepalive_timeout: std::time::Duration,
    max_age: std::time::Duration,
    /// `max_requests_per_connection`: streams one connection is given.
    max_streams: u32,
    /// Each endpoint's connection for each connection worker (Envoy's workers keep their own
    /// too): endpoint by endpoint in the pool's order, the workers' slots within each. A
    /// connection shared by the workers would have every stream cross threads twice, and one
    /// worker doing the framing of all of them.
    slots: Box<[Slot]>,
    workers: usize,
}

/// One endpoint's connection.
struct Slot {
    /// The connection in use.
    sender: Mutex<Option<InUse>>,
    /// Held while a connection is being made, so a burst of requests makes one, not many.
    connecting: tokio::sync::Mutex<()>,
    /// Connections attempted so far, and how the last attempt failed (if it did): requests that
    /// queued behind a failing attempt share its answer instead of each waiting out a
    /// `connect_timeout` of its own in turn.
    attempts: std::sync::atomic::AtomicU64,
    last_failure: Mutex<Option<ProxyError>>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            attempts: std::sync::atomic::AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// The connection in use for one more stream, if it is open, short of its age and was
    /// given fewer than `max_streams`.
    fn cached(&self, max_streams: u32) -> Option<(u64, SendRequest<ReplayBody>)> {
        let mut slot = lock(&self.sender);
        let c = slot.as_mut()?;
        if c.sender.is_closed()
            || std::time::Instant::now() >= c.retire_at
            || c.given >= max_streams
        {
            return None;
        }
        c.given += 1;
        Some((c.id, c.sender.clone()))
    }
}

/// An endpoint's connection in use: its number, its sender, when it has lived its
/// (jittered) `max_connection_age`, as an HTTP/1 pool connection keeps it, and the streams it
/// was given (`max_requests_per_connection`).
struct InUse {
    id: u64,
    sender: SendRequest<ReplayBody>,
    retire_at: std::time::Instant,
    given: u32,
}

/// A connection for one request: its endpoint, its number there, and its sender.
type Picked = (usize, u64, SendRequest<ReplayBody>);

impl H2Client {
    pub(crate) fn new(config: &UpstreamConfig, pool: Arc<Pool>) -> H2Client {
        let workers = pool.workers();
        H2Client {
            slots: (0..pool.endpoint_count() * workers)
                .map(|_| Slot::new())
                .collect(),
            workers,
            pool,
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            keepalive: config.h2_keepalive_interval,
            keepalive_timeout: config.h2_keepalive_timeout,
            max_age: config.max_connection_age,
            max_streams: config.max_requests_per_connection,
        }
    }

    /// The calling worker's connection to `endpoint`.
    fn slot(&self, endpoint: usize) -> &Slot {
        &self.slots[endpoint * self.workers + crate::worker::shard() % self.workers]
    }

    /// A live connection for the next request: the rotation's next endpoint's, made if there
    /// is none, else (it cannot be made) the next endpoints' that are in.
    async fn connection(&self, tried: &super::Tried) -> Result<Picked, ProxyError> {
        let mut last = ProxyError::Unreachable;
        for endpoint in self.pool.to_try(self.pool.pick()) {
            tried.set(endpoint);
            match self.endpoint_connection(endpoint).await {
                Ok((id, sender)) => return Ok((endpoint, id, sender)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `endpoint`'s live connection and its number, made if there is none.
    async fn endpoint_connection(
        &self,
        endpoint: usize,
    ) -> Result<(u64, SendRequest<ReplayBody>), ProxyError> {
        use std::sync::atomic::Ordering;
        let slot = self.slot(endpoint);
        if let Some(s) = slot.cached(self.max_streams) {
            return Ok(s);
        }
        let seen = slot.attempts.load(Ordering::Acquire);
        let _making = slot.connecting.lock().await;
        if let Some(s) = slot.cached(self.max_streams) {
            return Ok(s);
        }
        if slot.attempts.load(Ordering::Acquire) != seen {
            if let Some(e) = *lock(&slot.last_failure) {
                return Err(e);
            }
        }
        let id = slot.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let made = self.connect(endpoint).await;
        *lock(&slot.last_failure) = made.as_ref().err().copied();
        let sender = made?;
        *lock(&slot.sender) = Some(InUse {
            id,
            sender: sender.clone(),
            retire_at: super::pool::retire_at(self.max_age),
            given: 1,
        });
        Ok((id, sender))
    }

    async fn connect(&self, endpoint: usize) -> Result<SendRequest<ReplayBody>, ProxyError> {
        let stream = self.pool.open_stream(endpoint).await?;
        if self.scheme == http::uri::Scheme::HTTPS && !stream.alpn_h2() {
            tracing::warn!(upstream = %self.pool.name(), "the upstream did not agree to h2 in ALPN");
            return Err(ProxyError::Tls);
        }
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .adaptive_window(true)
            .max_header_list_size(64 * 1024);
        let (sender, conn) = builder.handshake(TokioIo::new(stream)).await.map_err(|e| {
            tracing::warn!(upstream = %self.pool.name(), error = %e, "HTTP/2 handshake with the upstream failed");
            ProxyError::Unreachable
        })?;
        let name = self.pool.name().to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %name, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Stops handing out `endpoint`'s connection `id` (closed, or going away): the next
    /// request there makes a new one. Streams still running on it finish there.
    fn forget(&self, endpoint: usize, id: u64) {
        let mut slot = lock(&self.slot(endpoint).sender);
        if slot.as_ref().is_some_and(|c| c.id == id) {
            *slot = None;
        }
    }

    /// Sends a request (headers already cleaned by `forward::prepare_request`) and waits for
    /// the response head.
    pub(crate) async fn send(
        &self,
        req: Request<Body>,
        rewrite: &HeadRewrite,
        tried: &super::Tried,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, req_body) = req.into_parts();
        rewrite.apply(&mut parts.headers);
        // `:authority` is what HTTP/1 would have sent as Host (the client's, or the upstream's
        // with `pass_host_header = false`).
        let authority = rewrite
            .host
            .as_ref()
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(authority);
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = http::Uri::from_parts(uri).map_err(|_| ProxyError::BadResponse)?;
        parts.version = http::Version::HTTP_2;
        // gRPC requires it of clients (RFC 9113 8.2.2 allows only this TE in HTTP/2); the
        // client sent it to bearward, where it was stripped with the other hop-by-hop headers.
        if is_grpc(&parts.headers) {
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let shared = Arc::new(Mutex::new(Recorded {
            body: req_body,
            frames: Vec::new(),
            bytes: 0,
            overflowed: false,
        }));
        let head = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let mut next = Some(Request::from_parts(
            parts,
            ReplayBody {
                shared: shared.clone(),
                at: 0,
            },
        ));
        for attempt in 1..=MAX_ATTEMPTS {
            let req = match next.take() {
                Some(r) => r,
                None => {
                    if lock(&shared).overflowed {
                        return Err(ProxyError::Unreachable);
                    }
                    let mut r = Request::new(ReplayBody {
                        shared: shared.clone(),
                        at: 0,
                    });
                    *r.method_mut() = head.0.clone();
                    *r.uri_mut() = head.1.clone();
                    *r.headers_mut() = head.2.clone();
                    *r.version_mut() = http::Version::HTTP_2;
                    r
                }
            };
            let (endpoint, id, mut sender) = self.connection(tried).await?;
            let lease = Lease::new(&self.pool, endpoint);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(match lease {
                        None => resp.map(body::boxed),
                        Some(lease) => resp.map(|body| {
                            body::boxed(Leased {
                                body,
                                lease: Some(lease),
                            })
                        }),
                    })
                }
                Err(mut e) => {
                    let unsent = e.take_message();
                    let unprocessed = unsent.is_some() || refused(e.error());
                    tracing::debug!(upstream = %self.pool.name(), attempt, error = %e.error(), unprocessed, "HTTP/2 upstream request failed");
                    // A refused stream alone leaves the connection usable; anything else
                    // (GOAWAY, a closed or broken connection) retires it.
                    if !is_refused_stream(e.error()) {
                        self.forget(endpoint, id);
                    }
                    if !unprocessed {
                        let err = body_error(e.error()).unwrap_or(ProxyError::Unreachable);
                        if err == ProxyError::Unreachable {
                            tracing::warn!(upstream = %self.pool.name(), error = %e.error(), "HTTP/2 upstream request failed; the upstream may have processed it, so it is not sent again");
                        }
                        return Err(err);
                    }
                    next = unsent;
                }
            }
        }
        tracing::warn!(upstream = %self.pool.name(), attempts = MAX_ATTEMPTS, "HTTP/2 upstream refused the request every time");
        Err(ProxyError::Unreachable)
    }
}

pin_project_lite::pin_project! {
    /// A response body of a `least_request` upstream: its stream is in flight until it ends.
    struct Leased<B> {
        #[pin]
        body: B,
        lease: Option<Lease>,
    }
}

impl<B: http_body::Body> http_body::Body for Leased<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            *this.lease = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Is this a gRPC request (`content-type: application/grpc` or `application/grpc+...`)?
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The h2 error behind a hyper error, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = err.source();
    }
    None
}

/// A `REFUSED_STREAM` reset from the upstream: this stream only, the connection is fine.
fn is_refused_stream(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|h2| {
        h2.is_reset() && h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

/// Did the upstream say it did not process the stream: a stream above a GOAWAY's last stream
/// id, or `REFUSED_STREAM` (RFC 9113 8.7)?
fn refused(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|h2| h2.is_remote() && h2.is_go_away()) || is_refused_stream(e)
}

/// The client body's own failure (stalled, too large, broken), if that is what ended the
/// exchange.
fn body_error(e: &hyper::Error) -> Option<ProxyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<super::BodyStalled>() {
            return Some(ProxyError::BodyTimeout);
        }
        if err.is::<super::BodyTooLarge>() {
            return Some(ProxyError::BodyTooLarge);
        }
        source = err.source();
    }
    e.is_user().then_some(ProxyError::ClientBody)
}

/// What was read of a request body, kept (up to [`REPLAY_BYTES`]) for a second send.
struct Recorded {
    body: Body,
    frames: Vec<Recording>,
    bytes: usize,
    /// More than [`REPLAY_BYTES`] was read: no second send.
    overflowed: bool,
}

enum Recording {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// A request body that records what it hands to hyper, so a refused stream can be sent again:
/// each send reads the recording from its start, then the client's body where the last one left
/// off.
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<Recorded>>,
    /// Frames of the recording this send has had.
    at: usize,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let at = self.at;
        let shared = self.shared.clone();
        let mut r = lock(&shared);
        if let Some(f) = r.frames.get(at) {
            self.at += 1;
            return Poll::Ready(Some(Ok(match f {
                Recording::Data(d) => Frame::data(d.clone()),
                Recording::Trailers(t) => Frame::trailers(t.clone()),
            })));
        }
        let polled = Pin::new(&mut r.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if !r.overflowed {
                let n = frame.data_ref().map_or(0, Bytes::len);
                r.bytes += n;
                if r.bytes > REPLAY_BYTES {
                    r.overflowed = true;
                    r.frames = Vec::new();
                } else {
                    // Empty DATA frames carry nothing to replay, and keeping them would let a
                    // client grow the recording without sending a byte.
                    let kept = match (frame.data_ref(), frame.trailers_ref()) {
                        (Some(d), _) if !d.is_empty() => Recording::Data(d.clone()),
                        (None, Some(t)) => Recording::Trailers(t.clone()),
                        _ => return polled,
                    };
                    r.frames.push(kept);
                    self.at += 1;
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let r = lock(&self.shared);
        self.at >= r.frames.len() && r.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let r = lock(&self.shared);
        if r.frames.is_empty() && self.at == 0 {
            r.body.size_hint()
        } else {
            http_body::SizeHint::default()
        }
    }
}
