//! The store replicas share (`[cache] redis_url`): Valkey or Redis through redis-rs's
//! `ConnectionManager`, which reconnects by itself. Introspection answers live here today; DPoP
//! proof ids and rate-limit counters are meant to join them, through this module only.
//!
//! The store is an optimisation, never a dependency: every command is bounded by
//! `redis_timeout`, and after a failure the store is skipped for a second (then one command
//! probes it again), so a dead or blackholed Redis costs a request at most one timeout and
//! everyone else nothing. Callers fall back to their process caches and must never fail open.

use crate::config::CacheConfig;
use crate::telemetry::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the store is skipped after a failed command.
const BACKOFF: Duration = Duration::from_secs(1);

/// Why a store command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shared store skipped after a recent failure")]
    Skipped,
    #[error("shared store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("shared store: {0}")]
    Redis(String),
}

impl StoreError {
    fn outcome(&self) -> &'static str {
        match self {
            StoreError::Skipped => "skipped",
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(_) => "error",
        }
    }
}

/// A handle on the shared store; cheap to share between config snapshots.
pub struct SharedStore {
    conn: ConnectionManager,
    timeout: Duration,
    prefix: String,
    /// The config it was made from: a reload that keeps it keeps the connection.
    pub config: CacheConfig,
    /// Milliseconds after `epoch` before which commands are skipped; 0: not skipping.
    skip_until: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl SharedStore {
    /// A store that connects on first use (needs a Tokio runtime): a Redis that is down when
    /// bearward starts delays nothing.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Arc<SharedStore>, String> {
        let url = std::str::from_utf8(&config.redis_url.0).map_err(|e| e.to_string())?;
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(|e| e.to_string())?;
        Ok(Arc::new(SharedStore {
            conn,
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            config: config.clone(),
            skip_until: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }))
    }

    /// `prefix` + `key`: every key bearward writes starts with the deployment's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Is the store in use (not skipped after a failure)?
    pub fn healthy(&self) -> bool {
        self.skip_until.load(Ordering::Relaxed) == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        let until = self.skip_until.load(Ordering::Relaxed);
        if until != 0 && self.now_ms() < until {
            self.metrics.store_op(op, StoreError::Skipped.outcome());
            return Err(StoreError::Skipped);
        }
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => {
                if until != 0 {
                    tracing::info!("shared store reachable again");
                }
                self.skip_until.store(0, Ordering::Relaxed);
                self.metrics.store_op(op, "ok");
            }
            Err(e) => {
                let first = self.skip_until.swap(
                    self.now_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000),
                    Ordering::Relaxed,
                ) == 0;
                if first {
                    tracing::warn!(error = %e, "shared store failed; using the process caches only, retrying in 1s");
                }
                self.metrics.store_op(op, e.outcome());
            }
        }
        result
    }

    /// The value at `key` (prefixed), if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run("get", redis::cmd("GET").arg(self.key(key)).to_owned())
            .await
    }

    /// Sets `key` (prefixed) to `value` for `ttl` (at least a millisecond).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(
            "set",
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("PX")
                .arg(ms)
                .to_owned(),
        )
        .await
    }

    /// Sets `key` (prefixed) for `ttl` only if it is not there (`SET NX PX`): `true` when this
    /// call set it, `false` when it was there already. Atomic across replicas.
    pub async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .run(
                "set_nx",
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .to_owned(),
            )
            .await?;
        Ok(set.is_some())
    }
}
