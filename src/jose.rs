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
