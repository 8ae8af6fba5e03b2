//! `token_exchange` (issue 40 part 2): RFC 8693 exchanges against the tests' real authorization
//! server (oidc-provider, its token exchange grant registered in tests/interop/provider.mjs):
//! the upstream receives a token for its own audience and never the client's, one exchange
//! serves many requests (and two replicas through Redis), a slow or absent token endpoint is
//! 503 with nothing forwarded, `invalid_target` is 403, and delegation puts bearward in `act`.

mod common;

use common::provider::*;
use common::redis::Redis;
use common::*;
use http::StatusCode;
use serde_json::Value;

const ORDERS: &str = "http://orders.bearward.test";

/// The exchange client's secret: a fixture, read by every test's bearward (never rewritten, so
/// tests in parallel cannot read it half-written).
const SECRET_FILE: &str = "tests/fixtures/exchange-secret";

/// bearward in front of `orders`, which exchanges with `exchange` (the inline table's keys
/// after `issuer`, `client_id` and the secret), and `plain`, which does not.
fn config(up: &Upstream, issuer: &str, exchange: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{API}"]
algorithms = ["RS256", "ES256"]
leeway = "0s"

{extra}

[upstreams.orders]
url = "{up}"
token_exchange = {{ issuer = "{issuer}", client_id = "exchange-client", client_secret_file = "{secret}", {exchange} }}

[upstreams.plain]
url = "{up}"

[[routes]]
prefix = "/api/orders"
scopes = ["read"]
upstream = "orders"

[[routes]]
prefix = "/public/orders"
auth = "none"
upstream = "orders"

[[routes]]
prefix = "/api/read"
scopes = ["read"]
upstream = "plain"
"#,
        up = up.url(),
        secret = SECRET_FILE,
    )
}

async fn exchanges(p: &Provider) -> u64 {
    let a = get(&client(), &format!("{}/__admin/stats", p.issuer), &[]).await;
    serde_json::from_str::<Value>(&a.body).unwrap()["exchanges"]
        .as_u64()
        .unwrap()
}

/// `bearward_token_exchanges_total` of the `orders` upstream with this outcome.
fn exchanged(metrics: &str, outcome: &str) -> f64 {
    let series =
        format!("bearward_token_exchanges_total{{upstream=\"orders\",outcome=\"{outcome}\"}}");
    metric(metrics, &series)
}

/// A JWT's payload, decoded (the test reads what the upstream was given).
fn payload(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// An upstream, and bearward exchanging for it with `exchange`, ready; and a client token.
async fn setup(p: &Provider, exchange: &str, extra: &str) -> (Upstream, Gateway, String) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &p.issuer, exchange, extra)).await;
    wait_ready(&gw).await;
    let token = p.client_credentials("cc-client", "read", API).await;
    (up, gw, token)
}

/// `bearward explain` of GET `path` with `token`, on `config` written to a file.
fn explain(config: &str, path: &str, token: &str) -> (String, Option<i32>) {
    // One file per call: tests run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "bearward-x-explain-{}-{}.toml",
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bearward"))
        .arg("explain")
        .arg("--config")
        .arg(&file)
        .args(["--method", "GET", "--path", path, "--token", token])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// The bearer token the upstream received last, and that the client's token is nowhere in
/// what it received.
fn upstream_token(up: &Upstream, client_token: &str) -> String {
    let seen = up.last();
    for (name, v) in &seen.headers {
        assert!(
            !String::from_utf8_lossy(v.as_bytes()).contains(client_token),
            "the client's token reached the upstream in {name}"
        );
    }
    assert!(!seen.uri.contains(client_token));
    let auth = seen.headers["authorization"].to_str().unwrap();
    auth.strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_owned()
}

#[tokio::test]
async fn the_upstream_gets_a_token_for_its_own_audience_once_per_client_token() {
    let Some(p) = start_provider() else { return };
    let exchange = format!("audience = \"{ORDERS}\", scope = \"orders:read\"");
    let (up, gw, token) = setup(&p, &exchange, "").await;

    let before = exchanges(&p).await;
    let mut given = None;
    for i in 0..50 {
        let a = call(&gw, &format!("/api/orders/{i}"), &token).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let t = upstream_token(&up, &token);
        assert_eq!(given.get_or_insert_with(|| t.clone()), &t);
    }
    assert_eq!(
        exchanges(&p).await - before,
        1,
        "one exchange for 50 requests"
    );
    let claims = payload(&given.unwrap());
    assert_eq!(claims["aud"], ORDERS);
    assert_eq!(claims["sub"], "cc-client");
    assert_eq!(claims["client_id"], "exchange-client");
    assert_eq!(claims["scope"], "orders:read");
    assert!(claims.get("act").is_none());

    // Another client token is exchanged on its own.
    let other = p.client_credentials("es-client", "read", API).await;
    assert_eq!(
        call(&gw, "/api/orders/x", &other).await.status,
        StatusCode::OK
    );
    assert_eq!(payload(&upstream_token(&up, &other))["sub"], "es-client");
    assert_eq!(exchanges(&p).await - before, 2);

    // A route without a token check sends no Authorization to an exchanging upstream, not
    // even one the client wrote.
    let seen = up.count();
    assert_eq!(
        call(&gw, "/public/orders/x", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(up.count(), seen + 1);
    assert!(up.last().headers.get("authorization").is_none());
    assert_eq!(exchanges(&p).await - before, 2);

    // An upstream without token_exchange gets the client's token as before.
    assert_eq!(
        call(&gw, "/api/read/x", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.last().headers["authorization"],
        format!("Bearer {token}").as_str()
    );

    let m = metrics_after_close(&gw).await;
    assert_eq!(exchanged(&m, "ok"), 2.0);

    // `bearward explain` says what the upstream gets.
    let (text, _) = explain(
        &config(&up, &p.issuer, &exchange, ""),
        "/api/orders/1",
        &token,
    );
    let line = format!(
        "the token is exchanged at {}'s token endpoint for one for {ORDERS} (RFC 8693)",
        p.issuer
    );
    assert!(text.contains(&line), "{text}");
}

/// `invalid_target` and `invalid_scope` are the client's: 403 with the reason, nothing
/// forwarded, and the refusal kept a moment.
#[tokio::test]
async fn a_refused_exchange_is_403_and_reaches_nothing() {
    let Some(p) = start_provider() else { return };
    let exchange = "audience = \"http://elsewhere.bearward.test\"";
    let (up, gw, token) = setup(&p, exchange, "").await;
    let before = exchanges(&p).await;
    for _ in 0..3 {
        let a = call(&gw, "/api/orders/1", &token).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(
            a.body.contains("token_exchange_invalid_target"),
            "{}",
            a.body
        );
        assert!(a.headers.get("www-authenticate").is_none());
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    assert_eq!(exchanges(&p).await - before, 1, "the refusal is kept");

    let exchange = format!("audience = \"{ORDERS}\", scope = \"billing:read\"");
    let gw2 = Gateway::start(&config(&up, &p.issuer, &exchange, "")).await;
    wait_ready(&gw2).await;
    let a = call(&gw2, "/api/orders/1", &token).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.body.contains("token_exchange_invalid_scope"),
        "{}",
        a.body
    );
    assert_eq!(up.count(), 0);
}

/// A token endpoint slower than `timeout`, and one that is not there: 503 with `Retry-After`,
/// never the client's token upstream; once it answers again, requests pass.
#[tokio::test]
async fn a_slow_or_absent_token_endpoint_is_503_and_never_falls_back() {
    let Some(p) = start_provider() else { return };
    let exchange = format!("audience = \"{ORDERS}\", timeout = \"300ms\"");
    let (up, gw, token) = setup(&p, &exchange, "").await;

    p.admin("exchange?delay_ms=1500", None).await;
    let a = call(&gw, "/api/orders/1", &token).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.body.contains("token_exchange_unavailable"), "{}", a.body);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(up.count(), 0);
    p.admin("exchange?delay_ms=0", None).await;
    // Failures are not kept: the next request asks again, and passes.
    let a = call(&gw, "/api/orders/2", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(payload(&upstream_token(&up, &token))["aud"], ORDERS);

    // Nothing listening at the endpoint.
    let closed = ClosedPort::new();
    let dead = format!("{}/token", closed.url());
    let exchange = format!("audience = \"{ORDERS}\", token_endpoint = \"{dead}\"");
    let gw2 = Gateway::start(&config(&up, &p.issuer, &exchange, "")).await;
    wait_ready(&gw2).await;
    let seen = up.count();
    let a = call(&gw2, "/api/orders/3", &token).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(up.count(), seen);
    let m = metrics_after_close(&gw2).await;
    assert_eq!(exchanged(&m, "unreachable"), 1.0);
}

/// `actor = true`: bearward's own client-credentials token goes as `actor_token`, and the new
/// token's `act` names bearward's client; `bearward explain` shows the chain.
#[tokio::test]
async fn delegation_puts_bearward_in_act() {
    let Some(p) = start_provider() else { return };
    let exchange = format!("audience = \"{ORDERS}\", actor = true");
    let (up, gw, token) = setup(&p, &exchange, "").await;
    let a = call(&gw, "/api/orders/1", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let given = upstream_token(&up, &token);
    let claims = payload(&given);
    assert_eq!(claims["sub"], "cc-client");
    assert_eq!(claims["act"]["sub"], "exchange-client", "{claims}");

    // `bearward explain` shows who acts for whom, as an upstream in front of its own bearward
    // would see the token.
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[issuers]]\nissuer = \"{}\"\ndiscovery = true\n\
         audiences = [\"{ORDERS}\"]\n\n[upstreams.app]\nurl = \"{}\"\n\n[[routes]]\n\
         prefix = \"/orders\"\nupstream = \"app\"\n",
        p.issuer,
        up.url()
    );
    let (text, code) = explain(&cfg, "/orders/1", &given);
    assert!(
        text.contains("delegated (RFC 8693): exchange-client acting for subject cc-client"),
        "{text}"
    );
    assert!(!text.contains("is exchanged at"), "{text}");
    assert_eq!(code, Some(0), "{text}");
}

/// An opaque client token (introspected, so bearward keeps only its hash) is exchanged too:
/// the token itself goes to the token endpoint, and never upstream.
#[tokio::test]
async fn an_opaque_client_token_is_exchanged() {
    let Some(p) = start_provider() else { return };
    std::env::set_var("BEARWARD_INTEROP_RS_SECRET", "bearward-rs-secret");
    let up = Upstream::start().await;
    let exchange = format!("audience = \"{ORDERS}\"");
    let cfg = config(&up, &p.issuer, &exchange, "").replace(
        "leeway = \"0s\"",
        "leeway = \"0s\"\ntoken_format = \"auto\"\nintrospection = true\n\
         introspection_client_id = \"bearward-rs\"\n\
         introspection_client_secret_env = \"BEARWARD_INTEROP_RS_SECRET\"",
    );
    let cfg = cfg.replace(
        &format!("audiences = [\"{API}\"]"),
        &format!("audiences = [\"{API}\", \"{OPAQUE_API}\"]"),
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let token = p.client_credentials("cc-client", "read", OPAQUE_API).await;
    assert!(token.split('.').count() < 3, "an opaque token");
    let before = exchanges(&p).await;
    for i in 0..3 {
        let a = call(&gw, &format!("/api/orders/{i}"), &token).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let claims = payload(&upstream_token(&up, &token));
        assert_eq!(claims["aud"], ORDERS);
        assert_eq!(claims["sub"], "cc-client");
    }
    assert_eq!(exchanges(&p).await - before, 1);
}

/// Two replicas sharing Redis exchange a client token once between them.
#[tokio::test]
async fn replicas_share_exchanged_tokens_through_the_store() {
    let Some(p) = start_provider() else { return };
    let redis = Redis::start();
    let up = Upstream::start().await;
    let cache = format!(
        "[cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\nsecret_file = \"tests/fixtures/store-secret\"",
        redis.port
    );
    let exchange = format!("audience = \"{ORDERS}\"");
    let a = Gateway::start(&config(&up, &p.issuer, &exchange, &cache)).await;
    let b = Gateway::start(&config(&up, &p.issuer, &exchange, &cache)).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let token = p.client_credentials("cc-client", "read", API).await;
    let before = exchanges(&p).await;
    assert_eq!(
        call(&a, "/api/orders/1", &token).await.status,
        StatusCode::OK
    );
    let first = upstream_token(&up, &token);
    assert_eq!(
        call(&b, "/api/orders/2", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(upstream_token(&up, &token), first);
    assert_eq!(exchanges(&p).await - before, 1, "replica b used a's token");
    let m = metrics_after_close(&b).await;
    assert_eq!(exchanged(&m, "shared_hit"), 1.0);
}

#[tokio::test]
async fn concurrent_requests_with_one_token_share_one_exchange() {
    let Some(p) = start_provider() else { return };
    let exchange = format!("audience = \"{ORDERS}\"");
    let (_up, gw, token) = setup(&p, &exchange, "").await;
    p.admin("exchange?delay_ms=200", None).await;
    let before = exchanges(&p).await;
    let calls = (0..20).map(|i| {
        let (url, token) = (gw.url(&format!("/api/orders/{i}")), token.clone());
        async move {
            let auth = format!("Bearer {token}");
            get(&client(), &url, &[("authorization", &auth)])
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(exchanges(&p).await - before, 1);
    p.admin("exchange?delay_ms=0", None).await;
}

/// The test STS (tests/exchange/sts.py), HTTPS with client certificates required.
async fn sts() -> PyServer {
    PyServer::start("tests/exchange/sts.py", &[]).await
}

fn mtls_config(up: &Upstream, sts: &PyServer, cert: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["api"]

[upstreams.orders]
url = "{up}"
token_exchange = {{ issuer = "https://idp.test", token_endpoint = "https://127.0.0.1:{port}/token", audience = "orders", client_id = "mtls-bearward", client_auth = "tls_client_auth", tls_ca_file = "tests/fixtures/tls/ca.pem", tls_client_cert = "tests/fixtures/tls/{cert}.pem", tls_client_key = "tests/fixtures/tls/{cert}-key.pem" }}

[[routes]]
prefix = "/api/orders"
upstream = "orders"
"#,
        up = up.url(),
        port = sts.port,
    )
}

/// `client_auth = "tls_client_auth"` (RFC 8705 2.1): the client certificate is the credential,
/// over TLS to a token endpoint with a private CA; another certificate is refused, and that is
/// bearward's trouble (503), not the client's.
#[tokio::test]
async fn a_token_endpoint_authenticating_clients_by_certificate() {
    use common::idp::{Key, Minter};
    let sts = sts().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&mtls_config(&up, &sts, "client")).await;
    let token = Minter {
        issuer: "https://idp.test".into(),
        audience: "api".into(),
    }
    .token(&Key::rsa1(), "read");
    for i in 0..3 {
        let a = call(&gw, &format!("/api/orders/{i}"), &token).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(upstream_token(&up, &token), "sts.orders.1");
    }
    let stats = sts.mtls_stats().await;
    assert_eq!(stats["exchanges"], 1);
    assert_eq!(stats["subject_tokens"][0], token.as_str());

    // client2: signed by the same CA, but not the registered client's subject.
    let gw2 = Gateway::start(&mtls_config(&up, &sts, "client2")).await;
    let seen = up.count();
    let a = call(&gw2, "/api/orders/x", &token).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(up.count(), seen);
}
