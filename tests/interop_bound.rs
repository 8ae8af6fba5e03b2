//! Sender-constrained tokens from the real OpenID provider (see tests/interop.rs): a DPoP-bound
//! token (RFC 9449) and a certificate-bound one (RFC 8705, oidc-provider's mTLS feature).

mod common;

use common::dpop::DpopKey;
use common::idp::Key;
use common::provider::*;
use common::*;
use http::StatusCode;
use serde_json::Value;

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
    let c = common::client();
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
    let c = common::client();
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
