//! Header-name rules: which headers are hop-by-hop (RFC 9110 7.6.1), which ones bearward sets
//! itself and so never takes from a client, and which "view" headers only a trusted proxy may
//! send. A leaf module: the config check, the request phases, forwarding and the upstream
//! client all ask it, and it asks nothing of them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Header names bearward sets itself; a claim header may not take one of them.
pub(crate) fn is_reserved_header(h: &HeaderName) -> bool {
    HOP_BY_HOP.contains(h)
        || matches!(
            h.as_str(),
            "host"
                | "authorization"
                | "content-length"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "forwarded"
                | "via"
                | "x-bearward-audit"
        )
}

/// A hop-by-hop header (RFC 9110 7.6.1, and the connection-specific ones everyone strips).
pub(crate) fn is_hop_by_hop(h: &HeaderName) -> bool {
    HOP_BY_HOP.contains(h)
}

/// RFC 9110 7.6.1 and the connection-specific headers everyone strips.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// Runs on every request and response, and most responses carry `Connection: keep-alive`, so
/// the common case allocates nothing: the fixed names present are noted in a bit set and
/// removed, and a header named by a `Connection` option is looked up only for options other
/// than `keep-alive` (itself on the fixed list).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for k in headers.keys() {
        // Every fixed name starts with one of these; most headers are ruled out by one byte.
        if !matches!(k.as_str().as_bytes()[0], b'c' | b'k' | b'p' | b't' | b'u') {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        for option in v.as_bytes().split(|b| *b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() || option.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(option) {
                if headers.contains_key(&n) {
                    named.push(n);
                }
            }
        }
    }
    for h in &named {
        headers.remove(h);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// Client headers whose names hold `_`. CGI, PHP, WSGI (Django, Flask) and Rack give the
/// application `X_Auth_Subject` and `X-Auth-Subject` under one name (`HTTP_X_AUTH_SUBJECT`), so
/// a client could pass an underscore spelling of a header bearward removes or sets, and the
/// application might read the client's value: the hole of oauth2-proxy's CVE-2025-64484.
/// As nginx (`underscores_in_headers off`) and Caddy do, they are dropped. With
/// `server.allow_underscores_in_headers`, they pass, except the spellings of the headers
/// bearward sets or filters (`managed`).
///
/// Runs on every request: a pass over the names that allocates only when one holds a `_`.
pub(crate) fn drop_underscored(
    headers: &mut HeaderMap,
    allow: bool,
    managed: impl Fn(&HeaderName) -> bool,
) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    for k in &underscored(headers, allow, managed) {
        headers.remove(k);
    }
}

/// The names [`drop_underscored`] drops: every one holding `_` unless `allow`, else those that
/// read as a `managed` header with `_` for `-`.
pub(crate) fn underscored(
    headers: &HeaderMap,
    allow: bool,
    managed: impl Fn(&HeaderName) -> bool,
) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            !allow
                || HeaderName::from_bytes(k.as_str().replace('_', "-").as_bytes())
                    .is_ok_and(|dashed| managed(&dashed))
        })
        .cloned()
        .collect()
}

/// Is this a header bearward sets or filters on every request (`forward.claim_headers` aside,
/// which the service knows)?
pub(crate) fn is_managed(name: &HeaderName) -> bool {
    is_reserved_header(name) || is_hop_view(name)
}

/// Strips hop-by-hop headers; with `keep_upgrade`, the `Upgrade` header survives with a fresh
/// `Connection: upgrade` (the two headers an upgrade handshake is made of).
pub(crate) fn strip_hop_by_hop_except_upgrade(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// Is this an HTTP/1.1 WebSocket upgrade request (`Connection: upgrade` + `Upgrade: websocket`)?
///
/// WebSocket is the one protocol passed: once the upstream answers 101, bearward sees nothing
/// more of the connection, so a protocol that carries HTTP requests would carry them past every
/// route's policy. `Upgrade: h2c` is the known case ("h2c smuggling": a tunnel, opened on an
/// open route, then used to ask the upstream for anything). Any other `Upgrade` is dropped with
/// the other hop-by-hop headers and the request goes on as a plain one, which RFC 9110 7.8
/// lets a server do; Envoy passes only the upgrade types a route names, websocket the usual one.
pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let mut upgrade = req.headers().get_all(header::UPGRADE).iter();
    req.version() == Version::HTTP_11
        && matches!(
            (upgrade.next(), upgrade.next()),
            (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
        )
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Headers in which a proxy tells the upstream what it saw, the client's address or the URL it
/// was asked for, that common frameworks believe: chi's and Rails' client-IP helpers read
/// `True-Client-IP`, `X-Real-IP` and `X-Client-IP`; Symfony, Zend and IIS route by
/// `X-Original-URL` and `X-Rewrite-URL` (a client sending `GET /public` with
/// `X-Original-URL: /admin` would be checked against one route and served another); Spring and
/// ASP.NET build links from `X-Forwarded-Prefix` and `-Port`. Like `X-Forwarded-For`, they are
/// believed only from `server.trusted_proxies`.
pub(crate) fn is_hop_view(name: &HeaderName) -> bool {
    let n = name.as_str();
    // Most headers are ruled out by their first byte.
    matches!(n.as_bytes()[0], b'x' | b't')
        && matches!(
            n,
            "x-real-ip"
                | "true-client-ip"
                | "x-client-ip"
                | "x-cluster-client-ip"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-server"
                | "x-original-url"
                | "x-original-uri"
                | "x-rewrite-url"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret , keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Two Connection lines, odd case and spacing, a name that is not a header.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("KEEP-ALIVE"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" ,X-One,, x-two ,bad name"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);

        // The one-byte filter must let every fixed name through.
        for h in &HOP_BY_HOP {
            let mut one = HeaderMap::new();
            one.insert(h.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut one);
            assert!(one.is_empty(), "{h}");
        }

        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
