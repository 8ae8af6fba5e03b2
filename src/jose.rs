//! JOSE names and encodings shared by the config check and the token check: the registered
//! signature algorithm names (RFC 7518 3.1, RFC 8037) and base64url as JWS uses it. A leaf.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::Algorithm;

/// base64url without padding, refusing padding and non-zero trailing bits, so each token has
/// exactly one encoding.
pub const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Only the exact registered names (RFC 7518 3.1, RFC 8037): `none`, `None`, `NONE`, `nOnE` and
/// anything unknown are refused.
pub(crate) fn algorithm(a: &str) -> Option<Algorithm> {
    Some(match a {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// The signing key for `alg` from a PEM private key (PKCS#8, or PKCS#1/SEC1 where the key type
/// has them).
pub(crate) fn encoding_key(
    pem: &[u8],
    alg: Algorithm,
) -> Result<jsonwebtoken::EncodingKey, String> {
    use jsonwebtoken::EncodingKey;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            return Err("not an asymmetric algorithm".into())
        }
        _ => EncodingKey::from_rsa_pem(pem),
    };
    key.map_err(|e| e.to_string())
}

/// A compact JWS of `claims` signed with `key`: `typ` is `JWT`, `kid` when given.
pub(crate) fn sign(
    claims: &serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<String, String> {
    use base64::Engine as _;
    let mut header = serde_json::json!({"alg": format!("{alg:?}"), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).map_err(|e| e.to_string())?;
    Ok(format!("{input}.{sig}"))
}

/// Signs a throwaway payload: does this PEM key sign `alg`?
pub(crate) fn sign_test(pem: &[u8], alg: Algorithm) -> Result<(), String> {
    let key = encoding_key(pem, alg)?;
    sign(&serde_json::json!({}), &key, alg, None).map(drop)
}

/// The algorithms a DPoP proof may use by default: asymmetric ones only (RFC 9449 4.3 step 5).
pub(crate) fn dpop_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::PS256,
    ]
}

/// Lower-case hex of `bytes` written into `out` (two bytes each, no allocation): request ids
/// and trace context on the request path.
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = HEX[usize::from(b >> 4)];
        o[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Lower-case hex of `bytes`: hashed keys in the shared store, ids in logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
