//! Secrets from the platform: the Redis password from a mounted file (re-read when it changes,
//! as Kubernetes rewrites a Secret in place) or the whole URL from the environment, HMAC, DPoP
//! nonce and introspection secrets likewise; and none of them ever in a log line, an error
//! message, `explain` or `/metrics`.

mod common;

use common::introspection::Endpoint;
use common::redis::{Redis, Replica};
use common::*;
use http::StatusCode;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const FIRST_PASSWORD: &str = "redis-pw-marker-one-5c1f";
const SECOND_PASSWORD: &str = "redis-pw-marker-two-9b7e";
const HMAC: &str = "hmac-marker-0123456789abcdef0123456789";
const NONCE: &str = "nonce-marker-0123456789abcdef012345678";
const INTROSPECTION: &str = "introspection-marker-77aa";
const MARKERS: [&str; 6] = [
    FIRST_PASSWORD,
    SECOND_PASSWORD,
    HMAC,
    NONCE,
    INTROSPECTION,
    "marker",
];

const GCRA_OK: &str = r#"bearward_shared_store_operations_total{op="gcra",outcome="ok"}"#;

fn no_secret_in(what: &str, text: &str) {
    for m in MARKERS {
        assert!(!text.contains(m), "{what} shows a secret ({m}):\n{text}");
    }
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("bearward-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.0.join(name);
        // Written whole and renamed in, as the kubelet swaps a Secret's files.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(
    port: u16,
    admin: u16,
    redis: &str,
    ep: &Endpoint,
    up: &Upstream,
    secret_file: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
{redis}
redis_timeout = "300ms"
key_prefix = "bw-secrets:"

[dpop]
nonce = true
nonce_secret_env = "BW_TEST_NONCE"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[[issuers]]
issuer = "https://hmac.idp.test"
algorithms = ["HS256"]
hmac_secret_env = "BW_TEST_HMAC"
audiences = ["https://api.test"]

[[issuers]]
issuer = "https://opaque.idp.test"
token_format = "opaque"
introspection_endpoint = "{}"
introspection_client_id = "bearward"
introspection_client_secret_file = "{secret_file}"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
issuers = ["https://idp.test"]
rate_limit = {{ key = "subject", rate = "1000/s", burst = 1000 }}
upstream = "app"

[[routes]]
prefix = "/opaque"
issuers = ["https://opaque.idp.test"]
upstream = "app"
"#,
        ep.url(),
        up.url()
    )
}

const ENV: [(&str, &str); 2] = [("BW_TEST_HMAC", HMAC), ("BW_TEST_NONCE", NONCE)];

fn token() -> String {
    common::idp::Minter {
        issuer: "https://idp.test".into(),
        audience: "https://api.test".into(),
    }
    .token(&common::idp::Key::rsa1(), "read")
}

/// Waits until the store has answered more rate-limit batches than `after`, calling meanwhile.
async fn store_answers(r: &Replica, c: &HttpClient, after: f64) -> bool {
    for _ in 0..80 {
        assert_eq!(r.call(c, &token()).await, StatusCode::OK);
        if metric(&r.metrics(c).await, GCRA_OK) > after {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_redis_password_follows_its_mounted_file_and_no_secret_shows_anywhere() {
    let mut redis = Redis::start_with(&[], Some(FIRST_PASSWORD), false);
    let dir = Dir::new("secrets");
    let password = dir.write("redis-password", &format!("{FIRST_PASSWORD}\n"));
    let secret = dir.write("introspection", INTROSPECTION);
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let redis_keys = format!(
        "redis_url = \"redis://127.0.0.1:{}/0\"\nredis_password_file = \"{password}\"",
        redis.port
    );
    let r = Replica::spawn(
        |port, admin| config(port, admin, &redis_keys, &ep, &up, &secret),
        &ENV,
        true,
    );
    let c = client();
    assert!(
        store_answers(&r, &c, 0.0).await,
        "the store answers with the password from the file"
    );

    // The password is rotated: Redis takes the new one and drops bearward's connection, so
    // the old password no longer works. bearward fails over to its own limits (never open)
    // until the mounted file changes, then reloads and uses the store again.
    redis.set_password(SECOND_PASSWORD);
    assert_eq!(
        redis
            .command("CLIENT KILL TYPE normal")
            .map(|s| s.starts_with(':')),
        Some(true)
    );
    let mut refused = false;
    for _ in 0..40 {
        assert_eq!(r.call(&c, &token()).await, StatusCode::OK);
        let m = r.metrics(&c).await;
        if m.lines().any(|l| {
            l.starts_with("bearward_shared_store_operations_total{op=\"gcra\",outcome=\"error\"")
        }) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the old password is refused once the connection is gone"
    );
    let before = metric(&r.metrics(&c).await, GCRA_OK);
    dir.write("redis-password", SECOND_PASSWORD);
    assert!(
        store_answers(&r, &c, before).await,
        "the store answers again once the mounted password changes:\n{}",
        r.logged()
    );
    assert!(r.logged().contains("config reloaded"), "{}", r.logged());

    // The opaque route asks the introspection endpoint with the secret from its file.
    let exp = common::idp::now() + 300;
    ep.set(
        "opaque-1",
        json!({"active": true, "sub": "u", "exp": exp, "aud": "https://api.test"}),
    );
    let answer = get(
        &c,
        &format!("http://127.0.0.1:{}/opaque/x", r.port),
        &[("authorization", "Bearer opaque-1")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    // Nothing shows a secret: the log (debug level, through a refused AUTH and a reload),
    // /metrics, and `explain` of a request on the same config.
    no_secret_in("the log", &r.logged());
    no_secret_in("/metrics", &r.metrics(&c).await);
    let explain = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["explain", "--config"])
        .arg(&r.file)
        .args(["--path", "/api/x", "--token", &token()])
        .envs(ENV)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explain.stdout).into_owned()
        + &String::from_utf8_lossy(&explain.stderr);
    assert!(text.contains("/api"), "{text}");
    no_secret_in("explain", &text);
}

/// `bearward check` on `[cache]` text: its exit status and everything it printed.
fn check(cache: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = Dir::new(&format!("check-{}", free_port()));
    let file = dir.write(
        "bearward.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[cache]\n{cache}\n\n[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"https://api.test\"]\n\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\n"
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config", &file])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_warns_about_an_inline_password_and_never_echoes_a_secret() {
    let (ok, text) = check(
        &format!("redis_url = \"redis://:{FIRST_PASSWORD}@127.0.0.1:6379/0\""),
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("cache.redis_url"), "{text}");
    assert!(text.contains("redis_url_file"), "{text}");
    no_secret_in("check's warning", &text);

    let (ok, text) = check(
        "redis_url_env = \"BW_TEST_URL\"",
        &[("BW_TEST_URL", "redis://127.0.0.1:6379/0")],
    );
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");

    // A URL from the environment that is no URL: the key is named, the value is not shown.
    let (ok, text) = check(
        "redis_url_env = \"BW_TEST_URL\"",
        &[("BW_TEST_URL", "http://user:marker@idp")],
    );
    assert!(!ok);
    assert!(text.contains("cache.redis_url"), "{text}");
    no_secret_in("check's error", &text);

    let (ok, text) = check("redis_url_env = \"BW_TEST_UNSET\"", &[]);
    assert!(!ok);
    assert!(text.contains("cache.redis_url_env"), "{text}");

    let (ok, text) = check(
        "redis_url = \"redis://127.0.0.1:6379/0\"\nredis_url_env = \"BW_TEST_URL\"",
        &[("BW_TEST_URL", "redis://127.0.0.1:6379/0")],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("only one of"), "{text}");

    let (ok, text) = check(
        "redis_url = \"redis://127.0.0.1:6379/0\"\nredis_ca_file = \"tests/fixtures/tls/ca.pem\"",
        &[],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("cache.redis_ca_file") && text.contains("rediss://"),
        "{text}"
    );
}
