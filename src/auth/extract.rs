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
    let mut values = headers.get_all(route.token_header_name()).iter();
    let from_header = match (values.next(), values.next()) {
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
    use super::{is_b64token, strip_query_token};

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
