//! Key material: a JWKS document parsed into verification keys, each checked for hygiene
//! (weak, misused, or leaked keys are refused one by one, with a reason), parsed once for every
//! algorithm it may verify. Where the document comes from and when it is fetched again is
//! [`super::jwks`]'s job.

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// The kind of a verification key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

/// A usable public key (or the configured HMAC secret).
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    pub alg: Option<Algorithm>,
    verifier: Verifier,
}

enum Verifier {
    /// A public key parsed once for each algorithm it may verify, so a signature check does
    /// not rebuild the key from its JWK components every time.
    Public(Vec<(Algorithm, ParsedPublicKey)>),
    /// The configured secret, checked by jsonwebtoken in constant time.
    Hmac(DecodingKey),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyKey {
    /// Does `signature` (decoded) over `message` verify under `alg` with this key? The
    /// algorithm must already have been checked with [`VerifyKey::fits`].
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature_b64: &str,
        signature: &[u8],
    ) -> bool {
        match &self.verifier {
            Verifier::Public(parsed) => parsed
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok()),
            Verifier::Hmac(key) => {
                jsonwebtoken::crypto::verify(signature_b64, message, key, alg).unwrap_or(false)
            }
        }
    }

    /// The configured HMAC secret as a key.
    pub fn hmac(secret: &[u8]) -> VerifyKey {
        VerifyKey {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            verifier: Verifier::Hmac(DecodingKey::from_secret(secret)),
        }
    }

    /// May this key verify a signature made with `alg`? (RFC 8725 3.1: an RSA key is never an
    /// HMAC secret, an EC key only for its own curve, and a key's own `alg` binds it.)
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.verifies(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl KeyKind {
    /// May a key of this kind verify `alg` at all?
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => self == KeyKind::Rsa,
            ES256 => self == KeyKind::EcP256,
            ES384 => self == KeyKind::EcP384,
            EdDSA => self == KeyKind::Ed25519,
            HS256 | HS384 | HS512 => self == KeyKind::Hmac,
            // Any algorithm a newer jsonwebtoken adds is refused until we decide on it.
            _ => false,
        }
    }
}

/// One issuer's keys at one moment.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
    pub fetched_at: Instant,
    /// Where they came from, for `explain` and logs.
    pub source: String,
}

/// Most keys kept from one JWKS; real IdPs publish a handful.
const MAX_KEYS: usize = 100;

/// A JWKS entry bearward refused, and why. Refusals are per key: one bad key never keeps the
/// others of the same document from being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedKey {
    /// The entry's `kid`, as published (cut to 64 characters), or `keys[i]` when it has none.
    pub kid: String,
    /// A fixed reason for metrics (`weak_key`, `unsupported`, ...).
    pub reason: &'static str,
    /// What was wrong, for the log line.
    pub detail: String,
}

impl std::fmt::Display for RefusedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kid {:?}: {} ({})", self.kid, self.detail, self.reason)
    }
}

/// Why one JWK is refused: a fixed reason and its detail.
pub(crate) type Refusal = (&'static str, String);

fn refuse<T>(reason: &'static str, detail: impl Into<String>) -> Result<T, Refusal> {
    Err((reason, detail.into()))
}

/// What a JWKS is checked against beyond the JWK rules themselves.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// The shortest RSA modulus accepted, in bits.
    pub min_rsa_bits: usize,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy { min_rsa_bits: 2048 }
    }
}

/// Parses a JWKS document, keeping the keys bearward can use and saying why others were left.
pub fn parse_jwks(
    body: &[u8],
    policy: KeyPolicy,
) -> Result<(Vec<Arc<VerifyKey>>, Vec<RefusedKey>), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (i, k) in keys.iter().enumerate().take(MAX_KEYS) {
        match parse_jwk(k, policy) {
            Ok(key) => out.push(Arc::new(key)),
            Err((reason, detail)) => refused.push(RefusedKey {
                kid: match k.get("kid").and_then(Value::as_str) {
                    Some(kid) => kid.chars().take(64).collect(),
                    None => format!("keys[{i}]"),
                },
                reason,
                detail,
            }),
        }
    }
    Ok((out, refused))
}

/// JWK members that hold private or symmetric key material (RFC 7518 6.2.2, 6.3.2, 6.4;
/// RFC 8037 2). A public JWKS that carries one has leaked a signing key: anyone can forge with it.
pub(crate) const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

pub(crate) fn parse_jwk(k: &Value, policy: KeyPolicy) -> Result<VerifyKey, Refusal> {
    let s = |name: &str| k.get(name).and_then(Value::as_str);
    let kid = match k.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return refuse("malformed", "kid is not a string"),
    };
    // RFC 7517 4.2 and 4.3: a key for signatures says `use: sig` or lists `verify`; anything
    // else was published for encryption (or for nothing) and must not verify a token.
    match k.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(u) => return refuse("not_for_signatures", format!("use {u} is not \"sig\"")),
    }
    if let Some(ops) = k.get("key_ops") {
        let Some(ops) = ops.as_array() else {
            return refuse("malformed", "key_ops is not an array");
        };
        if !ops.iter().any(|o| o == "verify") {
            return refuse("not_for_signatures", "key_ops does not allow \"verify\"");
        }
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| k.get(**m).is_some()) {
        // `oct` keys are refused below anyway; their `k` is not a leak of ours to report.
        if s("kty") != Some("oct") {
            return refuse(
                "private_key_published",
                format!("the JWKS publishes private key material ({m})"),
            );
        }
    }
    let alg = match k.get("alg") {
        None => None,
        Some(Value::String(a)) => match crate::jose::algorithm(a) {
            Some(a) => Some(a),
            None => {
                return refuse(
                    "alg_mismatch",
                    format!("alg {a:?} is not a signature algorithm bearward accepts"),
                )
            }
        },
        Some(_) => return refuse("malformed", "alg is not a string"),
    };
    let decode = |name: &str| -> Result<Vec<u8>, Refusal> {
        let Some(v) = s(name) else {
            return refuse("malformed", format!("no {name}"));
        };
        // Some IdPs pad JWK members; the value itself must still be canonical base64url.
        base64::Engine::decode(&crate::jose::B64, v.trim_end_matches('='))
            .or_else(|_| refuse("malformed", format!("{name} is not base64url")))
    };
    // The raw public key bytes aws-lc parses: PKCS#1 for RSA, an uncompressed point for EC,
    // the 32 bytes for Ed25519.
    let (kind, raw) = match s("kty") {
        Some("RSA") => {
            let (n, e) = (decode("n")?, decode("e")?);
            check_rsa(&n, &e, policy.min_rsa_bits)?;
            (KeyKind::Rsa, rsa_pkcs1_der(&n, &e))
        }
        Some("EC") => {
            let (kind, len) = match s("crv") {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                other => {
                    return refuse(
                        "unsupported",
                        format!("EC curve {other:?} is not supported"),
                    )
                }
            };
            let (xb, yb) = (decode("x")?, decode("y")?);
            // RFC 7518 6.2.1.2: the full coordinate length, leading zeros kept.
            if xb.len() != len || yb.len() != len {
                return refuse("malformed", format!("EC coordinates must be {len} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&xb);
            point.extend_from_slice(&yb);
            (kind, point)
        }
        Some("OKP") => match s("crv") {
            Some("Ed25519") => {
                let x = decode("x")?;
                check_ed25519(&x)?;
                (KeyKind::Ed25519, x)
            }
            other => {
                return refuse(
                    "unsupported",
                    format!("OKP curve {other:?} is not supported"),
                )
            }
        },
        Some("oct") => return refuse("symmetric", "symmetric keys are never taken from a JWKS"),
        other => return refuse("unsupported", format!("kty {other:?} is not supported")),
    };
    if let Some(a) = alg.filter(|a| !kind.verifies(*a)) {
        return refuse(
            "alg_mismatch",
            format!("alg {a:?} does not fit a {kind:?} key"),
        );
    }
    let mut parsed = Vec::new();
    for (a, verifier) in verifiers(kind) {
        if alg.is_some_and(|own| own != a) {
            continue;
        }
        // aws-lc checks here that an EC point is on its curve and not the point at infinity,
        // and that coordinates are below the field prime (tests: `ec_points_off_the_curve_*`).
        let p = ParsedPublicKey::new(verifier, &raw)
            .or_else(|e| refuse("weak_key", format!("the key does not parse: {e}")))?;
        parsed.push((a, p));
    }
    Ok(VerifyKey {
        kid,
        kind,
        alg,
        verifier: Verifier::Public(parsed),
    })
}

/// RSA public key hygiene (NIST SP 800-89 5.3.3, SP 800-56B 6.4.1.1): a modulus of at least
/// `min_bits` (counted exactly, not by bytes) and at most 8192, odd; an exponent that is odd,
/// greater than 1 and at most 2^32 (`e = 1` makes every "signature" its own message).
fn check_rsa(n: &[u8], e: &[u8], min_bits: usize) -> Result<(), Refusal> {
    let bits = |v: &[u8]| match v.iter().position(|b| *b != 0) {
        Some(i) => (v.len() - i) * 8 - v[i].leading_zeros() as usize,
        None => 0,
    };
    let n_bits = bits(n);
    if n_bits < min_bits {
        return refuse(
            "weak_key",
            format!("RSA modulus of {n_bits} bits; at least {min_bits} are required"),
        );
    }
    if n_bits > 8192 {
        return refuse(
            "unsupported",
            format!("RSA modulus of {n_bits} bits; at most 8192"),
        );
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return refuse("weak_key", "RSA modulus is even");
    }
    let e_bits = bits(e);
    if e.last().is_none_or(|b| b & 1 == 0) {
        return refuse("weak_key", "RSA public exponent is even");
    }
    if e_bits <= 1 {
        return refuse("weak_key", "RSA public exponent is 1");
    }
    if e_bits > 32 {
        return refuse("weak_key", "RSA public exponent is over 2^32");
    }
    Ok(())
}

/// Ed25519 public key hygiene, as libsodium and ed25519-dalek's `verify_strict` do it. A point
/// of small order (or one with a small-order component) lets a "signature" with R = identity and
/// S = 0 verify for any message under cofactorless verification, aws-lc's included: a universal
/// forgery. A non-canonical encoding (y >= p, or x = 0 with the sign bit set) names a point that
/// has a second spelling, which different verifiers treat differently.
fn check_ed25519(x: &[u8]) -> Result<(), Refusal> {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let Ok(bytes) = <[u8; 32]>::try_from(x) else {
        return refuse(
            "malformed",
            format!("Ed25519 key of {} bytes, not 32", x.len()),
        );
    };
    let Some(point) = CompressedEdwardsY(bytes).decompress() else {
        return refuse("weak_key", "Ed25519 key is not a point on the curve");
    };
    if point.compress().to_bytes() != bytes {
        return refuse("weak_key", "Ed25519 key is not canonically encoded");
    }
    if point.is_small_order() {
        return refuse("weak_key", "Ed25519 key is a point of small order");
    }
    if !point.is_torsion_free() {
        return refuse("weak_key", "Ed25519 key has a small-order component");
    }
    Ok(())
}

/// The aws-lc verification algorithm for each JWS algorithm a key kind may verify.
fn verifiers(kind: KeyKind) -> Vec<(Algorithm, &'static dyn VerificationAlgorithm)> {
    use aws_lc_rs::signature as sig;
    match kind {
        KeyKind::Rsa => vec![
            (Algorithm::RS256, &sig::RSA_PKCS1_2048_8192_SHA256),
            (Algorithm::RS384, &sig::RSA_PKCS1_2048_8192_SHA384),
            (Algorithm::RS512, &sig::RSA_PKCS1_2048_8192_SHA512),
            (Algorithm::PS256, &sig::RSA_PSS_2048_8192_SHA256),
            (Algorithm::PS384, &sig::RSA_PSS_2048_8192_SHA384),
            (Algorithm::PS512, &sig::RSA_PSS_2048_8192_SHA512),
        ],
        KeyKind::EcP256 => vec![(Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED)],
        KeyKind::EcP384 => vec![(Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED)],
        KeyKind::Ed25519 => vec![(Algorithm::EdDSA, &sig::ED25519)],
        KeyKind::Hmac => Vec::new(),
    }
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
fn rsa_pkcs1_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        match n {
            0..=127 => out.push(n as u8),
            128..=255 => out.extend_from_slice(&[0x81, n as u8]),
            _ => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
    }
    fn uint(out: &mut Vec<u8>, v: &[u8]) {
        let v = &v[v
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(v.len().saturating_sub(1))..];
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 8);
    uint(&mut body, n);
    uint(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_jwks_entries_are_left_out() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": "x", "y": "y"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "x", "y": "y"},
            {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "x"},
            {"kty": "RSA", "kid": "wrongalg", "alg": "ES256", "n": "AQAB", "e": "AQAB"},
        ]});
        let (keys, skipped) = parse_jwks(doc.to_string().as_bytes(), KeyPolicy::default()).unwrap();
        assert!(keys.is_empty());
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(parse_jwks(b"[]", KeyPolicy::default()).is_err());
        assert!(parse_jwks(b"not json", KeyPolicy::default()).is_err());
    }

    use aws_lc_rs::signature::KeyPair;
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        base64::Engine::encode(&crate::jose::B64, b)
    }

    fn unb64(s: &str) -> Vec<u8> {
        base64::Engine::decode(&crate::jose::B64, s).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The verdict on one JWK: `Ok(())` when it is kept, else its fixed reason.
    fn verdict(jwk: Value) -> Result<(), &'static str> {
        verdict_with(jwk, KeyPolicy::default())
    }

    fn verdict_with(jwk: Value, policy: KeyPolicy) -> Result<(), &'static str> {
        let doc = json!({ "keys": [jwk] });
        let (keys, refused) = parse_jwks(doc.to_string().as_bytes(), policy).unwrap();
        match (keys.len(), refused.as_slice()) {
            (1, []) => Ok(()),
            (0, [r]) => Err(r.reason),
            other => panic!("{other:?}"),
        }
    }

    /// The 2048-bit modulus of tests/fixtures/jwks-rsa1.json.
    fn rsa_n() -> Vec<u8> {
        let doc: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwks-rsa1.json")).unwrap();
        unb64(doc["keys"][0]["n"].as_str().unwrap())
    }

    fn rsa(n: &[u8], e: &[u8]) -> Value {
        json!({"kty": "RSA", "kid": "r", "n": b64(n), "e": b64(e)})
    }

    fn ed25519_public() -> [u8; 32] {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        pair.public_key().as_ref().try_into().unwrap()
    }

    fn okp(x: &[u8]) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(x)})
    }

    fn p256_public() -> Vec<u8> {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        pair.public_key().as_ref().to_vec()
    }

    fn ec(crv: &str, x: &[u8], y: &[u8]) -> Value {
        json!({"kty": "EC", "crv": crv, "kid": "ec", "x": b64(x), "y": b64(y)})
    }

    /// Why the Ed25519 checks exist: aws-lc alone verifies R = identity, S = 0 under the
    /// identity as public key, for any message.
    #[test]
    fn aws_lc_alone_takes_a_forgery_under_a_small_order_key() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        let key = ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, identity).unwrap();
        assert!(key.verify_sig(b"any payload at all", &sig).is_ok());
        assert_eq!(verdict(okp(&identity)), Err("weak_key"));
    }

    #[test]
    fn ed25519_keys_of_small_order_or_non_canonical_encoding_are_refused() {
        let good = ed25519_public();
        assert_eq!(verdict(okp(&good)), Ok(()));
        // The eight points of small order, in their canonical encodings (as libsodium lists
        // them), and their non-canonical spellings: y + p, and x = 0 with the sign bit set.
        let small_order = [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        ];
        let non_canonical = [
            // y = p + 1 (the identity again), y = p (y = 0), y = 2^255 - 1.
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            // The identity (x = 0) with the sign bit set: -0.
            "0100000000000000000000000000000000000000000000000000000000000080",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ];
        for h in small_order.iter().chain(&non_canonical) {
            assert_eq!(verdict(okp(&hex(h))), Err("weak_key"), "{h}");
        }
        // A real key plus a point of order 2: not small order, but not in the prime-order
        // subgroup either.
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let p = CompressedEdwardsY(good).decompress().unwrap();
        let order2 = CompressedEdwardsY(hex(small_order[1]).try_into().unwrap())
            .decompress()
            .unwrap();
        let mixed = (p + order2).compress().to_bytes();
        assert_eq!(verdict(okp(&mixed)), Err("weak_key"));
        // y with no x on the curve (y = 2 has none).
        let mut off = [0u8; 32];
        off[0] = 2;
        assert_eq!(verdict(okp(&off)), Err("weak_key"));
        assert_eq!(verdict(okp(&good[..31])), Err("malformed"));
        // Ed448 is not taken at all, so none of its weak keys can be.
        let ed448 = json!({"kty": "OKP", "crv": "Ed448", "kid": "e4", "x": b64(&[1; 57])});
        assert_eq!(verdict(ed448), Err("unsupported"));
    }

    #[test]
    fn rsa_keys_that_are_short_or_have_bad_exponents_or_even_moduli_are_refused() {
        let n = rsa_n();
        let f4 = [1, 0, 1];
        assert_eq!(verdict(rsa(&n, &f4)), Ok(()));
        assert_eq!(verdict(rsa(&n, &[3])), Ok(()));
        // A leading zero byte is tolerated: the size is counted in bits.
        let mut padded = vec![0];
        padded.extend_from_slice(&n);
        assert_eq!(verdict(rsa(&padded, &f4)), Ok(()));
        // 2047 bits in 256 bytes: a byte count would call it 2048.
        let mut short = n.clone();
        short[0] = 0x7f;
        assert_eq!(verdict(rsa(&short, &f4)), Err("weak_key"));
        assert_eq!(verdict(rsa(&n[..128], &f4)), Err("weak_key"));
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert_eq!(verdict(rsa(&even, &f4)), Err("weak_key"));
        for e in [
            &[1][..],
            &[0][..],
            &[][..],
            &[2][..],
            &[1, 0, 0][..],
            &[1, 0, 0, 0, 1][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert_eq!(verdict(rsa(&n, e)), Err("weak_key"), "e = {e:?}");
        }
        // 2^32 - 1 is odd and not over 2^32.
        assert_eq!(verdict(rsa(&n, &[0xff, 0xff, 0xff, 0xff])), Ok(()));
        let strict = KeyPolicy { min_rsa_bits: 3072 };
        assert_eq!(verdict_with(rsa(&n, &f4), strict), Err("weak_key"));
        let too_long = vec![0xc5; 1025];
        assert_eq!(verdict(rsa(&too_long, &f4)), Err("unsupported"));
    }

    #[test]
    fn ec_points_off_the_curve_or_at_infinity_are_refused_by_aws_lc() {
        let point = p256_public();
        let (x, y) = (&point[1..33], &point[33..]);
        assert_eq!(verdict(ec("P-256", x, y)), Ok(()));
        let mut y1 = y.to_vec();
        y1[31] ^= 1;
        assert_eq!(verdict(ec("P-256", x, &y1)), Err("weak_key"));
        assert_eq!(verdict(ec("P-256", &[0; 32], &[0; 32])), Err("weak_key"));
        // x = p, the field prime: a value no canonical coordinate takes.
        let p = hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
        assert_eq!(verdict(ec("P-256", &p, y)), Err("weak_key"));
        assert_eq!(verdict(ec("P-256", &[0xff; 32], y)), Err("weak_key"));
        // A P-256 point named as P-384 does not fit its length; padded, it is off that curve.
        let mut x48 = vec![0; 16];
        x48.extend_from_slice(x);
        let mut y48 = vec![0; 16];
        y48.extend_from_slice(y);
        assert_eq!(verdict(ec("P-384", &x48, &y48)), Err("weak_key"));
        assert_eq!(verdict(ec("P-384", x, y)), Err("malformed"));
    }

    #[test]
    fn keys_not_for_signatures_or_with_a_contradicting_alg_are_refused() {
        let n = rsa_n();
        let with = |mut k: Value, extra: Value| {
            for (name, v) in extra.as_object().unwrap() {
                k[name] = v.clone();
            }
            k
        };
        let r = rsa(&n, &[1, 0, 1]);
        let point = p256_public();
        let e = ec("P-256", &point[1..33], &point[33..]);
        let ed = okp(&ed25519_public());
        let cases = [
            (
                with(
                    r.clone(),
                    json!({"use": "sig", "key_ops": ["verify"], "alg": "PS256"}),
                ),
                Ok(()),
            ),
            (
                with(r.clone(), json!({"use": "enc"})),
                Err("not_for_signatures"),
            ),
            (
                with(r.clone(), json!({"use": ["sig"]})),
                Err("not_for_signatures"),
            ),
            (
                with(r.clone(), json!({"key_ops": ["encrypt", "wrapKey"]})),
                Err("not_for_signatures"),
            ),
            (
                with(r.clone(), json!({"key_ops": ["sign"]})),
                Err("not_for_signatures"),
            ),
            (
                with(r.clone(), json!({"key_ops": "verify"})),
                Err("malformed"),
            ),
            (
                with(r.clone(), json!({"alg": "ES256"})),
                Err("alg_mismatch"),
            ),
            (
                with(r.clone(), json!({"alg": "EdDSA"})),
                Err("alg_mismatch"),
            ),
            (
                with(r.clone(), json!({"alg": "HS256"})),
                Err("alg_mismatch"),
            ),
            (with(r.clone(), json!({"alg": "none"})), Err("alg_mismatch")),
            (
                with(r.clone(), json!({"alg": "RSA-OAEP"})),
                Err("alg_mismatch"),
            ),
            (with(r.clone(), json!({"alg": 256})), Err("malformed")),
            (
                with(r.clone(), json!({"d": "AQAB"})),
                Err("private_key_published"),
            ),
            (with(e.clone(), json!({"alg": "ES256"})), Ok(())),
            (
                with(e.clone(), json!({"alg": "ES384"})),
                Err("alg_mismatch"),
            ),
            (
                with(e.clone(), json!({"alg": "RS256"})),
                Err("alg_mismatch"),
            ),
            (
                with(e.clone(), json!({"d": "AQAB"})),
                Err("private_key_published"),
            ),
            (with(ed.clone(), json!({"alg": "EdDSA"})), Ok(())),
            (
                with(ed.clone(), json!({"alg": "ES256"})),
                Err("alg_mismatch"),
            ),
            (
                with(ed.clone(), json!({"d": "AQAB"})),
                Err("private_key_published"),
            ),
            (
                with(ed.clone(), json!({"use": "enc"})),
                Err("not_for_signatures"),
            ),
        ];
        for (jwk, want) in cases {
            assert_eq!(verdict(jwk.clone()), want, "{jwk}");
        }
    }

    #[test]
    fn one_bad_key_never_poisons_the_others() {
        let n = rsa_n();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut weak = okp(&identity);
        weak["kid"] = json!("weak");
        let mut good = rsa(&n, &[1, 0, 1]);
        good["kid"] = json!("good");
        let mut short = rsa(&n[..128], &[1, 0, 1]);
        short["kid"] = json!("short");
        let doc = json!({"keys": [weak, good, short, {"kty": "EC"}]});
        let (keys, refused) = parse_jwks(doc.to_string().as_bytes(), KeyPolicy::default()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        let named: Vec<_> = refused.iter().map(|r| (r.kid.as_str(), r.reason)).collect();
        assert_eq!(
            named,
            [
                ("weak", "weak_key"),
                ("short", "weak_key"),
                ("keys[3]", "unsupported")
            ]
        );
    }
}
