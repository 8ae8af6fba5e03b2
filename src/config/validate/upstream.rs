//! `[upstreams.NAME]`, TLS files included.

use super::Ctx;
use crate::config::file::*;
use crate::config::*;
use jsonwebtoken::Algorithm;
use std::str::FromStr;
use toml::Spanned;

/// `set_headers`, `set_headers_file`, `set_headers_env`: one value per name across the three,
/// never a name bearward sets or strips itself. Values from files and the environment are
/// marked sensitive and never echoed.
fn set_headers(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    server: &ServerConfig,
    assertion: &Option<AssertionConfig>,
    key: &dyn Fn(&str) -> String,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    for (map, which) in u.set_header_sources() {
        let Some(map) = map else { continue };
        for (name, source) in map.get_ref() {
            let at = key(&format!("{which}.{name}"));
            let Ok(h) = http::HeaderName::from_str(name) else {
                cx.err(source.span(), &at, format!("{name:?} is not a header name"));
                continue;
            };
            if owned_request_header(&h, u, server, assertion) {
                let why = if h == http::header::AUTHORIZATION {
                    "is the exchanged token's with token_exchange"
                } else {
                    "is a header bearward sets or removes itself"
                };
                cx.err(source.span(), &at, format!("{name:?} {why}"));
                continue;
            }
            if out.iter().any(|(n, _)| *n == h) {
                cx.err(source.span(), &at, format!("{name:?} is set twice"));
                continue;
            }
            let value = match which {
                "set_headers" => Some(source.get_ref().clone().into_bytes()),
                "set_headers_file" => match cx.read_secret_file(source.get_ref()) {
                    Ok(bytes) => Some(super::issuer::trim_secret(bytes).0),
                    Err(e) => {
                        cx.err(
                            source.span(),
                            &at,
                            format!("cannot read {:?}: {e}", source.get_ref()),
                        );
                        None
                    }
                },
                _ => match std::env::var(source.get_ref()) {
                    Ok(v) => Some(super::issuer::trim_secret(v.into_bytes()).0),
                    Err(_) => {
                        let var = source.get_ref();
                        cx.err(
                            source.span(),
                            &at,
                            format!("environment variable {var:?} is not set"),
                        );
                        None
                    }
                },
            };
            let Some(value) = value else { continue };
            match http::HeaderValue::from_bytes(&value) {
                Ok(mut v) if !value.is_empty() => {
                    v.set_sensitive(which != "set_headers");
                    out.push((h, v));
                }
                _ => {
                    // The value itself is not echoed: it may be a secret.
                    cx.err(
                        source.span(),
                        &at,
                        "is empty or holds a byte a header value cannot (a control character)",
                    );
                }
            }
        }
    }
    out
}

/// A request header bearward sets or removes itself on the way to this upstream: not one
/// `set_headers` or `remove_headers` may name. `Authorization` is the operator's to set or
/// remove, but for the exchanged token's with `token_exchange`.
fn owned_request_header(
    h: &http::HeaderName,
    u: &UpstreamFile,
    server: &ServerConfig,
    assertion: &Option<AssertionConfig>,
) -> bool {
    crate::headers::is_reserved_header(h)
        && !(*h == http::header::AUTHORIZATION && u.token_exchange.is_none())
        || crate::headers::is_hop_view(h)
        || matches!(
            h.as_str(),
            "x-forwarded-prefix" | "dpop" | "traceparent" | "tracestate"
        )
        || server.request_id_header.as_ref() == Some(h)
        || assertion.as_ref().is_some_and(|a| a.header == *h)
}

/// `remove_headers`: header names bearward does not own, each once, none that `set_headers`
/// gives (it would be set again).
fn remove_headers(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    server: &ServerConfig,
    assertion: &Option<AssertionConfig>,
    set: &[(http::HeaderName, http::HeaderValue)],
    key: &dyn Fn(&str) -> String,
) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for (i, raw) in u
        .remove_headers
        .iter()
        .flat_map(Spanned::get_ref)
        .enumerate()
    {
        let at = key(&format!("remove_headers[{i}]"));
        let Ok(h) = http::HeaderName::from_str(raw.get_ref()) else {
            cx.err(
                raw.span(),
                &at,
                format!("{:?} is not a header name", raw.get_ref()),
            );
            continue;
        };
        let why = if owned_request_header(&h, u, server, assertion) {
            "is a header bearward sets or removes itself"
        } else if set.iter().any(|(n, _)| *n == h) {
            "is one set_headers gives: give it once"
        } else if out.contains(&h) {
            "is listed twice"
        } else {
            out.push(h);
            continue;
        };
        cx.err(raw.span(), &at, format!("{:?} {why}", raw.get_ref()));
    }
    out
}

/// `set_response_headers` and `remove_response_headers`: header names, none that bearward
/// writes on answers itself or that frame them, none in both.
fn response_headers(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    server: &ServerConfig,
    key: &dyn Fn(&str) -> String,
) -> Option<Box<ResponseHeaders>> {
    if u.set_response_headers.is_none() && u.remove_response_headers.is_none() {
        return None;
    }
    let mut rules = ResponseHeaders::default();
    let name = |cx: &mut Ctx<'_>, raw: &str, span: std::ops::Range<usize>, at: &str| {
        let Ok(h) = http::HeaderName::from_str(raw) else {
            cx.err(span, at, format!("{raw:?} is not a header name"));
            return None;
        };
        let owned = crate::headers::is_hop_by_hop(&h)
            || matches!(
                h.as_str(),
                "content-length" | "date" | "ratelimit" | "ratelimit-policy"
            )
            || server.request_id_header.as_ref() == Some(&h);
        if owned {
            let why = "is a header bearward writes on answers itself, or one that frames them";
            cx.err(span, at, format!("{raw:?} {why}"));
            return None;
        }
        Some(h)
    };
    if let Some(list) = &u.remove_response_headers {
        for (i, raw) in list.get_ref().iter().enumerate() {
            let at = key(&format!("remove_response_headers[{i}]"));
            if let Some(h) = name(cx, raw.get_ref(), raw.span(), &at) {
                if rules.remove.contains(&h) {
                    cx.err(
                        raw.span(),
                        &at,
                        format!("{:?} is listed twice", raw.get_ref()),
                    );
                } else {
                    rules.remove.push(h);
                }
            }
        }
    }
    if let Some(map) = &u.set_response_headers {
        for (raw, value) in map.get_ref() {
            let at = key(&format!("set_response_headers.{raw}"));
            let Some(h) = name(cx, raw, value.span(), &at) else {
                continue;
            };
            if rules.remove.contains(&h) || rules.set.iter().any(|(n, _)| *n == h) {
                cx.err(
                    value.span(),
                    &at,
                    format!("{raw:?} is also removed, or set twice: give it once"),
                );
                continue;
            }
            match http::HeaderValue::from_str(value.get_ref()) {
                Ok(v) if !value.get_ref().is_empty() => rules.set.push((h, v)),
                _ => cx.err(
                    value.span(),
                    &at,
                    "is empty or holds a byte a header value cannot (a control character)",
                ),
            }
        }
    }
    Some(Box::new(rules))
}

/// `health_check`: an origin-form path or a gRPC service name, and times and thresholds
/// within bounds.
fn health_check(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    (scheme, authority): (&http::uri::Scheme, &http::uri::Authority),
    protocol: Protocol,
    key: &dyn Fn(&str) -> String,
) -> Option<HealthCheck> {
    let whole = u.health_check.as_ref()?;
    let at = |k: &str| key(&format!("health_check.{k}"));
    let h = whole.get_ref();
    let asks = match (&h.path, &h.grpc_service) {
        (Some(path), None) => {
            let p = path.get_ref();
            // What goes on the request line: a path and query of visible ASCII, nothing to
            // split it.
            let fine =
                p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) && p.len() <= 1024;
            if !fine {
                let why =
                    "is not an origin-form path (starting with /, no spaces or control bytes)";
                cx.err(path.span(), &at("path"), format!("{p:?} {why}"));
                return None;
            }
            HealthAsk::Path(p.clone())
        }
        (None, Some(service)) => {
            let s = service.get_ref();
            if protocol == Protocol::Http1 {
                let why = "gRPC health checks go over HTTP/2: set the upstream's protocol to \"h2c\" or \"h2\"";
                cx.err(service.span(), &at("grpc_service"), why);
                return None;
            }
            let name = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_';
            if s.len() > 256 || !s.bytes().all(name) {
                let why =
                    "is not a gRPC service name (\"package.Service\", or \"\" for the server)";
                cx.err(service.span(), &at("grpc_service"), format!("{s:?} {why}"));
                return None;
            }
            HealthAsk::Grpc(s.clone())
        }
        _ => {
            let why = "give one of path (an HTTP check) and grpc_service (gRPC's health protocol)";
            cx.err(whole.span(), &key("health_check"), why);
            return None;
        }
    };
    let interval = cx.duration(
        &h.interval,
        &at("interval"),
        Duration::from_secs(5),
        (Duration::from_millis(100), Duration::from_secs(3600)),
    );
    let timeout = cx.duration(
        &h.timeout,
        &at("timeout"),
        Duration::from_secs(2).min(interval),
        (Duration::from_millis(10), Duration::from_secs(3600)),
    );
    if timeout > interval {
        if let Some(t) = &h.timeout {
            cx.err(t.span(), &at("timeout"), "is longer than the interval");
        }
    }
    let threshold = |cx: &mut Ctx<'_>, v: &Option<Spanned<u64>>, k: &str| {
        u32::try_from(cx.size(v, &at(k), 2, 1, 10)).unwrap_or(2)
    };
    let unhealthy_threshold = threshold(cx, &h.unhealthy_threshold, "unhealthy_threshold");
    let healthy_threshold = threshold(cx, &h.healthy_threshold, "healthy_threshold");
    Some(HealthCheck {
        asks,
        h2: protocol != Protocol::Http1,
        scheme: scheme.clone(),
        authority: authority.clone(),
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
    })
}

/// `host:port` to connect to: a name or address without a port takes the scheme's (RFC 9110
/// 4.2), which the socket API does not fill in.
fn connect_addr(authority: &http::uri::Authority, scheme: &http::uri::Scheme) -> String {
    match authority.port_u16() {
        Some(_) => authority.to_string(),
        None if *scheme == http::uri::Scheme::HTTPS => format!("{}:443", authority.host()),
        None => format!("{}:80", authority.host()),
    }
}

/// `unix_socket`: an absolute path the kernel can take (`sun_path` is 108 bytes with its NUL),
/// for a plain `http` upstream with no `endpoints` of its own.
fn unix_socket(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    scheme: &http::uri::Scheme,
    key: &dyn Fn(&str) -> String,
) -> Option<PathBuf> {
    let v = u.unix_socket.as_ref()?;
    let path = v.get_ref();
    let problem = if !path.starts_with('/') {
        Some(format!("{path:?} is not an absolute path"))
    } else if path.len() > 107 || path.contains('\0') {
        Some(format!(
            "{path:?} is longer than a Unix socket address can be (107 bytes) or holds a NUL"
        ))
    } else if *scheme != http::uri::Scheme::HTTP {
        Some("a socket on this host needs no TLS: use an http:// url".into())
    } else if u.endpoints.is_some() {
        Some("connections go to the socket: leave endpoints out".into())
    } else {
        None
    };
    match problem {
        Some(p) => {
            cx.err(v.span(), &key("unix_socket"), p);
            None
        }
        None => Some(PathBuf::from(path)),
    }
}

/// `endpoints`: host and port of each instance, each once, and how the rotation weighs them;
/// else the `url`'s own.
fn endpoints(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    scheme: &http::uri::Scheme,
    url: &http::uri::Authority,
    key: &str,
) -> (Vec<String>, Option<Balance>) {
    let Some(list) = &u.endpoints else {
        return (vec![connect_addr(url, scheme)], None);
    };
    if list.get_ref().is_empty() || list.get_ref().len() > crate::config::MAX_ENDPOINTS {
        cx.err(
            list.span(),
            key,
            format!(
                "list 1 to {} endpoints, or leave it out to connect to the url's host",
                crate::config::MAX_ENDPOINTS
            ),
        );
        return (Vec::new(), None);
    }
    let mut out: Vec<String> = Vec::new();
    let (mut weights, mut backups) = (Vec::new(), Vec::new());
    for (i, e) in list.get_ref().iter().enumerate() {
        let at = format!("{key}[{i}]");
        let entry = e.get_ref();
        if entry.address.contains('@') {
            // Not echoed: it may hold a password.
            cx.err(
                e.span(),
                &at,
                "must not carry credentials: an endpoint is host:port",
            );
            continue;
        }
        let parsed = http::uri::Authority::from_str(&entry.address)
            .ok()
            .filter(|a| !a.host().is_empty());
        let Some(a) = parsed else {
            cx.err(
                e.span(),
                &at,
                format!(
                    "{:?} is not host:port (a name or address, and a port)",
                    entry.address
                ),
            );
            continue;
        };
        let addr = connect_addr(&a, scheme);
        if out.contains(&addr) {
            cx.err(e.span(), &at, format!("{addr} is listed twice"));
            continue;
        }
        let backup = entry.backup.unwrap_or(false);
        let weight = match entry.weight {
            None => 1,
            Some(_) if backup => {
                cx.err(
                    e.span(),
                    &format!("{at}.weight"),
                    "a backup takes no weight: backups serve, in turn, only while every other endpoint is out",
                );
                1
            }
            Some(w @ 1..=100) => u32::try_from(w).unwrap_or(1),
            Some(w) => {
                cx.err(
                    e.span(),
                    &format!("{at}.weight"),
                    format!("{w} is not 1 to 100"),
                );
                1
            }
        };
        out.push(addr);
        weights.push(weight);
        backups.push(backup);
    }
    if !backups.is_empty() && backups.iter().all(|&b| b) {
        cx.err(
            list.span(),
            key,
            "every endpoint is a backup: at least one must serve while all are in",
        );
        return (out, None);
    }
    (out, Balance::new(&weights, &backups))
}

pub(super) fn upstream(
    cx: &mut Ctx<'_>,
    name: &str,
    u: &Spanned<UpstreamFile>,
    server: &ServerConfig,
) -> UpstreamConfig {
    let u = u.get_ref();
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let mut scheme = http::uri::Scheme::HTTP;
    let mut authority = http::uri::Authority::from_static("invalid");
    match http::Uri::from_str(u.url.get_ref()) {
        Ok(uri) => {
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                cx.err(
                    u.url.span(),
                    &key("url"),
                    "must be an http:// or https:// URL",
                );
            }
            match uri.authority() {
                Some(a) if !a.as_str().contains('@') => authority = a.clone(),
                Some(_) => cx.err(u.url.span(), &key("url"), "must not carry user information"),
                None => cx.err(u.url.span(), &key("url"), "must name a host"),
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                cx.err(
                    u.url.span(),
                    &key("url"),
                    "must not have a path or query: the request path is forwarded as is",
                );
            }
            if let Some(s) = uri.scheme() {
                scheme = s.clone();
            }
        }
        Err(e) => cx.err(
            u.url.span(),
            &key("url"),
            format!("{:?} is not a URL: {e}", u.url.get_ref()),
        ),
    }
    let mut tls = upstream_tls(cx, u, &scheme, &authority, &key);
    let protocol = match u.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "http1")) => Protocol::Http1,
        Some((p, "h2c")) => {
            if scheme != http::uri::Scheme::HTTP {
                cx.err(
                    p.span(),
                    &key("protocol"),
                    "\"h2c\" is HTTP/2 without TLS: use an http:// url, or \"h2\" for https://",
                );
            }
            Protocol::H2c
        }
        Some((p, "h2")) => {
            if scheme != http::uri::Scheme::HTTPS {
                cx.err(
                    p.span(),
                    &key("protocol"),
                    "\"h2\" is HTTP/2 over TLS: use an https:// url, or \"h2c\" for http://",
                );
            }
            tls = tls.map(|t| t.with_h2());
            Protocol::H2
        }
        Some((p, other)) => {
            cx.err(
                p.span(),
                &key("protocol"),
                format!("{other:?} is none of \"http1\", \"h2c\", \"h2\""),
            );
            Protocol::Http1
        }
    };
    let long = (Duration::from_millis(1), Duration::from_secs(3600));
    let identity_assertion = u.identity_assertion.as_ref().and_then(|a| {
        let audience = format!("{scheme}://{authority}");
        assertion(cx, name, a, server, audience)
    });
    let token_exchange = u
        .token_exchange
        .as_ref()
        .and_then(|t| token_exchange(cx, name, t));
    let (mut endpoints, balance) = endpoints(cx, u, &scheme, &authority, &key("endpoints"));
    let unix_socket = unix_socket(cx, u, &scheme, &key);
    if let Some(path) = &unix_socket {
        endpoints = vec![format!("unix:{}", path.display())];
    }
    let set_headers = set_headers(cx, u, server, &identity_assertion, &key);
    let remove_headers = remove_headers(cx, u, server, &identity_assertion, &set_headers, &key);
    let response_headers = response_headers(cx, u, server, &key);
    let health_check = health_check(cx, u, (&scheme, &authority), protocol, &key);
    let queue_timeout = cx.duration(
        &u.queue_timeout,
        &key("queue_timeout"),
        Duration::from_secs(1),
        (Duration::ZERO, Duration::from_secs(60)),
    );
    if let (Some(q), None) = (&u.queue_timeout, &u.max_requests) {
        cx.err(
            q.span(),
            &key("queue_timeout"),
            "only applies with max_requests",
        );
    }
    let max_requests = u.max_requests.is_some().then(|| {
        (
            cx.size(&u.max_requests, &key("max_requests"), 1, 1, 100_000),
            queue_timeout,
        )
    });
    let retry_statuses = retry_statuses(cx, u, protocol, endpoints.len(), &key);
    let least_request = least_request(cx, u, endpoints.len(), &key);
    UpstreamConfig {
        least_request,
        max_requests,
        retry_statuses,
        balance,
        health_check,
        set_headers,
        remove_headers,
        response_headers,
        identity_assertion,
        token_exchange,
        name: name.to_owned(),
        endpoints,
        unix_socket,
        endpoint_fail_timeout: cx.duration(
            &u.endpoint_fail_timeout,
            &key("endpoint_fail_timeout"),
            Duration::from_secs(10),
            (Duration::from_millis(100), Duration::from_secs(3600)),
        ),
        scheme,
        authority,
        connect_timeout: cx.duration(
            &u.connect_timeout,
            &key("connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
            long,
        ),
        request_timeout: cx.duration(
            &u.request_timeout,
            &key("request_timeout"),
            DEFAULT_REQUEST_TIMEOUT,
            long,
        ),
        idle_timeout: cx.duration(
            &u.idle_timeout,
            &key("idle_timeout"),
            DEFAULT_IDLE_TIMEOUT,
            long,
        ),
        max_requests_per_connection: u32::try_from(cx.size(
            &u.max_requests_per_connection,
            &key("max_requests_per_connection"),
            u32::MAX as usize,
            1,
            1_000_000_000,
        ))
        .unwrap_or(u32::MAX),
        max_connection_age: cx.duration(
            &u.max_connection_age,
            &key("max_connection_age"),
            crate::config::DEFAULT_MAX_CONNECTION_AGE,
            (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600)),
        ),
        tunnel_idle_timeout: cx.duration(
            &u.tunnel_idle_timeout,
            &key("tunnel_idle_timeout"),
            DEFAULT_TUNNEL_IDLE_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(24 * 3600)),
        ),
        max_idle_connections: cx.size(
            &u.max_idle_connections,
            &key("max_idle_connections"),
            DEFAULT_MAX_IDLE_CONNECTIONS,
            0,
            10_000,
        ),
        pass_host_header: u.pass_host_header.unwrap_or(true),
        tls_files: [&u.tls_ca_file, &u.tls_client_cert, &u.tls_client_key]
            .into_iter()
            .flatten()
            .filter(|_| tls.is_some())
            .map(|f| PathBuf::from(f.get_ref()))
            .collect(),
        tls,
        protocol,
        h2_keepalive_interval: match &u.h2_keepalive_interval {
            Some(v) if v.get_ref() == "off" => None,
            _ => Some(cx.duration(
                &u.h2_keepalive_interval,
                &key("h2_keepalive_interval"),
                DEFAULT_H2_KEEPALIVE_INTERVAL,
                (Duration::from_secs(1), Duration::from_secs(3600)),
            )),
        },
        h2_keepalive_timeout: cx.duration(
            &u.h2_keepalive_timeout,
            &key("h2_keepalive_timeout"),
            DEFAULT_H2_KEEPALIVE_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(600)),
        ),
    }
}

/// The TLS settings of an `https` upstream; its TLS keys on an `http` one are an error, since
/// they would suggest a protection the connection does not have.
pub(super) fn upstream_tls(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
    key: &dyn Fn(&str) -> String,
) -> Option<crate::tls::UpstreamTls> {
    if *scheme != http::uri::Scheme::HTTPS {
        for (k, v) in [
            ("tls_ca_file", &u.tls_ca_file),
            ("tls_server_name", &u.tls_server_name),
            ("tls_client_cert", &u.tls_client_cert),
            ("tls_client_key", &u.tls_client_key),
        ] {
            if let Some(v) = v {
                cx.err(v.span(), &key(k), "only applies to an https:// url");
            }
        }
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = match &u.tls_server_name {
        Some(n) => {
            crate::tls::server_name(n.get_ref()).map_err(|e| (n.span(), key("tls_server_name"), e))
        }
        None => crate::tls::server_name(host).map_err(|e| (u.url.span(), key("url"), e)),
    };
    let ca = u.tls_ca_file.as_ref();
    let roots = crate::tls::roots(ca.map(|f| Path::new(f.get_ref().as_str())))
        .map_err(|e| (ca.map_or(0..0, Spanned::span), key("tls_ca_file"), e));
    let identity = match (&u.tls_client_cert, &u.tls_client_key) {
        (None, None) => Ok(None),
        (Some(c), None) => Err((
            c.span(),
            key("tls_client_key"),
            "is needed with tls_client_cert".into(),
        )),
        (None, Some(k)) => Err((
            k.span(),
            key("tls_client_cert"),
            "is needed with tls_client_key".into(),
        )),
        (Some(c), Some(k)) => {
            crate::tls::Identity::load(Path::new(c.get_ref()), Path::new(k.get_ref()))
                .map(Some)
                .map_err(|e| match e {
                    crate::tls::IdentityError::Cert(e) => (c.span(), key("tls_client_cert"), e),
                    crate::tls::IdentityError::Key(e) => (k.span(), key("tls_client_key"), e),
                })
        }
    };
    let made = match (name, roots, identity) {
        (Ok(name), Ok(roots), Ok(identity)) => crate::tls::UpstreamTls::new(name, roots, identity)
            .map_err(|e| {
                let span = u
                    .tls_client_key
                    .as_ref()
                    .map_or(u.url.span(), Spanned::span);
                (span, key("tls_client_key"), e)
            }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    };
    made.map_err(|(span, k, e)| cx.err(span, &k, e)).ok()
}

/// Claims an identity assertion sets itself; a token claim of one of these names is not copied.
const ASSERTION_OWN_CLAIMS: [&str; 10] = [
    "iss", "aud", "iat", "exp", "nbf", "jti", "route", "req", "htm", "htu",
];

/// `identity_assertion`: the key read and tried, its public half made a JWK.
fn assertion(
    cx: &mut Ctx<'_>,
    name: &str,
    a: &Spanned<crate::config::file::AssertionFile>,
    server: &ServerConfig,
    default_audience: String,
) -> Option<AssertionConfig> {
    let span = a.span();
    let a = a.get_ref();
    let key = |k: &str| format!("upstreams.{name}.identity_assertion.{k}");
    let alg_name = a
        .algorithm
        .as_ref()
        .map_or("ES256", |x| x.get_ref().as_str());
    let alg = crate::jose::algorithm(alg_name)
        .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    let Some(alg) = alg else {
        let s = a.algorithm.as_ref().map_or(span.clone(), Spanned::span);
        cx.err(
            s,
            &key("algorithm"),
            format!(
                "{alg_name:?} is not an asymmetric signature algorithm (an upstream checks \
                 the assertion with the published public key)"
            ),
        );
        return None;
    };
    let file = &a.signing_key_file;
    let pem = match cx.read_secret_file(file.get_ref()) {
        Ok(b) => b,
        Err(e) => {
            cx.err(
                file.span(),
                &key("signing_key_file"),
                format!("cannot read {:?}: {e}", file.get_ref()),
            );
            return None;
        }
    };
    // Signing once here turns a key that does not fit its algorithm into a config error.
    let public = crate::jose::encoding_key(&pem, alg)
        .and_then(|k| crate::jose::sign_test(&pem, alg).map(|()| k))
        .and_then(|k| {
            jsonwebtoken::jwk::Jwk::from_encoding_key(&k, alg).map_err(|e| e.to_string())
        });
    let mut jwk = match public {
        Ok(j) => j,
        Err(e) => {
            cx.err(
                file.span(),
                &key("signing_key_file"),
                format!("{:?} cannot sign {alg_name}: {e}", file.get_ref()),
            );
            return None;
        }
    };
    let kid = match &a.key_id {
        Some(k) if k.get_ref().is_empty() || k.get_ref().len() > 128 => {
            cx.err(k.span(), &key("key_id"), "1 to 128 characters");
            return None;
        }
        Some(k) => k.get_ref().clone(),
        None => jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|e| cx.err(file.span(), &key("signing_key_file"), e.to_string()))
            .ok()?,
    };
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    let header = match &a.header {
        None => HeaderName::from_static("x-bearward-assertion"),
        Some(h) => match HeaderName::from_str(h.get_ref()) {
            Ok(n) if !crate::headers::is_reserved_header(&n) => n,
            _ => {
                cx.err(
                    h.span(),
                    &key("header"),
                    format!("{:?} is not a header name bearward may set", h.get_ref()),
                );
                return None;
            }
        },
    };
    let lifetime = cx.duration(
        &a.lifetime,
        &key("lifetime"),
        Duration::from_secs(60),
        (Duration::from_secs(5), Duration::from_secs(3600)),
    );
    let mut claims = Vec::new();
    match &a.claims {
        None => claims.extend(["sub", "scope", "client_id"].map(String::from)),
        Some(list) if list.get_ref().len() > 32 => {
            cx.err(list.span(), &key("claims"), "at most 32 claims");
        }
        Some(list) => {
            for c in list.get_ref() {
                if ASSERTION_OWN_CLAIMS.contains(&c.get_ref().as_str()) || c.get_ref().is_empty() {
                    cx.err(
                        c.span(),
                        &key("claims"),
                        format!(
                            "{:?} is a claim the assertion sets itself ({})",
                            c.get_ref(),
                            ASSERTION_OWN_CLAIMS.join(", ")
                        ),
                    );
                } else if !claims.contains(c.get_ref()) {
                    claims.push(c.get_ref().clone());
                }
            }
        }
    }
    let issuer = match (&a.issuer, &server.public_origin) {
        (Some(i), _) if i.get_ref().is_empty() => {
            cx.err(i.span(), &key("issuer"), "must not be empty");
            return None;
        }
        (Some(i), _) => i.get_ref().clone(),
        (None, Some(origin)) => origin.clone(),
        (None, None) => {
            cx.err(
                span,
                &key("issuer"),
                "needs an issuer: set `issuer`, or [server] public_origin",
            );
            return None;
        }
    };
    let audience = match &a.audience {
        Some(x) if x.get_ref().is_empty() => {
            cx.err(x.span(), &key("audience"), "must not be empty");
            return None;
        }
        Some(x) => x.get_ref().clone(),
        None => default_audience,
    };
    let request = match a.request.as_ref().map(|r| (r, r.get_ref().as_str())) {
        None | Some((_, "none")) => RequestBinding::None,
        Some((_, "hash")) => RequestBinding::Hash,
        Some((_, "include")) => RequestBinding::Include,
        Some((r, other)) => {
            cx.err(
                r.span(),
                &key("request"),
                format!("{other:?} is none of \"none\", \"hash\", \"include\""),
            );
            return None;
        }
    };
    let mut jwk = serde_json::to_value(&jwk).ok()?;
    jwk["alg"] = format!("{alg:?}").into();
    Some(AssertionConfig {
        key_pem: Secret(pem),
        alg,
        kid,
        jwk,
        header,
        lifetime,
        claims,
        issuer,
        audience,
        request,
        jwks_on_listener: a.jwks_on_listener.unwrap_or(false),
    })
}

/// Token types RFC 8693 3 registers that bearward can send as a bearer token.
const REQUESTED_TYPES: [&str; 3] = [
    ACCESS_TOKEN_TYPE,
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];

/// `token_exchange`: the endpoint, what is asked for, and the client's authentication.
fn token_exchange(
    cx: &mut Ctx<'_>,
    name: &str,
    t: &Spanned<crate::config::file::TokenExchangeFile>,
) -> Option<TokenExchangeConfig> {
    let span = t.span();
    let t = t.get_ref();
    let prefix = format!("upstreams.{name}.token_exchange.");
    let key = |k: &str| format!("{prefix}{k}");
    let issuer = t.issuer.get_ref();
    if !issuer.starts_with("https://") && !issuer.starts_with("http://") {
        cx.err(t.issuer.span(), &key("issuer"), "must be an http(s) URL");
    }
    let token_endpoint =
        t.token_endpoint
            .as_ref()
            .and_then(|e| match http::Uri::from_str(e.get_ref()) {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    Some(u)
                }
                _ => {
                    cx.err(e.span(), &key("token_endpoint"), "must be an http(s) URL");
                    None
                }
            });
    let text = |cx: &mut Ctx<'_>, v: &Option<Spanned<String>>, k: &str| {
        let v = v.as_ref()?;
        if v.get_ref().is_empty() || v.get_ref().len() > 2048 {
            cx.err(v.span(), &key(k), "1 to 2048 characters");
            return None;
        }
        Some(v.get_ref().clone())
    };
    let audience = text(cx, &t.audience, "audience");
    let resource = text(cx, &t.resource, "resource");
    if let Some(r) = &t.resource {
        // RFC 8707 2: an absolute URI without a fragment.
        if !r.get_ref().contains("://") || r.get_ref().contains('#') {
            cx.err(
                r.span(),
                &key("resource"),
                "must be an absolute URI without a fragment",
            );
        }
    }
    let scope = text(cx, &t.scope, "scope");
    let requested_token_type = match &t.requested_token_type {
        None => ACCESS_TOKEN_TYPE.to_owned(),
        Some(r) if REQUESTED_TYPES.contains(&r.get_ref().as_str()) => r.get_ref().clone(),
        Some(r) => {
            cx.err(
                r.span(),
                &key("requested_token_type"),
                format!(
                    "{:?} is not a token type bearward can send as a bearer token ({})",
                    r.get_ref(),
                    REQUESTED_TYPES.join(", ")
                ),
            );
            return None;
        }
    };
    let client_id = t.client_id.get_ref().clone();
    if client_id.is_empty() {
        cx.err(t.client_id.span(), &key("client_id"), "must not be empty");
    }
    let fields = super::issuer::ClientAuthFields {
        client_auth: &t.client_auth,
        client_secret_file: &t.client_secret_file,
        client_secret_env: &t.client_secret_env,
        client_key_file: &t.client_key_file,
        client_key_alg: &t.client_key_alg,
        client_key_id: &t.client_key_id,
    };
    let tls = super::client_tls(
        cx,
        (&t.tls_ca_file, &t.tls_client_cert, &t.tls_client_key),
        ["tls_ca_file", "tls_client_cert", "tls_client_key"],
        &key,
    )
    .ok()?;
    let certificate = t.tls_client_cert.is_some();
    let client_auth = super::issuer::client_auth(cx, fields, &prefix, &span, certificate)?;
    let timeout = cx.duration(
        &t.timeout,
        &key("timeout"),
        Duration::from_secs(2),
        (Duration::from_millis(10), Duration::from_secs(60)),
    );
    let cache_entries = cx.size(
        &t.cache_entries,
        &key("cache_entries"),
        10_000,
        1,
        10_000_000,
    );
    Some(TokenExchangeConfig {
        issuer: issuer.clone(),
        token_endpoint,
        audience,
        resource,
        scope,
        requested_token_type,
        actor: t.actor.as_ref().is_some_and(|a| *a.get_ref()),
        client_id,
        client_auth,
        tls,
        timeout,
        cache_entries: cache_entries as u64,
    })
}

/// A token exchange that finds its endpoint by discovery must name one of `[[issuers]]`: the
/// endpoint it is sent to is then held to that issuer's origins (`trusted_key_origins`) and
/// reached through its `proxy`, as the introspection endpoint is.
pub(super) fn exchange_issuers(
    cx: &mut Ctx<'_>,
    file: &crate::config::file::FileConfig,
    issuers: &[IssuerConfig],
) {
    for (name, u) in &file.upstreams {
        let Some(t) = &u.get_ref().token_exchange else {
            continue;
        };
        let t = t.get_ref();
        let entry = issuers.iter().find(|i| i.issuer == *t.issuer.get_ref());
        if t.token_endpoint.is_none() && entry.is_some_and(|i| i.tenant.is_some()) {
            cx.err(
                t.issuer.span(),
                &format!("upstreams.{}.token_exchange.issuer", name.get_ref()),
                "names a {tenantid} issuer, which has no one discovery document: set \
                 token_endpoint",
            );
        }
        if t.token_endpoint.is_none() && entry.is_none() {
            cx.err(
                t.issuer.span(),
                &format!("upstreams.{}.token_exchange.issuer", name.get_ref()),
                format!(
                    "{:?} is none of [[issuers]]: discovery needs one (its origins and proxy \
                     apply), or set token_endpoint",
                    t.issuer.get_ref()
                ),
            );
        }
    }
}

/// `balance`: `"least_request"` (true) or `"round_robin"`, the first needing two endpoints or
/// more.
fn least_request(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    endpoints: usize,
    key: &dyn Fn(&str) -> String,
) -> bool {
    let Some(b) = &u.balance else {
        return false;
    };
    match b.get_ref().as_str() {
        "round_robin" => false,
        "least_request" => {
            if endpoints < 2 {
                cx.err(
                    b.span(),
                    &key("balance"),
                    "\"least_request\" needs endpoints: two or more instances to choose between",
                );
            }
            true
        }
        other => {
            cx.err(
                b.span(),
                &key("balance"),
                format!("{other:?} is none of \"round_robin\", \"least_request\""),
            );
            false
        }
    }
}

/// `retry_statuses`: 429 or 5xx, each once, on an HTTP/1 upstream with more than one endpoint.
fn retry_statuses(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    protocol: Protocol,
    endpoints: usize,
    key: &dyn Fn(&str) -> String,
) -> Box<[http::StatusCode]> {
    let Some(list) = &u.retry_statuses else {
        return Box::default();
    };
    let k = key("retry_statuses");
    if protocol != Protocol::Http1 {
        cx.err(
            list.span(),
            &k,
            "applies to HTTP/1 upstreams only (gRPC carries its status in trailers)",
        );
    }
    if endpoints < 2 {
        cx.err(
            list.span(),
            &k,
            "needs endpoints: two or more instances, so there is a next one to send to",
        );
    }
    let mut out: Vec<http::StatusCode> = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let code = *s.get_ref();
        match http::StatusCode::from_u16(code) {
            Ok(status) if code == 429 || status.is_server_error() => {
                if out.contains(&status) {
                    cx.err(s.span(), &format!("{k}[{i}]"), format!("{code} is listed twice"));
                }
                out.push(status);
            }
            _ => cx.err(
                s.span(),
                &format!("{k}[{i}]"),
                format!("{code} is not 429 or 500 to 599: only answers that say the instance, not the request, is at fault are sent elsewhere"),
            ),
        }
    }
    out.into_boxed_slice()
}
