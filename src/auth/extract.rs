//! Where a token may come from: the `Authorization: Bearer` header (RFC 6750 2.1), and the
//! `access_token` query parameter (2.3) only on routes that opt in.

use super::AuthError;
use crate::routes::Route;
use http::{header, HeaderMap};

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Finds the one token of a request. A non-Bearer `Authorization` (e.g. Basic) counts as no
/// token (RFC 6750 3.1: no error code), two tokens are an `invalid_request`.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    route: &Route,
) -> Result<&'a str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let from_header = match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(AuthError::MultipleTokens),
        (None, _) => None,
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| AuthError::MalformedHeader)?;
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                let token = rest.trim_start_matches(' ');
                if !is_b64token(token) {
                    return Err(AuthError::MalformedHeader);
                }
                Some(token)
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
            q
        }
        (None, None) => Err(AuthError::MissingToken),
    }
}

/// The `access_token` query parameter: `Some(Err)` when it appears twice or is not a b64token.
fn query_token(q: &str) -> Option<Result<&str, AuthError>> {
    let mut found = None;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "access_token" {
            if found.is_some() {
                return Some(Err(AuthError::MultipleTokens));
            }
            found = Some(v);
        }
    }
    found.map(|v| {
        if is_b64token(v) {
            Ok(v)
        } else {
            Err(AuthError::MalformedHeader)
        }
    })
}
