//! Signing keys from a real IdP over HTTP: rotation, unknown kids, the IdP going down, stale
//! keys, no keys yet, Cache-Control, and keys that must never be used (weak, misused).

mod common;

use common::idp::*;
use common::world::World;
use common::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

use base64::Engine as _;
const B64_ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test]
async fn rotation_picks_up_a_new_kid() {
    let (k1, k2) = (Key::rsa1(), Key::rsa2());
    let w = World::start(&[&k1], "unknown_kid_cooldown = \"0s\"").await;
    w.refused(
        "/api/read/x",
        &w.mint.token(&k2, "read"),
        "new key not yet published",
    )
    .await;
    w.idp.set_keys(&[&k1, &k2]);
    w.accepted(
        "/api/read/x",
        &w.mint.token(&k2, "read"),
        "new key published: refetched on the unknown kid",
    )
    .await;
    w.accepted(
        "/api/read/x",
        &w.mint.token(&k1, "read"),
        "old key still published",
    )
    .await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let rsa = Key::rsa1();
    let w = World::start_with(
        &[&rsa],
        "jwks_uri = \"JWKS_URI\"",
        "unknown_kid_cooldown = \"60s\"",
    )
    .await;
    let base = w.idp.jwks_hits();
    let stranger_pem = Key::load("rsa-other.pem", "x", Algorithm::RS256);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut k = Key::load("rsa-other.pem", "x", Algorithm::RS256);
        k.kid = format!("random-{i}");
        let t = w.mint.token(&k, "read");
        let c = w.c.clone();
        let url = w.gw.url("/api/read/x");
        tasks.push(tokio::spawn(async move {
            get(&c, &url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    drop(stranger_pem);
    let fetched = w.idp.jwks_hits() - base;
    assert!(
        fetched <= 1,
        "{fetched} JWKS fetches for 1,000 unknown kids"
    );
    assert_eq!(w.up.count(), 0);
}

#[tokio::test]
async fn the_idp_going_down_keeps_the_last_good_keys() {
    let rsa = Key::rsa1();
    let w = World::start(
        &[&rsa],
        "jwks_refresh = \"200ms\"\njwks_min_refresh = \"100ms\"",
    )
    .await;
    w.accepted("/api/read/x", &w.mint.token(&rsa, "read"), "before")
        .await;
    w.idp.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A new token (not in the verified cache) still validates with the cached keys.
    w.accepted(
        "/api/read/x",
        &w.mint.token(&rsa, "read write"),
        "after the IdP stopped",
    )
    .await;
    let ready = get(&w.c, &format!("http://{}/readyz", w.gw.admin.unwrap()), &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert!(ready.body.contains("stale"), "{}", ready.body);
}

#[tokio::test]
async fn keys_older_than_max_stale_stop_serving() {
    let rsa = Key::rsa1();
    let w = World::start(
        &[&rsa],
        "jwks_refresh = \"200ms\"\njwks_min_refresh = \"100ms\"\nmax_stale = \"1s\"",
    )
    .await;
    let t = w.mint.token(&rsa, "read");
    w.accepted("/api/read/x", &t, "before").await;
    w.idp.stop();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = w.call("/api/read/x", &t).await;
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "even the cached token: its keys are too old"
    );
    let ready = get(&w.c, &format!("http://{}/readyz", w.gw.admin.unwrap()), &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(w.up.count(), 1);
}

#[tokio::test]
async fn no_keys_yet_answers_503_and_not_ready() {
    let up = Upstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = auth_config(&up.url(), &format!("http://{dead}"), "discovery = true", "");
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let ready = get(&c, &format!("http://{}/readyz", gw.admin.unwrap()), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let healthy = get(&c, &format!("http://{}/healthz", gw.admin.unwrap()), &[]).await;
    assert_eq!(healthy.status, StatusCode::OK);
    let m = Minter {
        issuer: format!("http://{dead}"),
        audience: "https://api.test".into(),
    };
    let a = get(
        &c,
        &gw.url("/api/read/x"),
        &[(
            "authorization",
            &format!("Bearer {}", m.token(&Key::rsa1(), "read")),
        )],
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        get(&c, &gw.url("/public/x"), &[]).await.status,
        StatusCode::OK,
        "open routes still work"
    );
    assert_eq!(up.count(), 1);
}

/// A token signed with the 1024-bit fixture key. aws-lc refuses such keys, so openssl signs.
fn token_from_small_key(m: &Minter) -> (String, serde_json::Value) {
    use std::io::Write;
    let modulus = std::process::Command::new("openssl")
        .args([
            "rsa",
            "-in",
            "tests/fixtures/keys/rsa-small.pem",
            "-noout",
            "-modulus",
        ])
        .output()
        .expect("openssl");
    let hex = String::from_utf8(modulus.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_owned();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwk =
        json!({"kty": "RSA", "kid": "small", "use": "sig", "n": B64_ENGINE.encode(n), "e": "AQAB"});
    let input = format!(
        "{}.{}",
        B64_ENGINE.encode(json!({"alg": "RS256", "typ": "at+jwt", "kid": "small"}).to_string()),
        B64_ENGINE.encode(m.claims("read").to_string())
    );
    let mut child = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-sign",
            "tests/fixtures/keys/rsa-small.pem",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    assert_eq!(sig.len(), 128, "a 1024-bit signature");
    (format!("{input}.{}", B64_ENGINE.encode(sig)), jwk)
}

#[tokio::test]
async fn unusable_keys_are_never_used() {
    let mut enc = Key::p256();
    enc.kid = "enc".into();
    enc.jwk["kid"] = json!("enc");
    enc.jwk["use"] = json!("enc");
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa, &enc], "").await;
    let (small_token, small_jwk) = token_from_small_key(&w.mint);
    w.idp
        .set_jwks(json!({"keys": [rsa.jwk, enc.jwk, small_jwk]}));
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.refused("/api/read/x", &small_token, "1024-bit RSA key")
        .await;
    w.refused("/api/read/x", &w.mint.token(&enc, "read"), "use: enc key")
        .await;
    w.accepted("/api/read/x", &w.mint.token(&rsa, "read"), "the good key")
        .await;
}

#[tokio::test]
async fn cache_control_max_age_drives_refresh_and_its_absence_uses_jwks_refresh() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    idp.set_cache_control(Some("public, max-age=1"));
    let up = Upstream::start().await;
    let cfg = auth_config(
        &up.url(),
        &idp.issuer(),
        &format!("jwks_uri = \"{}\"", idp.jwks_uri()),
        "jwks_min_refresh = \"500ms\"\njwks_refresh = \"1h\"",
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let start = idp.jwks_hits();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let refreshed = idp.jwks_hits() - start;
    assert!(
        (2..=4).contains(&refreshed),
        "max-age=1 gave {refreshed} refreshes in 2.6 s"
    );

    idp.set_cache_control(None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = idp.jwks_hits();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        idp.jwks_hits(),
        before,
        "without max-age the 1h jwks_refresh applies"
    );
    drop(gw);
}

/// A universal forgery through a weak key in the JWKS: an Ed25519 "public key" of small order
/// (the identity, y = 1, x = 0) lets R = identity, S = 0 verify for any payload under
/// cofactorless verification. The key is refused when the JWKS is loaded, named in the log and
/// the metrics, and the good key beside it keeps working.
#[tokio::test]
async fn a_weak_key_in_the_jwks_is_refused_and_its_forgeries_never_pass() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = json!({"kty": "OKP", "crv": "Ed25519", "kid": "weak", "use": "sig",
                      "x": B64_ENGINE.encode(identity)});
    // Order 8, and the identity spelled non-canonically (y = p + 1).
    let order8 = json!({"kty": "OKP", "crv": "Ed25519", "kid": "order8",
        "x": "JuiVj8KyJ7BFw_SJ8u-Y8NXfrAXTxjM5sTgCiG1T_AU"});
    let mut p_plus_1 = [0xffu8; 32];
    p_plus_1[0] = 0xee;
    p_plus_1[31] = 0x7f;
    let noncanon = json!({"kty": "OKP", "crv": "Ed25519", "kid": "noncanon",
                          "x": B64_ENGINE.encode(p_plus_1)});
    w.idp
        .set_jwks(json!({"keys": [weak, rsa.jwk.clone(), order8, noncanon]}));
    let mut forged_sig = [0u8; 64];
    forged_sig[0] = 1;
    for kid in ["weak", "order8", "noncanon"] {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        let mut claims = w.mint.claims("read admin");
        claims["sub"] = json!("mallory");
        let input = format!(
            "{}.{}",
            B64_ENGINE.encode(header.to_string()),
            B64_ENGINE.encode(claims.to_string())
        );
        let forged = format!("{input}.{}", B64_ENGINE.encode(forged_sig));
        w.refused("/api/admin/x", &forged, &format!("forgery under kid {kid}"))
            .await;
    }
    w.accepted(
        "/api/read/x",
        &w.mint.token(&rsa, "read"),
        "the good key beside them",
    )
    .await;
    let m = metrics_after_close(&w.gw).await;
    for kid in ["weak", "order8", "noncanon"] {
        let line = format!(
            "bearward_jwks_refused_keys{{issuer=\"{}\",kid=\"{kid}\",reason=\"weak_key\"}} 1",
            w.idp.issuer()
        );
        assert!(m.contains(&line), "{line} not in:\n{m}");
    }
}
