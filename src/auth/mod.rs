//! The token check: extracting the bearer token (RFC 6750), validating it against the issuer's
//! keys or its introspection endpoint, and checking what binds it to the client. The
//! [`Authenticator`] here is the facade: it verifies a token (cache, then a JWT locally or an
//! opaque token by introspection); each other job has its own file:
//!
//! - `build`: making an [`Authenticator`] in one step, and what a reload keeps;
//! - `cache`, `front`: the verified-token cache and its per-thread front;
//! - `binding`: proof of possession (certificates, DPoP proofs, the replay store);
//! - `health`: `/readyz`'s text and the scrape-time gauges;
//! - `identity`: a verified caller's claims as header text;
//! - `token_id`: a token's short id for logs;
//! - `extract` (the token from the request), `token` (JWS parsing), `validator` (signature
//!   and claims), `keys`/`jwks` (key material, and fetching it), `introspect` (RFC 7662),
//!   `dpop` (RFC 9449 proofs), `error` (why, as an RFC 6750 answer).

mod binding;
mod build;
mod cache;
pub mod dpop;
mod error;
mod extract;
mod front;
mod health;
mod identity;
pub mod introspect;
pub mod jwks;
pub mod keys;
pub mod token;
mod token_id;
pub mod validator;

pub use binding::BindingRequest;
pub use identity::{epoch_secs, Identity, Minted};
pub use token_id::{sha256, sha256_bytes, token_id, TokenId};

pub use error::{AuthError, ErrorCode};
pub use extract::extract_token;
pub use extract::Scheme;
pub(crate) use extract::{carries_cookie, find_token_scheme, strip_cookie, strip_query_token};
pub use validator::{Trace, Verified};

use crate::routes::Route;
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use binding::DpopState;
use build::AbortOnDrop;
use cache::TokenCache;
use introspect::Introspector;
use jwks::IssuerKeys;
use std::sync::Arc;

/// Checks tokens for `auth = "bearer"` routes: owns the issuers' key stores (with their
/// refresh tasks) and the verified-token cache.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    cache: Option<TokenCache>,
    max_token_bytes: usize,
    /// One refresher per issuer, shared with the next snapshot when a reload keeps the issuer.
    tasks: Vec<Arc<AbortOnDrop>>,
    metrics: Arc<Metrics>,
    /// By issuer index: the introspection endpoint of issuers that take opaque tokens.
    introspectors: Vec<Option<Arc<Introspector>>>,
    /// The store shared by replicas, when `[cache]` names one.
    store: Option<Arc<SharedStore>>,
    /// DPoP proof checks and the replay cache (kept across reloads that keep `[dpop]`).
    dpop: Arc<DpopState>,
}

impl Authenticator {
    /// The store shared by replicas, if one is configured.
    pub fn store(&self) -> Option<&Arc<SharedStore>> {
        self.store.as_ref()
    }

    /// The issuers' key stores, in config order.
    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Entries in the verified-token cache.
    pub fn cached_tokens(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.store.entry_count())
    }

    /// Validates a token from any issuer, through the verified-token cache when it is on.
    pub async fn verify(&self, token: &str, trace: &mut Trace) -> Result<Arc<Verified>, AuthError> {
        self.verify_bytes(token.as_bytes(), None, trace).await
    }

    /// [`Authenticator::verify`] of a token whose characters are checked only on a cache miss,
    /// for `route` (its `issuers`) when given.
    pub(crate) async fn verify_bytes(
        &self,
        token: &[u8],
        route: Option<&Route>,
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        match self.cached(token, route) {
            Some(found) => found,
            None => self.verify_uncached(token, route, trace).await,
        }
    }

    /// The verified-token cache's answer, without an await: `None` on a miss (the token must be
    /// validated or introspected), else the cached token checked again for expiry and for
    /// `route`'s issuers. The request path calls it first, so the future of a full check is
    /// made only on a miss.
    pub(crate) fn cached(
        &self,
        token: &[u8],
        route: Option<&Route>,
    ) -> Option<Result<Arc<Verified>, AuthError>> {
        let v = match self.cache_lookup(token)? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        Some(self.for_route(v, route, &mut Trace::default()))
    }

    /// [`Authenticator::verify_bytes`] after [`Authenticator::cached`] missed.
    pub(crate) async fn verify_uncached(
        &self,
        token: &[u8],
        route: Option<&Route>,
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        let v = self.validate_fresh(token, route, trace).await?;
        self.for_route(v, route, trace)
    }

    fn for_route(
        &self,
        v: Arc<Verified>,
        route: Option<&Route>,
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        if route.is_some_and(|r| !r.takes_issuer(v.issuer)) {
            trace.note("issuer", false, || {
                format!(
                    "{:?} is not among the route's issuers",
                    self.issuers[v.issuer].config.issuer
                )
            });
            return Err(AuthError::IssuerNotAllowed);
        }
        Ok(v)
    }

    /// The cache of verified JWTs: the token if held and still good; `Some(Err(Expired))` if
    /// held and expired (expired is final); `None` otherwise, a miss counted once.
    fn cache_lookup(&self, token: &[u8]) -> Option<Result<Arc<Verified>, AuthError>> {
        // Size is the parser's first check; a token too large is never in the cache.
        // Only JWTs are kept in this cache, and a JWT has dots: an opaque token (when some
        // issuer takes them) skips the lookup, and is not counted as a miss.
        let c = self.cache.as_ref()?;
        if memchr::memchr(b'.', token).is_none() && self.introspectors.iter().any(Option::is_some) {
            return None;
        }
        let hash = c.hash(token);
        // The front first; moka on a front miss, and a moka hit moves into the front.
        let found = c.front_get(hash, token).or_else(|| {
            let v = c.store.get(token)?;
            c.front_put(hash, v.clone());
            Some(v)
        });
        self.metrics.token_cache(found.is_some());
        let v = found?;
        let verdict = self.still_good(&v);
        if verdict.is_ok() {
            return Some(Ok(v));
        }
        c.front_remove(hash, token);
        c.store.invalidate(token);
        // Expired is final; a key retired or gone stale means validating afresh.
        match verdict {
            Err(AuthError::Expired) => Some(Err(AuthError::Expired)),
            _ => None,
        }
    }

    /// Validation (or introspection) of a token the cache does not hold; a valid JWT with time
    /// left goes into the cache.
    async fn validate_fresh(
        &self,
        token: &[u8],
        route: Option<&Route>,
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        let token = extract::check_token(token)?;
        if let Some(order) = self.introspection_order(token, route) {
            return self.introspect(token, &order, trace).await;
        }
        let v = validator::validate(token, self.max_token_bytes, &self.issuers, trace).await;
        if matches!(v, Err(AuthError::UnknownKey) | Ok(_)) {
            self.metrics.key_lookup(v.is_ok());
        }
        let v = Arc::new(v?);
        if let Some(c) = &self.cache {
            if !v.ttl.is_zero() {
                c.store.insert(v.token.clone(), v.clone());
                c.front_put(c.hash(&v.token), v.clone());
            }
        }
        Ok(v)
    }

    /// The introspecting issuers to ask about `token`, in order; `None` when it is a JWT to
    /// validate locally: a JWS whose `iss` names an issuer that takes JWTs (`jwt`, `auto`), or
    /// any token when no issuer the route takes introspects (it then fails as a JWT would).
    fn introspection_order(&self, token: &str, route: Option<&Route>) -> Option<Vec<usize>> {
        if self.introspectors.iter().all(Option::is_none) {
            return None;
        }
        let jwt_issuer = token::parse(token, self.max_token_bytes)
            .ok()
            .and_then(|p| {
                let iss = p.claims.get("iss")?.as_str()?;
                let i = crate::config::issuer_index(self.issuers.iter().map(|i| &i.config), iss)?;
                self.issuers[i].config.takes_jwts().then_some(i)
            });
        if jwt_issuer.is_some() {
            return None;
        }
        let introspects = |i: &usize| self.introspectors.get(*i).is_some_and(Option::is_some);
        let order: Vec<usize> = match route.and_then(|r| r.issuers.as_ref()) {
            Some(list) => list.iter().copied().filter(introspects).collect(),
            None => (0..self.issuers.len()).filter(introspects).collect(),
        };
        (!order.is_empty()).then_some(order)
    }

    /// Asks the issuers in `order` until one vouches for the token. With none active, a 503
    /// from an endpoint that could not answer wins (it might have said yes), then a specific
    /// refusal, then `inactive_token`.
    async fn introspect(
        &self,
        token: &str,
        order: &[usize],
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        let max = order
            .iter()
            .map(|i| self.issuers[*i].config.max_token_bytes)
            .max()
            .unwrap_or(0);
        if token.len() > max {
            trace.note("size", false, || format!("{} bytes > {max}", token.len()));
            return Err(AuthError::TooLarge);
        }
        let hash = sha256(token);
        let mut refusal: Option<AuthError> = None;
        for i in order {
            let Some(intro) = self.introspectors.get(*i).and_then(Option::as_ref) else {
                continue;
            };
            trace.note("issuer", true, || {
                format!("asking {:?} (opaque token)", intro.issuer.issuer)
            });
            match intro.check(token, &hash, trace).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let rank = |e: &AuthError| match e {
                        _ if e.status() == http::StatusCode::SERVICE_UNAVAILABLE => 2,
                        AuthError::Inactive => 0,
                        _ => 1,
                    };
                    if refusal.as_ref().is_none_or(|r| rank(&e) > rank(r)) {
                        refusal = Some(e);
                    }
                }
            }
        }
        Err(refusal.unwrap_or(AuthError::Inactive))
    }

    /// A cached result holds while the token has not expired and its key is still published
    /// and fresh enough.
    fn still_good(&self, v: &Verified) -> Result<(), AuthError> {
        let issuer = &self.issuers[v.issuer];
        if validator::now() >= v.exp + issuer.config.leeway.as_secs_f64() {
            return Err(AuthError::Expired);
        }
        let key = match &v.key {
            Some(k) if k.kind != jwks::KeyKind::Hmac => k,
            _ => return Ok(()),
        };
        let set = issuer.usable().ok_or(AuthError::KeysUnavailable)?;
        if set.keys.iter().any(|k| Arc::ptr_eq(k, key)) {
            Ok(())
        } else {
            Err(AuthError::UnknownKey)
        }
    }
}
