//! The token check: extracting the bearer token (RFC 6750), validating it against the issuer's
//! keys, and checking the route's scopes.

pub mod dpop;
mod error;
mod extract;
mod front;
pub mod introspect;
pub mod jwks;
pub mod keys;
pub mod token;
pub mod validator;

pub use error::{AuthError, ErrorCode};
pub use extract::extract_token;
pub use extract::Scheme;
pub(crate) use extract::{find_token_scheme, strip_query_token};
pub use validator::{Trace, Verified};

use crate::config::Config;
use crate::routes::Route;
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use http::HeaderValue;
use introspect::Introspector;
use jwks::IssuerKeys;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::Duration;

/// A validated caller: the claims the upstream may be told about. Shared with the
/// verified-token cache, so a cache hit copies nothing.
#[derive(Debug, Clone)]
pub struct Identity(pub Arc<Verified>);

impl Identity {
    /// The header value for a claim (`scope` gives the normalized scope list, space-separated).
    pub fn header_value(&self, claim: &str) -> Option<HeaderValue> {
        let text = if claim == "scope" {
            self.0.scopes.join(" ")
        } else {
            // A top-level claim of exactly this name first, then a dotted path into objects.
            // The path is parsed only when no top-level claim has exactly this name.
            let found = self.0.claims.get(claim).or_else(|| {
                let path = crate::routes::claim_path(claim)?;
                crate::routes::claim_at(&self.0.claims, claim, &path)
            });
            value_text(found?)?
        };
        HeaderValue::from_str(&text).ok()
    }

    /// A claim's text as [`Identity::header_value`] gives it, with the dotted path parsed
    /// once by the caller (`path`: [`crate::routes::claim_path`] of `claim`).
    pub fn claim_text(&self, claim: &str, path: &[String]) -> Option<String> {
        if claim == "scope" {
            return Some(self.0.scopes.join(" "));
        }
        value_text(crate::routes::claim_at(&self.0.claims, claim, path)?)
    }
}

/// A claim's value as header text: strings as they are, numbers and booleans written out,
/// arrays of strings joined with `,`; objects and null have none.
fn value_text(value: &serde_json::Value) -> Option<String> {
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
}

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

/// The DPoP verifier and the proof ids seen.
pub struct DpopState {
    pub verifier: dpop::Verifier,
    replay: dpop::ReplayCache,
}

impl DpopState {
    fn new(config: &crate::config::DpopConfig) -> DpopState {
        DpopState {
            replay: dpop::ReplayCache::new(replay_window(config), config.replay_cache_entries),
            verifier: dpop::Verifier::new(config.clone()),
        }
    }
}

/// How long a proof id must be remembered: a proof is accepted while its `iat` is within
/// [now - max_age - leeway, now + leeway], a span of max_age + 2 x leeway.
fn replay_window(config: &crate::config::DpopConfig) -> Duration {
    config.max_age + config.leeway * 2
}

/// What a request brings to the binding check of its token.
pub struct BindingRequest<'a> {
    pub scheme: Scheme,
    /// The request's headers, for its `DPoP` proofs.
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    /// The request URI as a proof's `htu` must name it (normalized); `None` when it cannot be
    /// known (no Host).
    pub htu: Option<String>,
    pub token: &'a str,
    /// SHA-256 of the client certificate: the connection's verified one, or one a trusted proxy
    /// passed on.
    pub client_cert: Option<[u8; 32]>,
    pub require_bound: bool,
}

/// Stops a background task when the last snapshot using it is gone.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The verified-token cache, keyed by the token itself. A hit is an exact byte comparison, so
/// no two tokens can share an entry whatever the hash does, and the hash only places entries.
/// That hash is foldhash, seeded at random per process: a moka hit costs 0.33 µs with it
/// against 0.75 µs when the key was the token's SHA-256, and a hit in the thread's front
/// (`front.rs`) 0.21 µs (`cargo bench --bench validation`).
/// Only tokens that verified are inserted, so an attacker cannot choose what fills a bucket.
/// The key is shared with the entry (`Verified::token`), so an entry holds its token once.
type Store = Cache<Arc<[u8]>, Arc<Verified>, foldhash::quality::RandomState>;

/// The shared store and this authenticator's place in the per-thread fronts (`front.rs`).
struct TokenCache {
    store: Store,
    /// This authenticator's id in the fronts, and their size.
    front_owner: u64,
    front_sets: usize,
    /// Places tokens in the fronts' sets.
    hasher: foldhash::quality::RandomState,
}

/// Ids for authenticators, so that a per-thread front never serves one config's entries
/// under another.
static FRONT_OWNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TokenCache {
    fn hash(&self, token: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, token)
    }

    fn front_get(&self, hash: u64, token: &[u8]) -> Option<Arc<Verified>> {
        front::get(self.front_owner, self.front_sets, hash, token)
    }

    fn front_put(&self, hash: u64, v: Arc<Verified>) {
        front::put(self.front_owner, self.front_sets, hash, v);
    }

    fn front_remove(&self, hash: u64, token: &[u8]) {
        front::remove(self.front_owner, self.front_sets, hash, token);
    }
}

/// Each cached token lives no longer than its own `exp` (plus leeway), at most an hour.
struct TokenExpiry;

impl moka::Expiry<Arc<[u8]>, Arc<Verified>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _: &Arc<[u8]>,
        v: &Arc<Verified>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl Authenticator {
    /// Key stores for every issuer, each with a background refresher (needs a Tokio runtime),
    /// and the verified-token cache.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Authenticator {
        Authenticator::rebuild(config, None, metrics)
    }

    /// For a reloaded config: issuers whose config did not change keep their key store and
    /// refresher (no refetch, no gap); the others start afresh. The verified-token cache starts
    /// empty, since audiences or leeways may have changed.
    pub fn rebuild(
        config: &Config,
        previous: Option<&Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        let client = jwks::http_client();
        let mut issuers = Vec::new();
        let mut tasks = Vec::new();
        for cfg in &config.issuers {
            let kept = previous.and_then(|p| {
                p.issuers
                    .iter()
                    .position(|k| &k.config == cfg)
                    .and_then(|i| Some((p.issuers[i].clone(), p.tasks.get(i)?.clone())))
            });
            let (keys, task) = match kept {
                Some(k) => k,
                None => {
                    let keys = IssuerKeys::new(cfg.clone(), client.clone(), metrics.clone());
                    let task = Arc::new(AbortOnDrop(tokio::spawn(keys.clone().run_refresher())));
                    (keys, task)
                }
            };
            issuers.push(keys);
            tasks.push(task);
        }
        let kept_store = previous
            .and_then(|p| p.store.clone())
            .filter(|s| config.cache.as_ref() == Some(&s.config));
        let store = kept_store.or_else(|| {
            let c = config.cache.as_ref()?;
            SharedStore::new(c, metrics.clone())
                .inspect_err(|e| tracing::error!(error = %e, "the shared store cannot be used"))
                .ok()
        });
        let introspectors = introspectors(config, previous, &client, store.as_ref(), &metrics);
        let mut auth =
            Authenticator::with_issuers(issuers, config.token_cache_entries, tasks, metrics);
        auth.introspectors = introspectors;
        auth.store = store;
        auth.dpop = previous
            .map(|p| p.dpop.clone())
            .filter(|d| d.verifier.config == config.dpop)
            .unwrap_or_else(|| Arc::new(DpopState::new(&config.dpop)));
        auth
    }

    /// Without refresher tasks: keys load when asked (`bearward explain`, benches). The
    /// verified-token cache is sized as the config says.
    pub fn without_refresh(config: &Config) -> Authenticator {
        let client = jwks::http_client();
        let metrics = Arc::new(Metrics::new());
        let issuers = config
            .issuers
            .iter()
            .map(|i| IssuerKeys::new(i.clone(), client.clone(), metrics.clone()))
            .collect();
        let introspectors = introspectors(config, None, &client, None, &metrics);
        let mut auth =
            Authenticator::with_issuers(issuers, config.token_cache_entries, Vec::new(), metrics);
        auth.introspectors = introspectors;
        auth.dpop = Arc::new(DpopState::new(&config.dpop));
        auth
    }

    fn with_issuers(
        issuers: Vec<Arc<IssuerKeys>>,
        cache_entries: u64,
        tasks: Vec<Arc<AbortOnDrop>>,
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        let max_token_bytes = issuers
            .iter()
            .map(|i| i.config.max_token_bytes)
            .max()
            .unwrap_or(0);
        let cache = (cache_entries > 0).then(|| TokenCache {
            store: Cache::builder()
                .max_capacity(cache_entries)
                .expire_after(TokenExpiry)
                .build_with_hasher(foldhash::quality::RandomState::default()),
            front_owner: FRONT_OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            front_sets: front::sets_for(cache_entries),
            hasher: foldhash::quality::RandomState::default(),
        });
        Authenticator {
            issuers,
            cache,
            max_token_bytes,
            tasks,
            metrics,
            introspectors: Vec::new(),
            store: None,
            dpop: Arc::new(DpopState::new(&crate::config::DpopConfig::default())),
        }
    }

    /// The store shared by replicas, if one is configured.
    pub fn store(&self) -> Option<&Arc<SharedStore>> {
        self.store.as_ref()
    }

    /// The DPoP verifier in force (for challenges' `algs` and nonces).
    pub fn dpop(&self) -> &dpop::Verifier {
        &self.dpop.verifier
    }

    /// The token's binding against what the request brings (RFC 8705 3, RFC 9449 7): a
    /// certificate-bound token only with that certificate; a DPoP-bound token only with the
    /// `DPoP` scheme and a fresh proof by its key; the `DPoP` scheme only with a DPoP-bound
    /// token; and, where the route says so, no unbound token at all.
    pub async fn check_binding(
        &self,
        v: &Verified,
        r: &BindingRequest<'_>,
        trace: &mut Trace,
    ) -> Result<(), AuthError> {
        let b = &v.binding;
        if b.other {
            trace.note("binding", false, || {
                "bound to a key bearward cannot check".into()
            });
            return Err(AuthError::BoundToken);
        }
        if let Some(x5t) = &b.x5t {
            let Some(cert) = r.client_cert else {
                self.metrics.bound_token("certificate_missing");
                trace.note("binding", false, || {
                    "bound to a client certificate; the request came with none".into()
                });
                return Err(AuthError::CertificateMissing);
            };
            let have = base64::Engine::encode(&crate::jose::B64, cert);
            if have != *x5t {
                self.metrics.bound_token("certificate_mismatch");
                trace.note("binding", false, || {
                    format!("bound to certificate x5t#S256={x5t}; the request's is {have}")
                });
                return Err(AuthError::CertificateMismatch);
            }
            self.metrics.bound_token("certificate_ok");
            trace.note("binding", true, || {
                "the client certificate is the one bound".into()
            });
        }
        match (&b.jkt, r.scheme) {
            (Some(_), Scheme::Bearer) => {
                // RFC 9449 7.2: a DPoP-bound token as a bearer token is a downgrade.
                trace.note("binding", false, || {
                    "a DPoP-bound token sent with the Bearer scheme (RFC 9449 7.2)".into()
                });
                return Err(AuthError::BoundToken);
            }
            (None, Scheme::Dpop) => {
                trace.note("binding", false, || {
                    "the DPoP scheme with a token bound to no DPoP key".into()
                });
                return Err(AuthError::DpopUnbound);
            }
            (Some(jkt), Scheme::Dpop) => {
                let checked = self.check_proof(jkt, r);
                if let Err(e) = &checked {
                    self.metrics.dpop_proof(e.reason());
                    trace.note("dpop", false, || e.to_string());
                }
                let id = checked?;
                let recorded = self.record_proof(id).await;
                if let Err(e) = &recorded {
                    trace.note("dpop", false, || e.to_string());
                }
                recorded?;
                self.metrics.dpop_proof("ok");
                self.metrics.bound_token("dpop_ok");
                trace.note("dpop", true, || "a fresh proof by the bound key".into());
            }
            (None, Scheme::Bearer) => {}
        }
        if r.require_bound && !b.is_bound() {
            trace.note("binding", false, || {
                "the route takes sender-constrained tokens only (require_bound_tokens)".into()
            });
            return Err(AuthError::UnboundToken);
        }
        Ok(())
    }

    /// RFC 9449 4.3 on the request's one proof.
    fn check_proof(&self, jkt: &str, r: &BindingRequest<'_>) -> Result<[u8; 32], AuthError> {
        use dpop::ProofError as P;
        let mut proofs = r.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => return Err(AuthError::DpopProof(P::Missing)),
            (Some(_), Some(_)) => return Err(AuthError::DpopProof(P::Multiple)),
            (Some(p), None) => p.to_str().map_err(|_| AuthError::DpopProof(P::Malformed))?,
        };
        let htu = r.htu.as_deref().ok_or(AuthError::DpopProof(P::Uri))?;
        let req = dpop::Request {
            method: r.method,
            htu,
            access_token: r.token,
            jkt,
        };
        self.dpop
            .verifier
            .check(proof, &req, validator::now())
            .map(|c| c.replay_key)
            .map_err(AuthError::DpopProof)
    }

    /// The proof's id, never seen before: in this process, and with a shared store in every
    /// replica (`SET NX`, so two replicas racing on one replayed proof cannot both take it).
    async fn record_proof(&self, id: [u8; 32]) -> Result<(), AuthError> {
        use dpop::ProofError as P;
        match self.dpop.replay.insert(id) {
            dpop::Seen::New => {}
            dpop::Seen::Replayed => {
                self.metrics.dpop_proof(P::Replayed.reason());
                return Err(AuthError::DpopProof(P::Replayed));
            }
            dpop::Seen::Full => {
                self.metrics.dpop_proof("replay_cache_full");
                tracing::warn!("the DPoP replay cache is full (dpop.replay_cache_entries); new proofs get 503 until the window turns");
                return Err(AuthError::DpopReplayFull);
            }
        }
        let Some(store) = &self.store else {
            return Ok(());
        };
        let key = format!("dpop:{}", crate::jose::hex(&id));
        match store
            .set_nx(&key, replay_window(&self.dpop.verifier.config))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.metrics.dpop_proof(P::Replayed.reason());
                Err(AuthError::DpopProof(P::Replayed))
            }
            Err(e) => match self.dpop.verifier.config.store_down {
                crate::config::StoreDown::Refuse => {
                    self.metrics.dpop_proof("replay_store_down_refused");
                    tracing::warn!(error = %e, "DPoP replay check: the shared store is unavailable; proof refused (dpop_replay_store_down = \"refuse\")");
                    Err(AuthError::DpopReplayUnavailable)
                }
                crate::config::StoreDown::Local => {
                    self.metrics.dpop_proof("replay_store_down_local");
                    tracing::warn!(error = %e, "DPoP replay check: the shared store is unavailable; this process's cache alone decided (dpop_replay_store_down = \"local\")");
                    Ok(())
                }
            },
        }
    }

    /// Refreshes the scrape-time gauges: keys per issuer, JWKS age, cache size.
    pub fn export_gauges(&self) {
        for i in &self.issuers {
            let usable = i.usable().map_or(0, |s| s.keys.len());
            let age = i.latest().map(|s| s.fetched_at.elapsed());
            self.metrics.set_key_state(&i.config.issuer, usable, age);
        }
        if let Some(c) = &self.cache {
            c.store.run_pending_tasks();
        }
        self.metrics.set_token_cache_entries(self.cached_tokens());
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
        let v = self.verify_any(token, route, trace).await?;
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

    async fn verify_any(
        &self,
        token: &[u8],
        route: Option<&Route>,
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        // Size is the parser's first check; a token too large is never in the cache.
        // The token is hashed once, for the front's lookup and, on a miss, its insert.
        // Only JWTs are kept in this cache, and a JWT has dots: an opaque token (when some
        // issuer takes them) skips the lookup, and is not counted as a miss.
        let jwt_shaped =
            memchr::memchr(b'.', token).is_some() || self.introspectors.iter().all(Option::is_none);
        let cached = (self.cache.as_ref())
            .filter(|_| jwt_shaped)
            .map(|c| (c, c.hash(token)));
        if let Some((c, hash)) = cached {
            // The front first; moka on a front miss, and a moka hit moves into the front.
            let found = c.front_get(hash, token).or_else(|| {
                let v = c.store.get(token)?;
                c.front_put(hash, v.clone());
                Some(v)
            });
            self.metrics.token_cache(found.is_some());
            if let Some(v) = found {
                let verdict = self.still_good(&v);
                if verdict.is_ok() {
                    return Ok(v);
                }
                c.front_remove(hash, token);
                c.store.invalidate(token);
                // Expired is final; a key retired or gone stale means validating afresh.
                if let Err(AuthError::Expired) = verdict {
                    return Err(AuthError::Expired);
                }
            }
        }
        let token = extract::check_token(token)?;
        if let Some(order) = self.introspection_order(token, route) {
            return self.introspect(token, &order, trace).await;
        }
        let v = validator::validate(token, self.max_token_bytes, &self.issuers, trace).await;
        if matches!(v, Err(AuthError::UnknownKey) | Ok(_)) {
            self.metrics.key_lookup(v.is_ok());
        }
        let v = Arc::new(v?);
        if let Some((c, hash)) = cached {
            if !v.ttl.is_zero() {
                c.store.insert(v.token.clone(), v.clone());
                c.front_put(hash, v.clone());
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
                self.issuers
                    .iter()
                    .position(|i| i.config.issuer == iss && i.config.takes_jwts())
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

    /// `/readyz`: Ok when every issuer has usable keys; the text says how old each set is.
    pub fn readiness(&self) -> Result<String, String> {
        let mut ready = true;
        let mut out = String::new();
        // An opaque-only issuer has no keys to wait for; its endpoint is reported below.
        for i in self.issuers.iter().filter(|i| i.config.takes_jwts()) {
            let status = i.status();
            match (i.usable(), i.latest()) {
                (Some(set), _) => {
                    let age = set.fetched_at.elapsed().as_secs();
                    let stale = status.last_error.is_some();
                    out.push_str(&format!(
                        "issuer {}: {} keys, fetched {age}s ago{}\n",
                        i.config.issuer,
                        set.keys.len(),
                        if stale {
                            " (stale: the last refresh failed; serving the last good keys)"
                        } else {
                            ""
                        }
                    ));
                }
                (None, Some(set)) => {
                    ready = false;
                    out.push_str(&format!(
                        "issuer {}: keys are {}s old, past max_stale ({}s); last error: {}\n",
                        i.config.issuer,
                        set.fetched_at.elapsed().as_secs(),
                        i.config.jwks.max_stale.as_secs(),
                        status.last_error.as_deref().unwrap_or("-")
                    ));
                }
                (None, None) => {
                    ready = false;
                    out.push_str(&format!(
                        "issuer {}: no keys yet; last error: {}\n",
                        i.config.issuer,
                        status
                            .last_error
                            .as_deref()
                            .unwrap_or("none (first fetch pending)")
                    ));
                }
            }
        }
        // A failing introspection endpoint is reported, not made a reason to leave the load
        // balancer: cached answers still serve, and every replica shares the same IdP, so
        // pulling them all would turn a partial outage into a full one.
        for intro in self.introspectors.iter().flatten() {
            out.push_str(&format!(
                "issuer {}: {}\n",
                intro.issuer.issuer,
                intro.health()
            ));
        }
        if let Some(store) = &self.store {
            out.push_str(if store.healthy() {
                "shared store: ok\n"
            } else {
                "shared store: failing; using the process caches only\n"
            });
        }
        if ready {
            Ok(format!("ready\n{out}"))
        } else {
            Err(format!("not ready\n{out}"))
        }
    }
}

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

/// One introspector per introspecting issuer, by issuer index; a reload keeps those whose
/// issuer, claim headers and store did not change (with their answers).
fn introspectors(
    config: &Config,
    previous: Option<&Authenticator>,
    client: &jwks::HttpsClient,
    store: Option<&Arc<SharedStore>>,
    metrics: &Arc<Metrics>,
) -> Vec<Option<Arc<Introspector>>> {
    let keep: Vec<String> = config
        .forward
        .claim_headers
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    config
        .issuers
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            cfg.introspection.as_ref()?;
            let old = previous.and_then(|p| {
                p.introspectors
                    .iter()
                    .flatten()
                    .find(|o| o.index == i && o.same(cfg, &keep, store))
            });
            if let Some(o) = old {
                return Some(o.clone());
            }
            Introspector::new(
                i,
                cfg.clone(),
                keep.clone(),
                config.token_cache_entries,
                client.clone(),
                store.cloned(),
                metrics.clone(),
            )
            .inspect_err(|e| tracing::error!(issuer = %cfg.issuer, error = %e, "introspection cannot be set up"))
            .ok()
        })
        .collect()
}
