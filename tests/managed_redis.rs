//! Managed Valkey/Redis as services run it: TLS (`rediss://`) against Debian's `redis-server`
//! on a TLS port with a certificate made for the tests, trusted through `redis_ca_file` and
//! refused when it chains to another CA; a client certificate where the server asks for one.

mod common;

use common::redis::{Redis, Replica};
use common::*;
use http::StatusCode;
use std::time::Duration;

const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

/// Rate-limit batches the store answered, and those it failed.
fn gcra(m: &str, outcome: &str) -> f64 {
    metric(
        m,
        &format!("bearward_shared_store_operations_total{{op=\"gcra\",outcome=\"{outcome}\"}}"),
    )
}

/// A replica taking rsa1 JWTs on `/api` with a global rate limit, its store given by `cache`.
fn limited(up: &Upstream, cache: &str) -> Replica {
    Replica::spawn(
        |port, admin| {
            format!(
                r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
{cache}
redis_timeout = "500ms"
key_prefix = "bw-managed:"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
rate_limit = {{ key = "subject", rate = "1/s", burst = 1000 }}
upstream = "app"
"#,
                up.url()
            )
        },
        &[],
        true,
    )
}

fn token() -> String {
    common::idp::Minter {
        issuer: "https://idp.test".into(),
        audience: "https://api.test".into(),
    }
    .token(&common::idp::Key::rsa1(), "read")
}

/// Sends requests until the store has answered (`"ok"`) or failed (`"error"`) a batch; every
/// request is served meanwhile (a store that cannot be used leaves the local limit).
async fn until(r: &Replica, c: &HttpClient, outcome: &str) -> bool {
    for _ in 0..50 {
        assert_eq!(r.call(c, &token()).await, StatusCode::OK);
        if gcra(&r.metrics(c).await, outcome) > 0.0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn rediss_with_the_ca_file_works_and_another_ca_is_refused() {
    let redis = Redis::start_with(&[], None, true);
    let tls_port = redis.tls_port.unwrap();
    let up = Upstream::start().await;
    let c = client();

    let trusted = limited(
        &up,
        &format!(
            "redis_url = \"rediss://127.0.0.1:{tls_port}/0\"\nredis_ca_file = \"{TLS}/ca.pem\""
        ),
    );
    // The same server's certificate, checked against a CA that did not sign it.
    let other = limited(
        &up,
        &format!(
            "redis_url = \"rediss://127.0.0.1:{tls_port}/0\"\nredis_ca_file = \"{TLS}/other-ca.pem\""
        ),
    );
    assert!(
        until(&trusted, &c, "ok").await,
        "TLS to the store: {}",
        trusted.logged()
    );
    assert!(
        redis.dump().contains("bw-managed:ratelimit:"),
        "the bucket is in the store"
    );
    assert_eq!(gcra(&trusted.metrics(&c).await, "error"), 0.0);

    assert!(until(&other, &c, "error").await, "{}", other.logged());
    assert_eq!(gcra(&other.metrics(&c).await, "ok"), 0.0);
    let log = other.logged();
    assert!(
        log.contains("shared store failed") && log.to_lowercase().contains("certificate"),
        "the log says why: {log}"
    );
}

#[tokio::test]
async fn a_server_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let redis = Redis::start_with(&["--tls-auth-clients", "yes"], None, true);
    let tls_port = redis.tls_port.unwrap();
    let up = Upstream::start().await;
    let c = client();
    let with = limited(
        &up,
        &format!(
            "redis_url = \"rediss://localhost:{tls_port}/0\"\nredis_ca_file = \"{TLS}/ca.pem\"\n\
             redis_client_cert_file = \"{TLS}/client.pem\"\nredis_client_key_file = \"{TLS}/client-key.pem\""
        ),
    );
    let without = limited(
        &up,
        &format!(
            "redis_url = \"rediss://localhost:{tls_port}/0\"\nredis_ca_file = \"{TLS}/ca.pem\""
        ),
    );
    assert!(until(&with, &c, "ok").await, "{}", with.logged());
    assert!(until(&without, &c, "error").await, "{}", without.logged());
    assert_eq!(gcra(&without.metrics(&c).await, "ok"), 0.0);
}

/// A user of its own (Redis ACLs), as docs/src/security.md advises for a shared store: with
/// `redis_username`, bearward works within a key pattern of its prefix and the commands it
/// sends (the rate-limit script's included); a user whose keys are elsewhere is refused by
/// Redis, and the limit falls back.
#[tokio::test]
async fn an_acl_user_held_to_its_key_prefix_is_enough() {
    let redis = Redis::start();
    let pw = std::fs::read_to_string("tests/fixtures/redis-password").unwrap();
    let pw = format!(">{}", pw.trim());
    for (user, keys) in [("bearward", "~bw-managed:*"), ("stranger", "~other:*")] {
        let ok = redis.cli(&[
            "acl",
            "setuser",
            user,
            "on",
            &pw,
            "resetkeys",
            keys,
            "-@all",
            "+get",
            "+getrange",
            "+set",
            "+evalsha",
            "+eval",
            "+time",
        ]);
        assert_eq!(ok.trim(), "OK", "{ok}");
    }
    let up = Upstream::start().await;
    let c = client();
    let cache = |user: &str| {
        format!(
            "redis_url = \"redis://127.0.0.1:{}/0\"\nredis_username = \"{user}\"\n\
             redis_password_file = \"tests/fixtures/redis-password\"",
            redis.port
        )
    };
    let own = limited(&up, &cache("bearward"));
    assert!(until(&own, &c, "ok").await, "{}", own.logged());
    let dump = redis.dump();
    assert!(dump.contains("bw-managed:ratelimit:"), "{dump}");
    let stranger = limited(&up, &cache("stranger"));
    assert!(until(&stranger, &c, "error").await, "{}", stranger.logged());
    assert_eq!(gcra(&stranger.metrics(&c).await, "ok"), 0.0);
}
