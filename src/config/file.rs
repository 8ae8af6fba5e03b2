//! The shape of the TOML file, as serde reads it. Nothing here is checked beyond types:
//! `validate.rs` turns this into the runtime [`super::Config`]. Every table denies unknown keys,
//! so a typo such as `scoeps` is an error instead of an open route.
//!
//! Each field's doc comment is the one description of its key (`Reference:` the keys its row
//! names, `Default:`, then the meaning, with units and bounds): the manual's reference tables
//! (`docs/src/reference/*.md`) are made from them, and `tests/docs.rs` fails when a table and
//! the comments differ (`BEARWARD_BLESS=1 cargo test --test docs` rewrites the tables).

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub server: Spanned<ServerFile>,
    #[serde(default)]
    pub issuers: Vec<Spanned<IssuerFile>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<UpstreamFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub forward: Option<Spanned<ForwardFile>>,
    pub cache: Option<Spanned<CacheFile>>,
    pub dpop: Option<Spanned<DpopFile>>,
    pub decision: Option<Spanned<DecisionFile>>,
    pub telemetry: Option<Spanned<TelemetryFile>>,
    #[serde(default)]
    pub authzen: BTreeMap<Spanned<String>, Spanned<AuthzenFile>>,
}

/// `[authzen.NAME]`: an OpenID AuthZEN 1.0 policy decision point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthzenFile {
    /// Reference: `url`
    /// Default: required
    ///
    /// the PDP's identifier and base URL (`https://pdp.example.com`); the evaluation endpoint is
    /// `/access/v1/evaluation` under it, unless `discover` or `evaluation_endpoint` says otherwise
    pub url: Spanned<String>,
    /// Reference: `evaluation_endpoint`
    /// Default: none
    ///
    /// the Access Evaluation endpoint's URL, when it is not the default path
    pub evaluation_endpoint: Option<Spanned<String>>,
    /// Reference: `discover`
    /// Default: `false`
    ///
    /// read `access_evaluation_endpoint` from the PDP's metadata
    /// (`/.well-known/authzen-configuration`, inserted after the host), whose
    /// `policy_decision_point` must equal `url`; fetched on the first question, again after a
    /// failure
    pub discover: Option<Spanned<bool>>,
    /// Reference: `timeout`
    /// Default: `"2s"`
    ///
    /// the longest a question (discovery included) may take; past it, 503 with `Retry-After`
    pub timeout: Option<Spanned<String>>,
    /// Reference: `cache_ttl`
    /// Default: `"60s"`
    ///
    /// how long an answer is kept, per (subject, action, resource), never past the token's `exp`;
    /// `"0s"` asks every time. At most 1 hour
    pub cache_ttl: Option<Spanned<String>>,
    /// Reference: `cache_entries`
    /// Default: `10000`
    ///
    /// answers kept in memory (1 to 1,000,000); with `[cache] redis_url` and its `secret_file`
    /// also shared by the replicas (keyed by a SHA-256 of the question, sealed with the secret)
    pub cache_entries: Option<Spanned<u64>>,
    /// Reference: `max_in_flight`
    /// Default: `64`
    ///
    /// questions out at once; a request that waits 250 ms for a slot gets 503
    pub max_in_flight: Option<Spanned<u64>>,
    /// Reference: `bearer_token_file`, `bearer_token_env`
    /// Default: none
    ///
    /// a token sent as `Authorization: Bearer` to the PDP (the file is watched, as secrets are)
    pub bearer_token_file: Option<Spanned<String>>,
    /// In the reference row of `bearer_token_file`.
    pub bearer_token_env: Option<Spanned<String>>,
    /// Reference: `client_id`, `client_secret_file`, `client_secret_env`
    /// Default: none
    ///
    /// client credentials sent as HTTP Basic (RFC 6749 2.3.1 encoding), instead of a bearer token
    pub client_id: Option<Spanned<String>>,
    /// In the reference row of `client_id`.
    pub client_secret_file: Option<Spanned<String>>,
    /// In the reference row of `client_id`.
    pub client_secret_env: Option<Spanned<String>>,
    /// Reference: `ca_file`
    /// Default: the system roots
    ///
    /// PEM certificates an `https` PDP's certificate must chain to
    pub ca_file: Option<Spanned<String>>,
    /// Reference: `client_cert_file`, `client_key_file`
    /// Default: none
    ///
    /// a PEM client certificate chain and its key, presented to a PDP that asks for one (mTLS)
    pub client_cert_file: Option<Spanned<String>>,
    /// In the reference row of `client_cert_file`.
    pub client_key_file: Option<Spanned<String>>,
    /// Reference: `subject`
    /// Default: `{ type = "identity", id = "sub" }`
    ///
    /// the subject: `type`, the claim whose value is its `id` (a missing claim refuses, 403
    /// `pdp_no_subject`), and `properties`, claims copied into its properties
    pub subject: Option<Spanned<AuthzenSubjectFile>>,
    /// Reference: `action`
    /// Default: the method
    ///
    /// the action's `name`: the request's method, or `names = { GET = "can_read", ... }` (a
    /// method not in the map goes as itself; HEAD goes as GET's name unless it has its own)
    pub action: Option<Spanned<AuthzenActionFile>>,
    /// Reference: `resource`
    /// Default: `{ type = "route", id = "route" }`
    ///
    /// the resource: `type`, and `id` = `"route"` (the route's `path` or `prefix` as written,
    /// `/todos/{todoId}`, as the AuthZEN API gateway profile has it), `"path"` (the canonical
    /// path) or `"param:NAME"` (a `{NAME}` path segment)
    pub resource: Option<Spanned<AuthzenResourceFile>>,
    /// Reference: `context`
    /// Default: `[]`
    ///
    /// what goes in the question's context: `"client_ip"`, `"time"` (RFC 3339),
    /// `"request_id"`, `"method"`, `"path"`; never part of the cached answer's key
    pub context: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `subject` of an `[authzen.NAME]` or a route's `authzen`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthzenSubjectFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub properties: Option<Vec<String>>,
}

/// `action` of an `[authzen.NAME]` or a route's `authzen`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthzenActionFile {
    pub names: Option<BTreeMap<String, String>>,
}

/// `resource` of an `[authzen.NAME]` or a route's `authzen`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthzenResourceFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
}

/// A route's `cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    pub allow_origins: Spanned<Vec<Spanned<String>>>,
    pub allow_methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_headers: Option<Spanned<Vec<Spanned<String>>>>,
    pub expose_headers: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<Spanned<String>>,
}

/// An `endpoints` entry: `"host:port"`, or a table with its weight or its place as a backup.
/// Read by hand rather than as an untagged enum, so a mistyped key in a table is named.
#[derive(Debug)]
pub(super) struct EndpointFile {
    pub address: String,
    pub weight: Option<u64>,
    pub backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    weight: Option<u64>,
    backup: Option<bool>,
}

impl<'de> Deserialize<'de> for EndpointFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = EndpointFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", weight = N, backup = true }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointFile, E> {
                Ok(EndpointFile {
                    address: v.to_owned(),
                    weight: None,
                    backup: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<EndpointFile, A::Error> {
                let t =
                    EndpointTable::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(EndpointFile {
                    address: t.address,
                    weight: t.weight,
                    backup: t.backup,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// A route's `authzen`: the PDP's name, or a table overriding its question's shape.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RouteAuthzenFile {
    Name(String),
    Table(RouteAuthzenTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteAuthzenTable {
    pub pdp: String,
    pub subject: Option<AuthzenSubjectFile>,
    pub action: Option<AuthzenActionFile>,
    pub resource: Option<AuthzenResourceFile>,
    pub context: Option<Vec<String>>,
    pub reason_to_client: Option<bool>,
}

/// `[telemetry]`: OpenTelemetry traces exported over OTLP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryFile {
    /// Reference: `otlp_endpoint`
    /// Default: required in `[telemetry]`
    ///
    /// the OTLP collector: `http://host:4317` for gRPC; for `otlp_protocol = "http"`, the base URL (`/v1/traces` is appended to an empty path) or the full traces URL; `https://` for TLS
    pub otlp_endpoint: Spanned<String>,
    /// Reference: `otlp_protocol`
    /// Default: `"grpc"`
    ///
    /// `"grpc"` (OTLP/gRPC) or `"http"` (OTLP/HTTP with protobuf bodies)
    pub otlp_protocol: Option<Spanned<String>>,
    /// Reference: `trace_sample_ratio`
    /// Default: `1.0`
    ///
    /// share of requests without a parent that are traced (0 to 1, by trace id); a request whose `traceparent` names a parent follows its sampled flag (parent-based)
    pub trace_sample_ratio: Option<Spanned<f64>>,
    /// Reference: `service_name`
    /// Default: `"bearward"`
    ///
    /// the `service.name` of bearward's spans
    pub service_name: Option<Spanned<String>>,
    /// Reference: `otlp_timeout`
    /// Default: `"10s"`
    ///
    /// longest one export may take; spans of a batch that fails or times out are dropped and counted (`bearward_trace_spans_total{outcome="export_failed"}`)
    pub otlp_timeout: Option<Spanned<String>>,
    /// Reference: `max_queued_spans`
    /// Default: `2048`
    ///
    /// spans waiting for export at most (sent in batches of up to 512, at least once a second); past it new spans are dropped and counted (`outcome="queue_full"`), never waited for
    pub max_queued_spans: Option<Spanned<usize>>,
}

/// `[decision]`: the forward-auth / ext_authz listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionFile {
    /// Reference: `listen`
    /// Default: required in `[decision]`
    ///
    /// `IP:port` of the decision listener (see Decision mode)
    pub listen: Spanned<String>,
    /// Reference: `grpc_listen`
    /// Default: -
    ///
    /// `IP:port` of Envoy's ext_authz v3 gRPC service (`envoy.service.auth.v3.Authorization/
    /// Check`; h2c, or TLS with `[server]`'s keys when it has them): Envoy, Istio `CUSTOM`,
    /// Contour, Envoy Gateway, Gateway API `ExternalAuth`
    pub grpc_listen: Option<Spanned<String>>,
    /// Reference: `trusted_proxies`
    /// Default: `["127.0.0.1", "::1"]`
    ///
    /// peers that may ask; others get 403
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `original_method_header`, `original_uri_header`
    /// Default: `X-Original-Method`, `X-Original-URI`
    ///
    /// where nginx-style ingresses put the original request
    pub original_method_header: Option<Spanned<String>>,
    /// In the reference row of `original_method_header`.
    pub original_uri_header: Option<Spanned<String>>,
    /// Reference: `original_host_header`
    /// Default: none (not read)
    ///
    /// nginx and HAProxy: the header the ingress sets to the original request's `Host`
    /// (`proxy_set_header X-Original-Host $host;`), read as the host routes' `hosts` are
    /// matched against. Required for routes with `hosts` behind nginx or HAProxy, whose
    /// decision requests otherwise carry the auth location's own `Host`. Like the URI header, it
    /// must be set by the ingress on every decision request, or a client's copy would be read
    pub original_host_header: Option<Spanned<String>>,
    /// Reference: `envoy_path_prefix`
    /// Default: none
    ///
    /// Envoy `ext_authz` `path_prefix`: the original path follows it
    pub envoy_path_prefix: Option<Spanned<String>>,
    /// Reference: `ingress`
    /// Default: none (`check` warns)
    ///
    /// the one ingress in front: `"nginx"`, `"haproxy"` (`X-Original-*`), `"caddy"`, `"traefik"`
    /// (`X-Forwarded-Method`/`-Uri`/`-Host`) or `"envoy"` (the path after `envoy_path_prefix`, or
    /// the whole path without one). Only its convention is read; the others' headers are ignored.
    /// Unset: a request carrying two conventions is a 400. Naming a setting of another convention
    /// (`envoy_path_prefix` with `"nginx"`) is a config error
    pub ingress: Option<Spanned<Ingress>>,
}

/// `[decision] ingress`: the one ingress in front of the decision listener, whose convention
/// for describing the original request is the only one read.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ingress {
    /// `auth_request` with `X-Original-Method`/`X-Original-URI`, which nginx overwrites.
    Nginx,
    /// `forward_auth`: `X-Forwarded-Method`/`-Uri`/`-Host`.
    Caddy,
    /// `ForwardAuth`: `X-Forwarded-Method`/`-Uri`/`-Host`.
    Traefik,
    /// The Lua `auth-request` with `X-Original-Method`/`X-Original-URI` set by `set-header`.
    Haproxy,
    /// `ext_authz` HTTP service: the original path after `envoy_path_prefix`.
    Envoy,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Nginx => "nginx",
            Ingress::Caddy => "caddy",
            Ingress::Traefik => "traefik",
            Ingress::Haproxy => "haproxy",
            Ingress::Envoy => "envoy",
        }
    }
}

/// `[dpop]`: how DPoP proofs are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DpopFile {
    /// Reference: `algorithms`
    /// Default: `["ES256", "ES384", "EdDSA", "RS256", "PS256"]`
    ///
    /// what a proof may be signed with (asymmetric only; also RS384/512, PS384/512); the `algs` of
    /// DPoP challenges and `dpop_signing_alg_values_supported` in the RFC 9728 metadata
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `max_age`
    /// Default: `"60s"`
    ///
    /// how old a proof's `iat` may be
    pub max_age: Option<Spanned<String>>,
    /// Reference: `leeway`
    /// Default: `"5s"`
    ///
    /// clock skew: how far in the future `iat` may be, and added to `max_age`
    pub leeway: Option<Spanned<String>>,
    /// Reference: `replay_cache_entries`
    /// Default: `1000000`
    ///
    /// proof ids remembered at once in this process (each for at least `max_age + 2 x leeway`);
    /// when full, new proofs get 503 `dpop_replay_cache_full` rather than an old id being forgotten
    pub replay_cache_entries: Option<Spanned<u64>>,
    /// Reference: `nonce`
    /// Default: `false`
    ///
    /// require server nonces (RFC 9449 8): a proof without the current nonce gets 401
    /// `use_dpop_nonce` with a `DPoP-Nonce` header
    pub nonce: Option<bool>,
    /// Reference: `nonce_lifetime`
    /// Default: `"5m"`
    ///
    /// how long one nonce is issued; the previous one is still accepted
    pub nonce_lifetime: Option<Spanned<String>>,
    /// Reference: `nonce_secret_file`, `nonce_secret_env`
    /// Default: random per process
    ///
    /// at least 32 bytes, the same in every replica: nonces are an HMAC of the time window, so
    /// replicas issue and accept the same ones without sharing state
    pub nonce_secret_file: Option<Spanned<String>>,
    /// In the reference row of `nonce_secret_file`.
    pub nonce_secret_env: Option<Spanned<String>>,
}

/// `[cache]`: the optional store shared by replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    /// Reference: `redis_url`, `redis_url_file`, `redis_url_env`
    /// Default: required in `[cache]` (or `redis_cluster_urls`, `redis_sentinel_urls`)
    ///
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS, or `redis+unix:///path`;
    /// from a file (re-read when it changes) or an environment variable when it holds a
    /// password (`check` warns about one written inline)
    pub redis_url: Option<Spanned<String>>,
    /// In the reference row of `redis_url`.
    pub redis_url_file: Option<Spanned<String>>,
    /// In the reference row of `redis_url`.
    pub redis_url_env: Option<Spanned<String>>,
    /// Reference: `redis_cluster_urls`
    /// Default: -
    ///
    /// instead of `redis_url`: seed nodes of a Redis Cluster (`redis://` or `rediss://`, one
    /// scheme for all; the password in `redis_password_file`); each key's commands go to the
    /// master holding its slot
    pub redis_cluster_urls: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `redis_sentinel_urls`, `redis_sentinel_master`
    /// Default: -
    ///
    /// instead of `redis_url`: Redis Sentinels (`redis://host:26379`, or `rediss://` for TLS to
    /// the sentinels and the master alike) and the name of the master they monitor; commands
    /// go to the master they name, which is asked for again when it fails or steps down
    pub redis_sentinel_urls: Option<Spanned<Vec<Spanned<String>>>>,
    /// In the reference row of `redis_sentinel_urls`.
    pub redis_sentinel_master: Option<Spanned<String>>,
    /// Reference: `redis_sentinel_password_file`, `redis_sentinel_password_env`
    /// Default: none
    ///
    /// the sentinels' own password (their `requirepass`), when they ask for one; the master's
    /// is `redis_password_file`'s
    pub redis_sentinel_password_file: Option<Spanned<String>>,
    /// In the reference row of `redis_sentinel_password_file`.
    pub redis_sentinel_password_env: Option<Spanned<String>>,
    /// Reference: `redis_username`
    /// Default: the URL's, else `default`
    ///
    /// the ACL user bearward authenticates as (`AUTH user password`, with `redis_password_file`);
    /// it replaces one the URL holds, and is the only way to name one for a sentinel-named master
    pub redis_username: Option<Spanned<String>>,
    /// Reference: `redis_password_file`, `redis_password_env`
    /// Default: the URL's
    ///
    /// the password (`AUTH`), kept out of the URL; it replaces one the URL holds
    pub redis_password_file: Option<Spanned<String>>,
    /// In the reference row of `redis_password_file`.
    pub redis_password_env: Option<Spanned<String>>,
    /// Reference: `redis_ca_file`
    /// Default: the system roots
    ///
    /// PEM certificates a `rediss://` server's certificate must chain to (a managed service's
    /// or your own CA)
    pub redis_ca_file: Option<Spanned<String>>,
    /// Reference: `redis_client_cert_file`, `redis_client_key_file`
    /// Default: none
    ///
    /// PEM client certificate chain and its key, for a `rediss://` server that asks for one
    pub redis_client_cert_file: Option<Spanned<String>>,
    /// In the reference row of `redis_client_cert_file`.
    pub redis_client_key_file: Option<Spanned<String>>,
    /// Reference: `secret_file`, `secret_env`
    /// Default: none: those stay per process
    ///
    /// at least 32 bytes, the same in every replica: introspection answers, AuthZEN decisions,
    /// exchanged tokens and each issuer's last fetched signing keys are kept in the store sealed
    /// with it (AES-256-GCM, bound to their key), so nothing else that can write to the store
    /// can forge them, nor read the tokens; a new secret leaves what the old one sealed unread
    /// (counted as `forged`) until it expires
    pub secret_file: Option<Spanned<String>>,
    /// In the reference row of `secret_file`.
    pub secret_env: Option<Spanned<String>>,
    /// Reference: `redis_timeout`
    /// Default: `"100ms"`
    ///
    /// longest wait for one command; then the process cache alone serves
    pub redis_timeout: Option<Spanned<String>>,
    /// Reference: `key_prefix`
    /// Default: `"bearward:"`
    ///
    /// prepended to every key, so deployments can share a store
    pub key_prefix: Option<Spanned<String>>,
    /// Reference: `dpop_replay_store_down`
    /// Default: `"refuse"`
    ///
    /// what a DPoP proof gets when the store cannot say whether its id was seen (see `[dpop]`)
    pub dpop_replay_store_down: Option<Spanned<super::StoreDown>>,
    /// Reference: `rate_limit_fallback_replicas`
    /// Default: `1`
    ///
    /// with the store down, each replica allows a route's `rate_limit` divided by this (set it to
    /// the replica count)
    pub rate_limit_fallback_replicas: Option<Spanned<u64>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    /// Reference: `listen`
    /// Default: required
    ///
    /// `IP:port` to serve on
    pub listen: Spanned<String>,
    /// Reference: `admin_listen`
    /// Default: none
    ///
    /// `IP:port` for `/healthz`, `/readyz`, `/metrics`
    pub admin_listen: Option<Spanned<String>>,
    /// Reference: `realm`
    /// Default: `"bearward"`
    ///
    /// realm in `WWW-Authenticate`
    pub realm: Option<Spanned<String>>,
    /// Reference: `max_header_bytes`
    /// Default: `16384`
    ///
    /// limit on one request head (431 beyond it; 8192 to 1 MiB)
    pub max_header_bytes: Option<Spanned<u64>>,
    /// Reference: `max_headers`
    /// Default: `100`
    ///
    /// limit on the number of request headers
    pub max_headers: Option<Spanned<u64>>,
    /// Reference: `max_path_bytes`
    /// Default: `8192`
    ///
    /// limit on the raw path (400 beyond it)
    pub max_path_bytes: Option<Spanned<u64>>,
    /// Reference: `header_read_timeout`
    /// Default: `"10s"`
    ///
    /// a client must send a complete request head within this (slowloris); the time counts from
    /// when the connection opens or its previous response is sent, so it also closes idle
    /// keep-alive connections. Requests in flight and upgraded connections are not affected. An
    /// HTTP/2 connection with no stream in flight and none started for this long is closed with
    /// GOAWAY (checked every `min(header_read_timeout, send_timeout)`, so within one check of that
    /// time). A balancer's PROXY protocol header (`proxy_protocol_from`) has this long as well
    pub header_read_timeout: Option<Spanned<String>>,
    /// Reference: `body_read_timeout`
    /// Default: `"60s"`
    ///
    /// the longest a request body may pause; past it the client gets 408 (`client_body_timeout`),
    /// the connection closes, and the upstream connection carrying the half-sent body is closed,
    /// never reused
    pub body_read_timeout: Option<Spanned<String>>,
    /// Reference: `send_timeout`
    /// Default: `"60s"`
    ///
    /// the longest an HTTP/1 client may read nothing of what it is being sent (a response or an
    /// upgraded stream); past it the connection closes. On HTTP/2, the longest a response body may
    /// wait for the client to open its flow-control window; past it the connection closes (checked
    /// every `min(header_read_timeout, send_timeout)`)
    pub send_timeout: Option<Spanned<String>>,
    /// Reference: `shutdown_grace`
    /// Default: `"30s"`
    ///
    /// on SIGTERM/SIGINT: stop accepting, let in-flight requests finish for this long, exit 0
    pub shutdown_grace: Option<Spanned<String>>,
    /// Reference: `shutdown_delay`
    /// Default: `"0s"`
    ///
    /// on SIGTERM/SIGINT: `/readyz` answers 503 at once while bearward keeps accepting and serving for this long (the time endpoints and load balancers take to stop sending; Traefik's `requestAcceptGraceTimeout`), then stops accepting and drains for `shutdown_grace`. A second signal ends the delay
    pub shutdown_delay: Option<Spanned<String>>,
    /// Reference: `trusted_proxies`
    /// Default: `[]`
    ///
    /// IPs or CIDRs whose `X-Forwarded-*`, `Forwarded`, `X-Real-IP` and the like are believed (see
    /// Forwarding rules); for `rate_limit` `key = "ip"`, the client behind them is the rightmost
    /// `X-Forwarded-For` address outside this list (at most 64 entries read)
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `proxy_protocol_from`
    /// Default: `[]`
    ///
    /// IPs or CIDRs of L4 load balancers (AWS NLB, HAProxy or nginx in TCP mode, Envoy) whose
    /// connections open with a PROXY protocol header (v1 or v2, read before TLS): its source is
    /// the client's address for everything after (logs, `X-Forwarded-For`, `trusted_proxies`,
    /// `source_ranges`, rate limits by `ip`). A connection from them without a valid header is
    /// closed; `LOCAL`/`UNKNOWN` (their health checks) keep the peer's address. Other peers are
    /// served as they are: a header they send is a malformed request (400)
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `allow_semicolon_in_path`
    /// Default: `false`
    ///
    /// accept `;` in paths. A dot segment carrying a parameter (`..;x`, `.;`, `%2e%2e;`, `..%3B`)
    /// is still refused (400, `path_dot_segment_parameter`): Tomcat and Spring drop the parameter
    /// and then resolve `..`, so `/public/..;/api/admin` would be checked against `/public` and
    /// served as `/api/admin`
    pub allow_semicolon_in_path: Option<bool>,
    /// Reference: `allow_underscores_in_headers`
    /// Default: `false`
    ///
    /// pass client headers whose names hold `_` (nginx's `underscores_in_headers`); even then the
    /// underscore spellings of the headers bearward sets or filters (claim headers,
    /// `X-Forwarded-*`, `X-Real-IP`, hop-by-hop, ...) are dropped
    pub allow_underscores_in_headers: Option<bool>,
    /// Reference: `max_body_bytes`
    /// Default: none
    ///
    /// largest request body forwarded on routes that set none (nginx's `client_max_body_size`,
    /// Envoy's `max_request_bytes`): a `Content-Length` over it is a 413 before the token check; a
    /// chunked or HTTP/2 body is counted as it streams and cut at the limit (413, the upstream
    /// connection closed mid-body, so the upstream never gets a whole request); 0 refuses any body
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Reference: `resource`
    /// Default: none
    ///
    /// this API's RFC 9728 resource identifier, for every route that names none (see Protected
    /// resource metadata)
    pub resource: Option<Spanned<String>>,
    /// Reference: `http2`
    /// Default: `true`
    ///
    /// accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1
    pub http2: Option<bool>,
    /// Reference: `log_format`
    /// Default: `"text"`
    ///
    /// `"text"` or `"json"` (one JSON object per line)
    pub log_format: Option<Spanned<LogFormat>>,
    /// Reference: `access_log`
    /// Default: `true`
    ///
    /// one log line per request (target `bearward::access`): method, canonical path, route, status,
    /// decision, reason, upstream status and time, latency, the token's id (a SHA-256 prefix, never
    /// the token), `peer`, and, when the peer is in `trusted_proxies` or an ingress on the decision
    /// listener, `client`: the address its `X-Forwarded-For` names (as for rate limits)
    pub access_log: Option<bool>,
    /// Reference: `access_log_claims`
    /// Default: `[]`
    ///
    /// claims of a verified token written in its requests' access-log lines, as field `claims`,
    /// a JSON object (`{"azp":"billing","tid":"4f6c…"}`): who was refused, or is sending the
    /// traffic, without `explain`. Refused requests too, once the token itself was valid (a
    /// missing scope, a claim condition, a policy, a rate limit). Claim paths as in
    /// `claim_headers`, values as a claim header would carry them, each cut at 128 bytes; a
    /// claim the token lacks is left out. `sub` and `email` are personal data: log them only
    /// where the logs may hold it. At most 16
    pub access_log_claims: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `request_id_header`
    /// Default: `"x-request-id"`
    ///
    /// the request id: taken from this header when the peer is in `trusted_proxies` or an ingress on the decision listener (1 to 128 visible ASCII characters), else made (a UUIDv4); the client's own is replaced. Sent to the upstream, returned to the client (and to the ingress in decision mode), and written in the access log (`request_id`). `""` turns request ids off
    pub request_id_header: Option<Spanned<String>>,
    /// Reference: `token_cache_entries`
    /// Default: `10000`
    ///
    /// verified-token cache size; `0` turns the cache off (every request pays the signature). An
    /// entry holds a copy of the token and its parsed claims, so its size follows the token's:
    /// about 2 kB with the benchmark's RS256 tokens (32 MiB peak RSS with 10,000 cached). Each
    /// worker thread's front may keep up to `min(entries, 4096)` more alive after the cache has let
    /// them go
    pub token_cache_entries: Option<Spanned<u64>>,
    /// Reference: `mode`
    /// Default: `"enforce"`
    ///
    /// default `mode` of routes that set none; `"audit"` turns audit mode on everywhere
    pub mode: Option<Spanned<Mode>>,
    /// Reference: `watch_config`
    /// Default: `true`
    ///
    /// reload when the config file's content changes (SIGHUP always reloads)
    pub watch_config: Option<bool>,
    /// Reference: `worker_threads`
    /// Default: one per CPU the process may use
    ///
    /// connection worker threads (1 to 1024), as nginx's `worker_processes` and Envoy's
    /// `--concurrency`: each runs its own event loop (tokio's current-thread runtime), and every
    /// accepted connection is handed to the one serving the fewest and stays on it; idle upstream
    /// connections (`max_idle_connections`) are kept per worker, as nginx's `keepalive`. The main
    /// thread accepts and runs the admin listener and the background work (key refresh, reloads,
    /// health checks). With 1, what a sidecar pinned to one core gets by default, the main thread
    /// serves the connections itself
    pub worker_threads: Option<Spanned<u64>>,
    /// Reference: `max_connections`
    /// Default: the file-descriptor limit, less 128, halved
    ///
    /// proxy connections open at once (nginx's `worker_connections`). At the limit bearward stops
    /// accepting, so new connections wait in the kernel's listen backlog instead of being accepted
    /// and starved; open connections keep being served, and the admin listener (which has its own
    /// bound of 64 connections) keeps answering. The default leaves one descriptor per client
    /// connection for its upstream connection and 128 for the admin port, JWKS fetches and files; a
    /// configured value above it is logged as a warning at start
    pub max_connections: Option<Spanned<u64>>,
    /// Reference: `listen_backlog`
    /// Default: `4096`
    ///
    /// the kernel's queue of connections not yet accepted, on every listener (proxy, TLS, decision,
    /// admin): where connections past `max_connections` wait. A full queue drops new handshakes,
    /// and the client retries only after 1 s, then 3 s (tokio's own default of 128 did that to a
    /// burst of a few hundred; nginx uses 511, Envoy 4096). The kernel caps it at
    /// `net.core.somaxconn` (4096 since Linux 5.4; in Kubernetes a pod sets it with
    /// `securityContext.sysctls`); `bearward check` warns when the configured value is above it.
    /// `tests/overload.rs`: 600 connections at once against `max_connections = 50`, none waits for
    /// a retransmit, all answered
    pub listen_backlog: Option<Spanned<u64>>,
    /// Reference: `max_requests_in_flight`
    /// Default: `4096`
    ///
    /// requests in flight on the proxy listener, from their head to the end of their response body.
    /// Beyond it a request gets 503 with `Retry-After: 1` and reason `overloaded` before its path,
    /// route or token is looked at, so an overload cannot turn into signature checks, JWKS
    /// refetches or an upstream pile-up
    pub max_requests_in_flight: Option<Spanned<u64>>,
    /// Reference: `max_requests_per_connection`
    /// Default: no limit
    ///
    /// the most requests one client connection carries (nginx's `keepalive_requests`, 1000
    /// there; Envoy's `max_requests_per_connection`): the answer to the last says
    /// `Connection: close` and the connection closes after it (HTTP/1), or the connection is
    /// sent GOAWAY as the last starts and closes once its streams have ended (HTTP/2). Clients
    /// then connect again, and an L4 balancer in front (AWS NLB, a Kubernetes Service) spreads
    /// them over the replicas as they are now, new ones included. 1 to 1,000,000,000
    pub max_requests_per_connection: Option<Spanned<u64>>,
    /// Reference: `max_connection_age`
    /// Default: no limit
    ///
    /// a client connection older than this is ended as `max_requests_per_connection` ends one,
    /// at its next request (Envoy's `max_connection_duration`, gRPC's `MAX_CONNECTION_AGE`,
    /// nginx's `keepalive_time`): a client that keeps one connection busy for days still moves
    /// to a replica added since. Each connection's age is cut by up to a tenth at random (as
    /// gRPC jitters its own), so clients that connected together do not all reconnect
    /// together. An idle connection is left to `header_read_timeout`. 1 s to 30 days
    pub max_connection_age: Option<Spanned<String>>,
    /// Reference: `http2_max_concurrent_streams`
    /// Default: `256`
    ///
    /// streams per HTTP/2 connection (see HTTP/2 limits)
    pub http2_max_concurrent_streams: Option<Spanned<u64>>,
    /// Reference: `tls_cert_file`, `tls_key_file`
    /// Default: none
    ///
    /// TLS on the listener (rustls on aws-lc-rs; TLS 1.2 and 1.3; ALPN `h2` when `http2` is on, and
    /// `http/1.1`): the PEM chain (leaf first) and its private key. Read with the config and
    /// watched with it: a renewed certificate (key and certificate files replaced) is served to new
    /// connections without a restart, while open connections keep theirs; a key and certificate
    /// that do not go together keep the previous pair in force, as any refused reload does
    pub tls_cert_file: Option<Spanned<String>>,
    /// In the reference row of `tls_cert_file`.
    pub tls_key_file: Option<Spanned<String>>,
    /// Reference: `tls_certificates`
    /// Default: none
    ///
    /// more certificates for the listener, each `{ cert_file = "...", key_file = "..." }`, for a
    /// gateway serving several hosts (routes with `hosts`): a client's handshake gets the first
    /// that is valid for the name it asks for (SNI), as the client itself checks names (its DNS
    /// and IP subject alternative names, `*.` wildcards one label deep); a client that names
    /// none of them, or no name, gets `tls_cert_file`'s. Read and watched as that one is; at
    /// most 64
    pub tls_certificates: Option<Spanned<Vec<Spanned<ListenerCertFile>>>>,
    /// Reference: `tls_client_ca_file`, `tls_client_auth`
    /// Default: none, `"none"`
    ///
    /// client certificates: `"optional"` asks for one and verifies it against these CAs when sent
    /// (a client without one still connects); `"required"` fails the handshake of a client without
    /// one that verifies. A verified certificate is what certificate-bound tokens are checked
    /// against
    pub tls_client_ca_file: Option<Spanned<String>>,
    /// In the reference row of `tls_client_ca_file`.
    pub tls_client_auth: Option<Spanned<crate::tls::ClientAuth>>,
    /// Reference: `tls_handshake_timeout`
    /// Default: `"10s"`
    ///
    /// a client must finish the TLS handshake within this; handshakes are counted by outcome in
    /// `bearward_tls_handshakes_total` (`ok`, `timeout`, `not_tls`, `no_client_certificate`,
    /// `bad_client_certificate`, `incompatible`, `client_alert`, `client_closed`, ...)
    pub tls_handshake_timeout: Option<Spanned<String>>,
    /// Reference: `public_origin`
    /// Default: none
    ///
    /// `scheme://host[:port]` clients use to reach this API: a DPoP proof's `htu` must be this plus
    /// the canonical path. Unset: the scheme the request came in on (or a trusted proxy's
    /// `X-Forwarded-Proto`) and its `Host` (or a trusted proxy's `X-Forwarded-Host`); of a
    /// forwarded header, the rightmost value (last line, last comma element), the one the trusted
    /// proxy added: a proxy that appends keeps the client's own value to its left, which must not
    /// choose the origin a proof is checked against
    pub public_origin: Option<Spanned<String>>,
    /// Reference: `client_cert_header`, `client_cert_header_format`
    /// Default: none, `"xfcc"` for `x-forwarded-client-cert` else `"pem"`
    ///
    /// behind a TLS-terminating proxy, the header it passes the verified client certificate in:
    /// Envoy's `X-Forwarded-Client-Cert`, read by Envoy's grammar (elements by unquoted `,`, pairs
    /// by unquoted `;`, quoted values with `\"` and `\\` escapes, keys in any case): the first
    /// element's `Hash=`, else the thumbprint of its `Cert=`; an element with two `Hash` or `Cert`
    /// keys, or a `Hash` that is not its `Cert`'s, gives no certificate, so a subject spelling
    /// `",Hash=...` or `;Hash=...` cannot pass for another client's certificate. The first element
    /// is the client's when the proxy that terminated its TLS sanitizes the header (Envoy's
    /// `forward_client_cert_details: SANITIZE_SET`) and later proxies append or a URL-encoded PEM
    /// (nginx `$ssl_client_escaped_cert`). Read only from `trusted_proxies` (required); from anyone
    /// else it is removed before the request goes on
    pub client_cert_header: Option<Spanned<String>>,
    /// In the reference row of `client_cert_header`.
    pub client_cert_header_format: Option<Spanned<CertHeaderFormat>>,
}

/// `client_cert_header_format`: how a TLS-terminating proxy passes the client certificate.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CertHeaderFormat {
    /// Envoy's `X-Forwarded-Client-Cert`: `Hash=<hex SHA-256>` or `Cert="<URL-encoded PEM>"`.
    Xfcc,
    /// A URL-encoded PEM certificate (nginx `$ssl_client_escaped_cert`, HAProxy, Traefik).
    Pem,
}

pub use crate::telemetry::LogFormat;

/// `[[issuers]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerFile {
    /// Reference: `issuer`
    /// Default: required
    ///
    /// must equal the token's `iss` exactly; or, for a multi-tenant IdP whose tenants share one
    /// set of keys (Microsoft Entra ID's common endpoint), one path segment may be `{tenantid}`
    /// (`https://login.microsoftonline.com/{tenantid}/v2.0`, the issuer its discovery document
    /// gives): then `iss` may name any tenant there, and the token's `tid` claim must name the
    /// same one. Such an entry takes keys from `jwks_uri` or `jwks_file` (no one discovery
    /// document is the tenants'), takes JWTs only, and an entry whose `issuer` is a tenant's
    /// exact `iss` takes that tenant's tokens before it. Routes, metrics and logs name it as
    /// written
    pub issuer: Spanned<String>,
    /// Reference: `tenants`
    /// Default: any tenant
    ///
    /// with a `{tenantid}` issuer, the tenant ids whose tokens are taken (Entra's `tid`,
    /// `["8c2d…"]`); a token of any other is refused as a foreign issuer's (401, reason
    /// `bad_issuer`). Without it, any tenant of the IdP may present tokens for a multi-tenant
    /// application, one an attacker creates too: `check` warns, for routes that decide by
    /// tenant themselves (`claims = { tid = [...] }`, `allow_if`) to be sure of. At most 100,000
    pub tenants: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `jwks_uri`
    /// Default: -
    ///
    /// where the signing keys are (one of `jwks_uri`, `discovery`, `jwks_file`)
    pub jwks_uri: Option<Spanned<String>>,
    /// Reference: `discovery`
    /// Default: `false`
    ///
    /// find `jwks_uri` in `<issuer>/.well-known/openid-configuration`, then
    /// `/.well-known/oauth-authorization-server`
    pub discovery: Option<Spanned<bool>>,
    /// Reference: `jwks_file`
    /// Default: -
    ///
    /// a local JWKS file (static keys)
    pub jwks_file: Option<Spanned<String>>,
    /// Reference: `proxy`
    /// Default: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`
    ///
    /// `http://[user:password@]host:port` of the egress proxy every call to this issuer (JWKS,
    /// discovery, introspection) goes through; HTTPS is tunnelled with `CONNECT`
    pub proxy: Option<Spanned<String>>,
    /// Reference: `allow_insecure_http`
    /// Default: `false`
    ///
    /// take keys, discovery and introspection over plain `http://` off loopback (a test IdP
    /// only: anyone on the path can swap keys fetched that way); loopback hosts never need it
    pub allow_insecure_http: Option<Spanned<bool>>,
    /// Reference: `trusted_key_origins`
    /// Default: `[]`
    ///
    /// `https://host[:port]` origins besides the issuer's own where its discovery document may
    /// place `jwks_uri` or the introspection endpoint (Google's keys are on
    /// `https://www.googleapis.com`); link-local and metadata addresses only when listed
    pub trusted_key_origins: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `audiences`
    /// Default: required
    ///
    /// the token's `aud` must contain one of these
    pub audiences: Option<Spanned<Vec<String>>>,
    /// Reference: `algorithms`
    /// Default: `["RS256"]`
    ///
    /// allow-list from RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, HS256/384/512 (HS only
    /// with a secret); never `none`
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `leeway`
    /// Default: `"30s"`
    ///
    /// clock-skew allowance for `exp`, `nbf`, `iat` (at most 5m)
    pub leeway: Option<Spanned<String>>,
    /// Reference: `max_lifetime`
    /// Default: none
    ///
    /// the longest a token may have been made to live (Envoy's `max_lifetime`, Kong's
    /// `maximum_expiration`): `exp - iat`, or without `iat` how far `exp` is from now (plus
    /// `leeway`), at most this, else 401 `invalid_token`, reason `lifetime_too_long`. A
    /// long-lived token an IdP was misconfigured to issue, or one minted with a stolen client's
    /// long lifetime, is refused even though it is validly signed and unexpired. Introspection
    /// answers too, when they give `exp`. `"1h"`; from 1s to 365d
    pub max_lifetime: Option<Spanned<String>>,
    /// Reference: `typ`
    /// Default: `"at+jwt"`
    ///
    /// `"at+jwt"`: the JOSE `typ` must be `at+jwt` (RFC 9068); `"jwt"`: `at+jwt`, `JWT` or absent
    pub typ: Option<Spanned<TypPolicy>>,
    /// Reference: `scope_claims`
    /// Default: `["scope", "scp"]`
    ///
    /// claims read for scopes, first present wins (`scope`: space-separated string; `scp`: array or
    /// string)
    pub scope_claims: Option<Spanned<Vec<String>>>,
    /// Reference: `hmac_secret_file`, `hmac_secret_env`
    /// Default: -
    ///
    /// the symmetric key for HS* (at least 32 bytes)
    pub hmac_secret_file: Option<Spanned<String>>,
    /// In the reference row of `hmac_secret_file`.
    pub hmac_secret_env: Option<Spanned<String>>,
    /// Reference: `max_token_bytes`
    /// Default: `8192`
    ///
    /// longer tokens are refused before any parsing
    pub max_token_bytes: Option<Spanned<u64>>,
    /// Reference: `accept_bound_tokens`
    /// Default: `false`
    ///
    /// take tokens bound to a key (`cnf` claim: DPoP, mTLS) as plain bearer tokens instead of
    /// checking their proof of possession; only where something before bearward verifies the
    /// binding (see Sender-constrained tokens)
    pub accept_bound_tokens: Option<bool>,
    /// Reference: `token_format`
    /// Default: `"jwt"`
    ///
    /// `"jwt"`, `"opaque"` (every token introspected) or `"auto"` (JWTs of JWT issuers locally, the
    /// rest introspected); see Opaque tokens
    pub token_format: Option<Spanned<TokenFormat>>,
    /// Reference: `introspection`
    /// Default: `false`
    ///
    /// find `introspection_endpoint` by discovery (one of this and `introspection_endpoint` with
    /// `opaque`/`auto`)
    pub introspection: Option<Spanned<bool>>,
    /// Reference: `introspection_endpoint`
    /// Default: -
    ///
    /// the RFC 7662 endpoint
    pub introspection_endpoint: Option<Spanned<String>>,
    /// Reference: `introspection_client_id`
    /// Default: required with introspection
    ///
    /// bearward's client id at the endpoint
    pub introspection_client_id: Option<Spanned<String>>,
    /// Reference: `introspection_client_auth`
    /// Default: `"client_secret_basic"` (`"private_key_jwt"` with a key file)
    ///
    /// or `"client_secret_post"`
    pub introspection_client_auth: Option<Spanned<ClientAuthMethod>>,
    /// Reference: `introspection_client_secret`
    /// Default: -
    ///
    /// refused: an inline secret would sit in a ConfigMap and in every copy of the file; the error
    /// names `_file` and `_env` instead
    pub introspection_client_secret: Option<Spanned<toml::Value>>,
    /// Reference: `introspection_client_secret_file`, `introspection_client_secret_env`
    /// Default: -
    ///
    /// the client secret; never inline
    pub introspection_client_secret_file: Option<Spanned<String>>,
    /// In the reference row of `introspection_client_secret_file`.
    pub introspection_client_secret_env: Option<Spanned<String>>,
    /// Reference: `introspection_client_key_file`, `introspection_client_key_alg`, `introspection_client_key_id`
    /// Default: -, `"RS256"`, -
    ///
    /// `private_key_jwt`: a PEM private key, the algorithm it signs with, the `kid` to send
    pub introspection_client_key_file: Option<Spanned<String>>,
    /// In the reference row of `introspection_client_key_file`.
    pub introspection_client_key_alg: Option<Spanned<String>>,
    /// In the reference row of `introspection_client_key_file`.
    pub introspection_client_key_id: Option<Spanned<String>>,
    /// Reference: `introspection_cache_ttl`
    /// Default: `"60s"`
    ///
    /// longest an active answer is kept (never past its `exp`; at most 1h)
    pub introspection_cache_ttl: Option<Spanned<String>>,
    /// Reference: `introspection_negative_ttl`
    /// Default: `"5s"`
    ///
    /// how long an inactive or refused answer is kept (at most 5m)
    pub introspection_negative_ttl: Option<Spanned<String>>,
    /// Reference: `introspection_timeout`
    /// Default: `"2s"`
    ///
    /// one call, connect to last byte
    pub introspection_timeout: Option<Spanned<String>>,
    /// Reference: `introspection_max_in_flight`
    /// Default: `32`
    ///
    /// calls at once to the endpoint
    pub introspection_max_in_flight: Option<Spanned<u64>>,
    /// Reference: `introspection_require_audience`
    /// Default: `true`
    ///
    /// refuse an answer without `aud` (see Opaque tokens for why)
    pub introspection_require_audience: Option<Spanned<bool>>,
    /// Reference: `jwks_refresh`
    /// Default: `"5m"`
    ///
    /// refresh interval when the IdP sends no `Cache-Control: max-age`
    pub jwks_refresh: Option<Spanned<String>>,
    /// Reference: `jwks_min_refresh`, `jwks_max_refresh`
    /// Default: `"1m"`, `"24h"`
    ///
    /// bounds applied to the IdP's `max-age`
    pub jwks_min_refresh: Option<Spanned<String>>,
    /// In the reference row of `jwks_min_refresh`.
    pub jwks_max_refresh: Option<Spanned<String>>,
    /// Reference: `jwks_timeout`
    /// Default: `"5s"`
    ///
    /// timeout of one JWKS or discovery fetch
    pub jwks_timeout: Option<Spanned<String>>,
    /// Reference: `jwks_max_bytes`
    /// Default: `262144`
    ///
    /// largest JWKS or discovery document accepted
    pub jwks_max_bytes: Option<Spanned<u64>>,
    /// Reference: `min_rsa_bits`
    /// Default: `2048`
    ///
    /// shortest RSA modulus taken from the JWKS, in bits (2048 to 8192; raise it to 3072 for a
    /// stricter policy)
    pub min_rsa_bits: Option<Spanned<u64>>,
    /// Reference: `unknown_kid_cooldown`
    /// Default: `"30s"`
    ///
    /// least time between refetches caused by an unknown `kid`
    pub unknown_kid_cooldown: Option<Spanned<String>>,
    /// Reference: `max_stale`
    /// Default: `"24h"`
    ///
    /// how long the last good keys keep serving while the IdP is unreachable. With a sealing
    /// `[cache]` (`secret_file`), a replica that cannot fetch keys, one started during the
    /// outage too, takes the set another replica fetched last, while it is younger than this
    pub max_stale: Option<Spanned<String>>,
    /// Reference: `revoked`
    /// Default: none
    ///
    /// tokens of this issuer refused before they expire, for a token, an account or a client
    /// known to be compromised, or everyone at once: `{ token_ids = ["..."] }` (`jti`),
    /// `subjects = ["..."]` (`sub`), `clients = ["..."]` (`azp`, else `client_id`), and
    /// `issued_before = "2026-12-07T18:00:00Z"`, every token whose `iat` is earlier or that has
    /// none (logs everyone out after an incident, without replacing the signing key; `check`
    /// warns of a time in the future, which would refuse new tokens too). A JWT's
    /// signature cannot be taken back and the IdP's revocation never reaches a resource server:
    /// this is how it does. Checked when a token is validated; a reload empties the
    /// verified-token cache, so an edit applied (`watch_config`, SIGHUP) refuses the tokens in
    /// use from the next request. 401 `invalid_token`, reason `token_revoked`. Opaque tokens too,
    /// on their introspection answer. At most 100,000 entries in all; an empty string is none
    pub revoked: Option<Spanned<RevokedFile>>,
}

/// A route's `respond`: the answer bearward gives in place of an upstream's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RespondFile {
    pub status: u16,
    pub body: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
}

/// A route's `authorization_details` entry: what one object of the token's must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthorizationDetailFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub actions: Option<Vec<String>>,
    pub locations: Option<Vec<String>>,
    pub datatypes: Option<Vec<String>>,
    pub privileges: Option<Vec<String>>,
    pub identifier: Option<String>,
}

/// `[[issuers]] revoked`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokedFile {
    pub token_ids: Option<Vec<String>>,
    pub subjects: Option<Vec<String>>,
    pub clients: Option<Vec<String>>,
    pub issued_before: Option<Spanned<String>>,
}

/// `typ`: what the JOSE header's `typ` must say.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum TypPolicy {
    /// RFC 9068: `at+jwt` (or `application/at+jwt`) only.
    #[serde(rename = "at+jwt")]
    AtJwt,
    /// `at+jwt`, `JWT` or no `typ` at all.
    #[serde(rename = "jwt")]
    Jwt,
}

/// `token_format`: how an issuer's access tokens are checked.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// Signed JWTs, validated locally against the issuer's keys.
    Jwt,
    /// Opaque strings, asked about at the introspection endpoint (RFC 7662).
    Opaque,
    /// A JWS whose `iss` names a JWT issuer is validated locally; anything else introspected.
    Auto,
}

/// `introspection_client_auth`: how bearward authenticates to the introspection endpoint.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    /// RFC 8705 2.1: the TLS client certificate authenticates the client.
    TlsClientAuth,
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// Reference: `url`
    /// Default: required
    ///
    /// `http://host[:port]` or `https://host[:port]`, no path; without a port, 80 or 443
    pub url: Spanned<String>,
    /// Reference: `endpoints`
    /// Default: the `url`'s host and port
    ///
    /// `["10.0.0.1:3000", "10.0.0.2:3000", "api-3.internal"]`: the instances to connect to, in
    /// turn, in place of the `url`'s host (nginx's `upstream` servers, Envoy's cluster
    /// endpoints). Each request goes to the next in rotation, over a pooled connection to it;
    /// one that refuses a connection or does not answer within `connect_timeout` is left out for
    /// `endpoint_fail_timeout` and the request goes to the next (nothing was sent; at most three
    /// endpoints per request), and when all are out, all are tried (Envoy's panic threshold)
    /// rather than none. A request that a new connection to one endpoint ends without a byte
    /// of answer goes on to the next when sending it twice is safe (nothing was sent, or it is
    /// idempotent without a body: nginx's `proxy_next_upstream error`), counted in
    /// `bearward_upstream_retries_total`; a POST is a 502. An HTTP/2 upstream (`protocol`: gRPC) keeps one connection to each
    /// endpoint and sends each request over the rotation's next, so calls spread over the
    /// instances rather than riding one connection to one of them. Without a port, the `url`'s
    /// scheme's. The `url` still gives the
    /// scheme, the `Host` with `pass_host_header = false`, and the name the TLS certificate is
    /// checked against. At most 64. An entry may be a table instead:
    /// `{ address = "10.0.0.3:3000", weight = 3 }` (1 to 100, default 1) takes that share of the
    /// rotation (nginx's smooth weighted round robin: 3, 1, 1 go a, b, a, c, a), and
    /// `{ address = "10.0.0.9:3000", backup = true }` is in the rotation only while every
    /// endpoint that is not a backup is out (nginx's and HAProxy's `backup`; backups in turn)
    pub endpoints: Option<Spanned<Vec<Spanned<EndpointFile>>>>,
    /// Reference: `unix_socket`
    /// Default: none
    ///
    /// `"/run/app/gunicorn.sock"`: connect to the upstream over this Unix domain socket in place
    /// of TCP (nginx's `proxy_pass http://unix:/path`, HAProxy's `server s1 /path`, Envoy's
    /// `pipe`), for an application server in the same pod or host that listens on one (gunicorn
    /// and uWSGI `--bind unix:`, Puma, a socket in a shared `emptyDir`): no port to expose, and
    /// only what can open the file reaches the API. An absolute path of at most 107 bytes (the
    /// kernel's limit); an `http://` `url` (which still gives the `Host` with
    /// `pass_host_header = false`), HTTP/1 or `h2c`, and no `endpoints`. Pooling, timeouts,
    /// `health_check`, WebSockets and `max_requests` as over TCP; the metrics' `endpoint` is
    /// `unix:` and the path. A socket that is missing or refuses is a 502 `upstream_unreachable`
    pub unix_socket: Option<Spanned<String>>,
    /// Reference: `retry_statuses`
    /// Default: `[]`
    ///
    /// `[502, 503]`: answers with these statuses (429 or 500 to 599) to a request that can be
    /// sent twice (idempotent, without a body) take the endpoint out for `endpoint_fail_timeout`
    /// and send the request to the next endpoint instead (nginx's `proxy_next_upstream
    /// http_503`, HAProxy's `retry-on`, Envoy's `retriable_status_codes`): an instance that is
    /// draining or restarting answers 503 without costing a client its request. At most three
    /// endpoints per request; the last one's answer is the client's, as is any answer to a
    /// request that cannot be sent twice (its endpoint is out all the same). Counted in
    /// `bearward_upstream_retries_total`. Needs `endpoints` (two or more) and an HTTP/1
    /// upstream (gRPC's status is in trailers)
    pub retry_statuses: Option<Spanned<Vec<Spanned<u16>>>>,
    /// Reference: `balance`
    /// Default: `"round_robin"`
    ///
    /// how each request picks one of the `endpoints`: `"round_robin"` takes them in turn (by
    /// weight); `"least_request"` takes two at random and sends to the one with fewer requests
    /// in flight (Envoy's `LEAST_REQUEST`, the power of two choices; nginx's `least_conn`,
    /// HAProxy's `leastconn`), so an instance that slows down or hangs gets fewer new requests
    /// while its own pile up, where turns would keep sending it its share. With unequal
    /// weights, the weighted rotation over each weight divided by one more than its endpoint's
    /// requests in flight. Backups as with turns. A request is in flight from its pick until
    /// its response body has been read to the end or it failed (an HTTP/2 stream: until it
    /// ends). Needs `endpoints` (two or more)
    pub balance: Option<Spanned<String>>,
    /// Reference: `endpoint_fail_timeout`
    /// Default: `"10s"`
    ///
    /// how long an endpoint that failed a connection stays out of the rotation (nginx's
    /// `fail_timeout`)
    pub endpoint_fail_timeout: Option<Spanned<String>>,
    /// Reference: `connect_timeout`
    /// Default: `"5s"`
    ///
    /// limit on a new connection, TCP connect and TLS handshake together (504 past it)
    pub connect_timeout: Option<Spanned<String>>,
    /// Reference: `request_timeout`
    /// Default: `"30s"`
    ///
    /// from the end of the request body to the response head (504 past it); also the longest the
    /// upstream may take none of the request (504), or send none of a response body (past it the
    /// client connection is closed)
    pub request_timeout: Option<Spanned<String>>,
    /// Reference: `max_requests`, `queue_timeout`
    /// Default: no limit; `"1s"`
    ///
    /// the most requests this upstream is sent at once (Envoy's circuit breaker `max_requests`,
    /// HAProxy's `maxconn` with its queue), for a legacy API that falls over past a number of
    /// concurrent requests: 1 to 100,000, counted from the request's send to the end of its
    /// response body. One more waits, in arrival order, up to `queue_timeout` (0 to 60 s; 0:
    /// at once) for a request to finish, then gets 503 with `Retry-After: 1`, reason
    /// `upstream_overloaded`, and nothing is sent. An upgraded connection (WebSocket) counts
    /// until its 101. `bearward_upstream_requests_in_flight` shows the count
    pub max_requests: Option<Spanned<u64>>,
    /// In the reference row of `max_requests`.
    pub queue_timeout: Option<Spanned<String>>,
    /// Reference: `idle_timeout`
    /// Default: `"90s"`
    ///
    /// pooled keep-alive connections idle longer are closed
    pub idle_timeout: Option<Spanned<String>>,
    /// Reference: `max_connection_age`
    /// Default: `"1h"`
    ///
    /// a connection older than this carries no new request (nginx's `keepalive_time`, Envoy's
    /// `max_connection_duration`): an HTTP/1 one is closed when its response ends, an HTTP/2
    /// one is replaced for new streams while its own run to their end. New connections resolve
    /// the endpoint's name again and land where a ClusterIP Service or an L4 balancer puts them
    /// now, so instances added since (and a DNS change) get their share, gRPC's long-lived
    /// connections included. Each connection's age is cut by up to a tenth at random, so
    /// connections made together are not all replaced together. 1 s to 7 days
    pub max_connection_age: Option<Spanned<String>>,
    /// Reference: `max_requests_per_connection`
    /// Default: no limit
    ///
    /// the most requests one upstream connection carries before it is closed (nginx's
    /// `keepalive_requests` for upstreams, 1000 there; Envoy's `max_requests_per_connection`),
    /// for an application server that leaks or slows down per connection. On HTTP/2, the most
    /// streams one connection is given; the next request makes a new one. 1 to 1,000,000,000
    pub max_requests_per_connection: Option<Spanned<u64>>,
    /// Reference: `tunnel_idle_timeout`
    /// Default: `"5m"`
    ///
    /// an upgraded (WebSocket) connection with no byte either way for this long is closed (Envoy's
    /// `stream_idle_timeout` default; nginx closes after 60 s)
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    /// Reference: `max_idle_connections`
    /// Default: `64`
    ///
    /// idle pooled connections kept (per endpoint, per connection worker: see `worker_threads`)
    pub max_idle_connections: Option<Spanned<u64>>,
    /// Reference: `pass_host_header`
    /// Default: `true`
    ///
    /// forward the client's `Host`; `false`: the upstream's `host:port` (on HTTP/2 upstreams this
    /// is the `:authority`)
    pub pass_host_header: Option<bool>,
    /// Reference: `tls_ca_file`
    /// Default: the system's roots (Mozilla's if it has none)
    ///
    /// `https` only: PEM file of the CA certificates the upstream's certificate must chain to, in
    /// place of the default roots (for an internal CA)
    pub tls_ca_file: Option<Spanned<String>>,
    /// Reference: `tls_server_name`
    /// Default: the `url`'s host
    ///
    /// `https` only: the DNS name or IP address the certificate must be valid for, also sent as SNI
    /// (for an upstream reached by IP whose certificate names a host)
    pub tls_server_name: Option<Spanned<String>>,
    /// Reference: `tls_client_cert`, `tls_client_key`
    /// Default: none
    ///
    /// `https` only, both or neither: PEM certificate chain (the client's own certificate first)
    /// and PEM private key, presented when the upstream asks for a client certificate (mTLS)
    pub tls_client_cert: Option<Spanned<String>>,
    /// In the reference row of `tls_client_cert`.
    pub tls_client_key: Option<Spanned<String>>,
    /// Reference: `protocol`
    /// Default: `"http1"`
    ///
    /// `"http1"`; `"h2c"`: HTTP/2 without TLS, prior knowledge (`http://` only); `"h2"`: HTTP/2
    /// over TLS, agreed with ALPN (`https://` only; an upstream that does not pick `h2` is a 502
    /// `upstream_tls`). See gRPC and HTTP/2 upstreams
    pub protocol: Option<Spanned<String>>,
    /// Reference: `h2_keepalive_interval`
    /// Default: `"30s"`
    ///
    /// HTTP/2 only: PING the connection when no frame has come for this long (`"off"`: never)
    pub h2_keepalive_interval: Option<Spanned<String>>,
    /// Reference: `h2_keepalive_timeout`
    /// Default: `"10s"`
    ///
    /// HTTP/2 only: a PING unanswered for this long closes the connection; the next request makes a
    /// new one
    pub h2_keepalive_timeout: Option<Spanned<String>>,
    /// Reference: `identity_assertion`
    /// Default: none
    ///
    /// `{ signing_key_file = "...", algorithm = "ES256", key_id = "...", header =
    /// "X-Bearward-Assertion", lifetime = "60s", claims = ["sub", "scope", "client_id"], issuer =
    /// "...", audience = "...", request = "none", jwks_on_listener = false }`: a JWT bearward signs and sends on every
    /// request to this upstream, so an upstream reachable by other paths can tell a request that
    /// came through bearward (see Forwarding rules, Identity assertions). `iss` is `issuer`
    /// (default `[server] public_origin`, one of them required), `aud` is `audience` (default
    /// the upstream's `url`), with `iat`, `exp` (`lifetime` later, never past the token's, 5 s
    /// to 1 hour), a random `jti`, and the token's `claims` as they are (`scope`: the scope
    /// list, space-separated; `client_id`: `azp`, else `client_id`; a claim the token lacks is
    /// left out). `request = "hash"` adds `route` and `req`, the base64url SHA-256 of `METHOD
    /// SP target`; `"include"` adds `route`, `htm` and `htu` (the target); either signs every
    /// request, `"none"` signs once per token and upstream, reused for half `lifetime`. A
    /// request without a token gets one without the token's claims. `signing_key_file`: a PEM
    /// private key (PKCS#8, or PKCS#1/SEC1) for `algorithm` (RS256/384/512, PS256/384/512,
    /// ES256/384, EdDSA); `key_id`: default the key's RFC 7638 thumbprint. The public keys are
    /// at `/.well-known/jwks.json` on the admin listener, and with `jwks_on_listener = true` on
    /// the main one too (answered by bearward before any route, `GET` and `HEAD`, for upstreams
    /// that cannot reach the admin port); a reload that changes a key publishes the old one
    /// until its assertions have expired (and 10 s for clocks). The client's own copy of
    /// `header` never passes, to any upstream
    pub identity_assertion: Option<Spanned<AssertionFile>>,
    /// Reference: `token_exchange`
    /// Default: none
    ///
    /// `{ issuer = "...", token_endpoint = "...", audience = "...", resource = "...", scope =
    /// "...", requested_token_type = "urn:ietf:params:oauth:token-type:access_token", actor =
    /// false, client_id = "...", client_auth = "client_secret_basic", client_secret_file =
    /// "...", client_secret_env = "...", client_key_file = "...", client_key_alg = "RS256",
    /// client_key_id = "...", tls_ca_file = "...", tls_client_cert = "...", tls_client_key =
    /// "...", timeout = "2s", cache_entries = 10000 }`: before forwarding,
    /// bearward exchanges the client's token for one minted for this upstream (RFC 8693) and
    /// sends that as `Authorization: Bearer`, never the client's (see Forwarding rules, Token
    /// exchange). The token endpoint is `token_endpoint`, else the `token_endpoint` of
    /// `issuer`'s discovery document (`issuer` must then be one of `[[issuers]]`, whose
    /// `trusted_key_origins` bound the endpoint and whose `proxy` is used); `audience`, `resource` and `scope` are sent as given.
    /// Client authentication as for introspection (`client_secret_basic`, the default without a
    /// key file; `client_secret_post`; `private_key_jwt`, the default with one), or
    /// `tls_client_auth` (RFC 8705 2.1: `tls_client_cert` and `tls_client_key` authenticate,
    /// `client_id` goes in the form); `tls_ca_file`: the CA an `https` endpoint's certificate
    /// must chain to (default the system roots); a client certificate is presented whenever
    /// one is set. `actor = true`
    /// also sends bearward's own client-credentials token as `actor_token` (delegation: the new
    /// token's `act` names bearward). A new token is kept per client token until 30 s (at most
    /// a tenth of its life) before its `expires_in`, in at most `cache_entries` entries and in
    /// `[cache]`'s store when it has a `secret_file` (sealed: the store holds no token in the
    /// clear); concurrent requests with one token share one call.
    /// An endpoint that does not answer within `timeout`, fails or answers nonsense: 503 with
    /// `Retry-After`; `invalid_grant`, `invalid_target` or `invalid_scope`: 403
    /// `token_exchange_<error>`. Nothing reaches the upstream either way
    pub token_exchange: Option<Spanned<TokenExchangeFile>>,
    /// Reference: `set_headers`, `set_headers_file`, `set_headers_env`
    /// Default: none
    ///
    /// headers every request to this upstream carries, each in place of any the client sent
    /// under its name: `set_headers = { "X-Env" = "prod" }` as written; `set_headers_file = {
    /// "X-Api-Key" = "/run/secrets/legacy-key" }` read from a file (trailing newline trimmed)
    /// and `set_headers_env = { Authorization = "LEGACY_BASIC" }` from the environment, for the
    /// credential a legacy API already checks (its API key, or `Basic ...` in place of the
    /// client's bearer token). Those two are never logged or shown, and a reload reads them
    /// again. Not the headers bearward owns or the hop-by-hop ones (`Host`, `Content-Length`,
    /// `X-Forwarded-*`, `Forwarded`, `Via`, `DPoP`, the request id, `traceparent`, the claim and
    /// audit headers, the identity assertion's), and not `Authorization` with `token_exchange`
    pub set_headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// In the reference row of `set_headers`.
    pub set_headers_file: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// In the reference row of `set_headers`.
    pub set_headers_env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// Reference: `remove_headers`
    /// Default: none
    ///
    /// request headers taken out before the request goes to this upstream, every line of each
    /// name (Envoy's `request_headers_to_remove`, HAProxy's `http-request del-header`):
    /// `remove_headers = ["X-User-Id", "X-Remote-User", "Cookie"]`. A legacy API that trusts a
    /// header an older gateway used to set (who the user is, which tenant) would believe a
    /// client that sends it itself; the claim headers bearward fills are removed anyway. Not the
    /// headers bearward sets or removes itself (as for `set_headers`; `Authorization` only
    /// without `token_exchange`), nor a name `set_headers` gives
    pub remove_headers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `set_response_headers`, `remove_response_headers`
    /// Default: none
    ///
    /// the upstream's answers, changed on their way to the client (Envoy's
    /// `response_headers_to_add`/`_remove`, nginx's `add_header` and `proxy_hide_header`):
    /// `remove_response_headers = ["Server", "X-Powered-By"]` takes out every line of each name
    /// (the versions a legacy stack gives away), and `set_response_headers = {
    /// "Strict-Transport-Security" = "max-age=63072000", "X-Frame-Options" = "DENY" }` puts one
    /// line of each in place of the upstream's. On the upstream's answers only: bearward's own
    /// (401, 403, 502, ...) carry neither. Not the hop-by-hop headers, `Content-Length`, `Date`,
    /// the request id or the `RateLimit` fields, which bearward writes itself; a name in both
    /// is refused
    pub set_response_headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// In the reference row of `set_response_headers`.
    pub remove_response_headers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `health_check`
    /// Default: none
    ///
    /// active checks of each endpoint (HAProxy's `option httpchk`, Envoy's `health_checks`):
    /// `{ path = "/healthz", interval = "5s", timeout = "2s", unhealthy_threshold = 2,
    /// healthy_threshold = 2 }`. Every `interval` (100 ms to 1 h, default 5 s) each endpoint is
    /// asked `GET path` over a new connection (TLS as for requests, `Host` the `url`'s,
    /// `Connection: close`); a 2xx or 3xx head within `timeout` (default 2 s, at most the
    /// interval) passes, anything else fails. An HTTP/2 upstream is asked over HTTP/2, and a
    /// gRPC one may be asked with gRPC's health protocol instead: `grpc_service = "pkg.Svc"`
    /// in place of `path` (`""` for the server as a whole) calls `grpc.health.v1.Health/Check`,
    /// which passes on `SERVING` only (what Envoy's `grpc_health_check` and Kubernetes' gRPC
    /// probes ask). After `unhealthy_threshold` failures in a row
    /// (1 to 10, default 2) the endpoint leaves the rotation until `healthy_threshold` passes
    /// in a row (1 to 10, default 2) bring it back; while every endpoint is out all are tried,
    /// as with `endpoint_fail_timeout`. Endpoints start in; a reload keeps each endpoint's
    /// verdict where the upstream's name and endpoints stay the same. Checks begin when
    /// bearward starts and go on without requests; `bearward_upstream_endpoint_healthy` shows
    /// each endpoint's state and `bearward_upstream_health_check_failures_total` why checks
    /// failed
    pub health_check: Option<Spanned<HealthCheckFile>>,
}

/// An upstream's `health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckFile {
    pub path: Option<Spanned<String>>,
    pub grpc_service: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_threshold: Option<Spanned<u64>>,
    pub healthy_threshold: Option<Spanned<u64>>,
}

/// A `[server] tls_certificates` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerCertFile {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
}

/// A table of header names and where their values come from.
pub(super) type HeaderSources = Option<Spanned<BTreeMap<String, Spanned<String>>>>;

impl UpstreamFile {
    /// `set_headers`, `set_headers_file`, `set_headers_env`, with their keys.
    pub(super) fn set_header_sources(&self) -> [(&HeaderSources, &'static str); 3] {
        [
            (&self.set_headers, "set_headers"),
            (&self.set_headers_file, "set_headers_file"),
            (&self.set_headers_env, "set_headers_env"),
        ]
    }
}

/// `[upstreams.NAME] token_exchange`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenExchangeFile {
    pub issuer: Spanned<String>,
    pub token_endpoint: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub resource: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    pub requested_token_type: Option<Spanned<String>>,
    pub actor: Option<Spanned<bool>>,
    pub client_id: Spanned<String>,
    pub client_auth: Option<Spanned<ClientAuthMethod>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
    pub client_key_alg: Option<Spanned<String>>,
    pub client_key_id: Option<Spanned<String>>,
    pub tls_ca_file: Option<Spanned<String>>,
    pub tls_client_cert: Option<Spanned<String>>,
    pub tls_client_key: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub cache_entries: Option<Spanned<u64>>,
}

/// `[upstreams.NAME] identity_assertion`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssertionFile {
    pub signing_key_file: Spanned<String>,
    pub algorithm: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub lifetime: Option<Spanned<String>>,
    pub claims: Option<Spanned<Vec<Spanned<String>>>>,
    pub issuer: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub request: Option<Spanned<String>>,
    pub jwks_on_listener: Option<bool>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    /// Reference: `name`
    /// Default: the prefix (`/api*`) or path
    ///
    /// name in logs and metrics
    pub name: Option<Spanned<String>>,
    /// Reference: `access_log`
    /// Default: `true` (as `server.access_log`)
    ///
    /// `false`: no access line for this route's requests answered with a status under 400
    /// (Kubernetes probes, load balancers' health checks, a chatty poll; nginx's `access_log
    /// off` in a `location`); its refusals and errors are logged all the same, every one with
    /// its reason, and every request is counted in the metrics
    pub access_log: Option<Spanned<bool>>,
    /// Reference: `prefix`
    /// Default: -
    ///
    /// segment-aware prefix: `/api` matches `/api` and `/api/x`, never `/apix`; must be canonical.
    /// A `{name}` segment (`/tenants/{tenant}/`) takes any one non-empty segment, which `allow_if`
    /// reads as `request.params.name` (also in `path`)
    pub prefix: Option<Spanned<String>>,
    /// Reference: `path`
    /// Default: -
    ///
    /// exact canonical path (one of `prefix`, `path`, `grpc_service`)
    pub path: Option<Spanned<String>>,
    /// Reference: `grpc_service`
    /// Default: -
    ///
    /// a gRPC service, `"package.Service"`: shorthand for `prefix = "/package.Service/"`, every
    /// method of it. One method is `path = "/package.Service/Method"`
    pub grpc_service: Option<Spanned<String>>,
    /// Reference: `methods`
    /// Default: any
    ///
    /// e.g. `["GET", "POST"]`; upper-case letters, `-` and `_`, as requests must use. A list
    /// with `GET` takes `HEAD` too, as nginx's `limit_except GET` does: upstream frameworks
    /// (Express, Flask, Rails, Go's `ServeMux`) run the GET handler for a HEAD, so a HEAD left to
    /// a later, laxer route would reach it unchecked. A route for HEAD alone goes above the GET
    /// one
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `hosts`
    /// Default: any host
    ///
    /// the host names this route serves, as Envoy's virtual hosts and nginx's `server_name`:
    /// `["api.example.com", "*.example.com"]`, where `*.example.com` takes every name under
    /// `example.com` (not `example.com` itself). Compared without case, port or trailing dot
    /// (`API.Example.com.:8443` is `api.example.com`); a name with an empty label is a 400.
    /// The host is the request's `Host` (HTTP/2 `:authority`), or in decision mode the original
    /// request's as the ingress gives it (`[decision] original_host_header` for nginx and
    /// HAProxy, `X-Forwarded-Host` for Caddy and Traefik, Envoy's `Host`). A request for another
    /// host, or none, goes on to the next routes
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `source_ranges`
    /// Default: any address
    ///
    /// the client addresses this route serves, as nginx's `allow`/`deny all`, Traefik's
    /// `ipAllowList` and Envoy's RBAC `remote_ip`: `["10.0.0.0/8", "2001:db8::/32",
    /// "192.0.2.7"]`. An entry starting with `!` is an exception, refused whatever else the list
    /// says (nginx's `deny` lines before `allow`, Envoy's RBAC `not_id`): `["10.0.0.0/8",
    /// "!10.9.0.0/16"]` serves 10/8 but 10.9/16; a list of exceptions only serves every other
    /// address (`["!203.0.113.0/24"]`). The address is the peer's, or behind `trusted_proxies`
    /// the rightmost
    /// `X-Forwarded-For` address outside them, or in decision mode the one the ingress names in
    /// `X-Forwarded-For` (a decision request without one is refused: the peer is the ingress,
    /// never the client). A request from elsewhere gets 403 `source_not_allowed` before its
    /// token is looked at, in audit mode too, and is not passed on to a later route. For
    /// `auth = "none"` routes only the load balancer or the office network should reach
    /// (health checks, admin pages), and to keep an internal API's tokens from working outside
    pub source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `case_sensitive`
    /// Default: `true`
    ///
    /// `false`: `path` or `prefix` matches whatever the case of its ASCII letters (`/API/Write`
    /// takes `path = "/api/write"`), as Envoy's `case_sensitive: false` and HAProxy's `path_beg
    /// -i` do: for an upstream that ignores case (ASP.NET Core, Express by default), so another
    /// spelling cannot fall through to a later, laxer route. The path goes upstream as sent and
    /// `{name}` segments' values are read as sent. Not with `grpc_service` (gRPC names are
    /// case-sensitive). Such routes are tried on every request past the 16-route index, as
    /// templates are
    pub case_sensitive: Option<Spanned<bool>>,
    /// Reference: `upstream`
    /// Default: required (optional with `[decision]`)
    ///
    /// name of an `[upstreams.NAME]`; a route without one is answered by the decision listener only
    pub upstream: Option<Spanned<String>>,
    /// Reference: `respond`
    /// Default: none (the route forwards to its `upstream`)
    ///
    /// bearward answers the route itself, in place of an upstream (Envoy's `direct_response`,
    /// nginx's `return`): `{ status = 503, body = "Down for maintenance\n", headers = {
    /// "Retry-After" = "600" } }` takes an API out of service with a reload, `status = 410`
    /// retires a version with a `Link` to its successor, a fixed `/robots.txt` needs no
    /// upstream. The route's token checks, policies and rate limit apply first, as to any
    /// route; then nothing is forwarded. Status 200 to 599; `body` at most 64 KiB, sent as
    /// `text/plain; charset=utf-8` unless `headers` name a `Content-Type`; headers other than
    /// the framing and hop-by-hop ones bearward writes itself. Counted with reason
    /// `direct_response`. Not with `upstream` or `prefix_rewrite`. On the decision listener a
    /// status other than 2xx is the answer too, which the ingress passes to the client as a
    /// refusal (Envoy, Caddy, Traefik, HAProxy as they are; nginx's `auth_request` only passes
    /// 401 and 403 and makes the rest a 500): the API behind it is kept out as well. A 2xx
    /// there is a "yes", and the ingress serves the request from its upstream
    pub respond: Option<Spanned<RespondFile>>,
    /// Reference: `prefix_rewrite`
    /// Default: none (the path goes upstream as matched)
    ///
    /// with `prefix`: the upstream is asked for the path with the route's prefix replaced by
    /// this one, as Envoy's `prefix_rewrite` and Traefik's `StripPrefix` do: `prefix = "/orders"`
    /// with `prefix_rewrite = "/"` sends `/orders/7?x=1` as `/7?x=1` and `/orders` as `/`; with
    /// `"/v2/orders"`, as `/v2/orders/7?x=1`. A `{name}` segment counts as one segment of the
    /// prefix. The part taken off goes along in `X-Forwarded-Prefix` (any the client sent is
    /// replaced), from which Spring, ASP.NET Core and Express apps build their links. Routing,
    /// the token check, logs and metrics see the path the client sent
    pub prefix_rewrite: Option<Spanned<String>>,
    /// Reference: `auth`
    /// Default: `"bearer"`
    ///
    /// `"bearer"`, `"none"` (forward without a check), `"deny"` (403) or `"optional"`: a request
    /// without a token is forwarded as it is, without claim headers (the client's own copies
    /// never pass; a decision answer carries them empty), and one with a token only if the token is valid, with its claims
    /// (Envoy's `allow_missing`, Istio's `RequestAuthentication` without an
    /// `AuthorizationPolicy`), for an API that serves everyone and answers callers who say who
    /// they are in their own way. A token that is there is checked as on a bearer route:
    /// expired, foreign, malformed or two of them are 401 or 400, never a pass without it. What a
    /// token must hold (`scopes`, `scopes_any`, `claims`, `claims_any`, `client_ids`,
    /// `acr_values`, `max_age`, `mcp`, a `rate_limit` keyed by the token) is refused here, since
    /// a client would send none to get past it; `allow_if` can tell the two apart (`subject != ""
    /// \|\| request.method == "GET"`). Where and which tokens are read (`token_in_query`,
    /// `token_header`, `token_cookie`, `issuers`, `audiences`, `require_bound_tokens`) apply as on
    /// a bearer route. Counted as `decision="allow"`, `reason="anonymous"` when no token came
    pub auth: Option<Spanned<AuthFile>>,
    /// Reference: `scopes`
    /// Default: `[]`
    ///
    /// every one of these scopes is needed
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `scopes_any`
    /// Default: -
    ///
    /// at least one of these is needed
    pub scopes_any: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `token_in_query`
    /// Default: `false`
    ///
    /// also accept the token as `?access_token=` (RFC 6750 2.3); otherwise such a request is a 400
    pub token_in_query: Option<bool>,
    /// Reference: `token_header`
    /// Default: `Authorization` (`Bearer` or `DPoP`)
    ///
    /// read the token from this header instead, its whole value, with or without a `Bearer `
    /// prefix (Envoy's `from_headers`): for a JWT an identity-aware proxy in front puts in a header
    /// of its own (Google IAP's `X-Goog-Iap-Jwt-Assertion`, Cloudflare Access's
    /// `Cf-Access-Jwt-Assertion`, oauth2-proxy's `X-Forwarded-Access-Token`), checked like any
    /// token: signature, issuer, audience, lifetime, scopes. The route then reads no token from
    /// `Authorization`, which reaches the upstream as any other header the client sent; this
    /// header is dropped with `strip_authorization` as `Authorization` is elsewhere. Two of it
    /// are a 400. A token in it cannot be DPoP-bound (RFC 9449 puts those in `Authorization`)
    pub token_header: Option<Spanned<String>>,
    /// Reference: `token_cookie`
    /// Default: none (`Authorization` only)
    ///
    /// also read the token from the cookie of this name (Envoy's `from_cookies`), as a browser
    /// sends it: Cloudflare Access's `CF_Authorization`, a backend-for-frontend's `HttpOnly`
    /// access-token cookie; API clients on the route still send `Authorization` (both at once are
    /// two tokens, a 400). Its value is the token (double quotes around it allowed); two cookies
    /// of the name are a 400, since a sibling subdomain can set one beside yours (a `__Host-`
    /// name, where the cookie is set, makes browsers refuse such a one). A browser sends a cookie
    /// on requests other sites make, so a request that carries it with an unsafe method (not
    /// `GET`, `HEAD`, `OPTIONS`) or as a WebSocket handshake is refused, 403
    /// `cross_origin_request`, when the browser says it came from elsewhere: `Sec-Fetch-Site`
    /// other than `same-origin` or `none`, or without it an `Origin` other than the request's host
    /// (Go's `CrossOriginProtection`); origins the route's `cors` allows with `allow_credentials`,
    /// and `[server] public_origin`, are the site's own. `strip_authorization` takes this cookie
    /// out of `Cookie`, leaving the others, as well as `Authorization`
    pub token_cookie: Option<Spanned<String>>,
    /// Reference: `login_url`
    /// Default: none (a 401)
    ///
    /// where a browser that opens a page of this route without a valid token is sent to sign in,
    /// as oauth2-proxy and nginx's `error_page 401` with a redirect do: a `GET` or `HEAD` the
    /// browser calls a navigation (`Sec-Fetch-Mode: navigate`, or without it an `Accept` with
    /// `text/html`) that would get a 401 gets a 302 to this URL instead, `{url}` in it replaced by
    /// the page's address, percent-encoded (`https://app.example.com/oauth2/start?rd={url}`).
    /// The address is `[server] public_origin` (set it behind a TLS-terminating balancer) or the
    /// request's scheme and `Host`, then its path and query; the sign-in handler must check it
    /// before sending the browser back, as oauth2-proxy's `whitelist_domains` does, and must not
    /// itself be behind this route (the browser would go round in circles). Calls a page
    /// makes (`fetch`), other methods and refusals other than 401 are answered as before. In
    /// decision mode the redirect is answered to Caddy and Traefik (`[decision] ingress`), which
    /// hand a refusal to the browser as written, the page's scheme from their
    /// `X-Forwarded-Proto`; nginx and HAProxy take only 401 and 403 from it, so they get the 401
    /// and their own error page redirects (`error_page 401`)
    pub login_url: Option<Spanned<String>>,
    /// Reference: `cors_preflight`
    /// Default: `false`
    ///
    /// forward CORS preflights without a token (`auth = "bearer"` routes only; if the route lists
    /// `methods`, they must include `OPTIONS`). Browsers send a preflight (`OPTIONS` with `Origin`
    /// and `Access-Control-Request-Method`) without credentials before a cross-origin call, so a
    /// bearer check fails every call from a web app on another origin; Envoy's
    /// `bypass_cors_preflight` and oauth2-proxy's `--skip-auth-preflight` do the same. One carrying
    /// `Authorization` is not taken as a preflight and is checked; a query token is dropped from
    /// it. Counted as `decision="allow"`, `reason="cors_preflight"`. The upstream writes the CORS
    /// answer, as it does today
    pub cors_preflight: Option<Spanned<bool>>,
    /// Reference: `cors`
    /// Default: -
    ///
    /// `{ allow_origins = ["https://app.example.com", "https://*.example.com"] }`: bearward
    /// answers the browser's preflights for this route itself (204, or 403 `cors_origin_not_allowed`,
    /// `cors_method_not_allowed`, `cors_header_not_allowed`; never forwarded) and puts
    /// `Access-Control-Allow-Origin` (for an allowed `Origin`), `Access-Control-Expose-Headers`
    /// and `Vary: Origin` on every answer of the route, its 401s included, in place of the
    /// upstream's own (Envoy's CORS filter). Also `allow_methods` (default: the route's
    /// `methods`, else GET, HEAD, POST, PUT, PATCH, DELETE), `allow_headers` (request headers
    /// beyond `Authorization`, `DPoP` and `Content-Type`, always allowed; `["*"]`: any),
    /// `expose_headers` (the upstream's headers a page may read, beyond bearward's
    /// `WWW-Authenticate`, `DPoP-Nonce`, `RateLimit`, `RateLimit-Policy`, `Retry-After` and the
    /// request id), `allow_credentials` (default false; not with `"*"`), `max_age` (default
    /// `"10m"`, at most 24 h). An origin is `scheme://host[:port]`, `*.` before a domain for its
    /// subdomains, or `"*"`. Not with `cors_preflight`; on the proxy listener (in decision
    /// mode a preflight passes, as with `cors_preflight`)
    pub cors: Option<Spanned<CorsFile>>,
    /// Reference: `mode`
    /// Default: `server.mode`
    ///
    /// `"enforce"`, or `"audit"`: decide, log and count, but forward anyway (see Audit mode)
    pub mode: Option<Spanned<Mode>>,
    /// Reference: `max_body_bytes`
    /// Default: `server.max_body_bytes`
    ///
    /// this route's body limit (see `[server]`)
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Reference: `request_timeout`
    /// Default: the upstream's
    ///
    /// the upstream's `request_timeout` for this route's requests (1 ms to 1 h): the wait for
    /// the response head and the longest pause in either body (Envoy's route `timeout`, nginx's
    /// `proxy_read_timeout` in a `location`), for the one slow report of a legacy API without
    /// a second upstream for it
    pub request_timeout: Option<Spanned<String>>,
    /// Reference: `resource`
    /// Default: `server.resource`
    ///
    /// the RFC 9728 resource identifier clients use for this route (see Protected resource
    /// metadata)
    pub resource: Option<Spanned<String>>,
    /// Reference: `allow_encoded_percent`
    /// Default: `false`
    ///
    /// take paths holding `%25` followed by two hex digits (see The canonical path); only for an
    /// API that never decodes a path twice
    pub allow_encoded_percent: Option<bool>,
    /// Reference: `issuers`
    /// Default: any issuer
    ///
    /// take tokens from these issuers only (`issuer_not_allowed` otherwise); for opaque tokens, the
    /// introspection endpoints to ask, in order (required on bearer routes when several issuers
    /// introspect)
    pub issuers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `require_bound_tokens`
    /// Default: `false`
    ///
    /// sender-constrained tokens only: a DPoP-bound token with its proof, or a certificate-bound
    /// one with its certificate; a plain bearer token gets 401 `unbound_token` with both a `DPoP`
    /// and a `Bearer` challenge; the RFC 9728 metadata of a resource whose bearer routes all say so
    /// has `dpop_bound_access_tokens_required: true`
    pub require_bound_tokens: Option<Spanned<bool>>,
    /// Reference: `require_client_certificate`
    /// Default: `false`
    ///
    /// only requests with a verified client certificate (the listener's `tls_client_auth`, or a
    /// trusted proxy's `client_cert_header`) pass, whatever `auth` says; others get 403
    /// `client_certificate_required`. `bearward check` refuses it where no certificate can arrive
    pub require_client_certificate: Option<Spanned<bool>>,
    /// Reference: `claims`
    /// Default: none
    ///
    /// claim conditions that must all hold, e.g. `{ "realm_access.roles" = ["orders-admin"], tid =
    /// "4f6c..." }`: the key is a claim, or a dotted path into nested objects (`\\.` in a TOML
    /// string is a dot inside a name: `"resource_access.billing\\.api.roles"`; a top-level claim
    /// with exactly the key's name wins, so namespaced claims like `"https://example.com/roles"`
    /// work as written); the value a string, or an array of strings each of which must hold. A
    /// condition holds when the claim equals the string, or is an array holding it; any other type
    /// (a number where a string is asked for) never holds. A miss is 403 `insufficient_scope` with
    /// a generic description that does not say what was required, reason `claim_mismatch`;
    /// `bearward explain` names the condition
    pub claims: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    /// Reference: `claims_any`
    /// Default: none
    ///
    /// conditions of which one must hold (Entra: `{ groups = ["ops", "sre"], roles = "Ops.Admin"
    /// }`)
    pub claims_any: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    /// Reference: `client_ids`
    /// Default: none
    ///
    /// the token's `azp`, else its `client_id`, must be one of these
    pub client_ids: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `authorization_details`
    /// Default: none
    ///
    /// RFC 9396 rich authorization requests: what the token's `authorization_details` (or the
    /// introspection answer's) must grant, each entry `{ type = "payment_initiation", actions =
    /// ["initiate"] }` met by one object of the token's array with that `type` and, for each of
    /// `actions`, `locations`, `datatypes` and `privileges` given, an array holding every value
    /// listed (`identifier`: equal). A location names this API as the authorization server put
    /// it in the token (the resource's URL). Every entry must be met, each by its own object or
    /// a shared one. A miss is 403 `insufficient_scope`, reason `authorization_details_mismatch`,
    /// without saying what was required; the RFC 9728 metadata lists the types in
    /// `authorization_details_types_supported`. At most 16 entries of 64 values each
    pub authorization_details: Option<Spanned<Vec<Spanned<AuthorizationDetailFile>>>>,
    /// Reference: `audiences`
    /// Default: none (the issuer's `audiences` only)
    ///
    /// RFC 8707: the token's `aud` (or the introspection answer's) must also name one of these
    /// resources, so a token minted for another resource of the same issuer is refused here
    /// (401 `invalid_token`, reason `bad_audience`)
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `require_resource_audience`
    /// Default: `false`
    ///
    /// with `resource` set and no `audiences`: the resource identifier is the audience the
    /// token must name
    pub require_resource_audience: Option<Spanned<bool>>,
    /// Reference: `acr_values`
    /// Default: none
    ///
    /// RFC 9470 step-up: the token's `acr` must be one of these; else 401
    /// `insufficient_user_authentication` with `acr_values` in the challenge
    pub acr_values: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reference: `max_age`
    /// Default: none
    ///
    /// RFC 9470 step-up: the token's `auth_time` no older than this (e.g. `"15m"`); else 401
    /// `insufficient_user_authentication` with `max_age` (seconds) in the challenge
    pub max_age: Option<Spanned<String>>,
    /// Reference: `rate_limit`
    /// Default: none
    ///
    /// `{ key = "subject" \| "client" \| "ip" \| "claim:PATH", rate = "100/s", burst = 200,
    /// ipv6_prefix = 64 }` (rate per `s`, `m` or `h`; burst defaults to the rate's count): requests
    /// counted per key after the token check (`subject`: `sub`; `client`: `azp`, else `client_id`;
    /// `ip`: the client's address, the only key on routes without a token: the peer's, or, from
    /// `trusted_proxies` or an ingress on the decision listener, the rightmost `X-Forwarded-For`
    /// address outside `trusted_proxies` (what the client writes to its left never counts); IPv6
    /// clients are counted by their network of `ipv6_prefix` bits, default 64, since a host given a
    /// /64 could otherwise take a fresh bucket per address; IPv4 as written, also when a dual-stack
    /// listener sees it as `::ffff:a.b.c.d`; `claim:PATH`: a claim by name or dotted path; a
    /// request without the key's claim shares the `-` bucket). Over the limit: 429 with
    /// `Retry-After`, `RateLimit-Policy: "<route>";q=100;w=1` and `RateLimit:
    /// "<route>";r=0;t=<seconds>` (IETF httpapi RateLimit header fields draft; both also on allowed
    /// answers, `r` being the requests left; `t` is when the quota resets, for a GCRA when the
    /// bucket is full again: `r=50;t=30` for 50 of `100/m` left, as in the draft's example; on a
    /// 429, `Retry-After` and then the rest of the burst), reason `rate_limited`, nothing sent
    /// upstream. Each key is a GCRA bucket (governor); keys live in a table of at most 100,000 per
    /// route (quick_cache), and a sweep drops those left alone long enough for their bucket to be
    /// full again, so a flood of distinct subjects cannot grow memory, nor reset a client that
    /// keeps sending: a key seen again is kept (`tests/rate_limits.rs` sends a million keys with
    /// one client asking throughout: 100,000 held, RSS +24 MiB, the client never allowed twice).
    /// Tiers (an API's plans, Kong's consumer groups): `rate_by = "claim:plan", rates = { gold =
    /// "1000/s", silver = "300/s" }` gives a token whose `plan` claim names a tier that rate (its
    /// burst the same count) and a bucket of its own, and every other token (no such claim, a
    /// value not listed) `rate`; `RateLimit-Policy` names the tier (`"<route>.gold";q=1000;w=1`).
    /// Each tier keeps its own table of keys (and, with a store, its own keys there). Bearer
    /// routes only; at most 32 tiers
    /// Without `[cache] redis_url` limits are per process (N replicas give a client N times the
    /// rate); with it they are global: after the local bucket (which, when this replica alone is
    /// over the limit, refuses without a round trip), one `EVALSHA` of a GCRA script on the store's
    /// own clock decides for every replica (`tests/shared_cache.rs`: two processes, 40 requests
    /// alternating, 10 pass, not 20; 80 at once, 10 pass, each with its own remaining count; checks
    /// waiting while a script call is out go in the next one, each key once with its count). Redis
    /// down: each replica allows the limit divided by `[cache] rate_limit_fallback_replicas`
    /// (default 1), counted in `bearward_rate_limit_fallbacks_total`, never refusing everything and
    /// never unlimited
    pub rate_limit: Option<Spanned<RateLimitFile>>,
    /// Reference: `mcp`
    /// Default: none
    ///
    /// an MCP server's per-operation scopes (see MCP servers below): `{ tools = { delete_repo =
    /// ["repo:admin"], "*" = ["tools:call"] }, prompts = { NAME = [...] }, resources = {
    /// "file:///private/" = ["files:private"] }, methods = { "resources/read" = ["files:read"] } }`.
    /// Every POST's JSON-RPC body is read (up to `max_body_bytes`, 1 MiB when the route has no
    /// limit) and decides: the route's `scopes`, then the method's, then the target's (`tools` by
    /// `params.name` of `tools/call`, `prompts` by that of `prompts/get`, `resources` by the
    /// longest prefix of `params.uri` of `resources/read`; `"*"` for names not listed) are all
    /// needed, and a token short of any gets 403 `insufficient_scope` whose `scope` lists them all
    /// in that order. A body that is not one JSON-RPC 2.0 message (a batch, a duplicate member, a
    /// target that is not a string) is 400 `mcp_invalid_message`; `Mcp-Method` or `Mcp-Name`
    /// (2026-07-28 clients; `=?base64?...?=` decoded) that disagree with the body are 400
    /// `mcp_header_mismatch`; over the limit 413; nothing reaches the upstream. The body is
    /// forwarded unchanged and answers stream as before; GET and DELETE need the route's scopes
    /// only. Needs an `upstream` (a decision request carries no body)
    pub mcp: Option<Spanned<McpFile>>,
    /// Reference: `allow_if`
    /// Default: none
    ///
    /// a condition in CEL (Common Expression Language), or a list that must all hold, checked
    /// after the token and scopes: `'claims.tenant == request.params.tenant && "admin" in
    /// claims.roles'`. It reads `claims`, `scopes`, `client`, `subject`, `request` (`method`,
    /// `path` (canonical), `query`, `headers` (lower-case names, repeated values joined with
    /// `, `), `host`, `params`), `connection` (`client_ip`, `tls`,
    /// `client_certificate_thumbprint`), `route` (`name`) and `now`; the standard functions and
    /// macros. Compiled when the config loads: a syntax error, an unknown name, parameter or
    /// function, or operands that cannot fit (`request.method + 1`) is a config error with the
    /// column in the expression. False: 403, reason `policy_denied`, no challenge (no scope would
    /// help); an error at run time (a missing claim, a claim of another type): 403
    /// `policy_error`, never an allow. At most 4 KiB each; comprehensions may not nest, so a
    /// check is linear in the token's lists. `bearward explain` prints each `&&` operand's result
    pub allow_if: Option<Spanned<AllowIfFile>>,
    /// Reference: `authzen`
    /// Default: none
    ///
    /// ask an `[authzen.NAME]` policy decision point (OpenID AuthZEN 1.0 Access Evaluation) after
    /// the token, the scopes and `allow_if`: `"NAME"`, or `{ pdp = "NAME", subject = {...},
    /// action = {...}, resource = {...}, context = [...], reason_to_client = false }` overriding
    /// the PDP's question shape. `decision: true` forwards; `false` is 403 `pdp_denied`, with the
    /// PDP's `context.reason_user` in the body only with `reason_to_client = true`; the PDP
    /// down, slow, busy, or answering anything but `{"decision": <bool>}`: 503 `pdp_unavailable`
    /// with `Retry-After: 5`, never an allow
    pub authzen: Option<Spanned<RouteAuthzenFile>>,
}

/// `allow_if`: one expression or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum AllowIfFile {
    One(String),
    /// Spans are lost inside an untagged enum: an error points at the list, with the index.
    All(Vec<String>),
}

/// Scope lists by name, as an `mcp` table gives them.
pub(super) type ScopeTable = Spanned<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>;

/// A route's `mcp`: scopes per method, tool, prompt and resource prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct McpFile {
    pub methods: Option<ScopeTable>,
    pub tools: Option<ScopeTable>,
    pub prompts: Option<ScopeTable>,
    pub resources: Option<ScopeTable>,
}

/// A route's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    pub key: Spanned<String>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u64>>,
    pub ipv6_prefix: Option<Spanned<u64>>,
    pub rate_by: Option<Spanned<String>>,
    pub rates: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
}

/// `mode`: enforce the policy, or only report what it would do.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

/// `auth`
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum AuthFile {
    None,
    Bearer,
    Optional,
    Deny,
}

/// `[forward]`: what the upstream is told about the caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForwardFile {
    /// Reference: `claim_headers`
    /// Default: `{}`
    ///
    /// claim -> header sent upstream, e.g. `{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes",
    /// "realm_access.roles" = "X-Auth-Roles" }` (`scope` is the normalized scope list; a key is a
    /// claim or a dotted path, as in route `claims`). Client-sent headers of these names are
    /// removed on every route. Strings pass as their UTF-8 bytes (as Envoy and vouch-proxy send
    /// them), numbers and booleans as JSON text, arrays of strings joined with `,`; a value holding
    /// a control character (CR, LF, NUL, ...) is not sent
    pub claim_headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// Reference: `payload_header`
    /// Default: none
    ///
    /// `"X-Jwt-Payload"`: the verified JWT's payload, as the token carries it (base64url, no
    /// padding: the part between its two dots), in this header upstream: every claim at once,
    /// for an upstream that reads more than `claim_headers` name (Istio's
    /// `outputPayloadToHeader`, Envoy's `forward_payload_header`). Only what bearward verified
    /// is sent: the client's own copy is removed on every route, and a request without a
    /// token, or with an opaque token (whose introspection answer bearward keeps only in part),
    /// carries none; a decision answer carries it empty then. At most `max_token_bytes`
    pub payload_header: Option<Spanned<String>>,
    /// Reference: `strip_authorization`
    /// Default: `false`
    ///
    /// drop the token before forwarding: `Authorization`, and on `token_in_query` routes the
    /// `access_token` query parameter (the rest of the query is kept)
    pub strip_authorization: Option<bool>,
}
