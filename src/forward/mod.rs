//! Forwarding: how a checked request is rewritten for the upstream (origin-form target,
//! hop-by-hop headers out, `Host` and `X-Forwarded-*` as configured, HTTP/2 cookies joined) and
//! how the answer is passed back. The WebSocket tunnel after a 101 belongs to the upstream
//! side (`upstream::tunnel`).

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::headers::{is_upgrade_request, strip_hop_by_hop_except_upgrade};
use crate::upstream::HeadRewrite;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Rewrites a client request for the upstream: origin `path_and_query` (canonical path plus the
/// untouched query), HTTP/1.1, hop-by-hop headers removed (an upgrade's own two kept). Returns
/// the `Host` (as configured) and `X-Forwarded-*` lines the head is written with, in place of
/// the client's (`Forwarded` too, from an untrusted peer).
pub(crate) fn prepare_request(
    req: &mut Request<Body>,
    upstream: &UpstreamConfig,
    path_and_query: String,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    trusted_proxies: &[IpNet],
    tls: bool,
) -> Result<HeadRewrite, http::Error> {
    // One pass over the names for the two looked up here that most requests lack: a hashed
    // lookup of each cost more than the pass.
    let (mut upgrade, mut prior_via) = (false, false);
    for k in req.headers().keys() {
        upgrade |= *k == header::UPGRADE;
        prior_via |= *k == header::VIA;
    }
    let upgrade = upgrade && is_upgrade_request(req);
    let version = req.version();
    let client_host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    // Origin-form, as sent on the upstream connection; Host carries the authority.
    *req.uri_mut() = Uri::try_from(path_and_query)?;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop_except_upgrade(headers, upgrade);
    if version == Version::HTTP_2 {
        join_h2_cookies(headers);
    }

    // What replaces the client's headers of these names is written into the upstream head
    // directly (upstream::HeadRewrite); the client's own never pass.
    let trusted = is_trusted(trusted_proxies, &peer);
    let (xff, xfp, xfh) = (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST);
    let prior: Vec<&str> = if trusted {
        headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let value = if prior.is_empty() {
        peer_ip.clone()
    } else {
        let chain = format!("{}, {}", prior.join(", "), peer.ip());
        HeaderValue::from_str(&chain).unwrap_or_else(|_| peer_ip.clone())
    };
    let mut rewrite = HeadRewrite {
        untrusted: !trusted,
        upgrade,
        ..HeadRewrite::default()
    };
    rewrite.replace[0] = Some((xff, Some(value)));
    if !(trusted && headers.contains_key(&xfp)) {
        let proto = if tls { "https" } else { "http" };
        rewrite.replace[1] = Some((xfp, Some(HeaderValue::from_static(proto))));
    }
    if !(trusted && headers.contains_key(&xfh)) {
        rewrite.replace[2] = Some((xfh, client_host.clone()));
    }
    if !trusted {
        rewrite.replace[3] = Some((FORWARDED, None));
    }
    let via = match prior_via {
        true => via(headers, version),
        false => HeaderValue::from_static(hop(version)),
    };
    rewrite.replace[4] = Some((header::VIA, Some(via)));

    rewrite.host = if upstream.pass_host_header {
        client_host.or_else(|| HeaderValue::from_str(upstream.authority.as_str()).ok())
    } else {
        HeaderValue::from_str(upstream.authority.as_str()).ok()
    };
    Ok(rewrite)
}

/// RFC 9113 8.2.3: HTTP/2 clients may send each cookie as its own `cookie` field (it compresses
/// better), and those MUST be joined with `"; "` before they go on over HTTP/1.1, where a
/// request carries one `Cookie` line and servers commonly read only the first.
fn join_h2_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Joined from valid values with ASCII, so it is valid.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// This hop in `Via`: the protocol the request came in on and the pseudonym `bearward`.
fn hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 bearward",
        Version::HTTP_2 => "2 bearward",
        _ => "1.1 bearward",
    }
}

/// `Via` for the upstream (RFC 9110 7.6.3: a gateway MUST send one in each inbound request): the
/// client's chain, if any, and this hop, named by the protocol it came in on and the pseudonym
/// `bearward` (no host name or version is disclosed).
fn via(headers: &HeaderMap, version: Version) -> HeaderValue {
    let hop = hop(version);
    let prior: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if prior.is_empty() {
        return HeaderValue::from_static(hop);
    }
    let mut chain = prior.join(&b", "[..]);
    chain.extend_from_slice(b", ");
    chain.extend_from_slice(hop.as_bytes());
    // Built from valid values and ASCII, so it is valid.
    HeaderValue::from_bytes(&chain).unwrap_or_else(|_| HeaderValue::from_static(hop))
}

/// Cleans an upstream response for the client: hop-by-hop headers go, except on a 101, whose
/// `Connection` and `Upgrade` complete the handshake.
pub(crate) fn prepare_response(resp: &mut Response<Body>) {
    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop_except_upgrade(resp.headers_mut(), upgraded);
}

/// Is `peer` one of the proxies whose `X-Forwarded-*` headers we believe?
pub(crate) fn is_trusted(trusted: &[IpNet], peer: &SocketAddr) -> bool {
    // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: the same client.
    let ip = peer.ip().to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// `X-Forwarded-For` entries walked at most, from the right.
const MAX_FORWARDED_HOPS: usize = 64;

/// The client's address: the peer's, unless the peer is a proxy we believe (`peer_trusted`).
/// Then `X-Forwarded-For` is read from the right, the end the proxies append to, past the
/// addresses in `trusted`; the first one outside it is the client (nginx's `real_ip_recursive`,
/// Envoy's trusted hops). Entries left of it were written by the client and could say anything,
/// so they are never read. An entry that is not an address (with or without a port) ends the
/// walk at the last hop read, as does running out of entries: then the request came from a
/// trusted hop itself.
pub(crate) fn client_ip(
    headers: &HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    trusted: &[IpNet],
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !peer_trusted {
        return client;
    }
    let entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','))
        .take(MAX_FORWARDED_HOPS);
    for entry in entries {
        let Some(ip) = forwarded_ip(entry) else {
            break;
        };
        client = ip.to_canonical();
        if !trusted.iter().any(|n| n.contains(&client)) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `addr`, `v4:port`, `[v6]` or `[v6]:port`.
fn forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        return (port.is_empty() || port.strip_prefix(':')?.parse::<u16>().is_ok())
            .then(|| v6.parse().ok())
            .flatten();
    }
    text.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_matches_cidrs_and_mapped_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted(&nets, &"10.1.2.3:5".parse().unwrap()));
        assert!(is_trusted(&nets, &"[::ffff:10.1.2.3]:5".parse().unwrap()));
        assert!(!is_trusted(&nets, &"11.1.2.3:5".parse().unwrap()));
        assert!(!is_trusted(&[], &"127.0.0.1:5".parse().unwrap()));
    }

    fn client(xff: &[&str], peer: &str, peer_trusted: bool, trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for line in xff {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        let nets: Vec<IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        client_ip(&h, peer.parse().unwrap(), peer_trusted, &nets).to_string()
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let lb = ["10.0.0.0/8"];
        // An untrusted peer's header is not read at all.
        assert_eq!(
            client(&["1.1.1.1"], "203.0.113.9", false, &lb),
            "203.0.113.9"
        );
        assert_eq!(client(&[], "::ffff:203.0.113.9", false, &lb), "203.0.113.9");
        // From a trusted peer: the rightmost entry outside the trusted nets, whatever the
        // client wrote to its left, across several header lines.
        assert_eq!(
            client(&["6.6.6.6, 198.51.100.7"], "10.0.0.1", true, &lb),
            "198.51.100.7"
        );
        assert_eq!(
            client(
                &["6.6.6.6", "198.51.100.7, 10.2.3.4"],
                "10.0.0.1",
                true,
                &lb
            ),
            "198.51.100.7"
        );
        assert_eq!(
            client(&["198.51.100.7:4711"], "10.0.0.1", true, &lb),
            "198.51.100.7"
        );
        assert_eq!(
            client(&["[2001:db8::7]:443"], "10.0.0.1", true, &lb),
            "2001:db8::7"
        );
        assert_eq!(
            client(&[" ::ffff:198.51.100.7 "], "10.0.0.1", true, &lb),
            "198.51.100.7"
        );
        // No header, or only trusted hops: the request came from the nearest one itself.
        assert_eq!(client(&[], "10.0.0.1", true, &lb), "10.0.0.1");
        assert_eq!(
            client(&["10.9.9.9, 10.8.8.8"], "10.0.0.1", true, &lb),
            "10.9.9.9"
        );
        // Garbage where the client should be: the last hop read, never the garbage.
        assert_eq!(client(&["unknown"], "10.0.0.1", true, &lb), "10.0.0.1");
        assert_eq!(
            client(&["6.6.6.6, x, 10.8.8.8"], "10.0.0.1", true, &lb),
            "10.8.8.8"
        );
        assert_eq!(client(&["[::1]x"], "10.0.0.1", true, &lb), "10.0.0.1");
        // A long chain of trusted hops is walked only so far.
        let chain = vec!["10.1.1.1"; 100].join(", ");
        assert_eq!(
            client(&[&format!("6.6.6.6, {chain}")], "10.0.0.1", true, &lb),
            "10.1.1.1"
        );
    }
}
