//! Hardened JWS compact parsing, before any crypto (RFC 7515, RFC 8725):
//! - exactly three base64url parts, no padding, no non-canonical encodings (trailing bits);
//! - header and payload are JSON objects without duplicate member names;
//! - `alg` is a known signature algorithm, never `none` in any spelling;
//! - any `crit` is refused: bearward understands no JWS extensions;
//! - `jwk`, `jku`, `x5u`, `x5c` are ignored: keys never come from the token.

use super::AuthError;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

pub use crate::jose::B64;

/// The JOSE header fields bearward uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The third part, still base64url (jsonwebtoken's verify decodes it).
    pub signature: &'a str,
}

/// Parses a compact JWS; `max_len` is checked first.
pub fn parse(token: &str, max_len: usize) -> Result<Parsed<'_>, AuthError> {
    if token.len() > max_len {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        // An empty signature is what `alg: none` tokens carry.
        return Err(AuthError::Malformed);
    }
    let header_bytes = B64.decode(h).map_err(|_| AuthError::Malformed)?;
    let payload_bytes = B64.decode(p).map_err(|_| AuthError::Malformed)?;
    // Decoded only to prove it is canonical; verification decodes it again.
    B64.decode(s).map_err(|_| AuthError::Malformed)?;

    let header = parse_object(&header_bytes)?;
    let claims = parse_object(&payload_bytes)?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) => parse_alg(a)?,
        _ => return Err(AuthError::Malformed),
    };
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(Parsed {
        header: Header { alg, kid, typ },
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// [`crate::jose::algorithm`], refused as a token's `alg`.
pub fn parse_alg(a: &str) -> Result<Algorithm, AuthError> {
    crate::jose::algorithm(a).ok_or(AuthError::BadAlgorithm)
}

/// A JSON object whose top-level member names are unique (RFC 7515 5.2 / RFC 7519 4 allow a
/// parser to refuse duplicates; two parsers that keep different ones disagree on the claims).
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, AuthError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let obj = (&mut de)
        .deserialize_map(UniqueMap)
        .map_err(|_| AuthError::Malformed)?;
    de.end().map_err(|_| AuthError::Malformed)?;
    Ok(obj)
}

struct UniqueMap;

impl<'de> Visitor<'de> for UniqueMap {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with unique member names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate member"));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(json: &str) -> String {
        B64.encode(json.as_bytes())
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.{}", enc(h), enc(p), B64.encode(b"sig"))
    }

    #[test]
    fn a_well_formed_token_parses() {
        let t = tok(
            r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#,
            r#"{"iss":"i","exp":1}"#,
        );
        let p = parse(&t, 8192).unwrap();
        assert_eq!(p.header.alg, Algorithm::RS256);
        assert_eq!(p.header.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["iss"], "i");
        assert_eq!(p.signing_input, &t[..t.rfind('.').unwrap()]);
    }

    #[test]
    fn malformed_shapes_are_refused() {
        let good_h = enc(r#"{"alg":"RS256"}"#);
        let good_p = enc(r#"{"iss":"i"}"#);
        let sig = B64.encode(b"sig");
        let cases = [
            String::new(),
            "a.b".to_owned(),
            format!("{good_h}.{good_p}"),
            format!("{good_h}.{good_p}.{sig}.x"),
            format!("{good_h}.{good_p}."),
            format!("{good_h}=.{good_p}.{sig}"),
            format!("{good_h}.{good_p}.{sig}=="),
            format!("{good_h}.{good_p}.{sig}+"),
            format!("{good_h}.{good_p}.c2lnB"), // non-zero trailing bits
            format!("{}.{good_p}.{sig}", enc("[1]")),
            format!("{}.{good_p}.{sig}", enc(r#"{"alg":"RS256","alg":"HS256"}"#)),
            format!("{good_h}.{}.{sig}", enc(r#"{"iss":"a","iss":"b"}"#)),
            format!("{good_h}.{}.{sig}", enc(r#"{"iss":"a"} x"#)),
            format!(
                "{}.{good_p}.{sig}",
                enc(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#)
            ),
            format!("{}.{good_p}.{sig}", enc(r#"{"kid":1,"alg":"RS256"}"#)),
            format!("{}.{good_p}.{sig}", enc(r#"{"typ":"JWT"}"#)),
        ];
        for c in &cases {
            assert_eq!(parse(c, 8192).unwrap_err(), AuthError::Malformed, "{c}");
        }
    }

    #[test]
    fn none_in_any_spelling_is_refused() {
        for alg in [
            "none",
            "None",
            "NONE",
            "nOnE",
            "",
            "RS256 ",
            "rs256",
            "HS256\u{0}",
        ] {
            let h = serde_json::json!({ "alg": alg }).to_string();
            let t = tok(&h, r#"{"iss":"i"}"#);
            assert_eq!(
                parse(&t, 8192).unwrap_err(),
                AuthError::BadAlgorithm,
                "{alg:?}"
            );
        }
    }

    #[test]
    fn size_limit_comes_first() {
        assert_eq!(
            parse(&"a".repeat(9000), 8192).unwrap_err(),
            AuthError::TooLarge
        );
    }
}
