//! A token's id in logs: a short prefix of its SHA-256, never the token.

/// SHA-256 of a token, for its id in logs ([`token_id`]). The verified-token cache is keyed by
/// the token itself, not by this.
pub fn sha256(token: &str) -> [u8; 32] {
    sha256_bytes(token.as_bytes())
}

/// SHA-256 of bytes.
pub fn sha256_bytes(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A token's id in logs and in `bearward explain`: the first 6 bytes of its SHA-256, in hex.
/// Short enough to say nothing about the token, long enough to correlate. Kept as bytes and
/// written out only when a log line is (not on every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenId([u8; 6]);

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The [`TokenId`] of a token with this SHA-256.
pub fn token_id(hash: &[u8; 32]) -> TokenId {
    let mut id = [0u8; 6];
    id.copy_from_slice(&hash[..6]);
    TokenId(id)
}
