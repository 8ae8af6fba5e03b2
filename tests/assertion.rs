//! `identity_assertion` (issue 40 part 1): the JWT bearward signs for an upstream, checked the
//! way an upstream would, with panva's `jose` in node (tests/interop/verify-assertion.mjs)
//! against the JWK Set bearward publishes on its admin listener, never with bearward's own code:
//! the claims, the client's forged copy gone, one signature per token, a replay refused past
//! `exp`, and a key rotation by reload that keeps the old key published until its assertions
//! have expired.

mod common;

use common::idp::*;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const HEADER: &str = "x-bearward-assertion";

fn config(up: &Upstream, key: &str, bound_lifetime: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_origin = "https://gw.test"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["api"]

[upstreams.app]
url = "{up}"
identity_assertion = {{ signing_key_file = "tests/fixtures/keys/{key}", lifetime = "5s", claims = ["sub", "scope", "client_id", "tenant"] }}

[upstreams.bound]
url = "{up}"
identity_assertion = {{ signing_key_file = "tests/fixtures/keys/{key}", issuer = "bearward", audience = "orders", request = "include", lifetime = "{bound_lifetime}", jwks_on_listener = true }}

[upstreams.plain]
url = "{up}"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/public"
auth = "none"
upstream = "app"

[[routes]]
prefix = "/orders"
upstream = "bound"

[[routes]]
prefix = "/plain"
upstream = "plain"
"#,
        up = up.url()
    )
}

fn token(sub: &str) -> String {
    Minter {
        issuer: "https://idp.test".into(),
        audience: "api".into(),
    }
    .token_claims(&Key::rsa1(), |cl| {
        cl.insert("sub".into(), json!(sub));
        cl.insert("scope".into(), json!("read write"));
        cl.insert("azp".into(), json!("cli"));
        cl.insert("tenant".into(), json!({"id": 7}));
    })
}

/// The upstream's verdict on each assertion, from `jose`.
async fn verify(admin: SocketAddr, issuer: &str, audience: &str, jwts: &[String]) -> Vec<Value> {
    let jwks = format!("http://{admin}/.well-known/jwks.json");
    let out = tokio::process::Command::new("node")
        .arg("tests/interop/verify-assertion.mjs")
        .args([&jwks, issuer, audience])
        .args(jwts)
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The one assertion the upstream received with its last request.
fn received(up: &Upstream) -> String {
    let seen = up.last();
    let all: Vec<_> = seen.headers.get_all(HEADER).iter().collect();
    assert_eq!(all.len(), 1, "exactly one assertion reaches the upstream");
    all[0].to_str().unwrap().to_owned()
}

async fn call(gw: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(HEADER, "forged.by.client")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    get(&client(), &format!("http://{gw}{path}"), &headers).await
}

#[tokio::test]
async fn the_upstream_verifies_the_assertion_with_the_published_keys() {
    if !common::provider::node_present() {
        eprintln!("*** assertion test NOT RUN: node is not installed ***");
        return;
    }
    let up = Upstream::start().await;
    let gateway = Gateway::start(&config(&up, "p256.pem", "60s")).await;
    let (gw, admin) = (gateway.addr, gateway.admin.unwrap());
    let alice = token("alice");

    assert_eq!(call(gw, "/api/a", Some(&alice)).await.status, 200);
    let first = received(&up);
    assert_ne!(first, "forged.by.client");
    // Kept with the token: the next request carries the same assertion, unsigned again.
    assert_eq!(call(gw, "/api/b", Some(&alice)).await.status, 200);
    assert_eq!(received(&up), first);
    assert_eq!(call(gw, "/api/c", Some(&token("bob"))).await.status, 200);
    let bob = received(&up);
    assert_ne!(bob, first);
    assert_eq!(call(gw, "/public/x", None).await.status, 200);
    let anonymous = received(&up);
    // A refused request reaches nothing, assertion or not.
    let before = up.count();
    assert_eq!(call(gw, "/api/d", None).await.status, 401);
    assert_eq!(up.count(), before);
    // An upstream without identity_assertion gets none, nor the client's copy.
    assert_eq!(call(gw, "/plain/x", Some(&alice)).await.status, 200);
    assert!(up.last().headers.get(HEADER).is_none());

    let v = verify(
        admin,
        "https://gw.test",
        &up.url(),
        &[first.clone(), bob, anonymous, "forged.by.client".into()],
    )
    .await;
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
    let p = &v[0]["payload"];
    assert_eq!(p["sub"], "alice");
    assert_eq!(p["scope"], "read write");
    assert_eq!(p["client_id"], "cli");
    assert_eq!(p["tenant"], json!({"id": 7}));
    assert_eq!(p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(), 5);
    assert!(p["jti"].as_str().is_some_and(|j| j.len() == 32));
    assert!(p.get("htm").is_none() && p.get("route").is_none());
    assert_eq!(v[1]["payload"]["sub"], "bob");
    assert_eq!(v[2]["ok"], true, "{}", v[2]);
    assert!(v[2]["payload"].get("sub").is_none(), "{}", v[2]);
    assert_eq!(v[3]["ok"], false);

    // Bound to the request: signed every time, with the method, target and route.
    assert_eq!(call(gw, "/orders/1?x=y", Some(&alice)).await.status, 200);
    let one = received(&up);
    assert_eq!(call(gw, "/orders/2", Some(&alice)).await.status, 200);
    let two = received(&up);
    let v = verify(admin, "bearward", "orders", &[one, two]).await;
    assert_eq!(v[0]["payload"]["htm"], "GET", "{}", v[0]);
    assert_eq!(v[0]["payload"]["htu"], "/orders/1?x=y");
    assert_eq!(v[0]["payload"]["route"], "/orders*");
    assert_eq!(v[1]["payload"]["htu"], "/orders/2");
    assert_eq!(
        v[1]["payload"]["exp"].as_i64().unwrap() - v[1]["payload"]["iat"].as_i64().unwrap(),
        60
    );

    // The same set on the main listener, answered before any route (GET and HEAD only).
    let main = get(
        &client(),
        &format!("http://{gw}/.well-known/jwks.json"),
        &[],
    )
    .await;
    let admin_set = get(
        &client(),
        &format!("http://{admin}/.well-known/jwks.json"),
        &[],
    )
    .await;
    assert_eq!(main.status, 200);
    assert_eq!(main.headers["content-type"], "application/jwk-set+json");
    assert_eq!(main.body, admin_set.body);
    let seen = up.count();
    let post = send(
        &client(),
        "POST",
        &format!("http://{gw}/.well-known/jwks.json"),
        &[],
        "",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(up.count(), seen);

    // `bearward explain` says what goes upstream.
    let file = std::env::temp_dir().join(format!("bearward-assert-x-{}.toml", std::process::id()));
    std::fs::write(&file, config(&up, "p256.pem", "60s")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bearward"))
        .arg("explain")
        .arg("--config")
        .arg(&file)
        .args(["--method", "GET", "--path", "/api/x", "--token", &alice])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "x-bearward-assertion: a ES256 JWT (kid {}), iss https://gw.test",
        v[0]["kid"].as_str().unwrap_or("?")
    );
    assert!(text.contains(&line), "{line}\n{text}");
    let _ = std::fs::remove_file(&file);

    // A replay after `exp` is refused by the upstream's own check.
    tokio::time::sleep(Duration::from_millis(6100)).await;
    let v = verify(admin, "https://gw.test", &up.url(), &[first]).await;
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["code"], "ERR_JWT_EXPIRED", "{}", v[0]);
    // And the token's next request carries a fresh one.
    assert_eq!(call(gw, "/api/e", Some(&alice)).await.status, 200);
    let fresh = received(&up);
    let v = verify(admin, "https://gw.test", &up.url(), &[fresh]).await;
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
}

/// A reload that changes the signing key publishes both until the old key's last assertions
/// have expired (their lifetime, 5 s, and 10 s for clocks), then the new one alone.
#[tokio::test]
async fn a_rotation_by_reload_keeps_the_old_key_until_its_assertions_expire() {
    if !common::provider::node_present() {
        eprintln!("*** assertion test NOT RUN: node is not installed ***");
        return;
    }
    let up = Upstream::start().await;
    let file = std::env::temp_dir().join(format!("bearward-assertion-{}.toml", std::process::id()));
    std::fs::write(&file, config(&up, "p256.pem", "5s")).unwrap();
    let server = bearward::build(bearward::config::Config::load(&file).unwrap())
        .await
        .unwrap();
    let (gw, admin) = (server.local_addr().unwrap(), server.admin_addr().unwrap());
    let live = server.live();
    tokio::spawn(server.run(std::future::pending()));
    let jwks_url = format!("http://{admin}/.well-known/jwks.json");
    let kids = || async {
        let a = get(&client(), &jwks_url, &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-type"], "application/jwk-set+json");
        let doc: Value = serde_json::from_str(&a.body).unwrap();
        let mut kids: Vec<String> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                assert!(k.get("d").is_none(), "a private key part is published");
                assert_eq!(k["use"], "sig");
                assert_eq!(k["alg"], "ES256");
                k["kid"].as_str().unwrap().to_owned()
            })
            .collect();
        kids.sort();
        kids
    };
    assert_eq!(kids().await.len(), 1);
    let alice = token("alice");
    assert_eq!(call(gw, "/api/a", Some(&alice)).await.status, 200);
    let old = received(&up);

    std::fs::write(&file, config(&up, "p256-other.pem", "5s")).unwrap();
    live.reload_file(&file).unwrap();
    let both = kids().await;
    assert_eq!(both.len(), 2);
    // New assertions are signed with the new key; the token's kept one is the old signer's.
    assert_eq!(call(gw, "/api/b", Some(&alice)).await.status, 200);
    let new = received(&up);
    assert_ne!(new, old);
    let v = verify(admin, "https://gw.test", &up.url(), &[old, new]).await;
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
    assert_eq!(v[1]["ok"], true, "{}", v[1]);
    assert_ne!(v[0]["kid"], v[1]["kid"]);

    tokio::time::sleep(Duration::from_secs(16)).await;
    let left = kids().await;
    assert_eq!(left, vec![v[1]["kid"].as_str().unwrap().to_owned()]);
    let _ = std::fs::remove_file(&file);
}
