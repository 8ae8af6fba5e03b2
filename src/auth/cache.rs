//! The verified-token cache: moka behind a per-thread front (`front.rs`), keyed by the token.

use super::front;
use super::Verified;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::Duration;

/// The verified-token cache, keyed by the token itself. A hit is an exact byte comparison, so
/// no two tokens can share an entry whatever the hash does, and the hash only places entries.
/// That hash is foldhash, seeded at random per process: a moka hit costs 0.33 µs with it
/// against 0.75 µs when the key was the token's SHA-256, and a hit in the thread's front
/// (`front.rs`) 0.21 µs (`cargo bench --bench validation`).
/// Only tokens that verified are inserted, so an attacker cannot choose what fills a bucket.
/// The key is shared with the entry (`Verified::token`), so an entry holds its token once.
type Store = Cache<Arc<[u8]>, Arc<Verified>, foldhash::quality::RandomState>;

/// The shared store and this authenticator's place in the per-thread fronts (`front.rs`).
pub(super) struct TokenCache {
    pub(super) store: Store,
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
    /// A cache of at most `entries` tokens; `None` when `entries` is 0 (the cache is off).
    pub(super) fn new(entries: u64) -> Option<TokenCache> {
        (entries > 0).then(|| TokenCache {
            store: Cache::builder()
                .max_capacity(entries)
                .expire_after(TokenExpiry)
                .build_with_hasher(foldhash::quality::RandomState::default()),
            front_owner: FRONT_OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            front_sets: front::sets_for(entries),
            hasher: foldhash::quality::RandomState::default(),
        })
    }

    pub(super) fn hash(&self, token: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, token)
    }

    pub(super) fn front_get(&self, hash: u64, token: &[u8]) -> Option<Arc<Verified>> {
        front::get(self.front_owner, self.front_sets, hash, token)
    }

    pub(super) fn front_put(&self, hash: u64, v: Arc<Verified>) {
        front::put(self.front_owner, self.front_sets, hash, v);
    }

    pub(super) fn front_remove(&self, hash: u64, token: &[u8]) {
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
