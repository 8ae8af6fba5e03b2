//! `bearward explain`: why would this request be let through or refused? Walks the same phases
//! as the proxy, with the keys fetched live from the configured source, and prints every check.

use crate::auth::validator::{self, Trace};
use crate::auth::{extract_token, sha256, token_id, AuthError, Authenticator};
use crate::config::Config;
use crate::path::canonicalize_with;
use crate::routes::{AuthMode, PathMatch, Route};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::fmt::Write as _;

/// What was decided, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Refuse,
}

fn describe(i: usize, r: &Route) -> String {
    let (kind, p) = match &r.matcher {
        PathMatch::Exact(p) => ("path", p),
        PathMatch::Prefix(p) => ("prefix", p),
    };
    let mut s = format!("routes[{i}] \"{}\": {kind} = \"{p}\"", r.name);
    if let Some(m) = &r.methods {
        let m: Vec<&str> = m.iter().map(Method::as_str).collect();
        let _ = write!(s, ", methods = {m:?}");
    }
    let _ = write!(s, ", auth = \"{}\"", r.auth.as_str());
    if !r.scopes.is_empty() {
        let _ = write!(s, ", scopes = {:?}", r.scopes);
    }
    if !r.scopes_any.is_empty() {
        let _ = write!(s, ", scopes_any = {:?}", r.scopes_any);
    }
    if r.cors_preflight {
        // explain takes no headers, so it shows the bearer check a preflight would skip.
        s.push_str(", cors_preflight = true");
    }
    if r.audit {
        s.push_str(", mode = \"audit\"");
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

/// Explains one request. `target` is the request target (path and query); `token` the bearer
/// token (a leading `Bearer ` is accepted).
pub async fn explain(
    config: &Config,
    method: &Method,
    target: &str,
    token: Option<&str>,
) -> (String, Verdict) {
    let mut out = String::new();
    let _ = writeln!(out, "request    {method} {target}");
    if !crate::routes::is_plain_method(method.as_str()) {
        let _ = writeln!(
            out,
            "method     FAIL invalid_method: methods are upper-case letters, `-` and `_`"
        );
        answer(&mut out, StatusCode::BAD_REQUEST, None);
        return (out, Verdict::Refuse);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let canonical = match canonicalize_with(path, config.server.path) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "canonical  FAIL {e}");
            answer(&mut out, StatusCode::BAD_REQUEST, None);
            return (out, Verdict::Refuse);
        }
    };
    let _ = writeln!(out, "canonical  {canonical}");
    if let Some(doc) = config.resources.find(&canonical) {
        let _ = writeln!(
            out,
            "metadata   RFC 9728 protected resource metadata: bearward answers it itself, the \
             upstream is never contacted"
        );
        // The same answer the proxy gives, so the two cannot drift apart.
        let status = crate::resource::respond(method, &HeaderMap::new(), doc)
            .map_or(StatusCode::METHOD_NOT_ALLOWED, |r| r.status());
        answer(&mut out, status, None);
        return (out, Verdict::Refuse);
    }
    let Some((index, route)) = config.routes.find(method, &canonical) else {
        let _ = writeln!(
            out,
            "route      none matches: 404, the upstream is never contacted"
        );
        answer(&mut out, StatusCode::NOT_FOUND, None);
        return (out, Verdict::Refuse);
    };
    let _ = writeln!(out, "route      {}", describe(index, route));
    if !config
        .routes
        .overrides_stay(&HeaderMap::new(), query, &canonical, index)
    {
        let _ = writeln!(
            out,
            "method     FAIL method_override: the query's _method names a method this route does not serve"
        );
        answer(&mut out, StatusCode::BAD_REQUEST, None);
        return (out, Verdict::Refuse);
    }
    if !route.allow_encoded_percent && crate::path::has_double_encoding(&canonical) {
        let _ = writeln!(
            out,
            "canonical  FAIL double_encoding: `%25` and two hex digits, which a backend that \
             decodes again reads as another path (set allow_encoded_percent on the route if it \
             carries literal percent signs)"
        );
        answer(&mut out, StatusCode::BAD_REQUEST, None);
        return (out, Verdict::Refuse);
    }
    let upstream = &config.upstreams[route.upstream];
    let forward_line = format!(
        "forward    to upstream \"{}\" ({}://{})",
        upstream.name, upstream.scheme, upstream.authority
    );

    let refusal = match route.auth {
        AuthMode::None => None,
        AuthMode::Deny => Some((StatusCode::FORBIDDEN, None, "route_denied")),
        AuthMode::Bearer => check_token(config, route, query, token, &mut out)
            .await
            .err()
            .map(|e| {
                let www = e.www_authenticate(&config.server.realm, Some(route));
                (e.status(), Some(www), e.reason())
            }),
    };
    match refusal {
        None => {
            let _ = writeln!(out, "{forward_line}");
            if route.audit {
                let _ = writeln!(out, "           X-Bearward-Audit: allow");
            }
            (out, Verdict::Forward)
        }
        Some((status, _, reason)) if route.audit => {
            let _ = writeln!(
                out,
                "audit      would answer {} ({reason}); forwarded anyway",
                status.as_u16()
            );
            let _ = writeln!(out, "{forward_line}");
            let _ = writeln!(
                out,
                "           X-Bearward-Audit: would-deny; reason={reason}; status={}",
                status.as_u16()
            );
            (out, Verdict::Forward)
        }
        Some((status, www, _)) => {
            answer(&mut out, status, www);
            (out, Verdict::Refuse)
        }
    }
}

async fn check_token(
    config: &Config,
    route: &Route,
    query: Option<&str>,
    token: Option<&str>,
    out: &mut String,
) -> Result<(), AuthError> {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let t = t.trim();
        let value = if t.len() > 7 && t[..7].eq_ignore_ascii_case("bearer ") {
            t.to_owned()
        } else {
            format!("Bearer {t}")
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            Err(_) => {
                let _ = writeln!(out, "token      FAIL not a valid header value");
                return Err(AuthError::MalformedHeader);
            }
        }
    }
    let token = match extract_token(&headers, query, route) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "token      FAIL {e}");
            return Err(e);
        }
    };
    let hash = sha256(token);
    let id = token_id(&hash);
    let _ = writeln!(
        out,
        "token      {} bytes, id {id} (as in the access log)",
        token.len()
    );

    let auth = Authenticator::without_refresh(config);
    for keys in auth.issuers() {
        match keys.refresh().await {
            Ok(_) => {
                let set = keys.latest();
                let n = set.as_ref().map_or(0, |s| s.keys.len());
                let src = set.map_or_else(String::new, |s| s.source.clone());
                let _ = writeln!(
                    out,
                    "keys       {}: {n} usable key(s) from {src}",
                    keys.config.issuer
                );
            }
            Err(e) => {
                let _ = writeln!(out, "keys       {}: FAIL {e}", keys.config.issuer);
            }
        }
    }
    let mut trace = Trace {
        enabled: true,
        steps: Vec::new(),
    };
    let result = auth.verify(token, &mut trace).await;
    for (check, ok, detail) in &trace.steps {
        let _ = writeln!(
            out,
            "  {}  {check:<10} {detail}",
            if *ok { "pass" } else { "FAIL" }
        );
    }
    let verified = result?;
    let scopes = validator::check_scopes(&verified.scopes, route);
    let _ = writeln!(
        out,
        "  {}  {:<10} token has {:?}; route needs all of {:?}{}",
        if scopes.is_ok() { "pass" } else { "FAIL" },
        "scopes",
        verified.scopes,
        route.scopes,
        if route.scopes_any.is_empty() {
            String::new()
        } else {
            format!(" and one of {:?}", route.scopes_any)
        }
    );
    scopes
}
