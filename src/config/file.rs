//! The shape of the TOML file, as serde reads it. Nothing here is checked beyond types:
//! `validate.rs` turns this into the runtime [`super::Config`]. Every table denies unknown keys,
//! so a typo such as `scoeps` is an error instead of an open route.

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
}

/// `[decision]`: the forward-auth / ext_authz listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionFile {
    pub listen: Spanned<String>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub original_method_header: Option<Spanned<String>>,
    pub original_uri_header: Option<Spanned<String>>,
    pub envoy_path_prefix: Option<Spanned<String>>,
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
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_age: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub replay_cache_entries: Option<Spanned<u64>>,
    pub nonce: Option<bool>,
    pub nonce_lifetime: Option<Spanned<String>>,
    pub nonce_secret_file: Option<Spanned<String>>,
}

/// `[cache]`: the optional store shared by replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    pub redis_url: Option<Spanned<String>>,
    pub redis_timeout: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub dpop_replay_store_down: Option<Spanned<super::StoreDown>>,
    pub rate_limit_fallback_replicas: Option<Spanned<u64>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    pub listen: Spanned<String>,
    pub admin_listen: Option<Spanned<String>>,
    pub realm: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub max_path_bytes: Option<Spanned<u64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub body_read_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_semicolon_in_path: Option<bool>,
    pub allow_underscores_in_headers: Option<bool>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub resource: Option<Spanned<String>>,
    pub http2: Option<bool>,
    pub log_format: Option<Spanned<LogFormat>>,
    pub access_log: Option<bool>,
    pub token_cache_entries: Option<Spanned<u64>>,
    pub mode: Option<Spanned<Mode>>,
    pub watch_config: Option<bool>,
    pub worker_threads: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub listen_backlog: Option<Spanned<u64>>,
    pub max_requests_in_flight: Option<Spanned<u64>>,
    pub http2_max_concurrent_streams: Option<Spanned<u64>>,
    pub tls_cert_file: Option<Spanned<String>>,
    pub tls_key_file: Option<Spanned<String>>,
    pub tls_client_ca_file: Option<Spanned<String>>,
    pub tls_client_auth: Option<Spanned<crate::tls::ClientAuth>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub public_origin: Option<Spanned<String>>,
    pub client_cert_header: Option<Spanned<String>>,
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
    pub issuer: Spanned<String>,
    pub jwks_uri: Option<Spanned<String>>,
    pub discovery: Option<Spanned<bool>>,
    pub jwks_file: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Vec<String>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub leeway: Option<Spanned<String>>,
    pub typ: Option<Spanned<TypPolicy>>,
    pub scope_claims: Option<Spanned<Vec<String>>>,
    pub hmac_secret_file: Option<Spanned<String>>,
    pub hmac_secret_env: Option<Spanned<String>>,
    pub max_token_bytes: Option<Spanned<u64>>,
    pub accept_bound_tokens: Option<bool>,
    pub token_format: Option<Spanned<TokenFormat>>,
    pub introspection: Option<Spanned<bool>>,
    pub introspection_endpoint: Option<Spanned<String>>,
    pub introspection_client_id: Option<Spanned<String>>,
    pub introspection_client_auth: Option<Spanned<ClientAuthMethod>>,
    /// Never accepted: read only to say where the secret goes instead.
    pub introspection_client_secret: Option<Spanned<toml::Value>>,
    pub introspection_client_secret_file: Option<Spanned<String>>,
    pub introspection_client_secret_env: Option<Spanned<String>>,
    pub introspection_client_key_file: Option<Spanned<String>>,
    pub introspection_client_key_alg: Option<Spanned<String>>,
    pub introspection_client_key_id: Option<Spanned<String>>,
    pub introspection_cache_ttl: Option<Spanned<String>>,
    pub introspection_negative_ttl: Option<Spanned<String>>,
    pub introspection_timeout: Option<Spanned<String>>,
    pub introspection_max_in_flight: Option<Spanned<u64>>,
    pub introspection_require_audience: Option<Spanned<bool>>,
    pub jwks_refresh: Option<Spanned<String>>,
    pub jwks_min_refresh: Option<Spanned<String>>,
    pub jwks_max_refresh: Option<Spanned<String>>,
    pub jwks_timeout: Option<Spanned<String>>,
    pub jwks_max_bytes: Option<Spanned<u64>>,
    pub min_rsa_bits: Option<Spanned<u64>>,
    pub unknown_kid_cooldown: Option<Spanned<String>>,
    pub max_stale: Option<Spanned<String>>,
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
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    pub url: Spanned<String>,
    pub connect_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub max_idle_connections: Option<Spanned<u64>>,
    pub pass_host_header: Option<bool>,
    pub tls_ca_file: Option<Spanned<String>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub tls_client_cert: Option<Spanned<String>>,
    pub tls_client_key: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub h2_keepalive_interval: Option<Spanned<String>>,
    pub h2_keepalive_timeout: Option<Spanned<String>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub name: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub grpc_service: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream: Option<Spanned<String>>,
    pub auth: Option<Spanned<AuthFile>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub scopes_any: Option<Spanned<Vec<Spanned<String>>>>,
    pub token_in_query: Option<bool>,
    pub cors_preflight: Option<Spanned<bool>>,
    pub mode: Option<Spanned<Mode>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub resource: Option<Spanned<String>>,
    pub allow_encoded_percent: Option<bool>,
    pub issuers: Option<Spanned<Vec<Spanned<String>>>>,
    pub require_bound_tokens: Option<Spanned<bool>>,
    pub require_client_certificate: Option<Spanned<bool>>,
    pub claims: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub claims_any: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub client_ids: Option<Spanned<Vec<Spanned<String>>>>,
    pub rate_limit: Option<Spanned<RateLimitFile>>,
}

/// A route's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    pub key: Spanned<String>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u64>>,
    pub ipv6_prefix: Option<Spanned<u64>>,
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
    Deny,
}

/// `[forward]`: what the upstream is told about the caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForwardFile {
    pub claim_headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub strip_authorization: Option<bool>,
}
