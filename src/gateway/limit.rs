//! Per-route rate limits (`rate_limit`), keyed by the verified subject, the client, a claim,
//! or the peer's address. Each key is a governor GCRA bucket (`count` per `window`, bursts of
//! `burst`), held in a bounded moka cache: a key idle for as long as its bucket takes to fill
//! again is dropped without changing any answer, and a flood of distinct keys is bounded by
//! [`MAX_KEYS`] per route (the least used go first).

use crate::auth::Identity;
use crate::routes::{LimitKey, RateLimit, Route};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{clock, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Keys kept per route.
pub const MAX_KEYS: u64 = 100_000;

type Bucket = RateLimiter<NotKeyed, InMemoryState, clock::DefaultClock, StateInformationMiddleware>;

/// One route's limiter.
pub struct Limiter {
    pub limit: RateLimit,
    quota: Quota,
    buckets: moka::sync::Cache<String, Arc<Bucket>>,
    /// `RateLimit-Policy`, made once.
    pub policy: http::HeaderValue,
}

/// What a check said, for the response's `RateLimit` header (and `Retry-After` on a 429).
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0 when allowed).
    pub retry_after: u64,
}

impl Limiter {
    pub fn new(route: &Route) -> Option<Limiter> {
        let limit = route.rate_limit.clone()?;
        let per = limit.window / limit.count;
        let quota = Quota::with_period(per.max(Duration::from_nanos(1)))?
            .allow_burst(NonZeroU32::new(limit.burst)?);
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
        Some(Limiter {
            quota,
            // LRU, not moka's default TinyLFU: under a flood of new keys TinyLFU may decline to
            // keep a new bucket at all, and a caller whose bucket is not kept is never limited.
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(idle)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            policy: http::HeaderValue::from_str(&policy).ok()?,
            limit,
        })
    }

    /// The key a request is counted under; requests without one share the `-` bucket.
    pub fn key(&self, identity: Option<&Identity>, peer: Option<std::net::IpAddr>) -> String {
        let claims = identity.map(|i| &i.0.claims);
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str).map(str::to_owned)
        };
        let found = match &self.limit.key {
            LimitKey::Subject => text(claims.and_then(|c| c.get("sub"))),
            LimitKey::Client => {
                text(claims.and_then(|c| c.get("azp").or_else(|| c.get("client_id"))))
            }
            LimitKey::Ip => peer.map(|p| p.to_string()),
            LimitKey::Claim(path) => identity
                .and_then(|i| i.header_value(path))
                .and_then(|v| v.to_str().ok().map(str::to_owned)),
        };
        found.unwrap_or_else(|| "-".to_owned())
    }

    /// Counts one request under `key`.
    pub fn check(&self, key: String) -> Verdict {
        let quota = self.quota;
        let bucket = self.buckets.get_with(key, || {
            Arc::new(RateLimiter::direct(quota).with_middleware())
        });
        match bucket.check() {
            Ok(state) => Verdict {
                allowed: true,
                remaining: state.remaining_burst_capacity(),
                retry_after: 0,
            },
            Err(not_until) => {
                let wait =
                    not_until.wait_time_from(clock::Clock::now(&clock::DefaultClock::default()));
                Verdict {
                    allowed: false,
                    remaining: 0,
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }
            }
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

impl Verdict {
    /// `RateLimit` for this answer: the policy's name, remaining requests, seconds to reset.
    pub fn header(&self, policy: &http::HeaderValue) -> Option<http::HeaderValue> {
        let name = policy.to_str().ok()?.split(';').next()?;
        http::HeaderValue::from_str(&format!(
            "{name};r={};t={}",
            self.remaining, self.retry_after
        ))
        .ok()
    }
}
