//! DPoP proofs (RFC 9449): checking one proof against its request and its access token
//! (section 4.3), the replay cache of proof ids, and server nonces (section 8).
//!
//! A proof is checked in this order, cheapest refusal first: size -> JWS shape -> header
//! (`typ`, `alg` in the allow-list, `jwk` a public key only) -> the key's RFC 7638 thumbprint
//! equals the token's `cnf.jkt` -> signature -> `htm`, `htu`, `iat` window, `ath`, `nonce` ->
//! `jti` never seen within the window. Parsed proof keys are kept by thumbprint, so a client
//! that signs many proofs with one key has it parsed once.

use super::keys::{parse_jwk, KeyPolicy, VerifyKey};
use super::token::parse_object;
use crate::config::DpopConfig;
use crate::jose::B64;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest proof read: a proof carries its public key, and an RSA-4096 JWK is under 1 KiB.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Why a proof was refused: a fixed reason for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Missing,
    Multiple,
    Malformed,
    Type,
    Algorithm,
    Key,
    KeyMismatch,
    Signature,
    Method,
    Uri,
    Age,
    TokenHash,
    Replayed,
    Nonce,
}

impl ProofError {
    pub fn reason(self) -> &'static str {
        match self {
            ProofError::Missing => "dpop_proof_missing",
            ProofError::Multiple => "dpop_proof_multiple",
            ProofError::Malformed => "dpop_proof_malformed",
            ProofError::Type => "dpop_proof_typ",
            ProofError::Algorithm => "dpop_proof_alg",
            ProofError::Key => "dpop_proof_jwk",
            ProofError::KeyMismatch => "dpop_key_mismatch",
            ProofError::Signature => "dpop_proof_signature",
            ProofError::Method => "dpop_proof_htm",
            ProofError::Uri => "dpop_proof_htu",
            ProofError::Age => "dpop_proof_iat",
            ProofError::TokenHash => "dpop_proof_ath",
            ProofError::Replayed => "dpop_proof_replayed",
            ProofError::Nonce => "use_dpop_nonce",
        }
    }

    /// The fixed `error_description`.
    pub fn describe(self) -> &'static str {
        match self {
            ProofError::Missing => "no DPoP proof",
            ProofError::Multiple => "more than one DPoP proof",
            ProofError::Malformed => "malformed DPoP proof",
            ProofError::Type => "DPoP proof typ is not dpop+jwt",
            ProofError::Algorithm => "DPoP proof algorithm not accepted",
            ProofError::Key => "DPoP proof jwk is not a usable public key",
            ProofError::KeyMismatch => "DPoP proof key is not the one the token is bound to",
            ProofError::Signature => "DPoP proof signature does not verify",
            ProofError::Method => "DPoP proof htm does not match the request method",
            ProofError::Uri => "DPoP proof htu does not match the request URI",
            ProofError::Age => "DPoP proof iat is outside the accepted window",
            ProofError::TokenHash => "DPoP proof ath does not match the access token",
            ProofError::Replayed => "DPoP proof has been used before",
            ProofError::Nonce => "a DPoP nonce is required",
        }
    }
}

/// What the request says a proof must match.
pub struct Request<'a> {
    pub method: &'a str,
    /// The request URI without query and fragment, normalized ([`normalize_htu`]).
    pub htu: &'a str,
    pub access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
}

/// A proof that passed every check but the replay cache: its id, to be recorded.
#[derive(Debug)]
pub struct Checked {
    /// SHA-256 of the key thumbprint and `jti`: the replay cache's key.
    pub replay_key: [u8; 32],
}

/// Proof checks with their caches: parsed keys by thumbprint, and (when configured) nonces.
pub struct Verifier {
    pub config: DpopConfig,
    keys: moka::sync::Cache<String, Arc<VerifyKey>>,
    nonces: Option<Nonces>,
    /// `algs` of a DPoP challenge, written once: every 401 carries one or may.
    algs: String,
}

impl Verifier {
    pub fn new(config: DpopConfig) -> Verifier {
        let nonces = config.nonce.then(|| Nonces::new(&config));
        let algs = config
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        Verifier {
            keys: moka::sync::Cache::builder().max_capacity(10_000).build(),
            nonces,
            config,
            algs,
        }
    }

    /// The nonce a client must use now, when nonces are on.
    pub fn current_nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|n| n.at(n.window()))
    }

    /// RFC 9449 4.3 steps 2 to 11 (all but the replay check, which [`ReplayCache`] does).
    pub fn check(&self, proof: &str, req: &Request<'_>, now: f64) -> Result<Checked, ProofError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed);
        }
        let mut parts = proof.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProofError::Malformed);
        };
        let decode = |x: &str| B64.decode(x).map_err(|_| ProofError::Malformed);
        let header = parse_object(&decode(h)?).map_err(|_| ProofError::Malformed)?;
        let claims = parse_object(&decode(p)?).map_err(|_| ProofError::Malformed)?;
        let signature = decode(s)?;
        if signature.is_empty() || header.contains_key("crit") {
            return Err(ProofError::Malformed);
        }
        // RFC 9449 4.2: `typ` is exactly this media type (compared as media types are).
        let typ = header.get("typ").and_then(Value::as_str);
        if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
            return Err(ProofError::Type);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(crate::jose::algorithm)
            .filter(|a| self.config.algorithms.contains(a))
            .ok_or(ProofError::Algorithm)?;
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or(ProofError::Key)?;
        // RFC 9449 4.3 step 7: a public key only. Checked here, before the key cache: the
        // thumbprint leaves private members out, so a cached key would not see them.
        if super::keys::PRIVATE_MEMBERS
            .iter()
            .any(|m| jwk.contains_key(*m))
        {
            return Err(ProofError::Key);
        }
        let thumbprint = thumbprint(jwk).ok_or(ProofError::Key)?;
        // The cheap refusal before any signature work: a proof by another key.
        if !ct_eq(thumbprint.as_bytes(), req.jkt.as_bytes()) {
            return Err(ProofError::KeyMismatch);
        }
        let key = self.key(&thumbprint, jwk)?;
        if !key.fits(alg) {
            return Err(ProofError::Algorithm);
        }
        let input = &proof[..h.len() + 1 + p.len()];
        if !key.verify(alg, input.as_bytes(), s, &signature) {
            return Err(ProofError::Signature);
        }
        if claims.get("htm").and_then(Value::as_str) != Some(req.method) {
            return Err(ProofError::Method);
        }
        let htu = claims
            .get("htu")
            .and_then(Value::as_str)
            .and_then(normalize_htu)
            .ok_or(ProofError::Uri)?;
        if htu != req.htu {
            return Err(ProofError::Uri);
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .filter(|f| f.is_finite())
            .ok_or(ProofError::Age)?;
        let (age, leeway) = (
            self.config.max_age.as_secs_f64(),
            self.config.leeway.as_secs_f64(),
        );
        if iat > now + leeway || iat < now - age - leeway {
            return Err(ProofError::Age);
        }
        let ath = claims
            .get("ath")
            .and_then(Value::as_str)
            .ok_or(ProofError::TokenHash)?;
        let want = B64.encode(super::sha256(req.access_token));
        if !ct_eq(ath.as_bytes(), want.as_bytes()) {
            return Err(ProofError::TokenHash);
        }
        if let Some(n) = &self.nonces {
            let given = claims.get("nonce").and_then(Value::as_str);
            if !given.is_some_and(|g| n.valid(g)) {
                return Err(ProofError::Nonce);
            }
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(ProofError::Malformed)?;
        let mut id = Vec::with_capacity(thumbprint.len() + 1 + jti.len());
        id.extend_from_slice(thumbprint.as_bytes());
        id.push(b'.');
        id.extend_from_slice(jti.as_bytes());
        Ok(Checked {
            replay_key: super::sha256_bytes(&id),
        })
    }

    /// The proof's key, parsed once per thumbprint. The thumbprint covers every member the key
    /// is built from, so two JWKs with one thumbprint are the same key.
    fn key(
        &self,
        thumbprint: &str,
        jwk: &Map<String, Value>,
    ) -> Result<Arc<VerifyKey>, ProofError> {
        if let Some(k) = self.keys.get(thumbprint) {
            return Ok(k);
        }
        // parse_jwk refuses weak keys (and private members again) as it does in a JWKS.
        let key = parse_jwk(&Value::Object(jwk.clone()), KeyPolicy::default())
            .map_err(|_| ProofError::Key)?;
        let key = Arc::new(key);
        self.keys.insert(thumbprint.to_owned(), key.clone());
        Ok(key)
    }

    /// The algorithms proofs may use, space-separated, for `algs` in challenges and metadata.
    pub fn algs(&self) -> &str {
        &self.algs
    }
}

/// Equal without a timing signal on where they differ: aws-lc's comparison, which the
/// optimizer cannot turn into an early exit as it may a hand-written fold.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// RFC 7638 thumbprint (SHA-256, base64url) of a public JWK: its required members only, in
/// lexicographic order, as compact JSON. `None` for a key type bearward does not take.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let s = |n: &str| jwk.get(n).and_then(Value::as_str);
    let q = |v: &str| serde_json::to_string(v).ok();
    let canonical = match s("kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            q(s("crv")?)?,
            q(s("x")?)?,
            q(s("y")?)?
        ),
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(s("e")?)?, q(s("n")?)?),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            q(s("crv")?)?,
            q(s("x")?)?
        ),
        _ => return None,
    };
    Some(B64.encode(super::sha256(&canonical)))
}

/// An `htu` (or a request URI) as RFC 9449 4.3 step 9 compares it: query and fragment dropped,
/// scheme and host lower-cased, the scheme's default port dropped (RFC 3986 6.2.2, 6.2.3), and
/// percent-encodings' hex upper-cased. `None` for anything that is not an absolute http(s) URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?;
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    if authority.ends_with(default) {
        authority.truncate(authority.len() - default.len());
    }
    let mut out = format!("{scheme}://{authority}");
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push('%');
            out.push((bytes[i + 1] as char).to_ascii_uppercase());
            out.push((bytes[i + 2] as char).to_ascii_uppercase());
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// Proof ids seen within the window: two generations of sets, the older dropped as the window
/// turns, so an id is remembered for at least one window and at most two. Bounded: when full,
/// a new proof is refused (503) rather than an old id forgotten, which would let it replay.
/// (A cache with eviction, moka's included, may also decline to admit a new entry under
/// pressure; a replay cache must never do either.)
pub struct ReplayCache {
    shards: Vec<Mutex<Generations>>,
    window: Duration,
    max_per_shard: usize,
}

struct Generations {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    turned: Instant,
}

/// The replay cache's answer for one proof id.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Replayed,
    Full,
}

const SHARDS: usize = 16;

impl ReplayCache {
    pub fn new(window: Duration, max_entries: usize) -> ReplayCache {
        ReplayCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashSet::new(),
                        previous: HashSet::new(),
                        turned: Instant::now(),
                    })
                })
                .collect(),
            window,
            max_per_shard: (max_entries / SHARDS).max(1),
        }
    }

    /// Records `id`; says whether it was new.
    pub fn insert(&self, id: [u8; 32]) -> Seen {
        let shard = &self.shards[usize::from(id[0]) % SHARDS];
        let mut g = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.turned.elapsed() >= self.window {
            let old = std::mem::take(&mut g.current);
            g.previous = if g.turned.elapsed() >= self.window * 2 {
                HashSet::new()
            } else {
                old
            };
            g.turned = Instant::now();
        }
        if g.current.contains(&id) || g.previous.contains(&id) {
            return Seen::Replayed;
        }
        if g.current.len() + g.previous.len() >= self.max_per_shard {
            return Seen::Full;
        }
        g.current.insert(id);
        Seen::New
    }
}

/// Server nonces (RFC 9449 8): HMAC-SHA256 of the current time window under a key, so every
/// replica with the same `nonce_secret_file` issues and accepts the same nonces without
/// sharing state; the current and the previous window's nonce are accepted.
struct Nonces {
    key: aws_lc_rs::hmac::Key,
    lifetime: Duration,
}

impl Nonces {
    fn new(config: &DpopConfig) -> Nonces {
        let secret = match &config.nonce_secret {
            Some(s) => s.0.clone(),
            None => {
                let mut b = [0u8; 32];
                // A per-process key: nonces then hold on this replica only.
                let _ = aws_lc_rs::rand::fill(&mut b);
                b.to_vec()
            }
        };
        Nonces {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
            lifetime: config.nonce_lifetime,
        }
    }

    fn window(&self) -> u64 {
        let now = super::validator::now().max(0.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let w = (now / self.lifetime.as_secs_f64().max(1.0)) as u64;
        w
    }

    fn at(&self, window: u64) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, &window.to_be_bytes());
        B64.encode(&tag.as_ref()[..18])
    }

    fn valid(&self, given: &str) -> bool {
        let w = self.window();
        [w, w.saturating_sub(1)]
            .iter()
            .any(|x| ct_eq(self.at(*x).as_bytes(), given.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn htu_normalization() {
        let n = |u| normalize_htu(u);
        assert_eq!(
            n("https://API.Example.com:443/a/b?x=1#f").as_deref(),
            Some("https://api.example.com/a/b")
        );
        assert_eq!(n("HTTP://h:80").as_deref(), Some("http://h/"));
        assert_eq!(
            n("http://h:8080/a%2fb").as_deref(),
            Some("http://h:8080/a%2Fb")
        );
        assert_eq!(n("ftp://h/a"), None);
        assert_eq!(n("/relative"), None);
        assert_eq!(n("https://user@h/a"), None);
        assert_eq!(n("https:///a"), None);
    }

    #[test]
    fn the_replay_cache_remembers_for_a_window_and_refuses_when_full() {
        let c = ReplayCache::new(Duration::from_millis(100), 16 * 2);
        let id = |n: u8| {
            let mut a = [0u8; 32];
            a[0] = 0;
            a[1] = n;
            a
        };
        assert_eq!(c.insert(id(1)), Seen::New);
        assert_eq!(c.insert(id(1)), Seen::Replayed);
        assert_eq!(c.insert(id(2)), Seen::New);
        assert_eq!(c.insert(id(3)), Seen::Full, "two per shard");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.insert(id(1)), Seen::Replayed, "kept for a second window");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(c.insert(id(1)), Seen::New, "forgotten after two");
    }
}
