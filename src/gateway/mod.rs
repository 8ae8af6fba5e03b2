//! The request path, as phases in a fixed order. Each phase is one function in
//! [`phases`](self::phases), named in the right-hand column, and [`Gateway::evaluate`] calls them
//! in this order; `bearward explain` runs the same `evaluate` with a printing sink.
//!
//! ```text
//! overload  -> past max_requests_in_flight (counted in server::conn) .. 503   Gateway::phases
//! framing   -> refuse ambiguous HTTP/1 framing (smuggling) ............ 400   check_framing
//!              and transfer codings other than a lone chunked ......... 501
//! method    -> upper-case letters, `-` and `_` only ................... 400   check_method
//! target    -> origin-form only; one valid Host; canonicalize the path .. 400   check_target
//! metadata  -> RFC 9728 resource metadata, answered by bearward ....... 200/405 serve_metadata
//! route     -> first match in file order .............................. 404   resolve_route
//!              a method override must keep the request on its route ... 400
//!              `%25` + two hex digits, unless the route allows it ..... 400
//!              a declared body over the route's max_body_bytes ........ 413   check_declared_body
//! identity  -> strip client-sent identity headers and `_` spellings ......      strip_identity
//!              (always, every route)
//! policy    -> deny / none / bearer ................................... 403   authorize
//! auth      -> token -> keys -> signature -> claims -> scopes ......... 401/403/400/503 check_token
//! mcp       -> an `mcp` route's POST: its JSON-RPC body (read whole) ... 400/403/413 check_mcp
//!              names the operation, whose scopes are needed too
//! limit     -> the route's rate_limit, by subject, client, claim or ...... 429   check_rate_limit
//!              client address (audit mode: noted, forwarded)
//! forward   -> rewrite headers, pooled upstream, stream both ways ..... 502/504 Gateway::forward
//! log       -> one access-log line and the metrics, whatever happened        Gateway::log
//! ```
//!
//! Order matters: the path is canonicalized before routing so the route checked is the route
//! served; identity headers go before auth so nothing the client sent can pass as a claim; no
//! phase before `forward` can reach an upstream, so every rejection leaves it untouched.

mod decision;
pub mod limit;
mod mcp;
pub(crate) use mcp::cut;
mod phases;
mod rejection;

pub use decision::ExtAuthzTarget;
pub(crate) use decision::{convention as decision_convention, original_request};
pub use mcp::McpNote;
pub use phases::{Evaluated, Pass, Quiet, Sink};
pub use rejection::{Answering, Fault, Framing, Rejection};
pub(crate) mod login;

use crate::auth::{Authenticator, TokenId};
use crate::body::{self, Body};
use crate::config::Config;
use crate::forward;
use crate::request::ledger::ConnLedger;
use crate::routes::Route;
use crate::telemetry::{Metrics, RouteSeries, ALLOWED};
use crate::trace;
use crate::upstream::{ProxyError, RequestTimer, Upstreams};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The part of the path a route's `prefix_rewrite` took off (Traefik's `StripPrefix` name).
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// Tells the upstream what an audit-mode route would have done.
pub const AUDIT_HEADER: HeaderName = HeaderName::from_static("x-bearward-audit");
/// The IETF httpapi RateLimit header fields.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Per-connection facts the service needs.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s IP as a header value (X-Forwarded-For), formatted once.
    pub peer_ip: HeaderValue,
    /// The connection's request and response counts ([`crate::request::framing`]): on HTTP/1 also its
    /// framing verdict; on HTTP/2 also its response bodies, for `send_timeout`.
    pub ledger: Option<ConnLedger>,
    /// The `request_timeout` timer, reused from request to request.
    pub request_timer: RequestTimer,
    /// The connection's TLS, when it came in on a TLS listener.
    pub tls: Option<TlsInfo>,
    /// It came in on the decision listener: its requests ask about another request.
    pub decision: bool,
}

/// A decision's "yes": 200, no body, never cached by the ingress.
fn allowed() -> Response<Body> {
    let mut resp = Response::new(body::empty());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What the TLS handshake established for a connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// ALPN chose `h2`.
    pub alpn_h2: bool,
    /// SHA-256 of the verified client certificate (RFC 8705's `x5t#S256`), if one was sent.
    pub client_cert: Option<[u8; 32]>,
}

/// What one request did, for its access-log line and metrics.
pub struct Outcome {
    pub path: Option<String>,
    pub route: Option<Arc<str>>,
    /// Index of the route, for its metric series.
    pub route_index: Option<usize>,
    /// The `decision` label of the request's metrics and log line: `allow`, `deny`,
    /// `audit_deny` or `error` ("decision" alone names the ingress mode).
    pub verdict: &'static str,
    pub reason: &'static str,
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<Duration>,
    /// A `cors` route's policy and the request's `Origin` if the policy allows it: the CORS
    /// headers every answer of the route gets (proxy listener only).
    /// Boxed: the outcome is made and moved for every request, and most routes have no `cors`.
    pub cors: Option<Box<(Arc<crate::cors::CorsPolicy>, Option<HeaderValue>)>>,
    /// The upstream (its index) and its endpoint that answered, or failed, the request: for an
    /// upstream of several endpoints only (one is named by its `url`).
    pub upstream_endpoint: Option<(u16, u8)>,
    pub token_id: Option<TokenId>,
    /// Which challenge a 401 carries: the request used DPoP, or the route wants bound tokens.
    pub challenge: Challenge,
    /// The route's rate-limit verdict, for the response's `RateLimit` headers.
    pub rate_limit: Option<limit::Verdict>,
    /// The client a trusted proxy or the ingress names (X-Forwarded-For), when the peer is one.
    pub client: Option<std::net::IpAddr>,
    /// `server.request_id_header`'s value for this request ([`crate::request::id`]).
    pub request_id: Option<HeaderValue>,
    /// The request's server span, with `[telemetry]` ([`crate::trace`]).
    pub span: Option<trace::SpanContext>,
    /// The configured issuer (its index) whose token the request carried, once verified.
    pub issuer: Option<usize>,
    /// What the access line says of the caller beyond its token's id. Boxed: the outcome is
    /// made and moved for every request, and most have neither.
    pub caller: Option<Box<CallerNote>>,
    /// A gRPC ext_authz check: [`Facts`] go back with the answer.
    pub ext_authz: bool,
    /// An MCP route's POST: its method and target, once its body was read.
    pub mcp: Option<Box<McpNote>>,
}

/// The caller as the access line names it, where there is more to say than its token's id.
#[derive(Default)]
pub struct CallerNote {
    /// A delegated token's actors (`act`).
    pub actor: Option<Arc<str>>,
    /// `server.access_log_claims` of the verified token, as a JSON object.
    pub claims: Option<Box<str>>,
}

/// A request whose connection closed before its answer was made: hyper drops the request's
/// future then (the client went away, or reset its HTTP/2 stream, or shutdown's grace ran out),
/// and without this it left no log line and no count. Logged and counted on the way out with
/// nginx's status for it, 499, decision `error` and reason `connection_closed`; with
/// `[telemetry]`, its server span ends the same way (a client that gave up on a slow upstream is
/// the trace worth having).
struct Unanswered<'a> {
    gateway: &'a Gateway,
    conn: &'a ConnInfo,
    method: &'a http::Method,
    version: http::Version,
    start: Instant,
    out: Outcome,
    span: Option<trace::Open>,
    answered: bool,
}

impl Unanswered<'_> {
    /// Ends the request's server span with `status`, if there is one.
    fn end_span(&mut self, status: u16) {
        let (Some(t), Some(span)) = (&self.gateway.tracer, self.span.take()) else {
            return;
        };
        let issuer = self
            .out
            .issuer
            .and_then(|i| self.gateway.config.issuers.get(i))
            .map(|i| i.issuer.as_str());
        t.end(span, || {
            server_span(
                self.method,
                self.version,
                self.conn,
                &self.out,
                status,
                issuer,
            )
        });
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.out.verdict = "error";
            self.out.reason = "connection_closed";
            self.end_span(499);
            let latency = self.start.elapsed();
            self.gateway
                .log(self.method, self.conn, &self.out, 499, latency);
        }
    }
}

/// An upstream exchange's client span (with `[telemetry]`): ended with the exchange's result,
/// or with `connection_closed` when the request's future is dropped mid-exchange (its client
/// went away), so the span the upstream's `traceparent` names is never missing.
struct ClientSpan<'a> {
    gateway: &'a Gateway,
    upstream: &'a crate::config::UpstreamConfig,
    span: Option<Box<(trace::Open, http::Method)>>,
}

impl ClientSpan<'_> {
    fn end(mut self, result: Result<u16, &'static str>) {
        self.gateway
            .end_client_span(self.span.take(), self.upstream, result);
    }
}

impl Drop for ClientSpan<'_> {
    fn drop(&mut self) {
        if self.span.is_some() {
            let span = self.span.take();
            self.gateway
                .end_client_span(span, self.upstream, Err("connection_closed"));
        }
    }
}

/// The identity a gRPC ext_authz check passed with, on its way from the decision to [`Facts`].
#[derive(Clone)]
struct CheckIdentity(Option<crate::auth::Identity>);

/// What a gRPC ext_authz check did, carried back to the listener in the answer's extensions
/// (never on the wire): its dynamic metadata and header removals are made from it.
#[derive(Clone)]
pub struct Facts {
    pub verdict: &'static str,
    pub reason: &'static str,
    pub route: Option<Arc<str>>,
    pub identity: Option<crate::auth::Identity>,
    /// The request carried a token.
    pub token: bool,
}

/// Out of line and by reference: the request path of every other listener pays one test of
/// `out.ext_authz` for it, not a conditional move of its [`Outcome`].
#[cold]
#[inline(never)]
fn attach_facts(resp: &mut Response<Body>, out: &Outcome) {
    let identity = resp.extensions_mut().remove::<CheckIdentity>();
    resp.extensions_mut().insert(Facts {
        verdict: out.verdict,
        reason: out.reason,
        route: out.route.clone(),
        identity: identity.and_then(|i| i.0),
        token: out.token_id.is_some(),
    });
}

/// The `WWW-Authenticate` scheme(s) of a refusal (RFC 6750 3, RFC 9449 7.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Challenge {
    #[default]
    Bearer,
    Dpop,
    /// Both: a route that takes DPoP- or certificate-bound tokens only, and the request showed
    /// neither.
    Both,
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome {
            path: None,
            route: None,
            route_index: None,
            verdict: ALLOWED.0,
            reason: ALLOWED.1,
            upstream_status: None,
            upstream_time: None,
            upstream_endpoint: None,
            cors: None,
            token_id: None,
            challenge: Challenge::Bearer,
            rate_limit: None,
            client: None,
            request_id: None,
            span: None,
            issuer: None,
            caller: None,
            ext_authz: false,
            mcp: None,
        }
    }
}

/// Everything a request needs, built once per config snapshot.
pub struct Gateway {
    pub config: Arc<Config>,
    pub(crate) upstreams: Upstreams,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Metric series per route, in route order.
    series: Vec<RouteSeries>,
    /// The series of requests no route matched.
    no_route: RouteSeries,
    /// Per route, in route order: its rate limiter, if it has a `rate_limit`. Kept with the
    /// snapshot, so a reload starts the buckets afresh.
    limiters: Vec<Option<limit::Limiter>>,
    /// `[telemetry]`'s tracer; kept across reloads.
    pub tracer: Option<Arc<trace::Tracer>>,
    /// `[authzen.NAME]`'s decision points, in the config's order; their kept answers start
    /// afresh with a reload, as the rate limits' buckets do.
    pub pdps: Vec<Arc<crate::authzen::Pdp>>,
    /// Per upstream, in the config's order: its identity assertion's signer, if it has one.
    signers: Vec<Option<crate::assertion::Signer>>,
    /// Per upstream, in the config's order: its token exchange, if it has one.
    exchangers: Vec<Option<crate::token_exchange::Exchanger>>,
    /// Some upstream's `identity_assertion` has `jwks_on_listener`.
    jwks_on_listener: bool,
    /// Some route has `cors`: preflights are looked at before routing.
    cors_routes: bool,
    /// Some route has `login_url`: a browser's page navigation is noted before the phases.
    login_routes: bool,
    /// The headers that say who the caller is and only bearward writes (claim and payload
    /// headers, identity assertions'), removed from every client request.
    identity_headers: Vec<HeaderName>,
    /// The assertion keys `/.well-known/jwks.json` publishes; kept across reloads
    /// ([`Gateway::with_keys_of`]).
    pub assertion_keys: Arc<crate::assertion::KeyRing>,
    /// Per route, in route order: its answer to a request without a token, made when the
    /// config loads ([`rejection::Prepared`]); for `auth = "bearer"` routes only, the ones that
    /// make it (a table of thousands of open routes holds none).
    missing_token: Vec<Option<rejection::Prepared>>,
}

impl Gateway {
    /// Starts the background work of serving that requests do not start: the upstreams'
    /// health checks ([`Upstreams::start_health_checks`]).
    pub fn start_background(&self) {
        self.upstreams.start_health_checks();
    }

    /// Builds the gateway for a config: pools and key caches.
    pub fn new(config: Arc<Config>, auth: Authenticator, metrics: Arc<Metrics>) -> Gateway {
        let series = config
            .routes
            .routes()
            .iter()
            .map(|r| metrics.route_series(&r.name))
            .collect();
        let replicas = config
            .cache
            .as_ref()
            .map_or(1, |c| c.rate_limit_fallback_replicas);
        let limiters = config
            .routes
            .routes()
            .iter()
            .map(|r| {
                limit::Limiter::with_store(
                    r,
                    auth.store().cloned(),
                    replicas,
                    metrics.rate_limit_fallbacks.clone(),
                )
            })
            .collect();
        let sealing = crate::store::SharedStore::sealing(auth.store());
        let pdps = config
            .authzen
            .iter()
            .map(|c| crate::authzen::Pdp::new(c.clone(), sealing.clone(), metrics.clone()))
            .collect();
        let signers = config
            .upstreams
            .iter()
            .map(|u| {
                let a = u.identity_assertion.as_ref()?;
                crate::assertion::Signer::new(a)
                    .inspect_err(|e| tracing::error!(upstream = %u.name, error = %e, "identity_assertion: no signer"))
                    .ok()
            })
            .collect();
        let exchangers = config
            .upstreams
            .iter()
            .map(|u| {
                let x = u.token_exchange.as_ref()?;
                let issuer = config.issuers.iter().find(|i| i.issuer == x.issuer);
                crate::token_exchange::Exchanger::new(&u.name, x, issuer, sealing.clone(), metrics.clone())
                    .inspect_err(|e| tracing::error!(upstream = %u.name, error = %e, "token_exchange: no client"))
                    .ok()
            })
            .collect();
        let mut identity_headers: Vec<HeaderName> = assertions(&config)
            .map(|a| a.header.clone())
            .chain(config.forward.token_headers().cloned())
            .collect();
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        let assertion_keys = crate::assertion::KeyRing::new(assertions(&config));
        let jwks_on_listener = assertions(&config).any(|a| a.jwks_on_listener);
        let cors_routes = config.routes.routes().iter().any(|r| r.cors.is_some());
        let login_routes = config.routes.routes().iter().any(|r| r.login_url.is_some());
        let missing_token = config
            .routes
            .routes()
            .iter()
            .map(|r| {
                (r.auth == crate::routes::AuthMode::Bearer).then(|| {
                    rejection::Prepared::missing_token(
                        &config.server.realm,
                        r,
                        auth.dpop(),
                        config.server.request_id_header.as_ref(),
                    )
                })
            })
            .collect();
        Gateway {
            missing_token,
            jwks_on_listener,
            cors_routes,
            login_routes,
            tracer: None,
            pdps,
            signers,
            exchangers,
            identity_headers,
            assertion_keys,
            limiters,
            upstreams: Upstreams::new(&config, &metrics),
            no_route: metrics.route_series(&"-".into()),
            series,
            config,
            auth,
            metrics,
        }
    }

    /// The gateway publishing its assertion keys in `old`'s ring, which keeps the keys a
    /// reload replaced until their last assertions have expired.
    pub fn with_keys_of(mut self, old: &Gateway) -> Gateway {
        old.assertion_keys.publish(assertions(&self.config));
        self.assertion_keys = old.assertion_keys.clone();
        self
    }

    /// The gateway with the health checks' verdicts of `old`'s upstreams, where an upstream
    /// of the same name checks the same endpoints: a reload does not send requests back to an
    /// instance its checks took out.
    pub fn with_health_of(self, old: &Gateway) -> Gateway {
        self.upstreams.carry_health_of(&old.upstreams);
        self
    }

    /// The gateway with `[telemetry]`'s tracer.
    pub fn with_tracer(mut self, tracer: Option<Arc<trace::Tracer>>) -> Gateway {
        self.tracer = tracer;
        self
    }

    /// Runs one request through every phase, logs it, and answers. `request_index` is the
    /// request's place on an HTTP/1 connection watched by [`crate::request::framing`]
    /// ([`ConnLedger::request_started`]).
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
        request_index: Option<usize>,
        admitted: bool,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let start = Instant::now();
        let method = req.method().clone();
        // An ingress asking for a decision wants HTTP answers, whatever the request it describes.
        // gRPC runs over HTTP/2 only (gRPC-Web, over HTTP/1.1, reads HTTP errors), so HTTP/1
        // requests skip the header lookup.
        let grpc = !conn.decision
            && req.version() == http::Version::HTTP_2
            && crate::upstream::is_grpc(req.headers());
        let mut unanswered = Unanswered {
            gateway: self,
            conn,
            method: &method,
            version: req.version(),
            start,
            out: Outcome {
                // Only bearward's own gRPC listener puts this on a request.
                ext_authz: conn.decision && req.extensions().get::<ExtAuthzTarget>().is_some(),
                ..Outcome::default()
            },
            span: None,
            answered: false,
        };
        let out = &mut unanswered.out;
        if let Some(name) = &self.config.server.request_id_header {
            // The peers believed about the client (as for its address, `evaluate`): a trusted
            // proxy, or the ingress asking (an untrusted one is refused before any phase).
            // Trust first: most peers are clients, whose header is not even looked up.
            let sent = (conn.decision || self.trusts(conn))
                .then(|| req.headers().get(name))
                .flatten();
            out.request_id = Some(
                sent.and_then(crate::request::id::trusted)
                    .unwrap_or_else(crate::request::id::new),
            );
        }
        unanswered.span = self.tracer.as_ref().map(|t| t.server(req.headers()));
        out.span = unanswered.span.as_ref().map(|s| s.ctx);
        // An HTTP/1 request refused with its body unread: hyper reads on only what has already
        // arrived and closes the connection when the rest is still coming, so the answer says
        // it closes (RFC 9112 9.6), or a client that reuses the connection loses its next
        // request. (A body read whole, an `mcp` route's, would not need it; refusals are few.)
        let body_pending =
            unanswered.version <= http::Version::HTTP_11 && !req.body().is_end_stream();
        let parent = self
            .tracer
            .as_ref()
            .zip(unanswered.span.as_ref())
            .map(|(t, s)| (t.clone(), s.ctx));
        // The page a browser is opening, for a `login_url` route's redirect: looked for only
        // where some route has one, and never for an ingress (its error page redirects).
        let page = (!conn.decision)
            .then(|| self.sign_in_page(&req, conn.tls.is_some()))
            .flatten();
        // The phases' future made in place inside the wrapper: made aside and moved in, it
        // cost a copy of several KiB on every request.
        let result = trace::in_span(
            parent,
            self.phases(req.map(body::boxed), conn, request_index, admitted, out),
        )
        .await;
        unanswered.answered = true;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(rej) => {
                let sign_in = page.and_then(|p| self.sign_in(&rej, p, out));
                let mut resp = sign_in.unwrap_or_else(|| self.refusal(rej, grpc, out));
                if body_pending {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        self.finish_response(&mut resp, &method, out);
        let status = resp.status().as_u16();
        // An ingress continues the trace from bearward's span on its own upstream request.
        if let (true, Some(span)) = (conn.decision, &unanswered.span) {
            resp.headers_mut()
                .insert(trace::TRACEPARENT, span.ctx.traceparent());
        }
        unanswered.end_span(status);
        let out = &unanswered.out;
        self.log(&method, conn, out, status, start.elapsed());
        if out.ext_authz {
            attach_facts(&mut resp, out);
        }
        resp
    }

    /// An upstream's endpoint, as configured.
    fn upstream_addr(&self, upstream: u16, endpoint: u8) -> &str {
        &self.upstreams.config(usize::from(upstream)).endpoints[usize::from(endpoint)]
    }

    /// The page a browser is opening over TLS or not, where some route has a `login_url`.
    pub(crate) fn sign_in_page<B>(&self, req: &Request<B>, tls: bool) -> Option<login::Page> {
        self.login_routes.then(|| login::page(req, tls)).flatten()
    }

    /// Does the ingress hand a refusal to the client as bearward wrote it, so that a browser
    /// can be sent to sign in from the decision listener? Caddy's forward_auth and Traefik's
    /// ForwardAuth do; nginx's auth_request and HAProxy take 401 and 403 only (their own error
    /// pages redirect), and an unnamed ingress may be either.
    pub(crate) fn ingress_passes_answers(&self) -> bool {
        use crate::config::Ingress;
        self.login_routes
            && self
                .config
                .decision
                .as_ref()
                .is_some_and(|d| matches!(d.ingress, Some(Ingress::Caddy | Ingress::Traefik)))
    }

    /// A 401 on a `login_url` route, for a browser opening a page: a redirect to sign in,
    /// noted as the 401's refusal would have been.
    pub(crate) fn sign_in(
        &self,
        rej: &Rejection,
        page: login::Page,
        out: &mut Outcome,
    ) -> Option<Response<Body>> {
        let route = &self.config.routes.routes()[out.route_index?];
        let url = route.login_url.as_ref()?;
        if rej.status() != http::StatusCode::UNAUTHORIZED {
            return None;
        }
        out.verdict = rej.decision_label();
        out.reason = rej.reason();
        let public = self.config.server.public_origin.as_deref();
        Some(page.redirect(url, public, route.token_in_query))
    }

    /// A rejection's answer, with its reason and label noted for the log and the metrics.
    fn refusal(&self, rej: Rejection, grpc: bool, out: &mut Outcome) -> Response<Body> {
        out.verdict = rej.decision_label();
        out.reason = rej.reason();
        let prepared = out
            .route_index
            .and_then(|i| self.missing_token.get(i)?.as_ref());
        if let Some(resp) = prepared.and_then(|p| p.answers(&rej, out.challenge, grpc)) {
            return resp;
        }
        let route = out.route_index.map(|i| &self.config.routes.routes()[i]);
        let mut answering = self.answering(route, out.challenge);
        answering.grpc = grpc;
        rej.into_response(&answering)
    }

    /// What every answer gets on its way out, bearward's own or the upstream's: the route's
    /// RateLimit fields (and Retry-After on a 429), and no content in an answer to HEAD.
    fn finish_response(&self, resp: &mut Response<Body>, method: &http::Method, out: &Outcome) {
        if let Some(cors) = &out.cors {
            cors.0.decorate(resp.headers_mut(), cors.1.as_ref());
        }
        if let (Some(v), Some(l)) = (
            out.rate_limit,
            out.route_index
                .and_then(|i| self.limiters.get(i))
                .and_then(Option::as_ref),
        ) {
            let l = l.tier(v.tier);
            let h = resp.headers_mut();
            h.insert(RATELIMIT_POLICY, l.policy.clone());
            if let Some(v) = l.header(&v) {
                h.insert(RATELIMIT, v);
            }
            if !v.allowed {
                h.insert(header::RETRY_AFTER, HeaderValue::from(v.retry_after.max(1)));
            }
        }
        if let Some(name) = &self.config.server.request_id_header {
            // `handle` gives every request an id when the header is configured; a prepared
            // answer holds an empty line in its place (`rejection::Prepared`).
            match &out.request_id {
                Some(id) => resp.headers_mut().insert(name.clone(), id.clone()),
                None => resp.headers_mut().remove(name),
            };
        }
        // RFC 9110 9.3.2: no content in an answer to HEAD. hyper drops it on HTTP/1 but sends
        // it on HTTP/2, where a client takes it as a stream error. An upstream's answer to HEAD
        // has none already; bearward's own keep the Content-Length a GET would have had.
        if method == http::Method::HEAD && out.upstream_status.is_none() {
            let len = http_body::Body::size_hint(resp.body()).exact();
            if let (Some(n), false) = (len, resp.headers().contains_key(header::CONTENT_LENGTH)) {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            *resp.body_mut() = body::empty();
        }
    }

    /// The request's metrics and its access-log line.
    fn log(
        &self,
        method: &http::Method,
        conn: &ConnInfo,
        out: &Outcome,
        status: u16,
        latency: Duration,
    ) {
        self.metrics.record(
            out.route_index
                .and_then(|i| self.series.get(i))
                .unwrap_or(&self.no_route),
            status,
            out.verdict,
            out.reason,
            latency,
            out.upstream_time,
        );
        if let (Some(m), Some(route)) = (&out.mcp, &out.route) {
            self.metrics
                .mcp_request(route, m.method_label, &m.name_label, out.verdict);
        }
        // A quiet route's answers under 400 go unlogged; its refusals and errors never do.
        let quiet = || {
            status < 400
                && out
                    .route_index
                    .and_then(|i| self.config.routes.routes().get(i))
                    .is_some_and(|r| r.quiet)
        };
        if self.config.server.access_log && !quiet() {
            tracing::info!(
                target: "bearward::access",
                method = %method,
                path = out.path.as_deref().unwrap_or("-"),
                route = out.route.as_deref().unwrap_or("-"),
                status,
                decision = out.verdict,
                reason = out.reason,
                upstream_status = out.upstream_status,
                upstream_ms = out.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                upstream_addr = out
                    .upstream_endpoint
                    .map(|(u, e)| self.upstream_addr(u, e)),
                latency_ms = latency.as_secs_f64() * 1000.0,
                token = out.token_id.map(tracing::field::display),
                peer = %conn.peer.ip(),
                client = out.client.map(tracing::field::display),
                actor = out.caller.as_ref().and_then(|c| c.actor.as_deref()),
                claims = out.caller.as_ref().and_then(|c| c.claims.as_deref()),
                request_id = out.request_id.as_ref().and_then(|v| v.to_str().ok()),
                trace_id = out.span.map(tracing::field::display),
                mcp_method = out.mcp.as_ref().map(|m| m.method.as_str()),
                mcp_name = out.mcp.as_ref().and_then(|m| m.name.as_deref()),
            );
        }
    }

    /// Counts and logs a request hyper or the framing guard refused before it became a request (see
    /// `server::conn::head_refusal`), under route `-` like an unmatched one.
    pub fn record_refused_head(&self, peer: SocketAddr, status: u16, reason: &'static str) {
        self.metrics
            .record(&self.no_route, status, "deny", reason, Duration::ZERO, None);
        if self.config.server.access_log {
            tracing::info!(
                target: "bearward::access",
                method = "-",
                path = "-",
                route = "-",
                status,
                decision = "deny",
                reason,
                peer = %peer.ip(),
            );
        }
    }

    /// Refreshes the scrape-time gauges of the request path: keys per rate-limited route, and
    /// requests in flight per endpoint of the upstreams that balance by them.
    pub fn export_gauges(&self) {
        self.upstreams.export_gauges();
        let routes = self.config.routes.routes().iter();
        let held = routes
            .zip(&self.limiters)
            .filter_map(|(r, l)| Some((r.name.clone(), l.as_ref()?.keys())));
        self.metrics.set_rate_limit_keys(held);
    }

    /// What a refusal's answer is made with.
    pub fn answering<'a>(
        &'a self,
        route: Option<&'a Route>,
        challenge: Challenge,
    ) -> rejection::Answering<'a> {
        let dpop = self.auth.dpop();
        rejection::Answering {
            realm: &self.config.server.realm,
            route,
            challenge,
            dpop,
            grpc: false,
        }
    }

    /// The chart, from the request to the upstream's answer.
    async fn phases(
        &self,
        mut req: Request<Body>,
        conn: &ConnInfo,
        request_index: Option<usize>,
        admitted: bool,
        out: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        // `overload`: the listener found `max_requests_in_flight` others in flight; refused
        // before the path, the route or the token is looked at.
        if !admitted {
            return Err(Rejection::Overloaded);
        }
        if conn.decision {
            return self.decide_for_ingress(req, conn, out).await;
        }
        let framing = conn.ledger.as_ref().zip(request_index);
        match self
            .evaluate(&mut req, framing, Some(conn), out, &mut Quiet)
            .await?
        {
            Evaluated::Answer(resp) => Ok(resp),
            Evaluated::Pass(pass) => self.forward(req, pass, conn, out).await,
        }
    }

    /// Decision mode: the same phases on the request the ingress describes; a pass is a 200
    /// carrying the identity headers for the ingress to copy upstream, a refusal the answer
    /// proxy mode would give, which the ingress passes to the client.
    async fn decide_for_ingress(
        &self,
        req: Request<Body>,
        conn: &ConnInfo,
        out: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        let Some(cfg) = &self.config.decision else {
            return Err(Rejection::Forbidden("decision_mode_off"));
        };
        if !forward::is_trusted(&cfg.trusted_proxies, &conn.peer) {
            return Err(Rejection::Forbidden("untrusted_decision_peer"));
        }
        let convention = decision::convention(&req, cfg)?;
        // A browser opening a page can be sent to sign in from here where the ingress passes the
        // answer on (not over Envoy's gRPC check, whose answer is a CheckResponse); the page's
        // scheme is the one the ingress names.
        let passes = self.ingress_passes_answers() && convention != decision::Convention::ExtAuthz;
        let sign_in_tls = passes.then(|| {
            req.headers()
                .get("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
        });
        let mut original = if convention == decision::Convention::ExtAuthz {
            decision::take_ext_authz_request(req, cfg)?
        } else {
            let original = decision::original_request(&req, cfg, convention)?;
            drop(req);
            original
        };
        let evaluated = self
            .evaluate(&mut original, None, Some(conn), out, &mut Quiet)
            .await;
        let pass = match evaluated {
            // RFC 9728 metadata is public: the ingress may let it through.
            Ok(Evaluated::Answer(_)) => return Ok(self.allowed(None, None)),
            Ok(Evaluated::Pass(pass)) => pass,
            Err(rej) => {
                let sign_in = sign_in_tls
                    .and_then(|tls| self.sign_in_page(&original, tls))
                    .and_then(|page| self.sign_in(&rej, page, out));
                return sign_in.ok_or(rej);
            }
        };
        // A route that answers itself: an answer other than 2xx is one every ingress takes as a
        // refusal and passes to the client (nginx's `auth_request` as a 500, but for 401 and
        // 403), so the upstream behind the ingress is kept out as it is behind the proxy.
        if let Some(r) = pass
            .route
            .respond
            .as_ref()
            .filter(|r| !r.status.is_success())
        {
            out.reason = "direct_response";
            return Ok(r.response());
        }
        let mut resp = self.allowed(pass.identity.as_ref(), pass.audit);
        if out.ext_authz {
            resp.extensions_mut().insert(CheckIdentity(pass.identity));
        }
        Ok(resp)
    }

    /// A decision's "yes" with every configured claim header, empty where the token has no
    /// such claim (or there is no token), and `X-Bearward-Audit`, empty outside audit mode: an
    /// ingress that copies only the headers an answer carries (Caddy's `copy_headers`,
    /// GHSA-7r4p-vjf4-gxv4) would otherwise pass the client's own copy on.
    fn allowed(
        &self,
        identity: Option<&crate::auth::Identity>,
        audit: Option<HeaderValue>,
    ) -> Response<Body> {
        let mut resp = allowed();
        let h = resp.headers_mut();
        for (claim, name) in &self.config.forward.claim_headers {
            let v = identity.and_then(|i| i.header_value(claim));
            h.insert(name.clone(), v.unwrap_or(HeaderValue::from_static("")));
        }
        if let Some(name) = &self.config.forward.payload_header {
            let v = identity.and_then(crate::auth::Identity::payload);
            h.insert(name.clone(), v.unwrap_or(HeaderValue::from_static("")));
        }
        h.insert(AUDIT_HEADER, audit.unwrap_or(HeaderValue::from_static("")));
        resp
    }

    /// Ends an upstream exchange's client span ([`trace`]), if there is one.
    #[cold]
    #[inline(never)]
    fn end_client_span(
        &self,
        span: Option<Box<(trace::Open, http::Method)>>,
        upstream: &crate::config::UpstreamConfig,
        result: Result<u16, &'static str>,
    ) {
        if let (Some(t), Some(span)) = (&self.tracer, span) {
            let (open, method) = *span;
            t.end(open, || client_span_finish(&method, upstream, result));
        }
    }

    /// The upstream's token in place of the client's (RFC 8693); a request without one
    /// carries none.
    #[cold]
    async fn exchange(
        &self,
        x: &crate::token_exchange::Exchanger,
        req: &mut Request<Body>,
        identity: Option<&crate::auth::Identity>,
        subject: Option<Box<str>>,
    ) -> Result<(), Rejection> {
        // The client's own is gone already, unless the route takes no token.
        req.headers_mut().remove(header::AUTHORIZATION);
        let Some(identity) = identity else {
            return Ok(());
        };
        match x.token(subject.as_deref(), &identity.0).await {
            Ok(v) => {
                req.headers_mut().insert(header::AUTHORIZATION, v);
                Ok(())
            }
            // Logged where the server said it (token_exchange), and in the access line.
            Err(crate::token_exchange::Failure::Refused(reason)) => {
                Err(Rejection::Forbidden(reason))
            }
            Err(crate::token_exchange::Failure::Unavailable) => Err(Rejection::ExchangeUnavailable),
        }
    }

    /// `forward`: rewrite the headers, send over a pooled connection, stream both ways.
    async fn forward(
        &self,
        mut req: Request<Body>,
        pass: Pass<'_>,
        conn: &ConnInfo,
        out: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        let Pass {
            route,
            target,
            identity,
            audit,
            subject,
            ..
        } = pass;
        if let Some(r) = &route.respond {
            out.reason = "direct_response";
            return Ok(r.response());
        }
        // A decision-only route: the proxy listener has nowhere to send it.
        let Some(upstream_index) = route.upstream else {
            return Err(Rejection::NoRoute);
        };
        let upstream = self.upstreams.config(upstream_index);
        let (target, taken) = match &route.prefix_rewrite {
            None => (target, None),
            Some(r) => r.apply(&target),
        };
        let mut rewrite = forward::prepare_request(
            &mut req,
            upstream,
            target,
            conn.peer,
            &conn.peer_ip,
            &self.config.server.trusted_proxies,
            conn.tls.is_some(),
        )
        .map_err(|_| Rejection::Internal("bad_upstream_request"))?;
        if let Some(taken) = taken {
            rewrite.replace[7] = Some((X_FORWARDED_PREFIX, HeaderValue::from_str(&taken).ok()));
        }
        // The id replaces any the client sent, as the other lines bearward owns do.
        if let Some(name) = &self.config.server.request_id_header {
            rewrite.replace[5] = Some((name.clone(), out.request_id.clone()));
        }
        // With [telemetry], the upstream's parent is bearward's client span, never the client's
        // own `traceparent`.
        // Boxed: a few bytes in the request future when [telemetry] is off.
        let client_span = ClientSpan {
            gateway: self,
            upstream,
            span: self.tracer.as_ref().zip(out.span).map(|(t, parent)| {
                let span = t.child(&parent);
                rewrite.replace[6] = Some((trace::TRACEPARENT, Some(span.ctx.traceparent())));
                Box::new((span, req.method().clone()))
            }),
        };
        if let Some(identity) = &identity {
            for (claim, h) in &self.config.forward.claim_headers {
                if let Some(v) = identity.header_value(claim) {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            if let Some(h) = &self.config.forward.payload_header {
                if let Some(v) = identity.payload() {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
        }
        if let Some(v) = audit {
            req.headers_mut().insert(AUDIT_HEADER, v);
        }
        for name in &upstream.remove_headers {
            req.headers_mut().remove(name);
        }
        // The upstream's own `set_headers`, in place of whatever the client sent.
        for (name, value) in &upstream.set_headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some(x) = &self.exchangers[upstream_index] {
            let headers = req.headers_mut();
            // A proof of possession for bearward's token says nothing of the new one.
            headers.remove(DPOP);
            match identity.as_ref().and_then(|i| x.kept(&i.0)) {
                Some(v) => {
                    headers.insert(header::AUTHORIZATION, v);
                }
                // Boxed: the exchange's future would otherwise size every request's.
                None => {
                    let identity = identity.as_ref();
                    Box::pin(self.exchange(x, &mut req, identity, subject)).await?;
                }
            }
        }
        if let Some(signer) = &self.signers[upstream_index] {
            let request = crate::assertion::Request {
                route: &route.name,
                method: req.method(),
                target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            };
            // Inserted whole: the client's own copy of the header never passes.
            let value = signer.value(identity.as_ref(), &request).map_err(|e| {
                tracing::error!(upstream = %upstream.name, error = %e, "identity assertion not signed");
                Rejection::Internal("assertion_unsigned")
            })?;
            req.headers_mut().insert(signer.header().clone(), value);
        }
        // Not boxed: the request future grows by the exchange's, but a box here cost an
        // allocation and a copy of it on every request (about 800 instructions), and the
        // larger future is held only while a request is in flight (an idle connection is
        // parked without it, request::framing).
        let tried = crate::upstream::Tried::new();
        let sent = self
            .upstreams
            .send(
                upstream_index,
                req,
                &rewrite,
                &conn.request_timer,
                crate::upstream::RouteLimits {
                    max_body: route.max_body,
                    request_timeout: route.request_timeout,
                },
                &tried,
            )
            .await;
        if upstream.endpoints.len() > 1 {
            out.upstream_endpoint = tried
                .get()
                .and_then(|e| Some((u16::try_from(upstream_index).ok()?, u8::try_from(e).ok()?)));
        }
        match sent {
            Ok((mut resp, elapsed)) => {
                out.upstream_status = Some(resp.status().as_u16());
                out.upstream_time = Some(elapsed);
                client_span.end(Ok(resp.status().as_u16()));
                forward::prepare_response(&mut resp);
                if let Some(rules) = &upstream.response_headers {
                    rules.apply(resp.headers_mut());
                }
                Ok(resp)
            }
            // A stalled, broken or oversized client body is the client's doing, not upstream
            // trouble.
            Err(e) if e.is_clients() => {
                client_span.end(Err(e.reason()));
                Err(Rejection::Proxy(e))
            }
            Err(e) => {
                client_span.end(Err(e.reason()));
                let request_id = out.request_id.as_ref().and_then(|v| v.to_str().ok());
                if e == ProxyError::Overloaded {
                    // One line per refused request would flood the log in the overload it
                    // guards against; the metrics count them by reason.
                    tracing::debug!(upstream = %upstream.name, request_id, "upstream at max_requests; refused");
                } else {
                    let endpoint = out
                        .upstream_endpoint
                        .map(|(_, e)| upstream.endpoints[usize::from(e)].as_str());
                    tracing::warn!(upstream = %upstream.name, authority = %upstream.authority, endpoint, reason = e.reason(), request_id, "upstream request failed");
                }
                Err(Rejection::Proxy(e))
            }
        }
    }
}

/// The upstreams' identity assertions, in the config's order.
fn assertions(config: &Config) -> impl Iterator<Item = &crate::config::AssertionConfig> {
    config
        .upstreams
        .iter()
        .filter_map(|u| u.identity_assertion.as_ref())
}

/// The server span of a request, by the OpenTelemetry HTTP semantic conventions, with the
/// decision and its reason (never the token).
fn server_span(
    method: &http::Method,
    version: http::Version,
    conn: &ConnInfo,
    out: &Outcome,
    status: u16,
    issuer: Option<&str>,
) -> trace::Finish {
    use trace::{attr, attr_int};
    let mut attributes = vec![
        attr("http.request.method", method.as_str()),
        attr_int("http.response.status_code", i64::from(status)),
        attr("bearward.decision", out.verdict),
        attr("bearward.reason", out.reason),
        attr("network.peer.address", conn.peer.ip().to_string()),
        attr(
            "network.protocol.version",
            match version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        ),
    ];
    if let Some(path) = &out.path {
        attributes.push(attr("url.path", path.clone()));
    }
    if let Some(route) = &out.route {
        attributes.push(attr("http.route", route.to_string()));
    }
    if let Some(client) = out.client {
        attributes.push(attr("client.address", client.to_string()));
    }
    if let Some(id) = out.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attributes.push(attr("http.request.header.x-request-id", id));
    }
    if conn.decision {
        attributes.push(attr("bearward.mode", "decision"));
    }
    if let Some(issuer) = issuer {
        attributes.push(attr("bearward.issuer", issuer));
    }
    trace::Finish {
        name: match &out.route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server,
        attributes,
        // HTTP semantic conventions: a server span is an error for 5xx only.
        error: (status >= 500).then(|| out.reason.to_owned()),
    }
}

/// The client span of an upstream exchange.
fn client_span_finish(
    method: &http::Method,
    upstream: &crate::config::UpstreamConfig,
    result: Result<u16, &'static str>,
) -> trace::Finish {
    use trace::{attr, attr_int};
    let mut attributes = vec![
        attr("http.request.method", method.as_str()),
        attr("server.address", upstream.authority.as_str()),
        attr("bearward.upstream", upstream.name.as_str()),
    ];
    let error = match result {
        Ok(status) => {
            attributes.push(attr_int("http.response.status_code", i64::from(status)));
            (status >= 500).then(|| status.to_string())
        }
        Err(reason) => {
            attributes.push(attr("error.type", reason));
            Some(reason.to_owned())
        }
    };
    trace::Finish {
        name: method.to_string(),
        kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client,
        attributes,
        error,
    }
}
