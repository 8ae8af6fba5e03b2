//! Configuration: the file's serde shape (`file`), the checks that turn it into the runtime form
//! (`validate`), and the runtime form itself, which has no serde in it and is never partly valid.

mod file;
mod validate;

pub use file::{
    CertHeaderFormat, ClientAuthMethod, Ingress, LogFormat, Mode, TokenFormat, TypPolicy,
};

use crate::request::path::PathOptions;
use crate::routes::RouteTable;
use http::header::HeaderName;
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Most `endpoints` one upstream may list (the pool keeps an endpoint's index in a byte).
pub const MAX_ENDPOINTS: usize = 64;
/// Default request-header limit: the whole header block of one request.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default limit on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default limit on the raw path.
pub const DEFAULT_MAX_PATH_BYTES: usize = 8 * 1024;
/// Default time a client has to send a complete request head (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest pause in a request body, and in a client's reading of a response (nginx's
/// `client_body_timeout` and `send_timeout` are 60 s too).
pub const DEFAULT_IDLE_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's overload manager and nginx leave this unbounded by default; 4,096 concurrent
/// requests is far above what one sidecar's upstream serves, and far below what starves it.
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 4096;
/// Default listen backlog: Envoy's `tcp_backlog_size` on Linux. tokio's own is 128, which
/// drops the handshakes of a burst past `max_connections` (clients retry only after 1 s, then
/// 3 s); the kernel caps it at `net.core.somaxconn` (4096 since Linux 5.4).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Streams per HTTP/2 connection (nginx's `http2_max_concurrent_streams` is 128, Envoy's 2^31).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default realm in `WWW-Authenticate`.
pub const DEFAULT_REALM: &str = "bearward";
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time from sending a request upstream to its response head.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lifetime of an idle pooled upstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default age past which an upstream connection carries no new request: nginx's
/// `keepalive_time`.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
/// Default longest silence of an upgraded connection: Envoy's `stream_idle_timeout`, which
/// applies to its WebSocket streams too (nginx closes them after `proxy_read_timeout`, 60 s).
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 upstreams: PING an idle connection this often (gRPC's own keepalive default is off;
/// Envoy's `connection_keepalive` is commonly set to tens of seconds).
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of idle pooled connections kept per upstream.
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 64;
/// Default clock-skew leeway for `exp`, `nbf`, `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default largest accepted token, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default JWKS refresh interval when the IdP sends no `Cache-Control: max-age`.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Lower bound applied to the IdP's `max-age`.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(60);
/// Upper bound applied to the IdP's `max-age`.
pub const DEFAULT_JWKS_MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Default timeout of one JWKS or discovery fetch.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest accepted JWKS or discovery document.
pub const DEFAULT_JWKS_MAX_BYTES: usize = 256 * 1024;
/// Default size of the verified-token cache.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: u64 = 10_000;
/// Default least time between two refetches caused by unknown `kid`s, per issuer.
pub const DEFAULT_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Default longest time the last good keys serve while the IdP cannot be reached.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: String,
    /// SHA-256 of the text it was made from, for `/status`: which version of the file runs.
    pub digest: [u8; 32],
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: RouteTable,
    pub issuers: Vec<IssuerConfig>,
    pub forward: ForwardConfig,
    /// RFC 9728 metadata documents of the resources routes name.
    pub resources: crate::resource::Documents,
    /// Entries in the verified-token cache; 0 turns it off.
    pub token_cache_entries: u64,
    /// `[cache]`: the store shared by replicas, if one is configured.
    pub cache: Option<CacheConfig>,
    /// `[dpop]`: how DPoP proofs are checked (RFC 9449).
    pub dpop: DpopConfig,
    /// `[decision]`: the decision listener for ingresses, if configured.
    pub decision: Option<DecisionConfig>,
    /// `[telemetry]`: OpenTelemetry traces, if configured.
    pub telemetry: Option<TelemetryConfig>,
    /// `[authzen.NAME]`: policy decision points routes ask, in name order.
    pub authzen: Vec<PdpConfig>,
    /// Things that are legal but probably wrong (a route that can never match).
    pub warnings: Vec<Problem>,
    /// Files secrets were read from (`*_file` keys), watched for changes like the TLS files.
    pub secret_files: Vec<PathBuf>,
}

/// Defines [`Listening`] and the comparison a reload makes of it from one list of fields, so a
/// setting added here is compared without anyone remembering to.
macro_rules! listening {
    ($( $(#[$doc:meta])* pub $field:ident : $ty:ty ),* $(,)?) => {
        /// `[server]` settings read once when the listeners and the runtime are built.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Listening {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Listening {
            /// The `server.` keys whose values differ between `self` and `other`.
            pub fn changed(&self, other: &Listening) -> Vec<&'static str> {
                let mut out = Vec::new();
                $(
                    if self.$field != other.$field {
                        out.push(concat!("server.", stringify!($field)));
                    }
                )*
                out
            }
        }
    };
}

listening! {
    /// The proxy listener's address (`server.listen`).
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`; `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Accept HTTP/2 (h2c prior knowledge, or ALPN `h2` with TLS) beside HTTP/1.1.
    pub http2: bool,
    /// Largest request head, in bytes (431 beyond it).
    pub max_header_bytes: usize,
    /// Most header lines in a request head.
    pub max_headers: usize,
    /// Longest a client may take to send a whole request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest a write to an HTTP/1 client may make no progress.
    pub send_timeout: Duration,
    /// How long requests in flight get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long bearward keeps accepting after SIGTERM, reporting not ready.
    pub shutdown_delay: Duration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Runtime threads; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// Proxy connections open at once; beyond it new ones wait in the kernel's backlog. `None`:
    /// sized from the file-descriptor limit when the listener starts ([`crate::server`]).
    pub max_connections: Option<usize>,
    /// The kernel's queue of connections not yet accepted, for every listener (`listen(2)`'s
    /// backlog; the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Requests in flight on the proxy listener at once; beyond it, 503 before any token work.
    pub max_requests_in_flight: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of each client connection.
    pub http2_max_concurrent_streams: u32,
    /// The most requests a client connection carries; `None`: no limit.
    pub max_requests_per_connection: Option<usize>,
    /// The age past which a client connection's next request is its last; `None`: no limit.
    pub max_connection_age: Option<Duration>,
}

impl Listening {
    /// When a client connection is ended; `None` when neither limit is set.
    pub fn connection_limits(&self) -> Option<ConnectionLimits> {
        (self.max_requests_per_connection.is_some() || self.max_connection_age.is_some()).then(
            || ConnectionLimits {
                max_requests: self.max_requests_per_connection.unwrap_or(usize::MAX),
                max_age: self.max_connection_age,
            },
        )
    }
}

/// When a client connection is ended (at a request's answer, or with GOAWAY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most requests it carries; `usize::MAX`: no limit.
    pub max_requests: usize,
    /// The age past which its next request is its last.
    pub max_age: Option<Duration>,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Read once when the listeners are built: a reload that changes one of these logs a
    /// warning and keeps the value in force until a restart.
    pub listening: Listening,
    pub realm: String,
    pub path: PathOptions,
    /// Longest a request body may go without a byte arriving.
    pub body_read_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed; empty: nobody's.
    pub trusted_proxies: Vec<IpNet>,
    /// Peers whose connections open with a PROXY protocol header; empty: nobody's.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Pass client headers whose names hold `_` (nginx's `underscores_in_headers`), all but
    /// the spellings of the headers bearward sets or filters.
    pub allow_underscores_in_headers: bool,
    /// Largest request body forwarded on routes that set none (nginx's
    /// `client_max_body_size`); `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// RFC 9728 resource identifier of routes that name none.
    pub resource: Option<Arc<crate::resource::ResourceId>>,
    pub access_log: bool,
    /// `access_log_claims`: claim paths written in the access log; empty, none.
    pub access_log_claims: Vec<String>,
    /// `request_id_header`; `None`: request ids off.
    pub request_id_header: Option<HeaderName>,
    /// Default mode of routes that do not set one.
    pub mode: Mode,
    /// Reload when the config file changes (SIGHUP always reloads).
    pub watch_config: bool,
    /// TLS on the proxy listener (`tls_cert_file`, `tls_key_file`); `None`: plain HTTP.
    pub tls: Option<crate::tls::ListenerTls>,
    /// The listener's certificate, key and client CA files, watched with the config file.
    pub tls_files: Vec<PathBuf>,
    /// Longest a client may take to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// `scheme://host[:port]` clients use to reach bearward (DPoP `htu`, metadata); `None`:
    /// the listener's own scheme and the request's Host.
    pub public_origin: Option<String>,
    /// The header a trusted TLS-terminating proxy passes the client certificate in.
    pub client_cert_header: Option<(HeaderName, CertHeaderFormat)>,
}

/// `[upstreams.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http`, or `https` (with `tls`).
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `host:port` of each instance connected to, in rotation: `endpoints`, else the `url`'s;
    /// with `unix_socket`, `unix:` and its path.
    pub endpoints: Vec<String>,
    /// `unix_socket`: the one socket connections go to, in place of TCP.
    pub unix_socket: Option<PathBuf>,
    /// How long an endpoint that failed a connection is left out.
    pub endpoint_fail_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// `max_connection_age`: a connection older carries no new request.
    pub max_connection_age: Duration,
    /// `max_requests_per_connection`: the most requests (HTTP/2: streams) a connection
    /// carries; `u32::MAX`: no limit.
    pub max_requests_per_connection: u32,
    /// An upgraded (WebSocket) connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub max_idle_connections: usize,
    /// Send the client's `Host` (true) or the upstream's authority (false).
    pub pass_host_header: bool,
    /// How connections to an `https` upstream are made; `None` for `http`.
    pub tls: Option<crate::tls::UpstreamTls>,
    /// The files `tls` was read from (CA bundle, client certificate and key), watched with the
    /// config file.
    pub tls_files: Vec<PathBuf>,
    /// `protocol`: what is spoken to the upstream.
    pub protocol: Protocol,
    /// HTTP/2: a PING after this long without a frame from the upstream; `None`: never.
    pub h2_keepalive_interval: Option<Duration>,
    /// HTTP/2: the connection is closed when a PING is not answered within this.
    pub h2_keepalive_timeout: Duration,
    /// `identity_assertion`: the JWT bearward signs for this upstream.
    pub identity_assertion: Option<AssertionConfig>,
    /// `token_exchange`: the token this upstream gets in place of the client's.
    pub token_exchange: Option<TokenExchangeConfig>,
    /// `set_headers` (and from files and the environment, marked sensitive): set on every
    /// request, in place of the client's.
    pub set_headers: Vec<(HeaderName, http::HeaderValue)>,
    /// `remove_headers`: taken out of every request to this upstream.
    pub remove_headers: Vec<HeaderName>,
    /// `set_response_headers` and `remove_response_headers`; `None` when neither is given, so
    /// an upstream without them costs its answers nothing.
    pub response_headers: Option<Box<ResponseHeaders>>,
    /// `health_check`: active checks of each endpoint.
    pub health_check: Option<HealthCheck>,
    /// `max_requests` and `queue_timeout`: the most requests in flight to this upstream, and
    /// how long one more waits for a place.
    pub max_requests: Option<(usize, Duration)>,
    /// `retry_statuses`: answers that send a replayable request to the next endpoint; empty:
    /// none do.
    pub retry_statuses: Box<[http::StatusCode]>,
    /// `endpoints` with weights or backups; `None` when every one is a weight-1 primary, so
    /// the rotation is plain turns.
    pub balance: Option<Balance>,
    /// `balance = "least_request"`: of two endpoints picked at random, the one with fewer
    /// requests in flight.
    pub least_request: bool,
}

/// How the rotation over an upstream's `endpoints` goes when they have weights or backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// Per endpoint, its share of the rotation (1 to 100; nginx's smooth weighted round robin:
    /// weights 3, 1, 1 go a, b, a, c, a).
    pub weights: Box<[u32]>,
    /// Per endpoint: a backup, in the rotation only while every primary is out.
    pub backup: Box<[bool]>,
}

impl Balance {
    /// `None` when the weights are all 1 and nothing is a backup.
    pub fn new(weights: &[u32], backup: &[bool]) -> Option<Balance> {
        if weights.iter().all(|&w| w == 1) && !backup.contains(&true) {
            return None;
        }
        Some(Balance {
            weights: weights.into(),
            backup: backup.into(),
        })
    }
}

/// `[upstreams.NAME] health_check`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub asks: HealthAsk,
    /// Over HTTP/2 (the upstream's `protocol`), else HTTP/1.1.
    pub h2: bool,
    /// `:scheme` and `Host`/`:authority`: the upstream `url`'s.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// What a health check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthAsk {
    /// `GET path`: a 2xx or 3xx passes.
    Path(String),
    /// `grpc.health.v1.Health/Check` for this service: `SERVING` passes.
    Grpc(String),
}

impl std::fmt::Display for HealthAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthAsk::Path(p) => write!(f, "GET {p}"),
            HealthAsk::Grpc(s) => write!(f, "grpc.health.v1 {s:?}"),
        }
    }
}

/// What an upstream's answers have changed on their way to the client.
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders {
    pub set: Vec<(HeaderName, http::HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl ResponseHeaders {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// `[upstreams.NAME] token_exchange`, validated (RFC 8693).
#[derive(Debug, Clone)]
pub struct TokenExchangeConfig {
    pub issuer: String,
    /// `None`: the `token_endpoint` of the issuer's discovery document.
    pub token_endpoint: Option<http::Uri>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub requested_token_type: String,
    /// Send bearward's own client-credentials token as `actor_token`.
    pub actor: bool,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// `tls_ca_file` and the client certificate; `None`: the system roots, no certificate.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub cache_entries: u64,
}

/// RFC 8693 3: the token type of an OAuth 2.0 access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `[upstreams.NAME] identity_assertion`, validated: the key already read and checked.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub key_pem: Secret,
    pub alg: jsonwebtoken::Algorithm,
    pub kid: String,
    /// The public key as a JWK (`kid`, `alg`, `use` set), for `/.well-known/jwks.json`.
    pub jwk: serde_json::Value,
    pub header: HeaderName,
    pub lifetime: Duration,
    /// Token claims copied in, by name.
    pub claims: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub request: RequestBinding,
    /// Also publish the keys on the main listener.
    pub jwks_on_listener: bool,
}

/// What of the request an identity assertion carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBinding {
    /// Nothing: one assertion per token serves every request.
    None,
    /// `req`: the base64url SHA-256 of `METHOD SP target`.
    Hash,
    /// `htm` and `htu`: the method and the target.
    Include,
}

/// An upstream's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over keep-alive connections (the default).
    Http1,
    /// HTTP/2 over cleartext TCP, with prior knowledge (`http://` URLs).
    H2c,
    /// HTTP/2 over TLS, agreed with ALPN (`https://` URLs).
    H2,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    JwksUri(http::Uri),
    Discovery,
    File(PathBuf),
    /// HMAC-only issuer: its secret is its only key.
    None,
}

/// Bounds on fetching and keeping an issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksPolicy {
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
    /// The shortest RSA modulus taken from a JWKS, in bits (`min_rsa_bits`).
    pub min_rsa_bits: usize,
    pub unknown_kid_cooldown: Duration,
    pub max_stale: Duration,
}

/// `[[issuers]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    /// `max_lifetime`: the longest `exp - iat` (or `exp - now`) taken.
    pub max_lifetime: Option<Duration>,
    pub typ: TypPolicy,
    pub scope_claims: Vec<String>,
    pub hmac_secret: Option<Secret>,
    pub max_token_bytes: usize,
    /// Take tokens bound to a key (a `cnf` claim: DPoP, mTLS) as plain bearer tokens.
    pub accept_bound_tokens: bool,
    pub jwks: JwksPolicy,
    pub token_format: TokenFormat,
    /// How opaque tokens are asked about; set exactly when `token_format` is not `jwt`.
    pub introspection: Option<Introspection>,
    /// `proxy`: every call to this issuer through this `http://` proxy; `None`: as the
    /// environment says (`HTTPS_PROXY`, `NO_PROXY`).
    pub proxy: Option<http::Uri>,
    /// `allow_insecure_http`: plain-http key sources off loopback (a test IdP).
    pub allow_insecure_http: bool,
    /// `trusted_key_origins`, as [`origin_of`] writes them: where a discovery document may
    /// send bearward for keys or introspection besides the issuer's own origin.
    pub trusted_key_origins: Vec<String>,
    /// `revoked`: tokens refused before they expire.
    pub revoked: Option<Box<Revoked>>,
    /// `issuer` with a `{tenantid}` segment: one entry for the tenants of a multi-tenant IdP.
    pub tenant: Option<Box<TenantTemplate>>,
}

/// A multi-tenant issuer, as Microsoft Entra ID's common endpoint names itself
/// (`https://login.microsoftonline.com/{tenantid}/v2.0`): every tenant's tokens are signed with
/// the same keys, and each says which tenant issued it in `iss` and again in `tid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTemplate {
    /// `iss` up to the tenant's segment (its `/` included) and after it.
    pub prefix: String,
    pub suffix: String,
    /// `tenants`: the ones taken; empty, any.
    pub allowed: std::collections::HashSet<String>,
}

/// The entry of `issuers` a token's `iss` names: the one whose `issuer` it is exactly, else the
/// first `{tenantid}` template it fits. An exact entry wins, so a tenant given its own entry
/// keeps its own audiences and rules. Validation and the choice between validating a token and
/// introspecting it both ask here, so they never pick different entries.
pub fn issuer_index<'a>(
    issuers: impl Iterator<Item = &'a IssuerConfig> + Clone,
    iss: &str,
) -> Option<usize> {
    let exact = issuers
        .clone()
        .position(|i| i.tenant.is_none() && i.issuer == iss);
    exact.or_else(|| issuers.into_iter().position(|i| i.names(iss)))
}

/// Longest tenant id an `iss` may carry in a template's segment (Entra's are 36-byte GUIDs).
pub const MAX_TENANT_ID: usize = 64;

impl TenantTemplate {
    /// The tenant segment of `iss`, if `iss` has the template's shape: one path segment of
    /// letters, digits, `-`, `.` and `_` between the prefix and the suffix.
    pub fn tenant_of<'a>(&self, iss: &'a str) -> Option<&'a str> {
        let t = iss.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        TenantTemplate::is_tenant_id(t).then_some(t)
    }

    /// Could `t` be a tenant id: 1 to [`MAX_TENANT_ID`] letters, digits, `-`, `.` and `_`
    /// (what a path segment may hold without escaping, and never a `/`)?
    pub fn is_tenant_id(t: &str) -> bool {
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        !t.is_empty() && t.len() <= MAX_TENANT_ID && t.bytes().all(ok)
    }

    /// Is a token of this shape, with these claims, one this entry takes? Its `tid` must name
    /// the tenant of its `iss` (Microsoft's own rule for the common endpoint: a token one tenant
    /// signed cannot claim another's issuer), and that tenant must be listed, when any are.
    pub fn refuses(
        &self,
        tenant: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        match claims.get("tid").and_then(serde_json::Value::as_str) {
            Some(tid) if tid == tenant => {}
            Some(tid) => return Some(format!("tid {tid:?} is not the tenant of iss ({tenant:?})")),
            None => {
                return Some(format!(
                    "no tid claim to match the tenant of iss ({tenant:?})"
                ))
            }
        }
        (!self.allowed.is_empty() && !self.allowed.contains(tenant))
            .then(|| format!("tenant {tenant:?} is not among the issuer's tenants"))
    }
}

/// `[[issuers]] revoked`, validated: what a token's claims must not say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Revoked {
    pub token_ids: std::collections::HashSet<String>,
    pub subjects: std::collections::HashSet<String>,
    pub clients: std::collections::HashSet<String>,
    /// Seconds since the epoch: a token issued earlier, or without `iat`, is refused.
    pub issued_before: Option<u64>,
}

impl Revoked {
    /// Why these claims are refused, if they are.
    pub fn refuses(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let text = |name: &str| claims.get(name).and_then(serde_json::Value::as_str);
        if let Some(jti) = text("jti").filter(|j| self.token_ids.contains(*j)) {
            return Some(format!("jti {jti:?} is revoked"));
        }
        if let Some(sub) = text("sub").filter(|s| self.subjects.contains(*s)) {
            return Some(format!("sub {sub:?} is revoked"));
        }
        let client = text("azp").or_else(|| text("client_id"));
        if let Some(client) = client.filter(|c| self.clients.contains(*c)) {
            return Some(format!("client {client:?} is revoked"));
        }
        let before = self.issued_before?;
        match claims.get("iat").and_then(serde_json::Value::as_f64) {
            Some(iat) if iat >= before as f64 => None,
            Some(iat) => Some(format!("issued at {iat:.0}, before {before}")),
            None => Some(format!(
                "no iat, and tokens issued before {before} are revoked"
            )),
        }
    }
}

/// `localhost` (and names under it), 127.0.0.0/8 or `::1`: a host nothing can sit between.
pub fn loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            h == "localhost" || h.ends_with(".localhost")
        }
    }
}

/// Link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata services there or
/// named (AWS's fd00:ec2::254, GCP's metadata.google.internal): where a forged discovery
/// document would send bearward to read credentials.
pub fn metadata_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(std::net::IpAddr::V6(v6)) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            h == "metadata.google.internal" || h == "metadata"
        }
    }
}

/// `scheme://host:port` of an http(s) URL, host lowercased and the port always written, so
/// two spellings of one origin compare equal.
pub fn origin_of(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    })?;
    Some(format!(
        "{scheme}://{}:{port}",
        authority.host().to_ascii_lowercase()
    ))
}

impl IssuerConfig {
    /// Are the keys of `other` this issuer's keys: the same issuer, fetched from the same
    /// place in the same way and taken by the same rules? A reload that changes only what is
    /// checked after the signature (audiences, leeway, `typ`, scopes, `revoked`, ...) keeps
    /// them in use rather than waiting on the IdP, which may be down.
    pub fn same_keys(&self, other: &IssuerConfig) -> bool {
        self.issuer == other.issuer
            && self.keys == other.keys
            && self.jwks == other.jwks
            && self.algorithms == other.algorithms
            && self.hmac_secret == other.hmac_secret
            && self.token_format == other.token_format
            && self.proxy == other.proxy
            && self.allow_insecure_http == other.allow_insecure_http
            && self.trusted_key_origins == other.trusted_key_origins
    }

    /// May keys or introspection answers come over `uri`? `https`, or plain `http` to a
    /// loopback host or with `allow_insecure_http`: over plain HTTP anyone on the path can
    /// swap the keys.
    pub fn transport_ok(&self, uri: &http::Uri) -> Result<(), String> {
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http") if self.allow_insecure_http || uri.host().is_some_and(loopback_host) => {
                Ok(())
            }
            Some("http") => Err(format!(
                "{uri} is plain http off loopback: keys fetched that way can be swapped in \
                 transit (set allow_insecure_http = true on the issuer for a test IdP)"
            )),
            _ => Err(format!("{uri} is not an http(s) URL")),
        }
    }

    /// May an endpoint a discovery document names be used? Its transport as
    /// [`IssuerConfig::transport_ok`] says, on the issuer's own origin or one of
    /// `trusted_key_origins`, and never a link-local or metadata address unless listed there.
    pub fn discovered_ok(&self, uri: &http::Uri) -> Result<(), String> {
        self.transport_ok(uri)?;
        let origin = origin_of(uri).ok_or_else(|| format!("{uri} has no origin"))?;
        if self.trusted_key_origins.contains(&origin) {
            return Ok(());
        }
        if uri.host().is_some_and(metadata_host) {
            return Err(format!(
                "{uri} is a link-local or metadata address; list {origin} in \
                 trusted_key_origins if it really serves the keys"
            ));
        }
        let own = self.issuer.parse::<http::Uri>().ok();
        if own.as_ref().and_then(origin_of).as_deref() == Some(origin.as_str()) {
            return Ok(());
        }
        Err(format!(
            "{uri} is off the issuer's origin; list {origin} in trusted_key_origins if the \
             IdP serves its keys there"
        ))
    }

    /// Does this issuer validate JWTs locally?
    pub fn takes_jwts(&self) -> bool {
        self.token_format != TokenFormat::Opaque
    }

    /// Is `iss` this issuer's name: equal to it, or with a `{tenantid}` template, of its shape
    /// (whose `tid` and tenant list [`TenantTemplate::refuses`] then checks)? A template is
    /// never an `iss` itself: no tenant would be checked.
    pub fn names(&self, iss: &str) -> bool {
        match &self.tenant {
            None => self.issuer == iss,
            Some(t) => t.tenant_of(iss).is_some(),
        }
    }
}

/// An issuer's RFC 7662 introspection endpoint and how bearward asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// `None`: found by discovery (`introspection = true`).
    pub endpoint: Option<http::Uri>,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// Upper bound on how long an active answer is kept (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// How long an inactive answer is kept.
    pub negative_ttl: Duration,
    /// One call, from connect to the last byte of the answer.
    pub timeout: Duration,
    /// Calls in flight at once to this endpoint.
    pub max_in_flight: usize,
    /// An answer without `aud` is refused (the default): some IdPs (oidc-provider) answer
    /// `active: true` for a refresh token with neither `aud` nor `token_type`.
    pub require_audience: bool,
}

/// Client authentication at the introspection endpoint (RFC 7662 2.1, RFC 6749 2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the URL-encoded id and secret (RFC 6749 2.3.1).
    SecretBasic(Secret),
    /// `client_id` and `client_secret` in the form body.
    SecretPost(Secret),
    /// A signed JWT assertion (RFC 7523, OpenID Connect Core 9): the PEM private key, its
    /// algorithm and optional `kid`.
    PrivateKeyJwt {
        key_pem: Secret,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
    /// The TLS client certificate (RFC 8705 2.1); `client_id` in the form body.
    Tls,
}

/// Default upper bound of an active introspection answer's life in the cache.
pub const DEFAULT_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default life of an inactive answer: a revoked token is refused within seconds, and a flood
/// of garbage tokens does not reach the IdP once per request.
pub const DEFAULT_INTROSPECTION_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Default timeout of one introspection call.
pub const DEFAULT_INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Default introspection calls in flight per issuer.
pub const DEFAULT_INTROSPECTION_MAX_IN_FLIGHT: usize = 32;
/// Largest introspection answer read.
pub const MAX_INTROSPECTION_ANSWER_BYTES: usize = 64 * 1024;

/// `[telemetry]`, validated: where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub endpoint: http::Uri,
    /// OTLP/HTTP (protobuf) instead of OTLP/gRPC.
    pub http: bool,
    pub sample_ratio: f64,
    pub service_name: String,
    pub timeout: Duration,
    pub max_queued_spans: usize,
}

/// `[decision]`, validated: bearward answering an ingress's auth subrequests (nginx
/// `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`, Envoy `ext_authz` over HTTP).
#[derive(Debug, Clone)]
pub struct DecisionConfig {
    pub listen: SocketAddr,
    /// Envoy's ext_authz v3 over gRPC (h2c), if configured.
    pub grpc_listen: Option<SocketAddr>,
    /// Peers whose original-request headers are believed; everyone else gets 403.
    pub trusted_proxies: Vec<IpNet>,
    /// nginx: the headers `proxy_set_header` fills with `$request_method` and `$request_uri`.
    pub method_header: HeaderName,
    pub uri_header: HeaderName,
    /// nginx and HAProxy: the header the ingress fills with the original `Host`
    /// (`original_host_header`); `None`: not read, the decision request's own `Host` stands.
    pub host_header: Option<HeaderName>,
    /// Some route names `hosts`: a decision request must give the original host (400 without).
    pub hosts: bool,
    /// Envoy `ext_authz` (HTTP): the original path arrives appended to this prefix.
    pub envoy_path_prefix: Option<String>,
    /// The one convention read; `None`: whichever one a request carries, and 400 for a request
    /// that carries more than one.
    pub ingress: Option<Ingress>,
}

/// `[dpop]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopConfig {
    /// Algorithms a proof may be signed with (asymmetric only).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// How old a proof's `iat` may be.
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be, and added to `max_age` for clock skew.
    pub leeway: Duration,
    /// Proof ids remembered at once in this process; past it, new proofs get 503.
    pub replay_cache_entries: usize,
    /// Require server nonces (RFC 9449 8).
    pub nonce: bool,
    /// How long one nonce is issued for (the previous one is accepted too).
    pub nonce_lifetime: Duration,
    /// The key nonces are derived from, shared by replicas; `None`: random per process.
    pub nonce_secret: Option<Secret>,
    /// What a proof gets when the shared store cannot say whether its `jti` was seen.
    pub store_down: StoreDown,
}

/// `[cache] dpop_replay_store_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDown {
    /// 503: a replay to another replica cannot be ruled out.
    Refuse,
    /// This process's replay cache alone decides (counted and logged).
    Local,
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig {
            algorithms: crate::jose::dpop_algorithms(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay_cache_entries: 1_000_000,
            nonce: false,
            nonce_lifetime: Duration::from_secs(300),
            nonce_secret: None,
            store_down: StoreDown::Refuse,
        }
    }
}

/// `[cache]`, validated: the Valkey/Redis store shared by replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `redis://` or `rediss://` URL; it may hold a password, so its `Debug` is redacted.
    /// Empty with `cluster_urls`.
    pub redis_url: Secret,
    /// `redis_cluster_urls`: the seed nodes of a Redis Cluster; empty: one node, `redis_url`.
    pub cluster_urls: Vec<Secret>,
    /// `redis_sentinel_urls` and the master they watch; `redis_url` is empty then.
    pub sentinel: Option<SentinelConfig>,
    /// `redis_password_file` / `_env`: replaces the URL's password.
    pub password: Option<Secret>,
    /// `redis_username`: replaces the URL's user.
    pub username: Option<String>,
    /// For a `rediss://` URL: what its certificate must chain to, and a client certificate.
    pub tls: Option<RedisTls>,
    /// Longest wait for one store command before falling back to the process.
    pub timeout: Duration,
    /// Prepended to every key, so deployments can share one store.
    pub key_prefix: String,
    /// With the store down, each replica allows a rate limit divided by this.
    pub rate_limit_fallback_replicas: u32,
    /// `secret_file` / `secret_env`: seals what the store keeps of security decisions;
    /// without it those are not shared.
    pub secret: Option<Secret>,
}

/// The Redis Sentinels that name the store's master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `redis_sentinel_urls`: `redis://` or `rediss://` (TLS to the sentinels and the master).
    pub urls: Vec<Secret>,
    /// `redis_sentinel_master`: the name the sentinels monitor it under.
    pub master: String,
    /// `redis_sentinel_password_file` / `_env`: the sentinels' own `requirepass`.
    pub password: Option<Secret>,
}

/// The TLS of a `rediss://` store, as the PEM the client takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// `redis_ca_file`; `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// `redis_client_cert_file` and `redis_client_key_file`.
    pub client: Option<(Vec<u8>, Secret)>,
}

/// Key material that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// `[forward]`, validated.
#[derive(Debug, Clone, Default)]
pub struct ForwardConfig {
    /// (claim name, header). The claim `scope` stands for the normalized scope list.
    pub claim_headers: Vec<(String, HeaderName)>,
    /// `payload_header`: where a verified JWT's payload goes.
    pub payload_header: Option<HeaderName>,
    pub strip_authorization: bool,
}

impl ForwardConfig {
    /// Every header bearward fills from the token: the claim headers and the payload header.
    pub fn token_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.claim_headers
            .iter()
            .map(|(_, h)| h)
            .chain(&self.payload_header)
    }
}

/// One problem found in a config file, located by line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// Why a config could not be loaded. Stops the process (or a reload); never becomes a response.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The located problems, if the file was read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

impl Config {
    /// The files besides the config file whose content the running config holds: the TLS
    /// files of `https` upstreams. A change to one is a reason to reload, as a change to the
    /// config file is (a renewed client certificate, a new CA bundle).
    pub fn watched_files(&self) -> impl Iterator<Item = &Path> {
        self.upstreams
            .iter()
            .flat_map(|u| u.tls_files.iter().map(PathBuf::as_path))
            .chain(self.server.tls_files.iter().map(PathBuf::as_path))
            .chain(self.secret_files.iter().map(PathBuf::as_path))
    }

    /// Reads and validates a config file. Relative `jwks_file` and secret paths are taken from
    /// the directory the process runs in, as every other path on the command line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: name.clone(),
            source,
        })?;
        Config::from_toml_str(&text, &name)
    }

    /// Parses and validates config text; `name` is used in messages. The seam for tests.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut config = validate::compile(text, name)?;
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        config.digest.copy_from_slice(d.as_ref());
        Ok(config)
    }
}

/// `[authzen.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct PdpConfig {
    pub name: String,
    /// The PDP identifier, without a trailing `/`.
    pub url: String,
    pub endpoint: Option<http::Uri>,
    pub discover: bool,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_entries: u64,
    pub max_in_flight: usize,
    /// The `Authorization` header sent to the PDP.
    pub authorization: Option<http::HeaderValue>,
    /// `ca_file` and the client certificate, when either is set.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}
