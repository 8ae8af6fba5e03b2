//! bearward: a reverse proxy that lets through only requests carrying a valid OAuth 2.0 bearer
//! JWT with the scopes the route needs.
//!
//! Module map, in request order:
//! - [`config`]: the TOML file -> a validated, immutable runtime [`config::Config`].
//! - [`h1guard`]: watches HTTP/1 request framing for smuggling shapes hyper would silently fix.
//! - [`host`]: one valid `Host`, agreeing with HTTP/2's `:authority`.
//! - [`path`]: the one canonical path that is both matched and forwarded.
//! - [`routes`]: first-match route table (exact path or segment-aware prefix, methods).
//! - [`resource`]: RFC 9728 protected resource metadata, served by bearward itself.
//! - [`auth`]: bearer token extraction, JWT validation, key cache, scopes, RFC 6750 answers.
//! - [`gateway`]: the request path as named phases (`gateway/phases.rs`), shared with `explain`;
//!   rejections become responses in `gateway/rejection.rs`.
//! - [`proxy`]: forwarding: timeouts, upgrades, and the header rules.
//! - [`pool`]: keep-alive upstream connections and the HTTP/1.1 exchange over them.
//! - [`tls`]: TLS to `https` upstreams.
//! - [`server`]: listeners, admin endpoints, graceful shutdown.
//! - [`telemetry`]: logging setup and metrics.
//! - [`body`]: the boxed streaming body type.
//! - [`demo`]: `bearward demo`, a self-contained walkthrough.
//! - [`explain`]: `bearward explain`, every check for one request, with live keys.

pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod explain;
pub(crate) mod forward;
pub mod gateway;
pub(crate) mod headers;
pub(crate) mod jose;
pub mod request;
pub mod resource;
pub mod routes;
pub mod server;
pub mod telemetry;
pub(crate) mod timer;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

/// Builds a gateway from a validated config and binds its listeners.
pub async fn build(config: config::Config) -> std::io::Result<server::Server> {
    let metrics = Arc::new(telemetry::Metrics::new());
    let auth = auth::Authenticator::new(&config, metrics.clone());
    let gateway = Arc::new(gateway::Gateway::new(Arc::new(config), auth, metrics));
    server::Server::bind(gateway).await
}
