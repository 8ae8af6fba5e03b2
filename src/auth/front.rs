//! A small per-thread front for the verified-token cache, as Envoy's jwt_authn keeps one per
//! worker. moka stays the shared, bounded store (admission, eviction, size); the front only
//! spares the hot tokens moka's per-read bookkeeping (the read log, the access-order deque, the
//! frequency sketch, the entry timestamps), which with 1,000 rotated tokens runs on cold memory
//! on every request. A front hit is still an exact comparison of the token's bytes, and the
//! caller checks expiry and the signing key on it exactly as on a moka hit.
//!
//! Two-way set-associative, most recent first: a lookup reads at most two slots, and two tokens
//! whose hashes share a set do not evict each other. Each front belongs to one `Authenticator`
//! (its `owner` id): a reloaded config gets a new id, so nothing validated under the old config
//! (other audiences, other issuers at the same index) is ever served under the new one.

use super::Verified;
use std::cell::RefCell;
use std::sync::Arc;

/// Most sets per thread: 2 x 2048 slots of 16 bytes, 64 KiB per worker thread.
const MAX_SETS: usize = 2048;

type Set = [Option<(u64, Arc<Verified>)>; 2];

struct Front {
    owner: u64,
    sets: Box<[Set]>,
}

thread_local! {
    static FRONT: RefCell<Option<Front>> = const { RefCell::new(None) };
}

/// How many sets a front has for a cache of `entries` (a power of two): it never holds more
/// tokens than moka may (or 2, for a cache of one), so the memory bound that
/// `token_cache_entries` sets grows at most by one front per worker thread.
pub(super) fn sets_for(entries: u64) -> usize {
    let sets = (usize::try_from(entries).unwrap_or(usize::MAX) / 2).clamp(1, MAX_SETS);
    1 << sets.ilog2()
}

/// Runs `f` on the set for `hash` in this thread's front, making a fresh front for a newer
/// owner. Ids grow with each reload, so a request still finishing on an older config (there
/// are only a few, just after a reload) gets `None` and leaves the new front alone.
fn with_set<R>(owner: u64, sets: usize, hash: u64, f: impl FnOnce(&mut Set) -> R) -> Option<R> {
    // After this thread's locals are gone (only while it exits), there is just no front.
    FRONT
        .try_with(|front| {
            let mut front = front.borrow_mut();
            let front = match &mut *front {
                Some(f) if f.owner == owner && f.sets.len() == sets => f,
                Some(f) if f.owner > owner => return None,
                other => other.insert(Front {
                    owner,
                    sets: (0..sets).map(|_| [None, None]).collect(),
                }),
            };
            // `sets` is a power of two.
            let i = (hash as usize) & (sets - 1);
            Some(f(&mut front.sets[i]))
        })
        .ok()
        .flatten()
}

fn matches(slot: &Option<(u64, Arc<Verified>)>, hash: u64, token: &[u8]) -> bool {
    matches!(slot, Some((h, v)) if *h == hash && *v.token == *token)
}

/// The entry for `token`, if this thread's front holds it.
pub(super) fn get(owner: u64, sets: usize, hash: u64, token: &[u8]) -> Option<Arc<Verified>> {
    with_set(owner, sets, hash, |set| {
        if matches(&set[0], hash, token) {
            return set[0].as_ref().map(|(_, v)| v.clone());
        }
        if matches(&set[1], hash, token) {
            set.swap(0, 1);
            return set[0].as_ref().map(|(_, v)| v.clone());
        }
        None
    })
    .flatten()
}

/// Keeps `v` as the set's most recent entry; the least recent one leaves.
pub(super) fn put(owner: u64, sets: usize, hash: u64, v: Arc<Verified>) {
    with_set(owner, sets, hash, |set| {
        // Two requests of one thread may both have validated the same token.
        if !matches(&set[0], hash, &v.token) {
            set[1] = set[0].take();
        }
        set[0] = Some((hash, v));
    });
}

/// Forgets `token` (expired, or its key retired) in this thread's front.
pub(super) fn remove(owner: u64, sets: usize, hash: u64, token: &[u8]) {
    with_set(owner, sets, hash, |set| {
        for slot in set.iter_mut() {
            if matches(slot, hash, token) {
                *slot = None;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::VerifyKey;
    use std::time::Duration;

    fn verified(token: &str) -> Arc<Verified> {
        Arc::new(Verified {
            claims: Default::default(),
            scopes: Vec::new(),
            exp: 0.0,
            issuer: 0,
            key: Some(Arc::new(VerifyKey::hmac(b"secret"))),
            ttl: Duration::from_secs(60),
            token_id: crate::auth::token_id(&[0; 32]),
            token: token.as_bytes().into(),
            binding: Default::default(),
            principal: Default::default(),
            policy: Default::default(),
            minted: Default::default(),
        })
    }

    fn got(owner: u64, sets: usize, hash: u64, token: &str) -> Option<String> {
        get(owner, sets, hash, token.as_bytes())
            .map(|v| String::from_utf8(v.token.to_vec()).unwrap())
    }

    #[test]
    fn a_hit_is_the_same_token_and_the_same_owner() {
        put(1, 4, 7, verified("a.b.c"));
        assert_eq!(got(1, 4, 7, "a.b.c").as_deref(), Some("a.b.c"));
        // Same hash, other bytes: the comparison, not the hash, decides.
        assert_eq!(got(1, 4, 7, "a.b.d"), None);
        assert_eq!(got(1, 4, 7, "a.b.c."), None);
        // A newer authenticator (a reloaded config) sees nothing of it, and drops the front;
        // an older one, still finishing a request, neither sees nor disturbs the new front.
        put(2, 4, 7, verified("new"));
        assert_eq!(got(2, 4, 7, "a.b.c"), None);
        assert_eq!(got(1, 4, 7, "a.b.c"), None);
        put(1, 4, 7, verified("a.b.c"));
        assert_eq!(got(1, 4, 7, "a.b.c"), None);
        assert_eq!(got(2, 4, 7, "new").as_deref(), Some("new"));
    }

    #[test]
    fn a_set_keeps_its_two_most_recent_tokens() {
        // 4 sets: hashes 1, 5 and 9 share set 1; hash 2 is in set 2.
        put(1, 4, 1, verified("one"));
        put(1, 4, 5, verified("five"));
        put(1, 4, 2, verified("two"));
        assert_eq!(got(1, 4, 1, "one").as_deref(), Some("one"));
        // "one" was just used, so "five" is the one to go.
        put(1, 4, 9, verified("nine"));
        assert_eq!(got(1, 4, 5, "five"), None);
        assert_eq!(got(1, 4, 1, "one").as_deref(), Some("one"));
        assert_eq!(got(1, 4, 9, "nine").as_deref(), Some("nine"));
        assert_eq!(got(1, 4, 2, "two").as_deref(), Some("two"));
        // Putting a token twice does not push out its neighbour.
        put(1, 4, 9, verified("nine"));
        assert_eq!(got(1, 4, 1, "one").as_deref(), Some("one"));
    }

    #[test]
    fn remove_forgets_only_that_token() {
        put(1, 2, 0, verified("x"));
        put(1, 2, 0, verified("y"));
        remove(1, 2, 0, b"x");
        assert_eq!(got(1, 2, 0, "x"), None);
        assert_eq!(got(1, 2, 0, "y").as_deref(), Some("y"));
    }

    #[test]
    fn a_front_never_holds_more_tokens_than_the_cache() {
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(2), 1);
        assert_eq!(sets_for(100), 32);
        assert_eq!(sets_for(4096), MAX_SETS);
        assert_eq!(sets_for(10_000), MAX_SETS);
        assert_eq!(sets_for(u64::MAX), MAX_SETS);
        for n in [1u64, 2, 3, 5, 100, 4095, 10_000] {
            let slots = 2 * sets_for(n) as u64;
            assert!(slots <= n.max(2) && sets_for(n).is_power_of_two(), "{n}");
        }
    }
}
