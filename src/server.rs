//! Listeners, the accept loop, the admin endpoints and graceful shutdown.

use crate::auth::Authenticator;
use crate::body::{self, Body};
use crate::config::{Config, ConfigError};
use crate::gateway::{ConnInfo, Gateway};
use crate::request::framing::Guarded;
use crate::request::watch::{Answered, Watch};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// The gateway in force. A reload builds a whole new [`Gateway`] from a validated config and
/// swaps it in at once; each request loads the snapshot once, so requests in flight finish on
/// the snapshot they started with, and keep-alive connections pick up the new one on their next
/// request.
pub struct Live {
    current: ArcSwap<Gateway>,
    /// Shared by every snapshot, so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// The config the listeners were built from.
    boot: Arc<Config>,
}

impl Live {
    /// The snapshot to use for one request.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Swaps in a new, already validated config. Issuers whose config did not change keep their
    /// keys and refresher.
    pub fn apply(&self, config: Config) {
        for (key, changed) in restart_only_changes(&self.boot, &config) {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the config file; takes effect after a restart"
                );
            }
        }
        let old = self.current();
        let auth = Authenticator::rebuild(&config, Some(&old.auth), self.metrics.clone());
        let routes = config.routes.routes().len();
        let next = Gateway::new(Arc::new(config), auth, self.metrics.clone());
        self.current.store(Arc::new(next));
        tracing::info!(routes, "config reloaded");
    }

    /// Reads, validates and applies a config file. An invalid file changes nothing; each of
    /// its problems is logged.
    pub fn reload_file(&self, path: &Path) -> Result<(), ConfigError> {
        match Config::load(path) {
            Ok(config) => {
                for w in &config.warnings {
                    tracing::warn!("{w}");
                }
                self.apply(config);
                self.metrics.reload(true);
                Ok(())
            }
            Err(e) => {
                match &e {
                    ConfigError::Read { .. } => {
                        tracing::error!("reload failed, keeping the running config: {e}")
                    }
                    ConfigError::Invalid(problems) => {
                        for p in problems {
                            tracing::error!("reload failed, keeping the running config: {p}");
                        }
                    }
                }
                self.metrics.reload(false);
                Err(e)
            }
        }
    }
}

/// Settings read once when the listeners are built.
fn restart_only_changes(a: &Config, b: &Config) -> [(&'static str, bool); 13] {
    let (a, b) = (&a.server, &b.server);
    [
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.http2", a.http2 != b.http2),
        (
            "server.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        ("server.max_headers", a.max_headers != b.max_headers),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        ("server.send_timeout", a.send_timeout != b.send_timeout),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
        ("server.log_format", a.log_format != b.log_format),
        (
            "server.worker_threads",
            a.worker_threads != b.worker_threads,
        ),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.max_requests_in_flight",
            a.max_requests_in_flight != b.max_requests_in_flight,
        ),
        (
            "server.http2_max_concurrent_streams",
            a.http2_max_concurrent_streams != b.http2_max_concurrent_streams,
        ),
    ]
}

/// Reloads when the file's content changes: polled every `every`, applied once the new content
/// has been the same for two polls in a row (editors and ConfigMap updates write in steps).
/// Polling the content, not inotify, also follows the symlink swaps Kubernetes uses. The TLS
/// files the running config names count as part of it: a renewed client certificate or CA
/// bundle (cert-manager, a mounted Secret) takes effect the same way, without a restart.
pub async fn watch_config(live: Arc<Live>, path: PathBuf, every: Duration) {
    let digest = |live: &Live| {
        let mut all = std::fs::read(&path).ok()?;
        for f in live.current().config.watched_files() {
            all.extend_from_slice(f.as_os_str().as_encoded_bytes());
            all.extend(std::fs::read(f).unwrap_or_default());
        }
        Some(crate::auth::sha256_bytes(&all))
    };
    let mut applied = digest(&live);
    let mut pending: Option<[u8; 32]> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = digest(&live);
        match (now, pending) {
            (Some(d), Some(p)) if d == p => {
                pending = None;
                if Some(d) != applied {
                    tracing::info!(file = %path.display(), "config file or its TLS files changed; reloading");
                    let _ = live.reload_file(&path);
                    // The new config may name other files.
                    applied = digest(&live);
                }
            }
            (Some(d), _) if Some(d) != applied => pending = Some(d),
            _ => pending = None,
        }
    }
}

/// Reloads on every SIGHUP.
pub async fn reload_on_sighup(live: Arc<Live>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by editing the file instead");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received; reloading");
        let _ = live.reload_file(&path);
    }
}

/// A bound, not yet running bearward.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    live: Arc<Live>,
}

impl Server {
    /// Binds the listeners of a gateway's config.
    pub async fn bind(gateway: Arc<Gateway>) -> io::Result<Server> {
        let config = gateway.config.clone();
        let listener = TcpListener::bind(config.server.listen).await?;
        let admin = match config.server.admin_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let live = Arc::new(Live {
            metrics: gateway.metrics.clone(),
            current: ArcSwap::new(gateway),
            boot: config,
        });
        Ok(Server {
            listener,
            admin,
            live,
        })
    }

    /// The reload handle.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// The proxy listener's address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The gateway in force now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.current()
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight requests up to
    /// `server.shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let config: Arc<Config> = self.live.boot.clone();
        let protocols = Arc::new(Protocols::new(&config));
        let metrics = self.live.metrics.clone();
        let (drain_signal, _) = watch::channel(false);
        // Every connection task holds a clone; recv() returns None once all have ended.
        let (alive, mut all_done) = mpsc::channel::<()>(1);
        let admin_task = self
            .admin
            .map(|admin| tokio::spawn(admin_loop(admin, self.live.clone())));
        let max_connections = connection_limit(&config);
        metrics.connections_max.set(max_connections as i64);
        let slots = Arc::new(Semaphore::new(max_connections));
        let in_flight = Arc::new(Semaphore::new(config.server.max_requests_in_flight));
        let mut last_warned: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            // A slot first, then accept: at the limit the listener is not polled, so new
            // connections wait in the kernel's backlog (nginx's worker_connections, Envoy's
            // downstream connection limit) instead of being accepted and starved.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics.connections_deferred.inc();
                    if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        last_warned = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            max_connections,
                            "max_connections are open; new connections wait in the listen backlog"
                        );
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                        _ = &mut shutdown => break,
                    }
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let drain = Drain { signal: drain_signal.subscribe(), _alive: alive.clone() };
                    let slot = Held::new(slot, &metrics.connections_open);
                    let conn = Conn { stream, peer, slot, in_flight: in_flight.clone() };
                    serve_connection(protocols.clone(), drain, conn, self.live.clone());
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: no new connections; draining");
        let _ = drain_signal.send(true);
        drop(alive);
        tokio::select! {
            _ = all_done.recv() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(config.server.shutdown_grace) => {
                tracing::warn!("grace period over; closing remaining connections");
            }
        }
        if let Some(t) = admin_task {
            t.abort();
        }
        Ok(())
    }
}

/// File descriptors kept for everything but client connections: the admin listener and its
/// connections, JWKS and discovery fetches, the config and TLS files, the log.
const RESERVED_FDS: u64 = 128;

/// The soft `RLIMIT_NOFILE`, read from `/proc` (no libc binding, no unsafe code); `None` where
/// there is no such file.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// `max_connections` when the config sets none: what the file-descriptor limit leaves after
/// [`RESERVED_FDS`], halved, since each client connection may hold an upstream connection too.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        None => 10_000,
        Some(n) => (n.min(20_000_000).saturating_sub(RESERVED_FDS) / 2).max(16) as usize,
    }
}

/// The connection limit in force, with a warning when the configured one cannot be reached
/// before the process runs out of file descriptors (accept then fails with EMFILE first).
fn connection_limit(config: &Config) -> usize {
    let nofile = open_files_limit();
    let fits = default_max_connections(nofile);
    match config.server.max_connections {
        None => fits,
        Some(n) => {
            if n > fits {
                tracing::warn!(
                    max_connections = n,
                    open_files_limit = nofile,
                    "max_connections is above what the file-descriptor limit allows \
                     (about {fits} with their upstream connections); raise LimitNOFILE or \
                     --ulimit nofile"
                );
            }
            n
        }
    }
}

/// A permit counted in a gauge while it is held: a connection slot or a request in flight.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> Held {
        gauge.inc();
        Held {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// An accepted connection and what bounds it.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Its `max_connections` slot, given back when the connection task ends.
    slot: Held,
    /// The listener's `max_requests_in_flight`.
    in_flight: Arc<Semaphore>,
}

/// The HTTP/1 and HTTP/2 server settings, built once.
struct Protocols {
    h1: http1::Builder,
    h2: Option<http2::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    send_timeout: Duration,
    max_header_bytes: usize,
}

/// `hyper::proto::h1::role::DEFAULT_MAX_HEADERS`, not exported.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

impl Protocols {
    fn new(config: &Config) -> Protocols {
        let mut h1 = http1::Builder::new();
        // header_read_timeout is enforced by h1guard, with one timer per connection.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(config.server.max_header_bytes.max(8192))
            .keep_alive(true);
        // hyper's own limit is 100, kept on the stack; setting any value makes it allocate and
        // fill a header index array of that size for every request it parses.
        if config.server.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(config.server.max_headers);
        }
        let h2 = config.server.http2.then(|| {
            let mut h2 = http2::Builder::new(TokioExecutor::new());
            // Set here even where they are h2's defaults, so the README's numbers are ours.
            // A client past max_concurrent_streams gets RST_STREAM(REFUSED_STREAM) for the extra
            // streams; one that resets more than 20 streams before bearward took them (HTTP/2
            // rapid reset, CVE-2023-44487), or makes bearward reset 1,024 of its streams for
            // protocol errors (CVE-2025-8671), gets GOAWAY(ENHANCE_YOUR_CALM).
            h2.timer(TokioTimer::new())
                .max_header_list_size(config.server.max_header_bytes as u32)
                .max_concurrent_streams(config.server.http2_max_concurrent_streams)
                .max_pending_accept_reset_streams(20)
                .max_local_error_reset_streams(1024)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            h2
        });
        Protocols {
            h1,
            h2,
            header_read_timeout: config.server.header_read_timeout,
            send_timeout: config.server.send_timeout,
            max_header_bytes: config.server.max_header_bytes,
        }
    }
}

/// A connection's view of shutdown: the signal to finish, and a handle whose drop tells the
/// server the connection is gone.
struct Drain {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
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

fn serve_connection(protocols: Arc<Protocols>, drain: Drain, conn: Conn, live: Arc<Live>) {
    let Conn {
        stream,
        peer,
        slot,
        in_flight,
    } = conn;
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let _slot = slot;
        let Drain { mut signal, _alive } = drain;
        // h2c with prior knowledge, if enabled and the client opens with the preface.
        let h2 = match &protocols.h2 {
            None => None,
            Some(h2) => {
                match tokio::time::timeout(protocols.header_read_timeout, is_h2(&stream)).await {
                    Ok(Ok(true)) => Some(h2),
                    Ok(Ok(false)) => None,
                    _ => return,
                }
            }
        };
        let result = match h2 {
            Some(h2) => {
                let watch = Watch::for_h2();
                let conn = h2.serve_connection(
                    TokioIo::new(stream),
                    gateway_service(&live, peer, Some(watch.clone()), in_flight),
                );
                let bounds = (protocols.header_read_timeout, protocols.send_timeout);
                until_done_or_idle(conn, &mut signal, |c| c.graceful_shutdown(), &watch, bounds)
                    .await
                    .unwrap_or(Ok(()))
            }
            None => {
                let (guarded, head_watch) = Guarded::new(
                    stream,
                    protocols.max_header_bytes,
                    protocols.header_read_timeout,
                    protocols.send_timeout,
                );
                let conn = protocols
                    .h1
                    .serve_connection(
                        TokioIo::new(guarded),
                        gateway_service(&live, peer, Some(head_watch), in_flight),
                    )
                    .with_upgrades();
                until_done(conn, &mut signal, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(e) = result {
            match refused_head(&e) {
                Some((status, reason)) => live.current().refused_head(peer, status, reason),
                None => tracing::debug!(error = %e, peer = %peer, "connection ended with an error"),
            }
        }
    });
}

/// A request refused before it reached the service: hyper's own answer to a head it cannot parse
/// (400), or that is over `max_header_bytes` or `max_headers` (431; 414 for a URI over 64 KiB),
/// or h1guard's header timer cutting off a request that had begun (recorded as 408, as nginx
/// logs it; nothing is sent). An idle keep-alive connection closed by the timer is no refusal.
fn refused_head(e: &hyper::Error) -> Option<(u16, &'static str)> {
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
    watch: Option<Watch>,
    in_flight: Arc<Semaphore>,
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
        watch,
        request_timer: Default::default(),
    });
    let live = live.clone();
    service_fn(move |req: Request<Incoming>| {
        // Counted as hyper hands the request over, before its future first runs: from here the
        // header timer must not count against the connection.
        let index = info.watch.as_ref().map(Watch::request_started);
        let gateway = live.current();
        let info = info.clone();
        // Taken before anything else is done with the request, so an overload cannot turn into
        // token checks, JWKS refetches or an upstream pile-up; held until the response body
        // has been sent.
        let held = in_flight
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Held::new(p, &live.metrics.requests_in_flight));
        async move {
            let Some(held) = held else {
                let resp = gateway.overloaded(req.method(), &info);
                return Ok(resp.map(|b| Answered::new(b, info.watch.clone())));
            };
            let resp = gateway.handle(req, &info, index).await;
            let watch = info.watch.clone();
            if let (Some(w), StatusCode::SWITCHING_PROTOCOLS) = (&watch, resp.status()) {
                w.upgraded();
            }
            Ok::<_, std::convert::Infallible>(resp.map(|b| Answered::new(b, watch).holding(held)))
        }
    })
}

/// Drives a connection to its end; when the server drains, asks it to finish gracefully
/// (in-flight requests complete, no new ones start) and keeps driving it.
async fn until_done<C: Future>(
    conn: C,
    signal: &mut watch::Receiver<bool>,
    graceful: fn(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = signal.changed() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// [`until_done`] for HTTP/2, which has neither the header timer nor h1guard's write path:
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
    activity: &Watch,
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

/// Admin connections open at once: enough for probes and scrapers, and a bound so that a
/// flood on the admin port cannot take the file descriptors the proxy needs.
const MAX_ADMIN_CONNECTIONS: usize = 64;

async fn admin_loop(listener: TcpListener, live: Arc<Live>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let live = live.clone();
        // The admin port gets the same slowloris bound as the main one. Its traffic is light, so
        // hyper's own per-request timer is fine here.
        let header_read_timeout = live.current().config.server.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = live.current();
                async move { Ok::<_, std::convert::Infallible>(admin(&gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(gateway: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match gateway.auth.readiness() {
            Ok(detail) => (StatusCode::OK, detail),
            Err(detail) => (StatusCode::SERVICE_UNAVAILABLE, detail),
        },
        "/metrics" => {
            gateway.auth.export_gauges();
            (StatusCode::OK, gateway.metrics.render())
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_room_for_upstream_sockets_and_the_rest() {
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(65536)), 32704);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(Some(u64::MAX)), 9_999_936);
        assert_eq!(default_max_connections(None), 10_000);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
