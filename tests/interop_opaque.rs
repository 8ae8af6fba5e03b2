//! Opaque tokens against the real OpenID provider (see tests/interop.rs): oidc-provider issues
//! opaque access tokens for its opaque API and answers RFC 7662 introspection; bearward finds
//! the endpoint by discovery and authenticates as the resource server `bearward-rs`.

mod common;

use common::provider::*;
use common::*;
use http::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn opaque_tokens_are_introspected_once_for_a_hundred_concurrent_requests() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start_opaque(&p, "").await;
    let token = p.client_credentials("cc-client", "read", OPAQUE_API).await;
    assert!(!token.contains('.'), "oidc-provider issued a JWT: {token}");

    let before = p.introspections().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = gw.url(&format!("/api/read/{i}"));
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            get(
                &client(),
                &url,
                &[("authorization", &format!("Bearer {t}"))],
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        p.introspections().await - before,
        1,
        "single flight, then the cache"
    );
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-client"], "cc-client");
    assert_eq!(seen.headers["x-auth-scopes"], "read");

    let a = call(&gw, "/api/admin/users", &token).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    assert_eq!(p.introspections().await - before, 1);

    // The same issuer's JWTs are still validated locally (`auto`).
    let jwt = p.client_credentials("cc-client", "read", API).await;
    assert_eq!(call(&gw, "/api/read/x", &jwt).await.status, StatusCode::OK);
    assert_eq!(p.introspections().await - before, 1);
    assert_eq!(up.count(), 101);
}

#[tokio::test]
async fn a_revoked_opaque_token_is_refused_once_its_cache_entry_expires() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start_opaque(
        &p,
        "introspection_cache_ttl = \"1s\"\nintrospection_negative_ttl = \"1s\"",
    )
    .await;
    let token = p.client_credentials("cc-client", "read", OPAQUE_API).await;
    assert_eq!(
        call(&gw, "/api/read/x", &token).await.status,
        StatusCode::OK
    );
    p.revoke(&token, ("cc-client", "cc-secret")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = call(&gw, "/api/read/x", &token).await;
    assert_invalid_token(&a, "a revoked token after the positive TTL");
    assert_eq!(up.count(), 1);
    let before = p.introspections().await;
    assert_invalid_token(&call(&gw, "/api/read/x", &token).await, "again");
    assert_eq!(
        p.introspections().await,
        before,
        "the inactive answer is kept"
    );
}

#[tokio::test]
async fn a_refresh_grant_brings_a_new_opaque_token_and_the_refresh_token_is_no_access_token() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start_opaque(&p, "").await;
    let tokens = p
        .admin(
            "code-flow",
            Some(
                &serde_json::json!({"resource": OPAQUE_API, "scope": "openid offline_access read"}),
            ),
        )
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    assert!(!access.contains('.'));
    let a = call(&gw, "/api/read/x", &access).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(up.last().headers["x-auth-subject"], "user-42");

    // The refresh token is for the authorization server only (RFC 6749 1.5).
    // oidc-provider says `active: true` for it, with neither `aud` nor `token_type`: only the
    // audience bearward requires by default (introspection_require_audience) refuses it.
    let a = call(&gw, "/api/read/x", &refresh).await;
    assert_invalid_token(&a, "a refresh token sent as an access token");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = post(
        &format!("{}/token", p.issuer),
        Some(("web-client", "web-secret")),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("resource", OPAQUE_API),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = body["access_token"].as_str().unwrap();
    assert!(!renewed.contains('.'));
    assert_eq!(
        call(&gw, "/api/read/x", renewed).await.status,
        StatusCode::OK
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn with_the_idp_stopped_new_opaque_tokens_get_503_and_cached_ones_pass() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start_opaque(&p, "introspection_timeout = \"500ms\"").await;
    let cached = p.client_credentials("cc-client", "read", OPAQUE_API).await;
    let fresh = p.client_credentials("cc-client", "read", OPAQUE_API).await;
    assert_eq!(
        call(&gw, "/api/read/x", &cached).await.status,
        StatusCode::OK
    );
    drop(p);
    let a = call(&gw, "/api/read/x", &fresh).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(
        call(&gw, "/api/read/x", &cached).await.status,
        StatusCode::OK
    );
    assert_eq!(up.count(), 2);
}

// Sender-constrained tokens from oidc-provider: DPoP (RFC 9449) and certificate-bound (RFC 8705)
// JWT access tokens, checked by bearward.
