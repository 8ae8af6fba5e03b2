//! `bearward explain`: why would this request be let through or refused? Walks the same phases
//! as the proxy, with the keys fetched live from the configured source, and prints every check.

use crate::auth::{sha256_bytes, token_id, AuthError, Authenticator, Trace};
use crate::body;
use crate::config::Config;
use crate::gateway::{Evaluated, Gateway, Outcome, Rejection, Sink};
use crate::routes::{LimitKey, Route};
use crate::telemetry::Metrics;
use http::{header, HeaderValue, Method, Request, StatusCode};
use std::fmt::Write as _;
use std::sync::Arc;

/// What was decided, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Refuse,
}

fn describe(i: usize, r: &Route) -> String {
    let (kind, p) = (r.matcher.kind(), r.matcher.source());
    let mut s = format!("routes[{i}] \"{}\": {kind} = \"{p}\"", r.name);
    if let Some(m) = &r.methods {
        let m: Vec<&str> = m.iter().map(Method::as_str).collect();
        let _ = write!(s, ", methods = {m:?}");
    }
    if let Some(h) = &r.hosts {
        let h: Vec<String> = h.patterns().collect();
        let _ = write!(s, ", hosts = {h:?}");
    }
    if let Some(nets) = &r.source_ranges {
        let n: Vec<String> = nets.entries().collect();
        let _ = write!(s, ", source_ranges = {n:?}");
    }
    if !r.case_sensitive {
        s.push_str(", case_sensitive = false");
    }
    if let Some(rw) = &r.prefix_rewrite {
        let _ = write!(s, ", prefix_rewrite = \"{}\"", rw.to);
    }
    let _ = write!(s, ", auth = \"{}\"", r.auth.as_str());
    if let Some(d) = &r.respond {
        let _ = write!(
            s,
            ", respond = {} (nothing is forwarded)",
            d.status.as_u16()
        );
    }
    if !r.scopes.is_empty() {
        let _ = write!(s, ", scopes = {:?}", r.scopes);
    }
    if !r.scopes_any.is_empty() {
        let _ = write!(s, ", scopes_any = {:?}", r.scopes_any);
    }
    if !r.authorization_details.is_empty() {
        let types: Vec<&str> = (r.authorization_details.iter())
            .map(|d| d.kind.as_str())
            .collect();
        let _ = write!(s, ", authorization_details of types {types:?}");
    }
    if r.cors_preflight {
        // explain takes no headers, so it shows the bearer check a preflight would skip.
        s.push_str(", cors_preflight = true");
    }
    if r.audit {
        s.push_str(", mode = \"audit\"");
    }
    if let Some(m) = &r.mcp {
        // explain sends no body: a POST's operation, and the scopes it adds, are not shown.
        let n = m.methods.len() + m.tools.named.len() + m.prompts.named.len() + m.resources.len();
        let _ = write!(
            s,
            ", mcp rules ({n} named operation(s)): a POST is decided on its JSON-RPC body, \
             which explain does not send"
        );
    }
    if let Some(p) = &r.allow_if {
        let _ = write!(s, ", allow_if = {} condition(s)", p.conditions.len());
    }
    if let Some(l) = &r.rate_limit {
        // explain counts nothing: its one request always fits a fresh bucket.
        let key = match &l.key {
            LimitKey::Subject => "subject".to_owned(),
            LimitKey::Client => "client".to_owned(),
            LimitKey::Ip => format!("ip (IPv6 by /{})", l.ipv6_prefix),
            LimitKey::Claim(path) => format!("claim:{path}"),
        };
        let _ = write!(
            s,
            ", rate_limit = {} per {}s per {key}, burst {}",
            l.count,
            l.window.as_secs(),
            l.burst
        );
        if let Some(t) = &l.tiers {
            let tiers: Vec<String> = (t.rates.iter())
                .map(|(tier, n, w)| format!("{tier} {n} per {}s", w.as_secs()))
                .collect();
            let _ = write!(s, " (by claim {}: {})", t.claim, tiers.join(", "));
        }
    }
    s
}

fn answer(out: &mut String, status: StatusCode, www: Option<String>) {
    let _ = writeln!(
        out,
        "answer     {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if let Some(w) = www {
        let _ = writeln!(out, "           WWW-Authenticate: {w}");
    }
}

/// What `explain` found: its text, and the status and reason the proxy would log.
pub struct Explained {
    pub text: String,
    pub verdict: Verdict,
    /// The answer's status; 200 for a request that is forwarded.
    pub status: StatusCode,
    /// The reason the access log and the metrics would give (`ok` when forwarded).
    pub reason: &'static str,
}

/// Explains one request. `target` is the request target (path and query); `token` the bearer
/// token (a leading `Bearer ` is accepted).
pub async fn explain(
    config: &Config,
    method: &Method,
    target: &str,
    token: Option<&str>,
) -> (String, Verdict) {
    let e = explain_request(config, method, target, token).await;
    (e.text, e.verdict)
}

/// The printing sink: one line per phase report, keys fetched live when a token is found.
struct Printer {
    out: String,
    trace: Trace,
    /// The client's address, for what a `source_ranges` refusal says.
    client: Option<std::net::IpAddr>,
    /// The route is `auth = "optional"`: no token is no failure.
    optional: bool,
}

impl Printer {
    fn line(&mut self, phase: &str, text: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.out, "{phase:<10} {text}");
    }

    fn steps(&mut self) {
        for (check, ok, detail) in std::mem::take(&mut self.trace.steps) {
            let _ = writeln!(
                self.out,
                "  {}  {check:<10} {detail}",
                if ok { "pass" } else { "FAIL" }
            );
        }
    }
}

impl Sink for Printer {
    fn refused(&mut self, phase: &'static str, rej: &Rejection) {
        let why = match rej.reason() {
            "invalid_method" => ": methods are upper-case letters, `-` and `_`",
            "method_override" => ": the query's _method names a method this route does not serve",
            "cross_origin_request" => {
                ": it carries the route's token cookie, and the browser says another site's page \
                 sent it (Sec-Fetch-Site, else Origin)"
            }
            "double_encoding" => {
                ": `%25` and two hex digits, which a backend that decodes again reads as \
                 another path (set allow_encoded_percent on the route if it carries literal \
                 percent signs)"
            }
            _ => "",
        };
        match rej {
            Rejection::NoRoute => self.line(
                "route",
                format_args!("none matches: 404, the upstream is never contacted"),
            ),
            // The token phase and the validator's trace have said why.
            Rejection::Auth(_) | Rejection::Denied => self.steps(),
            Rejection::Forbidden("source_not_allowed") => match self.client {
                Some(ip) => self.line(
                    phase,
                    format_args!("FAIL source_not_allowed: {ip} is not among source_ranges"),
                ),
                None => self.line(
                    phase,
                    format_args!(
                        "FAIL source_not_allowed: no client address (give it with --from, or \
                         with --decision as the ingress's X-Forwarded-For)"
                    ),
                ),
            },
            _ => self.line(phase, format_args!("FAIL {}{why}", rej.reason())),
        }
    }

    fn canonical(&mut self, path: &str) {
        self.line("canonical", format_args!("{path}"));
    }

    fn metadata(&mut self) {
        self.line(
            "metadata",
            format_args!(
                "RFC 9728 protected resource metadata: bearward answers it itself, the \
                 upstream is never contacted"
            ),
        );
    }

    fn route(&mut self, index: usize, route: &Route) {
        self.line("route", format_args!("{}", describe(index, route)));
        self.optional = route.auth == crate::routes::AuthMode::Optional;
    }

    async fn token(&mut self, auth: &Authenticator, token: Result<&[u8], &AuthError>) {
        let token = match token {
            Ok(t) => t,
            Err(AuthError::MissingToken) if self.optional => {
                return self.line(
                    "token",
                    format_args!("none: the route is optional, the request goes without a caller"),
                )
            }
            Err(e) => return self.line("token", format_args!("FAIL {e}")),
        };
        let id = token_id(&sha256_bytes(token));
        self.line(
            "token",
            format_args!("{} bytes, id {id} (as in the access log)", token.len()),
        );
        for keys in auth.issuers() {
            let issuer = &keys.config.issuer;
            if let Some(i) = &keys.config.introspection {
                let at = i
                    .endpoint
                    .as_ref()
                    .map_or_else(|| "found by discovery".to_owned(), ToString::to_string);
                self.line(
                    "opaque",
                    format_args!("{issuer}: opaque tokens asked about at {at}"),
                );
            }
            if !keys.config.takes_jwts() {
                continue;
            }
            // An HMAC-only issuer has its secret for its only key: nothing to fetch.
            if keys.config.keys == crate::config::KeySource::None {
                self.line("keys", format_args!("{issuer}: the HMAC secret"));
                continue;
            }
            match keys.refresh().await {
                Ok(_) => {
                    let set = keys.latest();
                    let n = set.as_ref().map_or(0, |s| s.keys.len());
                    let src = set.map_or_else(String::new, |s| s.source.clone());
                    self.line(
                        "keys",
                        format_args!("{issuer}: {n} usable key(s) from {src}"),
                    );
                }
                Err(e) => {
                    self.line("keys", format_args!("{issuer}: FAIL {e}"));
                }
            }
        }
    }

    fn trace(&mut self) -> Option<&mut Trace> {
        Some(&mut self.trace)
    }

    fn policy(&mut self, policy: &crate::policy::Policy, input: &crate::policy::Input<'_>) {
        self.steps();
        let vars = crate::policy::Vars::new(input);
        for (i, c) in policy.conditions.iter().enumerate() {
            let _ = writeln!(self.out, "  allow_if[{i}]  {}", c.source);
            for (part, result) in c.explain(&vars) {
                let (mark, said) = match result {
                    Ok(true) => ("pass", "true".to_owned()),
                    Ok(false) => ("FAIL", "false".to_owned()),
                    Err(e) => ("FAIL", format!("error: {e}")),
                };
                let _ = writeln!(self.out, "  {mark}  {part:<40} {said}");
            }
        }
    }

    fn scopes(&mut self, have: &[String], route: &Route, ok: bool) {
        self.steps();
        let _ = writeln!(
            self.out,
            "  {}  {:<10} token has {have:?}; route needs all of {:?}{}",
            if ok { "pass" } else { "FAIL" },
            "scopes",
            route.scopes,
            if route.scopes_any.is_empty() {
                String::new()
            } else {
                format!(" and one of {:?}", route.scopes_any)
            }
        );
    }

    fn audit(&mut self, rej: &Rejection) {
        self.steps();
        self.line(
            "audit",
            format_args!(
                "would answer {} ({}); forwarded anyway",
                rej.status().as_u16(),
                rej.reason()
            ),
        );
    }
}

/// The request a decision request describes, read as the decision listener reads it (the
/// peer aside: explain has none, so `trusted_proxies` is not consulted).
fn read_decision(
    config: &Config,
    req: &Request<body::Body>,
    p: &mut Printer,
) -> Result<Request<body::Body>, Rejection> {
    let Some(cfg) = &config.decision else {
        p.line(
            "decision",
            format_args!("FAIL decision_mode_off: this config has no [decision] listener"),
        );
        return Err(Rejection::Forbidden("decision_mode_off"));
    };
    let read = crate::gateway::decision_convention(req, cfg).and_then(|c| {
        let how = match cfg.ingress {
            Some(i) => format!("ingress = \"{}\"", i.as_str()),
            None => "ingress unset: the one convention the request carries".to_owned(),
        };
        p.line("decision", format_args!("{how}: reads {}", c.describe(cfg)));
        crate::gateway::original_request(req, cfg, c)
    });
    match read {
        Ok(original) => {
            p.line(
                "original",
                format_args!("{} {}", original.method(), original.uri()),
            );
            Ok(original)
        }
        Err(rej) => {
            let why = match rej.reason() {
                "ambiguous_original_request" => {
                    ": two descriptions of the original request (two conventions, or a header \
                     twice); set [decision] ingress to the one ingress in front"
                }
                "missing_original_uri" => ": nothing in the configured convention names it",
                _ => "",
            };
            p.line("decision", format_args!("FAIL {}{why}", rej.reason()));
            Err(rej)
        }
    }
}

/// [`explain`], with the status and reason the proxy would log. The request goes through
/// [`Gateway::evaluate`], the proxy's own phases, with keys fetched live instead of by a
/// background refresher.
pub async fn explain_request(
    config: &Config,
    method: &Method,
    target: &str,
    token: Option<&str>,
) -> Explained {
    explain_with(
        config,
        &Asked {
            method,
            target,
            token,
            headers: &[],
            decision: false,
            from: None,
        },
    )
    .await
}

/// One request to explain, with the headers it carries; `decision`: it is a decision request
/// an ingress sends to the `[decision]` listener, and the request it describes is explained.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub token: Option<&'a str>,
    /// `(name, value)` pairs, in order; a name may repeat.
    pub headers: &'a [(String, String)],
    pub decision: bool,
    /// The client's address (`--from`): the peer's, or the one a trusted proxy names. A
    /// decision request's client is the ingress's `X-Forwarded-For` instead.
    pub from: Option<std::net::IpAddr>,
}

/// [`explain_request`] for any request [`Asked`] describes.
pub async fn explain_with(config: &Config, asked: &Asked<'_>) -> Explained {
    let Asked {
        method,
        target,
        token,
        ..
    } = *asked;
    let mut p = Printer {
        out: String::new(),
        trace: Trace {
            enabled: true,
            steps: Vec::new(),
        },
        client: None,
        optional: false,
    };
    let _ = writeln!(p.out, "request    {method} {target}");
    let refuse = |mut p: Printer, status: StatusCode, reason| {
        answer(&mut p.out, status, None);
        Explained {
            text: p.out,
            verdict: Verdict::Refuse,
            status,
            reason,
        }
    };
    let mut req = Request::new(body::empty());
    *req.method_mut() = method.clone();
    match target.parse::<http::Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            p.line(
                "canonical",
                format_args!(
                    "FAIL malformed_request: not a request target (the proxy's parser refuses it)"
                ),
            );
            return refuse(p, StatusCode::BAD_REQUEST, "malformed_request");
        }
    }
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("explain.invalid"));
    if let Some(t) = token {
        let t = t.trim();
        let value = if t.len() > 7 && t[..7].eq_ignore_ascii_case("bearer ") {
            t.to_owned()
        } else {
            format!("Bearer {t}")
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                // Where the route asked about reads it: `Authorization` (on a `token_cookie` route
                // too, as its API clients send it), or its `token_header` (a route with one reads
                // only that, so the token goes in every one).
                for name in config
                    .routes
                    .routes()
                    .iter()
                    .filter_map(|r| r.token_header.as_ref())
                {
                    req.headers_mut().insert(name.clone(), v.clone());
                }
                req.headers_mut().insert(header::AUTHORIZATION, v);
            }
            Err(_) => {
                p.line("token", format_args!("FAIL not a valid header value"));
                return refuse(p, StatusCode::BAD_REQUEST, "malformed_authorization");
            }
        }
    }
    for (name, value) in asked.headers {
        let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            p.line(
                "request",
                format_args!("FAIL malformed_request: {name:?} is not a header line"),
            );
            return refuse(p, StatusCode::BAD_REQUEST, "malformed_request");
        };
        if n == header::HOST {
            req.headers_mut().insert(n, v);
        } else {
            req.headers_mut().append(n, v);
        }
    }
    if asked.decision {
        match read_decision(config, &req, &mut p) {
            Ok(original) => req = original,
            Err(rej) => {
                let (status, reason) = (rej.status(), rej.reason());
                return refuse(p, status, reason);
            }
        }
    }
    let gateway = Gateway::new(
        Arc::new(config.clone()),
        Authenticator::without_refresh(config),
        Arc::new(Metrics::new()),
    );
    // What the decision listener reads for the client (the ingress's rightmost
    // X-Forwarded-For past trusted_proxies), else the address given.
    let client = match asked.decision {
        true => req
            .headers()
            .contains_key(crate::forward::X_FORWARDED_FOR)
            .then(|| {
                let ingress = std::net::Ipv6Addr::UNSPECIFIED.into();
                let trusted = &config.server.trusted_proxies;
                crate::forward::client_ip(req.headers(), ingress, true, trusted)
            }),
        false => asked.from.map(|ip| ip.to_canonical()),
    };
    p.client = client;
    let mut outcome = Outcome {
        client,
        ..Outcome::default()
    };
    let decided = gateway
        .evaluate(&mut req, None, None, &mut outcome, &mut p)
        .await;
    match decided {
        Ok(Evaluated::Answer(resp)) => {
            let status = resp.status();
            answer(&mut p.out, status, None);
            // bearward's own answer: not forwarded.
            Explained {
                text: p.out,
                verdict: Verdict::Refuse,
                status,
                reason: outcome.reason,
            }
        }
        Ok(Evaluated::Pass(pass)) => {
            match pass.route.upstream.map(|u| &config.upstreams[u]) {
                _ if asked.decision => p.line(
                    "forward",
                    format_args!("the decision listener answers 200; the ingress forwards it"),
                ),
                Some(upstream) => {
                    // What the upstream is asked for, where a prefix_rewrite changes it.
                    let rewritten = match &pass.route.prefix_rewrite {
                        Some(r) => format!(" as {}", r.apply(&pass.target).0),
                        None => String::new(),
                    };
                    p.line(
                        "forward",
                        format_args!(
                            "to upstream \"{}\" ({}://{}){rewritten}",
                            upstream.name, upstream.scheme, upstream.authority
                        ),
                    );
                }
                None => p.line(
                    "forward",
                    format_args!("no upstream: the decision listener answers 200 for this route"),
                ),
            }
            if let Some(upstream) = pass.route.upstream.map(|u| &config.upstreams[u]) {
                if let Some(x) = upstream.token_exchange.as_ref().filter(|_| !asked.decision) {
                    let at = x.token_endpoint.as_ref().map_or_else(
                        || format!("{}'s token endpoint", x.issuer),
                        ToString::to_string,
                    );
                    let to = x
                        .audience
                        .as_deref()
                        .or(x.resource.as_deref())
                        .unwrap_or("-");
                    let _ = writeln!(
                        p.out,
                        "           the token is exchanged at {at} for one for {to} (RFC 8693){}; \
                         the client's never goes upstream",
                        if x.actor { ", bearward acting" } else { "" }
                    );
                }
                if let Some(a) = upstream
                    .identity_assertion
                    .as_ref()
                    .filter(|_| !asked.decision)
                {
                    let _ = writeln!(
                        p.out,
                        "           {}: a {:?} JWT (kid {}), iss {}, aud {}, {}s",
                        a.header,
                        a.alg,
                        a.kid,
                        a.issuer,
                        a.audience,
                        a.lifetime.as_secs()
                    );
                }
            }
            if let Some(note) = pass.audit.as_ref().and_then(|v| v.to_str().ok()) {
                let _ = writeln!(p.out, "           X-Bearward-Audit: {note}");
            }
            Explained {
                text: p.out,
                verdict: Verdict::Forward,
                status: StatusCode::OK,
                reason: outcome.reason,
            }
        }
        Err(rej) => {
            let (status, reason) = (rej.status(), rej.reason());
            // Over the proxy listener, its TLS; from an ingress that passes answers on, the
            // scheme it names.
            let tls = match asked.decision {
                false => Some(config.server.tls.is_some()),
                true => gateway.ingress_passes_answers().then(|| {
                    asked.headers.iter().any(|(n, v)| {
                        n.eq_ignore_ascii_case("x-forwarded-proto")
                            && v.eq_ignore_ascii_case("https")
                    })
                }),
            };
            let sign_in = tls
                .and_then(|tls| gateway.sign_in_page(&req, tls))
                .and_then(|page| gateway.sign_in(&rej, page, &mut outcome));
            if let Some(resp) = sign_in {
                answer(&mut p.out, resp.status(), None);
                if let Some(to) = resp.headers().get(header::LOCATION) {
                    let _ = writeln!(
                        p.out,
                        "           Location: {} (a browser opening a page: login_url)",
                        to.to_str().unwrap_or("-")
                    );
                }
                return Explained {
                    text: p.out,
                    verdict: Verdict::Refuse,
                    status: resp.status(),
                    reason,
                };
            }
            let route = outcome.route_index.map(|i| &config.routes.routes()[i]);
            let resp = rej.into_response(&gateway.answering(route, outcome.challenge));
            let www = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            answer(&mut p.out, status, www);
            Explained {
                text: p.out,
                verdict: Verdict::Refuse,
                status,
                reason,
            }
        }
    }
}
