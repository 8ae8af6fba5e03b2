//! End to end with a real authorization server: oidc-provider (npm, tests/interop) on
//! loopback issues RFC 9068 JWT access tokens; bearward finds its keys by discovery.
//!
//! Needs `npm ci` in tests/interop (`.ci/run` does it). Without node on the machine these tests
//! say so loudly and pass; with node but without the packages they fail.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const API: &str = "http://api.bearward.test/api";
const OTHER_API: &str = "http://other.bearward.test/api";

struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

fn node_present() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts oidc-provider; `None` only when node itself is missing.
fn start_provider() -> Option<Provider> {
    if !node_present() {
        eprintln!("\n*** interop tests NOT RUN: node is not installed ***\n");
        return None;
    }
    assert!(
        std::path::Path::new("tests/interop/node_modules/oidc-provider").exists(),
        "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` (CI does)"
    );
    let mut child = own_group(&mut Command::new("node"))
        .arg("tests/interop/provider.mjs")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    // The ready line is awaited with a bound: a provider that hangs while starting fails the
    // test instead of hanging the whole run.
    let out = BufReader::new(child.stdout.take().unwrap());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = out.lines().map_while(Result::ok);
        let _ = ready_tx.send(lines.next().unwrap_or_default());
        // Keep draining: the provider may log to stdout, and a closed pipe would kill it (EPIPE).
        for l in lines {
            eprintln!("[provider] {l}");
        }
    });
    let Ok(line) = ready_rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the provider printed no ready line within 60 s");
    };
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("provider did not start: {line:?}: {e}"));
    Some(Provider {
        child,
        issuer: v["issuer"].as_str().unwrap().to_owned(),
    })
}

async fn post(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
    json_body: Option<&Value>,
) -> (StatusCode, Value) {
    post_with(url, auth, form, json_body, &[]).await
}

/// [`post`] with extra request headers (a DPoP proof, a client certificate).
async fn post_with(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
    json_body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let client = client();
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match json_body {
        Some(j) => {
            req = req.header("content-type", "application/json");
            j.to_string()
        }
        None => {
            req = req.header("content-type", "application/x-www-form-urlencoded");
            form.iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&")
        }
    };
    if let Some((id, secret)) = auth {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        req = req.header("authorization", format!("Basic {b}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Provider {
    async fn client_credentials(&self, client: &str, scope: &str, resource: &str) -> String {
        let secret = client.replace("-client", "-secret");
        let (status, body) = post(
            &format!("{}/token", self.issuer),
            Some((client, &secret)),
            &[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn admin(&self, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = post(
            &format!("{}/__admin/{path}", self.issuer),
            None,
            &[],
            body.or(Some(&Value::Null)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    }

    async fn jwks_hits(&self) -> u64 {
        let a = get(&client(), &format!("{}/__admin/stats", self.issuer), &[]).await;
        serde_json::from_str::<Value>(&a.body).unwrap()["jwks_hits"]
            .as_u64()
            .unwrap()
    }
}

fn config(up: &Upstream, issuer: &str, algorithms: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{API}"]
algorithms = {algorithms}
leeway = "0s"
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
"#,
        up.url()
    )
}

async fn start(p: &Provider, algorithms: &str, extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &p.issuer, algorithms, extra)).await;
    wait_ready(&gw).await;
    (up, gw)
}

async fn call(gw: &Gateway, path: &str, token: &str) -> Answer {
    get(
        &client(),
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn assert_invalid_token(a: &Answer, why: &str) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(www.contains("error=\"invalid_token\""), "{why}: {www}");
}

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

// Opaque tokens (RFC 7662): oidc-provider issues opaque access tokens for OPAQUE_API and
// answers introspection; bearward finds the endpoint by discovery and authenticates as the
// resource server `bearward-rs` (client_secret_basic).

const OPAQUE_API: &str = "http://opaque.bearward.test/api";

async fn start_opaque(p: &Provider, extra: &str) -> (Upstream, Gateway) {
    std::env::set_var("BEARWARD_INTEROP_RS_SECRET", "bearward-rs-secret");
    let up = Upstream::start().await;
    let cfg = config(
        &up,
        &p.issuer,
        "[\"RS256\"]",
        &format!(
            "token_format = \"auto\"\nintrospection = true\nintrospection_client_id = \"bearward-rs\"\nintrospection_client_secret_env = \"BEARWARD_INTEROP_RS_SECRET\"\n{extra}"
        ),
    )
    .replace(
        &format!("audiences = [\"{API}\"]"),
        &format!("audiences = [\"{API}\", \"{OPAQUE_API}\"]"),
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    (up, gw)
}

impl Provider {
    async fn introspections(&self) -> u64 {
        let a = get(&client(), &format!("{}/__admin/stats", self.issuer), &[]).await;
        serde_json::from_str::<Value>(&a.body).unwrap()["introspections"]
            .as_u64()
            .unwrap()
    }

    /// RFC 7009 revocation by the client the token was issued to.
    async fn revoke(&self, token: &str, client: (&str, &str)) {
        let (status, body) = post(
            &format!("{}/token/revocation", self.issuer),
            Some(client),
            &[("token", token)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "revocation: {body}");
    }
}

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

use common::dpop::DpopKey;
use common::idp::Key;

#[tokio::test]
async fn a_dpop_bound_token_from_the_provider_needs_a_fresh_proof_by_its_key() {
    let Some(p) = start_provider() else { return };
    let (up, gw) = start(&p, "[\"RS256\"]", "").await;
    let client = DpopKey::new(Key::p256());
    let token_url = format!("{}/token", p.issuer);
    let proof = client.proof("POST", &token_url, None);
    let (status, body) = post_with(
        &token_url,
        Some(("cc-client", "cc-secret")),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("resource", API),
        ],
        None,
        &[("dpop", &proof)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let auth = format!("DPoP {token}");
    let htu = gw.url("/api/read/items");
    let c = client_();
    let send = |headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = htu.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(&c, &url, &h).await
        }
    };
    for _ in 0..3 {
        let a = send(vec![
            ("authorization", auth.clone()),
            ("dpop", client.proof("GET", &htu, Some(&token))),
        ])
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let replayed = client.proof("GET", &htu, Some(&token));
    assert_eq!(
        send(vec![
            ("authorization", auth.clone()),
            ("dpop", replayed.clone())
        ])
        .await
        .status,
        StatusCode::OK
    );
    let refusals = [
        (
            "a replayed proof",
            vec![("authorization", auth.clone()), ("dpop", replayed)],
        ),
        (
            "a proof for POST",
            vec![
                ("authorization", auth.clone()),
                ("dpop", client.proof("POST", &htu, Some(&token))),
            ],
        ),
        (
            "a proof for another URI",
            vec![
                ("authorization", auth.clone()),
                (
                    "dpop",
                    client.proof("GET", &gw.url("/api/read/other"), Some(&token)),
                ),
            ],
        ),
        (
            "a proof by another key",
            vec![
                ("authorization", auth.clone()),
                (
                    "dpop",
                    DpopKey::new(Key::p384()).proof("GET", &htu, Some(&token)),
                ),
            ],
        ),
        (
            "a proof without ath",
            vec![
                ("authorization", auth.clone()),
                ("dpop", client.proof("GET", &htu, None)),
            ],
        ),
        (
            "the Bearer scheme",
            vec![
                ("authorization", format!("Bearer {token}")),
                ("dpop", client.proof("GET", &htu, Some(&token))),
            ],
        ),
        ("no proof", vec![("authorization", auth.clone())]),
    ];
    for (why, headers) in refusals {
        let a = send(headers).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(www.starts_with("DPoP "), "{why}: {www}");
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn a_certificate_bound_token_from_the_provider_needs_its_certificate() {
    let Some(p) = start_provider() else { return };
    let pem = std::fs::read_to_string("tests/fixtures/tls/client.pem").unwrap();
    let escaped: String =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let (status, body) = post_with(
        &format!("{}/token", p.issuer),
        Some(("mtls-client", "mtls-secret")),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("resource", API),
        ],
        None,
        &[("x-test-client-cert", &escaped)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let claims: Value = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");

    // bearward's own TLS listener, asking for client certificates.
    let tls = "tls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"\ntls_client_ca_file = \"tests/fixtures/tls/ca.pem\"\ntls_client_auth = \"optional\"";
    let up = Upstream::start().await;
    let cfg = config(&up, &p.issuer, "[\"RS256\"]", "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"127.0.0.1:0\"\n{tls}"),
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let auth = format!("Bearer {token}");
    assert_eq!(
        tls_get(gw.addr, "/api/read/x", &auth, Some("client")).await,
        StatusCode::OK
    );
    assert_eq!(
        tls_get(gw.addr, "/api/read/x", &auth, Some("client2")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        tls_get(gw.addr, "/api/read/x", &auth, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(up.count(), 1);

    // Behind a TLS-terminating proxy that passes the certificate (nginx's escaped PEM).
    let up = Upstream::start().await;
    let cfg = config(&up, &p.issuer, "[\"RS256\"]", "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = \"x-ssl-client-cert\"",
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let c = client_();
    let other = std::fs::read_to_string("tests/fixtures/tls/client2.pem").unwrap();
    let other: String =
        percent_encoding::utf8_percent_encode(&other, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let url = gw.url("/api/read/x");
    let a = get(
        &c,
        &url,
        &[("authorization", &auth), ("x-ssl-client-cert", &escaped)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = get(
        &c,
        &url,
        &[("authorization", &auth), ("x-ssl-client-cert", &other)],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(&c, &url, &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 1);
}

fn client_() -> HttpClient {
    client()
}
