//! The request path, as phases in a fixed order:
//!
//! ```text
//! framing   -> refuse ambiguous HTTP/1 framing (smuggling) ............ 400
//!              and transfer codings other than a lone chunked ......... 501
//! method    -> upper-case letters, `-` and `_` only ................... 400
//! target    -> origin-form only; one valid Host; canonicalize the path .. 400
//! metadata  -> RFC 9728 resource metadata, answered by bearward ....... 200/405
//! route     -> first match in file order .............................. 404
//!              a method override must keep the request on its route ... 400
//!              `%25` + two hex digits, unless the route allows it ..... 400
//!              a declared body over the route's max_body_bytes ........ 413
//! policy    -> deny / none / bearer ................................... 403
//! identity  -> strip client-sent identity headers and `_` spellings (always, every route)
//! auth      -> token -> keys -> signature -> claims -> scopes ......... 401/403/400/503
//! forward   -> rewrite headers, pooled upstream, stream both ways ..... 502/504
//! log       -> one access-log line, whatever happened
//! ```
//!
//! Order matters: the path is canonicalized before routing so the route checked is the route
//! served; identity headers go before auth so nothing the client sent can pass as a claim; no
//! phase before `forward` can reach an upstream, so every rejection leaves it untouched.

use crate::auth::{AuthError, Authenticator, Identity, TokenId};
use crate::body::{self, Body};
use crate::config::Config;
use crate::h1guard::Watch;
use crate::path::canonicalize_with;
use crate::proxy::{self, ProxyError, Upstreams};
use crate::routes::{AuthMode, Route};
use crate::telemetry::{Metrics, RouteSeries, ALLOWED};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tells the upstream what an audit-mode route would have done.
pub const AUDIT_HEADER: HeaderName = HeaderName::from_static("x-bearward-audit");

/// Why a request did not reach the upstream (or failed there). Turned into a response in one
/// place, [`Rejection::into_response`].
#[derive(Debug)]
pub enum Rejection {
    /// 400 with a fixed reason.
    BadRequest(&'static str),
    /// 501: a request bearward cannot pass on faithfully.
    NotImplemented(&'static str),
    /// 404: no route.
    NoRoute,
    /// 405 from something bearward answers itself; the value is its `Allow`.
    MethodNotAllowed(&'static str),
    /// 403: `auth = "deny"`.
    Denied,
    /// The token check said no.
    Auth(AuthError),
    /// The upstream failed.
    Proxy(ProxyError),
    /// bearward itself could not build the upstream request.
    Internal(&'static str),
    /// 503: `max_requests_in_flight` requests are in flight on the listener.
    Overloaded,
}

impl Rejection {
    /// Fixed reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(r) | Rejection::NotImplemented(r) => r,
            Rejection::NoRoute => "no_route",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::Denied => "route_denied",
            Rejection::Auth(e) => e.reason(),
            Rejection::Proxy(e) => e.reason(),
            Rejection::Internal(r) => r,
            Rejection::Overloaded => "overloaded",
        }
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Denied => StatusCode::FORBIDDEN,
            Rejection::Auth(e) => e.status(),
            Rejection::Proxy(e) => e.status(),
            Rejection::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The one place a rejection becomes a response. `route` is the route that refused, for
    /// what its Bearer challenges say beyond the error.
    pub fn into_response(self, realm: &str, route: Option<&Route>) -> Response<Body> {
        let status = self.status();
        let text = match &self {
            Rejection::Auth(e) => e.to_string(),
            Rejection::BadRequest(r) => format!("bad request: {r}"),
            other => {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_")
                    + ": "
                    + other.reason()
            }
        };
        let mut resp = Response::new(body::full(format!("{text}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Rejection::Auth(e) => {
                if let Ok(v) = HeaderValue::from_str(&e.www_authenticate(realm, route)) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Rejection::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // RFC 9110 15.6.4: the overload is expected to pass; clients with backoff wait.
            Rejection::Overloaded => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        // The rest of these requests' bodies cannot be trusted to frame a next request.
        if let Rejection::BadRequest("ambiguous_framing")
        | Rejection::NotImplemented("unsupported_transfer_coding")
        | Rejection::Proxy(
            ProxyError::BodyTimeout | ProxyError::ClientBody | ProxyError::BodyTooLarge,
        ) = self
        {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Per-connection facts the service needs.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s IP as a header value (X-Forwarded-For), formatted once.
    pub peer_ip: HeaderValue,
    /// The connection's request and response counts ([`crate::h1guard`]): on HTTP/1 also its
    /// framing verdict; on HTTP/2 also its response bodies, for `send_timeout`.
    pub watch: Option<Watch>,
    /// The `request_timeout` timer, reused from request to request.
    pub request_timer: proxy::RequestTimer,
}

/// A CORS preflight (Fetch standard): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`, the request a browser sends before a cross-origin call, as
/// Envoy's `bypass_cors_preflight` recognizes it. Browsers send preflights without credentials,
/// so one with an `Authorization` header is no preflight: it gets the bearer check, and no
/// unchecked token reaches the upstream.
fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == http::Method::OPTIONS
        && h.contains_key(header::ORIGIN)
        && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && !h.contains_key(header::AUTHORIZATION)
}

/// RFC 9112 6.1: hyper decodes the final `chunked` of a request and hands on whatever lies
/// under it, so the body of `Transfer-Encoding: gzip, chunked` would reach the upstream still
/// compressed, with nothing saying so. As nginx does, a lone `chunked` is the one coding
/// accepted: any other is 501 (the RFC's answer to a coding a server does not understand), and
/// `chunked` twice (in one line or two) is 400 (a sender MUST NOT apply it twice). hyper has
/// already refused a coding list that does not end in `chunked`. HTTP/2 has no such header.
fn check_transfer_coding(headers: &http::HeaderMap) -> Result<(), Rejection> {
    let mut chunked = 0;
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in line.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(Rejection::NotImplemented("unsupported_transfer_coding"));
            }
        }
    }
    if chunked > 1 {
        return Err(Rejection::BadRequest("ambiguous_framing"));
    }
    Ok(())
}

/// Headers bearward adds for the upstream. They go in after `proxy::prepare_request` has
/// removed the client's hop-by-hop headers, so a client cannot strip them by naming them in
/// `Connection`.
struct Added<'a> {
    /// The caller, as `forward.claim_headers`.
    identity: Option<&'a Identity>,
    /// `X-Bearward-Audit` on audit-mode routes.
    audit: Option<HeaderValue>,
}

/// What one request did, for its access-log line and metrics.
struct Outcome {
    path: Option<String>,
    route: Option<Arc<str>>,
    /// Index of the route, for its metric series.
    route_index: Option<usize>,
    decision: &'static str,
    reason: &'static str,
    upstream_status: Option<u16>,
    upstream_time: Option<Duration>,
    token_id: Option<TokenId>,
}

/// Everything a request needs, built once per config snapshot.
pub struct Gateway {
    pub config: Arc<Config>,
    upstreams: Upstreams,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Metric series per route, in route order.
    series: Vec<RouteSeries>,
    /// The series of requests no route matched.
    no_route: RouteSeries,
}

impl Gateway {
    /// Builds the gateway for a config: pools and key caches.
    pub fn new(config: Arc<Config>, auth: Authenticator, metrics: Arc<Metrics>) -> Gateway {
        let series = config
            .routes
            .routes()
            .iter()
            .map(|r| metrics.route_series(&r.name))
            .collect();
        Gateway {
            upstreams: Upstreams::new(&config, &metrics),
            no_route: metrics.route_series(&"-".into()),
            series,
            config,
            auth,
            metrics,
        }
    }

    /// Runs one request through every phase, logs it, and answers. `request_index` is the
    /// request's place on an HTTP/1 connection watched by [`crate::h1guard`]
    /// ([`Watch::request_started`]).
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
        request_index: Option<usize>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let start = Instant::now();
        let method = req.method().clone();
        let mut out = Outcome {
            path: None,
            route: None,
            route_index: None,
            decision: ALLOWED.0,
            reason: ALLOWED.1,
            upstream_status: None,
            upstream_time: None,
            token_id: None,
        };
        let mut resp = match self
            .phases(req.map(body::boxed), conn, request_index, &mut out)
            .await
        {
            Ok(resp) => resp,
            Err(rej) => {
                out.decision = match rej {
                    Rejection::Proxy(ProxyError::BodyTooLarge) => "deny",
                    Rejection::Proxy(_) | Rejection::Internal(_) => "error",
                    _ => "deny",
                };
                out.reason = rej.reason();
                let route = out.route_index.map(|i| &self.config.routes.routes()[i]);
                rej.into_response(&self.config.server.realm, route)
            }
        };
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
        let status = resp.status().as_u16();
        let latency = start.elapsed();
        self.metrics.record(
            out.route_index
                .and_then(|i| self.series.get(i))
                .unwrap_or(&self.no_route),
            status,
            out.decision,
            out.reason,
            latency,
            out.upstream_time,
        );
        if self.config.server.access_log {
            tracing::info!(
                target: "bearward::access",
                method = %method,
                path = out.path.as_deref().unwrap_or("-"),
                route = out.route.as_deref().unwrap_or("-"),
                status,
                decision = out.decision,
                reason = out.reason,
                upstream_status = out.upstream_status,
                upstream_ms = out.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                latency_ms = latency.as_secs_f64() * 1000.0,
                token = out.token_id.map(tracing::field::display),
                peer = %conn.peer.ip(),
            );
        }
        resp
    }

    /// The answer to a request that came while `max_requests_in_flight` others were in flight:
    /// 503 with `Retry-After`, decided before the path, the route or the token is looked at,
    /// counted and logged under route `-`.
    pub fn overloaded(&self, method: &http::Method, conn: &ConnInfo) -> Response<Body> {
        let rej = Rejection::Overloaded;
        let (status, reason) = (rej.status().as_u16(), rej.reason());
        self.metrics.record(
            &self.no_route,
            status,
            "error",
            reason,
            Duration::ZERO,
            None,
        );
        if self.config.server.access_log {
            tracing::info!(
                target: "bearward::access",
                method = %method,
                path = "-",
                route = "-",
                status,
                decision = "error",
                reason,
                peer = %conn.peer.ip(),
            );
        }
        let mut resp = rej.into_response(&self.config.server.realm, None);
        if method == http::Method::HEAD {
            *resp.body_mut() = body::empty();
        }
        resp
    }

    /// Counts and logs a request hyper or h1guard refused before it became a request (see
    /// `server::refused_head`), under route `-` like an unmatched one.
    pub fn refused_head(&self, peer: SocketAddr, status: u16, reason: &'static str) {
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

    async fn phases(
        &self,
        mut req: Request<Body>,
        conn: &ConnInfo,
        request_index: Option<usize>,
        out: &mut Outcome,
    ) -> Result<Response<Body>, Rejection> {
        // framing: hyper has already refused differing Content-Lengths and bad chunking.
        if let (Some(watch), Some(index)) = (&conn.watch, request_index) {
            if watch.refuses(index) {
                return Err(Rejection::BadRequest("ambiguous_framing"));
            }
        }
        if req.headers().get_all(header::CONTENT_LENGTH).iter().count() > 1 {
            return Err(Rejection::BadRequest("ambiguous_framing"));
        }
        // hyper reads a request with Transfer-Encoding as chunked, so it has a body: a request
        // without one skips the lookup.
        if !http_body::Body::is_end_stream(req.body()) {
            check_transfer_coding(req.headers())?;
        }
        if !crate::routes::is_plain_method(req.method().as_str()) {
            return Err(Rejection::BadRequest("invalid_method"));
        }

        // target: HTTP/2 always carries scheme and authority; HTTP/1 must use origin-form.
        if req.version() <= Version::HTTP_11 && req.uri().scheme().is_some() {
            return Err(Rejection::BadRequest("absolute_form_target"));
        }
        if req.method() == http::Method::CONNECT {
            return Err(Rejection::BadRequest("connect_not_supported"));
        }
        crate::host::check(req.version(), req.uri(), req.headers())
            .map_err(|e| Rejection::BadRequest(e.reason()))?;
        let path = canonicalize_with(req.uri().path(), self.config.server.path)
            .map_err(|e| Rejection::BadRequest(e.reason()))?;

        // RFC 9728 metadata is bearward's own answer, whatever route would take the path.
        if let Some(doc) = self.config.resources.find(&path) {
            out.path = Some(path);
            out.reason = "resource_metadata";
            return crate::resource::respond(req.method(), req.headers(), doc)
                .ok_or(Rejection::MethodNotAllowed(crate::resource::ALLOW));
        }

        // route
        let Some((index, route)) = self.config.routes.find(req.method(), &path) else {
            out.path = Some(path);
            return Err(Rejection::NoRoute);
        };
        if !self
            .config
            .routes
            .overrides_stay(req.headers(), req.uri().query(), &path, index)
        {
            out.path = Some(path);
            return Err(Rejection::BadRequest("method_override"));
        }
        if !route.allow_encoded_percent && crate::path::has_double_encoding(&path) {
            out.path = Some(path);
            out.route = Some(route.name.clone());
            out.route_index = Some(index);
            return Err(Rejection::BadRequest("double_encoding"));
        }
        // A declared length over the route's limit is refused before anything is read or
        // checked, as nginx answers `client_max_body_size`; one without a declared length is
        // counted as it streams (`proxy::NotifyEnd`).
        if route
            .max_body
            .is_some_and(|max| http_body::Body::size_hint(req.body()).lower() > max)
        {
            out.path = Some(path);
            out.route = Some(route.name.clone());
            out.route_index = Some(index);
            return Err(Rejection::Proxy(ProxyError::BodyTooLarge));
        }
        // The canonical path plus the untouched query is what the upstream is asked for.
        // The path is kept for the access log only when there is one.
        let (mut target, logged) = match (req.uri().query(), self.config.server.access_log) {
            (Some(q), _) => (format!("{path}?{q}"), Some(path)),
            (None, true) => (path.clone(), Some(path)),
            (None, false) => (path, None),
        };
        out.path = logged;
        out.route = Some(route.name.clone());
        out.route_index = Some(index);

        // identity: whatever the route, the client never chooses these headers.
        for (_, h) in &self.config.forward.claim_headers {
            req.headers_mut().remove(h);
        }
        req.headers_mut().remove(AUDIT_HEADER);
        let claims = &self.config.forward.claim_headers;
        proxy::drop_underscored(
            req.headers_mut(),
            self.config.server.allow_underscores_in_headers,
            |h| proxy::is_managed(h) || claims.iter().any(|(_, c)| c == h),
        );

        // policy and auth. In audit mode a refusal becomes a note to the upstream. What bearward
        // tells the upstream (identity, audit note) is added in `forward`, after the client's
        // hop-by-hop headers are gone, so no `Connection` option can strip it.
        let mut identity = None;
        let bearer = route.auth == AuthMode::Bearer;
        let preflight = bearer && route.cors_preflight && is_cors_preflight(&req);
        let verdict = match route.auth {
            AuthMode::None => Ok(()),
            AuthMode::Deny => Err(Rejection::Denied),
            AuthMode::Bearer if preflight => {
                out.reason = "cors_preflight";
                Ok(())
            }
            AuthMode::Bearer => {
                let result = self
                    .auth
                    .authenticate(req.headers(), req.uri().query(), route)
                    .await;
                out.token_id = result.token_id;
                // Identity headers go upstream only with a forwarded request: an allowed one,
                // or an audit-mode one whose token was valid.
                if result.outcome.is_ok() || route.audit {
                    identity = result.identity;
                }
                result.outcome.map_err(Rejection::Auth)
            }
        };
        let strip = bearer && self.config.forward.strip_authorization;
        if strip {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        // A query token goes with `strip_authorization` where the route reads one, and always
        // from a preflight: it was never checked (a preflight's URL is the call's, query and
        // all), so it must not reach the upstream as if it had been.
        if (strip && route.token_in_query) || preflight {
            if let Some(stripped) = crate::auth::strip_query_token(&target) {
                target = stripped;
            }
        }
        let audit = match verdict {
            Ok(()) if route.audit => Some(HeaderValue::from_static("allow")),
            Ok(()) => None,
            Err(rej) if route.audit => {
                let note = format!(
                    "would-deny; reason={}; status={}",
                    rej.reason(),
                    rej.status().as_u16()
                );
                tracing::info!(route = %route.name, reason = rej.reason(), "audit: would deny; forwarding");
                out.decision = "audit_deny";
                out.reason = rej.reason();
                HeaderValue::from_str(&note).ok()
            }
            Err(rej) => return Err(rej),
        };

        let added = Added {
            identity: identity.as_ref(),
            audit,
        };
        self.forward(req, route, target, conn, out, added).await
    }

    async fn forward(
        &self,
        mut req: Request<Body>,
        route: &Route,
        target: String,
        conn: &ConnInfo,
        out: &mut Outcome,
        added: Added<'_>,
    ) -> Result<Response<Body>, Rejection> {
        let upstream = self.upstreams.config(route.upstream);
        let rewrite = proxy::prepare_request(
            &mut req,
            upstream,
            target,
            conn,
            &self.config.server.trusted_proxies,
        )
        .map_err(|_| Rejection::Internal("bad_upstream_request"))?;
        if let Some(identity) = added.identity {
            for (claim, h) in &self.config.forward.claim_headers {
                if let Some(v) = identity.header_value(claim) {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
        }
        if let Some(v) = added.audit {
            req.headers_mut().insert(AUDIT_HEADER, v);
        }
        match self
            .upstreams
            .send(
                route.upstream,
                req,
                &rewrite,
                &conn.request_timer,
                route.max_body,
            )
            .await
        {
            Ok((mut resp, elapsed)) => {
                out.upstream_status = Some(resp.status().as_u16());
                out.upstream_time = Some(elapsed);
                proxy::prepare_response(&mut resp);
                Ok(resp)
            }
            // A stalled, broken or oversized client body is the client's doing, not upstream
            // trouble.
            Err(
                e @ (ProxyError::BodyTimeout | ProxyError::ClientBody | ProxyError::BodyTooLarge),
            ) => Err(Rejection::Proxy(e)),
            Err(e) => {
                tracing::warn!(upstream = %upstream.name, authority = %upstream.authority, reason = e.reason(), "upstream request failed");
                Err(Rejection::Proxy(e))
            }
        }
    }
}
