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

/// GCRA in one server-side step, on the store's own clock (`TIME`), so replicas with skewed
/// clocks share one schedule. The key holds the theoretical arrival time in microseconds and
/// expires when it is in the past.
static GCRA: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tolerance = emission * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now + tolerance - new_tat) / emission)}
",
    )
});

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
        let mut conn = self.conn.clone();
        self.guarded(op, async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// One store operation: skipped while the store is backing off, bounded by the timeout,
    /// counted, and a failure starts the back-off.
    async fn guarded<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let until = self.skip_until.load(Ordering::Relaxed);
        if until != 0 && self.now_ms() < until {
            self.metrics.store_op(op, StoreError::Skipped.outcome());
            return Err(StoreError::Skipped);
        }
        let result = match tokio::time::timeout(self.timeout, work).await {
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

    /// One GCRA step (rate limits across replicas) for `key` (prefixed), atomically in the
    /// store: `emission_us` microseconds per request, bursts of `burst`. Returns whether the
    /// request conforms, the microseconds to wait when it does not, and the burst left.
    /// One round trip: `EVALSHA`, with `EVAL` once if the store has not seen the script.
    pub async fn gcra(
        &self,
        key: &str,
        emission_us: u64,
        burst: u32,
    ) -> Result<(bool, u64, u32), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = GCRA.key(self.key(key));
        invocation.arg(emission_us).arg(burst);
        let (ok, wait, left): (i64, i64, i64) = self
            .guarded(
                "gcra",
                async move { invocation.invoke_async(&mut conn).await },
            )
            .await?;
        Ok((
            ok == 1,
            u64::try_from(wait).unwrap_or(0),
            u32::try_from(left).unwrap_or(0),
        ))
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
