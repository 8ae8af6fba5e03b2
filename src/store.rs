//! The store replicas share (`[cache] redis_url`): Valkey or Redis through redis-rs's
//! `ConnectionManager`, which reconnects by itself. Introspection answers, DPoP proof ids and
//! rate-limit buckets (GCRA batches, below) live here, through this module only.
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

/// GCRA in one server-side step per key, on the store's own clock (`TIME`), so replicas with
/// skewed clocks share one schedule. Each key holds its theoretical arrival time (TAT) in
/// microseconds and expires when that is in the past. One call takes a batch: `KEYS[i]` with
/// `ARGV[3i-2]` (microseconds per request), `ARGV[3i-1]` (burst) and `ARGV[3i]` (how many
/// requests of the batch count under it: a busy client's requests come together, and one
/// GET/SET serves them all). For `n` requests at one instant the sequential GCRA allows the
/// first `k = min(n, floor((now + tolerance - tat) / emission))` and refuses the rest, so
/// that is computed at once. The answer is one string of three integers per key: `k`, the
/// microseconds a refused request waits, and the burst left after the last one allowed.
const GCRA_SOURCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local emission = tonumber(ARGV[3 * i - 2])
  local tolerance = emission * tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local k = math.floor((now + tolerance - tat) / emission)
  if k > n then k = n end
  if k < 0 then k = 0 end
  local new_tat = tat + k * emission
  if k > 0 then
    redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  end
  out[i] = string.format('%d %d %d', k, new_tat + emission - tolerance - now,
    math.floor((now + tolerance - new_tat) / emission))
end
return table.concat(out, ' ')
";

/// [`GCRA_SOURCE`]'s SHA-1, for `EVALSHA`.
static GCRA: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(GCRA_SOURCE));

/// Checks waiting for the next `GCRA` batch; beyond this a check is answered as a store
/// failure at once (the caller's fallback limit applies) rather than queued without bound.
const GCRA_QUEUE: usize = 4096;
/// Keys per `GCRA` call.
const GCRA_BATCH: usize = 256;

/// One request's GCRA step, waiting for a batch.
struct GcraCheck {
    key: Arc<str>,
    emission_us: u64,
    burst: u32,
    done: tokio::sync::oneshot::Sender<Result<GcraAnswer, StoreError>>,
}

/// Whether a request conforms, the microseconds to wait when it does not, the burst left.
pub type GcraAnswer = (bool, u64, u32);

/// Hash-tag shares of one route's buckets on a cluster: up to this many script calls per
/// batch and route, on the masters those slots land on. 32 shares made a batch of 32 subjects
/// about 20 calls (0.56x of no limit with 1,000 subjects, benches/load.py); 4 make it 4 calls
/// (0.65x). A route's limit traffic goes to at most 4 masters, which a rate limit does not
/// outgrow.
pub const BUCKET_SHARDS: u8 = 4;

/// How long the store is skipped after a failed command.
const BACKOFF: Duration = Duration::from_secs(1);

/// Why a store command gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("shared store queue full")]
    Busy,
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
            StoreError::Busy => "busy",
            StoreError::Timeout(_) => "timeout",
            StoreError::Redis(_) => "error",
        }
    }
}

/// The connection: to one node (reconnecting by itself), to a Redis Cluster (its slot map
/// kept and followed by the client: `MOVED`, `ASK`, a failed-over master), or to the master a
/// set of Redis Sentinels names.
#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(Arc<SentinelMaster>),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match &mut self {
            Conn::Node(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
            Conn::Sentinel(m) => m.query(cmd).await,
        }
    }

    /// One node holds every key (no hash slots).
    fn single(&self) -> bool {
        !matches!(self, Conn::Cluster(_))
    }
}

/// The master that Redis Sentinels name, and one connection to it. The sentinels are asked
/// on first use, and again after a command on that connection fails in a way that says the
/// master is gone or has stepped down (the connection broke or timed out, `READONLY`,
/// `MASTERDOWN`): so a failover costs the commands in flight and the one-second back-off, not
/// a restart. redis-rs checks that the node the sentinels name answers `ROLE` as a master.
///
/// The asking runs in a task of its own, one at a time, and commands wait for it within their
/// own timeout: redis-rs gives each sentinel a second to connect and half a second to answer,
/// and takes their answers in the configured order, so with a sentinel down (a node gone, its
/// address silent) one lookup takes longer than `redis_timeout`. Were the lookup a command's
/// own, each command's timeout would cancel it and no master would ever be found.
struct SentinelMaster {
    /// The sentinels' client; only the lookup task uses it.
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// The connection to the master, and a number that tells it from the ones before it.
    current: std::sync::Mutex<Option<Numbered>>,
    connections: AtomicU64,
    /// A lookup task is running.
    asking: std::sync::atomic::AtomicBool,
    /// Told when a lookup ends, found or not.
    done: tokio::sync::Notify,
    /// Why the last lookup found nothing.
    failure: std::sync::Mutex<Option<String>>,
    limits: redis::AsyncConnectionConfig,
    metrics: Arc<Metrics>,
}

/// Ends a lookup task however it ends (a panic included): the next command may start one,
/// and the commands waiting are told.
struct Ending(Arc<SentinelMaster>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.asking.store(false, Ordering::Release);
        self.0.done.notify_waiters();
    }
}

/// A connection to the master, numbered.
type Numbered = (u64, redis::aio::MultiplexedConnection);

/// The longest one lookup may take, whatever redis-rs's own bounds add up to.
const LOOKUP_LIMIT: Duration = Duration::from_secs(10);

impl SentinelMaster {
    async fn query<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let (n, mut conn) = self.connection().await?;
        let answer = cmd.query_async(&mut conn).await;
        let gone = answer.as_ref().err().is_some_and(|e| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || matches!(
                    e.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
                    )
                )
        });
        if gone {
            self.forget(Some(n));
        }
        answer
    }

    /// Drops connection `n` (any, with `None`) so the next command asks the sentinels; a
    /// command that failed on an older connection leaves a newer one be. Only failures call
    /// it: a command dropped because its request went away says nothing of the master, and
    /// must not make clients that hang up cost a lookup each.
    fn forget(&self, n: Option<u64>) {
        let mut current = self.slot();
        if current
            .as_ref()
            .is_some_and(|(c, _)| n.is_none_or(|n| n == *c))
        {
            *current = None;
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Numbered>> {
        // Nothing can leave it half-written: a panic while it is held leaves a whole value.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self) -> Option<Numbered> {
        self.slot().clone()
    }

    /// The connection to the master; without one, the outcome of a lookup (started here
    /// unless one is running).
    async fn connection(self: &Arc<Self>) -> redis::RedisResult<Numbered> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        // Made before the look at `asking`, so the end of a lookup cannot slip between.
        let done = self.done.notified();
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if !self.asking.swap(true, Ordering::AcqRel) {
            let ending = Ending(self.clone());
            tokio::spawn(async move {
                let me = &ending.0;
                let (outcome, failure) = match tokio::time::timeout(LOOKUP_LIMIT, me.ask()).await {
                    Ok(Ok(())) => ("ok", None),
                    Ok(Err(e)) => ("error", Some(e.to_string())),
                    Err(_) => (
                        "timeout",
                        Some(format!("no master found within {LOOKUP_LIMIT:?}")),
                    ),
                };
                me.metrics.store_op("sentinel_lookup", outcome);
                let mut last = me
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Once per outage: while the sentinels still name a dead master (until their
                // down-after-milliseconds, a minute in Bitnami's chart), every lookup fails.
                match (&failure, last.is_some()) {
                    (Some(f), false) => {
                        tracing::warn!(error = %f, "shared store: the sentinels named no master");
                    }
                    (Some(f), true) => {
                        tracing::debug!(error = %f, "shared store: the sentinels named no master");
                    }
                    (None, _) => {}
                }
                *last = failure;
            });
        }
        done.await;
        self.cached().ok_or_else(|| {
            let why = self
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "the sentinels named no master".to_owned());
            redis::RedisError::from((redis::ErrorKind::Io, "sentinel lookup", why))
        })
    }

    async fn ask(&self) -> redis::RedisResult<()> {
        let mut sentinels = self.client.lock().await;
        // The lookup before this one may have ended just before it was started.
        if self.cached().is_some() {
            return Ok(());
        }
        let client = sentinels.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.limits)
            .await?;
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(master = %client.get_connection_info().addr(), "shared store: the sentinels name this master");
        *self.slot() = Some((n, conn));
        Ok(())
    }
}

/// A handle on the shared store; cheap to share between config snapshots.
pub struct SharedStore {
    conn: Conn,
    timeout: Duration,
    prefix: String,
    /// The config it was made from: a reload that keeps it keeps the connection.
    pub config: CacheConfig,
    /// Milliseconds after `epoch` before which commands are skipped; 0: not skipping.
    skip_until: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// Rate-limit checks for the batching task, started on first use.
    gcra_queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<GcraCheck>>,
    /// From `[cache] secret`: seals what is kept of security decisions.
    seal: Option<Seal>,
    /// When (ms after `epoch`) a value that did not open was last logged at warn; 0: never.
    forged_warned: AtomicU64,
}

/// AES-256-GCM under a key derived (HKDF-SHA256) from `[cache] secret`, with each value's
/// store key as its associated data: a value written by anything without the secret fails to
/// open, and so does a sealed value moved under another key (another token's, another
/// question's). Sealed: a version byte, a random 96-bit nonce, the ciphertext and its tag.
struct Seal(aws_lc_rs::aead::LessSafeKey);

const SEALED_V1: u8 = 1;

/// The longest sealed value read or written: an introspection answer with its claims, a
/// decision, an exchanged token are a few KiB.
const SEALED_MAX: usize = 64 * 1024;

impl Seal {
    fn new(secret: &[u8]) -> Seal {
        use aws_lc_rs::{aead, hkdf};
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"bearward shared store").extract(secret);
        let okm = prk
            .expand(&[b"aes-256-gcm v1"], &aead::AES_256_GCM)
            .expect("32 bytes is within HKDF-SHA256's output");
        Seal(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
    }

    fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + value.len() + 16);
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut out[1 + NONCE_LEN..],
            )
            .expect("a value far below GCM's limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open(&self, key: &str, mut sealed: Vec<u8>) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).ok()?;
        let body = &mut sealed[1 + NONCE_LEN..];
        let n = self
            .0
            .open_in_place(nonce, Aad::from(key.as_bytes()), body)
            .ok()?
            .len();
        sealed.drain(..1 + NONCE_LEN);
        sealed.truncate(n);
        Some(sealed)
    }
}

impl SharedStore {
    /// A store that connects on first use (needs a Tokio runtime): a Redis that is down when
    /// bearward starts delays nothing.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Arc<SharedStore>, String> {
        let conn = if let Some(s) = &config.sentinel {
            Conn::Sentinel(Arc::new(
                sentinel(config, s, metrics.clone()).map_err(|e| e.to_string())?,
            ))
        } else if config.cluster_urls.is_empty() {
            let client = client(config).map_err(|e| e.to_string())?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Conn::Node(
                ConnectionManager::new_lazy_with_config(client, manager)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            Conn::Cluster(cluster(config).map_err(|e| e.to_string())?)
        };
        Ok(Arc::new(SharedStore {
            conn,
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            config: config.clone(),
            skip_until: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
            gcra_queue: std::sync::OnceLock::new(),
            seal: config.secret.as_ref().map(|s| Seal::new(&s.0)),
            forged_warned: AtomicU64::new(0),
        }))
    }

    /// `prefix` + `key`: every key bearward writes starts with the deployment's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The key of a rate-limit bucket (`id`: its hashed subject). On a cluster the route and
    /// one of [`BUCKET_SHARDS`] shares of its buckets make a hash tag, so a batch's keys fall in
    /// at most that many slots per route, one script call each, instead of a slot (and a call)
    /// per key; on one node, the plain name.
    pub fn bucket_key(&self, route_id: &str, id: &[u8]) -> String {
        let hex = crate::jose::hex(id);
        if self.conn.single() {
            self.key(&format!("ratelimit:{route_id}:{hex}"))
        } else {
            let shard = id.first().copied().unwrap_or(0) % BUCKET_SHARDS;
            self.key(&format!("ratelimit:{{{route_id}.{shard}}}:{hex}"))
        }
    }

    /// Is the store in use (not skipped after a failure)?
    pub fn healthy(&self) -> bool {
        self.skip_until.load(Ordering::Relaxed) == 0
    }

    /// Backing off after a failure?
    fn skipping(&self) -> bool {
        let until = self.skip_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        self.guarded(op, async move { conn.query::<T>(&cmd).await })
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
        if self.skipping() {
            self.metrics.store_op(op, StoreError::Skipped.outcome());
            return Err(StoreError::Skipped);
        }
        let span = crate::trace::call_span();
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => {
                // A master that went silent (a partition, a paused VM) leaves its connection
                // open: the timeout is the only sign, and after a failover the sentinels name
                // another. The back-off below bounds how often this asks them.
                if let Conn::Sentinel(m) = &self.conn {
                    m.forget(None);
                }
                Err(StoreError::Timeout(self.timeout))
            }
        };
        crate::trace::end_call(
            span,
            op,
            || {
                vec![
                    crate::trace::attr("db.system.name", "redis"),
                    crate::trace::attr("db.operation.name", op),
                ]
            },
            result.as_ref().err().map(|e| e.outcome().to_owned()),
        );
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

    /// One GCRA step (rate limits across replicas) for `key` (made with [`SharedStore::key`]), atomically in the
    /// store: `emission_us` microseconds per request, bursts of `burst`.
    ///
    /// Checks are batched: a task sends whatever checks are waiting in one `EVALSHA` (after a
    /// `SCRIPT LOAD` when the store has not seen the script), and while that call is out the next batch
    /// gathers. Each check still waits for exactly one round trip and is decided in arrival
    /// order, exactly as one call per request would, but a replica under load sends one
    /// command per batch instead of per request, which is most of what the store costs.
    /// Batches are counted as `gcra` operations.
    pub async fn gcra(
        self: &Arc<Self>,
        key: Arc<str>,
        emission_us: u64,
        burst: u32,
    ) -> Result<GcraAnswer, StoreError> {
        if self.skipping() {
            self.metrics.store_op("gcra", StoreError::Skipped.outcome());
            return Err(StoreError::Skipped);
        }
        let queue = self.gcra_queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(GCRA_QUEUE);
            tokio::spawn(gcra_batches(Arc::downgrade(self), rx));
            tx
        });
        let (done, answer) = tokio::sync::oneshot::channel();
        let check = GcraCheck {
            key,
            emission_us,
            burst,
            done,
        };
        if queue.try_send(check).is_err() {
            self.metrics.store_op("gcra", StoreError::Busy.outcome());
            return Err(StoreError::Busy);
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Redis("rate-limit batch dropped".into())))
    }

    /// The store for security decisions (introspection answers, AuthZEN decisions, exchanged
    /// tokens): this one when `[cache] secret` seals them, else none, and they stay per process.
    pub fn sealing(store: Option<&Arc<SharedStore>>) -> Option<Arc<SharedStore>> {
        store.filter(|s| s.seal.is_some()).cloned()
    }

    /// The value at `key` (prefixed) that [`SharedStore::set_sealed`] wrote, if any: `None` too when it
    /// does not open (forged, moved from another key, sealed with another secret), which is
    /// counted as `op="open"`, `outcome="forged"`.
    /// Read at most [`SEALED_MAX`] bytes (`GETRANGE`): whatever else writes to the store
    /// cannot make a replica read a value of its choosing size; a longer one does not open.
    pub async fn get_sealed(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(seal) = &self.seal else {
            return Ok(None);
        };
        let full = self.key(key);
        let cmd = redis::cmd("GETRANGE")
            .arg(&full)
            .arg(0)
            .arg(SEALED_MAX)
            .to_owned();
        // `GETRANGE` of a missing key is empty, as no sealed value is.
        let sealed: Vec<u8> = self.run("get", cmd).await?;
        if sealed.is_empty() {
            return Ok(None);
        }
        let opened = (sealed.len() <= SEALED_MAX)
            .then(|| seal.open(&full, sealed))
            .flatten();
        if opened.is_none() {
            // The key's kind only: its last part is a hash of the token or question.
            let kind = full.rsplit_once(':').map_or("", |(kind, _)| kind);
            self.metrics.store_op("open", "forged");
            // At most one line a minute at warn: a new secret (or a rolling upgrade from a
            // version that stored plain values) leaves every older value unreadable at once,
            // and anything that can write to the store could otherwise fill the log.
            let now = self.now_ms();
            let last = self.forged_warned.load(Ordering::Relaxed);
            let due = last == 0 || now.saturating_sub(last) >= 60_000;
            if due
                && self
                    .forged_warned
                    .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(kind, "shared store: a value that does not open under [cache] secret was ignored (counted as op=open, outcome=forged; more this minute at debug)");
            } else {
                tracing::debug!(
                    kind,
                    "shared store: a value that does not open under [cache] secret was ignored"
                );
            }
        }
        Ok(opened)
    }

    /// [`SharedStore::set`], sealed; nothing is written without `[cache] secret`.
    pub async fn set_sealed(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let Some(seal) = &self.seal else {
            return Ok(());
        };
        let sealed = seal.seal(&self.key(key), value);
        if sealed.len() > SEALED_MAX {
            // It could not be read back; the process cache keeps it.
            return Ok(());
        }
        self.set(key, &sealed, ttl).await
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

/// The client for `[cache]`: its URL, the password given apart from it, and for `rediss://` the
/// roots (`redis_ca_file`, else the system's) and client certificate.
fn client(config: &CacheConfig) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let url = std::str::from_utf8(&config.redis_url.0).map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "URL is not UTF-8"))
    })?;
    let mut info = url.into_connection_info()?;
    if let Some(p) = config.password.as_ref() {
        let password = String::from_utf8_lossy(&p.0);
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    if let Some(u) = &config.username {
        let settings = info.redis_settings().clone().set_username(u);
        info = info.set_redis_settings(settings);
    }
    match &config.tls {
        None => redis::Client::open(info),
        Some(tls) => redis::Client::build_with_tls(info, certificates(tls)),
    }
}

/// `redis_ca_file` and the client certificate, as redis-rs takes them.
fn certificates(tls: &crate::config::RedisTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.0.clone(),
            }),
        root_cert: tls.ca_pem.clone(),
    }
}

/// The client of a Redis Cluster, connecting in the background on first use: its seed nodes,
/// the password given apart from them, and the TLS of `rediss://` seeds.
fn cluster(config: &CacheConfig) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    use redis::IntoConnectionInfo;
    let mut nodes = Vec::with_capacity(config.cluster_urls.len());
    for u in &config.cluster_urls {
        let url = std::str::from_utf8(&u.0).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "URL is not UTF-8"))
        })?;
        nodes.push(url.into_connection_info()?);
    }
    // Two tries: a command for a master that just died fails within the timeout, and the
    // caller falls back; the client refreshes its slot map meanwhile.
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes).retries(2);
    if let Some(p) = config.password.as_ref() {
        builder = builder.password(String::from_utf8_lossy(&p.0));
    }
    if let Some(u) = &config.username {
        builder = builder.username(u);
    }
    if let Some(tls) = &config.tls {
        builder = builder.certs(certificates(tls));
    }
    let limits = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(config.timeout)
        .set_response_timeout(config.timeout);
    Ok(builder
        .build()?
        .get_pending_async_connection_with_config(limits))
}

/// The sentinels' client: their URLs and their password, the master's password
/// (`redis_password_file`: the sentinels give only the master's address) and, for `rediss://`
/// sentinels, TLS to them and to the master, with the same roots and client certificate.
fn sentinel(
    config: &CacheConfig,
    s: &crate::config::SentinelConfig,
    metrics: Arc<Metrics>,
) -> redis::RedisResult<SentinelMaster> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    use redis::IntoConnectionInfo;
    let mut addrs = Vec::with_capacity(s.urls.len());
    for u in &s.urls {
        let url = std::str::from_utf8(&u.0).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "URL is not UTF-8"))
        })?;
        addrs.push(url.into_connection_info()?.addr().clone());
    }
    let tls = matches!(addrs.first(), Some(redis::ConnectionAddr::TcpTls { .. }));
    let mut b = SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)?;
    if let Some(p) = &config.password {
        b = b.set_client_to_redis_password(String::from_utf8_lossy(&p.0));
    }
    if let Some(u) = &config.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.password {
        b = b.set_client_to_sentinel_password(String::from_utf8_lossy(&p.0));
    }
    if tls {
        b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(t) = &config.tls {
            b = b
                .set_client_to_redis_certificates(certificates(t))
                .set_client_to_sentinel_certificates(certificates(t));
        }
    }
    Ok(SentinelMaster {
        client: tokio::sync::Mutex::new(b.build()?),
        current: std::sync::Mutex::new(None),
        connections: AtomicU64::new(0),
        asking: std::sync::atomic::AtomicBool::new(false),
        done: tokio::sync::Notify::new(),
        failure: std::sync::Mutex::new(None),
        metrics,
        limits: redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout)),
    })
}

impl SharedStore {
    /// One batch of groups through the script: one call on a node; on a cluster one call per
    /// hash slot, all in flight at once (a script's keys must share a slot). The answer per
    /// group, in order; a failed call fails only its own groups.
    async fn send_gcra(
        self: &Arc<Self>,
        groups: &[Group],
    ) -> Vec<Result<(u32, u64, u32), StoreError>> {
        let parts: Vec<Vec<usize>> = match &self.conn {
            Conn::Node(_) | Conn::Sentinel(_) => vec![(0..groups.len()).collect()],
            Conn::Cluster(_) => {
                let mut by_slot: std::collections::HashMap<
                    redis::cluster_routing::Slot,
                    Vec<usize>,
                    foldhash::fast::RandomState,
                > = std::collections::HashMap::default();
                for (i, g) in groups.iter().enumerate() {
                    let slot = redis::cluster_routing::Slot::for_key(g.key.as_bytes());
                    by_slot.entry(slot).or_default().push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let calls = parts.iter().map(|part| {
            let conn = self.conn.clone();
            let evalsha = gcra_call("EVALSHA", GCRA.get_hash(), groups, part);
            self.guarded("gcra", async move {
                match conn.clone().query::<Vec<u8>>(&evalsha).await {
                    // A store that has not seen the script (new, restarted, flushed, a
                    // cluster master failed over) runs it from source, which also caches it.
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        conn.query(&gcra_call("EVAL", GCRA_SOURCE, groups, part))
                            .await
                    }
                    answer => answer,
                }
            })
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut out: Vec<Result<(u32, u64, u32), StoreError>> =
            vec![Err(StoreError::Skipped); groups.len()];
        for (part, answer) in parts.iter().zip(answers) {
            let parsed = answer.and_then(|text| {
                parse_gcra(&text, part.len()).ok_or_else(|| {
                    StoreError::Redis(format!(
                        "rate-limit script answered {:?} for {} keys",
                        String::from_utf8_lossy(&text[..text.len().min(64)]),
                        part.len()
                    ))
                })
            });
            match parsed {
                Ok(v) => {
                    for (g, a) in part.iter().zip(v) {
                        out[*g] = Ok(a);
                    }
                }
                Err(e) => {
                    for g in part {
                        out[*g] = Err(e.clone());
                    }
                }
            }
        }
        out
    }
}

/// `EVALSHA <sha>` or `EVAL <source>` of the GCRA script over the groups `part` names, written
/// in place: redis-rs's `ScriptInvocation` keeps each argument in its own `Vec` and copies them
/// all again into a `Cmd`, four allocations per key.
fn gcra_call(verb: &str, script: &str, groups: &[Group], part: &[usize]) -> redis::Cmd {
    let mut cmd = redis::cmd(verb);
    cmd.arg(script).arg(part.len());
    for &g in part {
        cmd.arg(&*groups[g].key);
    }
    for &g in part {
        let g = &groups[g];
        cmd.arg(g.emission_us).arg(g.burst).arg(g.count);
    }
    cmd
}

/// One key of a batch and the checks counted under it, in arrival order.
struct Group {
    key: Arc<str>,
    emission_us: u64,
    burst: u32,
    count: u32,
}

/// Sends the waiting GCRA checks in batches until the store is dropped.
async fn gcra_batches(
    store: std::sync::Weak<SharedStore>,
    mut queue: tokio::sync::mpsc::Receiver<GcraCheck>,
) {
    let mut checks = Vec::with_capacity(GCRA_BATCH);
    // Per check: its group and its place there. Checks of one bucket share its `Arc<str>`, so
    // the pointer finds the group; a bucket made twice (evicted meanwhile) makes two groups,
    // which the script counts one after the other, as it should.
    let mut places: Vec<(usize, u32)> = Vec::with_capacity(GCRA_BATCH);
    let mut groups: Vec<Group> = Vec::with_capacity(GCRA_BATCH);
    let mut index: std::collections::HashMap<
        (usize, u64, u32),
        usize,
        foldhash::fast::RandomState,
    > = std::collections::HashMap::with_capacity_and_hasher(GCRA_BATCH, Default::default());
    while queue.recv_many(&mut checks, GCRA_BATCH).await > 0 {
        let Some(store) = store.upgrade() else { return };
        for check in &checks {
            let id = (
                Arc::as_ptr(&check.key).cast::<u8>() as usize,
                check.emission_us,
                check.burst,
            );
            let g = *index.entry(id).or_insert_with(|| {
                groups.push(Group {
                    key: check.key.clone(),
                    emission_us: check.emission_us,
                    burst: check.burst,
                    count: 0,
                });
                groups.len() - 1
            });
            places.push((g, groups[g].count));
            groups[g].count += 1;
        }
        let answers = store.send_gcra(&groups).await;
        for (check, (g, place)) in checks.drain(..).zip(places.drain(..)) {
            let result = match &answers[g] {
                Ok((allowed, wait, left)) => Ok(if place < *allowed {
                    (true, 0, left.saturating_add(allowed - 1 - place))
                } else {
                    (false, *wait, 0)
                }),
                Err(e) => Err(e.clone()),
            };
            // The request may have gone (client closed): nothing waits for its answer.
            let _ = check.done.send(result);
        }
        groups.clear();
        index.clear();
    }
}

/// The script's answer: per key, how many of its checks were allowed, the microseconds the
/// others wait, and the burst left after the last one allowed. `None` unless exactly `keys`.
fn parse_gcra(text: &[u8], keys: usize) -> Option<Vec<(u32, u64, u32)>> {
    let mut numbers = text
        .split(|b| *b == b' ')
        .map(|n| std::str::from_utf8(n).ok()?.parse::<i64>().ok());
    let mut out = Vec::with_capacity(keys);
    for _ in 0..keys {
        let allowed = u32::try_from(numbers.next()??).ok()?;
        let wait = u64::try_from(numbers.next()??).unwrap_or(0);
        let left = u32::try_from(numbers.next()??).unwrap_or(0);
        out.push((allowed, wait, left));
    }
    numbers.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{parse_gcra, Seal};

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_secret_and_untouched() {
        let seal = Seal::new(&[7u8; 32]);
        let v = br#"{"decision":true}"#;
        let sealed = seal.seal("p:authzen:a", v);
        assert_eq!(
            seal.open("p:authzen:a", sealed.clone()).as_deref(),
            Some(&v[..])
        );
        // Not the plaintext, and a new nonce each time.
        assert!(!sealed.windows(v.len()).any(|w| w == v));
        assert_ne!(seal.seal("p:authzen:a", v), sealed);
        assert_eq!(seal.open("p:authzen:b", sealed.clone()), None, "moved");
        assert_eq!(
            Seal::new(&[8u8; 32]).open("p:authzen:a", sealed.clone()),
            None
        );
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(seal.open("p:authzen:a", t), None, "byte {i} flipped");
        }
        assert_eq!(
            seal.open("p:authzen:a", sealed[..sealed.len() - 1].to_vec()),
            None
        );
        assert_eq!(
            seal.open("p:authzen:a", v.to_vec()),
            None,
            "written in the clear"
        );
        assert_eq!(seal.open("p:authzen:a", Vec::new()), None);
    }

    #[test]
    fn gcra_answers_are_read_exactly() {
        assert_eq!(
            parse_gcra(b"3 5000 7 0 1200 -1", 2),
            Some(vec![(3, 5000, 7), (0, 1200, 0)])
        );
        assert_eq!(parse_gcra(b"3 5000 7", 2), None);
        assert_eq!(parse_gcra(b"3 5000 7 1", 1), None);
        assert_eq!(parse_gcra(b"3 x 7", 1), None);
        assert_eq!(parse_gcra(b"-3 0 7", 1), None);
        assert_eq!(parse_gcra(b"", 1), None);
    }
}
