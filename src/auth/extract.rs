//! Where a token may come from: the `Authorization: Bearer` header (RFC 6750 2.1), and the
//! `access_token` query parameter (2.3) only on routes that opt in.

use super::AuthError;
use crate::routes::Route;
use http::HeaderMap;

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
///
/// Runs on every bearer request over the whole token (often 1 KiB), so it is written without
/// early exits: a fold of byte-wise range checks that the compiler turns into SIMD compares.
fn is_b64token(t: &[u8]) -> bool {
    let body_len = t.len() - t.iter().rev().take_while(|b| **b == b'=').count();
    let body = &t[..body_len];
    body_len > 0
        && body.iter().fold(true, |ok, &b| {
            let lower = b | 0x20;
            ok & ((lower.wrapping_sub(b'a') < 26)
                | (b.wrapping_sub(b'0') < 10)
                | (b == b'-')
                | (b == b'.')
                | (b == b'_')
                | (b == b'~')
                | (b == b'+')
                | (b == b'/'))
        })
}

/// Finds the one token of a request and checks it is a b64token. A non-Bearer `Authorization`
/// (e.g. Basic) counts as no token (RFC 6750 3.1: no error code), two tokens are an
/// `invalid_request`.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    route: &Route,
) -> Result<&'a str, AuthError> {
    check_token(find_token(headers, query, route)?)
}

/// How a token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer` (RFC 6750 2.1), or the query parameter (2.3).
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 7.1): a `DPoP` proof header must come with it.
    Dpop,
}

/// [`extract_token`] without the character check, which [`check_token`] does. The request path
/// looks the bytes up in the verified-token cache first: a hit means these exact bytes passed
/// the check before, so only a miss pays for a pass over the whole token.
pub(crate) fn find_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    route: &Route,
) -> Result<&'a [u8], AuthError> {
    find_token_scheme(headers, query, route).map(|(t, _)| t)
}

/// [`find_token`], with the scheme the token came with.
pub(crate) fn find_token_scheme<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    route: &Route,
) -> Result<(&'a [u8], Scheme), AuthError> {
    // A cookie route serves browsers by their cookie and API clients by `Authorization`; a
    // request with both carries two tokens.
    let from_header = match (&route.token_cookie, header_token(headers, route)?) {
        (Some(name), header) => match (cookie_token(headers, name)?, header) {
            (Some(_), Some(_)) => return Err(AuthError::MultipleTokens),
            (Some(cookie), None) => Some((cookie, Scheme::Bearer)),
            (None, header) => header,
        },
        (None, header) => header,
    };
    let from_query = query.and_then(query_token);
    match (from_header, from_query) {
        (Some(_), Some(_)) => Err(AuthError::MultipleTokens),
        (Some(t), None) => Ok(t),
        (None, Some(q)) => {
            if !route.token_in_query {
                return Err(AuthError::TokenNotAllowedHere);
            }
            q.map(|t| (t, Scheme::Bearer))
        }
        (None, None) => Err(AuthError::MissingToken),
    }
}

/// The token in the route's header: `Authorization`, or its `token_header`.
fn header_token<'a>(
    headers: &'a HeaderMap,
    route: &Route,
) -> Result<Option<(&'a [u8], Scheme)>, AuthError> {
    let mut values = headers.get_all(route.token_header_name()).iter();
    Ok(match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(AuthError::MultipleTokens),
        (None, _) => None,
        // A header of the route's own: its whole value, a `Bearer ` prefix allowed.
        (Some(v), None) if route.token_header.is_some() => {
            let v = v.as_bytes().trim_ascii();
            let token = match v.get(..7) {
                Some(p) if p.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii_start(),
                _ => v,
            };
            Some((token, Scheme::Bearer))
        }
        (Some(v), None) => {
            let v = v.as_bytes();
            let (scheme, rest) = match v.iter().position(|b| *b == b' ') {
                Some(i) => (&v[..i], &v[i + 1..]),
                None => (v, &b""[..]),
            };
            let spaces = rest.iter().take_while(|b| **b == b' ').count();
            if scheme.eq_ignore_ascii_case(b"bearer") {
                Some((&rest[spaces..], Scheme::Bearer))
            } else if scheme.eq_ignore_ascii_case(b"dpop") {
                Some((&rest[spaces..], Scheme::Dpop))
            } else {
                None
            }
        }
    })
}

/// Each cookie of the request's `Cookie` lines (HTTP/2 may send one line per cookie) as
/// `(name, value, pair)`, RFC 6265 5.4's `name=value` pairs split at `;`. A pair without `=` is
/// a value with an empty name, as browsers send a cookie set without one.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii(), pair),
            None => (&b""[..], pair, pair),
        })
}

/// The value of the route's `token_cookie`, its double quotes taken off (RFC 6265 4.1.1
/// allows them). Two cookies of the name are two tokens: a sibling subdomain can set a cookie
/// for the parent domain beside the site's own, and the browser sends both, in an order the
/// server cannot trust. An empty one is none (what a cookie being cleared leaves).
// Out of line: routes without a cookie keep the header path as it was inlined.
#[cold]
#[inline(never)]
fn cookie_token<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, AuthError> {
    let mut found = None;
    for (n, value, _) in cookies(headers) {
        if n == name.as_bytes() {
            if found.is_some() {
                return Err(AuthError::MultipleTokens);
            }
            found = Some(match value {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            });
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// Does the request carry a cookie of this name (empty or not, once or more)?
pub(crate) fn carries_cookie(headers: &HeaderMap, name: &str) -> bool {
    cookies(headers).any(|(n, _, _)| n == name.as_bytes())
}

/// Takes the cookie `name` out of the request, leaving the others in one `Cookie` line (as
/// an HTTP/2 request's are joined for HTTP/1.1, RFC 9113 8.2.3), or none if it was the only one.
pub(crate) fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !carries_cookie(headers, name) {
        return;
    }
    let mut kept = Vec::new();
    for (_, _, pair) in cookies(headers).filter(|(n, _, _)| *n != name.as_bytes()) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(http::header::COOKIE);
    // The pairs came from valid header values and are joined with "; ": still one.
    if let Ok(line) = http::HeaderValue::from_bytes(&kept) {
        if !kept.is_empty() {
            headers.insert(http::header::COOKIE, line);
        }
    }
}

/// A found token as text, if it is a b64token; else the request is malformed.
pub(crate) fn check_token(token: &[u8]) -> Result<&str, AuthError> {
    if !is_b64token(token) {
        return Err(AuthError::MalformedHeader);
    }
    // A b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| AuthError::MalformedHeader)
}

/// The value of one `key=value` query pair when its key is `access_token`: the one place that
/// says which pairs are the token, for reading it and for stripping it.
fn token_pair(pair: &str) -> Option<&str> {
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    (k == "access_token").then_some(v)
}

/// The `access_token` query parameter: `Some(Err)` when it appears twice.
fn query_token(q: &str) -> Option<Result<&[u8], AuthError>> {
    let mut found = None;
    for v in q.split('&').filter_map(token_pair) {
        if found.is_some() {
            return Some(Err(AuthError::MultipleTokens));
        }
        found = Some(v.as_bytes());
    }
    found.map(Ok)
}

/// `target` (path and query) without its `access_token` query parameters, the ones
/// [`find_token`] reads, for `forward.strip_authorization` on a `token_in_query` route: a token
/// in the URI would otherwise reach the upstream, and its access log. `None` when there is none.
pub(crate) fn strip_query_token(target: &str) -> Option<String> {
    let (path, query) = target.split_once('?')?;
    let (tokens, kept): (Vec<&str>, Vec<&str>) =
        query.split('&').partition(|p| token_pair(p).is_some());
    if tokens.is_empty() {
        return None;
    }
    Some(if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

#[cfg(test)]
mod tests {
    use super::{cookie_token, is_b64token, strip_cookie, strip_query_token};
    use http::{header::COOKIE, HeaderMap, HeaderValue};

    fn jar(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(COOKIE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn the_token_cookie_is_found_and_stripped_and_nothing_else() {
        for (lines, found, stripped) in [
            (&["at=t"][..], Some("t"), None),
            (&["a=1; at=t; b=2"][..], Some("t"), Some("a=1; b=2")),
            (&["a=1;at=\"t\";b"][..], Some("t"), Some("a=1; b")),
            (&["a=1", "at=t", "b=2"][..], Some("t"), Some("a=1; b=2")),
            (&["a=1; xat=t; at_=u"][..], None, Some("a=1; xat=t; at_=u")),
            (&["AT=t"][..], None, Some("AT=t")),
            (&["at="][..], None, None),
            (&["at=\"\""][..], None, None),
            (&["a=at=t"][..], None, Some("a=at=t")),
        ] {
            let mut h = jar(lines);
            let want = found.map(str::as_bytes);
            assert_eq!(cookie_token(&h, "at").unwrap(), want, "{lines:?}");
            strip_cookie(&mut h, "at");
            let left: Vec<_> = h
                .get_all(COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(left, Vec::from_iter(stripped), "{lines:?}");
        }
        assert!(cookie_token(&jar(&["at=t; at=t"]), "at").is_err());
        assert!(cookie_token(&jar(&["at=t", "at=u"]), "at").is_err());
    }

    /// Over a deterministic stream of odd `Cookie` lines (empty pairs, stray `=`, `;` and
    /// quotes, near names, one to three lines): a token is found exactly when one pair has the
    /// name, two are an error, and stripping leaves no such pair and every other one, in order.
    #[test]
    fn cookie_invariants_hold_on_generated_inputs() {
        const PIECES: &[&str] = &[
            "at=t", "at=", "at", "AT=t", "xat=t", "at_=t", "a=at=t", "at=\"t\"", "at=\"", "=", ";",
            "; ", " ", "=t", "b=2", "at =t", " at=t", "at= t ", "\"", "c=;at",
        ];
        let pairs = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .flat_map(|l| l.split(';'))
                .map(|p| p.trim_ascii().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let named = |p: &str| {
            p.split_once('=')
                .is_some_and(|(n, _)| n.trim_ascii() == "at")
        };
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut x = seed;
            let lines: Vec<String> = (0..1 + seed % 3)
                .map(|_| {
                    let mut l = String::new();
                    for _ in 0..x % 6 {
                        l.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
                        x = x.rotate_right(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    }
                    x = x.rotate_right(3).wrapping_add(1);
                    l
                })
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let mut h = jar(&refs);
            let all = pairs(&lines);
            let count = all.iter().filter(|p| named(p)).count();
            match cookie_token(&h, "at") {
                Err(_) => assert!(count > 1, "{lines:?}"),
                Ok(Some(t)) => {
                    assert_eq!(count, 1, "{lines:?}");
                    let pair = all.iter().find(|p| named(p)).unwrap();
                    let value = pair.split_once('=').unwrap().1.trim_ascii();
                    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                        Some(inner) => inner,
                        None => value,
                    };
                    assert_eq!(t, value.as_bytes(), "{lines:?}");
                    assert!(!t.is_empty(), "{lines:?}");
                }
                Ok(None) => assert!(count <= 1, "{lines:?}"),
            }
            strip_cookie(&mut h, "at");
            let left: Vec<String> = h
                .get_all(COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let left = pairs(&left);
            assert!(!left.iter().any(|p| named(p)), "{lines:?} -> {left:?}");
            let others: Vec<String> = all.into_iter().filter(|p| !named(p)).collect();
            assert_eq!(left, others, "{lines:?}");
        }
    }

    #[test]
    fn the_query_token_is_stripped_and_nothing_else() {
        for (target, want) in [
            ("/a?access_token=t", Some("/a")),
            ("/a?x=1&access_token=t&y=2", Some("/a?x=1&y=2")),
            ("/a?access_token=t&access_token=u", Some("/a")),
            ("/a?access_token", Some("/a")),
            ("/a?x=access_token&my_access_token=t", None),
            ("/a?x=1", None),
            ("/a", None),
        ] {
            assert_eq!(strip_query_token(target).as_deref(), want, "{target}");
        }
    }

    #[test]
    fn b64token_grammar() {
        for ok in ["a", "AZaz09-._~+/", "abc=", "abc==", "e30.e30.c2ln"] {
            assert!(is_b64token(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "=", "==", "a=b", "a b", "a,b", "a\"", "a\u{e9}", "a@", "a:", "`", "{", "[", "a\0",
        ] {
            assert!(!is_b64token(bad.as_bytes()), "{bad:?}");
        }
        // Every byte, against the grammar written the slow way.
        for b in 0..=255u8 {
            let slow = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64token(&[b'x', b, b'x']), slow, "byte {b}");
        }
    }
}
