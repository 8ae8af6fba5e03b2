//! Introspection answers shared by replicas through a real Valkey/Redis (Debian's
//! `redis-server`, started here on a loopback port with a temp dir; `.ci/run` installs it):
//! two bearward processes, one introspection call; Redis killed mid-run, and requests go on
//! from each process's own cache.

mod common;

use common::dpop::DpopKey;
use common::introspection::Endpoint;
use common::redis::{Cluster, Redis, Replica, Sentinels};
use common::*;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;

/// The store under test: one Redis, or a three-master Cluster on which one master dies.
trait Store {
    /// The `[cache]` line(s) naming it.
    fn cache(&self) -> String;
    /// Stops what holds `key`: the one node, or the cluster master that holds its slot.
    fn kill_for(&mut self, key: &str);
    /// Is `key` where the store no longer answers?
    fn is_down(&self, key: &str) -> bool;
    /// Every key and value it holds.
    fn dump(&self) -> String;
    fn cluster(&self) -> bool;
}

impl Store for Redis {
    fn cache(&self) -> String {
        format!("redis_url = \"redis://127.0.0.1:{}/0\"", self.port)
    }
    fn kill_for(&mut self, _: &str) {
        self.kill();
    }
    fn is_down(&self, _: &str) -> bool {
        self.command("PING").is_none()
    }
    fn dump(&self) -> String {
        Redis::dump(self)
    }
    fn cluster(&self) -> bool {
        false
    }
}

impl Store for Cluster {
    fn cache(&self) -> String {
        Cluster::cache(self)
    }
    fn kill_for(&mut self, key: &str) {
        self.kill_owner_of(key);
    }
    fn is_down(&self, key: &str) -> bool {
        Cluster::is_down(self, key)
    }
    fn dump(&self) -> String {
        Cluster::dump(self)
    }
    fn cluster(&self) -> bool {
        true
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn introspecting_replica(ep: &Endpoint, up: &Upstream, redis_port: u16) -> Replica {
    introspecting_replica_sealed(ep, up, redis_port, true)
}

/// [`introspecting_replica`], with or without `[cache] secret_file`.
fn introspecting_replica_sealed(
    ep: &Endpoint,
    up: &Upstream,
    redis_port: u16,
    sealed: bool,
) -> Replica {
    let secret = if sealed {
        "secret_file = \"tests/fixtures/store-secret\""
    } else {
        ""
    };
    Replica::with(|port, admin| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
redis_url = "redis://127.0.0.1:{redis_port}/0"
redis_timeout = "200ms"
key_prefix = "bw-test:"
{secret}

[[issuers]]
issuer = "https://opaque.idp.test"
token_format = "opaque"
introspection_endpoint = "{}"
introspection_client_id = "bearward"
introspection_client_secret_file = "tests/fixtures/introspection-secret.txt"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject" }}

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"#,
            ep.url(),
            up.url()
        )
    })
}

/// Anything else that can write to the store (another app sharing it, a key prefix that
/// collides) could write an introspection answer for a token of its own making. Sealed with
/// `[cache] secret`, a value it writes does not open, nor does a sealed answer it copies under
/// another token's key; without the secret, answers are not shared at all.
#[tokio::test]
async fn an_answer_written_into_the_store_by_anything_else_is_not_taken() {
    let redis = Redis::start();
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let a = introspecting_replica(&ep, &up, redis.port);
    let b = introspecting_replica(&ep, &up, redis.port);
    let c = client();
    let exp = common::idp::now() + 300;
    let answer = json!({"active": true, "scope": "read", "sub": "real-user", "exp": exp, "aud": "https://api.test"});
    ep.set("real-token", answer);
    assert_eq!(a.call(&c, "real-token").await, StatusCode::OK);
    let dump = redis.dump();
    let real_key = dump
        .lines()
        .find(|l| l.starts_with("bw-test:introspection:"))
        .unwrap()
        .to_owned();
    let prefix = &real_key[..real_key.rfind(':').unwrap() + 1];
    let key_of = |t: &str| format!("{prefix}{}", hex(&common::dpop::sha256(t.as_bytes())));
    assert_eq!(real_key, key_of("real-token"));

    // An answer as bearward kept them before they were sealed, for a token the IdP never issued.
    let forged = json!({
        "at": common::idp::now(),
        "ttl": 300.0,
        "answer": {"active": true, "scope": "read", "sub": "mallory", "exp": exp, "aud": "https://api.test"},
    });
    assert_eq!(
        redis
            .cli(&["set", &key_of("forged-token"), &forged.to_string()])
            .trim(),
        "OK"
    );
    // The real token's sealed answer, copied under another made-up token's key.
    let copied = redis.cli(&["copy", &real_key, &key_of("copied-token")]);
    assert_eq!(copied.trim(), "1", "{copied}");

    for t in ["forged-token", "copied-token"] {
        assert_eq!(b.call(&c, t).await, StatusCode::UNAUTHORIZED, "{t}");
    }
    assert_eq!(up.count(), 1, "only the real token reached the upstream");
    // Each was asked of the IdP, which knows neither.
    assert_eq!(ep.count(), 3);
    let m = b.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            r#"bearward_shared_store_operations_total{op="open",outcome="forged"}"#
        ),
        2.0,
        "{m}"
    );
    // The real token's answer still opens at the other replica.
    assert_eq!(b.call(&c, "real-token").await, StatusCode::OK);
    assert_eq!(ep.count(), 3);
    // A value far past any answer's size is not read whole (GETRANGE) and does not open.
    // 100,001 bytes (zeros, then an x).
    let set = redis.cli(&["setrange", &key_of("huge-token"), "100000", "x"]);
    assert_eq!(set.trim(), "100001", "{set}");
    assert_eq!(b.call(&c, "huge-token").await, StatusCode::UNAUTHORIZED);
    let m = b.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            r#"bearward_shared_store_operations_total{op="open",outcome="forged"}"#
        ),
        3.0,
        "{m}"
    );
    let ep_before_plain = ep.count();

    // Without the secret, a replica neither takes the forged answer nor shares its own.
    let plain = introspecting_replica_sealed(&ep, &up, redis.port, false);
    assert_eq!(
        plain.call(&c, "forged-token").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(plain.call(&c, "real-token").await, StatusCode::OK);
    assert_eq!(ep.count(), ep_before_plain + 2, "asked the IdP both times");
}

#[tokio::test]
async fn two_replicas_share_one_answer_and_keep_serving_when_redis_dies() {
    let mut redis = Redis::start();
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let a = introspecting_replica(&ep, &up, redis.port);
    let b = introspecting_replica(&ep, &up, redis.port);
    let c = client();
    let exp = common::idp::now() + 300;
    let answer = json!({"active": true, "scope": "read", "sub": "shared-user", "exp": exp, "aud": "https://api.test"});
    for t in ["shared-token-1", "shared-token-2", "shared-token-3"] {
        ep.set(t, answer.clone());
    }

    // Replica A asks the IdP; replica B finds A's answer in Redis.
    assert_eq!(a.call(&c, "shared-token-1").await, StatusCode::OK);
    assert_eq!(ep.count(), 1);
    assert_eq!(b.call(&c, "shared-token-1").await, StatusCode::OK);
    assert_eq!(
        ep.count(),
        1,
        "the second replica made no introspection call"
    );
    assert_eq!(up.last().headers["x-auth-subject"], "shared-user");
    let m = b.metrics(&c).await;
    assert_eq!(
        metric(&m, "bearward_introspection_cache_lookups_total{issuer=\"https://opaque.idp.test\",layer=\"shared\",outcome=\"hit\"}"),
        1.0,
        "{m}"
    );
    // An inactive answer is shared too.
    assert_eq!(a.call(&c, "not-a-token").await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.call(&c, "not-a-token").await, StatusCode::UNAUTHORIZED);
    assert_eq!(ep.count(), 2);

    // What Redis holds: hashed keys under the prefix, the answer sealed, no token.
    let dump = redis.dump();
    assert!(dump.contains("bw-test:introspection:"), "{dump}");
    assert!(
        !dump.contains("shared-user"),
        "an answer in the clear: {dump}"
    );
    for t in ["shared-token-1", "not-a-token"] {
        assert!(!dump.contains(t), "the token itself is in Redis: {dump}");
    }
    let ttl = redis
        .command(&format!(
            "PTTL {}",
            dump.lines()
                .find(|l| l.starts_with("bw-test:introspection:"))
                .unwrap()
        ))
        .unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 60_000,
        "kept with the cache TTL: {ttl} ms"
    );

    // Redis dies. Cached tokens go on from each process's cache; new tokens are introspected
    // directly; nothing is refused because the store is gone, nothing is let through unasked.
    redis.kill();
    assert_eq!(a.call(&c, "shared-token-1").await, StatusCode::OK);
    assert_eq!(b.call(&c, "shared-token-1").await, StatusCode::OK);
    assert_eq!(a.call(&c, "shared-token-2").await, StatusCode::OK);
    assert_eq!(b.call(&c, "shared-token-3").await, StatusCode::OK);
    assert_eq!(ep.count(), 4, "each new token asked the IdP once");
    for _ in 0..20 {
        assert_eq!(a.call(&c, "shared-token-2").await, StatusCode::OK);
    }
    assert_eq!(
        a.call(&c, "still-not-a-token").await,
        StatusCode::UNAUTHORIZED
    );
    let m = a.metrics(&c).await;
    let failed: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("bearward_shared_store_operations_total") && !l.contains("outcome=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed >= 1.0, "store failures are counted:\n{m}");
    let ready = get(&c, &format!("http://127.0.0.1:{}/readyz", a.admin), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        ready.body.contains("shared store: failing"),
        "{}",
        ready.body
    );
}

/// A replica taking JWTs signed by the rsa1 fixture key, DPoP-bound ones included.
fn dpop_replica(up: &Upstream, cache: &str, store_down: &str) -> Replica {
    Replica::with(|port, admin| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
public_origin = "https://api.test"

[cache]
{cache}
redis_timeout = "200ms"
key_prefix = "bw-test:"
dpop_replay_store_down = "{store_down}"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
upstream = "app"
"#,
            up.url()
        )
    })
}

/// A DPoP-bound token for the ES256 client key, and proofs for GET https://api.test/api/x.
struct DpopClient {
    key: DpopKey,
    token: String,
}

impl DpopClient {
    fn new() -> DpopClient {
        let key = DpopKey::new(common::idp::Key::p256());
        let token = common::idp::Minter {
            issuer: "https://idp.test".into(),
            audience: "https://api.test".into(),
        }
        .token_claims(&common::idp::Key::rsa1(), |c| {
            c.insert("cnf".into(), json!({ "jkt": key.jkt }));
        });
        DpopClient { key, token }
    }

    fn proof(&self, jti: &str) -> String {
        let mut claims = DpopKey::claims("GET", "https://api.test/api/x", Some(&self.token));
        claims["jti"] = json!(jti);
        self.key.sign(&self.key.header(), &claims)
    }

    async fn call(&self, c: &HttpClient, r: &Replica, proof: &str) -> StatusCode {
        get(
            c,
            &format!("http://127.0.0.1:{}/api/x", r.port),
            &[
                ("authorization", &format!("DPoP {}", self.token)),
                ("dpop", proof),
            ],
        )
        .await
        .status
    }
}

#[tokio::test]
async fn a_proof_taken_by_one_replica_is_a_replay_at_another_and_redis_down_applies_the_fallback() {
    replays_across_replicas(&mut Redis::start()).await;
}

#[tokio::test]
async fn on_a_cluster_a_proof_is_a_replay_at_another_replica_and_a_dead_master_applies_the_fallback(
) {
    replays_across_replicas(&mut Cluster::start()).await;
}

/// The key a proof with `jti` is recorded under.
fn dpop_key(dpop: &DpopClient, jti: &str) -> String {
    let id = common::dpop::sha256(format!("{}.{jti}", dpop.key.jkt).as_bytes());
    format!("bw-test:dpop:{}", hex(&id))
}

async fn replays_across_replicas(store: &mut impl Store) {
    let up = Upstream::start().await;
    let a = dpop_replica(&up, &store.cache(), "refuse");
    let b = dpop_replica(&up, &store.cache(), "local");
    let c = client();
    let dpop = DpopClient::new();

    let p = dpop.proof("proof-1");
    assert_eq!(dpop.call(&c, &a, &p).await, StatusCode::OK);
    assert_eq!(
        dpop.call(&c, &b, &p).await,
        StatusCode::UNAUTHORIZED,
        "replayed to another replica"
    );
    assert_eq!(
        dpop.call(&c, &a, &p).await,
        StatusCode::UNAUTHORIZED,
        "replayed to the same one"
    );
    assert_eq!(
        dpop.call(&c, &b, &dpop.proof("proof-2")).await,
        StatusCode::OK
    );
    assert_eq!(up.count(), 2);
    let m = b.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "bearward_dpop_proofs_total{outcome=\"dpop_proof_replayed\"}"
        ),
        1.0,
        "{m}"
    );

    // Redis stops (on a cluster, the master that holds the next proof's key). "refuse"
    // answers 503: a replay to another replica cannot be ruled out. "local" lets this
    // process's own cache decide, and still catches a replay to itself.
    store.kill_for(&dpop_key(&dpop, "proof-3"));
    assert_eq!(
        dpop.call(&c, &a, &dpop.proof("proof-3")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A proof whose key is where the store no longer answers.
    let jti = (0..)
        .map(|i| format!("proof-4-{i}"))
        .find(|j| store.is_down(&dpop_key(&dpop, j)))
        .unwrap();
    let p4 = dpop.proof(&jti);
    assert_eq!(dpop.call(&c, &b, &p4).await, StatusCode::OK);
    assert_eq!(dpop.call(&c, &b, &p4).await, StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 3);
    let m = a.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "bearward_dpop_proofs_total{outcome=\"replay_store_down_refused\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(m.contains("reason=\"dpop_replay_store_down\""), "{m}");
    let m = b.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "bearward_dpop_proofs_total{outcome=\"replay_store_down_local\"}"
        ),
        1.0,
        "{m}"
    );
}

/// A replica taking rsa1 JWTs with a global rate limit of 10/s (burst 10) per subject.
/// Script calls that answered (a batch of rate-limit checks each).
const STORE_GCRA_OK: &str = r#"bearward_shared_store_operations_total{op="gcra",outcome="ok"}"#;

fn limited_replica(up: &Upstream, cache: &str) -> Replica {
    limited_replica_logged(up, cache, false)
}

/// [`limited_replica`], its log kept with `log`.
fn limited_replica_logged(up: &Upstream, cache: &str, log: bool) -> Replica {
    let text = |port, admin| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
{cache}
redis_timeout = "200ms"
key_prefix = "bw-test:"
rate_limit_fallback_replicas = 2

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
rate_limit = {{ key = "subject", rate = "10/s", burst = 10 }}
upstream = "app"
"#,
            up.url()
        )
    };
    Replica::spawn(text, &[], log)
}

#[tokio::test]
async fn a_global_rate_limit_holds_across_two_replicas_and_falls_back_when_redis_dies() {
    global_limit_across_replicas(&mut Redis::start()).await;
}

#[tokio::test]
async fn on_a_cluster_a_global_rate_limit_holds_and_a_dead_master_applies_the_fallback() {
    global_limit_across_replicas(&mut Cluster::start()).await;
}

/// Redis Sentinel, as Bitnami's chart and the Redis operators run it: commands go to the
/// master the sentinel names (the sentinel and the master asking for different passwords);
/// when that master dies and the sentinel promotes its replica, both replicas follow it, and
/// the limit is global again on the new master.
#[tokio::test]
async fn through_a_sentinel_a_global_rate_limit_holds_and_follows_a_failover() {
    sentinel_failover(false, Redis::kill, false).await;
}

/// The same over TLS: `rediss://` to the sentinel and to each master it names.
#[tokio::test]
async fn through_a_tls_sentinel_a_global_rate_limit_holds_and_follows_a_failover() {
    sentinel_failover(true, Redis::kill, false).await;
}

/// A master that goes silent instead (paused: its connections stay open, nothing answers):
/// only the store's timeout tells, and the replicas still follow the sentinel's new master.
#[tokio::test]
async fn through_a_sentinel_the_replicas_leave_a_master_that_went_silent() {
    sentinel_failover(false, Redis::pause, false).await;
}

/// With a sentinel listed first that takes connections and never answers (a hung node):
/// each lookup waits it out (redis-rs gives it a second) while the commands waiting for the
/// lookup time out and fall back, and the master the other sentinel names is still found,
/// before and after the failover.
#[tokio::test]
async fn through_sentinels_a_silent_one_listed_first_is_waited_out() {
    sentinel_failover(false, Redis::kill, true).await;
}

async fn sentinel_failover(tls: bool, fail: fn(&mut Redis), silent_first: bool) {
    let mut s = Sentinels::start(tls);
    let up = Upstream::start().await;
    // Never accepted: the kernel completes the handshakes, and nothing is ever read or said.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cache = s.cache();
    if silent_first {
        let first = format!(
            "redis_sentinel_urls = [\"redis://{}\", ",
            silent.local_addr().unwrap()
        );
        cache = cache.replacen("redis_sentinel_urls = [", &first, 1);
    }
    let a = limited_replica_logged(&up, &cache, true);
    let b = limited_replica_logged(&up, &cache, true);
    let c = client();
    let forty = |t: String| {
        let (a, b, up, c) = (&a, &b, &up, &c);
        async move {
            let started = std::time::Instant::now();
            let before = up.count();
            for i in 0..40 {
                if i % 2 == 0 { a } else { b }.call(c, &t).await;
            }
            (
                up.count() - before,
                1 + (started.elapsed().as_millis() / 100) as usize,
            )
        }
    };

    // Until both have asked the sentinel (with a silent one first, a lookup outlasts
    // redis_timeout, and the checks meanwhile fall back).
    let started = std::time::Instant::now();
    while gcra_ok(&a, &c).await == 0.0 || gcra_ok(&b, &c).await == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no master found; a logged:\n{}",
            a.logged()
        );
        a.call(&c, &token("warm-up")).await;
        b.call(&c, &token("warm-up")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (passed, tolerance) = forty(token("sentinel-user")).await;
    assert!(
        (10..=10 + tolerance).contains(&passed),
        "{passed} passed (tolerance {tolerance}): not global"
    );
    let dump = s.nodes[0].dump();
    assert!(dump.contains(&bucket("sentinel-user", false)), "{dump}");

    // The master dies or goes silent; the sentinel declares it down and promotes the replica.
    fail(&mut s.nodes[0]);
    let dead = [gcra_ok(&a, &c).await, gcra_ok(&b, &c).await];
    let promoted = std::time::Instant::now();
    while s.master() != Some(1) {
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "the sentinel did not fail over: {}",
            s.ask(&["sentinel", "master", "mymaster"])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replicas ask the sentinel again once their commands on the dead master fail (each
    // then skips the store for a second): soon both have their checks answered again.
    let t = token("failover-user");
    let followed = std::time::Instant::now();
    while gcra_ok(&a, &c).await <= dead[0] || gcra_ok(&b, &c).await <= dead[1] {
        assert!(
            followed.elapsed() < Duration::from_secs(15),
            "the replicas did not follow the failover; a logged:\n{}",
            a.logged()
        );
        a.call(&c, &t).await;
        b.call(&c, &t).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (passed, tolerance) = forty(token("promoted-user")).await;
    // Read at once: a bucket expires when its schedule has caught up with the clock.
    let dump = s.nodes[1].dump();
    assert!(
        (10..=10 + tolerance).contains(&passed),
        "{passed} passed after the failover (tolerance {tolerance})"
    );
    assert!(dump.contains(&bucket("promoted-user", false)), "{dump}");
    let logged = a.logged();
    assert!(
        logged.matches("the sentinels name this master").count() >= 2,
        "{logged}"
    );
    let m = a.metrics(&c).await;
    let lookups = r#"bearward_shared_store_operations_total{op="sentinel_lookup",outcome="ok"}"#;
    assert!(metric(&m, lookups) >= 2.0, "{m}");
}

/// An rsa1 JWT for `limited_replica` with subject `sub`.
fn token(sub: &str) -> String {
    let mint = common::idp::Minter {
        issuer: "https://idp.test".into(),
        audience: "https://api.test".into(),
    };
    mint.token_claims(&common::idp::Key::rsa1(), |cl| {
        cl.insert("sub".into(), json!(sub));
    })
}

async fn gcra_ok(r: &Replica, c: &HttpClient) -> f64 {
    metric(&r.metrics(c).await, STORE_GCRA_OK)
}

/// The store key of the `/api` route's bucket for `sub`: on a cluster with a hash tag of the
/// route and one of 4 shares of its buckets.
fn bucket(sub: &str, cluster: bool) -> String {
    let route = hex(&common::dpop::sha256(b"/api*")[..8]);
    let id = &common::dpop::sha256(sub.as_bytes())[..16];
    if cluster {
        format!("bw-test:ratelimit:{{{route}.{}}}:{}", id[0] % 4, hex(id))
    } else {
        format!("bw-test:ratelimit:{route}:{}", hex(id))
    }
}

async fn global_limit_across_replicas(store: &mut impl Store) {
    let up = Upstream::start().await;
    let a = limited_replica(&up, &store.cache());
    let b = limited_replica(&up, &store.cache());
    let c = client();

    // 40 requests, alternating replicas: the limit is one, not one per replica.
    let t = token("global-user");
    let started = std::time::Instant::now();
    for i in 0..40 {
        let r = if i % 2 == 0 { &a } else { &b };
        let s = r.call(&c, &t).await;
        assert!(
            s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
    }
    let tolerance = 1 + (started.elapsed().as_millis() / 100) as usize;
    let passed = up.count();
    assert!(
        (10..=10 + tolerance).contains(&passed),
        "{passed} passed (tolerance {tolerance}): not global"
    );
    let dump = store.dump();
    assert!(
        dump.contains(&bucket("global-user", store.cluster())),
        "{dump}"
    );

    // 80 requests at once, 40 per replica: each replica sends the waiting checks together in
    // one script call, the same key many times over, and the burst (10) still holds exactly:
    // the first ones are allowed with 9, 8, ... left, the rest refused with a wait.
    let t = token("burst-user");
    let calls_before =
        metric(&a.metrics(&c).await, STORE_GCRA_OK) + metric(&b.metrics(&c).await, STORE_GCRA_OK);
    let before = up.count();
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..80)
        .map(|i| {
            let url = format!(
                "http://127.0.0.1:{}/api/burst",
                if i % 2 == 0 { a.port } else { b.port }
            );
            let (c, t) = (c.clone(), t.clone());
            tokio::spawn(async move {
                get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await
            })
        })
        .collect();
    let mut left = Vec::new();
    for answer in burst {
        let answer = answer.await.unwrap();
        let r = answer.headers["ratelimit"].to_str().unwrap().to_owned();
        let remaining: u32 = r
            .split(";r=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        match answer.status {
            StatusCode::OK => left.push(remaining),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(remaining, 0, "{r}");
                assert!(answer.headers.contains_key("retry-after"));
            }
            s => panic!("{s}"),
        }
    }
    let tolerance = 1 + (started.elapsed().as_millis() / 100) as usize;
    let passed = up.count() - before;
    assert_eq!(passed, left.len());
    assert!(
        (10..=10 + tolerance).contains(&passed),
        "{passed} of 80 concurrent passed (tolerance {tolerance})"
    );
    left.sort_unstable();
    if tolerance == 1 {
        // Nothing refilled meanwhile: each allowed request saw its own place in the burst.
        assert_eq!(left[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "{left:?}");
    }
    let calls = metric(&a.metrics(&c).await, STORE_GCRA_OK)
        + metric(&b.metrics(&c).await, STORE_GCRA_OK)
        - calls_before;
    assert!(
        (2.0..80.0).contains(&calls),
        "{calls} script calls for 80 checks: not batched"
    );

    // Redis dies (on a cluster, the master holding the next subject's bucket): each replica
    // allows the limit divided by rate_limit_fallback_replicas (2).
    store.kill_for(&bucket("fallback-user", store.cluster()));
    let t = token("fallback-user");
    let started = std::time::Instant::now();
    let before = up.count();
    for i in 0..40 {
        let r = if i % 2 == 0 { &a } else { &b };
        r.call(&c, &t).await;
    }
    let tolerance = 2 + 2 * (started.elapsed().as_millis() / 200) as usize;
    let passed = up.count() - before;
    assert!(
        (10..=10 + tolerance).contains(&passed),
        "{passed} passed with Redis down (tolerance {tolerance})"
    );
    let m = a.metrics(&c).await;
    assert!(
        metric(&m, "bearward_rate_limit_fallbacks_total") >= 1.0,
        "{m}"
    );
}

/// A replica of the key-sharing test: the IdP's keys from `jwks_uri`, the store sealed with
/// `secret` (a `[cache]` line), keys served for at most `max_stale`.
fn keyed_replica(
    idp: &common::idp::Idp,
    up: &Upstream,
    redis_port: u16,
    secret: &str,
    max_stale: &str,
) -> Replica {
    Replica::spawn(
        |port, admin| {
            format!(
                r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
redis_url = "redis://127.0.0.1:{redis_port}/0"
redis_timeout = "200ms"
key_prefix = "bw-test:"
{secret}

[[issuers]]
issuer = "{}"
jwks_uri = "{}"
audiences = ["https://api.test"]
algorithms = ["RS256"]
max_stale = "{max_stale}"

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"#,
                idp.issuer(),
                idp.jwks_uri(),
                up.url()
            )
        },
        &[("BW_OTHER_SECRET", "another secret, 32 bytes and more....")],
        false,
    )
}

/// The replica's `/status` issuer entry, once its first fetch has been tried (`ready`: once it
/// has usable keys).
async fn keys_status(c: &HttpClient, r: &Replica, ready: bool) -> serde_json::Value {
    for _ in 0..100 {
        let s = get(c, &format!("http://127.0.0.1:{}/status", r.admin), &[]).await;
        if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&s.body) {
            let i = doc["issuers"][0].clone();
            let settled = match ready {
                true => i["keys_usable"] == true,
                false => !i["last_error"].is_null(),
            };
            if settled {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica's keys never settled (ready: {ready})");
}

/// Signing keys kept in the store: a replica that starts while the IdP is down serves with the
/// keys another replica fetched (sealed with `[cache] secret`, so nothing else that writes to
/// the store can put a key of its own there), for no longer than `max_stale` from when they
/// were fetched. Under another secret, past `max_stale` or forged, no keys: 503, never a pass.
#[tokio::test]
async fn a_replica_started_while_the_idp_is_down_serves_with_the_keys_another_fetched() {
    use common::idp::{Idp, Key};
    let redis = Redis::start();
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let c = client();
    let sealed = "secret_file = \"tests/fixtures/store-secret\"";
    let token = idp.minter("https://api.test").token(&key, "read");

    let a = keyed_replica(&idp, &up, redis.port, sealed, "1h");
    keys_status(&c, &a, true).await;
    assert_eq!(a.call(&c, &token).await, StatusCode::OK);
    let fetched = std::time::Instant::now();
    // Kept in the store just after the keys are in use: wait for it.
    let mut dump = redis.dump();
    for _ in 0..100 {
        if dump.lines().any(|l| l.starts_with("bw-test:keys:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        dump = redis.dump();
    }
    let stored = dump
        .lines()
        .find(|l| l.starts_with("bw-test:keys:"))
        .unwrap_or_else(|| panic!("no key set in the store: {dump}"))
        .to_owned();
    let modulus = key.jwk["n"].as_str().unwrap();
    assert!(!dump.contains(&modulus[..40]), "a key in clear: {dump}");

    idp.stop();
    let b = keyed_replica(&idp, &up, redis.port, sealed, "1h");
    let status = keys_status(&c, &b, true).await;
    assert!(
        status["keys_from"]
            .as_str()
            .unwrap()
            .starts_with("shared store ("),
        "{status}"
    );
    assert!(!status["last_error"].is_null(), "{status}");
    let ready = get(&c, &format!("http://127.0.0.1:{}/readyz", b.admin), &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(b.call(&c, &token).await, StatusCode::OK);
    let passed = up.count();

    // Another secret: the set does not open, and the replica has no keys to check with.
    let other = "secret_env = \"BW_OTHER_SECRET\"";
    let d = keyed_replica(&idp, &up, redis.port, other, "1h");
    keys_status(&c, &d, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.call(&c, &token).await, StatusCode::SERVICE_UNAVAILABLE);
    // It looked, and what it found did not open (the look follows the failed fetch).
    let forged = r#"bearward_shared_store_operations_total{op="open",outcome="forged"}"#;
    let mut m = d.metrics(&c).await;
    for _ in 0..100 {
        if metric(&m, forged) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = d.metrics(&c).await;
    }
    assert!(metric(&m, forged) >= 1.0, "{m}");
    assert_eq!(d.call(&c, &token).await, StatusCode::SERVICE_UNAVAILABLE);

    // Kept longer ago than max_stale allows: not taken.
    let wait = Duration::from_millis(1500).saturating_sub(fetched.elapsed());
    tokio::time::sleep(wait).await;
    let e = keyed_replica(&idp, &up, redis.port, sealed, "1s");
    keys_status(&c, &e, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.call(&c, &token).await, StatusCode::SERVICE_UNAVAILABLE);

    // A key set written by anything else (an attacker's key, in the form bearward keeps them,
    // unsealed) does not open: its key signs nothing here.
    let mallory = Key::rsa2();
    let forged = json!({
        "at": common::idp::now(),
        "source": idp.jwks_uri(),
        "jwks": json!({"keys": [mallory.jwk]}).to_string(),
    });
    assert_eq!(
        redis.cli(&["set", &stored, &forged.to_string()]).trim(),
        "OK"
    );
    let forged_token = idp.minter("https://api.test").token(&mallory, "read");
    let f = keyed_replica(&idp, &up, redis.port, sealed, "1h");
    keys_status(&c, &f, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.call(&c, &forged_token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(up.count(), passed, "a refused request reached the upstream");
}
