//! Per-route rate limits (`rate_limit`), keyed by the verified subject, the client, a claim,
//! or the peer's address. Each key is a governor GCRA bucket (`count` per `window`, bursts of
//! `burst`), held in a bounded moka cache: a key idle for as long as its bucket takes to fill
//! again is dropped without changing any answer, and a flood of distinct keys is bounded by
//! [`MAX_KEYS`] per route (the least used go first).
//!
//! With `[cache] redis_url` the limit is global: after the local bucket (a pre-check: when this
//! replica alone is over the limit, no round trip is spent), one `EVALSHA` of a GCRA script
//! decides for all replicas. With the store down, a local bucket holding the limit divided by
//! `rate_limit_fallback_replicas` decides, counted in `bearward_rate_limit_fallbacks_total`:
//! never all traffic refused because Redis is down, never unlimited.

use crate::auth::Identity;
use crate::routes::{LimitKey, RateLimit, Route};
use crate::store::SharedStore;
use crate::telemetry::Counter;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{clock, Quota, RateLimiter};
use std::borrow::Cow;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Keys kept per route.
pub const MAX_KEYS: u64 = 100_000;

type Gcra = RateLimiter<NotKeyed, InMemoryState, clock::DefaultClock, StateInformationMiddleware>;

/// One key's local bucket, and (with a store) the key its global bucket has there, made once
/// per key rather than hashed and formatted on every request.
struct Bucket {
    gcra: Gcra,
    stored: Option<Arc<str>>,
}

/// Buckets by key. A hit is an exact comparison of the key, so no two keys share a bucket
/// whatever the hash does; the hash (foldhash, seeded at random per process) only places them.
type Buckets = moka::sync::Cache<Arc<str>, Arc<Bucket>, foldhash::quality::RandomState>;

/// One route's limiter.
pub struct Limiter {
    pub limit: RateLimit,
    quota: Quota,
    buckets: Buckets,
    /// `RateLimit-Policy`, made once.
    pub policy: http::HeaderValue,
    /// `"name";r=`: the start of every `RateLimit` value.
    header_start: Box<[u8]>,
    /// The store that makes the limit global, with this route's part of its keys.
    global: Option<(Arc<SharedStore>, String)>,
    /// The limit divided by `rate_limit_fallback_replicas`, for when the store is down.
    fallback: Option<(Quota, Buckets)>,
    fallbacks: Counter,
    /// `key = "claim:..."`: the dotted path, parsed once.
    claim_path: Vec<String>,
}

/// What a check said, for the response's `RateLimit` header (and `Retry-After` on a 429).
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0 when allowed).
    pub retry_after: u64,
}

fn buckets(idle: Duration) -> Buckets {
    // LRU, not moka's default TinyLFU: under a flood of new keys TinyLFU may decline to keep a
    // new bucket at all, and a caller whose bucket is not kept is never limited.
    moka::sync::Cache::builder()
        .max_capacity(MAX_KEYS)
        .time_to_idle(idle)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build_with_hasher(foldhash::quality::RandomState::default())
}

/// `key`'s bucket in `buckets`, made with `make` when it has none: the key is copied only then.
fn bucket_for(buckets: &Buckets, key: &str, make: impl FnOnce() -> Bucket) -> Arc<Bucket> {
    match buckets.get(key) {
        Some(b) => b,
        None => buckets.get_with(Arc::from(key), || Arc::new(make())),
    }
}

fn make_quota(per: Duration, burst: u32) -> Option<Quota> {
    Some(Quota::with_period(per.max(Duration::from_nanos(1)))?.allow_burst(NonZeroU32::new(burst)?))
}

fn check_bucket(bucket: &Bucket) -> Verdict {
    match bucket.gcra.check() {
        Ok(state) => Verdict {
            allowed: true,
            remaining: state.remaining_burst_capacity(),
            retry_after: 0,
        },
        Err(not_until) => {
            let wait = not_until.wait_time_from(clock::Clock::now(&clock::DefaultClock::default()));
            Verdict {
                allowed: false,
                remaining: 0,
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        }
    }
}

impl Limiter {
    /// Without a store: a limit per process.
    pub fn new(route: &Route) -> Option<Limiter> {
        Limiter::with_store(route, None, 1, Counter::default())
    }

    /// With a store (`replicas`: `rate_limit_fallback_replicas`): a global limit.
    pub fn with_store(
        route: &Route,
        store: Option<Arc<SharedStore>>,
        replicas: u32,
        fallbacks: Counter,
    ) -> Option<Limiter> {
        let limit = route.rate_limit.clone()?;
        let per = limit.window / limit.count;
        let quota = make_quota(per, limit.burst)?;
        // A bucket is full again `burst` periods after its last request: dropping it then
        // changes nothing.
        let idle = per.saturating_mul(limit.burst).max(Duration::from_secs(1));
        let name: String = route
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '*'))
            .collect();
        // IETF httpapi RateLimit header fields: quota `q` per window `w` (seconds).
        let policy = format!(
            "\"{name}\";q={};w={}",
            limit.count,
            limit.window.as_secs().max(1)
        );
        let route_id = crate::jose::hex(&crate::auth::sha256(&route.name)[..8]);
        let fallback = store.as_ref().and_then(|_| {
            let replicas = replicas.max(1);
            let q = make_quota(
                per.saturating_mul(replicas),
                (limit.burst / replicas).max(1),
            )?;
            Some((q, buckets(idle)))
        });
        Some(Limiter {
            quota,
            buckets: buckets(idle),
            policy: http::HeaderValue::from_str(&policy).ok()?,
            header_start: format!("\"{name}\";r=").into_bytes().into(),
            global: store.map(|s| (s, route_id)),
            fallback,
            fallbacks,
            claim_path: match &limit.key {
                LimitKey::Claim(raw) => crate::routes::claim_path(raw).unwrap_or_default(),
                _ => Vec::new(),
            },
            limit,
        })
    }

    /// The key a request is counted under; requests without one share the `-` bucket.
    pub fn key<'a>(
        &self,
        identity: Option<&'a Identity>,
        peer: Option<std::net::IpAddr>,
    ) -> Cow<'a, str> {
        let claims = identity.map(|i| &i.0.claims);
        let text = |v: Option<&'a serde_json::Value>| {
            v.and_then(serde_json::Value::as_str).map(Cow::Borrowed)
        };
        let found = match &self.limit.key {
            LimitKey::Subject => text(claims.and_then(|c| c.get("sub"))),
            LimitKey::Client => {
                text(claims.and_then(|c| c.get("azp").or_else(|| c.get("client_id"))))
            }
            LimitKey::Ip => peer.map(|p| Cow::Owned(p.to_string())),
            LimitKey::Claim(raw) => identity
                .and_then(|i| i.claim_text(raw, &self.claim_path))
                .map(Cow::Owned),
        };
        found.unwrap_or(Cow::Borrowed("-"))
    }

    /// Counts one request under `key`: the local bucket, then (with a store) the global one.
    pub async fn check(&self, key: &str) -> Verdict {
        let bucket = bucket_for(&self.buckets, key, || Bucket {
            gcra: RateLimiter::direct(self.quota).with_middleware(),
            stored: self.global.as_ref().map(|(store, route_id)| {
                let id = crate::auth::sha256(key);
                let id = crate::jose::hex(&id[..16]);
                store.key(&format!("ratelimit:{route_id}:{id}")).into()
            }),
        });
        let local = check_bucket(&bucket);
        let (Some((store, _)), Some(stored)) = (&self.global, &bucket.stored) else {
            return local;
        };
        if !local.allowed {
            // This replica alone is over the limit: so is every replica together.
            return local;
        }
        let per = self.limit.window / self.limit.count;
        let emission = u64::try_from(per.as_micros()).unwrap_or(u64::MAX).max(1);
        match store.gcra(stored.clone(), emission, self.limit.burst).await {
            Ok((allowed, wait_us, remaining)) => Verdict {
                allowed,
                remaining,
                retry_after: wait_us.div_ceil(1_000_000),
            },
            Err(_) => {
                self.fallbacks.inc();
                match &self.fallback {
                    Some((q, b)) => check_bucket(&bucket_for(b, key, || Bucket {
                        gcra: RateLimiter::direct(*q).with_middleware(),
                        stored: None,
                    })),
                    None => local,
                }
            }
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// `RateLimit` for `verdict`: the policy's name, remaining requests, seconds to reset.
    /// Made on every answer of a limited route, so without `format!`.
    pub fn header(&self, verdict: &Verdict) -> Option<http::HeaderValue> {
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(verdict.remaining), t.format(verdict.retry_after));
        let mut value = Vec::with_capacity(self.header_start.len() + r.len() + 3 + t.len());
        value.extend_from_slice(&self.header_start);
        value.extend_from_slice(r.as_bytes());
        value.extend_from_slice(b";t=");
        value.extend_from_slice(t.as_bytes());
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
    }
}
