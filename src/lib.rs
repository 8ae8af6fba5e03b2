//! bearward: a reverse proxy that lets through only requests carrying a valid OAuth 2.0 bearer
//! JWT with the scopes the route needs.
//!
//! Module map, by layer: a module names only modules of its own layer or lower ones, and no
//! two import each other (`.ci/check-imports.py` checks both).
//!
//! Leaves:
//! - [`body`]: the boxed streaming body type; `timer`: rearmable timers shared by the guards;
//!   `headers`: hop-by-hop, reserved and "view" header-name rules; `jose`: JOSE algorithm
//!   names and base64url; [`tls`]: rustls client configs for `https` upstreams; [`worker`]:
//!   which connection worker a thread is, for what is kept per worker.
//!
//! Parsing and policy:
//! - [`config`]: the TOML file -> a validated, immutable runtime [`config::Config`]; one
//!   validation file per table under `config/validate/`.
//! - [`request`]: what a request is made of, before routing: `framing` (HTTP/1 smuggling
//!   shapes and the header and send timers on the socket), `ledger` (per-connection request and
//!   response accounting, HTTP/1 and HTTP/2), `host` (one valid `Host`), `path` (the one
//!   canonical path, matched and forwarded).
//! - [`routes`]: the first-match route table; [`resource`]: RFC 9728 metadata documents;
//!   [`mcp`]: MCP routes' JSON-RPC bodies and per-operation scopes; [`policy`]: `allow_if`,
//!   routes' CEL conditions (cel-rust, and a fast form for the usual ones).
//! - [`telemetry`]: logging setup and metrics.
//!
//! The way out:
//! - [`egress`]: calls to an IdP, direct or through an egress proxy (`HTTPS_PROXY`,
//!   `NO_PROXY`, an issuer's `proxy`), HTTPS tunnelled with `CONNECT`.
//!
//! Shared state:
//! - [`store`]: the Valkey/Redis store replicas share (`[cache] redis_url`), bounded by
//!   timeouts and skipped after failures; callers fall back to their process caches.
//!
//! The token check:
//! - [`auth`]: the `Authenticator` facade (verify a token: cache, then local JWT validation
//!   or introspection), built in one step (`build`); token extraction (`extract`), JWS parsing
//!   (`token`), key material and its hygiene (`keys`), fetching and refreshing JWKS (`jwks`),
//!   validation (`validator`), the verified-token cache (`cache`) and its per-thread front
//!   (`front`), proof of possession (`binding`: certificates, DPoP proofs and their replay
//!   store) over RFC 9449 proof checks (`dpop`), opaque tokens through RFC 7662 introspection
//!   (`introspect`), a caller's claims as header text (`identity`), `/readyz` and gauges
//!   (`health`), log ids (`token_id`), RFC 6750 answers (`error`).
//!
//! Forwarding:
//! - [`upstream`]: the upstream side behind one entry point, `Upstreams::send`: the pool
//!   (`pool`), one HTTP/1.1 exchange over it (`exchange`) in the wire format (`wire`), HTTP/2
//!   upstreams (`h2`), the WebSocket tunnel (`tunnel`), its errors (`error`).
//! - `forward`: the request and response rewrite (hop-by-hop out, `Host`, `X-Forwarded-*`).
//! - [`authzen`]: routes' questions to OpenID AuthZEN decision points, and the kept answers.
//! - [`assertion`]: the identity assertions bearward signs for upstreams, and their published
//!   keys; [`token_exchange`]: the tokens RFC 8693 exchanges mint for upstreams.
//!
//! The request path:
//! - [`gateway`]: the chart as named phase functions (`phases`, run by `Gateway::evaluate`),
//!   `forward` and the access log; rate limits (`limit`); decision mode, the request an
//!   ingress describes (`decision`); rejections become responses in one place (`rejection`).
//!
//! Running it:
//! - [`server`]: the accept loop and its limits (`mod`), the connection workers (`workers`),
//!   one connection (`conn`), reload (`reload`), the admin endpoints (`admin`).
//! - [`demo`]: `bearward demo`, a self-contained walkthrough; [`explain`]: `bearward explain`,
//!   the proxy's own phases with a printing sink and live keys.

pub mod assertion;
pub mod auth;
pub mod authzen;
pub mod body;
pub mod config;
pub mod cors;
pub mod demo;
pub mod egress;
pub mod explain;
pub(crate) mod forward;
pub mod gateway;
pub(crate) mod headers;
pub(crate) mod jose;
pub mod mcp;
pub mod policy;
pub mod request;
pub mod resource;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub(crate) mod timer;
pub mod tls;
pub mod token_exchange;
pub mod trace;
pub mod upstream;
pub mod worker;

use std::sync::Arc;

/// Builds a gateway from a validated config and binds its listeners.
pub async fn build(config: config::Config) -> std::io::Result<server::Server> {
    let metrics = Arc::new(telemetry::Metrics::new());
    let auth = auth::Authenticator::new(&config, metrics.clone());
    let tracer = config.telemetry.as_ref().map(|t| {
        trace::Tracer::start(
            t,
            metrics.clone(),
            auth::jwks::http_client(&egress::Route::Direct),
        )
    });
    let gateway =
        Arc::new(gateway::Gateway::new(Arc::new(config), auth, metrics).with_tracer(tracer));
    gateway.start_background();
    server::Server::bind(gateway).await
}
