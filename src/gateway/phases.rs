//! The request path's phases, one function each, run in the chart's order by
//! [`Gateway::evaluate`]. The proxy runs them with [`Quiet`], whose reports compile to nothing;
//! `bearward explain` runs the very same functions with a sink that prints each report, so the
//! two cannot disagree on what a request gets.

use super::rejection::Framing;
use super::{Challenge, ConnInfo, Gateway, Outcome, Rejection, AUDIT_HEADER};
use crate::auth::{self, AuthError, BindingRequest, Identity, Scheme, Trace};
use crate::body::Body;
use crate::request::ledger::ConnLedger;
use crate::request::path::{canonicalize_with, has_double_encoding};
use crate::routes::{is_plain_method, AuthMode, Route};
use crate::upstream::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use std::future::Future;

/// What the phases report as they run. Every method has a do-nothing default.
pub trait Sink: Send {
    /// A phase refused the request (`phase` is its name in the chart).
    fn refused(&mut self, _phase: &'static str, _rejection: &Rejection) {}
    /// The canonical path, once the target passed.
    fn canonical(&mut self, _path: &str) {}
    /// The path is an RFC 9728 metadata document, answered by bearward.
    fn metadata(&mut self) {}
    /// The route that matched.
    fn route(&mut self, _index: usize, _route: &Route) {}
    /// The bearer token was found (`Ok`, its bytes) or not (`Err`). Runs before the token is
    /// validated, so a sink may prepare what it wants to show of the keys.
    fn token(
        &mut self,
        _auth: &auth::Authenticator,
        _token: Result<&[u8], &AuthError>,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Where the validator writes each check; `None` skips the tracing.
    fn trace(&mut self) -> Option<&mut Trace> {
        None
    }
    /// The scope check on a valid token.
    fn scopes(&mut self, _have: &[String], _route: &Route, _ok: bool) {}
    /// An audit-mode route refused, and the request goes on.
    fn audit(&mut self, _rejection: &Rejection) {}
    /// The route's `allow_if` is about to be evaluated on these variables.
    fn policy(&mut self, _policy: &crate::policy::Policy, _input: &crate::policy::Input<'_>) {}
}

/// The proxy's sink: reports nothing.
pub struct Quiet;

impl Sink for Quiet {}

/// A request the phases let through, and what goes upstream with it.
pub struct Pass<'a> {
    pub index: usize,
    pub route: &'a Route,
    /// The canonical path and the untouched query (less a token that must not go upstream).
    pub target: String,
    /// The caller, for `forward.claim_headers`.
    pub identity: Option<Identity>,
    /// `X-Bearward-Audit` on audit-mode routes.
    pub audit: Option<HeaderValue>,
    /// The client's token, kept only for an upstream that exchanges it (RFC 8693), since
    /// it has left the request by then.
    pub subject: Option<Box<str>>,
}

/// A request's head without its body, which is not `Sync` and so cannot be borrowed across the
/// token check's awaits.
struct Head<'a> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
}

impl<'a> Head<'a> {
    fn of(req: &'a Request<Body>) -> Head<'a> {
        Head {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// What [`Gateway::evaluate`] found for a request it did not refuse.
pub enum Evaluated<'a> {
    /// bearward answers itself (RFC 9728 metadata).
    Answer(Response<Body>),
    /// Forward it.
    Pass(Pass<'a>),
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
                return Err(Rejection::Framing(Framing::UnsupportedCoding));
            }
        }
    }
    if chunked > 1 {
        return Err(Rejection::Framing(Framing::Ambiguous));
    }
    Ok(())
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

/// Is `origin` (`scheme://host[:port]`, as a browser serializes it) the request's own `Host`?
/// The scheme's default port is the same as none, on either side.
fn origin_names_host(origin: &[u8], host: Option<&[u8]>) -> bool {
    let Some(host) = host else { return false };
    let (authority, port) = if let Some(rest) = origin.strip_prefix(b"https://") {
        (rest, &b":443"[..])
    } else if let Some(rest) = origin.strip_prefix(b"http://") {
        (rest, &b":80"[..])
    } else {
        return false;
    };
    let authority = authority.strip_suffix(port).unwrap_or(authority);
    let host = host.strip_suffix(port).unwrap_or(host);
    authority.eq_ignore_ascii_case(host)
}

/// An audit-mode route's refusal, forwarded anyway: logged, counted as `audit_deny`, and the
/// `X-Bearward-Audit` note for the upstream.
fn would_deny(
    route: &Route,
    rej: &Rejection,
    out: &mut Outcome,
    sink: &mut impl Sink,
) -> Option<HeaderValue> {
    sink.audit(rej);
    let note = format!(
        "would-deny; reason={}; status={}",
        rej.reason(),
        rej.status().as_u16()
    );
    let request_id = out.request_id.as_ref().and_then(|v| v.to_str().ok());
    tracing::info!(route = %route.name, reason = rej.reason(), request_id, "audit: would deny; forwarding");
    out.verdict = "audit_deny";
    out.reason = rej.reason();
    HeaderValue::from_str(&note).ok()
}

/// The client's address: what a trusted proxy or the ingress named (`out.client`, worked out
/// in `evaluate`), else the peer's. Without a connection (`explain`), only an address given.
fn client_addr(out: &Outcome, conn: Option<&ConnInfo>) -> Option<std::net::IpAddr> {
    out.client.or(conn.map(|c| c.peer.ip().to_canonical()))
}

/// A decision request that names no client: its peer is the ingress, so [`client_addr`] is the
/// ingress's address, every client behind it alike.
fn names_no_client(headers: &HeaderMap, conn: Option<&ConnInfo>) -> bool {
    conn.is_some_and(|c| c.decision) && !headers.contains_key(crate::forward::X_FORWARDED_FOR)
}

/// `source_ranges`: the client's address is one the route serves; a decision request that
/// names no client is refused.
fn source_allowed(
    nets: &crate::routes::SourceRanges,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
    out: &Outcome,
) -> bool {
    !names_no_client(headers, conn) && client_addr(out, conn).is_some_and(|ip| nets.contains(&ip))
}

/// The request's host name for routes with `hosts` ([`crate::request::host::route_name`]): its
/// `Host`, which [`Gateway::check_target`] has checked (one, valid, agreeing with HTTP/2's
/// `:authority`), else the `:authority`; `None` for a request that names neither (HTTP/1.0).
fn route_host<B>(req: &Request<B>) -> Result<Option<String>, Rejection> {
    let Some(value) = crate::request::host::authority(req.headers().get(header::HOST), req.uri())
    else {
        return Ok(None);
    };
    crate::request::host::route_name(value)
        .map(Some)
        .map_err(|e| Rejection::BadRequest(e.reason()))
}

/// Reports a refusal to the sink on its way out.
fn report<T>(
    sink: &mut impl Sink,
    phase: &'static str,
    r: Result<T, Rejection>,
) -> Result<T, Rejection> {
    if let Err(rej) = &r {
        sink.refused(phase, rej);
    }
    r
}

impl Gateway {
    /// Every phase before `forward`, in the chart's order (see the module docs of
    /// [`crate::gateway`]). `framing` is the HTTP/1 connection's verdict on this request, if it
    /// is watched.
    pub async fn evaluate<'g, S: Sink>(
        &'g self,
        req: &mut Request<Body>,
        framing: Option<(&ConnLedger, usize)>,
        conn: Option<&ConnInfo>,
        out: &mut Outcome,
        sink: &mut S,
    ) -> Result<Evaluated<'g>, Rejection> {
        // Behind a trusted proxy, or asked by an ingress, the client is the one it names: for
        // the access log, and for rate limits keyed by address.
        if let Some(c) = conn.filter(|c| c.decision || self.trusts(c)) {
            let trusted = &self.config.server.trusted_proxies;
            out.client = Some(crate::forward::client_ip(
                req.headers(),
                c.peer.ip(),
                true,
                trusted,
            ));
        }
        report(sink, "framing", check_framing(req, framing))?;
        report(sink, "method", check_method(req))?;
        let path = report(sink, "canonical", self.check_target(req))?;
        sink.canonical(&path);
        if self.jwks_on_listener && path == crate::assertion::JWKS_PATH {
            out.path = Some(path);
            out.reason = "assertion_keys";
            return match *req.method() {
                http::Method::GET | http::Method::HEAD => Ok(Evaluated::Answer(
                    crate::assertion::jwks_response(&self.assertion_keys),
                )),
                _ => Err(Rejection::MethodNotAllowed("GET, HEAD")),
            };
        }
        if let Some(answer) = self.serve_metadata(req, &path, sink) {
            out.path = Some(path);
            out.reason = "resource_metadata";
            return answer.map(Evaluated::Answer);
        }
        if self.cors_routes && req.method() == http::Method::OPTIONS && is_cors_preflight(req) {
            if let Some((index, route, policy)) = self.cors_route(req, &path) {
                sink.route(index, route);
                out.route = Some(route.name.clone());
                out.route_index = Some(index);
                out.reason = "cors_preflight";
                // A route kept to some networks is kept to them for its preflights too.
                if let Some(nets) = &route.source_ranges {
                    if !source_allowed(nets, req.headers(), conn, out) {
                        out.path = Some(path);
                        let rej = Rejection::Forbidden("source_not_allowed");
                        sink.refused("source", &rej);
                        return Err(rej);
                    }
                }
                // Behind an ingress, CORS is the ingress's: the preflight passes, untouched
                // by any token check, for it to answer or forward.
                if conn.is_some_and(|c| c.decision) {
                    let target = self.target(req, path, out);
                    return Ok(Evaluated::Pass(Pass {
                        index,
                        route,
                        target,
                        identity: None,
                        audit: None,
                        subject: None,
                    }));
                }
                out.path = Some(path);
                let answer = policy
                    .preflight(req.headers())
                    .map_err(Rejection::Forbidden);
                if let Err(rej) = &answer {
                    sink.refused("cors", rej);
                }
                return answer.map(Evaluated::Answer);
            }
        }
        let found = self.resolve_route(req, &path, out, sink);
        let (index, route) = match found {
            Ok(r) => r,
            Err(e) => {
                out.path = Some(path);
                return Err(e);
            }
        };
        out.route = Some(route.name.clone());
        out.route_index = Some(index);
        if let (Some(policy), false) = (&route.cors, conn.is_some_and(|c| c.decision)) {
            out.cors = Some(Box::new((
                policy.clone(),
                policy.allowed_origin(req.headers()),
            )));
        }
        if let Err(e) = report(sink, "body", check_declared_body(req, route)) {
            out.path = Some(path);
            return Err(e);
        }
        let mut target = self.target(req, path, out);
        self.strip_identity(req, conn);
        let (identity, mut audit, subject) = self
            .authorize(req, route, &mut target, conn, out, sink)
            .await?;
        out.issuer = identity.as_ref().map(|i| i.0.issuer);
        if let Some(actor) = identity.as_ref().and_then(|i| i.0.principal.actor.as_ref()) {
            out.caller.get_or_insert_default().actor = Some(actor.clone());
        }
        let limited = self
            .check_rate_limit(index, identity.as_ref(), req.headers(), conn, out)
            .await;
        match limited {
            Ok(()) => {}
            // Audit mode puts a new limit in front of live traffic: counted and noted, never
            // answered. The client sees no RateLimit fields it was not held to; the first
            // would-be refusal (the token's, if any) is the one reported.
            Err(rej) if route.audit => {
                out.rate_limit = None;
                if out.verdict != "audit_deny" {
                    audit = would_deny(route, &rej, out, sink);
                }
            }
            Err(rej) => {
                sink.refused("rate_limit", &rej);
                return Err(rej);
            }
        }
        Ok(Evaluated::Pass(Pass {
            index,
            route,
            target,
            identity,
            audit,
            subject,
        }))
    }

    /// `target`: origin-form only, one valid `Host`, and the one canonical path.
    fn check_target(&self, req: &Request<Body>) -> Result<String, Rejection> {
        // HTTP/2 always carries scheme and authority; HTTP/1 must use origin-form.
        if req.version() <= Version::HTTP_11 && req.uri().scheme().is_some() {
            return Err(Rejection::BadRequest("absolute_form_target"));
        }
        if req.method() == http::Method::CONNECT {
            return Err(Rejection::BadRequest("connect_not_supported"));
        }
        crate::request::host::check(req.version(), req.uri(), req.headers())
            .map_err(|e| Rejection::BadRequest(e.reason()))?;
        canonicalize_with(req.uri().path(), self.config.server.path)
            .map_err(|e| Rejection::BadRequest(e.reason()))
    }

    /// `metadata`: RFC 9728 metadata is bearward's own answer, whatever route would take the
    /// path.
    fn serve_metadata(
        &self,
        req: &Request<Body>,
        path: &str,
        sink: &mut impl Sink,
    ) -> Option<Result<Response<Body>, Rejection>> {
        let doc = self
            .config
            .resources
            .find(path, || route_host(req).ok().flatten())?;
        sink.metadata();
        Some(
            crate::resource::respond(req.method(), req.headers(), doc)
                .ok_or(Rejection::MethodNotAllowed(crate::resource::ALLOW)),
        )
    }

    /// The `cors` route a CORS preflight is for: the one the request it asks about
    /// (`Access-Control-Request-Method`, same host and path) would take. `None`: that route has
    /// no `cors` (or there is none), and the preflight goes on as any request.
    fn cors_route(
        &self,
        req: &Request<Body>,
        path: &str,
    ) -> Option<(usize, &Route, &crate::cors::CorsPolicy)> {
        let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let asked = http::Method::from_bytes(asked.as_bytes()).ok()?;
        let host = match self.config.routes.uses_hosts() {
            false => None,
            true => route_host(req).ok()?,
        };
        let (index, route) = self.config.routes.find(&asked, host.as_deref(), path)?;
        Some((index, route, route.cors.as_deref()?))
    }

    /// `route`: the first match in file order; a method override must keep the request on it;
    /// `%25` and two hex digits only where the route allows them.
    fn resolve_route(
        &self,
        req: &Request<Body>,
        path: &str,
        out: &mut Outcome,
        sink: &mut impl Sink,
    ) -> Result<(usize, &Route), Rejection> {
        // Worked out only for a table that asks: the host plays no part otherwise.
        let host = match self.config.routes.uses_hosts() {
            false => None,
            true => report(sink, "canonical", route_host(req))?,
        };
        let host = host.as_deref();
        let Some((index, route)) = self.config.routes.find(req.method(), host, path) else {
            let rej = Rejection::NoRoute;
            sink.refused("route", &rej);
            return Err(rej);
        };
        sink.route(index, route);
        if !self
            .config
            .routes
            .overrides_stay(req.headers(), req.uri().query(), host, path, index)
        {
            return report(
                sink,
                "method",
                Err(Rejection::BadRequest("method_override")),
            );
        }
        if !route.allow_encoded_percent && has_double_encoding(path) {
            out.route = Some(route.name.clone());
            out.route_index = Some(index);
            return report(
                sink,
                "canonical",
                Err(Rejection::BadRequest("double_encoding")),
            );
        }
        Ok((index, route))
    }

    /// The canonical path plus the untouched query: what the upstream is asked for. The path is
    /// kept for the access log only when there is one.
    fn target(&self, req: &Request<Body>, path: String, out: &mut Outcome) -> String {
        let (target, logged) = match (req.uri().query(), self.config.server.access_log) {
            (Some(q), _) => (format!("{path}?{q}"), Some(path)),
            (None, true) => (path.clone(), Some(path)),
            (None, false) => (path, None),
        };
        out.path = logged;
        target
    }

    /// `identity`: whatever the route, the client never chooses the headers bearward sets.
    fn strip_identity(&self, req: &mut Request<Body>, conn: Option<&ConnInfo>) {
        // A client certificate passed in a header counts only from a trusted proxy.
        if let Some((h, _)) = &self.config.server.client_cert_header {
            if !conn.is_some_and(|c| self.trusts(c)) {
                req.headers_mut().remove(h);
            }
        }
        // One look at the names the client sent: most requests carry none of these, and a
        // hashed removal per configured name cost more than the pass.
        if req.headers().keys().any(|k| self.sets_identity(k)) {
            req.headers_mut().remove(AUDIT_HEADER);
            for h in &self.identity_headers {
                req.headers_mut().remove(h);
            }
        }
        crate::headers::drop_underscored(
            req.headers_mut(),
            self.config.server.allow_underscores_in_headers,
            |h| self.sets(h),
        );
    }

    /// A header bearward sets or filters: a managed one, a claim header, its audit note, an
    /// identity assertion's.
    fn sets(&self, h: &http::HeaderName) -> bool {
        crate::headers::is_managed(h) || self.sets_identity(h)
    }

    /// Is this one of the headers that say who the caller is (claim and payload headers, the
    /// audit note, identity assertions), which only bearward writes?
    fn sets_identity(&self, h: &http::HeaderName) -> bool {
        *h == AUDIT_HEADER || self.identity_headers.contains(h)
    }

    /// The names in `headers` an upstream may read as one of bearward's (`_` for `-`), which
    /// an ingress that only overwrites exact names (Envoy's ext_authz) must remove.
    pub fn underscored_aliases(&self, headers: &HeaderMap) -> Vec<http::HeaderName> {
        crate::headers::underscored(
            headers,
            self.config.server.allow_underscores_in_headers,
            |h| self.sets(h),
        )
    }

    /// `policy` and `auth`: deny, none, or the bearer check. In audit mode a refusal becomes a
    /// note to the upstream. What bearward tells the upstream (identity, audit note) is added in
    /// `forward`, after the client's hop-by-hop headers are gone, so no `Connection` option can
    /// strip it.
    async fn authorize<S: Sink>(
        &self,
        req: &mut Request<Body>,
        route: &Route,
        target: &mut String,
        conn: Option<&ConnInfo>,
        out: &mut Outcome,
        sink: &mut S,
    ) -> Result<(Option<Identity>, Option<HeaderValue>, Option<Box<str>>), Rejection> {
        let mut identity = None;
        if let Some(nets) = &route.source_ranges {
            if !source_allowed(nets, req.headers(), conn, out) {
                let rej = Rejection::Forbidden("source_not_allowed");
                sink.refused("source", &rej);
                return Err(rej);
            }
        }
        if route.require_client_certificate && self.client_cert(&Head::of(req), conn).is_none() {
            let rej = Rejection::Forbidden("client_certificate_required");
            sink.refused("auth", &rej);
            return Err(rej);
        }
        let bearer = route.auth.reads_token();
        // A request that carries the route's token header or cookie is no preflight either.
        let preflight = bearer
            && route.cors_preflight
            && is_cors_preflight(req)
            && route
                .token_header
                .as_ref()
                .is_none_or(|h| !req.headers().contains_key(h))
            && route
                .token_cookie
                .as_ref()
                .is_none_or(|c| !auth::carries_cookie(req.headers(), c));
        let verdict = match route.auth {
            AuthMode::None => Ok(()),
            AuthMode::Deny => Err(Rejection::Denied),
            AuthMode::Bearer | AuthMode::Optional if preflight => {
                out.reason = "cors_preflight";
                Ok(())
            }
            // Only a request that carries the cookie has a credential the browser adds itself.
            AuthMode::Bearer | AuthMode::Optional
                if route
                    .token_cookie
                    .as_ref()
                    .is_some_and(|c| auth::carries_cookie(req.headers(), c))
                    && self.cross_origin(req, route) =>
            {
                Err(Rejection::Forbidden("cross_origin_request"))
            }
            AuthMode::Bearer | AuthMode::Optional => {
                let path = target.split('?').next().unwrap_or("/");
                let (outcome, caller) = self
                    .check_token(&Head::of(req), path, route, conn, out, sink)
                    .await;
                // Only a request with no token at all passes an optional route without one: a
                // token that is there is checked as on any route, so none passes as another.
                let outcome = match outcome {
                    Err(AuthError::MissingToken) if route.auth == AuthMode::Optional => {
                        out.reason = "anonymous";
                        Ok(())
                    }
                    o => o,
                };
                let mut outcome = outcome.map_err(Rejection::Auth);
                // An MCP route's POST: the body decides the scopes (check_token left them).
                if let (Ok(()), Some(policy), Some(caller)) =
                    (&outcome, mcp_post(req.method(), route), &caller)
                {
                    let decision = conn.is_some_and(|c| c.decision);
                    let have = &caller.0.scopes;
                    // Boxed: the body read's future would otherwise size every request's.
                    let mcp = Box::pin(self.check_mcp(req, route, policy, have, decision, out));
                    outcome = match mcp.await {
                        Ok(verdict) => verdict,
                        Err(rej) => {
                            sink.refused("mcp", &rej);
                            return Err(rej);
                        }
                    };
                }
                // Identity headers go upstream only with a forwarded request: an allowed one,
                // or an audit-mode one whose token was valid.
                if outcome.is_ok() || route.audit {
                    identity = caller;
                }
                outcome
            }
        };
        // `allow_if`, once the token and its scopes passed (or the route takes no token), then
        // `authzen`.
        let verdict = match (verdict, &route.allow_if) {
            (Ok(()), Some(policy)) if !preflight => {
                let caller = identity.as_ref();
                self.check_policy(req, route, policy, target, caller, conn, out, sink)
            }
            (v, _) => v,
        };
        let verdict = match (verdict, &route.authzen) {
            (Ok(()), Some(ask)) if !preflight => {
                let caller = identity.as_ref();
                // Boxed: the call's future would otherwise size every request's.
                let method = req.method().as_str();
                Box::pin(self.check_pdp(method, route, ask, target, caller, conn, out)).await
            }
            (v, _) => v,
        };
        // An upstream that exchanges the token gets the new one, and never the client's: gone
        // from the request whatever `strip_authorization` says. A JWT stays with its verified
        // form for the exchange; an opaque token (whose verified form holds only its hash) is
        // kept here.
        let exchanges = route.upstream.is_some_and(|u| self.exchangers[u].is_some());
        let subject = if exchanges && identity.as_ref().is_some_and(|i| i.0.token.is_empty()) {
            let query = target.split_once('?').map(|(_, q)| q);
            crate::auth::extract_token(req.headers(), query, route)
                .ok()
                .map(Box::from)
        } else {
            None
        };
        let strip = bearer && (self.config.forward.strip_authorization || exchanges);
        if strip {
            req.headers_mut().remove(route.token_header_name());
            if let Some(name) = &route.token_cookie {
                auth::strip_cookie(req.headers_mut(), name);
            }
        }
        // A query token goes with `strip_authorization` where the route reads one, and always
        // from a preflight: it was never checked (a preflight's URL is the call's, query and
        // all), so it must not reach the upstream as if it had been.
        if (strip && route.token_in_query) || preflight {
            if let Some(stripped) = crate::auth::strip_query_token(target) {
                *target = stripped;
            }
        }
        let audit = match verdict {
            Ok(()) if route.audit => Some(HeaderValue::from_static("allow")),
            Ok(()) => None,
            Err(rej) if route.audit => would_deny(route, &rej, out, sink),
            Err(rej) => {
                sink.refused("auth", &rej);
                return Err(rej);
            }
        };
        Ok((identity, audit, subject))
    }

    /// `allow_if`: the route's CEL conditions on the caller and the request. False is
    /// `policy_denied`, an error `policy_error`: both 403 without a challenge.
    #[allow(clippy::too_many_arguments)]
    fn check_policy<S: Sink>(
        &self,
        req: &Request<Body>,
        route: &Route,
        policy: &crate::policy::Policy,
        target: &str,
        caller: Option<&Identity>,
        conn: Option<&ConnInfo>,
        out: &Outcome,
        sink: &mut S,
    ) -> Result<(), Rejection> {
        let cert = || {
            policy
                .reads_thumbprint
                .then(|| self.client_cert(&Head::of(req), conn))
        };
        let thumbprint = cert().flatten().map(|t| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
        });
        let mut input = self.policy_input(req, route, policy, target, caller, conn, out);
        input.thumbprint = thumbprint.as_deref();
        sink.policy(policy, &input);
        let verdict = policy.evaluate(&input);
        match verdict {
            crate::policy::Verdict::Allow => Ok(()),
            crate::policy::Verdict::Deny { index } => {
                tracing::debug!(route = %route.name, condition = index, "allow_if is false");
                Err(Rejection::Forbidden("policy_denied"))
            }
            crate::policy::Verdict::Error { index, message } => {
                tracing::info!(route = %route.name, condition = index, error = %message, "allow_if failed");
                Err(Rejection::Forbidden("policy_error"))
            }
        }
    }

    /// `authzen`: the route's question to its policy decision point, answered from the kept
    /// answers or by the PDP. No: 403 `pdp_denied`; no answer: 503 `pdp_unavailable`.
    #[allow(clippy::too_many_arguments)]
    async fn check_pdp(
        &self,
        method: &str,
        route: &Route,
        ask: &crate::authzen::Ask,
        target: &str,
        caller: Option<&Identity>,
        conn: Option<&ConnInfo>,
        out: &Outcome,
    ) -> Result<(), Rejection> {
        use crate::authzen::{Decision, Failure};
        let Some(pdp) = self.pdps.get(ask.pdp) else {
            return Err(Rejection::PdpUnavailable);
        };
        let path = target.split('?').next().unwrap_or("/");
        let params = path_params(route, path);
        let facts = crate::authzen::Facts {
            claims: caller.map(|c| &c.0.claims),
            exp: caller.map(|c| c.0.exp),
            method,
            path,
            route: route.matcher.source(),
            params: &params,
            client_ip: client_addr(out, conn),
            request_id: out.request_id.as_ref().and_then(|v| v.to_str().ok()),
        };
        match pdp.decide(ask, &facts).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(reason)) => Err(Rejection::PdpDenied(
                reason.filter(|_| ask.reason_to_client),
            )),
            Err(Failure::NoSubject) => Err(Rejection::Forbidden("pdp_no_subject")),
            Err(Failure::Unavailable) => Err(Rejection::PdpUnavailable),
        }
    }

    /// What `allow_if` reads of a request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn policy_input<'a>(
        &self,
        req: &'a Request<Body>,
        route: &'a Route,
        policy: &crate::policy::Policy,
        target: &'a str,
        caller: Option<&'a Identity>,
        conn: Option<&ConnInfo>,
        out: &Outcome,
    ) -> crate::policy::Input<'a> {
        let (path, query) = match target.bytes().position(|b| b == b'?') {
            Some(at) => (&target[..at], Some(&target[at + 1..])),
            None => (target, None),
        };
        let (names, values) = match &route.matcher {
            crate::routes::PathMatch::Template(t) if policy.reads_params => {
                (t.names.as_slice(), path_params(route, path))
            }
            _ => (&[][..], crate::policy::Values::default()),
        };
        let host = policy.reads_host.then(|| {
            req.uri()
                .authority()
                .map(http::uri::Authority::as_str)
                .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        });
        crate::policy::Input {
            caller: caller.map(|c| crate::policy::Caller {
                claims: &c.0.claims,
                scopes: &c.0.scopes,
                subject: c.0.principal.subject.as_deref(),
                client: c.0.principal.client.as_deref(),
                memo: &c.0.policy,
            }),
            method: req.method().as_str(),
            path,
            query,
            headers: req.headers(),
            host: host.flatten(),
            names,
            values,
            client_ip: client_addr(out, conn),
            tls: conn.is_some_and(|c| c.tls.is_some()),
            thumbprint: None,
            route: &route.name,
        }
    }

    /// The bearer check: token, keys, signature, claims, then the route's scopes. The caller is
    /// returned whenever the token itself is valid, even if a scope is missing: audit mode still
    /// tells the upstream who called.
    async fn check_token<S: Sink>(
        &self,
        req: &Head<'_>,
        path: &str,
        route: &Route,
        conn: Option<&ConnInfo>,
        out: &mut Outcome,
        sink: &mut S,
    ) -> (Result<(), AuthError>, Option<Identity>) {
        let headers = req.headers;
        if route.require_bound_tokens {
            out.challenge = Challenge::Both;
        }
        let (token, scheme) = match auth::find_token_scheme(headers, req.uri.query(), route) {
            Ok(t) => t,
            Err(e) => {
                sink.token(&self.auth, Err(&e)).await;
                return (Err(e), None);
            }
        };
        if scheme == Scheme::Dpop {
            out.challenge = Challenge::Dpop;
        }
        sink.token(&self.auth, Ok(token)).await;
        let mut quiet = Trace::default();
        // A cached token is checked without an await; the future of a validation or an
        // introspection (several KiB: key fetches, HTTP calls) is boxed and made on a miss only,
        // so a cache hit neither allocates nor copies it.
        let verified = match sink.trace() {
            Some(trace) => Box::pin(self.auth.verify_bytes(token, Some(route), trace)).await,
            None => match self.auth.cached(token, Some(route)) {
                Some(found) => found,
                None => Box::pin(self.auth.verify_uncached(token, Some(route), &mut quiet)).await,
            },
        };
        let v = match verified {
            Ok(v) => v,
            // A refused token is hashed here, for the log only.
            Err(e) => {
                out.token_id = Some(auth::token_id(&auth::sha256_bytes(token)));
                return (Err(e), None);
            }
        };
        out.token_id = Some(v.token_id);
        let server = &self.config.server;
        if server.access_log && !server.access_log_claims.is_empty() {
            if let Some(claims) = logged_claims(&v, &server.access_log_claims) {
                out.caller.get_or_insert_default().claims = Some(claims);
            }
        }
        if v.binding.jkt.is_some() {
            out.challenge = Challenge::Dpop;
        }
        // Bound or not, the binding is checked on every request: the cache holds the token's
        // signature, never a proof or a certificate match.
        if v.binding.is_bound() || scheme == Scheme::Dpop || route.require_bound_tokens {
            let request = BindingRequest {
                scheme,
                headers,
                method: req.method.as_str(),
                htu: self.htu(req, path, conn),
                // A b64token: checked when the token was verified or cached.
                token: std::str::from_utf8(token).unwrap_or_default(),
                client_cert: self.client_cert(req, conn),
                require_bound: route.require_bound_tokens,
            };
            let bound = match sink.trace() {
                Some(trace) => Box::pin(self.auth.check_binding(&v, &request, trace)).await,
                None => Box::pin(self.auth.check_binding(&v, &request, &mut quiet)).await,
            };
            if let Err(e) = bound {
                return (Err(e), None);
            }
        }
        // An MCP route's POST is checked on its body's operation, with the route's scopes
        // ([`Gateway::check_mcp`]).
        if mcp_post(req.method, route).is_none() {
            let scopes = auth::validator::check_scopes(&v.scopes, route);
            sink.scopes(&v.scopes, route, scopes.is_ok());
            if scopes.is_err() {
                return (scopes, Some(Identity(v)));
            }
        }
        let conditions = match sink.trace() {
            Some(trace) => auth::validator::check_claim_conditions(&v, route, trace),
            None => auth::validator::check_claim_conditions(&v, route, &mut quiet),
        };
        (conditions, Some(Identity(v)))
    }

    /// Did a browser send this request for another site? A browser attaches cookies to
    /// requests any page makes, so a token read from one would authorize a form or `fetch` from
    /// elsewhere (cross-site request forgery). As Go's `CrossOriginProtection`: safe methods pass
    /// (but a WebSocket handshake);
    /// `Sec-Fetch-Site` (sent by every current browser) must say `same-origin` or `none` (typed
    /// in, a bookmark); without it, an `Origin` must name the request's host; a request with
    /// neither came from no browser that could be tricked, and passes. `same-site` is refused
    /// too: a sibling subdomain is another site's code. Origins the route's CORS policy lets
    /// send cookies, and `[server] public_origin`, are the site's own.
    #[cold]
    #[inline(never)]
    fn cross_origin<B>(&self, req: &Request<B>, route: &Route) -> bool {
        use http::Method;
        let h = req.headers();
        // A WebSocket handshake is a GET, and no CORS stands in front of one: a page anywhere
        // may open a socket with the site's cookies (cross-site WebSocket hijacking), so any
        // `Upgrade` gets the check, as gorilla/websocket's default `CheckOrigin` does.
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            && !h.contains_key(header::UPGRADE)
        {
            return false;
        }
        let own = || {
            route
                .cors
                .as_ref()
                .is_some_and(|p| p.trusts_with_cookies(h))
                || self.config.server.public_origin.as_ref().is_some_and(|o| {
                    h.get(header::ORIGIN)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(o.as_bytes()))
                })
        };
        let mut sites = h.get_all("sec-fetch-site").iter();
        match (sites.next(), sites.next()) {
            (Some(_), Some(_)) => return true,
            (Some(site), None) => {
                return !(matches!(site.as_bytes(), b"same-origin" | b"none") || own())
            }
            (None, _) => {}
        }
        let mut origins = h.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => false,
            (Some(origin), None) => {
                let host = crate::request::host::authority(h.get(header::HOST), req.uri());
                !(origin_names_host(origin.as_bytes(), host) || own())
            }
            _ => true,
        }
    }

    /// Does bearward believe what this connection's peer says about the client?
    /// `rate_limit`: counts the request under its key; over the limit, 429.
    pub(crate) async fn check_rate_limit(
        &self,
        index: usize,
        identity: Option<&crate::auth::Identity>,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
        out: &mut Outcome,
    ) -> Result<(), Rejection> {
        let Some(l) = self.limiters.get(index).and_then(Option::as_ref) else {
            return Ok(());
        };
        let client = || {
            let c = conn?;
            if names_no_client(headers, conn) {
                static SAID: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        ingress = %c.peer.ip(),
                        "a decision request for a route with rate_limit key = \"ip\" came without \
                         X-Forwarded-For: every client behind this ingress counts as one (set the \
                         ingress to append the client's address; said once)"
                    );
                }
            }
            client_addr(out, Some(c))
        };
        let (l, tier) = l.for_caller(identity);
        let verdict = super::limit::Verdict {
            tier,
            ..l.check(&l.key(identity, client)).await
        };
        out.rate_limit = Some(verdict);
        if verdict.allowed {
            Ok(())
        } else {
            Err(Rejection::RateLimited)
        }
    }

    pub(super) fn trusts(&self, conn: &ConnInfo) -> bool {
        crate::forward::is_trusted(&self.config.server.trusted_proxies, &conn.peer)
    }

    /// The request URI a DPoP proof's `htu` must name: `public_origin` (or, unset, the scheme
    /// and host the request came with: the rightmost `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// of a trusted proxy, else the listener's own scheme and `Host`) and the canonical path.
    fn htu(&self, req: &Head<'_>, path: &str, conn: Option<&ConnInfo>) -> Option<String> {
        if let Some(origin) = &self.config.server.public_origin {
            return crate::auth::dpop::normalize_htu(&format!("{origin}{path}"));
        }
        let h = req.headers;
        // The value the trusted proxy added is the rightmost: a proxy that appends keeps what
        // the client wrote to its left, so the leftmost would let the client pick the origin a
        // proof is checked against (a proof captured elsewhere would replay here).
        let forwarded = |name: &str| {
            conn.filter(|c| self.trusts(c))
                .and_then(|_| h.get_all(name).iter().next_back()?.to_str().ok())
                .map(|v| v.rsplit(',').next().unwrap_or(v).trim())
        };
        let tls = conn.is_some_and(|c| c.tls.is_some());
        let scheme = forwarded("x-forwarded-proto").unwrap_or(if tls { "https" } else { "http" });
        let host = match forwarded("x-forwarded-host") {
            Some(host) => host,
            None => match req.uri.authority() {
                Some(a) => a.as_str(),
                None => h.get(header::HOST)?.to_str().ok()?,
            },
        };
        crate::auth::dpop::normalize_htu(&format!("{scheme}://{host}{path}"))
    }

    /// The client certificate's SHA-256: the connection's own, verified by the TLS handshake,
    /// else one a trusted TLS-terminating proxy passed in `client_cert_header`.
    fn client_cert(&self, req: &Head<'_>, conn: Option<&ConnInfo>) -> Option<[u8; 32]> {
        let conn = conn?;
        if let Some(c) = conn.tls.as_ref().and_then(|t| t.client_cert) {
            return Some(c);
        }
        let (name, format) = self.config.server.client_cert_header.as_ref()?;
        if !self.trusts(conn) {
            return None;
        }
        let mut values = req.headers.get_all(name).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return None;
        };
        crate::tls::header_thumbprint(
            v.as_bytes(),
            *format == crate::config::CertHeaderFormat::Xfcc,
        )
    }
}

/// The route's `mcp` rules, when they decide a request of this method (a POST).
fn mcp_post<'r>(method: &http::Method, route: &'r Route) -> Option<&'r crate::mcp::Policy> {
    route
        .mcp
        .as_deref()
        .filter(|_| *method == http::Method::POST)
}

/// `framing`: refuse what hyper would silently fix. hyper has already refused differing
/// Content-Lengths and bad chunking; request::framing has seen the raw head.
fn check_framing(
    req: &Request<Body>,
    framing: Option<(&ConnLedger, usize)>,
) -> Result<(), Rejection> {
    if let Some((ledger, index)) = framing {
        if ledger.refuses(index) {
            return Err(Rejection::Framing(Framing::Ambiguous));
        }
    }
    if req.headers().get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Rejection::Framing(Framing::Ambiguous));
    }
    // hyper reads a request with Transfer-Encoding as chunked, so it has a body: a request
    // without one skips the lookup.
    if !http_body::Body::is_end_stream(req.body()) {
        check_transfer_coding(req.headers())?;
    }
    Ok(())
}

/// `method`: upper-case letters, `-` and `_` only.
fn check_method(req: &Request<Body>) -> Result<(), Rejection> {
    if is_plain_method(req.method().as_str()) {
        Ok(())
    } else {
        Err(Rejection::BadRequest("invalid_method"))
    }
}

/// A declared length over the route's limit is refused before anything is read or checked, as
/// nginx answers `client_max_body_size`; one without a declared length is counted as it streams
/// (`upstream::NotifyEnd`).
fn check_declared_body(req: &Request<Body>, route: &Route) -> Result<(), Rejection> {
    match route.max_body {
        Some(max) if http_body::Body::size_hint(req.body()).lower() > max => {
            Err(Rejection::Proxy(ProxyError::BodyTooLarge))
        }
        _ => Ok(()),
    }
}

/// A route's path parameters in `path`, percent-decoded (borrowed where nothing is encoded).
fn path_params<'a>(route: &Route, path: &'a str) -> crate::policy::Values<'a> {
    let mut values = crate::policy::Values::default();
    if let crate::routes::PathMatch::Template(t) = &route.matcher {
        t.walk(path, !route.case_sensitive, |_, v| {
            values.push(if v.bytes().any(|b| b == b'%') {
                percent_encoding::percent_decode_str(v).decode_utf8_lossy()
            } else {
                std::borrow::Cow::Borrowed(v)
            });
        });
    }
    values
}

/// `server.access_log_claims` (`names`) of a verified token, as a JSON object of their header
/// texts (each cut at 128 bytes); `None` when the token has none of them.
#[cold]
fn logged_claims(v: &std::sync::Arc<auth::Verified>, names: &[String]) -> Option<Box<str>> {
    let identity = Identity(v.clone());
    let found: serde_json::Map<String, serde_json::Value> = (names.iter())
        .filter_map(|c| {
            let text = identity.text(c)?;
            Some((c.clone(), super::cut(&text, 128).into()))
        })
        .collect();
    (!found.is_empty()).then(|| serde_json::Value::Object(found).to_string().into())
}
