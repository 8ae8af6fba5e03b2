//! Logging setup and request metrics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// `log_format`
#[derive(Debug, serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides the default `info`), with
/// bearward's own levels adjustable while it runs ([`set_log_levels`], the admin listener's
/// `/logging`). Colours only when stderr is a terminal.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| "info".to_owned());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new(&base));
    // A log line that cannot be written is dropped. By default tracing-subscriber reports
    // such a failure with `eprintln!`, which panics when stderr itself is the broken sink (a
    // closed pipe, a restarted journald stream): every logged request would then fail.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_LEVELS.set(LogLevels {
            handle,
            state: std::sync::Mutex::new((base, std::collections::BTreeMap::new())),
        });
    }
}

/// The running filter: the startup one (`RUST_LOG` or `info`) and, after it, the levels set at
/// runtime per bearward target (later directives for a target win in an `EnvFilter`).
struct LogLevels {
    handle: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    state: std::sync::Mutex<(String, std::collections::BTreeMap<String, &'static str>)>,
}

static LOG_LEVELS: std::sync::OnceLock<LogLevels> = std::sync::OnceLock::new();

/// Runtime targets kept at once: a bound on what `/logging` may pile up.
const MAX_LOG_TARGETS: usize = 64;

impl LogLevels {
    fn directives(base: &str, set: &std::collections::BTreeMap<String, &'static str>) -> String {
        let mut out = base.to_owned();
        for (target, level) in set {
            let _ = write!(out, ",{target}={level}");
        }
        out
    }
}

/// The filter in force, as `EnvFilter` directives; `None` before [`init`].
pub fn log_levels() -> Option<String> {
    let l = LOG_LEVELS.get()?;
    let state = l
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(LogLevels::directives(&state.0, &state.1))
}

/// Changes bearward's log levels while it runs, as Envoy's `/logging` does: `level=debug` sets
/// bearward's own level, `bearward::auth=trace` one module's, `reset` goes back to the startup
/// filter. Only bearward's targets: dependencies (hyper, h2, rustls) keep the startup filter,
/// since at debug and trace some of them write request heads, tokens among them, and bearward
/// never logs a token. Returns the filter now in force, or why the query was refused (nothing
/// changed then).
pub fn set_log_levels(query: &str) -> Result<String, String> {
    let Some(l) = LOG_LEVELS.get() else {
        return Err("logging is not set up in this process".to_owned());
    };
    let mut state = l
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut next = state.1.clone();
    let mut any = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        any = true;
        if key == "reset" {
            next.clear();
            continue;
        }
        let level = match value.to_ascii_lowercase().as_str() {
            "off" => "off",
            "error" => "error",
            "warn" | "warning" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            _ => {
                return Err(format!(
                    "{value:?} is not a level: off, error, warn, info, debug or trace"
                ))
            }
        };
        let target = if key == "level" { "bearward" } else { &key[..] };
        let ours = target == "bearward"
            || target.strip_prefix("bearward::").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            });
        if !ours {
            return Err(format!(
                "{target:?}: only bearward's own targets (level=, bearward=, bearward::MODULE=) change at runtime; set others with RUST_LOG at start"
            ));
        }
        if key == "level" {
            // bearward's level as a whole: its modules' own settings go.
            next.clear();
        }
        next.insert(target.to_owned(), level);
    }
    if !any {
        return Err("no level given: ?level=debug, ?bearward::auth=trace or ?reset".to_owned());
    }
    if next.len() > MAX_LOG_TARGETS {
        return Err(format!("more than {MAX_LOG_TARGETS} targets"));
    }
    let text = LogLevels::directives(&state.0, &next);
    let filter = EnvFilter::try_new(&text).map_err(|e| format!("{text:?}: {e}"))?;
    l.handle.reload(filter).map_err(|e| e.to_string())?;
    state.1 = next;
    tracing::info!(filter = %text, "log levels changed");
    Ok(text)
}

/// Request-latency buckets, in seconds: from half a millisecond to ten seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A route name as a label value, shared with the route table: no copy per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteName(Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteName,
    status: u16,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    issuer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOnlyLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AbortLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PdpLabels {
    pdp: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PdpNameLabels {
    pdp: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PdpLayerLabels {
    pdp: String,
    layer: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedKeyLabels {
    issuer: String,
    kid: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabels {
    issuer: String,
    layer: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct McpLabels {
    route: RouteName,
    method: &'static str,
    name: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    listener: &'static str,
    decision: &'static str,
    reason: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The decision and reason of a request that was let through and answered.
pub const ALLOWED: (&str, &str) = ("allow", "ok");

/// One route's handles into the request metrics, made once per config load: recording a
/// request then hashes no label set in the usual case (200, allowed) and one otherwise, instead
/// of three label-set lookups per request.
#[derive(Clone)]
pub struct RouteSeries {
    route: RouteName,
    latency: Histogram,
    upstream_latency: Histogram,
    ok: Counter,
    /// The route's other request counters met so far, by (status, decision, reason): the
    /// family's lookup hashes its labels with SipHash, about 650 instructions a refusal. A few
    /// dozen at most (the reasons are a fixed set); past `REFUSED_KEPT` the family is asked.
    refused: Arc<std::sync::Mutex<Vec<Refused>>>,
}

/// A refusal counter of a route: status, decision, reason.
type Refused = (u16, &'static str, &'static str, Counter);

/// Counters a route keeps at hand in [`RouteSeries`].
const REFUSED_KEPT: usize = 32;

/// Seconds since the Unix epoch, as Prometheus' timestamps are.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Everything `/metrics` shows. It outlives config reloads, so counters never restart with a
/// reload. Labels come from the config (route names, issuers) and fixed sets (decisions,
/// reasons, outcomes), never from request data, so the series count is bounded.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    jwks_fetches: Family<FetchLabels, Counter>,
    upstream_aborts: Family<AbortLabels, Counter>,
    /// Bounded: at most 64 endpoints per upstream, a handful of reasons.
    connect_failures: Family<EndpointLabels, Counter>,
    endpoint_healthy: Family<EndpointOnlyLabels, Gauge>,
    health_check_failures: Family<EndpointLabels, Counter>,
    upstream_retries: Family<EndpointOnlyLabels, Counter>,
    upstream_in_flight: Family<UpstreamLabels, Gauge>,
    endpoint_in_flight: Family<EndpointOnlyLabels, Gauge>,
    token_cache: Outcomes,
    key_lookups: Outcomes,
    token_cache_entries: Gauge,
    keys: Family<IssuerLabels, Gauge>,
    jwks_age: Family<IssuerLabels, Gauge<f64, AtomicU64>>,
    /// One series per key refused in an issuer's last JWKS; replaced whole on every fetch, so
    /// the series count is bounded by the keys one document may hold.
    refused_keys: Family<RefusedKeyLabels, Gauge>,
    refused_shown: std::sync::Mutex<Vec<RefusedKeyLabels>>,
    reloads: Outcomes,
    /// Prometheus' and Alertmanager's own pair, what reload alerts are written on: did the
    /// last reload apply (1 from the start), and when the config in force was loaded.
    reload_successful: Gauge,
    reload_success_time: Gauge<f64, AtomicU64>,
    /// Proxy-listener connections open now, and the limit in force.
    pub connections_open: Gauge,
    /// HTTP/1 connections parked: idle, holding no buffers (`request::framing::PARK_AFTER`).
    pub connections_parked: Gauge,
    /// Connections each connection worker serves (`server.worker_threads` above 1).
    worker_connections: Family<WorkerLabels, Gauge>,
    pub connections_max: Gauge,
    /// Times the accept loop found `max_connections` open and left new ones in the backlog.
    pub connections_deferred: Counter,
    /// Connections the kernel completed that `accept` failed to take (EMFILE, ENFILE, ENOBUFS).
    pub accept_errors: Counter,
    /// Requests on the proxy listener between their head and the end of their response.
    pub requests_in_flight: Gauge,
    /// Rate-limit checks decided locally because the shared store could not answer.
    pub rate_limit_fallbacks: Counter,
    rate_limit_keys: Family<RouteLabels, Gauge>,
    store_ops: Family<StoreLabels, Counter>,
    introspections: Family<FetchLabels, Counter>,
    introspection_latency: Family<IssuerLabels, Histogram, fn() -> Histogram>,
    introspection_cache: Family<LayerLabels, Counter>,
    authzen_calls: Family<PdpLabels, Counter>,
    authzen_latency: Family<PdpNameLabels, Histogram, fn() -> Histogram>,
    authzen_cache: Family<PdpLayerLabels, Counter>,
    token_exchanges: Family<ExchangeLabels, Counter>,
    tls_handshakes: Family<LookupLabels, Counter>,
    proxy_protocol_headers: Family<LookupLabels, Counter>,
    trace_spans: Family<LookupLabels, Counter>,
    dpop_proofs: Family<LookupLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    bound_tokens: Family<LookupLabels, Counter>,
    mcp_requests: Family<McpLabels, Counter>,
}

/// A two-outcome counter family with both counters made up front: counting one is an atomic
/// add, with no label hashing on the request path.
#[derive(Clone)]
struct Outcomes {
    family: Family<LookupLabels, Counter>,
    yes: Counter,
    no: Counter,
}

impl Outcomes {
    fn new(yes: &'static str, no: &'static str) -> Outcomes {
        let family = Family::<LookupLabels, Counter>::default();
        let yes = family.get_or_create(&LookupLabels { outcome: yes }).clone();
        let no = family.get_or_create(&LookupLabels { outcome: no }).clone();
        Outcomes { family, yes, no }
    }

    fn count(&self, yes: bool) {
        if yes { &self.yes } else { &self.no }.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics, registered under the `bearward_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bearward");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(histogram as fn() -> Histogram),
            upstream_latency: Family::new_with_constructor(histogram as fn() -> Histogram),
            jwks_fetches: Family::default(),
            upstream_aborts: Family::default(),
            connect_failures: Family::default(),
            endpoint_healthy: Family::default(),
            health_check_failures: Family::default(),
            upstream_retries: Family::default(),
            upstream_in_flight: Family::default(),
            endpoint_in_flight: Family::default(),
            token_cache: Outcomes::new("hit", "miss"),
            key_lookups: Outcomes::new("hit", "miss"),
            token_cache_entries: Gauge::default(),
            keys: Family::default(),
            jwks_age: Family::default(),
            refused_keys: Family::default(),
            refused_shown: Default::default(),
            reloads: Outcomes::new("ok", "error"),
            reload_successful: Gauge::default(),
            reload_success_time: Gauge::default(),
            connections_open: Gauge::default(),
            connections_parked: Gauge::default(),
            worker_connections: Family::default(),
            connections_max: Gauge::default(),
            connections_deferred: Counter::default(),
            accept_errors: Counter::default(),
            requests_in_flight: Gauge::default(),
            rate_limit_fallbacks: Counter::default(),
            rate_limit_keys: Family::default(),
            store_ops: Family::default(),
            introspections: Family::default(),
            introspection_latency: Family::new_with_constructor(histogram as fn() -> Histogram),
            introspection_cache: Family::default(),
            authzen_calls: Family::default(),
            authzen_latency: Family::new_with_constructor(histogram as fn() -> Histogram),
            authzen_cache: Family::default(),
            token_exchanges: Family::default(),
            tls_handshakes: Family::default(),
            proxy_protocol_headers: Family::default(),
            trace_spans: Family::default(),
            dpop_proofs: Family::default(),
            decisions: Family::default(),
            bound_tokens: Family::default(),
            mcp_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by route, status, decision and reason",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Whole-request latency by route",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Upstream latency to the response head, by route",
            Unit::Seconds,
            m.upstream_latency.clone(),
        );
        registry.register(
            "upstream_response_aborts",
            "Upstream response bodies that broke off after their head was sent, by upstream and reason",
            m.upstream_aborts.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Connections to an upstream endpoint that failed, by upstream, endpoint and reason; each leaves the endpoint out of the rotation for endpoint_fail_timeout",
            m.connect_failures.clone(),
        );
        registry.register(
            "upstream_endpoint_healthy",
            "1 while an upstream endpoint passes its health_check, 0 while it is out of the rotation for failing it",
            m.endpoint_healthy.clone(),
        );
        registry.register(
            "upstream_requests_in_flight",
            "Requests in flight to an upstream with max_requests, by upstream",
            m.upstream_in_flight.clone(),
        );
        registry.register(
            "upstream_endpoint_requests_in_flight",
            "Requests in flight to each endpoint of an upstream with balance = \"least_request\", by upstream and endpoint (at scrape time)",
            m.endpoint_in_flight.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests a new connection to an upstream endpoint closed without an answer, sent on to the next endpoint, by upstream and the endpoint that failed them",
            m.upstream_retries.clone(),
        );
        registry.register(
            "upstream_health_check_failures",
            "Failed health checks, by upstream, endpoint and reason",
            m.health_check_failures.clone(),
        );
        registry.register(
            "jwks_fetches",
            "JWKS and discovery fetches by issuer and outcome",
            m.jwks_fetches.clone(),
        );
        registry.register(
            "token_cache_lookups",
            "Verified-token cache lookups by outcome (hit, miss)",
            m.token_cache.family.clone(),
        );
        registry.register(
            "key_lookups",
            "Signing-key lookups by outcome (hit, miss)",
            m.key_lookups.family.clone(),
        );
        registry.register(
            "token_cache_entries",
            "Entries in the verified-token cache",
            m.token_cache_entries.clone(),
        );
        registry.register(
            "signing_keys",
            "Usable signing keys per issuer",
            m.keys.clone(),
        );
        registry.register_with_unit(
            "jwks_age",
            "Time since the last good JWKS fetch per issuer",
            Unit::Seconds,
            m.jwks_age.clone(),
        );
        registry.register(
            "jwks_refused_keys",
            "Keys in the issuer's last fetched JWKS that were refused (weak, misused, unsupported), by kid and reason",
            m.refused_keys.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open on the proxy listener",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_parked",
            "HTTP/1 connections idle between requests with their buffers given back",
            m.connections_parked.clone(),
        );
        registry.register(
            "worker_connections",
            "Connections each connection worker serves (server.worker_threads above 1)",
            m.worker_connections.clone(),
        );
        registry.register(
            "connections_max",
            "max_connections in force on the proxy listener",
            m.connections_max.clone(),
        );
        registry.register(
            "connections_deferred",
            "Times max_connections were open and new connections were left in the listen backlog",
            m.connections_deferred.clone(),
        );
        registry.register(
            "accept_errors",
            "Connections the proxy listener failed to accept (out of file descriptors and the like)",
            m.accept_errors.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests on the proxy listener from their head to the end of their response",
            m.requests_in_flight.clone(),
        );
        // Prometheus' `_info` convention: a constant 1 whose labels say what is running, so a
        // dashboard can tell which version answered (`--version` prints the same).
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("BEARWARD_COMMIT"),
            })
            .set(1);
        registry.register("build_info", "bearward's version, as a label", build_info);
        registry.register(
            "config_reloads",
            "Config reloads by outcome (ok, error)",
            m.reloads.family.clone(),
        );
        // The config the process started with was loaded and applied.
        m.reload_successful.set(1);
        m.reload_success_time.set(unix_now());
        registry.register(
            "config_last_reload_successful",
            "Whether the last config reload applied (1) or was refused, keeping the running config (0)",
            m.reload_successful.clone(),
        );
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the config in force was loaded, in seconds since the Unix epoch",
            Unit::Seconds,
            m.reload_success_time.clone(),
        );
        registry.register(
            "shared_store_operations",
            "Commands to the shared store (Valkey/Redis) by operation and outcome (ok, error, timeout, skipped after a failure)",
            m.store_ops.clone(),
        );
        registry.register(
            "introspections",
            "Calls to introspection endpoints by issuer and outcome (active, inactive, and why a call failed)",
            m.introspections.clone(),
        );
        registry.register_with_unit(
            "introspection_duration",
            "Introspection call latency by issuer",
            Unit::Seconds,
            m.introspection_latency.clone(),
        );
        registry.register(
            "introspection_cache_lookups",
            "Introspection answer lookups by issuer, layer (process, shared) and outcome (hit, miss)",
            m.introspection_cache.clone(),
        );
        registry.register(
            "authzen_calls",
            "Questions to AuthZEN policy decision points by pdp and outcome (allow, deny, and why a call failed: busy, timeout, unreachable, http_error, invalid_answer, discovery_failed)",
            m.authzen_calls.clone(),
        );
        registry.register_with_unit(
            "authzen_duration",
            "AuthZEN call latency by pdp",
            Unit::Seconds,
            m.authzen_latency.clone(),
        );
        registry.register(
            "authzen_cache_lookups",
            "AuthZEN answer lookups by pdp, layer (process, shared) and outcome (hit, miss)",
            m.authzen_cache.clone(),
        );
        registry.register(
            "token_exchanges",
            "RFC 8693 token exchanges by upstream and outcome (ok, shared_hit, the refusals invalid_grant, invalid_target, invalid_scope, and why a call failed: timeout, unreachable, http_error, invalid_answer, discovery_failed, actor_token_failed, client_error)",
            m.token_exchanges.clone(),
        );
        registry.register(
            "rate_limit_fallbacks",
            "Rate-limit checks decided by this process alone (the limit divided by rate_limit_fallback_replicas) because the shared store could not answer",
            m.rate_limit_fallbacks.clone(),
        );
        registry.register(
            "rate_limit_keys",
            "Keys held in this process's rate-limit table by route (at most 100000 each; idle ones are dropped)",
            m.rate_limit_keys.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the proxy listener by outcome (ok, or why one failed)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "proxy_protocol_headers",
            "PROXY protocol headers read on connections from server.proxy_protocol_from, by outcome: ok, local (LOCAL or UNKNOWN: the peer's address kept), or why the connection was closed (invalid, too_large, not_stream, timeout, closed)",
            m.proxy_protocol_headers.clone(),
        );
        registry.register(
            "trace_spans",
            "Finished spans by outcome: exported, queue_full (dropped: the export queue was full), export_failed (dropped with their batch)",
            m.trace_spans.clone(),
        );
        registry.register(
            "decisions",
            "Checks answered by a decision listener other than the HTTP one (listener=\"ext_authz\": Envoy's gRPC Check), by decision and reason; each is also in requests_total",
            m.decisions.clone(),
        );
        registry.register(
            "dpop_proofs",
            "DPoP proofs checked, by outcome (ok, or the reason: dpop_proof_replayed for replays, use_dpop_nonce for nonce challenges)",
            m.dpop_proofs.clone(),
        );
        registry.register(
            "bound_tokens",
            "Sender-constrained tokens checked, by binding and outcome (dpop_ok, certificate_ok, certificate_missing, certificate_mismatch)",
            m.bound_tokens.clone(),
        );
        registry.register(
            "mcp_requests",
            "POSTs to routes with mcp rules whose JSON-RPC body was read, by route, MCP method (other for one not in the MCP specification, response for a client's answer), target (a tool, prompt or resource prefix the route's rules name, else other) and decision",
            m.mcp_requests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one MCP request whose body was read.
    pub fn mcp_request(
        &self,
        route: &Arc<str>,
        method: &'static str,
        name: &str,
        decision: &'static str,
    ) {
        self.mcp_requests
            .get_or_create(&McpLabels {
                route: RouteName(route.clone()),
                method,
                name: name.to_owned(),
                decision,
            })
            .inc();
    }

    /// Counts one gRPC ext_authz check.
    pub fn ext_authz_check(&self, decision: &'static str, reason: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                listener: "ext_authz",
                decision,
                reason,
            })
            .inc();
    }

    /// Counts one DPoP proof check.
    pub fn dpop_proof(&self, outcome: &'static str) {
        self.dpop_proofs
            .get_or_create(&LookupLabels { outcome })
            .inc();
    }

    /// Counts one binding check.
    pub fn bound_token(&self, outcome: &'static str) {
        self.bound_tokens
            .get_or_create(&LookupLabels { outcome })
            .inc();
    }

    /// Counts `n` finished spans by what became of them ([`crate::trace`]).
    pub fn trace_spans(&self, outcome: &'static str, n: u64) {
        self.trace_spans
            .get_or_create(&LookupLabels { outcome })
            .inc_by(n);
    }

    /// Counts one listener TLS handshake.
    pub fn tls_handshake(&self, outcome: &'static str) {
        self.tls_handshakes
            .get_or_create(&LookupLabels { outcome })
            .inc();
    }

    /// Counts one PROXY protocol header read, or refused.
    pub fn proxy_protocol_header(&self, outcome: &'static str) {
        self.proxy_protocol_headers
            .get_or_create(&LookupLabels { outcome })
            .inc();
    }

    /// Counts one shared-store command.
    pub fn store_op(&self, op: &'static str, outcome: &'static str) {
        self.store_ops
            .get_or_create(&StoreLabels { op, outcome })
            .inc();
    }

    /// Counts one introspection call and its latency.
    pub fn introspection(&self, issuer: &str, outcome: &'static str, took: Option<Duration>) {
        self.introspections
            .get_or_create(&FetchLabels {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
        if let Some(took) = took {
            self.introspection_latency
                .get_or_create(&IssuerLabels {
                    issuer: issuer.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Counts one token exchange (or a token found in the shared store).
    pub fn token_exchange(&self, upstream: &str, outcome: &'static str) {
        self.token_exchanges
            .get_or_create(&ExchangeLabels {
                upstream: upstream.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts one AuthZEN call and its latency.
    pub fn authzen_call(&self, pdp: &str, outcome: &'static str, took: Option<Duration>) {
        self.authzen_calls
            .get_or_create(&PdpLabels {
                pdp: pdp.to_owned(),
                outcome,
            })
            .inc();
        if let Some(took) = took {
            self.authzen_latency
                .get_or_create(&PdpNameLabels {
                    pdp: pdp.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// One PDP's answer cache counters: process hit, process miss, shared hit, shared miss.
    pub fn authzen_cache(&self, pdp: &str) -> [Counter; 4] {
        let get = |layer, outcome| {
            self.authzen_cache
                .get_or_create(&PdpLayerLabels {
                    pdp: pdp.to_owned(),
                    layer,
                    outcome,
                })
                .clone()
        };
        [
            get("process", "hit"),
            get("process", "miss"),
            get("shared", "hit"),
            get("shared", "miss"),
        ]
    }

    /// One issuer's introspection cache counters, made once: a lookup then costs an atomic
    /// add, not a label-set hash. In order: process hit, process miss, shared hit, shared miss.
    pub fn introspection_cache(&self, issuer: &str) -> [Counter; 4] {
        let get = |layer, outcome| {
            self.introspection_cache
                .get_or_create(&LayerLabels {
                    issuer: issuer.to_owned(),
                    layer,
                    outcome,
                })
                .clone()
        };
        [
            get("process", "hit"),
            get("process", "miss"),
            get("shared", "hit"),
            get("shared", "miss"),
        ]
    }

    /// One route's series, resolved when a config is loaded.
    pub fn route_series(&self, route: &Arc<str>) -> RouteSeries {
        let name = RouteName(route.clone());
        let labels = RouteLabels {
            route: name.clone(),
        };
        RouteSeries {
            latency: self.latency.get_or_create(&labels).clone(),
            upstream_latency: self.upstream_latency.get_or_create(&labels).clone(),
            ok: self
                .requests
                .get_or_create(&RequestLabels {
                    route: name.clone(),
                    status: 200,
                    decision: ALLOWED.0,
                    reason: ALLOWED.1,
                })
                .clone(),
            route: name,
            refused: Default::default(),
        }
    }

    /// Counts one finished request.
    pub fn record(
        &self,
        series: &RouteSeries,
        status: u16,
        decision: &'static str,
        reason: &'static str,
        latency: Duration,
        upstream: Option<Duration>,
    ) {
        if status == 200 && (decision, reason) == ALLOWED {
            series.ok.inc();
        } else {
            let mut kept = series
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let found = kept
                .iter()
                .find(|(s, d, r, _)| (*s, *d, *r) == (status, decision, reason));
            match found {
                Some((.., counter)) => {
                    counter.inc();
                }
                None => {
                    let counter = self
                        .requests
                        .get_or_create(&RequestLabels {
                            route: series.route.clone(),
                            status,
                            decision,
                            reason,
                        })
                        .clone();
                    counter.inc();
                    if kept.len() < REFUSED_KEPT {
                        kept.push((status, decision, reason, counter));
                    }
                }
            }
        }
        series.latency.observe(latency.as_secs_f64());
        if let Some(u) = upstream {
            series.upstream_latency.observe(u.as_secs_f64());
        }
    }

    /// Counts one upstream response body that broke off after its head went to the client.
    /// Counts a connection to an upstream endpoint that failed.
    pub fn upstream_connect_failure(&self, upstream: &str, endpoint: &str, reason: &'static str) {
        self.connect_failures
            .get_or_create(&EndpointLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
                reason,
            })
            .inc();
    }

    /// An endpoint's health as its checks last decided it.
    pub fn endpoint_health(&self, upstream: &str, endpoint: &str, healthy: bool) {
        self.endpoint_healthy
            .get_or_create(&EndpointOnlyLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .set(i64::from(healthy));
    }

    /// An endpoint's requests in flight (`balance = "least_request"`), at scrape time.
    pub fn endpoint_in_flight(&self, upstream: &str, endpoint: &str, n: u32) {
        self.endpoint_in_flight
            .get_or_create(&EndpointOnlyLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .set(i64::from(n));
    }

    /// Worker `worker`'s count of the connections it serves.
    pub fn worker_connections(&self, worker: usize) -> Gauge {
        self.worker_connections
            .get_or_create(&WorkerLabels {
                worker: worker.to_string(),
            })
            .clone()
    }

    /// The gauge of an upstream's requests in flight (`max_requests`).
    pub fn upstream_in_flight(&self, upstream: &str) -> Gauge {
        self.upstream_in_flight
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_retry(&self, upstream: &str, endpoint: &str) {
        self.upstream_retries
            .get_or_create(&EndpointOnlyLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }

    pub fn health_check_failure(&self, upstream: &str, endpoint: &str, reason: &'static str) {
        self.health_check_failures
            .get_or_create(&EndpointLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn upstream_abort(&self, upstream: &str, reason: &'static str) {
        self.upstream_aborts
            .get_or_create(&AbortLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts one JWKS (or discovery) fetch.
    pub fn jwks_fetch(&self, issuer: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a verified-token cache lookup.
    pub fn token_cache(&self, hit: bool) {
        self.token_cache.count(hit);
    }

    /// Counts a signing-key lookup (a miss is an unknown `kid`).
    pub fn key_lookup(&self, hit: bool) {
        self.key_lookups.count(hit);
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads.count(ok);
        self.reload_successful.set(i64::from(ok));
        if ok {
            self.reload_success_time.set(unix_now());
        }
    }

    /// Sets the gauges read at scrape time.
    pub fn set_key_state(&self, issuer: &str, keys: usize, age: Option<Duration>) {
        let l = IssuerLabels {
            issuer: issuer.to_owned(),
        };
        self.keys.get_or_create(&l).set(keys as i64);
        self.jwks_age
            .get_or_create(&l)
            .set(age.map_or(f64::NAN, |a| a.as_secs_f64()));
    }

    /// Shows the keys refused in `issuer`'s last fetched JWKS, replacing what it showed before.
    pub fn set_refused_keys<'a>(
        &self,
        issuer: &str,
        refused: impl IntoIterator<Item = (&'a str, &'static str)>,
    ) {
        let mut shown = self
            .refused_shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shown.retain(|l| {
            let keep = l.issuer != issuer;
            if !keep {
                self.refused_keys.remove(l);
            }
            keep
        });
        for (kid, reason) in refused {
            let l = RefusedKeyLabels {
                issuer: issuer.to_owned(),
                kid: kid.to_owned(),
                reason,
            };
            self.refused_keys.get_or_create(&l).set(1);
            shown.push(l);
        }
    }

    /// Sets the rate-limit key gauges, one per limited route of the running config (a reload's
    /// removed routes go).
    pub fn set_rate_limit_keys(&self, routes: impl IntoIterator<Item = (Arc<str>, u64)>) {
        self.rate_limit_keys.clear();
        for (route, keys) in routes {
            let l = RouteLabels {
                route: RouteName(route),
            };
            self.rate_limit_keys.get_or_create(&l).set(keys as i64);
        }
    }

    /// Sets the verified-token cache size gauge.
    pub fn set_token_cache_entries(&self, n: u64) {
        self.token_cache_entries.set(n as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
