//! RFC 9470 step-up on routes: `acr_values` and `max_age`. A token that signed in too weakly or
//! too long ago gets 401 `insufficient_user_authentication` naming what the route asks for,
//! not the 403 `insufficient_scope` a claim condition gives (which tells the client to ask for
//! scopes, the wrong thing to do).

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/admin"
acr_values = ["urn:example:mfa", "urn:example:hwk"]
max_age = "15m"
upstream = "app"

[[routes]]
prefix = "/fresh"
max_age = "1m"
upstream = "app"

[[routes]]
prefix = "/api"
upstream = "app"
"#,
        up.url()
    )
}

#[tokio::test]
async fn a_weak_or_stale_sign_in_gets_the_step_up_challenge() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up)).await;
    let c = client();
    let now = now();
    let token = |acr: Option<&str>, auth_time: Option<i64>| {
        Minter {
            issuer: "https://idp.test".into(),
            audience: "https://api.test".into(),
        }
        .token_claims(&Key::rsa1(), |cl| {
            if let Some(a) = acr {
                cl.insert("acr".into(), json!(a));
            }
            if let Some(t) = auth_time {
                cl.insert("auth_time".into(), json!(t));
            }
        })
    };
    let call = |path: &'static str, t: String| {
        let (c, url) = (c.clone(), gw.url(path));
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };

    assert_eq!(
        call("/admin/x", token(Some("urn:example:mfa"), Some(now - 60)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call("/admin/x", token(Some("urn:example:hwk"), Some(now - 600)))
            .await
            .status,
        StatusCode::OK
    );
    // A plain route asks nothing of how the user signed in.
    assert_eq!(
        call("/api/x", token(None, None)).await.status,
        StatusCode::OK
    );
    let passed = up.count();

    for (path, t, why) in [
        (
            "/admin/x",
            token(Some("urn:example:pwd"), Some(now - 60)),
            "weaker acr",
        ),
        ("/admin/x", token(None, Some(now - 60)), "no acr"),
        (
            "/admin/x",
            token(Some("urn:example:mfa"), Some(now - 3600)),
            "stale auth_time",
        ),
        (
            "/admin/x",
            token(Some("urn:example:mfa"), None),
            "no auth_time",
        ),
        ("/fresh/x", token(None, Some(now - 120)), "stale for 1m"),
    ] {
        let a = call(path, t).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}");
        let ch = a.headers["www-authenticate"].to_str().unwrap();
        assert!(
            ch.contains("error=\"insufficient_user_authentication\""),
            "{why}: {ch}"
        );
        if path == "/admin/x" {
            assert!(
                ch.contains("acr_values=\"urn:example:mfa urn:example:hwk\"")
                    && ch.contains("max_age=\"900\""),
                "{why}: {ch}"
            );
        } else {
            assert!(
                ch.contains("max_age=\"60\"") && !ch.contains("acr_values"),
                "{why}: {ch}"
            );
        }
    }
    assert_eq!(up.count(), passed, "nothing refused reached the upstream");
    let m = metrics_after_close(&gw).await;
    assert!(
        m.contains("reason=\"insufficient_user_authentication\""),
        "{m}"
    );
}

#[tokio::test]
async fn introspection_answers_are_held_to_the_same_step_up() {
    let ep = common::introspection::Endpoint::start().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://opaque.idp.test"
token_format = "opaque"
introspection_endpoint = "{}"
introspection_client_id = "bearward"
introspection_client_secret_file = "tests/fixtures/introspection-secret.txt"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/admin"
acr_values = ["urn:example:mfa"]
max_age = "15m"
upstream = "app"
"#,
        ep.url(),
        up.url()
    ))
    .await;
    let now = now();
    let answer = |acr: &str, auth_time: i64| json!({"active": true, "sub": "u", "exp": now + 300, "aud": "https://api.test", "acr": acr, "auth_time": auth_time});
    ep.set("strong", answer("urn:example:mfa", now - 30));
    ep.set("weak", answer("urn:example:pwd", now - 30));
    ep.set("stale", answer("urn:example:mfa", now - 7200));
    let c = client();
    let call = |t: &str| {
        let (c, url, t) = (c.clone(), gw.url("/admin/x"), t.to_owned());
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };
    assert_eq!(call("strong").await.status, StatusCode::OK);
    for t in ["weak", "stale"] {
        let a = call(t).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{t}");
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("insufficient_user_authentication"),
            "{t}"
        );
    }
    assert_eq!(up.count(), 1);
}
