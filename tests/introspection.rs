//! Opaque tokens end to end: bearward asks a real introspection endpoint over HTTP (RFC 7662)
//! and a recording upstream receives only what passed. Each refusal checks the upstream got
//! nothing; the endpoint's call count shows what the caches and single flight saved.

mod common;

use common::idp::*;
use common::introspection::{Endpoint, Mode};
use common::*;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;

const ISSUER: &str = "https://opaque.idp.test";

struct Setup {
    ep: Endpoint,
    up: Upstream,
    gw: Gateway,
    c: HttpClient,
}

fn config(ep: &Endpoint, up: &Upstream, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{ISSUER}"
token_format = "opaque"
introspection_endpoint = "{}"
introspection_client_id = "bearward"
introspection_client_secret_env = "BEARWARD_TEST_INTROSPECTION_SECRET"
audiences = ["https://api.test"]
{extra}

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes", client_id = "X-Auth-Client" }}

[[routes]]
prefix = "/api/read"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"

[[routes]]
prefix = "/audit/admin"
scopes = ["admin"]
mode = "audit"
upstream = "app"
"#,
        ep.url(),
        up.url()
    )
}

async fn start(extra: &str) -> Setup {
    // SAFETY of the environment: every test in this file sets the same value.
    std::env::set_var(
        "BEARWARD_TEST_INTROSPECTION_SECRET",
        "s3cret:with/odd chars",
    );
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&ep, &up, extra)).await;
    Setup {
        ep,
        up,
        gw,
        c: client(),
    }
}

fn active(scope: &str) -> serde_json::Value {
    json!({
        "active": true, "scope": scope, "sub": "user-7", "client_id": "app-1",
        "aud": "https://api.test", "iss": ISSUER, "token_type": "access_token",
        "exp": now() + 300, "iat": now(),
    })
}

impl Setup {
    async fn call(&self, path: &str, token: &str) -> Answer {
        get(
            &self.c,
            &self.gw.url(path),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    async fn refused(&self, path: &str, token: &str, status: StatusCode, reason: &str) -> Answer {
        let before = self.up.count();
        let a = self.call(path, token).await;
        assert_eq!(a.status, status, "{reason}: {}", a.body);
        assert_eq!(self.up.count(), before, "{reason}: the upstream got it");
        let m = self.metrics().await;
        assert!(
            m.lines().any(|l| l.starts_with("bearward_requests_total")
                && l.contains(&format!("reason=\"{reason}\""))),
            "no request counted with reason {reason}"
        );
        a
    }

    async fn metrics(&self) -> String {
        get(
            &self.c,
            &format!("http://{}/metrics", self.gw.admin.unwrap()),
            &[],
        )
        .await
        .body
    }

    async fn readyz(&self) -> Answer {
        get(
            &self.c,
            &format!("http://{}/readyz", self.gw.admin.unwrap()),
            &[],
        )
        .await
    }
}

#[tokio::test]
async fn an_active_opaque_token_passes_with_its_claims_and_scopes_and_is_asked_about_once() {
    let s = start("").await;
    s.ep.set("opaque-good-1", active("read write"));
    let a = s.call("/api/read/x", "opaque-good-1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = s.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "user-7");
    assert_eq!(seen.headers["x-auth-scopes"], "read write");
    assert_eq!(seen.headers["x-auth-client"], "app-1");
    for _ in 0..5 {
        assert_eq!(
            s.call("/api/read/y", "opaque-good-1").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(s.ep.count(), 1, "cached after the first call");

    // The call itself: RFC 7662 2.1 with client_secret_basic, id and secret form-encoded first.
    let call = &s.ep.calls()[0];
    assert_eq!(call.form["token"], "opaque-good-1");
    assert_eq!(call.form["token_type_hint"], "access_token");
    assert!(!call.form.contains_key("client_secret"));
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode("bearward:s3cret%3Awith%2Fodd+chars");
    assert_eq!(
        call.authorization.as_deref(),
        Some(&*format!("Basic {basic}"))
    );

    // The same token, a scope it lacks: 403 insufficient_scope, from the cached answer.
    let a = s
        .refused(
            "/api/admin/x",
            "opaque-good-1",
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        )
        .await;
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    assert_eq!(s.ep.count(), 1);

    // Audit mode works the same: forwarded, with the would-deny note and the identity.
    let a = s.call("/audit/admin/x", "opaque-good-1").await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = s.up.last();
    assert!(seen.headers["x-bearward-audit"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(seen.headers["x-auth-subject"], "user-7");

    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("bearward_introspections_total{{issuer=\"{ISSUER}\",outcome=\"active\"}}")
        ),
        1.0
    );
    assert!(
        metric(&m, &format!("bearward_introspection_cache_lookups_total{{issuer=\"{ISSUER}\",layer=\"process\",outcome=\"hit\"}}")) >= 5.0,
        "{m}"
    );
}

#[tokio::test]
async fn inactive_expired_foreign_and_refresh_tokens_are_refused_and_inactive_answers_are_kept_briefly(
) {
    let s = start("introspection_negative_ttl = \"1s\"").await;
    let a = s
        .refused(
            "/api/read/x",
            "never-issued",
            StatusCode::UNAUTHORIZED,
            "inactive_token",
        )
        .await;
    let challenge = a.headers["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    s.refused(
        "/api/read/x",
        "never-issued",
        StatusCode::UNAUTHORIZED,
        "inactive_token",
    )
    .await;
    assert_eq!(
        s.ep.count(),
        1,
        "the inactive answer is kept for the negative TTL"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.refused(
        "/api/read/x",
        "never-issued",
        StatusCode::UNAUTHORIZED,
        "inactive_token",
    )
    .await;
    assert_eq!(s.ep.count(), 2, "and asked again after it");

    let cases = [
        (
            "no-active",
            json!({"scope": "read", "exp": now() + 60}),
            "inactive_token",
        ),
        (
            "expired",
            json!({"active": true, "scope": "read", "exp": now() - 120}),
            "expired",
        ),
        (
            "future-nbf",
            json!({"active": true, "scope": "read", "nbf": now() + 600}),
            "not_yet_valid",
        ),
        (
            "other-aud",
            json!({"active": true, "scope": "read", "aud": ["https://other.test"]}),
            "bad_audience",
        ),
        (
            "other-iss",
            json!({"active": true, "scope": "read", "iss": "https://evil.test"}),
            "bad_issuer",
        ),
        (
            "refresh",
            json!({"active": true, "scope": "read", "token_type": "refresh_token"}),
            "bad_type",
        ),
        (
            "bound",
            json!({"active": true, "scope": "read", "aud": "https://api.test", "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
            "bound_token",
        ),
        (
            "bad-scope",
            json!({"active": true, "scope": ["read"], "aud": "https://api.test"}),
            "bad_claims",
        ),
        (
            "string-exp",
            json!({"active": true, "scope": "read", "exp": "2000000000"}),
            "bad_claims",
        ),
    ];
    for (token, answer, reason) in cases {
        s.ep.set(token, answer);
        s.refused("/api/read/x", token, StatusCode::UNAUTHORIZED, reason)
            .await;
    }
    // Keycloak's and Hydra's ways of saying "refresh token".
    s.ep.set(
        "kc-refresh",
        json!({"active": true, "scope": "read", "aud": "https://api.test", "typ": "Refresh"}),
    );
    s.refused(
        "/api/read/x",
        "kc-refresh",
        StatusCode::UNAUTHORIZED,
        "bad_type",
    )
    .await;
    s.ep.set("hydra-refresh", json!({"active": true, "scope": "read", "aud": ["https://api.test"], "token_use": "refresh_token"}));
    s.refused(
        "/api/read/x",
        "hydra-refresh",
        StatusCode::UNAUTHORIZED,
        "bad_type",
    )
    .await;
    // An answer without `aud` is refused by default: oidc-provider answers that way for a
    // refresh token (tests/interop.rs). Without exp an answer is good (RFC 7662: optional).
    s.ep.set("no-aud", json!({"active": true, "scope": "read"}));
    s.refused(
        "/api/read/x",
        "no-aud",
        StatusCode::UNAUTHORIZED,
        "bad_audience",
    )
    .await;
    s.ep.set(
        "minimal",
        json!({"active": true, "scope": "read", "aud": "https://api.test"}),
    );
    assert_eq!(
        s.call("/api/read/x", "minimal").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_answer_without_aud_passes_where_the_operator_allows_it() {
    let s = start("introspection_require_audience = false").await;
    s.ep.set("no-aud", json!({"active": true, "scope": "read"}));
    assert_eq!(s.call("/api/read/x", "no-aud").await.status, StatusCode::OK);
    s.ep.set(
        "wrong-aud",
        json!({"active": true, "scope": "read", "aud": "https://other.test"}),
    );
    s.refused(
        "/api/read/x",
        "wrong-aud",
        StatusCode::UNAUTHORIZED,
        "bad_audience",
    )
    .await;
}

#[tokio::test]
async fn answers_the_endpoint_should_not_give_are_refused_counted_and_never_let_through() {
    let s = start("").await;
    let huge = format!(
        "{{\"active\": true, \"scope\": \"read\", \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let cases = [
        (
            Mode::Raw(200, "<html>oops</html>".into()),
            "not_json",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(500, "{\"active\": true}".into()),
            "http_error",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(401, "{\"error\": \"invalid_client\"}".into()),
            "http_error",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(200, huge),
            "too_large",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(200, "{\"active\": \"true\", \"scope\": \"read\"}".into()),
            "invalid_answer",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(
                200,
                "{\"active\": false, \"scope\": \"read\", \"active\": true}".into(),
            ),
            "duplicate_member",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Mode::Raw(200, "[{\"active\": true}]".into()),
            "not_json",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (i, (mode, outcome, status)) in cases.into_iter().enumerate() {
        s.ep.mode(mode);
        let token = format!("bad-answer-{i}");
        let before = s.up.count();
        let a = s.call("/api/read/x", &token).await;
        assert_eq!(a.status, status, "{outcome}: {}", a.body);
        assert_eq!(a.headers["retry-after"], "5", "{outcome}");
        assert_eq!(s.up.count(), before, "{outcome}: the upstream got it");
        let m = s.metrics().await;
        assert!(
            metric(
                &m,
                &format!(
                    "bearward_introspections_total{{issuer=\"{ISSUER}\",outcome=\"{outcome}\"}}"
                )
            ) >= 1.0,
            "{outcome} not counted:\n{m}"
        );
        // A failed call is not kept: the next request asks again.
        let calls = s.ep.count();
        s.call("/api/read/x", &token).await;
        assert_eq!(s.ep.count(), calls + 1, "{outcome}: a failure was cached");
    }
    let m = s.metrics().await;
    assert!(m.contains("reason=\"introspection_invalid_answer\""), "{m}");
    assert!(m.contains("reason=\"introspection_unavailable\""), "{m}");
}

#[tokio::test]
async fn a_hundred_concurrent_requests_with_one_new_token_make_one_call() {
    let s = start("").await;
    s.ep.set("burst-token", active("read"));
    s.ep.delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = s.c.clone();
        let url = s.gw.url(&format!("/api/read/{i}"));
        tasks.push(tokio::spawn(async move {
            get(&c, &url, &[("authorization", "Bearer burst-token")])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(s.ep.count(), 1, "single flight: one call for 100 requests");
    assert_eq!(s.up.count(), 100);
}

#[tokio::test]
async fn calls_in_flight_are_bounded_and_the_overflow_gets_503_not_a_queue() {
    let s = start("introspection_max_in_flight = 2").await;
    s.ep.delay(Duration::from_millis(1500));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = s.c.clone();
        let url = s.gw.url("/api/read/x");
        s.ep.set(&format!("slow-{i}"), active("read"));
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let a = get(&c, &url, &[("authorization", &format!("Bearer slow-{i}"))]).await;
            (a.status, started.elapsed())
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (status, took) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert!(
                    took < Duration::from_millis(1200),
                    "waited {took:?}: a queue"
                );
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok, busy), (2, 4));
    assert_eq!(s.ep.count(), 2);
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("bearward_introspections_total{{issuer=\"{ISSUER}\",outcome=\"busy\"}}")
        ),
        4.0
    );
    assert!(m.contains("reason=\"introspection_overloaded\""));
}

#[tokio::test]
async fn with_the_endpoint_slow_or_gone_new_tokens_get_503_and_cached_ones_still_pass() {
    let s = start("introspection_timeout = \"300ms\"").await;
    s.ep.set("cached-before", active("read"));
    assert_eq!(
        s.call("/api/read/x", "cached-before").await.status,
        StatusCode::OK
    );

    // Slow: the timeout answers, not the endpoint.
    s.ep.delay(Duration::from_secs(5));
    s.ep.set("new-while-slow", active("read"));
    let started = std::time::Instant::now();
    let a = s
        .refused(
            "/api/read/x",
            "new-while-slow",
            StatusCode::SERVICE_UNAVAILABLE,
            "introspection_unavailable",
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.headers["retry-after"], "5");
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("bearward_introspections_total{{issuer=\"{ISSUER}\",outcome=\"timeout\"}}")
        ),
        1.0
    );

    // Gone: refused connections.
    s.ep.stop();
    s.refused(
        "/api/read/x",
        "new-while-down",
        StatusCode::SERVICE_UNAVAILABLE,
        "introspection_unavailable",
    )
    .await;
    let ready = s.readyz().await;
    assert!(
        ready.body.contains("introspection failing"),
        "{}",
        ready.body
    );
    assert_eq!(
        s.call("/api/read/x", "cached-before").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn client_secret_post_and_private_key_jwt_authenticate_as_configured() {
    let s = start("introspection_client_auth = \"client_secret_post\"").await;
    s.ep.set("post-token", active("read"));
    assert_eq!(
        s.call("/api/read/x", "post-token").await.status,
        StatusCode::OK
    );
    let call = &s.ep.calls()[0];
    assert_eq!(call.authorization, None);
    assert_eq!(call.form["client_id"], "bearward");
    assert_eq!(call.form["client_secret"], "s3cret:with/odd chars");

    let key = Key::rsa1();
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let cfg = config(&ep, &up, "")
        .replace(
            "introspection_client_secret_env = \"BEARWARD_TEST_INTROSPECTION_SECRET\"",
            "introspection_client_key_file = \"tests/fixtures/keys/rsa1.pem\"\nintrospection_client_key_id = \"rsa-1\"",
        );
    let gw = Gateway::start(&cfg).await;
    ep.set("jwt-auth-token", active("read"));
    let a = get(
        &s.c,
        &gw.url("/api/read/x"),
        &[("authorization", "Bearer jwt-auth-token")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let call = &ep.calls()[0];
    assert_eq!(call.authorization, None);
    assert_eq!(call.form["client_id"], "bearward");
    assert_eq!(
        call.form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    // The assertion verifies with the client's public key, and says what RFC 7523 3 asks.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[ep.url()]);
    v.set_issuer(&["bearward"]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &call.form["client_assertion"],
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .expect("the client assertion verifies");
    assert_eq!(data.header.kid.as_deref(), Some("rsa-1"));
    assert_eq!(data.claims["sub"], "bearward");
    assert!(data.claims["jti"].as_str().unwrap().len() >= 16);
    assert!(
        data.claims["exp"].is_i64() && data.claims["iat"].is_i64(),
        "{}",
        data.claims
    );
}

#[tokio::test]
async fn auto_validates_jwts_of_a_jwt_issuer_locally_and_introspects_the_rest() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let cfg = auth_config(
        &up.url(),
        &idp.issuer(),
        "discovery = true",
        &format!(
            "token_format = \"auto\"\nintrospection_endpoint = \"{}\"\nintrospection_client_id = \"bearward\"\nintrospection_client_secret_file = \"tests/fixtures/introspection-secret.txt\"",
            ep.url()
        ),
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let c = client();
    let jwt = idp.minter("https://api.test").token(&key, "read");
    let a = get(
        &c,
        &gw.url("/api/read/x"),
        &[("authorization", &format!("Bearer {jwt}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(ep.count(), 0, "a JWT of a JWT issuer is validated locally");

    ep.set(
        "opaque-in-auto",
        json!({"active": true, "scope": "read", "sub": "svc", "aud": "https://api.test"}),
    );
    let a = get(
        &c,
        &gw.url("/api/read/x"),
        &[("authorization", "Bearer opaque-in-auto")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(up.last().headers["x-auth-subject"], "svc");
    assert_eq!(ep.count(), 1);

    // A JWS naming an unknown issuer is not a JWT of a JWT issuer: the endpoint decides.
    let foreign = Idp::start(&[&key]).await;
    let forged = foreign.minter("https://api.test").token(&key, "read");
    let a = get(
        &c,
        &gw.url("/api/read/x"),
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ep.count(), 2);
    assert_eq!(up.count(), 2);
}

#[test]
fn check_refuses_ambiguity_inline_secrets_and_introspection_on_jwt_issuers() {
    let base = |issuers: &str, route_extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{issuers}\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n{route_extra}\n"
        )
    };
    let opaque = |name: &str| {
        format!(
            "[[issuers]]\nissuer = \"{name}\"\ntoken_format = \"opaque\"\nintrospection_endpoint = \"https://idp.test/introspect\"\nintrospection_client_id = \"bw\"\nintrospection_client_secret_file = \"tests/fixtures/introspection-secret.txt\"\naudiences = [\"api\"]\n"
        )
    };
    let err = |text: &str| {
        bearward::config::Config::from_toml_str(text, "t.toml")
            .expect_err("refused")
            .to_string()
    };
    let two = format!("{}{}", opaque("https://a.test"), opaque("https://b.test"));
    let e = err(&base(&two, ""));
    assert!(
        e.contains("routes[0].issuers") && e.contains("several issuers introspect"),
        "{e}"
    );
    bearward::config::Config::from_toml_str(
        &base(&two, "issuers = [\"https://b.test\", \"https://a.test\"]"),
        "t.toml",
    )
    .expect("an ordered list resolves it");
    let e = err(&base(&two, "issuers = [\"https://c.test\"]"));
    assert!(e.contains("not a configured issuer"), "{e}");

    let inline = opaque("https://a.test").replace(
        "introspection_client_secret_file = \"tests/fixtures/introspection-secret.txt\"",
        "introspection_client_secret = \"hunter2\"",
    );
    let e = err(&base(&inline, ""));
    assert!(
        e.contains("introspection_client_secret") && e.contains("never goes in the config file"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");

    let jwt = "[[issuers]]\nissuer = \"https://j.test\"\njwks_uri = \"https://j.test/jwks\"\naudiences = [\"api\"]\nintrospection_endpoint = \"https://j.test/i\"\n";
    let e = err(&base(jwt, ""));
    assert!(
        e.contains("t.toml:")
            && e.contains("issuers[0].introspection_endpoint")
            && e.contains("token_format"),
        "{e}"
    );

    let no_endpoint = opaque("https://a.test").replace(
        "introspection_endpoint = \"https://idp.test/introspect\"\n",
        "",
    );
    let e = err(&base(&no_endpoint, ""));
    assert!(e.contains("introspection endpoint"), "{e}");

    let keys_too = format!(
        "{}jwks_uri = \"https://a.test/jwks\"\n",
        opaque("https://a.test")
    );
    let e = err(&base(&keys_too, ""));
    assert!(e.contains("would never be used"), "{e}");
}

#[tokio::test]
async fn explain_asks_the_endpoint_and_says_what_it_answered() {
    std::env::set_var(
        "BEARWARD_TEST_INTROSPECTION_SECRET",
        "s3cret:with/odd chars",
    );
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let config = bearward::config::Config::from_toml_str(&config(&ep, &up, ""), "t.toml").unwrap();
    ep.set("explained", active("read"));
    let get = http::Method::GET;
    let e =
        bearward::explain::explain_request(&config, &get, "/api/read/x", Some("explained")).await;
    assert_eq!(e.status.as_u16(), 200, "{}", e.text);
    assert!(
        e.text.contains("introspection") && e.text.contains("active=true"),
        "{}",
        e.text
    );
    assert!(
        !e.text.contains("explained\n") && !e.text.contains(" explained "),
        "{}",
        e.text
    );
    let e =
        bearward::explain::explain_request(&config, &get, "/api/admin/x", Some("explained")).await;
    assert_eq!(
        (e.status.as_u16(), e.reason),
        (403, "insufficient_scope"),
        "{}",
        e.text
    );
    let e = bearward::explain::explain_request(&config, &get, "/api/read/x", Some("unknown")).await;
    assert_eq!(
        (e.status.as_u16(), e.reason),
        (401, "inactive_token"),
        "{}",
        e.text
    );
    assert!(e.text.contains("not active"), "{}", e.text);
    assert!(
        e.text.contains("opaque tokens asked about at http://")
            && !e.text.contains("FAIL no key source"),
        "{}",
        e.text
    );
    assert_eq!(up.count(), 0);
}

/// The issuer's `revoked` applies to opaque tokens on their introspection answer: by `jti`, by
/// `azp` (else `client_id`), and by `iat` before the cut-off; other answers pass.
#[tokio::test]
async fn revoked_refuses_an_active_opaque_token_by_its_answer() {
    let s = start(
        "revoked = { token_ids = [\"j-9\"], clients = [\"app-bad\"], issued_before = \"2020-01-01T00:00:00Z\" }",
    )
    .await;
    let with = |member: &str, v: serde_json::Value| {
        let mut a = active("read");
        a[member] = v;
        a
    };
    s.ep.set("opaque-jti", with("jti", json!("j-9")));
    s.ep.set("opaque-azp", with("azp", json!("app-bad")));
    s.ep.set("opaque-old", with("iat", json!(1_500_000_000)));
    s.ep.set("opaque-fine", with("jti", json!("j-10")));
    for token in ["opaque-jti", "opaque-azp", "opaque-old"] {
        let a = s
            .refused(
                "/api/read/x",
                token,
                StatusCode::UNAUTHORIZED,
                "token_revoked",
            )
            .await;
        let challenge = a.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{token}: {challenge}");
    }
    assert_eq!(
        s.call("/api/read/x", "opaque-fine").await.status,
        StatusCode::OK
    );
}

/// RFC 9396 9.2: an introspection answer's `authorization_details` is kept with the answer and
/// held to a route's as a JWT's claim is.
#[tokio::test]
async fn authorization_details_of_an_introspection_answer_are_checked() {
    let s = start(
        "\n[[routes]]\nprefix = \"/rar\"\nauthorization_details = [{ type = \"payment_initiation\", actions = [\"initiate\"] }]\nupstream = \"app\"\n",
    )
    .await;
    let with = |details: serde_json::Value| {
        let mut a = active("read");
        a["authorization_details"] = details;
        a
    };
    s.ep.set(
        "opaque-granted",
        with(json!([{"type": "payment_initiation", "actions": ["initiate", "cancel"]}])),
    );
    s.ep.set(
        "opaque-other",
        with(json!([{"type": "payment_initiation", "actions": ["cancel"]}])),
    );
    s.ep.set("opaque-none", active("read"));
    assert_eq!(
        s.call("/rar/x", "opaque-granted").await.status,
        StatusCode::OK
    );
    for token in ["opaque-other", "opaque-none"] {
        s.refused(
            "/rar/x",
            token,
            StatusCode::FORBIDDEN,
            "authorization_details_mismatch",
        )
        .await;
    }
}
