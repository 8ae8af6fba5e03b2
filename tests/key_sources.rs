//! Key sources that cannot be swapped in transit: plain-http `jwks_uri`, discovery and
//! introspection endpoints are refused off loopback unless the issuer says
//! `allow_insecure_http`; a discovery document may send bearward only to the issuer's own
//! origin or one it lists in `trusted_key_origins`, and never to a link-local or metadata
//! address it does not list.

mod common;

use bearward::config::Config;
use common::idp::{Idp, Key};
use common::*;
use http::StatusCode;

fn refused(extra_issuer: &str, issuer: &str, source: &str) -> String {
    let text = auth_config("http://127.0.0.1:3000", issuer, source, extra_issuer);
    match Config::from_toml_str(&text, "test.toml") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn plain_http_key_sources_need_loopback_or_the_explicit_way_out() {
    let e = refused(
        "",
        "https://idp.example.com",
        "jwks_uri = \"http://idp.example.com/jwks\"",
    );
    assert!(e.contains("issuers[0].jwks_uri"), "{e}");
    assert!(
        e.contains("swapped in transit") && e.contains("allow_insecure_http"),
        "{e}"
    );
    assert_eq!(
        refused(
            "allow_insecure_http = true",
            "https://idp.example.com",
            "jwks_uri = \"http://idp.example.com/jwks\""
        ),
        ""
    );
    for loopback in [
        "http://127.0.0.1:9/jwks",
        "http://127.8.0.1/jwks",
        "http://localhost:9/jwks",
        "http://[::1]:9/jwks",
    ] {
        assert_eq!(
            refused(
                "",
                "https://idp.example.com",
                &format!("jwks_uri = \"{loopback}\"")
            ),
            "",
            "{loopback}"
        );
    }
    let e = refused("", "http://idp.example.com", "discovery = true");
    assert!(
        e.contains("issuers[0].issuer") && e.contains("plain http"),
        "{e}"
    );
    let e = refused(
        "token_format = \"opaque\"\nintrospection_endpoint = \"http://idp.example.com/introspect\"\nintrospection_client_id = \"b\"\nintrospection_client_secret_file = \"tests/fixtures/introspection-secret.txt\"",
        "https://idp.example.com",
        "",
    );
    assert!(e.contains("issuers[0].introspection_endpoint"), "{e}");
    let e = refused(
        "trusted_key_origins = [\"https://keys.example.com/certs\"]",
        "https://idp.example.com",
        "discovery = true",
    );
    assert!(
        e.contains("issuers[0].trusted_key_origins[0]") && e.contains("not an origin"),
        "{e}"
    );
    let e = refused(
        "trusted_key_origins = [\"http://keys.example.com\"]",
        "https://idp.example.com",
        "discovery = true",
    );
    assert!(
        e.contains("issuers[0].trusted_key_origins[0]") && e.contains("plain http"),
        "{e}"
    );
}

/// A gateway discovering keys from `idp`, whose discovery document says `jwks_uri`.
async fn discovering(idp: &Idp, jwks_uri: &str, issuer_extra: &str) -> (Gateway, Upstream) {
    idp.set_discovery_raw(format!(
        r#"{{"issuer":"{}","jwks_uri":"{jwks_uri}"}}"#,
        idp.issuer()
    ));
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", issuer_extra);
    (Gateway::start(&cfg).await, up)
}

async fn readyz(gw: &Gateway) -> Answer {
    let url = format!("http://{}/readyz", gw.admin.unwrap());
    let mut last = get(&client(), &url, &[]).await;
    for _ in 0..40 {
        if last.status == StatusCode::OK || last.body.contains("refused") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        last = get(&client(), &url, &[]).await;
    }
    last
}

#[tokio::test]
async fn a_discovery_document_cannot_send_bearward_off_the_issuers_origin() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let elsewhere = Idp::start(&[&key]).await;
    let c = client();
    let token = idp.minter("https://api.test").token(&key, "read");

    // Another origin (another port) serves keys: refused, nothing fetched there, 503.
    let (gw, up) = discovering(&idp, &elsewhere.jwks_uri(), "").await;
    let r = readyz(&gw).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let origin = format!("http://{}", elsewhere.addr);
    assert!(
        r.body.contains("off the issuer's origin") && r.body.contains(&origin),
        "{}",
        r.body
    );
    let answer = get(
        &c,
        &gw.url("/api/read"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.count(), 0);
    assert_eq!(
        elsewhere.jwks_hits(),
        0,
        "nothing was fetched off the origin"
    );

    // The issuer lists that origin: keys come from there.
    let (gw, up) = discovering(
        &idp,
        &elsewhere.jwks_uri(),
        &format!("trusted_key_origins = [\"{origin}\"]"),
    )
    .await;
    wait_ready(&gw).await;
    let answer = get(
        &c,
        &gw.url("/api/read"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
    assert_eq!(elsewhere.jwks_hits(), 1);
}

#[tokio::test]
async fn a_discovery_document_cannot_send_bearward_to_a_metadata_address_or_over_plain_http() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    for (jwks_uri, why) in [
        (
            "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "metadata",
        ),
        ("https://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            "metadata",
        ),
        ("http://idp.example.com/jwks", "plain http"),
    ] {
        let (gw, up) = discovering(&idp, jwks_uri, "").await;
        let r = readyz(&gw).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{jwks_uri}: {}",
            r.body
        );
        assert!(r.body.contains(why), "{jwks_uri}: {}", r.body);
        assert_eq!(up.count(), 0);
    }
    // Listing a metadata origin is the explicit way there, and over plain http it needs the
    // other way out as well.
    let e = refused(
        "trusted_key_origins = [\"http://169.254.169.254\"]",
        "https://idp.example.com",
        "discovery = true",
    );
    assert!(
        e.contains("plain http"),
        "listing a plain-http origin still needs the way out: {e}"
    );
}
