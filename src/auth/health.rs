//! What the authenticator reports: `/readyz`'s text and the scrape-time gauges.

use super::Authenticator;

impl Authenticator {
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

    /// Each issuer's keys as they stand, for `/status`: the ones in use (`kid`, kind, `alg`;
    /// never key material), where they came from and how long ago, whether they are past
    /// `max_stale`, the last fetch error, the refused ones; and each introspection endpoint's
    /// health. An HMAC issuer's secret is listed as a key of kind `Hmac`, nothing of it shown.
    pub fn status(&self) -> serde_json::Value {
        self.issuers
            .iter()
            .map(|i| {
                let status = i.status();
                let latest = i.latest();
                let keys: Vec<serde_json::Value> = latest.iter().flat_map(|s| &s.keys).map(|k| {
                    serde_json::json!({
                        "kid": k.kid,
                        "kind": format!("{:?}", k.kind),
                        "alg": k.alg.map(|a| format!("{a:?}")),
                    })
                }).collect();
                let introspection = self
                    .introspectors
                    .iter()
                    .flatten()
                    .find(|x| x.issuer.issuer == i.config.issuer)
                    .map(|x| x.health());
                serde_json::json!({
                    "issuer": i.config.issuer,
                    "takes_jwts": i.config.takes_jwts(),
                    "keys_usable": !i.config.takes_jwts() || i.usable().is_some(),
                    "keys": keys,
                    "keys_from": latest.as_ref().map(|s| s.source.clone()),
                    "keys_fetched_seconds_ago": latest.as_ref().map(|s| s.fetched_at.elapsed().as_secs()),
                    "last_error": status.last_error,
                    "refused_keys": status.refused.iter().map(|r| serde_json::json!({
                        "kid": r.kid,
                        "reason": r.reason,
                    })).collect::<Vec<_>>(),
                    "introspection": introspection,
                    // How many of each: enough to see that an edit took, not the list itself.
                    "revoked": i.config.revoked.as_ref().map(|r| serde_json::json!({
                        "token_ids": r.token_ids.len(),
                        "subjects": r.subjects.len(),
                        "clients": r.clients.len(),
                        "issued_before": r.issued_before,
                    })),
                })
            })
            .collect()
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
