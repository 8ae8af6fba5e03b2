//! One client connection: HTTP/1 or HTTP/2 (sniffed by its preface), the per-request service
//! with its `max_requests_in_flight` place, and the connection-level bounds (header and send
//! timeouts, HTTP/2 idle and stream limits, graceful drain).

use super::proxy_protocol::{self, Refused};
use super::reload::Live;
use super::Held;
use crate::body::Body;
use crate::config::Config;
use crate::gateway::{ConnInfo, TlsInfo};
use crate::request::framing::Guarded;
use crate::request::ledger::{Answered, ConnLedger, InFlight};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// An accepted connection and what bounds it.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// Its `max_connections` slot, given back when the connection task ends.
    pub(super) slot: Held,
    /// The listener's `max_requests_in_flight`.
    pub(super) in_flight: InFlight,
    /// It came in on the decision listener.
    pub(super) decision: bool,
}

/// The HTTP/1 and HTTP/2 server settings, built once.
pub(super) struct Protocols {
    h1: http1::Builder,
    h2: Option<http2::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    send_timeout: Duration,
    max_header_bytes: usize,
    tls_handshake_timeout: Duration,
    /// `max_requests_per_connection` and `max_connection_age`: read at start, as the other
    /// `Listening` settings (a reload warns that a change needs a restart).
    connection_limits: Option<crate::config::ConnectionLimits>,
}

/// `hyper::proto::h1::role::DEFAULT_MAX_HEADERS`, not exported.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

impl Protocols {
    pub(super) fn new(config: &Config) -> Protocols {
        let mut h1 = http1::Builder::new();
        // header_read_timeout is enforced by request::framing, with one timer per connection.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(config.server.listening.max_header_bytes.max(8192))
            .keep_alive(true)
            // One buffer for the head and the body, written with one `write`: hyper's queue of
            // buffers for `writev` cost about 500 instructions of every answer (its VecDeque,
            // iovec and advance bookkeeping; benches/instructions.py: cached 29,327 -> 28,906,
            // 401 15,026 -> 14,510). The price is a copy of the body, and a connection in the
            // middle of a large answer holding one chunk more: 200 concurrent 1 MiB downloads
            // peaked at 27.2 MB of RSS instead of 24.0, at the same rate.
            .writev(false);
        // hyper's own limit is 100, kept on the stack; setting any value makes it allocate and
        // fill a header index array of that size for every request it parses.
        if config.server.listening.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(config.server.listening.max_headers);
        }
        let h2 = config.server.listening.http2.then(|| {
            let mut h2 = http2::Builder::new(TokioExecutor::new());
            // Set here even where they are h2's defaults, so the manual's numbers are ours.
            // A client past max_concurrent_streams gets RST_STREAM(REFUSED_STREAM) for the extra
            // streams; one that resets more than 20 streams before bearward took them (HTTP/2
            // rapid reset, CVE-2023-44487), or makes bearward reset 1,024 of its streams for
            // protocol errors (CVE-2025-8671), gets GOAWAY(ENHANCE_YOUR_CALM).
            h2.timer(TokioTimer::new())
                .max_header_list_size(config.server.listening.max_header_bytes as u32)
                .max_concurrent_streams(config.server.listening.http2_max_concurrent_streams)
                .max_pending_accept_reset_streams(20)
                .max_local_error_reset_streams(1024)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            h2
        });
        Protocols {
            h1,
            h2,
            header_read_timeout: config.server.listening.header_read_timeout,
            send_timeout: config.server.listening.send_timeout,
            max_header_bytes: config.server.listening.max_header_bytes,
            tls_handshake_timeout: config.server.tls_handshake_timeout,
            connection_limits: config.server.listening.connection_limits(),
        }
    }
}

/// A connection's view of shutdown: the signal to finish, and a handle whose drop tells the
/// server the connection is gone.
pub(super) struct Drain {
    pub(super) signal: watch::Receiver<bool>,
    pub(super) _alive: mpsc::Sender<()>,
}

/// The HTTP/2 client preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Does the connection open with the HTTP/2 preface? Peeks, so nothing is consumed: the HTTP/1
/// path then reads the socket directly. (hyper-util's auto builder decides the same way but
/// keeps a rewind buffer in every read for the connection's lifetime.)
async fn is_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: more is on its way (peek would return the same bytes at once).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(super) fn serve_connection(
    workers: &super::Workers,
    protocols: Arc<Protocols>,
    drain: Drain,
    conn: Conn,
    live: Arc<Live>,
) {
    let Conn {
        stream,
        peer,
        slot,
        in_flight,
        decision,
    } = conn;
    let _ = stream.set_nodelay(true);
    // The TLS settings and the PROXY protocol's balancers of the config in force when the
    // connection arrived (one load of it): a reload with a renewed certificate serves it to the
    // next connection. The decision listener is plain HTTP, and takes no PROXY header: the
    // ingress asking is on the same host or network.
    let (tls, balancer) = match decision {
        true => (None, false),
        false => {
            let server = &live.current().config.server;
            let balancer = crate::forward::is_trusted(&server.proxy_protocol_from, &peer);
            (server.tls.clone(), balancer)
        }
    };
    workers.serve(stream, move |stream, seat| async move {
        let _seat = seat;
        let _slot = slot;
        let (mut stream, mut peer) = (stream, peer);
        if balancer {
            // Boxed: the read's state would otherwise be room in every connection's task.
            let read = Box::pin(balancers_client(&mut stream, peer, &protocols, &live)).await;
            match read {
                Some(client) => peer = client,
                None => return,
            }
        }
        let Drain { mut signal, _alive } = drain;
        let result = match tls {
            None => {
                // h2c with prior knowledge, if enabled and the client opens with the preface.
                let h2 = match &protocols.h2 {
                    None => false,
                    Some(_) => {
                        match tokio::time::timeout(protocols.header_read_timeout, is_h2(&stream))
                            .await
                        {
                            Ok(Ok(h2)) => h2,
                            _ => return,
                        }
                    }
                };
                let io = Io {
                    peer,
                    tls: None,
                    h2,
                    decision,
                };
                serve_io(stream, io, &protocols, &live, &mut signal, in_flight).await
            }
            Some(tls) => {
                // Boxed, as HTTP/2 is in serve_io: the task of every connection is as large as
                // its largest state, and a plain connection parked between requests should not
                // carry room for rustls and its handshake.
                let served = Box::pin(async {
                    let (stream, info) = handshake(stream, &tls, &protocols, &live).await?;
                    let io = Io {
                        peer,
                        h2: info.alpn_h2 && protocols.h2.is_some(),
                        tls: Some(info),
                        decision,
                    };
                    Some(serve_io(stream, io, &protocols, &live, &mut signal, in_flight).await)
                })
                .await;
                match served {
                    Some(result) => result,
                    None => return,
                }
            }
        };
        if let Err(e) = result {
            match head_refusal(&e) {
                Some((status, reason)) => live.current().record_refused_head(peer, status, reason),
                None => tracing::debug!(error = %e, peer = %peer, "connection ended with an error"),
            }
        }
    });
}

/// The client a balancer's connection is for, from the PROXY header that opens it (taken off
/// the stream), or the peer itself for a `LOCAL` one; `None`: no valid header, close it.
async fn balancers_client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    protocols: &Protocols,
    live: &Live,
) -> Option<SocketAddr> {
    match proxy_protocol::read(stream, protocols.header_read_timeout).await {
        Ok(client) => {
            let outcome = if client.is_some() { "ok" } else { "local" };
            live.metrics.proxy_protocol_header(outcome);
            Some(client.unwrap_or(peer))
        }
        Err(refused) => {
            let reason = refused.reason();
            live.metrics.proxy_protocol_header(reason);
            if matches!(refused, Refused::Timeout | Refused::Closed) {
                tracing::debug!(peer = %peer, reason, "connection closed: no PROXY protocol header");
            } else {
                // A balancer not set to send the header (or not this version): every
                // connection it makes fails the same way, which the operator must hear of.
                tracing::warn!(peer = %peer, reason, "connection closed: its peer is in server.proxy_protocol_from, and it did not open with a PROXY protocol header");
            }
            None
        }
    }
}

/// What the connection's requests run on: the peer, TLS (if any), and the protocol chosen.
struct Io {
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    h2: bool,
    decision: bool,
}

/// The TLS handshake, bounded by `tls_handshake_timeout`, counted by outcome.
pub(super) async fn handshake(
    stream: TcpStream,
    tls: &crate::tls::ListenerTls,
    protocols: &Protocols,
    live: &Arc<Live>,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let metrics = &live.metrics;
    // The socket outlives the count of a failed handshake: once the client sees the close,
    // the outcome is in the metrics (connections run on worker threads, so the two would
    // otherwise race a scrape made right after the close).
    let mut accept = std::pin::pin!(acceptor.accept(stream).into_fallible());
    let outcome = tokio::time::timeout(protocols.tls_handshake_timeout, accept.as_mut()).await;
    match outcome {
        Ok(Ok(s)) => {
            let session = s.get_ref().1;
            let info = TlsInfo {
                alpn_h2: session.alpn_protocol() == Some(b"h2"),
                // A certificate is there only if it verified: rustls fails the handshake
                // otherwise, or (optional) takes none.
                client_cert: session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| crate::tls::thumbprint(c.as_ref())),
            };
            metrics.tls_handshake("ok");
            Some((s, info))
        }
        Ok(Err((e, stream))) => {
            let reason = crate::tls::handshake_failure(&e);
            metrics.tls_handshake(reason);
            tracing::debug!(error = %e, reason, "TLS handshake failed");
            drop(stream);
            None
        }
        Err(_) => {
            metrics.tls_handshake("timeout");
            None
        }
    }
}

/// What a client connection runs over: plain TCP or TLS over it.
trait ClientStream:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + crate::request::framing::Parkable
    + Unpin
    + Send
    + 'static
{
}

impl<T> ClientStream for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + crate::request::framing::Parkable
        + Unpin
        + Send
        + 'static
{
}

/// HTTP/2 or HTTP/1 over an established stream (plain or TLS) until it ends or drains.
async fn serve_io<I>(
    stream: I,
    io: Io,
    protocols: &Protocols,
    live: &Arc<Live>,
    signal: &mut watch::Receiver<bool>,
    in_flight: InFlight,
) -> Result<(), hyper::Error>
where
    I: ClientStream,
{
    let Io {
        peer,
        tls,
        h2,
        decision,
    } = io;
    // The connection's service, sharing `ledger` with the transport.
    let service = |ledger: &ConnLedger| {
        let limits = protocols.connection_limits;
        gateway_service(
            live,
            peer,
            tls,
            decision,
            Some(ledger.clone()),
            in_flight,
            limits,
        )
    };
    match protocols.h2.as_ref().filter(|_| h2) {
        Some(h2) => {
            let ledger = ConnLedger::for_h2();
            let conn = h2.serve_connection(TokioIo::new(stream), Boxed(service(&ledger)));
            let bounds = (protocols.header_read_timeout, protocols.send_timeout);
            // Boxed: an HTTP/2 connection's state is several KiB, and would otherwise be room
            // in every connection's task, HTTP/1 ones parked between requests included.
            Box::pin(until_done_or_idle(
                conn,
                signal,
                hyper::server::conn::http2::Connection::graceful_shutdown,
                &ledger,
                bounds,
            ))
            .await
            .unwrap_or(Ok(()))
        }
        None => {
            let (guarded, ledger) = Guarded::new(
                stream,
                protocols.max_header_bytes,
                protocols.header_read_timeout,
                protocols.send_timeout,
            );
            let parked = &live.metrics.connections_parked;
            serve_h1(
                &protocols.h1,
                guarded,
                service(&ledger),
                &ledger,
                signal,
                parked,
            )
            .await
        }
    }
}

/// HTTP/1 through hyper while the client sends, and without hyper while the connection idles:
/// when [`Guarded`] asks (see [`crate::request::framing::PARK_AFTER`]), the connection is taken
/// apart (`into_parts`: the socket, any unread bytes, the service), hyper's buffers and request
/// slot are dropped, and the socket alone waits for the client's next bytes; then a fresh hyper
/// connection takes over. What hyper keeps from one request to the next on a connection is only
/// its buffers: a park happens with every response flushed and nothing of a head read.
/// When the server drains, a busy connection finishes gracefully (in-flight requests complete,
/// no new ones start) and a parked one closes.
async fn serve_h1<I, S>(
    h1: &http1::Builder,
    mut io: Guarded<I>,
    mut service: S,
    ledger: &ConnLedger,
    signal: &mut watch::Receiver<bool>,
    parked_gauge: &prometheus_client::metrics::gauge::Gauge,
) -> Result<(), hyper::Error>
where
    I: ClientStream,
    S: hyper::service::HttpService<Incoming, ResBody = Answered<Body>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The drain future is polled once to register the task's waker, which stays registered;
    // after that a version check on a second receiver says when to poll it again (polling it
    // on every wake-up of a busy connection cost 300 instructions a request).
    let probe = signal.clone();
    let drain = signal.changed();
    let mut drain = std::pin::pin!(drain);
    let mut draining = false;
    let mut drain_polled = false;
    // A new connection waits for its first bytes parked too: one that never sends costs its
    // task and socket only.
    if !matches!(io.idle(&mut drain).await, Ok(true)) {
        return Ok(());
    }
    loop {
        // Boxed, so that while parked the task holds none of it.
        let mut conn = Box::pin(
            h1.serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let parked = std::future::poll_fn(|cx| {
            if !draining && (!drain_polled || probe.has_changed().unwrap_or(true)) {
                drain_polled = true;
                if drain.as_mut().poll(cx).is_ready() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            match conn.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending if !draining && ledger.take_park() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let Some(done) = parked {
            return done;
        }
        // Pending, so not upgraded: the parts are there.
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            return Ok(());
        };
        (io, service) = (parts.io.into_inner(), parts.service);
        io.unpark(parts.read_buf);
        parked_gauge.inc();
        let next = io.idle(&mut drain).await;
        parked_gauge.dec();
        if !matches!(next, Ok(true)) {
            return Ok(());
        }
    }
}

/// The service with each request's future boxed, for HTTP/2: hyper spawns every stream as a
/// task holding that future, and the gateway's is several KiB, which the spawn and tokio's task
/// stages then copied about on every request (~6% of the CPU time of an h2 load, `perf`).
/// HTTP/1 keeps it unboxed: hyper's dispatcher holds it in place, so a box there would only
/// add an allocation.
struct Boxed<S>(S);

impl<S, R> hyper::service::Service<R> for Boxed<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// A request refused before it reached the service: hyper's own answer to a head it cannot parse
/// (400), or that is over `max_header_bytes` or `max_headers` (431; 414 for a URI over 64 KiB),
/// or the framing guard's header timer cutting off a request that had begun (recorded as 408, as nginx
/// logs it; nothing is sent). An idle keep-alive connection closed by the timer is no refusal.
fn head_refusal(e: &hyper::Error) -> Option<(u16, &'static str)> {
    if e.is_parse_too_large() {
        // hyper has no accessor for the 414 case; its message is the only difference.
        let uri = e.to_string().contains("URI too long");
        return Some((if uri { 414 } else { 431 }, "head_too_large"));
    }
    if e.is_parse() && !e.is_parse_version_h2() {
        return Some((400, "malformed_request"));
    }
    let timeout = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<crate::request::framing::HeadTimeout>());
    match timeout {
        Some(t) if t.partial => Some((408, "head_timeout")),
        _ => None,
    }
}

/// The per-connection service: each request runs on the gateway snapshot current when it
/// arrives.
fn gateway_service(
    live: &Arc<Live>,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    decision: bool,
    ledger: Option<ConnLedger>,
    in_flight: InFlight,
    limits: Option<crate::config::ConnectionLimits>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Answered<Body>>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<Answered<Body>>, std::convert::Infallible>> + Send,
> + Send
       + 'static {
    let info = Arc::new(ConnInfo {
        peer,
        peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        ledger,
        request_timer: Default::default(),
        tls,
        decision,
    });
    // `max_requests_per_connection`, and when this connection's `max_connection_age` is up.
    let limits = limits.map(|l| {
        let now = std::time::Instant::now();
        let until = l
            .max_age
            .map(|age| now.checked_add(crate::timer::jittered(age)).unwrap_or(now));
        (l.max_requests, until)
    });
    let live = live.clone();
    service_fn(move |req: Request<Incoming>| {
        // Counted as hyper hands the request over, before its future first runs: from here the
        // header timer must not count against the connection.
        let index = info.ledger.as_ref().map(ConnLedger::request_started);
        // The connection's last request: HTTP/2 says GOAWAY now (this and the streams in
        // flight end first); HTTP/1 closes after this answer.
        let last = limits.is_some_and(|(max, until)| is_last(max, until, index));
        let h2 = last && req.version() == http::Version::HTTP_2;
        if h2 {
            if let Some(ledger) = &info.ledger {
                ledger.want_close();
            }
        }
        let gateway = live.current();
        let info = info.clone();
        // Taken before anything else is done with the request, so an overload cannot turn into
        // token checks, JWKS refetches or an upstream pile-up; held until the response body
        // has been sent.
        let place = in_flight.enter();
        async move {
            // The request path's future (6 KiB) made in its own allocation, so the one hyper
            // holds and moves (twice, as it takes it from the service) is this small wrapper.
            let handle = Box::into_pin(Box::write(
                Box::new_uninit(),
                gateway.handle(req, &info, index, place.is_some()),
            ));
            let mut resp = handle.await;
            if last && !h2 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            let ledger = info.ledger.clone();
            if let (Some(w), StatusCode::SWITCHING_PROTOCOLS) = (&ledger, resp.status()) {
                w.upgraded();
            }
            Ok::<_, std::convert::Infallible>(resp.map(|b| Answered::new(b, ledger).holding(place)))
        }
    })
}

/// Is the request with this index (`None`: not counted) the connection's last: the
/// `max_requests`th, or one past `until`?
fn is_last(max_requests: usize, until: Option<std::time::Instant>, index: Option<usize>) -> bool {
    index.is_some_and(|i| i.saturating_add(1) >= max_requests)
        || until.is_some_and(|t| std::time::Instant::now() >= t)
}

/// Drives an HTTP/2 connection to its end; when the server drains, asks it to finish
/// gracefully (in-flight streams complete, no new ones start) and keeps driving it, as it does
/// once the connection has started its last request (`max_requests_per_connection`,
/// `max_connection_age`). HTTP/2 has
/// neither the header timer nor the framing guard's write path:
/// - a connection with no stream in flight and none started for `idle` (the header timeout)
///   is closed gracefully (GOAWAY), as HTTP/1 keep-alive connections are by the header timer;
/// - a connection where some response body has waited longer than `send` (the send timeout)
///   for the client to open its flow-control window is closed at once (`None`), as HTTP/1
///   connections whose client stops reading are.
///
/// One timer per connection, ticking every `min(idle, send)`, so each bound acts within one
/// tick of its time.
async fn until_done_or_idle<C: Future>(
    conn: C,
    signal: &mut watch::Receiver<bool>,
    graceful: fn(Pin<&mut C>),
    activity: &ConnLedger,
    (idle, send): (Duration, Duration),
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let period = idle.min(send);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = activity.started();
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            _ = signal.changed() => break,
            () = activity.close_wanted() => {
                tracing::debug!("HTTP/2 connection carried its last request: GOAWAY");
                break;
            }
            _ = ticks.tick() => {
                if activity.client_stalled(send) {
                    tracing::debug!("HTTP/2 client took no data past send_timeout: connection closed");
                    return None;
                }
                let started = activity.started();
                if started != seen || activity.busy() {
                    seen = started;
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() + period > idle {
                    tracing::debug!("idle HTTP/2 connection closed");
                    break;
                }
            }
        }
    }
    graceful(conn.as_mut());
    Some(conn.await)
}
