//! End to end with a real authorization server: oidc-provider (npm, tests/interop) on
//! loopback issues RFC 9068 JWT access tokens; bearward finds its keys by discovery.
//!
//! Needs `npm ci` in tests/interop (`.ci/run` does it). Without node on the machine these tests
//! say so loudly and pass; with node but without the packages they fail.

mod common;

use common::provider::*;
use common::*;
use http::StatusCode;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn client_credentials_scopes_and_audience() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start(&p, "[\"RS256\"]", "").await;
    let token = p.client_credentials("cc-client", "read", API).await;

    let a = call(&gw, "/api/read/items", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = up.last();
    assert_eq!(seen.uri, "/api/read/items");
    assert_eq!(seen.headers["x-auth-subject"], "cc-client");
    assert_eq!(seen.headers["x-auth-scopes"], "read");
    assert_eq!(seen.headers["x-auth-client"], "cc-client");

    let a = call(&gw, "/api/admin/users", &token).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"admin\""),
        "{www}"
    );

    let other = p.client_credentials("cc-client", "read", OTHER_API).await;
    assert_invalid_token(
        &call(&gw, "/api/read/items", &other).await,
        "a token for another resource",
    );
    assert_eq!(up.count(), 1, "only the first request reached the upstream");
}

#[tokio::test]
async fn short_tokens_expire_and_a_refresh_grant_brings_a_new_one() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start(&p, "[\"RS256\"]", "").await;

    let short = p.client_credentials("short-client", "read", API).await;
    assert_eq!(
        call(&gw, "/api/read/x", &short).await.status,
        StatusCode::OK
    );

    let tokens = p
        .admin(
            "code-flow",
            Some(&serde_json::json!({"resource": API, "scope": "openid offline_access read"})),
        )
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let a = call(&gw, "/api/read/x", &access).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(up.last().headers["x-auth-subject"], "user-42");

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let a = call(&gw, "/api/read/x", &short).await;
    assert_invalid_token(&a, "the 2 s client-credentials token after 3 s");
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("token expired"));
    assert_invalid_token(
        &call(&gw, "/api/read/x", &access).await,
        "the 2 s code-flow token after 3 s",
    );

    let (status, body) = post(
        &format!("{}/token", p.issuer),
        Some(("web-client", "web-secret")),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("resource", API),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = body["access_token"].as_str().unwrap();
    assert_ne!(renewed, access);
    let before = up.count();
    assert_eq!(
        call(&gw, "/api/read/x", renewed).await.status,
        StatusCode::OK,
        "the refreshed token"
    );
    assert_eq!(up.count(), before + 1);
}

#[tokio::test]
async fn es256_follows_the_issuers_allow_list() {
    let Some(p) = start_provider() else { return };
    let es = p.client_credentials("es-client", "read", API).await;
    let header: Value = {
        use base64::Engine;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(es.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice(&h).unwrap()
    };
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");

    let (_, allows) = start(&p, "[\"RS256\", \"ES256\"]", "").await;
    assert_eq!(
        call(&allows, "/api/read/x", &es).await.status,
        StatusCode::OK
    );
    let (up, refuses) = start(&p, "[\"RS256\"]", "").await;
    assert_invalid_token(
        &call(&refuses, "/api/read/x", &es).await,
        "ES256 not in the allow-list",
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn key_rotation_without_restart() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start(
        &p,
        "[\"RS256\"]",
        "jwks_refresh = \"1s\"\njwks_min_refresh = \"100ms\"",
    )
    .await;
    let old = p.client_credentials("cc-client", "read", API).await;
    assert_eq!(call(&gw, "/api/read/x", &old).await.status, StatusCode::OK);

    p.admin("rotate?phase=add", None).await;
    let new = p.client_credentials("cc-client", "read", API).await;
    assert!(
        new.split('.').next() != old.split('.').next(),
        "signed with the new key (another kid)"
    );
    assert_eq!(
        call(&gw, "/api/read/x", &new).await.status,
        StatusCode::OK,
        "new key accepted without a restart"
    );
    assert_eq!(
        call(&gw, "/api/read/x", &old).await.status,
        StatusCode::OK,
        "old key still published"
    );

    p.admin("rotate?phase=retire", None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_invalid_token(
        &call(&gw, "/api/read/x", &old).await,
        "old key retired and keys refreshed",
    );
    assert_eq!(call(&gw, "/api/read/x", &new).await.status, StatusCode::OK);
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn the_provider_stopped_leaves_cached_keys_serving() {
    let Some(mut p) = start_provider() else {
        return;
    };
    let (up, gw) = start(
        &p,
        "[\"RS256\"]",
        "jwks_refresh = \"500ms\"\njwks_min_refresh = \"100ms\"\nmax_stale = \"1h\"",
    )
    .await;
    let seen = p.client_credentials("cc-client", "read", API).await;
    let unseen = p.client_credentials("cc-client", "read write", API).await;
    assert_eq!(call(&gw, "/api/read/x", &seen).await.status, StatusCode::OK);

    p.child.kill().unwrap();
    p.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        call(&gw, "/api/read/x", &seen).await.status,
        StatusCode::OK,
        "a cached token"
    );
    assert_eq!(
        call(&gw, "/api/read/x", &unseen).await.status,
        StatusCode::OK,
        "a new token, cached keys"
    );
    let ready = get(
        &client(),
        &format!("http://{}/readyz", gw.admin.unwrap()),
        &[],
    )
    .await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "within max_stale: {}",
        ready.body
    );
    assert!(ready.body.contains("stale"), "{}", ready.body);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn without_cache_control_the_configured_refresh_applies() {
    let Some(p) = start_provider() else { return };
    let jwks = get(&client(), &format!("{}/jwks", p.issuer), &[]).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert!(
        !jwks.headers.contains_key("cache-control"),
        "the provider's JWKS has no Cache-Control"
    );

    let (_up, _gw) = start(
        &p,
        "[\"RS256\"]",
        "jwks_refresh = \"1s\"\njwks_min_refresh = \"100ms\"",
    )
    .await;
    let start_hits = p.jwks_hits().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let hits = p.jwks_hits().await - start_hits;
    assert!(
        (2..=5).contains(&hits),
        "jwks_refresh = 1s gave {hits} fetches in 3.5 s"
    );
}

/// A client that knows nothing but the API's URL, as an MCP client starts: the 401 names the
/// RFC 9728 metadata, the metadata names the authorization server and the resource, the
/// server's own metadata names its token endpoint, and the token asked for there with the
/// challenge's scope and the metadata's resource is let through.
#[tokio::test]
async fn a_client_discovers_the_authorization_server_from_the_401() {
    let Some(p) = start_provider() else { return };
    const RESOURCE: &str = "https://api.bearward.test/api";
    let extra = format!("audiences = [\"{RESOURCE}\"]");
    let up = Upstream::start().await;
    let cfg = config(&up, &p.issuer, "[\"RS256\"]", "")
        .replace(&format!("audiences = [\"{API}\"]"), &extra)
        .replace(
            "admin_listen = \"127.0.0.1:0\"\n",
            &format!("admin_listen = \"127.0.0.1:0\"\nresource = \"{RESOURCE}\"\n"),
        );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let c = client();

    let refused = get(&c, &gw.url("/api/read/items"), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let www = refused.headers["www-authenticate"].to_str().unwrap();
    let param = |name: &str| {
        let start = www
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{www}"))
            + name.len()
            + 2;
        www[start..start + www[start..].find('"').unwrap()].to_owned()
    };
    let metadata_url = param("resource_metadata");
    let scope = param("scope");
    assert_eq!(scope, "read");
    // The client resolves api.bearward.test to bearward.
    let path = metadata_url
        .strip_prefix("https://api.bearward.test")
        .unwrap_or_else(|| panic!("{metadata_url}"));
    let meta: Value = serde_json::from_str(&get(&c, &gw.url(path), &[]).await.body).unwrap();
    assert_eq!(meta["resource"], RESOURCE);
    let server = meta["authorization_servers"][0].as_str().unwrap();
    assert_eq!(server, p.issuer);
    let discovery = get(
        &c,
        &format!("{server}/.well-known/openid-configuration"),
        &[],
    )
    .await;
    let discovery: Value = serde_json::from_str(&discovery.body).unwrap();
    let (status, body) = post(
        discovery["token_endpoint"].as_str().unwrap(),
        Some(("cc-client", "cc-secret")),
        &[
            ("grant_type", "client_credentials"),
            ("scope", &scope),
            ("resource", meta["resource"].as_str().unwrap()),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();

    let a = call(&gw, "/api/read/items", token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        up.count(),
        1,
        "only the request with the token reached the upstream"
    );
}
