//! Decision mode: an ingress asks whether a request may pass (nginx `auth_request`, Caddy
//! `forward_auth`, Traefik `ForwardAuth`, HAProxy's Lua `auth-request`, Envoy `ext_authz` over
//! HTTP), and bearward answers with the proxy's own phases run on the request the ingress
//! describes.
//!
//! The original request is rebuilt from what the ingress sends, only from a trusted peer, and
//! only in one convention: each ingress owns (overwrites) its own headers and passes the
//! client's others through, so a header of another convention is the client's word.
//! - `Original` (nginx, HAProxy): `X-Original-Method` and `X-Original-URI` (names
//!   configurable), the client's headers as they are;
//! - `Forwarded` (Caddy, Traefik): `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`;
//! - `EnvoyPath` (Envoy `ext_authz`, HTTP service): the original path appended to
//!   `envoy_path_prefix`, the original method and headers as the request's own.
//!
//! `[decision] ingress` names the one convention; the others' headers are ignored and dropped.
//! Unset, a request carrying more than one convention is a 400: behind Caddy, a client's own
//! `X-Original-URI` beside Caddy's `X-Forwarded-Uri` once chose the route checked.
//!
//! Each original-request header must appear once (two values: 400, so the ingress and bearward
//! cannot read different ones); no original URI at all is a 400, never a fallback to the
//! decision request's own path (oauth2-proxy's CVE-2026-40575 trusted a client-sent one). A `#`
//! (raw, or `%23` in the path) is a 400: a fragment is never part of a request, and a rule
//! matched on a string holding one was widened by it (oauth2-proxy's CVE-2026-41059). The URI
//! then goes through the same target checks and canonical path as proxy mode.

use super::Rejection;
use crate::body::{self, Body};
use crate::config::{DecisionConfig, Ingress};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How an ingress describes the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Convention {
    Original,
    Forwarded,
    EnvoyPath,
    /// Envoy's ext_authz over gRPC: the `CheckRequest`'s attributes, carried in an
    /// [`ExtAuthzTarget`] extension, which only bearward's own gRPC listener sets.
    ExtAuthz,
}

/// The original request's method, target and host as a gRPC `CheckRequest` gives them
/// (`attributes.request.http`), unchecked: the checks are the other conventions'.
#[derive(Debug, Clone)]
pub struct ExtAuthzTarget {
    pub method: String,
    /// Path and query, as Envoy received them.
    pub target: String,
    pub host: Option<HeaderValue>,
}

impl Convention {
    pub(crate) fn of(ingress: Ingress) -> Convention {
        match ingress {
            Ingress::Nginx | Ingress::Haproxy => Convention::Original,
            Ingress::Caddy | Ingress::Traefik => Convention::Forwarded,
            Ingress::Envoy => Convention::EnvoyPath,
        }
    }

    pub(crate) fn describe(self, cfg: &DecisionConfig) -> String {
        match self {
            Convention::Original => format!("{} and {}", cfg.method_header, cfg.uri_header),
            Convention::Forwarded => {
                "x-forwarded-method, x-forwarded-uri and x-forwarded-host".to_owned()
            }
            Convention::EnvoyPath => match &cfg.envoy_path_prefix {
                Some(p) => format!("the path after {p}"),
                None => "the request's own path".to_owned(),
            },
            Convention::ExtAuthz => "the CheckRequest's attributes".to_owned(),
        }
    }
}

/// The one value of `name`, if any; two are a 400.
fn one<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, Rejection> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (Some(_), Some(_)) => Err(Rejection::BadRequest("ambiguous_original_request")),
    }
}

/// The original path and query after `envoy_path_prefix`, if the decision request names one.
fn after_prefix<'r>(req: &'r Request<Body>, prefix: &str) -> Option<&'r str> {
    req.uri()
        .path()
        .strip_prefix(prefix)
        .filter(|r| r.starts_with('/'))
}

/// Which convention a decision request is read in: the configured one, else the only one it
/// carries.
pub(crate) fn convention(
    req: &Request<Body>,
    cfg: &DecisionConfig,
) -> Result<Convention, Rejection> {
    if req.extensions().get::<ExtAuthzTarget>().is_some() {
        return Ok(Convention::ExtAuthz);
    }
    if let Some(i) = cfg.ingress {
        return Ok(Convention::of(i));
    }
    let h = req.headers();
    let carried = [
        (
            Convention::Original,
            h.contains_key(&cfg.uri_header) || h.contains_key(&cfg.method_header),
        ),
        (
            Convention::Forwarded,
            h.contains_key(X_FORWARDED_URI) || h.contains_key(X_FORWARDED_METHOD),
        ),
        (
            Convention::EnvoyPath,
            cfg.envoy_path_prefix
                .as_deref()
                .is_some_and(|p| after_prefix(req, p).is_some()),
        ),
    ];
    let mut found = carried.iter().filter(|(_, c)| *c).map(|(k, _)| *k);
    match (found.next(), found.next()) {
        (Some(k), None) => Ok(k),
        (None, _) => Err(Rejection::BadRequest("missing_original_uri")),
        (Some(_), Some(_)) => Err(Rejection::BadRequest("ambiguous_original_request")),
    }
}

/// The request the ingress asks about, built from its decision request read in `convention`
/// ([`convention`]).
pub(crate) fn original_request(
    req: &Request<Body>,
    cfg: &DecisionConfig,
    convention: Convention,
) -> Result<Request<Body>, Rejection> {
    let h = req.headers();
    let method_of = |v: Option<&HeaderValue>| -> Result<Method, Rejection> {
        match v {
            None => Ok(req.method().clone()),
            Some(v) => Method::from_bytes(v.as_bytes())
                .map_err(|_| Rejection::BadRequest("invalid_original_method")),
        }
    };
    let missing = || Rejection::BadRequest("missing_original_uri");
    let (method, target, host) = match convention {
        Convention::Original => (
            method_of(one(h, &cfg.method_header)?)?,
            text(one(h, &cfg.uri_header)?.ok_or_else(missing)?)?,
            match &cfg.host_header {
                Some(name) => one(h, name)?,
                None => None,
            },
        ),
        Convention::Forwarded => (
            method_of(one(h, &X_FORWARDED_METHOD)?)?,
            text(one(h, &X_FORWARDED_URI)?.ok_or_else(missing)?)?,
            one(h, &X_FORWARDED_HOST)?,
        ),
        Convention::EnvoyPath => {
            let rest = match cfg.envoy_path_prefix.as_deref() {
                Some(p) => after_prefix(req, p).ok_or_else(missing)?,
                None => req.uri().path(),
            };
            let target = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            (req.method().clone(), target, None)
        }
        Convention::ExtAuthz => {
            let t = req
                .extensions()
                .get::<ExtAuthzTarget>()
                .ok_or_else(missing)?;
            let method = Method::from_bytes(t.method.as_bytes())
                .map_err(|_| Rejection::BadRequest("invalid_original_method"))?;
            (method, t.target.clone(), t.host.as_ref())
        }
    };
    // Routes chosen by host need the ingress's word for it: the decision request's own `Host`
    // names the auth location (nginx, HAProxy) or is the ingress's choice.
    if cfg.hosts && host.is_none() && convention != Convention::EnvoyPath {
        return Err(Rejection::BadRequest("missing_original_host"));
    }
    let uri = original_uri(&target)?;
    let mut original = Request::new(body::empty());
    *original.method_mut() = method;
    *original.uri_mut() = uri;
    *original.version_mut() = Version::HTTP_11;
    let headers = original.headers_mut();
    let drop = conventions_headers(cfg);
    for (name, value) in h {
        if !drop.clone().any(|d| d == name) {
            headers.append(name.clone(), value.clone());
        }
    }
    // HTTP/2 carries the host in :authority, which a decision request over HTTP/2 has in its URI.
    if !headers.contains_key(header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
    }
    // A body is never forwarded from here; what the ingress sent of one says nothing.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    Ok(original)
}

/// Origin-form only: an absolute URI would name a host of the client's choosing; and no
/// fragment.
fn original_uri(target: &str) -> Result<Uri, Rejection> {
    if !target.starts_with('/') || has_fragment(target) {
        return Err(Rejection::BadRequest("invalid_original_uri"));
    }
    target
        .parse()
        .map_err(|_| Rejection::BadRequest("invalid_original_uri"))
}

/// Every convention's headers go from the original request: the one read has been, the others
/// are a client's.
fn conventions_headers(cfg: &DecisionConfig) -> impl Iterator<Item = &HeaderName> + Clone {
    [
        &cfg.uri_header,
        &cfg.method_header,
        &FORWARDED_URI,
        &FORWARDED_METHOD,
    ]
    .into_iter()
    .chain(cfg.host_header.as_ref())
}

// The same names as statics, which a function can hand out references to.
static FORWARDED_URI: HeaderName = X_FORWARDED_URI;
static FORWARDED_METHOD: HeaderName = X_FORWARDED_METHOD;

/// [`original_request`] for the ext_authz convention, taking the request whole: its headers
/// were made for this one check (`server::ext_authz`), so they move instead of being copied.
pub(crate) fn take_ext_authz_request(
    mut req: Request<Body>,
    cfg: &DecisionConfig,
) -> Result<Request<Body>, Rejection> {
    let t = req
        .extensions_mut()
        .remove::<ExtAuthzTarget>()
        .ok_or(Rejection::BadRequest("missing_original_uri"))?;
    let method = Method::from_bytes(t.method.as_bytes())
        .map_err(|_| Rejection::BadRequest("invalid_original_method"))?;
    if cfg.hosts && t.host.is_none() {
        return Err(Rejection::BadRequest("missing_original_host"));
    }
    let uri = original_uri(&t.target)?;
    let (parts, _) = req.into_parts();
    let mut original = Request::new(body::empty());
    *original.method_mut() = method;
    *original.uri_mut() = uri;
    *original.version_mut() = Version::HTTP_11;
    let mut headers = parts.headers;
    for name in conventions_headers(cfg) {
        headers.remove(name);
    }
    if let Some(host) = t.host {
        headers.insert(header::HOST, host);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    *original.headers_mut() = headers;
    Ok(original)
}

/// A `#` anywhere, or `%23` in the path: a fragment, or one spelled to survive a decoding.
fn has_fragment(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or(target);
    target.contains('#') || path.contains("%23")
}

fn text(v: &HeaderValue) -> Result<String, Rejection> {
    v.to_str()
        .map(str::to_owned)
        .map_err(|_| Rejection::BadRequest("invalid_original_uri"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DecisionConfig {
        DecisionConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: None,
            trusted_proxies: vec![],
            method_header: HeaderName::from_static("x-original-method"),
            uri_header: HeaderName::from_static("x-original-uri"),
            host_header: None,
            hosts: false,
            envoy_path_prefix: Some("/ext_authz".into()),
            ingress: None,
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut r = Request::get(path).header("host", "auth.local");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(body::empty()).unwrap()
    }

    /// What the listener does: the convention, then the request read in it.
    fn original_request(
        req: &Request<Body>,
        cfg: &DecisionConfig,
    ) -> Result<Request<Body>, Rejection> {
        super::original_request(req, cfg, convention(req, cfg)?)
    }

    fn reason(r: Result<Request<Body>, Rejection>) -> &'static str {
        r.err().map_or("ok", |e| e.reason())
    }

    /// What each ingress documents sending (nginx auth_request with the deploy/ config, Caddy
    /// forward_auth, Traefik ForwardAuth, Envoy ext_authz HTTP with path_prefix).
    #[test]
    fn each_ingress_shape_gives_the_original_request() {
        let nginx = original_request(
            &req(
                "/auth",
                &[
                    ("x-original-method", "POST"),
                    ("x-original-uri", "/api/a?x=1"),
                    ("authorization", "Bearer t"),
                ],
            ),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            (nginx.method().as_str(), nginx.uri().to_string().as_str()),
            ("POST", "/api/a?x=1")
        );
        assert_eq!(nginx.headers()["authorization"], "Bearer t");
        assert!(!nginx.headers().contains_key("x-original-uri"));
        assert_eq!(nginx.headers()["host"], "auth.local");

        // Caddy and Traefik: X-Forwarded-Method/Uri/Host (and -Proto, -For).
        let caddy = original_request(
            &req(
                "/",
                &[
                    ("x-forwarded-method", "DELETE"),
                    ("x-forwarded-uri", "/api/b"),
                    ("x-forwarded-host", "api.example.com"),
                    ("x-forwarded-proto", "https"),
                ],
            ),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            (caddy.method().as_str(), caddy.uri().path()),
            ("DELETE", "/api/b")
        );
        assert_eq!(caddy.headers()["host"], "api.example.com");

        // Envoy: the prefix, then the original path and query; method and headers as sent.
        let envoy = original_request(&req("/ext_authz/api/c?q=2", &[]), &cfg()).unwrap();
        assert_eq!(envoy.uri().to_string(), "/api/c?q=2");
        assert_eq!(
            reason(original_request(&req("/ext_authzapi", &[]), &cfg())),
            "missing_original_uri"
        );
    }

    #[test]
    fn missing_doubled_or_absolute_originals_are_refused() {
        assert_eq!(
            reason(original_request(&req("/api/x", &[]), &cfg())),
            "missing_original_uri"
        );
        let mut two = req("/", &[("x-original-uri", "/a")]);
        two.headers_mut()
            .append("x-original-uri", HeaderValue::from_static("/b"));
        assert_eq!(
            reason(original_request(&two, &cfg())),
            "ambiguous_original_request"
        );
        assert_eq!(
            reason(original_request(
                &req("/", &[("x-original-uri", "http://evil/api")]),
                &cfg()
            )),
            "invalid_original_uri"
        );
        assert_eq!(
            reason(original_request(
                &req(
                    "/",
                    &[("x-original-uri", "/a"), ("x-original-method", "G(T")]
                ),
                &cfg()
            )),
            "invalid_original_method"
        );
    }

    /// Routes with `hosts`: the original host comes from the ingress's own header, never from
    /// another convention's, and a decision request without it is refused, not matched against
    /// the routes for any host.
    #[test]
    fn the_original_host_is_the_ingresses_and_required_for_host_routes() {
        let mut cfg = cfg();
        cfg.host_header = Some(HeaderName::from_static("x-original-host"));
        let nginx = |extra: &[(&'static str, &'static str)], cfg: &DecisionConfig| {
            let mut h = vec![("x-original-uri", "/api/a")];
            h.extend_from_slice(extra);
            original_request(&req("/auth", &h), cfg)
        };
        let r = nginx(&[("x-original-host", "Admin.Example.com")], &cfg).unwrap();
        assert_eq!(r.headers()["host"], "Admin.Example.com");
        assert!(!r.headers().contains_key("x-original-host"));
        let r = nginx(&[("x-forwarded-host", "admin.example.com")], &cfg).unwrap();
        assert_eq!(
            r.headers()["host"],
            "auth.local",
            "another convention's host is not read"
        );
        let mut two = req(
            "/auth",
            &[("x-original-uri", "/a"), ("x-original-host", "a")],
        );
        two.headers_mut()
            .append("x-original-host", HeaderValue::from_static("b"));
        assert_eq!(
            reason(original_request(&two, &cfg)),
            "ambiguous_original_request"
        );

        cfg.hosts = true;
        assert_eq!(reason(nginx(&[], &cfg)), "missing_original_host");
        assert_eq!(
            reason(original_request(
                &req("/", &[("x-forwarded-uri", "/api/b")]),
                &cfg
            )),
            "missing_original_host"
        );
        assert!(nginx(&[("x-original-host", "a.example")], &cfg).is_ok());
        // Envoy's check request carries the original Host as its own.
        let envoy = original_request(&req("/ext_authz/api/c", &[]), &cfg).unwrap();
        assert_eq!(envoy.headers()["host"], "auth.local");
    }
}
