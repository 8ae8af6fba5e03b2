//! Keep-alive connections to one upstream, and what happens to a request over them: which
//! connection carries it, when it is sent again, and when the connection goes back. The
//! exchange itself (head, body, response head, response body) is in [`super::exchange`].
//!
//! The exchange runs inside the request's own task: the request head is written, the request
//! body streamed and the response head read by the request's future; the response body reads
//! the socket as the client takes it. The wire format is in [`crate::upstream::wire`] (why not
//! hyper's client is said there). A connection is a socket (TLS over it for an `https`
//! upstream, [`crate::tls`]) plus its read buffer, taken from a LIFO list and put back the
//! moment its response has been read to the end.
//!
//! - a request reaches a pooled connection that died under us: retried once on a fresh
//!   connection when the upstream cannot have acted on it (its head could not be written), or
//!   when it is idempotent and bodiless (RFC 9110 9.2.2) and the connection closed before any
//!   byte of a response; anything else is a 502;
//! - a connection idle for more than [`PROBE_AFTER`] is checked for a close before reuse (one
//!   non-blocking read), so an upstream's own idle timeout costs no request; busy connections
//!   skip the check;
//! - an upstream that takes no request bytes, or sends no response body bytes, for its
//!   `request_timeout` loses the request (504 before the response head; after it, the client
//!   connection is closed);
//! - idle connections older than `idle_timeout` are closed when next looked at; at most
//!   `max_idle_connections` are kept; one made longer than `max_connection_age` ago is closed
//!   when its response ends, so names are resolved again and balancers place it anew, as is
//!   one that has carried `max_requests_per_connection`;
//! - an early response (before the request body was sent in full) is forwarded and its
//!   connection closed; a failed request body closes the connection;
//! - request trailers are not forwarded (RFC 9110 6.5.1 lets a proxy drop them; HTTP/2
//!   upstreams, `super::h2`, get them);
//! - upgrades (101) take the connection out of the pool for good;
//! - with several `endpoints`, each request goes to the next in rotation that is not out, over
//!   a connection of that endpoint's own pool; one that fails a connection is left out for
//!   `endpoint_fail_timeout` and the request tries the next (at most [`MAX_TRIES`] endpoints: a
//!   failed connection sent nothing); when all are out, the rotation takes them all, as
//!   Envoy's panic threshold does, rather than answering 502 until one comes back;
//! - with `balance = "least_request"`, the pick is of two endpoints at random, the one with
//!   fewer requests in flight ([`Lease`] counts them).

use super::exchange::{exchange, into_response, BodyState, Failure, UpstreamBody};
use crate::body::{self, Body};
use crate::config::{Balance, UpstreamConfig, MAX_ENDPOINTS};
use crate::telemetry::Metrics;
use crate::tls::{Stream, UpstreamTls};
use crate::upstream::wire::{self, Chunked, RequestFraming, ResponseFraming};
use crate::upstream::ProxyError;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Body as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A connection idle at least this long is checked for a close before it is reused.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(10);
/// Most endpoints one request tries to connect to: each failure costs up to `connect_timeout`.
const MAX_TRIES: usize = 3;

/// One upstream connection.
pub(super) struct Conn {
    /// The endpoint it goes to (an index into the pool's; at most 64 of them). A byte, so a
    /// connection, which every request moves about, is no larger for it.
    pub(super) endpoint: u8,
    pub(super) stream: Stream,
    /// Bytes read but not yet consumed. Empty whenever the connection is idle.
    pub(super) buf: BytesMut,
    pub(super) since: Instant,
    /// Requests it has carried to their end (`max_requests_per_connection`).
    pub(super) carried: u32,
    /// When it has lived `max_connection_age`: an `Instant` to compare with, so the checks
    /// cost no subtraction (about 70 instructions a request as durations).
    pub(super) retire_at: Instant,
}

/// The upstream side of an upgraded (101) exchange: the connection and any bytes the upstream
/// sent after its 101 head.
pub(crate) struct Upgraded {
    pub stream: Stream,
    pub leftover: Bytes,
}

/// One instance of an upstream (an `endpoints` entry, or the `url`'s host) and its idle
/// connections.
struct Endpoint {
    addr: String,
    /// Per connection worker ([`crate::worker::shard`]), as nginx's `keepalive` is
    /// per worker process: a connection opened on a worker is driven by its reactor, and
    /// taken up by another worker each of its wake-ups would cross threads.
    idle: Box<[Mutex<Vec<Conn>>]>,
    /// Until when (milliseconds after the pool was made) a failed connection keeps it out of
    /// the rotation; in when past.
    out_until: AtomicU64,
    /// Out of the rotation by its `health_check` ([`super::health`]) until checks pass again.
    unhealthy: AtomicBool,
    /// `balance = "least_request"`: requests in flight to it, each held by a [`Lease`].
    active: AtomicU32,
}

fn lock(idle: &Mutex<Vec<Conn>>) -> std::sync::MutexGuard<'_, Vec<Conn>> {
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The rotation's tiers, in order: the primaries that are in, else the backups that are in,
/// else every primary (all out: all are tried).
const TIERS: [(bool, bool); 3] = [(false, false), (true, false), (false, true)];

/// One request in flight to an endpoint of a `least_request` upstream: counted from its pick
/// until dropped, which is when its response body has been read to the end (or dropped) or
/// the request failed.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    endpoint: usize,
}

impl Lease {
    /// A lease on `endpoint`, when the upstream balances by requests in flight; else `None`,
    /// and nothing is counted.
    #[inline]
    pub(crate) fn new(pool: &Arc<Pool>, endpoint: usize) -> Option<Lease> {
        if !pool.least_request {
            return None;
        }
        pool.endpoints[endpoint]
            .active
            .fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            pool: pool.clone(),
            endpoint,
        })
    }

    /// The request went to another endpoint (its first failed, or answered in
    /// `retry_statuses`): the count follows it.
    pub(super) fn move_to(&mut self, endpoint: usize) {
        if endpoint != self.endpoint {
            let e = &self.pool.endpoints;
            e[endpoint].active.fetch_add(1, Ordering::Relaxed);
            e[self.endpoint].active.fetch_sub(1, Ordering::Relaxed);
            self.endpoint = endpoint;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.endpoints[self.endpoint]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection made now has lived `max_age`, cut by up to a tenth at random
/// ([`crate::timer::jittered`]): for HTTP/1 pool connections and HTTP/2 ones alike.
pub(super) fn retire_at(max_age: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(crate::timer::jittered(max_age))
        .unwrap_or(now)
}

/// A connection being found for a request, and whether it was reused: boxed.
type Checkout<'a> = Pin<Box<dyn Future<Output = Result<(Conn, bool), ProxyError>> + Send + 'a>>;

/// The pool for one upstream.
pub(crate) struct Pool {
    /// The upstream's name in the config: the label its broken responses are counted under.
    name: String,
    metrics: Arc<Metrics>,
    endpoints: Box<[Endpoint]>,
    /// The rotation's next endpoint.
    next: AtomicUsize,
    made: Instant,
    fail_timeout: Duration,
    /// For an `https` upstream.
    tls: Option<UpstreamTls>,
    /// `unix_socket`: where its one endpoint's connections go, in place of TCP.
    unix: Option<std::path::PathBuf>,
    /// The longest a new connection may take, TLS handshake included.
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_age: Duration,
    /// `max_requests_per_connection`.
    max_requests: u32,
    max_idle: usize,
    /// `retry_statuses`: answers that send a replayable request to the next endpoint.
    retry_statuses: Box<[http::StatusCode]>,
    /// Weights and backups, and each endpoint's current weight in the smooth weighted round
    /// robin; `None`: plain turns.
    balance: Option<(Balance, Mutex<Box<[i64]>>)>,
    /// `balance = "least_request"`.
    least_request: bool,
    /// Its weights differ: `least_request` runs the weighted rotation rather than two choices.
    unequal_weights: bool,
}

impl Pool {
    /// The pool for one configured upstream, idle connections kept apart for each of
    /// `workers`; its broken responses are counted in `metrics`.
    pub(crate) fn new(
        upstream: &UpstreamConfig,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            name: upstream.name.clone(),
            metrics,
            endpoints: upstream
                .endpoints
                .iter()
                .map(|addr| Endpoint {
                    addr: addr.clone(),
                    idle: (0..workers.max(1))
                        .map(|_| Mutex::new(Vec::new()))
                        .collect(),
                    out_until: AtomicU64::new(0),
                    unhealthy: AtomicBool::new(false),
                    active: AtomicU32::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            made: Instant::now(),
            fail_timeout: upstream.endpoint_fail_timeout,
            tls: upstream.tls.clone(),
            unix: upstream.unix_socket.clone(),
            connect_timeout: upstream.connect_timeout,
            idle_timeout: upstream.idle_timeout,
            max_age: upstream.max_connection_age,
            max_requests: upstream.max_requests_per_connection,
            max_idle: upstream.max_idle_connections,
            retry_statuses: upstream.retry_statuses.clone(),
            balance: upstream.balance.clone().map(|b| {
                let current = vec![0; b.weights.len()].into_boxed_slice();
                (b, Mutex::new(current))
            }),
            least_request: upstream.least_request,
            unequal_weights: upstream
                .balance
                .as_ref()
                .is_some_and(|b| b.weights.iter().any(|&w| w != b.weights[0])),
        })
    }

    /// Each endpoint as it stands, for the admin listener's `/status` (Envoy's `/clusters`):
    /// its address, whether it is a backup, how much longer a failed connection keeps it out,
    /// what its health check says, its requests in flight (`least_request` only: nothing else
    /// counts them), and its idle HTTP/1 connections.
    pub(crate) fn status(&self, health_checked: bool) -> Vec<serde_json::Value> {
        let now = self.now_ms();
        (0..self.endpoints.len())
            .map(|i| {
                let e = &self.endpoints[i];
                let out_ms = e.out_until.load(Ordering::Relaxed).saturating_sub(now);
                let unhealthy = e.unhealthy.load(Ordering::Relaxed);
                serde_json::json!({
                    "address": e.addr,
                    "backup": self.is_backup(i),
                    "in_rotation": !self.is_out(i, now),
                    "failed_out_for_seconds": (out_ms > 0).then(|| out_ms.div_ceil(1000)),
                    "healthy": health_checked.then_some(!unhealthy),
                    "requests_in_flight": self.least_request.then(|| e.active.load(Ordering::Relaxed)),
                    "idle_connections": e.idle.iter().map(|idle| lock(idle).len()).sum::<usize>(),
                })
            })
            .collect()
    }

    /// A response body broke off after its head went to the client, who sees the connection
    /// close. Logged as nginx logs "upstream prematurely closed connection", and counted.
    pub(super) fn aborted(
        &self,
        endpoint: usize,
        reason: &'static str,
        detail: &dyn std::fmt::Display,
    ) {
        let authority = &self.endpoints[endpoint].addr;
        tracing::warn!(upstream = %self.name, %authority, reason, error = %detail, "upstream response broke off mid-body");
        self.metrics.upstream_abort(&self.name, reason);
    }

    /// The calling worker's idle connections to `endpoint`.
    fn idle(&self, endpoint: usize) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        let idle = &self.endpoints[endpoint].idle;
        lock(&idle[crate::worker::shard() % idle.len()])
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.made.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_out(&self, endpoint: usize, now: u64) -> bool {
        let e = &self.endpoints[endpoint];
        e.out_until.load(Ordering::Relaxed) > now || e.unhealthy.load(Ordering::Relaxed)
    }

    /// An endpoint's address, as configured.
    pub(super) fn endpoint_addr(&self, endpoint: usize) -> &str {
        &self.endpoints[endpoint].addr
    }

    /// The health checks' verdict on an endpoint: out of the rotation (or back in).
    pub(super) fn set_unhealthy(&self, endpoint: usize, unhealthy: bool) {
        self.mark_unhealthy(endpoint, unhealthy);
        self.metrics
            .endpoint_health(&self.name, &self.endpoints[endpoint].addr, !unhealthy);
    }

    /// [`Pool::set_unhealthy`] without the gauge: a verdict carried over a reload.
    pub(super) fn mark_unhealthy(&self, endpoint: usize, unhealthy: bool) {
        self.endpoints[endpoint]
            .unhealthy
            .store(unhealthy, Ordering::Relaxed);
    }

    /// Has its `health_check` taken the endpoint out?
    pub(super) fn is_unhealthy(&self, endpoint: usize) -> bool {
        self.endpoints[endpoint].unhealthy.load(Ordering::Relaxed)
    }

    /// The metrics the pool counts into.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The endpoint for the next request: the rotation's next that is in, else the rotation's
    /// next (all out: all are tried).
    pub(crate) fn pick(&self) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        if self.least_request {
            return self.pick_least();
        }
        if let Some(balance) = &self.balance {
            let (Balance { weights, .. }, current) = balance;
            return self.pick_weighed(current, |e| i64::from(weights[e]));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = self.now_ms();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&e| !self.is_out(e, now))
            .unwrap_or(start)
    }

    /// [`Pool::pick`] with weights or backups: nginx's smooth weighted round robin over the
    /// primaries that are in (each gains its weight, the one with the most is taken and loses
    /// the sum), so one that is out gives its share to the others in proportion; over the
    /// backups, in turn, when no primary is in; when every endpoint is out, the primaries'.
    /// `weight` gives each endpoint's weight for this pick.
    fn pick_weighed(&self, current: &Mutex<Box<[i64]>>, weight: impl Fn(usize) -> i64) -> usize {
        let now = self.now_ms();
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for tier in TIERS {
            let mut sum = 0;
            let mut best: Option<usize> = None;
            for e in 0..self.endpoints.len() {
                if !self.in_tier(e, tier, now) {
                    continue;
                }
                let weight = weight(e);
                current[e] += weight;
                sum += weight;
                if best.is_none_or(|b| current[e] > current[b]) {
                    best = Some(e);
                }
            }
            if let Some(b) = best {
                current[b] -= sum;
                return b;
            }
        }
        0
    }

    /// [`Pool::pick`] with `balance = "least_request"`, over the first of the rotation's tiers
    /// that has an endpoint: two of its endpoints at random and the one with fewer requests in
    /// flight, the first on a tie (with two endpoints, the one with fewer, a tie to either at
    /// random); with unequal weights, the weighted rotation over each weight divided by one more
    /// than its endpoint's requests in flight (Envoy's least request, with its default bias).
    fn pick_least(&self) -> usize {
        let active = |e: usize| self.endpoints[e].active.load(Ordering::Relaxed);
        if let (true, Some((Balance { weights, .. }, current))) =
            (self.unequal_weights, &self.balance)
        {
            // Scaled so one request in flight moves a weight-1 endpoint's share.
            return self.pick_weighed(current, |e| {
                i64::from(weights[e]) * 1000 / (i64::from(active(e)) + 1)
            });
        }
        let now = self.now_ms();
        let mut candidates = [0u8; MAX_ENDPOINTS];
        for tier in TIERS {
            let mut k = 0;
            for e in 0..self.endpoints.len().min(MAX_ENDPOINTS) {
                if !self.in_tier(e, tier, now) {
                    continue;
                }
                candidates[k] = u8::try_from(e).unwrap_or(0);
                k += 1;
            }
            if k == 0 {
                continue;
            }
            let a = crate::timer::random_below(k);
            let b = (a + 1 + crate::timer::random_below(k.max(2) - 1)) % k;
            let (a, b) = (usize::from(candidates[a]), usize::from(candidates[b]));
            return if active(b) < active(a) { b } else { a };
        }
        0
    }

    /// Is `endpoint` in the rotation's tier `(backups, all)` (see [`TIERS`]) at `now`?
    fn in_tier(&self, endpoint: usize, (backups, all): (bool, bool), now: u64) -> bool {
        self.is_backup(endpoint) == backups && (all || !self.is_out(endpoint, now))
    }

    /// Is `endpoint` a backup?
    fn is_backup(&self, endpoint: usize) -> bool {
        self.balance
            .as_ref()
            .is_some_and(|(b, _)| b.backup[endpoint])
    }

    /// A connection failed: the endpoint is out of the rotation for `endpoint_fail_timeout`,
    /// said once as it goes out, and counted.
    fn failed(&self, endpoint: usize, error: &ProxyError) {
        let e = &self.endpoints[endpoint];
        let reason = error.reason();
        if self.take_out(endpoint) {
            tracing::warn!(upstream = %self.name, endpoint = %e.addr, reason, out_for = ?self.fail_timeout, "upstream endpoint failed a connection");
        }
        self.metrics
            .upstream_connect_failure(&self.name, &e.addr, reason);
    }

    /// An endpoint answered a status in `retry_statuses`: out for `endpoint_fail_timeout`, said
    /// once as it goes out.
    fn answered_badly(&self, endpoint: usize, resp: &wire::ResponseHead, then: &str) {
        if self.take_out(endpoint) {
            let e = &self.endpoints[endpoint];
            let status = resp.status.as_u16();
            tracing::warn!(upstream = %self.name, endpoint = %e.addr, status, out_for = ?self.fail_timeout, "upstream endpoint answered a status in retry_statuses; {then}");
        }
    }

    /// An answer in `retry_statuses` to a request that can go elsewhere: its endpoint goes out
    /// for `endpoint_fail_timeout` (as nginx counts it toward `max_fails`), the answer is dropped (its
    /// connection kept only when it had no body to read past), and a connection for the next
    /// endpoint is taken. Boxed: rare, and its future inline would grow every request's.
    fn answered_elsewhere<'a>(
        &'a self,
        conn: Conn,
        resp: &wire::ResponseHead,
        tried: &'a super::Tried,
    ) -> Checkout<'a> {
        let endpoint = usize::from(conn.endpoint);
        self.answered_badly(endpoint, resp, "the request goes to the next");
        self.metrics
            .upstream_retry(&self.name, &self.endpoints[endpoint].addr);
        if resp.keep_alive
            && matches!(
                resp.framing,
                ResponseFraming::Empty | ResponseFraming::Length(0)
            )
        {
            self.checkin(conn);
        }
        Box::pin(self.checkout(tried))
    }

    /// Out of the rotation for `endpoint_fail_timeout` from now; whether it was in until now.
    fn take_out(&self, endpoint: usize) -> bool {
        let now = self.now_ms();
        let until =
            now.saturating_add(u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX));
        self.endpoints[endpoint]
            .out_until
            .swap(until, Ordering::Relaxed)
            <= now
    }

    /// A connection for a request, and whether it was reused.
    async fn checkout(&self, tried: &super::Tried) -> Result<(Conn, bool), ProxyError> {
        let endpoint = self.pick();
        match self.idle_conn(endpoint) {
            Some(conn) => Ok((conn, true)),
            None => self.connect(endpoint, tried).await.map(|c| (c, false)),
        }
    }

    /// An idle connection to `endpoint` still fit for a request, if there is one. Apart from
    /// [`Pool::checkout`] so a request's own path takes it without a future of its own (a
    /// warm request never connects).
    fn idle_conn(&self, endpoint: usize) -> Option<Conn> {
        loop {
            let conn = self.idle(endpoint).pop()?;
            let now = Instant::now();
            let idle = now.duration_since(conn.since);
            if idle > self.idle_timeout
                || now >= conn.retire_at
                || (idle >= PROBE_AFTER && !conn.stream.still_open())
            {
                continue;
            }
            return Some(conn);
        }
    }

    /// The upstream's name in the config.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A new connection (TLS made, if any) to `endpoint`, within `connect_timeout`; a failure
    /// takes the endpoint out for `endpoint_fail_timeout`. The pool's connections and HTTP/2's
    /// (one per endpoint) are made here.
    pub(crate) async fn open_stream(&self, endpoint: usize) -> Result<Stream, ProxyError> {
        let opened = tokio::time::timeout(self.connect_timeout, self.open(endpoint, false))
            .await
            .unwrap_or(Err(ProxyError::ConnectTimeout));
        if let Err(e) = &opened {
            self.failed(endpoint, e);
        }
        opened
    }

    /// Each endpoint's requests in flight into their gauges (`least_request`).
    pub(super) fn export_in_flight(&self) {
        for e in &self.endpoints {
            let n = e.active.load(Ordering::Relaxed);
            self.metrics.endpoint_in_flight(&self.name, &e.addr, n);
        }
    }

    /// How many endpoints the upstream has.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The connection workers it keeps idle connections apart for.
    pub(crate) fn workers(&self) -> usize {
        self.endpoints.first().map_or(1, |e| e.idle.len())
    }

    /// [`Pool::connect_from`], boxed: a connect (a TLS handshake's state among it, and the
    /// walk over the endpoints) is rare on a warm pool, and its future inline would make every
    /// request's future, which hyper moves into place per request, that much larger.
    fn connect<'a>(
        &'a self,
        first: usize,
        tried: &'a super::Tried,
    ) -> Pin<Box<dyn Future<Output = Result<Conn, ProxyError>> + Send + 'a>> {
        Box::pin(self.connect_from(first, tried))
    }

    /// A new connection to `first`, else (it failed) to the next endpoints that are in, each
    /// within `connect_timeout`, at most [`MAX_TRIES`] in all.
    async fn connect_from(&self, first: usize, tried: &super::Tried) -> Result<Conn, ProxyError> {
        let mut last = ProxyError::Unreachable;
        for endpoint in self.to_try(first) {
            tried.set(endpoint);
            match self.open_stream(endpoint).await {
                Ok(stream) => {
                    let now = Instant::now();
                    return Ok(Conn {
                        endpoint: u8::try_from(endpoint).unwrap_or(u8::MAX),
                        stream,
                        buf: BytesMut::new(),
                        since: now,
                        carried: 0,
                        retire_at: retire_at(self.max_age),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The endpoints one request tries to connect to, in order: `first`, then the next ones
    /// still in (each is asked as the walk reaches it, so one that just failed is passed
    /// over), at most [`MAX_TRIES`] in all.
    pub(crate) fn to_try(&self, first: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.endpoints.len();
        // Primaries before backups: the walk from `first` twice, each time taking one kind.
        let kinds = [false, true]
            .into_iter()
            .take(if self.balance.is_some() { 2 } else { 1 });
        let walk = kinds.flat_map(move |backups| {
            (0..n)
                .map(move |i| (first + i) % n)
                .filter(move |&e| self.is_backup(e) == backups)
        });
        std::iter::once(first)
            .chain(walk.filter(move |&e| e != first && !self.is_out(e, self.now_ms())))
            .take(MAX_TRIES)
    }

    /// A new connection to `endpoint`, TLS made. A failed handshake is a warning for a
    /// request's connection; for a health check's (`quiet`), which fails every `interval`
    /// while it lasts, a debug line: the checks' own warning says when the endpoint goes out.
    pub(super) async fn open(&self, endpoint: usize, quiet: bool) -> Result<Stream, ProxyError> {
        let addr = &self.endpoints[endpoint].addr;
        if let Some(path) = &self.unix {
            // Plain HTTP only (`unix_socket` takes no TLS): nothing more to agree on.
            return match tokio::net::UnixStream::connect(path).await {
                Ok(s) => Ok(Stream::Unix(s)),
                Err(e) => {
                    tracing::debug!(upstream = %self.name, socket = %path.display(), error = %e, "connect to the upstream's socket failed");
                    Err(ProxyError::Unreachable)
                }
            };
        }
        let tcp = match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::ConnectTimeout)
            }
            Err(_) => return Err(ProxyError::Unreachable),
            Ok(s) => s,
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        tls.connect(tcp).await.map_err(|e| {
            if quiet {
                tracing::debug!(upstream = %self.name, authority = %addr, error = %e, "TLS handshake with the upstream failed (health check)");
            } else {
                tracing::warn!(upstream = %self.name, authority = %addr, error = %e, "TLS handshake with the upstream failed");
            }
            ProxyError::Tls
        })
    }

    /// Back to the pool, if the connection can carry another request: nothing unread in it,
    /// younger than `max_connection_age`, and short of `max_requests_per_connection`.
    pub(super) fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() || conn.stream.holds_unread() {
            return;
        }
        conn.carried = conn.carried.saturating_add(1);
        let now = Instant::now();
        if now >= conn.retire_at || conn.carried >= self.max_requests {
            return;
        }
        let mut idle = self.idle(usize::from(conn.endpoint));
        if idle.len() < self.max_idle {
            conn.since = now;
            idle.push(conn);
        }
    }

    /// Sends a request (origin-form, headers already cleaned by `forward::prepare_request`) and
    /// waits for the response head. The response body hands the connection back to the pool
    /// when it has been read to the end. With `upgrade`, a 101 answer comes with the upstream
    /// connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        rewrite: &wire::HeadRewrite,
        upgrade: bool,
        tried: &super::Tried,
        stall: Duration,
    ) -> Result<(Response<Body>, Option<Upgraded>), ProxyError> {
        let (parts, req_body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (head, framing) = wire::encode_head(
            &parts.method,
            target,
            &parts.headers,
            rewrite,
            req_body.is_end_stream(),
            req_body.size_hint().exact(),
        );
        let mut req_body = (framing != RequestFraming::Empty).then_some(req_body);
        let method = parts.method;
        // RFC 9110 9.2.2; a body already streamed cannot be sent twice.
        let replayable = req_body.is_none()
            && matches!(
                method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            );
        let first = self.pick();
        let mut lease = Lease::new(self, first);
        let (mut conn, mut reused) = match self.idle_conn(first) {
            Some(conn) => (conn, true),
            None => (self.connect(first, tried).await?, false),
        };
        // Fresh connections that failed the request on other endpoints (nginx's
        // `proxy_next_upstream error`): at most MAX_TRIES endpoints in all.
        let mut moved = 0;
        let resp = loop {
            tried.set(usize::from(conn.endpoint));
            if let Some(lease) = &mut lease {
                lease.move_to(usize::from(conn.endpoint));
            }
            let exchange = exchange(&mut conn, &head, &mut req_body, framing, &method, stall);
            let failed = match exchange.await {
                Ok(resp)
                    if !self.retry_statuses.is_empty()
                        && self.retry_statuses.contains(&resp.status) =>
                {
                    if replayable && moved + 1 < MAX_TRIES.min(self.endpoints.len()) {
                        moved += 1;
                        (conn, reused) = self.answered_elsewhere(conn, &resp, tried).await?;
                        continue;
                    }
                    // Its answer is the client's (a POST's, or the last try's); the instance
                    // is out all the same, as nginx counts it toward `max_fails`.
                    self.answered_badly(
                        usize::from(conn.endpoint),
                        &resp,
                        "the answer goes to the client",
                    );
                    break resp;
                }
                Ok(resp) => break resp,
                Err(Failure::Proxy(e)) => return Err(e),
                Err(f) => f,
            };
            // The body is taken only once the head is written, so it is still here.
            let again = match failed {
                Failure::NotSent => true,
                _ => replayable,
            };
            let endpoint = usize::from(conn.endpoint);
            let next = match (again, reused) {
                (false, _) => return Err(ProxyError::Unreachable),
                // A kept connection the upstream closed under us: a fresh one to the same.
                (true, true) => endpoint,
                // A fresh connection failed it: the instance is in trouble; another may not be.
                (true, false) if moved + 1 < MAX_TRIES.min(self.endpoints.len()) => {
                    moved += 1;
                    let name = &self.endpoints[endpoint].addr;
                    tracing::warn!(upstream = %self.name, endpoint = %name, "upstream endpoint closed a new connection without answering; the request goes to the next");
                    self.metrics.upstream_retry(&self.name, name);
                    let n = self.endpoints.len();
                    self.to_try(endpoint).nth(1).unwrap_or((endpoint + 1) % n)
                }
                (true, false) => return Err(ProxyError::Unreachable),
            };
            conn = self.connect(next, tried).await?;
            reused = false;
        };
        let state = match resp.framing {
            ResponseFraming::Upgrade if upgrade => {
                let upgraded = Upgraded {
                    stream: conn.stream,
                    leftover: conn.buf.freeze(),
                };
                return Ok((into_response(resp, body::empty()), Some(upgraded)));
            }
            ResponseFraming::Upgrade => {
                tracing::debug!("upstream answered 101 to a request that asked for no upgrade");
                return Err(ProxyError::BadResponse);
            }
            ResponseFraming::Empty | ResponseFraming::Length(0) => {
                if resp.keep_alive {
                    self.checkin(conn);
                }
                return Ok((into_response(resp, body::empty()), None));
            }
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(Chunked::default()),
            ResponseFraming::Close => BodyState::Close,
        };
        let body = UpstreamBody::new(conn, state, resp.keep_alive, self.clone(), stall, lease);
        Ok((into_response(resp, body::boxed(body)), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(lines: &str) -> UpstreamConfig {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\n{lines}\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"u\"\nauth = \"none\"\n"
        );
        let mut config = crate::config::Config::from_toml_str(&text, "t.toml").unwrap();
        config.upstreams.remove(0)
    }

    fn addrs_of(lines: &str) -> Vec<String> {
        upstream(lines).endpoints
    }

    #[test]
    fn an_address_without_a_port_connects_to_the_schemes() {
        let url = |u: &str| addrs_of(&format!("url = \"{u}\""));
        assert_eq!(url("http://backend.internal"), ["backend.internal:80"]);
        assert_eq!(url("https://backend.internal"), ["backend.internal:443"]);
        assert_eq!(url("http://[::1]"), ["[::1]:80"]);
        assert_eq!(url("http://127.0.0.1:3000"), ["127.0.0.1:3000"]);
        assert_eq!(url("https://127.0.0.1:8443"), ["127.0.0.1:8443"]);
        assert_eq!(
            addrs_of("url = \"https://api.internal\"\nendpoints = [\"10.0.0.1\", \"b.internal:8443\", \"[::1]\"]"),
            ["10.0.0.1:443", "b.internal:8443", "[::1]:443"]
        );
    }

    /// Weights spread each endpoint's share over the turn (nginx's order); a backup serves only
    /// while every primary is out, and a failed connection's walk takes primaries first.
    #[test]
    fn weights_share_the_rotation_and_backups_wait_for_the_primaries() {
        let weighted = upstream(
            "url = \"http://api.internal\"\nendpoints = [{ address = \"a:1\", weight = 3 }, \"b:1\", \"c:1\"]",
        );
        let pool = Pool::new(&weighted, Arc::new(Metrics::new()), 1);
        let picks = |n: usize| (0..n).map(|_| pool.pick()).collect::<Vec<_>>();
        assert_eq!(picks(10), [0, 1, 0, 2, 0, 0, 1, 0, 2, 0]);
        // One out: the others share its turns evenly (weights 1, 1).
        pool.failed(0, &ProxyError::Unreachable);
        let shares = picks(6);
        assert_eq!(shares.iter().filter(|&&e| e == 1).count(), 3, "{shares:?}");
        assert_eq!(shares.iter().filter(|&&e| e == 2).count(), 3, "{shares:?}");

        let with_backup = upstream(
            "url = \"http://api.internal\"\nendpoints = [\"a:1\", { address = \"z:1\", backup = true }, \"b:1\"]",
        );
        let pool = Pool::new(&with_backup, Arc::new(Metrics::new()), 1);
        let picks = |n: usize| (0..n).map(|_| pool.pick()).collect::<Vec<_>>();
        assert_eq!(picks(4), [0, 2, 0, 2]);
        assert_eq!(pool.to_try(0).collect::<Vec<_>>(), [0, 2, 1]);
        pool.failed(0, &ProxyError::Unreachable);
        assert_eq!(picks(4), [2, 2, 2, 2]);
        assert_eq!(pool.to_try(2).collect::<Vec<_>>(), [2, 1]);
        pool.failed(2, &ProxyError::Unreachable);
        assert_eq!(picks(2), [1, 1], "the backup, with every primary out");
        pool.failed(1, &ProxyError::Unreachable);
        let all_out = picks(4);
        assert!(
            all_out.contains(&0) && all_out.contains(&2),
            "all out: the primaries' turns {all_out:?}"
        );
        assert!(
            upstream("url = \"http://api.internal\"\nendpoints = [\"a:1\", \"b:1\"]")
                .balance
                .is_none()
        );
    }

    /// `least_request`: of two endpoints at random, the one with fewer requests in flight, so
    /// the busiest of three is never picked while the others have fewer; a lease that moves
    /// or drops moves or drops its count; backups wait for the primaries; unequal weights
    /// share by weight while idle and by weight over requests in flight when not.
    #[test]
    fn least_request_picks_the_endpoint_with_fewer_requests_in_flight() {
        let u = upstream(
            "url = \"http://api.internal\"\nendpoints = [\"a:1\", \"b:1\", \"c:1\"]\n\
             balance = \"least_request\"",
        );
        assert!(u.least_request);
        let pool = Pool::new(&u, Arc::new(Metrics::new()), 1);
        let count = |picks: &[usize], e: usize| picks.iter().filter(|&&p| p == e).count();
        let picks = |n: usize| (0..n).map(|_| pool.pick()).collect::<Vec<_>>();
        let idle = picks(600);
        for e in 0..3 {
            assert!(count(&idle, e) > 100, "idle: spread over all {idle:?}");
        }
        let held = [
            Lease::new(&pool, 0),
            Lease::new(&pool, 0),
            Lease::new(&pool, 1),
        ];
        assert!(held.iter().all(Option::is_some));
        let busy = picks(600);
        assert_eq!(count(&busy, 0), 0, "two in flight: never the pick");
        assert!(count(&busy, 2) > count(&busy, 1), "{busy:?}");
        let mut moved = Lease::new(&pool, 0).unwrap();
        moved.move_to(2);
        let active = |e: usize| pool.endpoints[e].active.load(Ordering::Relaxed);
        assert_eq!((active(0), active(1), active(2)), (2, 1, 1));
        drop(held);
        drop(moved);
        assert_eq!((active(0), active(1), active(2)), (0, 0, 0));
        assert!(
            count(&picks(300), 0) > 50,
            "back in the picks once its requests ended"
        );

        let with_backup = upstream(
            "url = \"http://api.internal\"\nendpoints = [\"a:1\", { address = \"z:1\", backup = true }, \"b:1\"]\n\
             balance = \"least_request\"",
        );
        let pool = Pool::new(&with_backup, Arc::new(Metrics::new()), 1);
        let _busy = [Lease::new(&pool, 0), Lease::new(&pool, 2)];
        let picks = (0..100).map(|_| pool.pick()).collect::<Vec<_>>();
        assert_eq!(
            count(&picks, 1),
            0,
            "the backup waits while a primary is in"
        );
        pool.failed(0, &ProxyError::Unreachable);
        pool.failed(2, &ProxyError::Unreachable);
        assert_eq!(pool.pick(), 1, "every primary out: the backup");

        let weighted = upstream(
            "url = \"http://api.internal\"\nendpoints = [{ address = \"a:1\", weight = 3 }, \"b:1\"]\n\
             balance = \"least_request\"",
        );
        let pool = Pool::new(&weighted, Arc::new(Metrics::new()), 1);
        let picks = |n: usize| (0..n).map(|_| pool.pick()).collect::<Vec<_>>();
        assert_eq!(count(&picks(400), 0), 300, "idle: by weight");
        let _held = [Lease::new(&pool, 0), Lease::new(&pool, 0)];
        assert_eq!(count(&picks(400), 0), 200, "3 over 3 against 1 over 1");

        let turns = Pool::new(
            &upstream("url = \"http://api.internal\"\nendpoints = [\"a:1\", \"b:1\"]"),
            Arc::new(Metrics::new()),
            1,
        );
        assert!(
            Lease::new(&turns, 0).is_none(),
            "round robin counts nothing"
        );
    }

    /// The rotation takes each endpoint in turn, skips one that failed until its time is up,
    /// and takes them all when all have failed.
    #[test]
    fn the_rotation_leaves_out_a_failed_endpoint_for_its_time() {
        let u = upstream(
            "url = \"http://api.internal\"\nendpoints = [\"a:1\", \"b:1\", \"c:1\"]\n\
             endpoint_fail_timeout = \"200ms\"",
        );
        let pool = Pool::new(&u, Arc::new(Metrics::new()), 1);
        let picks = |n: usize| (0..n).map(|_| pool.pick()).collect::<Vec<_>>();
        assert_eq!(picks(6), [0, 1, 2, 0, 1, 2]);
        pool.failed(1, &ProxyError::Unreachable);
        assert_eq!(picks(6), [0, 2, 2, 0, 2, 2]);
        pool.failed(0, &ProxyError::Unreachable);
        pool.failed(2, &ProxyError::ConnectTimeout);
        assert_eq!(picks(3), [0, 1, 2], "all out: all in turn");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(picks(3), [0, 1, 2]);
        let one = Pool::new(
            &upstream("url = \"http://api.internal\""),
            Arc::new(Metrics::new()),
            1,
        );
        one.failed(0, &ProxyError::Unreachable);
        assert_eq!(one.pick(), 0);
    }
}
