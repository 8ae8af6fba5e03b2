//! Inputs an outside run tried that bearward already refuses cleanly, pinned so they keep
//! being refused: JSON nested 10,000 deep wherever bearward parses JSON from outside (a JWT's
//! header and payload, an introspection answer, a JWKS, a discovery document, a DPoP proof;
//! Envoy's CVE-2026-48042 was a stack overflow on exactly this), five-part tokens (a JWE, or a
//! JWE-wrapped unsigned JWT as pac4j-jwt accepted this year) under every `token_format`, and an
//! empty or short HMAC secret. Each refusal is a plain answer, and the process goes on serving.

mod common;

use common::dpop::DpopKey;
use common::idp::*;
use common::introspection::{Endpoint, Mode};
use common::*;
use http::StatusCode;

const DEPTH: usize = 10_000;

/// The two shapes of deep nesting: arrays and objects, as a JSON value. `objects` levels of
/// objects: 10,000 of them (50,000 bytes) do not fit in a token under the largest
/// `max_token_bytes` (64 KiB) once base64-encoded, so tokens carry 8,000.
fn nested_to(objects: usize) -> [String; 2] {
    [
        format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH)),
        format!("{}1{}", "{\"\":".repeat(objects), "}".repeat(objects)),
    ]
}

fn nested() -> [String; 2] {
    nested_to(DEPTH)
}

/// Room for a 10,000-deep token: a 1 MiB head and 64 KiB tokens.
fn roomy(cfg: String) -> String {
    cfg.replacen(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nmax_header_bytes = 1048576",
        1,
    )
}

async fn status(c: &HttpClient, gw: &Gateway, auth: &str, extra: &[(&str, &str)]) -> Answer {
    let mut h = vec![("authorization", auth)];
    h.extend_from_slice(extra);
    get(c, &gw.url("/api/read/x"), &h).await
}

#[tokio::test]
async fn deeply_nested_json_in_a_token_or_a_dpop_proof_is_refused() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&roomy(auth_config(
        &up.url(),
        &idp.issuer(),
        "discovery = true",
        "max_token_bytes = 65536",
    )))
    .await;
    wait_ready(&gw).await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let header = Minter::header(&key).to_string();
    let claims = mint.claims("read");
    for deep in nested_to(8_000) {
        // Signed for real: only the parser stands between the token and the upstream.
        let in_header = format!(
            r#"{{"alg":"RS256","typ":"at+jwt","kid":"{}","x":{deep}}}"#,
            key.kid
        );
        let mut c2 = claims.to_string();
        c2.insert_str(c2.len() - 1, &format!(r#","x":{deep}"#));
        for token in [
            sign_raw(&in_header, &claims.to_string(), &key.enc, key.alg),
            sign_raw(&header, &c2, &key.enc, key.alg),
        ] {
            assert!(token.len() < 65536);
            let a = status(&c, &gw, &format!("Bearer {token}"), &[]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
            let www = a.headers["www-authenticate"].to_str().unwrap();
            assert!(www.contains("error=\"invalid_token\""), "{www}");
        }
    }
    // DPoP proofs: nested 10,000 deep (refused by size: a proof is at most 8 KiB), and as deep
    // as fits in 8 KiB (2,000 arrays, 1,000 objects), so the parser itself is reached; in the
    // header, and in the (validly signed) payload.
    let client_key = DpopKey::new(Key::p256());
    let bound = mint.token_claims(&key, |c| {
        c.insert("cnf".into(), serde_json::json!({"jkt": client_key.jkt}));
    });
    let htu = gw.url("/api/read/x");
    let deep_proofs = [
        nested()[0].clone(),
        format!("{}{}", "[".repeat(2_000), "]".repeat(2_000)),
        format!("{}1{}", "{\"\":".repeat(1_000), "}".repeat(1_000)),
    ];
    for deep in deep_proofs {
        let mut proof_header = client_key.header().to_string();
        proof_header.insert_str(proof_header.len() - 1, &format!(r#","x":{deep}"#));
        let proof_claims = DpopKey::claims("GET", &htu, Some(&bound)).to_string();
        let mut deep_claims = proof_claims.clone();
        deep_claims.insert_str(deep_claims.len() - 1, &format!(r#","x":{deep}"#));
        let plain_header = client_key.header().to_string();
        for proof in [
            sign_raw(
                &proof_header,
                &proof_claims,
                &client_key.key.enc,
                client_key.key.alg,
            ),
            sign_raw(
                &plain_header,
                &deep_claims,
                &client_key.key.enc,
                client_key.key.alg,
            ),
        ] {
            let a = status(&c, &gw, &format!("DPoP {bound}"), &[("dpop", &proof)]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
            let www = a.headers["www-authenticate"].to_str().unwrap();
            assert!(www.contains("error=\"invalid_dpop_proof\""), "{www}");
        }
    }
    assert_eq!(up.count(), 0);
    // Still serving.
    let good = mint.token(&key, "read");
    let a = status(&c, &gw, &format!("Bearer {good}"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn deeply_nested_json_from_the_idp_is_refused() {
    let key = Key::rsa1();
    let up = Upstream::start().await;
    let c = client();
    for deep in nested() {
        // A JWKS, then a discovery document: no keys, so 503, and readiness says so.
        for via_discovery in [false, true] {
            let idp = Idp::start(&[&key]).await;
            let source = if via_discovery {
                idp.set_discovery_raw(format!(r#"{{"issuer":"{}","x":{deep}}}"#, idp.issuer()));
                "discovery = true".to_owned()
            } else {
                idp.set_jwks_raw(format!(r#"{{"keys":[{{"x":{deep}}}]}}"#));
                format!("jwks_uri = \"{}\"", idp.jwks_uri())
            };
            let gw = Gateway::start(&auth_config(&up.url(), &idp.issuer(), &source, "")).await;
            let token = idp.minter("https://api.test").token(&key, "read");
            let a = status(&c, &gw, &format!("Bearer {token}"), &[]).await;
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
            let ready = get(&c, &format!("http://{}/readyz", gw.admin.unwrap()), &[]).await;
            assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        // An introspection answer.
        let ep = Endpoint::start().await;
        ep.mode(Mode::Raw(200, format!(r#"{{"active":true,"x":{deep}}}"#)));
        std::env::set_var("BEARWARD_TEST_HOSTILE_SECRET", "s3cret");
        let gw = Gateway::start(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
token_format = "opaque"
introspection_endpoint = "{}"
introspection_client_id = "bearward"
introspection_client_secret_env = "BEARWARD_TEST_HOSTILE_SECRET"
audiences = ["https://api.test"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api/read"
scopes = ["read"]
upstream = "app"
"#,
            ep.url(),
            up.url()
        ))
        .await;
        let a = status(&c, &gw, "Bearer opaque-token", &[]).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
            .await
            .body;
        assert!(m.contains("reason=\"introspection_invalid_answer\""), "{m}");
        assert_eq!(ep.count(), 1);
    }
    assert_eq!(up.count(), 0);
}

/// A JWE (five parts), and a JWE whose plaintext is an unsigned JWT, as `jwt`, `opaque` and
/// `auto` issuers see them: never valid. A JWT issuer refuses it as malformed without asking
/// anyone; an introspecting one leaves it to the endpoint, which knows no such token.
#[tokio::test]
async fn a_five_part_token_never_validates() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let ep = Endpoint::start().await;
    let up = Upstream::start().await;
    let c = client();
    let b64 = |s: &str| {
        use base64::Engine as _;
        B64.encode(s)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none"}"#),
        b64(&idp.minter("https://api.test").claims("read").to_string())
    );
    let tokens = [
        format!(
            "{}.{}.{}.{}.{}",
            b64(r#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"rsa1"}"#),
            b64("encrypted-key"),
            b64("iv-iv-iv-iv"),
            b64(&idp.minter("https://api.test").token(&key, "read admin")),
            b64("tag-tag-tag-tag")
        ),
        format!(
            "{}..{}.{}.{}",
            b64(r#"{"alg":"dir","enc":"A128GCM","cty":"JWT"}"#),
            b64("iv-iv-iv-iv"),
            b64(&unsigned),
            b64("tag-tag-tag-tag")
        ),
    ];
    let introspect = format!(
        "introspection_endpoint = \"{}\"\nintrospection_client_id = \"bearward\"\nintrospection_client_secret_file = \"tests/fixtures/introspection-secret.txt\"",
        ep.url()
    );
    for format in ["jwt", "opaque", "auto"] {
        let extra = if format == "jwt" {
            String::new()
        } else {
            format!("token_format = \"{format}\"\n{introspect}")
        };
        let source = if format == "opaque" {
            ""
        } else {
            "discovery = true"
        };
        let gw = Gateway::start(&auth_config(&up.url(), &idp.issuer(), source, &extra)).await;
        if format != "opaque" {
            wait_ready(&gw).await;
        }
        let before = ep.count();
        for t in &tokens {
            let a = status(&c, &gw, &format!("Bearer {t}"), &[]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{format}: {}", a.body);
        }
        if format == "jwt" {
            assert_eq!(ep.count(), before);
            let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
                .await
                .body;
            assert!(m.contains("reason=\"malformed_token\""), "{m}");
        }
    }
    assert_eq!(up.count(), 0);
}

/// An HMAC secret from the environment that is empty or shorter than 32 bytes is a config
/// error naming the key, never a weak or absent key.
#[test]
fn an_empty_or_short_hmac_secret_is_a_config_error() {
    for (var, value) in [
        ("BEARWARD_TEST_HS_EMPTY", ""),
        ("BEARWARD_TEST_HS_SHORT", "only-sixteen-byt"),
    ] {
        std::env::set_var(var, value);
        let cfg = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
hmac_secret_env = "{var}"
algorithms = ["HS256"]
audiences = ["https://api.test"]

[upstreams.app]
url = "http://127.0.0.1:9"

[[routes]]
prefix = "/api"
upstream = "app"
"#
        );
        let e = bearward::config::Config::from_toml_str(&cfg, "t.toml")
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("issuers[0].hmac_secret") && e.contains("needs at least 32"),
            "{value:?}: {e}"
        );
    }
}
