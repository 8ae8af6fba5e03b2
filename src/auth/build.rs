//! Building an [`Authenticator`] in one step, for a config and, on reload, from the one in
//! force: what a reload keeps (issuers' key stores and refreshers, introspectors, the shared
//! store, the DPoP state) and what it starts afresh (the verified-token cache).

use super::binding::DpopState;
use super::cache::TokenCache;
use super::introspect::Introspector;
use super::jwks::{self, IssuerKeys};
use super::Authenticator;
use crate::config::Config;
use crate::egress::Route;
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use std::sync::Arc;

/// Stops a background task when the last snapshot using it is gone.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything an [`Authenticator`] is made of, gathered before it is made.
struct Parts {
    issuers: Vec<Arc<IssuerKeys>>,
    tasks: Vec<Arc<AbortOnDrop>>,
    introspectors: Vec<Option<Arc<Introspector>>>,
    store: Option<Arc<SharedStore>>,
    dpop: Arc<DpopState>,
    cache_entries: u64,
    metrics: Arc<Metrics>,
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
        let client = jwks::http_client(&Route::Environment);
        let kept_store = previous
            .and_then(|p| p.store.clone())
            .filter(|s| config.cache.as_ref() == Some(&s.config));
        let store = kept_store.or_else(|| {
            let c = config.cache.as_ref()?;
            SharedStore::new(c, metrics.clone())
                .inspect_err(|e| tracing::error!(error = %e, "the shared store cannot be used"))
                .ok()
        });
        let sealing = SharedStore::sealing(store.as_ref());
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
                Some(k) => {
                    // A kept key store follows a reloaded `[cache]` too.
                    k.0.share_through(sealing.clone());
                    k
                }
                None => {
                    // The same keys, other checks: the new store starts with the old one's.
                    let carried =
                        previous.and_then(|p| p.issuers.iter().find(|k| k.config.same_keys(cfg)));
                    let client = client_for(cfg, &client);
                    let keys = match carried {
                        Some(old) => {
                            IssuerKeys::carrying(cfg.clone(), old, client, metrics.clone())
                        }
                        None => IssuerKeys::new(cfg.clone(), client, metrics.clone()),
                    };
                    // Before its refresher starts: a first fetch that fails takes the shared set.
                    keys.share_through(sealing.clone());
                    let task = Arc::new(AbortOnDrop(tokio::spawn(keys.clone().run_refresher())));
                    (keys, task)
                }
            };
            issuers.push(keys);
            tasks.push(task);
        }
        let introspectors = introspectors(config, previous, &client, sealing.as_ref(), &metrics);
        let dpop = previous
            .map(|p| p.dpop.clone())
            .filter(|d| d.verifier.config == config.dpop)
            .unwrap_or_else(|| Arc::new(DpopState::new(&config.dpop)));
        Authenticator::from_parts(Parts {
            issuers,
            tasks,
            introspectors,
            store,
            dpop,
            cache_entries: config.token_cache_entries,
            metrics,
        })
    }

    /// Without refresher tasks: keys load when asked (`bearward explain`, benches). The
    /// verified-token cache is sized as the config says.
    pub fn without_refresh(config: &Config) -> Authenticator {
        let client = jwks::http_client(&Route::Environment);
        let metrics = Arc::new(Metrics::new());
        let issuers = config
            .issuers
            .iter()
            .map(|i| IssuerKeys::new(i.clone(), client_for(i, &client), metrics.clone()))
            .collect();
        Authenticator::from_parts(Parts {
            issuers,
            tasks: Vec::new(),
            introspectors: introspectors(config, None, &client, None, &metrics),
            store: None,
            dpop: Arc::new(DpopState::new(&config.dpop)),
            cache_entries: config.token_cache_entries,
            metrics,
        })
    }

    fn from_parts(p: Parts) -> Authenticator {
        let max_token_bytes = p
            .issuers
            .iter()
            .map(|i| i.config.max_token_bytes)
            .max()
            .unwrap_or(0);
        Authenticator {
            cache: TokenCache::new(p.cache_entries),
            max_token_bytes,
            issuers: p.issuers,
            tasks: p.tasks,
            metrics: p.metrics,
            introspectors: p.introspectors,
            store: p.store,
            dpop: p.dpop,
        }
    }
}

/// One introspector per introspecting issuer, by issuer index; a reload keeps those whose
/// issuer, claim headers and store did not change (with their answers).
/// The client an issuer's calls go through: the one that follows the environment's proxy
/// settings, or one of its own for its `proxy`.
fn client_for(
    cfg: &crate::config::IssuerConfig,
    environment: &jwks::HttpsClient,
) -> jwks::HttpsClient {
    match &cfg.proxy {
        None => environment.clone(),
        Some(p) => jwks::http_client(&Route::Proxy(p.clone())),
    }
}

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
                client_for(cfg, client),
                store.cloned(),
                metrics.clone(),
            )
            .inspect_err(|e| tracing::error!(issuer = %cfg.issuer, error = %e, "introspection cannot be set up"))
            .ok()
        })
        .collect()
}
