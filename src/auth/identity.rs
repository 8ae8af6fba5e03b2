//! A validated caller as the rest of bearward sees it: its claims as header text.

use super::Verified;
use http::HeaderValue;
use std::sync::Arc;

/// A validated caller: the claims the upstream may be told about. Shared with the
/// verified-token cache, so a cache hit copies nothing.
#[derive(Debug, Clone)]
pub struct Identity(pub Arc<Verified>);

impl Identity {
    /// The header value for a claim (`scope` gives the normalized scope list, space-separated).
    pub fn header_value(&self, claim: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.text(claim)?).ok()
    }

    /// A JWT's payload as the token carries it (base64url, between its dots) for
    /// `payload_header`; `None` for an opaque token, which has none.
    pub fn payload(&self) -> Option<HeaderValue> {
        // Only a verified JWT is kept with its token (and a key), and its parts are base64url.
        self.0.key.as_ref()?;
        let mut parts = self.0.token.split(|b| *b == b'.');
        let payload = parts.nth(1).filter(|p| !p.is_empty())?;
        HeaderValue::from_bytes(payload).ok()
    }

    /// A claim's text as [`Identity::header_value`] gives it, whether or not a header could
    /// carry it.
    pub fn text(&self, claim: &str) -> Option<String> {
        if claim == "scope" {
            return Some(self.0.scopes.join(" "));
        }
        // A top-level claim of exactly this name first, then a dotted path into objects.
        // The path is parsed only when no top-level claim has exactly this name.
        let found = self.0.claims.get(claim).or_else(|| {
            let path = crate::routes::claim_path(claim)?;
            crate::routes::claim_at(&self.0.claims, claim, &path)
        });
        value_text(found?)
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

/// What bearward minted for one verified token, per upstream (a signed identity assertion, an
/// exchanged token), kept with the token so a cache hit reuses it. Keyed by the minter's id,
/// which a reload renews, so a new config never picks up an old minter's value. A few entries:
/// a token reaches a handful of upstreams, and the oldest goes when a new one does not fit.
#[derive(Default)]
pub struct Minted(std::sync::Mutex<Vec<(u64, HeaderValue, u64)>>);

/// Entries kept per token: past this many upstreams, the oldest is minted again when used.
const MINTED_ENTRIES: usize = 4;

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minted")
    }
}

/// Whole seconds since the epoch: the clock kept values' `until` is read on.
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Minter ids, unique in the process: a reload makes new minters, whose kept values never mix
/// with the old ones'.
static NEXT_MINTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Minted {
    /// A new minter's id.
    pub fn new_minter() -> u64 {
        NEXT_MINTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The value `minter` made, while `now` (seconds since the epoch) is before its `until`.
    pub fn get(&self, minter: u64, now: u64) -> Option<HeaderValue> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.iter()
            .find(|(m, _, until)| *m == minter && now < *until)
            .map(|(_, v, _)| v.clone())
    }

    /// Keeps `value` for `minter` until `until`.
    pub fn put(&self, minter: u64, value: HeaderValue, until: u64) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.retain(|(m, _, _)| *m != minter);
        if kept.len() >= MINTED_ENTRIES {
            kept.remove(0);
        }
        kept.push((minter, value, until));
    }
}
