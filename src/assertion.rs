//! Identity assertions: a short-lived JWT bearward signs for one upstream (`[upstreams.NAME]
//! identity_assertion`), so an upstream that other paths can also reach tells a request that
//! came through bearward, and who made it, by checking a signature instead of trusting plain
//! headers. The public keys are published on the admin listener ([`KeyRing`]).
//!
//! An assertion that carries nothing of the request is signed once per token and upstream and
//! kept with the verified token ([`crate::auth::Minted`]) for half its lifetime, so the hot path
//! signs at most twice per token per lifetime; one bound to the request is signed every time.

use crate::auth::{Identity, Minted};
use crate::config::{AssertionConfig, RequestBinding};
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One upstream's signer.
pub struct Signer {
    id: u64,
    cfg: AssertionConfig,
    key: jsonwebtoken::EncodingKey,
    /// The assertion for requests without a token (routes with `auth = "none"`), kept as a
    /// token's is.
    anonymous: Minted,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.cfg.kid)
            .finish_non_exhaustive()
    }
}

/// The request an assertion may be bound to.
pub struct Request<'a> {
    pub route: &'a str,
    pub method: &'a http::Method,
    /// The origin-form target sent upstream.
    pub target: &'a str,
}

impl Signer {
    pub fn new(cfg: &AssertionConfig) -> Result<Signer, String> {
        Ok(Signer {
            id: crate::auth::Minted::new_minter(),
            key: crate::jose::encoding_key(&cfg.key_pem.0, cfg.alg)?,
            cfg: cfg.clone(),
            anonymous: Minted::default(),
        })
    }

    /// The header the assertion goes in.
    pub fn header(&self) -> &HeaderName {
        &self.cfg.header
    }

    /// The assertion for this request: kept, or signed now.
    pub fn value(
        &self,
        identity: Option<&Identity>,
        request: &Request<'_>,
    ) -> Result<HeaderValue, String> {
        let now = crate::auth::epoch_secs();
        if self.cfg.request != RequestBinding::None {
            return self.sign(identity, Some(request), now).map(|(v, _)| v);
        }
        let kept = identity.map_or(&self.anonymous, |id| &id.0.minted);
        if let Some(v) = kept.get(self.id, now) {
            return Ok(v);
        }
        let (v, until) = self.sign(identity, None, now)?;
        kept.put(self.id, v.clone(), until);
        Ok(v)
    }

    /// Signs an assertion at `now`; also gives when to stop reusing it (half its lifetime on).
    fn sign(
        &self,
        identity: Option<&Identity>,
        request: Option<&Request<'_>>,
        now: u64,
    ) -> Result<(HeaderValue, u64), String> {
        let cfg = &self.cfg;
        let mut exp = now + cfg.lifetime.as_secs();
        let mut claims = Map::new();
        if let Some(id) = identity {
            // Never valid past the token it speaks for.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            if id.0.exp.is_finite() && id.0.exp > 0.0 {
                exp = exp.min(id.0.exp as u64);
            }
            for name in &cfg.claims {
                let v = match name.as_str() {
                    "scope" => Some(Value::from(id.0.scopes.join(" "))),
                    "client_id" => id.0.principal.client.as_deref().map(Value::from),
                    _ => id.0.claims.get(name).cloned(),
                };
                if let Some(v) = v {
                    claims.insert(name.clone(), v);
                }
            }
        }
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness")?;
        claims.insert("iss".into(), cfg.issuer.clone().into());
        claims.insert("aud".into(), cfg.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), crate::jose::hex(&jti).into());
        if let Some(r) = request {
            claims.insert("route".into(), r.route.into());
            match cfg.request {
                RequestBinding::Hash => {
                    use base64::Engine as _;
                    let line = format!("{} {}", r.method, r.target);
                    let digest =
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes());
                    claims.insert("req".into(), crate::jose::B64.encode(digest).into());
                }
                RequestBinding::Include => {
                    claims.insert("htm".into(), r.method.as_str().into());
                    claims.insert("htu".into(), r.target.into());
                }
                RequestBinding::None => {}
            }
        }
        let jwt = crate::jose::sign(&Value::Object(claims), &self.key, cfg.alg, Some(&cfg.kid))?;
        let value = HeaderValue::try_from(jwt).map_err(|e| e.to_string())?;
        let until = (now + cfg.lifetime.as_secs() / 2).min(exp);
        Ok((value, until))
    }
}

/// Where the keys are published, on the admin listener and, optionally, the main one.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The JWK Set as an answer to `GET` or `HEAD`.
pub fn jwks_response(ring: &KeyRing) -> http::Response<crate::body::Body> {
    let mut resp = http::Response::new(crate::body::full(ring.document()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Short: a rotation's new key is published at once, and verifiers refetch on an unknown
    // `kid` anyway.
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// The public keys at `/.well-known/jwks.json`: the running config's, and those a reload
/// replaced, each until the assertions it signed have expired. Kept across reloads.
#[derive(Default)]
pub struct KeyRing(Mutex<Vec<Published>>);

struct Published {
    jwk: Value,
    /// The longest lifetime of an assertion it signs.
    lifetime: Duration,
    /// Set when a reload dropped it: published until then.
    retire_at: Option<Instant>,
}

/// Clock skew allowed to an upstream checking `exp`, on top of an old key's last lifetime.
const RETIRE_SKEW: Duration = Duration::from_secs(10);

impl KeyRing {
    /// The ring for a config's keys.
    pub fn new<'a>(configs: impl Iterator<Item = &'a AssertionConfig>) -> Arc<KeyRing> {
        let ring = Arc::new(KeyRing::default());
        ring.publish(configs);
        ring
    }

    /// Makes `configs`' keys the current ones; keys no longer in it stay until their last
    /// assertions have expired.
    pub fn publish<'a>(&self, configs: impl Iterator<Item = &'a AssertionConfig>) {
        let mut ring = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for p in ring.iter_mut() {
            if p.retire_at.is_none() {
                p.retire_at = Some(now + p.lifetime + RETIRE_SKEW);
            }
        }
        for cfg in configs {
            match ring.iter_mut().find(|p| p.jwk == cfg.jwk) {
                Some(p) if p.retire_at.is_some() => {
                    p.retire_at = None;
                    p.lifetime = cfg.lifetime;
                }
                Some(p) => p.lifetime = p.lifetime.max(cfg.lifetime),
                None => ring.push(Published {
                    jwk: cfg.jwk.clone(),
                    lifetime: cfg.lifetime,
                    retire_at: None,
                }),
            }
        }
        ring.retain(|p| p.retire_at.is_none_or(|t| t > now));
    }

    /// Whether any key is published (the admin listener answers 404 otherwise).
    pub fn is_empty(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The JWK Set document (RFC 7517 5).
    pub fn document(&self) -> String {
        let mut ring = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        ring.retain(|p| p.retire_at.is_none_or(|t| t > now));
        let keys: Vec<&Value> = ring.iter().map(|p| &p.jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}
