//! Per-route rate limits (`rate_limit`), keyed by the verified subject, the client, a claim,
//! or the client's address (IPv6 by network). Each key is a governor GCRA bucket (`count` per
//! `window`, bursts of `burst`), held in a bounded quick_cache table: at most [`MAX_KEYS`] per
//! route, and a key left unused for as long as its bucket takes to fill again is dropped by a
//! sweep without changing any answer.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Keys kept per route.
pub const MAX_KEYS: u64 = 100_000;

/// `RateLimit` values made up front at each end of a route's burst.
const MADE_VALUES: u32 = 256;

type Gcra = RateLimiter<NotKeyed, InMemoryState, clock::DefaultClock, StateInformationMiddleware>;

/// One key's local bucket, and (with a store) the key its global bucket has there, made once
/// per key rather than hashed and formatted on every request.
struct Bucket {
    gcra: Gcra,
    stored: Option<Arc<str>>,
    /// Checked since the last sweep.
    used: AtomicBool,
}

impl Bucket {
    fn new(gcra: Gcra, stored: Option<Arc<str>>) -> Bucket {
        Bucket {
            gcra,
            stored,
            used: AtomicBool::new(true),
        }
    }
}

/// Buckets by key. A hit is an exact comparison of the key, so no two keys share a bucket
/// whatever the hash does; the hash (foldhash, seeded at random per process) only places them.
///
/// quick_cache rather than moka (as before): a hit is a read lock on one shard and a counter
/// bump, ~1,100 instructions less per request than moka's read log and its housekeeping,
/// which is what its time-to-idle needed. Idle keys are dropped by [`sweep`] instead. Under a
/// flood of new keys its policy (S3-FIFO-like) still admits every new bucket, and a key seen
/// again, even after being evicted (a "ghost"), is kept as hot: a client that keeps sending
/// keeps its bucket, so a flood cannot reset it on every request.
type Buckets = quick_cache::sync::Cache<
    String,
    Arc<Bucket>,
    quick_cache::UnitWeighter,
    foldhash::quality::RandomState,
>;

/// One route's limiter.
pub struct Limiter {
    pub limit: RateLimit,
    quota: Quota,
    /// The GCRA's emission interval: one request's worth of refill.
    per: Duration,
    /// The same in µs, for the store's script.
    emission_us: u64,
    buckets: Arc<Buckets>,
    /// `RateLimit-Policy`, made once.
    pub policy: http::HeaderValue,
    /// `"name";r=`: the start of every `RateLimit` value.
    header_start: Box<[u8]>,
    /// `RateLimit` of an allowed request with `r` left, cloned rather than written and checked
    /// on every answer: for `r` within [`MADE_VALUES`] of either end of the burst, where a
    /// bucket spends its time (nearly full while a client keeps under its limit, nearly empty
    /// while it presses against it). `low[r]` for `r` up to `MADE_VALUES`, `high[burst - r]`
    /// above it (empty when the burst is no larger).
    made_low: Box<[http::HeaderValue]>,
    made_high: Box<[http::HeaderValue]>,
    /// The store that makes the limit global, with this route's part of its keys.
    global: Option<(Arc<SharedStore>, String)>,
    /// The limit divided by `rate_limit_fallback_replicas`, for when the store is down.
    fallback: Option<(Quota, Arc<Buckets>)>,
    fallbacks: Counter,
    /// `key = "claim:..."`: the dotted path, parsed once.
    claim_path: Vec<String>,
    /// `rate_by`: each tier's value and its own limiter (buckets, store keys, headers).
    tiers: Vec<(String, Limiter)>,
}

/// What a check said, for the response's `RateLimit` header (and `Retry-After` on a 429).
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0 when allowed).
    pub retry_after: u64,
    /// The tier it was counted in ([`Limiter::tier`]): 0, none.
    pub tier: u8,
}

fn buckets(idle: Duration) -> Arc<Buckets> {
    let keys = usize::try_from(MAX_KEYS).unwrap_or(usize::MAX);
    let buckets = Arc::new(Buckets::with(
        keys,
        MAX_KEYS,
        quick_cache::UnitWeighter,
        foldhash::quality::RandomState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    ));
    // Outside a runtime (`bearward check`, unit tests) nothing runs long enough to need it.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(sweep(Arc::downgrade(&buckets), idle));
    }
    buckets
}

/// Drops the buckets not checked since the previous pass, passes being at least `idle`
/// apart (counted from the end of one to the start of the next, so however long a pass over
/// many keys takes, shard by shard): each bucket dropped was left alone for `idle` or more,
/// so it is full again, and a new one would answer the same. Looks every 30 s at most
/// whether the limiter is gone (a reload builds new ones), so a long `idle` (a daily limit)
/// does not keep a task per reload waiting for days.
async fn sweep(buckets: Weak<Buckets>, idle: Duration) {
    use tokio::time::{interval_at, Instant, MissedTickBehavior};
    let step = idle.min(Duration::from_secs(30));
    let mut every = interval_at(Instant::now() + step, step);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next = Instant::now() + idle;
    loop {
        every.tick().await;
        let Some(buckets) = buckets.upgrade() else {
            return;
        };
        if Instant::now() >= next {
            buckets.retain(|_, bucket| bucket.used.swap(false, Ordering::Relaxed));
            next = Instant::now() + idle;
        }
    }
}

/// `key`'s bucket in `buckets`, made with `make` when it has none: the key is copied only then.
/// A hit is one read-locked lookup; concurrent misses on one key make one bucket.
fn bucket_for(buckets: &Buckets, key: &str, make: impl FnOnce() -> Bucket) -> Arc<Bucket> {
    let Ok(bucket) =
        buckets.get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(Arc::new(make())));
    // Only a bucket the sweep marked unused is written: a busy key's cache line stays shared.
    if !bucket.used.load(Ordering::Relaxed) {
        bucket.used.store(true, Ordering::Relaxed);
    }
    bucket
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
            tier: 0,
        },
        Err(not_until) => {
            let wait = not_until.wait_time_from(clock::Clock::now(&clock::DefaultClock::default()));
            Verdict {
                allowed: false,
                remaining: 0,
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                tier: 0,
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
        let mut tiers = Vec::new();
        for (tier, count, window) in limit.tiers.iter().flat_map(|t| &t.rates) {
            let own = RateLimit {
                count: *count,
                window: *window,
                burst: *count,
                tiers: None,
                ..limit.clone()
            };
            let name = format!("{}.{tier}", route.name);
            let l = Limiter::build(own, &name, store.clone(), replicas, fallbacks.clone())?;
            tiers.push((tier.clone(), l));
        }
        let mut l = Limiter::build(limit, &route.name, store, replicas, fallbacks)?;
        l.tiers = tiers;
        Some(l)
    }

    /// One limit's limiter, named `name` in its headers and store keys.
    fn build(
        limit: RateLimit,
        name: &str,
        store: Option<Arc<SharedStore>>,
        replicas: u32,
        fallbacks: Counter,
    ) -> Option<Limiter> {
        let per = limit.window / limit.count;
        let quota = make_quota(per, limit.burst)?;
        // A bucket is full again `burst` periods after its last request: dropping it then
        // changes nothing.
        let idle = per.saturating_mul(limit.burst).max(Duration::from_secs(1));
        let label: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '*'))
            .collect();
        // IETF httpapi RateLimit header fields: quota `q` per window `w` (seconds).
        let policy = format!(
            "\"{label}\";q={};w={}",
            limit.count,
            limit.window.as_secs().max(1)
        );
        let route_id = crate::jose::hex(&crate::auth::sha256(name)[..8]);
        let fallback = store.as_ref().and_then(|_| {
            let replicas = replicas.max(1);
            let (per, burst) = (
                per.saturating_mul(replicas),
                (limit.burst / replicas).max(1),
            );
            // Its own time to fill: with a burst below the replica count it is longer.
            let idle = per.saturating_mul(burst).max(idle);
            Some((make_quota(per, burst)?, buckets(idle)))
        });
        let header_start: Box<[u8]> = format!("\"{label}\";r=").into_bytes().into();
        let made = |r| rate_limit_value(&header_start, r, full_in(per, limit.burst, r));
        let made_low = (0..=limit.burst.min(MADE_VALUES))
            .map(made)
            .collect::<Option<_>>()?;
        let made_high = (limit.burst.saturating_sub(MADE_VALUES).max(MADE_VALUES + 1)
            ..=limit.burst)
            .rev()
            .map(made)
            .collect::<Option<_>>()?;
        Some(Limiter {
            quota,
            per,
            emission_us: u64::try_from(per.as_micros()).unwrap_or(u64::MAX).max(1),
            buckets: buckets(idle),
            policy: http::HeaderValue::from_str(&policy).ok()?,
            header_start,
            made_low,
            made_high,
            global: store.map(|s| (s, route_id)),
            fallback,
            fallbacks,
            claim_path: match &limit.key {
                LimitKey::Claim(raw) => crate::routes::claim_path(raw).unwrap_or_default(),
                _ => Vec::new(),
            },
            limit,
            tiers: Vec::new(),
        })
    }

    /// The limiter of the caller's tier (`rate_by`), and its number for [`Limiter::tier`]; this
    /// one, numbered 0, for a caller of no listed tier or a limit without tiers.
    pub fn for_caller(&self, identity: Option<&Identity>) -> (&Limiter, u8) {
        let Some(t) = self.limit.tiers.as_deref() else {
            return (self, 0);
        };
        let value = identity.and_then(|i| i.claim_text(&t.claim, &t.path));
        let found = value.and_then(|v| self.tiers.iter().position(|(tier, _)| *tier == v));
        match found {
            Some(i) => (&self.tiers[i].1, u8::try_from(i + 1).unwrap_or(0)),
            None => (self, 0),
        }
    }

    /// The limiter a verdict's `tier` names.
    pub fn tier(&self, tier: u8) -> &Limiter {
        match tier.checked_sub(1) {
            Some(i) => self.tiers.get(usize::from(i)).map_or(self, |(_, l)| l),
            None => self,
        }
    }

    /// The key a request is counted under; requests without one share the `-` bucket.
    /// `client`: the client's address, asked for only by `key = "ip"`.
    pub fn key<'a>(
        &self,
        identity: Option<&'a Identity>,
        client: impl FnOnce() -> Option<std::net::IpAddr>,
    ) -> Cow<'a, str> {
        let principal = identity.map(|i| &i.0.principal);
        let found = match &self.limit.key {
            LimitKey::Subject => principal
                .and_then(|p| p.subject.as_deref())
                .map(Cow::Borrowed),
            LimitKey::Client => principal
                .and_then(|p| p.client.as_deref())
                .map(Cow::Borrowed),
            LimitKey::Ip => client().map(|ip| Cow::Owned(ip_key(ip, self.limit.ipv6_prefix))),
            LimitKey::Claim(raw) => identity
                .and_then(|i| i.claim_text(raw, &self.claim_path))
                .map(Cow::Owned),
        };
        found.unwrap_or(Cow::Borrowed("-"))
    }

    /// Counts one request under `key`: the local bucket, then (with a store) the global one.
    pub async fn check(&self, key: &str) -> Verdict {
        let bucket = bucket_for(&self.buckets, key, || {
            Bucket::new(
                RateLimiter::direct(self.quota).with_middleware(),
                self.global.as_ref().map(|(store, route_id)| {
                    let id = crate::auth::sha256(key);
                    store.bucket_key(route_id, &id[..16]).into()
                }),
            )
        });
        let local = check_bucket(&bucket);
        let (Some((store, _)), Some(stored)) = (&self.global, &bucket.stored) else {
            return local;
        };
        if !local.allowed {
            // This replica alone is over the limit: so is every replica together.
            return local;
        }
        // Boxed: only Redis-backed limits take this path, and the call's future would
        // otherwise size every request's.
        match Box::pin(store.gcra(stored.clone(), self.emission_us, self.limit.burst)).await {
            Ok((allowed, wait_us, remaining)) => Verdict {
                allowed,
                remaining,
                retry_after: wait_us.div_ceil(1_000_000),
                tier: 0,
            },
            Err(_) => {
                self.fallbacks.inc();
                match &self.fallback {
                    Some((q, b)) => check_bucket(&bucket_for(b, key, || {
                        Bucket::new(RateLimiter::direct(*q).with_middleware(), None)
                    })),
                    None => local,
                }
            }
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> u64 {
        let tiers: u64 = self.tiers.iter().map(|(_, l)| l.keys()).sum();
        self.buckets.len() as u64 + tiers
    }

    /// `RateLimit` for `verdict`: the policy's name, remaining requests (`r`), and seconds
    /// until the quota resets (`t`), which for a GCRA is when the bucket is full again: a
    /// client with `r` left may spread them over `t` seconds (the draft's example, `r=50;t=30`
    /// of `q=100;w=60`, is what this gives). Refused: the wait for one request (`Retry-After`)
    /// and then the rest of the burst.
    pub fn header(&self, verdict: &Verdict) -> Option<http::HeaderValue> {
        if verdict.allowed && verdict.retry_after == 0 {
            let r = verdict.remaining;
            let made = if r <= MADE_VALUES {
                self.made_low.get(r as usize)
            } else {
                let d = self.limit.burst.checked_sub(r);
                d.and_then(|d| self.made_high.get(d as usize))
            };
            if let Some(v) = made {
                return Some(v.clone());
            }
        }
        let t = if verdict.allowed {
            full_in(self.per, self.limit.burst, verdict.remaining)
        } else {
            verdict.retry_after + full_in(self.per, self.limit.burst, 1)
        };
        rate_limit_value(&self.header_start, verdict.remaining, t)
    }
}

/// Whole seconds (rounded up) until a bucket of `burst` with `r` left is full, one `per` each.
fn full_in(per: Duration, burst: u32, r: u32) -> u64 {
    let d = per.saturating_mul(burst.saturating_sub(r));
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An IPv4 address as it is; an IPv6 one as its network of `prefix` bits (`2001:db8:1:2::/64`),
/// so a host cannot take a fresh bucket per address of its own network.
fn ip_key(ip: std::net::IpAddr, prefix: u8) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) if prefix < 128 => ipnet::Ipv6Net::new(v6, prefix)
            .map_or_else(|_| v6.to_string(), |net| net.trunc().to_string()),
        ip => ip.to_string(),
    }
}

/// `start` (`"name";r=`) followed by `r` and `;t=t`, without `format!`.
fn rate_limit_value(start: &[u8], r: u32, t: u64) -> Option<http::HeaderValue> {
    let (mut rb, mut tb) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (rb.format(r), tb.format(t));
    let mut value = Vec::with_capacity(start.len() + r.len() + 3 + t.len());
    value.extend_from_slice(start);
    value.extend_from_slice(r.as_bytes());
    value.extend_from_slice(b";t=");
    value.extend_from_slice(t.as_bytes());
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: &str) -> Limiter {
        let cfg = crate::config::Config::from_toml_str(
            &format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nrate_limit = {{ key = \"ip\", rate = \"{rate}\" }}\nupstream = \"a\"\n"),
            "t.toml",
        )
        .unwrap();
        Limiter::new(&cfg.routes.routes()[0]).unwrap()
    }

    /// A bucket left alone through two passes of the sweep is dropped; one checked in between
    /// is kept with its count.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_drops_idle_keys_and_keeps_busy_ones() {
        // 2/s, burst 2: full again 1 s after its last request; passes every second.
        let l = limiter("2/s");
        for key in ["busy", "idle"] {
            assert!(l.check(key).await.allowed);
        }
        assert_eq!(l.keys(), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(l.keys(), 2, "the first pass only marks");
        assert!(l.check("busy").await.allowed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(l.keys(), 1, "the idle key goes at the second pass");
        // The busy key's bucket is the same one: (in real time, barely any has passed) it
        // holds the two requests counted, so a third is refused.
        assert!(!l.check("busy").await.allowed);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        assert_eq!(tasks(), 1, "the sweep");
        drop(l);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(tasks(), 0, "the sweep ends with its limiter");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let key = |ip: &str, prefix| ip_key(ip.parse().unwrap(), prefix);
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:3::1", 64), "2001:db8:1:3::/64");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        // IPv4, also as a dual-stack listener sees it: never grouped into one ::ffff:0:0/64.
        assert_eq!(key("198.51.100.7", 64), "198.51.100.7");
        assert_eq!(key("::ffff:198.51.100.7", 64), "198.51.100.7");
    }

    fn allowed(remaining: u32) -> Verdict {
        Verdict {
            allowed: true,
            remaining,
            retry_after: 0,
            tier: 0,
        }
    }

    /// Refused, one request allowed again in `retry_after` seconds.
    fn refused(retry_after: u64) -> Verdict {
        Verdict {
            allowed: false,
            remaining: 0,
            retry_after,
            tier: 0,
        }
    }

    /// The values made up front are the ones that would be written.
    #[test]
    fn made_values_are_the_written_ones() {
        let l = limiter("600/s");
        assert_eq!(l.limit.burst, 600);
        let policy = l.policy.to_str().unwrap();
        let name = &policy[..policy.find(';').unwrap()];
        for r in [0, 1, 255, 256, 257, 300, 343, 344, 345, 599, 600] {
            let v = allowed(r);
            // 1/600 s per request: full within a second unless it is full already.
            let t = u64::from(r < 600);
            assert_eq!(
                l.header(&v).unwrap(),
                format!("{name};r={r};t={t}").as_str()
            );
        }
        assert_eq!(
            l.header(&refused(7)).unwrap(),
            format!("{name};r=0;t=8").as_str()
        );
    }

    /// `t` is when the quota resets: for a GCRA, when the bucket is full again.
    #[test]
    fn t_is_the_time_until_the_bucket_is_full() {
        // 6/m: one request's worth every 10 s, burst 6.
        let l = limiter("6/m");
        let name = "\"/*\"";
        for (r, t) in [(6, 0), (5, 10), (3, 30), (0, 60)] {
            let want = format!("{name};r={r};t={t}");
            assert_eq!(l.header(&allowed(r)).unwrap(), want.as_str());
        }
        // 7 s until one request may pass, then five more refills to full.
        assert_eq!(
            l.header(&refused(7)).unwrap(),
            format!("{name};r=0;t=57").as_str()
        );
        // The draft's own example: 50 of 100 per minute left, reset in 30 s.
        let l = limiter("100/m");
        let v = l.header(&allowed(50)).unwrap();
        assert_eq!(v, "\"/*\";r=50;t=30");
    }
}
