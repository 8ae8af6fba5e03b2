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
