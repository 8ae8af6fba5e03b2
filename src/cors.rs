//! CORS on a route (`cors = { allow_origins = [...] }`): bearward answers the browser's
//! preflights itself and puts the CORS headers on every answer of the route, its own refusals
//! included. A legacy API behind bearward knows as little of CORS as of OAuth, and a browser
//! app calling it with a bearer token needs both: the preflight (which carries no token, so a
//! bearer check would refuse it) answered, and the `Access-Control-*` headers on a 401 as on a
//! 200, or the app cannot read the `WWW-Authenticate` that tells it to refresh its token.
//! As Envoy's CORS filter, the upstream's own `Access-Control-*` headers on such a route are
//! replaced: the route's policy is the one a browser sees.
//!
//! What CORS is not: a server-side check. A request from an origin the route does not allow
//! is still served (a bearer token is no ambient credential a foreign page could borrow, so
//! there is nothing to forge); it just carries no `Access-Control-Allow-Origin`, and the
//! browser keeps the answer from the page. A preflight is different: it is bearward's own
//! answer, and one the policy does not allow is refused (403, with a reason) rather than
//! forwarded.

use crate::body::{self, Body};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

/// The headers bearward itself answers with, which a browser app needs to read: the bearer
/// challenge (RFC 6750, RFC 9470's step-up), DPoP's nonce (RFC 9449 8), the rate-limit fields.
const BEARWARD_EXPOSES: &[&str] = &[
    "www-authenticate",
    "dpop-nonce",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
];

/// The request headers a bearer call needs, always allowed: the token, its DPoP proof, and a
/// JSON body's type.
const ALWAYS_ALLOWED: &[&str] = &["authorization", "dpop", "content-type"];

/// An allowed origin: exact (`https://app.example.com`), any subdomain
/// (`https://*.example.com`: scheme, the `.example.com` suffix and port fixed), or any (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    Exact(String),
    Subdomains { scheme: String, suffix: String },
    Any,
}

impl OriginRule {
    /// Parses one `allow_origins` entry: `*`, or a serialized origin (`scheme://host[:port]`,
    /// no path), whose host may start with `*.`. Lower-cased, the scheme's default port taken
    /// off, as a browser serializes an `Origin`.
    pub fn parse(raw: &str) -> Result<OriginRule, String> {
        if raw == "*" {
            return Ok(OriginRule::Any);
        }
        let lower = raw.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!("{raw:?} is not an origin (scheme://host[:port])"));
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("{raw:?}: an origin's scheme is http or https"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{raw:?} is not an origin: scheme://host[:port], without a path (not even /)"
            ));
        }
        let not_port = |p: &str| format!("{raw:?}: {p:?} is not a port");
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (inside, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{raw:?}: an IPv6 address without its ]"))?;
                let port = match after {
                    "" => None,
                    p => Some(
                        p.strip_prefix(':')
                            .and_then(|p| p.parse::<u16>().ok())
                            .ok_or_else(|| not_port(p))?,
                    ),
                };
                (format!("[{inside}]"), port)
            }
            None => match rest.split_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    Some(p.parse::<u16>().map_err(|_| not_port(p))?),
                ),
                None => (rest.to_owned(), None),
            },
        };
        let default = if scheme == "https" { 443 } else { 80 };
        let port = match port {
            Some(p) if p != default => format!(":{p}"),
            _ => String::new(),
        };
        let valid = |h: &str| {
            !h.is_empty()
                && (h.starts_with('[')
                    || h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        };
        match host.strip_prefix("*.") {
            Some(base) if valid(base) && !base.starts_with('[') && base.contains('.') => {
                Ok(OriginRule::Subdomains {
                    scheme: format!("{scheme}://"),
                    suffix: format!(".{base}{port}"),
                })
            }
            Some(_) => Err(format!(
                "{raw:?}: `*.` takes a domain of two labels or more after it"
            )),
            None if valid(&host) => Ok(OriginRule::Exact(format!("{scheme}://{host}{port}"))),
            None => Err(format!("{raw:?}: {host:?} is not a host name or address")),
        }
    }

    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin == o.as_bytes(),
            OriginRule::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin.starts_with(scheme.as_bytes())
                    && origin.ends_with(suffix.as_bytes())
                    && origin[scheme.len()..origin.len() - suffix.len()]
                        .iter()
                        .all(|&b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        })
            }
        }
    }
}

/// A route's CORS policy, with its header values made once.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// Allowed request headers beyond [`ALWAYS_ALLOWED`]; `None`: any (`"*"`).
    headers: Option<Vec<HeaderName>>,
    headers_value: HeaderValue,
    expose_value: HeaderValue,
    credentials: bool,
    max_age: HeaderValue,
}

/// Why a preflight was refused: the `reason` of its 403.
pub type Refused = &'static str;

impl CorsPolicy {
    /// A policy from validated parts (`config::validate::route` checks each).
    pub fn new(
        origins: Vec<OriginRule>,
        methods: Vec<Method>,
        headers: Option<Vec<HeaderName>>,
        expose: &[HeaderName],
        credentials: bool,
        max_age_secs: u64,
        request_id: Option<&HeaderName>,
    ) -> CorsPolicy {
        let join = |items: &mut dyn Iterator<Item = &str>| {
            let joined: Vec<&str> = items.collect();
            HeaderValue::from_str(&joined.join(", ")).unwrap_or(HeaderValue::from_static(""))
        };
        let methods_value = join(&mut methods.iter().map(Method::as_str));
        let headers_value = match &headers {
            None => HeaderValue::from_static("*"),
            Some(h) => join(
                &mut ALWAYS_ALLOWED
                    .iter()
                    .copied()
                    .chain(h.iter().map(HeaderName::as_str)),
            ),
        };
        let expose_value = join(
            &mut BEARWARD_EXPOSES
                .iter()
                .copied()
                .chain(request_id.map(HeaderName::as_str))
                .chain(expose.iter().map(HeaderName::as_str)),
        );
        CorsPolicy {
            origins,
            methods,
            methods_value,
            headers,
            headers_value,
            expose_value,
            credentials,
            max_age: HeaderValue::from(max_age_secs),
        }
    }

    /// Does the policy let the request's `Origin` make calls with the browser's cookies? A route
    /// that reads its token from a cookie trusts such origins' unsafe requests
    /// ([`crate::gateway`]'s cross-origin check). `"*"` never does: it cannot go with credentials.
    pub fn trusts_with_cookies(&self, headers: &HeaderMap) -> bool {
        self.credentials && self.allowed_origin(headers).is_some()
    }

    /// The request's `Origin`, if the policy allows it.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origins
            .iter()
            .any(|r| r.matches(origin.as_bytes()))
            .then(|| origin.clone())
    }

    /// bearward's answer to a preflight (an `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) for the route that would take the request it asks
    /// about: 204 with what the policy allows, or why not.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<Body>, Refused> {
        let origin = self
            .allowed_origin(headers)
            .ok_or("cors_origin_not_allowed")?;
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or("cors_method_not_allowed")?;
        if !self.methods.contains(&asked) {
            return Err("cors_method_not_allowed");
        }
        let asked_headers = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|h| !h.is_empty());
        let mut allow_headers = self.headers_value.clone();
        match &self.headers {
            // "*" is not a wildcard with credentials (Fetch): the names asked are echoed.
            None if self.credentials => {
                if let Some(v) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                    allow_headers = v.clone();
                }
            }
            None => {}
            Some(list) => {
                for h in asked_headers {
                    let known = ALWAYS_ALLOWED
                        .iter()
                        .any(|a| a.as_bytes().eq_ignore_ascii_case(h))
                        || list
                            .iter()
                            .any(|a| a.as_str().as_bytes().eq_ignore_ascii_case(h));
                    if !known {
                        return Err("cors_header_not_allowed");
                    }
                }
            }
        }
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.origin_value(origin),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone(),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(resp)
    }

    /// Every answer on the route, bearward's or the upstream's: the upstream's own CORS headers
    /// out, `Vary: Origin`, and, for an allowed origin, what lets the page read the answer.
    pub fn decorate(&self, headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
        for h in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(h);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin else { return };
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.origin_value(origin.clone()),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            self.expose_value.clone(),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// `*` for a policy open to any origin without credentials (a shared cache may keep one
    /// answer for all); else the origin itself.
    fn origin_value(&self, origin: HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginRule::Any) {
            HeaderValue::from_static("*")
        } else {
            origin
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_as_browsers_serialize_them() {
        let exact = |s: &str| OriginRule::Exact(s.to_owned());
        assert_eq!(
            OriginRule::parse("https://App.Example.com").unwrap(),
            exact("https://app.example.com")
        );
        assert_eq!(
            OriginRule::parse("https://app.example.com:443").unwrap(),
            exact("https://app.example.com")
        );
        assert_eq!(
            OriginRule::parse("http://localhost:3000").unwrap(),
            exact("http://localhost:3000")
        );
        assert_eq!(
            OriginRule::parse("http://[::1]:8080").unwrap(),
            exact("http://[::1]:8080")
        );
        assert_eq!(OriginRule::parse("*").unwrap(), OriginRule::Any);
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/x",
            "ftp://app.example.com",
            "null",
            "https://*.com",
            "https://a.*.example.com",
            "https://user@app.example.com",
            "https://app.example.com:99999",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomain_rules_take_subdomains_only() {
        let r = OriginRule::parse("https://*.example.com").unwrap();
        for yes in ["https://a.example.com", "https://a-b.c.example.com"] {
            assert!(r.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://evilexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.test",
            "https://a/b.example.com",
        ] {
            assert!(!r.matches(no.as_bytes()), "{no}");
        }
        let p = OriginRule::parse("https://*.example.com:8443").unwrap();
        assert!(p.matches(b"https://a.example.com:8443"));
        assert!(!p.matches(b"https://a.example.com"));
    }

    fn policy(credentials: bool, headers: Option<Vec<HeaderName>>) -> CorsPolicy {
        CorsPolicy::new(
            vec![OriginRule::parse("https://app.example.com").unwrap()],
            vec![Method::GET, Method::POST],
            headers,
            &[HeaderName::from_static("x-total-count")],
            credentials,
            600,
            Some(&HeaderName::from_static("x-request-id")),
        )
    }

    fn asking(origin: &str, method: &str, headers: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        if let Some(v) = headers {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflights_are_answered_or_refused_with_a_reason() {
        let p = policy(false, Some(vec![HeaderName::from_static("x-tenant")]));
        let ok = p
            .preflight(&asking(
                "https://app.example.com",
                "POST",
                Some("Authorization, content-type,X-Tenant"),
            ))
            .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, dpop, content-type, x-tenant"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let refused = |h: HeaderMap| p.preflight(&h).unwrap_err();
        assert_eq!(
            refused(asking("https://evil.test", "GET", None)),
            "cors_origin_not_allowed"
        );
        assert_eq!(
            refused(asking("https://app.example.com", "DELETE", None)),
            "cors_method_not_allowed"
        );
        assert_eq!(
            refused(asking("https://app.example.com", "GET", Some("x-other"))),
            "cors_header_not_allowed"
        );
        // Any header, with credentials: the names asked for are echoed, not `*`.
        let any = policy(true, None);
        let ok = any
            .preflight(&asking(
                "https://app.example.com",
                "GET",
                Some("x-anything"),
            ))
            .unwrap();
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "x-anything"
        );
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
            "true"
        );
    }

    #[test]
    fn answers_get_the_policys_headers_in_place_of_the_upstreams() {
        let p = policy(false, None);
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        let origin = HeaderValue::from_static("https://app.example.com");
        p.decorate(&mut h, Some(&origin));
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "www-authenticate, dpop-nonce, ratelimit, ratelimit-policy, retry-after, x-request-id, x-total-count"
        );
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
        // Not allowed: the upstream's `*` is gone all the same.
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        p.decorate(&mut h, None);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(h[header::VARY], "Origin");
    }
}
