//! The token check end to end, against a real IdP (discovery and JWKS over HTTP) and a
//! recording upstream: algorithms, signatures, claims, scopes, where a token may travel, the
//! headers that carry the caller upstream, and bound tokens. Every refusal also checks that the
//! upstream received nothing.

mod common;

use common::idp::*;
use common::world::World;
use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use base64::Engine as _;
const B64_ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test]
async fn every_algorithm_is_accepted_when_allowed_and_refused_when_not() {
    let rsa = Key::rsa1();
    let (p256, p384, ed) = (Key::p256(), Key::p384(), Key::ed25519());
    let all = "algorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\"]";
    // The helper config sets algorithms already; the issuer_extra replaces it via a second
    // issuer-level key, which TOML refuses, so build the config by hand here.
    let idp = Idp::start(&[&rsa, &p256, &p384, &ed]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        .replace("algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]", all);
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let w = World {
        mint: idp.minter("https://api.test"),
        idp,
        up,
        gw,
        c: client(),
    };
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        w.accepted(
            "/api/read/x",
            &w.mint.token(&Key::rsa1().with_alg(alg), "read"),
            &format!("{alg:?}"),
        )
        .await;
    }
    w.accepted("/api/read/x", &w.mint.token(&p256, "read"), "ES256")
        .await;
    w.accepted("/api/read/x", &w.mint.token(&p384, "read"), "ES384")
        .await;
    w.accepted("/api/read/x", &w.mint.token(&ed, "read"), "EdDSA")
        .await;

    // The default helper config allows RS256, ES256, EdDSA only.
    let w = World::start(&[&rsa, &p256, &p384, &ed], "").await;
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        w.refused(
            "/api/read/x",
            &w.mint.token(&Key::rsa1().with_alg(alg), "read"),
            &format!("{alg:?} not allowed"),
        )
        .await;
    }
    w.refused(
        "/api/read/x",
        &w.mint.token(&p384, "read"),
        "ES384 not allowed",
    )
    .await;
    w.accepted("/api/read/x", &w.mint.token(&p256, "read"), "ES256 allowed")
        .await;
}

#[tokio::test]
async fn hmac_only_with_a_configured_secret() {
    let secret = "0123456789abcdef0123456789abcdef-test-secret";
    std::env::set_var("BEARWARD_TEST_HS_SECRET", secret);
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "hmac_secret_env = \"BEARWARD_TEST_HS_SECRET\"").await;
    let hs = |alg: Algorithm| {
        sign_raw(
            &json!({"alg": format!("{alg:?}"), "typ": "at+jwt"}).to_string(),
            &w.mint.claims("read").to_string(),
            &EncodingKey::from_secret(secret.as_bytes()),
            alg,
        )
    };
    // HS256 is not in this issuer's allow-list (RS256, ES256, EdDSA).
    w.refused("/api/read/x", &hs(Algorithm::HS256), "HS256 not allowed")
        .await;

    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(
        &up.url(),
        &idp.issuer(),
        "discovery = true",
        "hmac_secret_env = \"BEARWARD_TEST_HS_SECRET\"",
    )
    .replace(
        "algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]",
        "algorithms = [\"RS256\", \"HS256\", \"HS512\"]",
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let w2 = World {
        mint: idp.minter("https://api.test"),
        idp,
        up,
        gw,
        c: client(),
    };
    let hs = |alg: Algorithm, key: &[u8]| {
        sign_raw(
            &json!({"alg": format!("{alg:?}"), "typ": "at+jwt"}).to_string(),
            &w2.mint.claims("read").to_string(),
            &EncodingKey::from_secret(key),
            alg,
        )
    };
    w2.accepted(
        "/api/read/x",
        &hs(Algorithm::HS256, secret.as_bytes()),
        "HS256 with the secret",
    )
    .await;
    w2.accepted(
        "/api/read/x",
        &hs(Algorithm::HS512, secret.as_bytes()),
        "HS512 with the secret",
    )
    .await;
    w2.refused(
        "/api/read/x",
        &hs(Algorithm::HS256, b"another-secret-another-secret-xx"),
        "HS256 with another secret",
    )
    .await;
    // Key confusion: HMAC keyed with the RSA public key (PEM, and the JWK's modulus).
    w2.refused(
        "/api/read/x",
        &hs(Algorithm::HS256, &rsa.public_pem),
        "HS256 keyed with the RSA public PEM",
    )
    .await;
    let n = rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec();
    w2.refused(
        "/api/read/x",
        &hs(Algorithm::HS256, &n),
        "HS256 keyed with the RSA modulus",
    )
    .await;
    w2.accepted(
        "/api/read/x",
        &w2.mint.token(&rsa, "read"),
        "RS256 still fine",
    )
    .await;
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_refused() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let claims = B64_ENGINE.encode(w.mint.claims("read").to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header =
            B64_ENGINE.encode(json!({"alg": alg, "typ": "at+jwt", "kid": "rsa1"}).to_string());
        w.refused(
            "/api/read/x",
            &format!("{header}.{claims}."),
            &format!("alg {alg}, empty signature"),
        )
        .await;
        w.refused(
            "/api/read/x",
            &format!("{header}.{claims}.c2ln"),
            &format!("alg {alg}, some signature"),
        )
        .await;
    }
    let header = B64_ENGINE.encode(json!({"typ": "at+jwt"}).to_string());
    w.refused("/api/read/x", &format!("{header}.{claims}.c2ln"), "no alg")
        .await;
}

#[tokio::test]
async fn tampering_and_foreign_keys_are_refused() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let good = w.mint.token(&rsa, "read");
    w.accepted("/api/read/x", &good, "the untouched token")
        .await;

    let parts: Vec<&str> = good.split('.').collect();
    let mut claims = w.mint.claims("read admin");
    claims["sub"] = json!("user-42");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64_ENGINE.encode(claims.to_string()),
        parts[2]
    );
    w.refused("/api/admin/x", &tampered, "payload changed after signing")
        .await;

    // Signed by another RSA key that claims the trusted kid.
    let mut other = Key::load("rsa-other.pem", "rsa1", Algorithm::RS256);
    other.kid = "rsa1".into();
    w.refused(
        "/api/read/x",
        &w.mint.token(&other, "read"),
        "another key, trusted kid",
    )
    .await;
    // Another key with a kid the IdP does not publish.
    let stranger = Key::load("rsa-other.pem", "stranger", Algorithm::RS256);
    w.refused(
        "/api/read/x",
        &w.mint.token(&stranger, "read"),
        "unknown kid",
    )
    .await;
    // An EC token naming the RSA key's kid.
    let mut p256 = Key::p256();
    p256.kid = "rsa1".into();
    w.refused(
        "/api/read/x",
        &w.mint.token(&p256, "read"),
        "ES256 with an RSA kid",
    )
    .await;
    // Keys embedded in the token are never used.
    let embedded = w.mint.token_with(
        &stranger,
        json!({"alg": "RS256", "typ": "at+jwt", "jwk": stranger.jwk, "jku": format!("http://{}/jwks", w.idp.addr)}),
        w.mint.claims("read"),
    );
    w.refused("/api/read/x", &embedded, "jwk/jku in the header")
        .await;
    // Structural damage.
    for bad in [
        format!("{good}.x"),
        good.replacen('.', "..", 1),
        format!("{good}="),
        good[..good.len() - 4].to_owned(),
        "a.b.c".to_owned(),
    ] {
        w.refused("/api/read/x", &bad, &format!("malformed {bad:.20}"))
            .await;
    }
}

/// Signatures that verify under broken ECDSA and EdDSA code (Java's "psychic signatures",
/// CVE-2022-21449: r = s = 0 passed any message) or that only a lenient decoder would read: a
/// DER-encoded ECDSA signature where JWS (RFC 7518 3.4) has the fixed 64-byte r || s, one with
/// r or s at the group order, and signatures of the wrong length.
#[tokio::test]
async fn degenerate_and_misencoded_signatures_are_refused() {
    let (p256, ed) = (Key::p256(), Key::ed25519());
    let w = World::start(&[&p256, &ed], "").await;
    let good = w.mint.token(&p256, "read");
    w.accepted("/api/read/x", &good, "the untouched ES256 token")
        .await;
    let signing_input = good.rsplit_once('.').unwrap().0;
    let sig = B64_ENGINE.decode(good.rsplit_once('.').unwrap().1).unwrap();
    // The P-256 group order n.
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let der = {
        let int = |b: &[u8]| {
            let mut v = vec![0x02, 33, 0];
            v.extend_from_slice(b);
            v
        };
        let (r, s) = (int(&sig[..32]), int(&sig[32..]));
        let mut v = vec![0x30, (r.len() + s.len()) as u8];
        v.extend(r);
        v.extend(s);
        v
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("r = s = 0", vec![0; 64]),
        ("r = s = n", [n, n].concat()),
        ("r = n, s kept", [&n[..], &sig[32..]].concat()),
        ("DER instead of r || s", der),
        ("r only", sig[..32].to_vec()),
        ("one byte short", sig[..63].to_vec()),
        ("one byte long", [&sig[..], &[0]].concat()),
        ("empty", Vec::new()),
    ];
    for (why, sig) in bad {
        let token = format!("{signing_input}.{}", B64_ENGINE.encode(sig));
        w.refused("/api/read/x", &token, why).await;
    }
    // EdDSA: an all-zero signature, and the identity point as R.
    let good = w.mint.token(&ed, "read");
    let signing_input = good.rsplit_once('.').unwrap().0;
    let mut identity = vec![0u8; 64];
    identity[0] = 1;
    for (why, sig) in [
        ("Ed25519 zeros", vec![0u8; 64]),
        ("Ed25519 R = identity", identity),
    ] {
        let token = format!("{signing_input}.{}", B64_ENGINE.encode(sig));
        w.refused("/api/read/x", &token, why).await;
    }
}

#[tokio::test]
async fn time_issuer_and_audience_claims() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "leeway = \"5s\"").await;
    let m = &w.mint;
    w.refused("/api/read/x", &m.token_expired(&rsa), "expired")
        .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("nbf".into(), json!(now() + 120));
        }),
        "not yet valid",
    )
    .await;
    w.accepted(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("nbf".into(), json!(now() + 3));
        }),
        "nbf inside leeway",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("iat".into(), json!(now() + 120));
        }),
        "issued in the future",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.remove("exp");
        }),
        "no exp",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("exp".into(), json!((now() + 300).to_string()));
        }),
        "exp as a string",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("iss".into(), json!("https://evil.test"));
        }),
        "wrong issuer",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("iss".into(), json!(format!("{}/", w.idp.issuer())));
        }),
        "issuer with a trailing slash",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("aud".into(), json!("https://elsewhere.test"));
        }),
        "wrong audience",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.remove("aud");
        }),
        "no audience",
    )
    .await;
    w.refused(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("aud".into(), json!(["a", "b"]));
        }),
        "array without ours",
    )
    .await;
    w.accepted(
        "/api/read/x",
        &m.token_claims(&rsa, |c| {
            c.insert("aud".into(), json!(["a", "https://other-api.test"]));
        }),
        "array with ours",
    )
    .await;
    w.refused(
        "/api/read/x",
        &w.mint.token_with(
            &rsa,
            json!({"alg": "RS256", "kid": "rsa1", "typ": "JWT"}),
            m.claims("read"),
        ),
        "typ JWT under the at+jwt default",
    )
    .await;
    w.refused(
        "/api/read/x",
        &w.mint.token_with(
            &rsa,
            json!({"alg": "RS256", "kid": "rsa1"}),
            m.claims("read"),
        ),
        "no typ under the at+jwt default",
    )
    .await;
}

#[tokio::test]
async fn typ_jwt_policy_accepts_plain_jwts() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "typ = \"jwt\"").await;
    w.accepted(
        "/api/read/x",
        &w.mint.token_with(
            &rsa,
            json!({"alg": "RS256", "kid": "rsa1", "typ": "JWT"}),
            w.mint.claims("read"),
        ),
        "typ JWT",
    )
    .await;
    w.accepted(
        "/api/read/x",
        &w.mint.token_with(
            &rsa,
            json!({"alg": "RS256", "kid": "rsa1"}),
            w.mint.claims("read"),
        ),
        "no typ",
    )
    .await;
    w.refused(
        "/api/read/x",
        &w.mint.token_with(
            &rsa,
            json!({"alg": "RS256", "kid": "rsa1", "typ": "dpop+jwt"}),
            w.mint.claims("read"),
        ),
        "typ dpop+jwt",
    )
    .await;
}

#[tokio::test]
async fn scopes_all_any_and_403_with_scope() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let m = &w.mint;
    w.accepted("/api/read/x", &m.token(&rsa, "read"), "scope string")
        .await;
    w.accepted("/api/both/x", &m.token(&rsa, "write read"), "all of two")
        .await;
    w.accepted("/api/any/x", &m.token(&rsa, "write"), "one of any")
        .await;
    let scp = m.token_claims(&rsa, |c| {
        c.remove("scope");
        c.insert("scp".into(), json!(["read", "write"]));
    });
    w.accepted("/api/both/x", &scp, "scp array").await;

    let before = w.up.count();
    for (path, scope, needed) in [
        ("/api/admin/x", "read write", "admin"),
        ("/api/both/x", "read", "read write"),
        ("/api/any/x", "admin", "read write"),
        ("/api/read/x", "readwrite read:all", "read"),
        ("/api/read/x", "", "read"),
    ] {
        let a = w.call(path, &m.token(&rsa, scope)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} with {scope:?}");
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        assert!(www.contains(&format!("scope=\"{needed}\"")), "{www}");
    }
    assert_eq!(w.up.count(), before);
}

#[tokio::test]
async fn request_forms_and_identity_headers() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let t = w.mint.token(&rsa, "read");
    let url = w.gw.url("/api/read/x");
    let before = w.up.count();

    let a = get(&w.c, &url, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"bearward\"");
    let a = get(&w.c, &url, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "another scheme counts as no token"
    );
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"bearward\"");

    for (headers, why) in [
        (
            vec![("authorization", "Bearer"), ("x", "y")],
            "empty bearer",
        ),
        (
            vec![("authorization", "Bearer a b"), ("x", "y")],
            "space in the token",
        ),
        (
            vec![("authorization", "Bearer é"), ("x", "y")],
            "non-token characters",
        ),
    ] {
        let a = get(&w.c, &url, &headers).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{why}");
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_request\""),
            "{why}"
        );
    }
    // Two Authorization headers.
    let raw = raw(w.gw.addr, format!("GET /api/read/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    // Header plus query token.
    let a = get(
        &w.c,
        &format!("{}?access_token={t}", w.gw.url("/api/query/x")),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // Query token where the route does not opt in.
    let a = get(&w.c, &format!("{url}?access_token={t}"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        w.up.count(),
        before,
        "no refused request reached the upstream"
    );

    // Accepted forms: lower-case scheme; the query where allowed.
    let a = get(&w.c, &url, &[("authorization", &format!("bearer {t}"))]).await;
    assert_eq!(a.status, StatusCode::OK);
    // The token is now in the verified-token cache, which is looked up before the character
    // check: the same token with anything added is other bytes, checked and refused.
    for bad in [format!("{t},"), format!("{t} x"), format!("{t}=é")] {
        let a = get(&w.c, &url, &[("authorization", &format!("Bearer {bad}"))]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:.10}");
    }
    // The cache key is the whole token: a cached token cut short is another token, and refused.
    let a = get(
        &w.c,
        &url,
        &[("authorization", &format!("Bearer {}", &t[..t.len() - 1]))],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(
        &w.c,
        &format!("{}?access_token={t}", w.gw.url("/api/query/x")),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);

    // Spoofed identity headers never reach the upstream; the real ones come from the claims.
    let spoof = [
        ("authorization", format!("Bearer {t}")),
        ("x-auth-subject", "admin".to_owned()),
        ("X-Auth-Scopes", "admin".to_owned()),
        ("x-auth-client", "root".to_owned()),
    ];
    let spoof: Vec<(&str, &str)> = spoof.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(&w.c, &url, &spoof).await;
    let seen = w.up.last();
    assert_eq!(
        seen.headers
            .get_all("x-auth-subject")
            .iter()
            .collect::<Vec<_>>(),
        ["user-42"]
    );
    assert_eq!(
        seen.headers
            .get_all("x-auth-scopes")
            .iter()
            .collect::<Vec<_>>(),
        ["read"]
    );
    assert_eq!(
        seen.headers
            .get_all("x-auth-client")
            .iter()
            .collect::<Vec<_>>(),
        ["test-client"]
    );
    assert!(
        seen.headers.contains_key("authorization"),
        "kept unless strip_authorization"
    );
    // Naming them in `Connection` strips the client's own (RFC 9110 7.6.1), never the ones
    // bearward adds from the claims.
    let bearer = format!("Bearer {t}");
    let named = [
        ("authorization", bearer.as_str()),
        ("connection", "x-auth-subject, X-Auth-Scopes"),
        ("x-auth-subject", "admin"),
    ];
    assert_eq!(get(&w.c, &url, &named).await.status, StatusCode::OK);
    let seen = w.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
    assert_eq!(seen.headers["x-auth-scopes"], "read");
    assert_eq!(seen.headers["x-auth-client"], "test-client");
    // And on open routes too.
    get(&w.c, &w.gw.url("/public/x"), &spoof).await;
    let seen = w.up.last();
    assert!(
        !seen.headers.contains_key("x-auth-subject") && !seen.headers.contains_key("x-auth-scopes")
    );
}

/// Claim values pass as their UTF-8 bytes, as Envoy and vouch-proxy send them: a non-ASCII name
/// is not dropped. A value with control characters cannot be a header value and is not sent, so
/// no claim can add a header line of its own.
#[tokio::test]
async fn claim_headers_carry_utf8_and_never_control_characters() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let url = w.gw.url("/api/read/x");
    let send = |sub: &'static str| {
        let t = w.mint.token_claims(&rsa, |c| {
            c.insert("sub".into(), json!(sub));
        });
        let (c, url) = (w.c.clone(), url.clone());
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };

    assert_eq!(send("Marek Mikołaj 李").await.status, StatusCode::OK);
    let seen = w.up.last();
    assert_eq!(
        seen.headers["x-auth-subject"].as_bytes(),
        "Marek Mikołaj 李".as_bytes()
    );

    for hostile in ["a\r\nX-Injected: 1", "a\nb", "a\u{0}b", "a\u{7f}b"] {
        assert_eq!(send(hostile).await.status, StatusCode::OK, "{hostile:?}");
        let seen = w.up.last();
        assert!(!seen.headers.contains_key("x-auth-subject"), "{hostile:?}");
        assert!(!seen.headers.contains_key("x-injected"), "{hostile:?}");
        assert_eq!(seen.headers["x-auth-scopes"], "read");
    }
}

#[tokio::test]
async fn strip_authorization_drops_the_token_upstream() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        .replace("[forward]\n", "[forward]\nstrip_authorization = true\n");
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let t = idp.minter("https://api.test").token(&rsa, "read");
    let a = get(
        &client(),
        &gw.url("/api/read/x"),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!up.last().headers.contains_key("authorization"));

    // A query token goes too, on a route that takes one; the rest of the query stays.
    for (query, forwarded) in [
        (format!("a=1&access_token={t}&b=2"), "/api/query/x?a=1&b=2"),
        (format!("access_token={t}"), "/api/query/x"),
    ] {
        let a = get(&client(), &gw.url(&format!("/api/query/x?{query}")), &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(up.last().uri, forwarded);
    }
}

/// Without `strip_authorization` the token is forwarded as it came, in the query as in the
/// header.
#[tokio::test]
async fn without_strip_authorization_a_query_token_is_forwarded() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let t = w.mint.token(&rsa, "read");
    let target = format!("/api/query/x?access_token={t}&b=2");
    let a = get(&w.c, &w.gw.url(&target), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(w.up.last().uri, target);
}

/// RFC 9449 7.2: a DPoP-bound token sent as a bearer token is the downgrade a thief would try.
#[tokio::test]
async fn a_token_bound_to_a_key_is_not_taken_as_a_bearer_token() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let bound = w.mint.token_claims(&rsa, |c| {
        c.insert(
            "cnf".into(),
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        );
    });
    // RFC 9449 7.2: a DPoP-bound token sent as a bearer token is a downgrade; the challenge
    // says which scheme it needs.
    let a = w.call("/api/read/x", &bound).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(www.starts_with("DPoP realm=\"bearward\", algs=\"ES256 ES384 EdDSA RS256 PS256\", error=\"invalid_token\""), "{www}");
    assert_eq!(w.up.count(), 0);
    let m = metrics_after_close(&w.gw).await;
    assert!(m.contains(r#"reason="bound_token"} 1"#), "{m}");

    // An issuer whose bindings are checked before bearward may say so.
    let w = World::start(&[&rsa], "accept_bound_tokens = true").await;
    let bound = w.mint.token_claims(&rsa, |c| {
        c.insert(
            "cnf".into(),
            json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
        );
    });
    w.accepted("/api/read/x", &bound, "accept_bound_tokens")
        .await;
}

/// `token_header`: the JWT an identity-aware proxy in front puts in a header of its own (here
/// Google IAP's), checked as any token, on the route that names it and on no other.
#[tokio::test]
async fn a_route_reads_its_token_from_the_header_it_names() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let t = w.mint.token(&rsa, "read");
    let url = w.gw.url("/api/iap/x");
    let iap = "x-goog-iap-jwt-assertion";

    let a = get(&w.c, &url, &[(iap, &t)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = w.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
    assert_eq!(seen.headers[iap], t.as_str(), "strip_authorization is off");
    // A `Bearer ` prefix is taken too; the client's own Authorization is only a header here.
    let bearer = format!("Bearer {t}");
    let a = get(
        &w.c,
        &url,
        &[(iap, &bearer), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(w.up.last().headers["authorization"], "Basic dTpw");

    let before = w.up.count();
    // Not read from Authorization on this route...
    let a = get(&w.c, &url, &[("authorization", &bearer)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // ...nor from this header on the others.
    let a = get(&w.c, &w.gw.url("/api/read/x"), &[(iap, &t)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Checked as any token: scopes, signature, characters, one of it.
    checked_as_any_token(&w, &rsa, &url, |t| (iap, t.to_owned())).await;
    let two = format!(
        "GET /api/iap/x HTTP/1.1\r\nHost: x\r\nX-Goog-Iap-Jwt-Assertion: {t}\r\nx-goog-iap-jwt-assertion: {t}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&raw(w.gw.addr, two.as_bytes()).await), 400);
    assert_eq!(
        w.up.count(),
        before,
        "no refused request reached the upstream"
    );

    // With strip_authorization, the header the token came in is what is dropped.
    let (up, gw) = stripping(&w).await;
    let a = get(
        &w.c,
        &gw.url("/api/iap/x"),
        &[(iap, &t), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    assert!(seen.headers.get(iap).is_none());
    assert_eq!(seen.headers["authorization"], "Basic dTpw");
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
}

#[tokio::test]
async fn a_route_reads_its_token_from_the_cookie_it_names() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let t = w.mint.token(&rsa, "read");
    let url = w.gw.url("/api/cookie/x");
    let cookie = |v: &str| format!("theme=dark; CF_Authorization={v}; lang=en");
    let jar = cookie(&t);

    let a = get(&w.c, &url, &[("cookie", &jar)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = w.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
    assert_eq!(
        seen.headers["cookie"],
        jar.as_str(),
        "strip_authorization is off"
    );
    // Quoted (RFC 6265 allows it); the client's own Authorization is only a header here.
    let quoted = cookie(&format!("\"{t}\""));
    let a = get(
        &w.c,
        &url,
        &[("cookie", &quoted), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(w.up.last().headers["authorization"], "Basic dTpw");
    // HTTP/2 clients may send each cookie on a line of its own.
    let (mut h2, _conn) = h2_connect(w.gw.addr, None).await;
    let req = http::Request::get(&url)
        .header("cookie", "theme=dark")
        .header("cookie", format!("CF_Authorization={t}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), StatusCode::OK);

    // API clients on the same route send Authorization.
    let bearer = format!("Bearer {t}");
    let a = get(&w.c, &url, &[("authorization", &bearer)]).await;
    assert_eq!(a.status, StatusCode::OK);

    let before = w.up.count();
    // Not both at once (two tokens), nor this cookie on the other routes, nor a cookie of
    // another name.
    let a = get(&w.c, &url, &[("authorization", &bearer), ("cookie", &jar)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = get(&w.c, &w.gw.url("/api/read/x"), &[("cookie", &jar)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(&w.c, &url, &[("cookie", &format!("cf_authorization={t}"))]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(&w.c, &url, &[("cookie", &cookie(""))]).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "an emptied cookie is none"
    );
    // Checked as any token: scopes, signature, characters; and one of it (a sibling subdomain
    // can set a second beside the site's own).
    checked_as_any_token(&w, &rsa, &url, |t| ("cookie", cookie(t))).await;
    let twice = format!("{jar}; CF_Authorization={t}");
    let a = get(&w.c, &url, &[("cookie", &twice)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = get(
        &w.c,
        &format!("{url}?access_token={t}"),
        &[("cookie", &jar)],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        w.up.count(),
        before,
        "no refused request reached the upstream"
    );

    // With strip_authorization, the cookie goes with Authorization.
    let (up, gw) = stripping(&w).await;
    let a = get(
        &w.c,
        &gw.url("/api/cookie/x"),
        &[("cookie", &jar), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
    let only = format!("CF_Authorization={t}");
    let a = get(&w.c, &gw.url("/api/cookie/x"), &[("cookie", &only)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(up.last().headers.get("cookie").is_none());
}

/// A browser attaches cookies to requests any site's page makes: on a cookie route an unsafe
/// request a browser says came from elsewhere is refused before its token counts.
#[tokio::test]
async fn a_cookie_token_does_not_authorize_another_sites_request() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let t = w.mint.token(&rsa, "read");
    let url = w.gw.url("/api/cookie/x");
    let jar = format!("CF_Authorization={t}");
    let post = |site: Option<&str>, origin: Option<&str>| {
        let mut h = vec![("cookie".to_owned(), jar.clone())];
        h.extend(site.map(|s| ("sec-fetch-site".to_owned(), s.to_owned())));
        h.extend(origin.map(|o| ("origin".to_owned(), o.to_owned())));
        let (c, url) = (w.c.clone(), url.clone());
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            send(&c, "POST", &url, &h, "{}").await.status
        }
    };
    let own = format!("http://{}", w.gw.addr);

    let before = w.up.count();
    for (site, origin) in [
        (Some("cross-site"), None),
        (Some("same-site"), None),
        (Some("cross-site"), Some(own.as_str())),
        (None, Some("http://evil.test")),
        (None, Some("null")),
        (None, Some("https://127.0.0.1")),
    ] {
        let status = post(site, origin).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{site:?} {origin:?}");
    }
    // A cross-site request with its token in Authorization and no cookie is not this check's:
    // a page elsewhere cannot make the browser send that.
    let a = send(
        &w.c,
        "POST",
        &url,
        &[
            ("authorization", &format!("Bearer {t}")),
            ("sec-fetch-site", "cross-site"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        w.up.count(),
        before + 1,
        "no refused request reached the upstream"
    );
    let m = w.gw.metrics().await;
    assert!(
        m.contains("bearward_requests_total{route=\"/api/cookie*\",status=\"403\",decision=\"deny\",reason=\"cross_origin_request\"} 6"),
        "{m}"
    );

    // The site's own pages, a typed-in address, and clients that are no browser.
    for (site, origin) in [
        (Some("same-origin"), None),
        (Some("none"), None),
        (None, Some(own.as_str())),
        (None, None),
    ] {
        assert_eq!(
            post(site, origin).await,
            StatusCode::OK,
            "{site:?} {origin:?}"
        );
    }
    // A WebSocket handshake is a GET that no CORS guards: another site's page is refused it.
    let n = w.up.count();
    let mut ws = connect_and_send(
        w.gw.addr,
        format!(
            "GET /api/cookie/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: https://evil.test\r\nCookie: {jar}\r\n\r\n",
            w.gw.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(read_response(&mut ws).await, 403);
    assert_eq!(w.up.count(), n, "the handshake did not reach the upstream");
    // Safe methods carry no change: a link from elsewhere still works.
    let a = get(
        &w.c,
        &url,
        &[("cookie", &jar), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);

    // An origin the route's CORS policy lets send cookies is the site's own.
    let spa = w.gw.url("/spa/x");
    let jar = format!("at={t}");
    for (origin, status) in [
        ("https://app.test", StatusCode::OK),
        ("https://other.test", StatusCode::FORBIDDEN),
    ] {
        let h = [
            ("cookie", jar.as_str()),
            ("sec-fetch-site", "cross-site"),
            ("origin", origin),
        ];
        assert_eq!(
            send(&w.c, "PUT", &spa, &h, "{}").await.status,
            status,
            "{origin}"
        );
    }
}

/// A second gateway on the same IdP, with `strip_authorization`, and its own upstream.
async fn stripping(w: &World) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let config = auth_config(&up.url(), &w.idp.issuer(), "discovery = true", "")
        .replace("[forward]\n", "[forward]\nstrip_authorization = true\n");
    let gw = Gateway::start(&config).await;
    wait_ready(&gw).await;
    (up, gw)
}

/// A browser opening a page of a `login_url` route without a valid token is sent to sign in;
/// API calls, the page's own `fetch`es and every other refusal get their answers as before.
#[tokio::test]
async fn a_browser_opening_a_page_without_a_token_is_sent_to_sign_in() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let url = w.gw.url("/spa/x?a=1&b=%2F");
    let here = format!("http://{}/spa/x?a=1&b=%2F", w.gw.addr);
    let sign_in = |page: &str| {
        let enc: String = page
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("https://login.test/start?rd={enc}&x=1")
    };
    let nav = ("sec-fetch-mode", "navigate");
    let foreign = format!("at={}", w.mint.token(&Key::rsa2(), "read"));
    let before = w.up.count();
    for (method, headers) in [
        ("GET", vec![nav]),
        ("HEAD", vec![nav]),
        ("GET", vec![nav, ("cookie", foreign.as_str())]),
        (
            "GET",
            vec![("accept", "text/html,application/xhtml+xml;q=0.9")],
        ),
    ] {
        let a = send(&w.c, method, &url, &headers, "").await;
        assert_eq!(a.status, StatusCode::FOUND, "{method} {headers:?}");
        assert_eq!(a.headers["location"], sign_in(&here).as_str());
        assert_eq!(a.headers["cache-control"], "no-store");
        assert!(a.headers.get("www-authenticate").is_none());
    }
    // A page's fetch, an API client, a form post, another route: the 401. A token without the
    // scope: the 403 (signing in again would not help).
    let write = format!("at={}", w.mint.token(&rsa, "write"));
    for (method, path, headers, want) in [
        ("GET", "/spa/x", vec![("sec-fetch-mode", "cors")], 401),
        ("GET", "/spa/x", vec![("accept", "application/json")], 401),
        ("GET", "/spa/x", vec![], 401),
        ("POST", "/spa/x", vec![nav], 401),
        ("GET", "/api/cookie/x", vec![nav], 401),
        ("GET", "/spa/x", vec![nav, ("cookie", write.as_str())], 403),
    ] {
        let a = send(&w.c, method, &w.gw.url(path), &headers, "").await;
        assert_eq!(a.status.as_u16(), want, "{method} {path} {headers:?}");
    }
    assert_eq!(
        w.up.count(),
        before,
        "no refused request reached the upstream"
    );
    let m = w.gw.metrics().await;
    assert!(
        m.contains("bearward_requests_total{route=\"/spa*\",status=\"302\",decision=\"deny\",reason=\"missing_token\"} 3"),
        "{m}"
    );
    // With its token, the page is served.
    let read = format!("at={}", w.mint.token(&rsa, "read"));
    let a = get(&w.c, &url, &[nav, ("cookie", &read)]).await;
    assert_eq!(a.status, StatusCode::OK);

    // Behind a balancer that terminates TLS, the address is the public origin's; a token in
    // the query does not travel to the sign-in server.
    let up = Upstream::start().await;
    let config = auth_config(&up.url(), &w.idp.issuer(), "discovery = true", "")
        .replacen(
            "[server]\n",
            "[server]\npublic_origin = \"https://app.example.com\"\n",
            1,
        )
        .replace(
            "token_cookie = \"at\"",
            "token_cookie = \"at\"\ntoken_in_query = true",
        );
    let gw = Gateway::start(&config).await;
    wait_ready(&gw).await;
    let bad = w.mint.token(&Key::rsa2(), "read");
    let a = get(
        &w.c,
        &gw.url(&format!("/spa/x?access_token={bad}&a=1")),
        &[nav],
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(
        a.headers["location"],
        sign_in("https://app.example.com/spa/x?a=1").as_str()
    );
}

/// Over bearward's own TLS listener, the page a browser is sent back to is an https one.
#[tokio::test]
async fn a_page_opened_over_tls_is_an_https_one_to_sign_in() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let config = auth_config(&up.url(), &idp.issuer(), "discovery = true", "").replacen(
        "[server]\n",
        "[server]\ntls_cert_file = \"tests/fixtures/tls/server.pem\"\n\
         tls_key_file = \"tests/fixtures/tls/server-key.pem\"\n",
        1,
    );
    let gw = Gateway::start(&config).await;
    wait_ready(&gw).await;
    let nav = [("sec-fetch-mode", "navigate")];
    let (status, headers) = tls_send(gw.addr, "/spa/x", &nav, None).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        headers["location"],
        "https://login.test/start?rd=https%3A%2F%2Flocalhost%2Fspa%2Fx&x=1"
    );
}

/// `auth = "optional"`: a request without a token goes upstream as it is, with no identity (the
/// client's own identity headers never pass); one with a token goes only if the token is
/// valid, with its claims. No one passes as someone else by sending a bad token.
#[tokio::test]
async fn an_optional_route_forwards_a_caller_without_a_token_and_checks_one_with_it() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let url = w.gw.url("/api/maybe/x");
    for headers in [
        vec![("x-auth-subject", "admin"), ("x-auth-scopes", "admin")],
        vec![("authorization", "Basic dTpw")],
    ] {
        let a = get(&w.c, &url, &headers).await;
        assert_eq!(a.status, StatusCode::OK, "{headers:?}");
        let seen = w.up.last();
        assert!(seen.headers.get("x-auth-subject").is_none(), "{headers:?}");
        assert!(seen.headers.get("x-auth-scopes").is_none(), "{headers:?}");
    }
    assert_eq!(w.up.last().headers["authorization"], "Basic dTpw");

    // A token of any scope: its claims go with the request; the client's copies do not.
    let t = w.mint.token(&rsa, "write");
    let bearer = format!("Bearer {t}");
    let a = get(
        &w.c,
        &url,
        &[("authorization", &bearer), ("x-auth-subject", "admin")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = w.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "user-42");
    assert_eq!(seen.headers["x-auth-scopes"], "write");

    let before = w.up.count();
    for (token, want) in [
        (
            format!("Bearer {}", w.mint.token(&Key::rsa2(), "read")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            format!("Bearer {}", w.mint.token_expired(&rsa)),
            StatusCode::UNAUTHORIZED,
        ),
        (format!("Bearer {t},x"), StatusCode::BAD_REQUEST),
        ("Bearer ".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let a = get(&w.c, &url, &[("authorization", &token)]).await;
        assert_eq!(a.status, want, "{token}");
        if want == StatusCode::UNAUTHORIZED {
            let challenge = a.headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
    }
    let a = get(&w.c, &format!("{url}?access_token={t}"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "not read from the query");
    let a = get(
        &w.c,
        &url,
        &[("authorization", &bearer), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "two tokens");
    assert_eq!(
        w.up.count(),
        before,
        "no request with a bad token reached the upstream"
    );
    let m = w.gw.metrics().await;
    assert!(
        m.contains(
            "route=\"/api/maybe*\",status=\"200\",decision=\"allow\",reason=\"anonymous\"} 2\n"
        ),
        "{m}"
    );
}

/// `payload_header`: a verified JWT's payload, as the token carries it, in one header; a
/// client's own copy, under its name or with `_` for `-`, never reaches the upstream, on any
/// route.
#[tokio::test]
async fn the_payload_header_carries_the_verified_payload_and_never_the_clients() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "").await;
    let up = Upstream::start().await;
    let config = auth_config(&up.url(), &w.idp.issuer(), "discovery = true", "").replace(
        "[forward]\n",
        "[forward]\npayload_header = \"X-Jwt-Payload\"\n",
    );
    let gw = Gateway::start(&config).await;
    wait_ready(&gw).await;
    let t = w.mint.token(&rsa, "read");
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#);
    let bearer = format!("Bearer {t}");
    let a = get(
        &w.c,
        &gw.url("/api/read/x"),
        &[("authorization", &bearer), ("x-jwt-payload", &forged)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    let sent = seen.headers["x-jwt-payload"].to_str().unwrap();
    assert_eq!(sent, t.split('.').nth(1).unwrap());
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sent)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "user-42");
    assert_eq!(seen.headers.get_all("x-jwt-payload").iter().count(), 1);
    for (path, name) in [
        ("/public/x", "x-jwt-payload"),
        ("/api/maybe/x", "x-jwt-payload"),
        ("/public/x", "x_jwt_payload"),
    ] {
        let a = get(&w.c, &gw.url(path), &[(name, &forged)]).await;
        assert_eq!(a.status, StatusCode::OK, "{path} {name}");
        let seen = up.last();
        assert!(
            seen.headers.get("x-jwt-payload").is_none()
                && seen.headers.get("x_jwt_payload").is_none(),
            "{path} {name}: {:?}",
            seen.headers
        );
    }
    // Refused where it would stand in for a claim header or one bearward writes.
    for (line, says) in [
        ("payload_header = \"X-Auth-Subject\"", "claim header too"),
        ("payload_header = \"X-Request-Id\"", "manages itself"),
    ] {
        let text = auth_config(&up.url(), &w.idp.issuer(), "discovery = true", "")
            .replace("[forward]\n", &format!("[forward]\n{line}\n"));
        let e = bearward::config::Config::from_toml_str(&text, "t.toml")
            .expect_err(line)
            .to_string();
        assert!(
            e.contains("forward.payload_header") && e.contains(says),
            "{e}"
        );
    }
}

/// What a token must hold is refused on an optional route (a client would send none to get
/// past it); which tokens are believed, and where one is read, are taken.
#[test]
fn an_optional_route_takes_no_requirement_a_caller_could_dodge() {
    let base = |route: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"https://i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\nauth = \"optional\"\n{route}\n")
    };
    let load = |route: &str| bearward::config::Config::from_toml_str(&base(route), "t.toml");
    for (line, key) in [
        ("scopes = [\"read\"]", "scopes"),
        ("scopes_any = [\"read\"]", "scopes_any"),
        ("claims = { tid = \"x\" }", "claims"),
        ("client_ids = [\"c\"]", "client_ids"),
        ("acr_values = [\"gold\"]", "acr_values"),
        ("max_age = \"5m\"", "max_age"),
        ("mcp = {}", "mcp"),
        (
            "rate_limit = { rate = \"5/s\", key = \"subject\" }",
            "rate_limit.key",
        ),
    ] {
        let e = load(line).expect_err(line).to_string();
        assert!(
            e.contains(&format!("routes[0].{key}")) && e.contains("optional"),
            "{line}: {e}"
        );
    }
    for line in [
        "",
        "token_in_query = true",
        "token_cookie = \"at\"",
        "token_header = \"X-Token\"",
        "issuers = [\"https://i\"]",
        "require_bound_tokens = true",
        "audiences = [\"b\"]",
        "allow_if = 'subject != \"\" || request.method == \"GET\"'",
        "rate_limit = { rate = \"5/s\", key = \"ip\" }",
        "login_url = \"https://login.test/?rd={url}\"",
    ] {
        load(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    let none = base("").replace("[[issuers]]\nissuer = \"https://i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n", "");
    let e = bearward::config::Config::from_toml_str(&none, "t.toml")
        .expect_err("no issuers")
        .to_string();
    assert!(e.contains("no [[issuers]]"), "{e}");
}

/// A token wherever a route reads it is checked as any: without the route's scope 403, signed
/// by a key the issuer does not publish 401, with characters outside a b64token 400.
async fn checked_as_any_token(
    w: &World,
    rsa: &Key,
    url: &str,
    carry: impl Fn(&str) -> (&'static str, String),
) {
    let t = w.mint.token(rsa, "read");
    for (token, want) in [
        (w.mint.token(rsa, "write"), StatusCode::FORBIDDEN),
        (w.mint.token(&Key::rsa2(), "read"), StatusCode::UNAUTHORIZED),
        (format!("{t},x"), StatusCode::BAD_REQUEST),
    ] {
        let (name, value) = carry(&token);
        let a = get(&w.c, url, &[(name, &value)]).await;
        assert_eq!(a.status, want, "{name}: {value}");
    }
}

/// `max_lifetime` (Envoy's JwtProvider `max_lifetime`, Kong's `maximum_expiration`): a token
/// the IdP made to live longer than the API accepts is refused however valid it is otherwise,
/// by `exp - iat`, or, without `iat`, by how far `exp` is from now; a short one passes.
#[tokio::test]
async fn a_token_made_to_live_longer_than_max_lifetime_is_refused() {
    let rsa = Key::rsa1();
    let w = World::start(&[&rsa], "max_lifetime = \"1h\"\nleeway = \"5s\"").await;
    let m = &w.mint;
    let life = |iat: Option<i64>, exp: i64| {
        m.token_claims(&rsa, |c| {
            c.remove("iat");
            if let Some(iat) = iat {
                c.insert("iat".into(), json!(iat));
            }
            c.insert("exp".into(), json!(exp));
        })
    };
    let t = now();
    w.accepted("/api/read/x", &life(Some(t - 5), t + 300), "five minutes")
        .await;
    w.accepted(
        "/api/read/x",
        &life(Some(t - 600), t + 3000),
        "exactly an hour",
    )
    .await;
    w.accepted(
        "/api/read/x",
        &life(None, t + 3600),
        "no iat, an hour from now",
    )
    .await;
    w.refused("/api/read/x", &life(Some(t - 5), t + 86_400), "a day")
        .await;
    w.refused(
        "/api/read/x",
        &life(Some(t - 3000), t + 601),
        "an hour and a second, half gone",
    )
    .await;
    w.refused(
        "/api/read/x",
        &life(None, t + 7200),
        "no iat, two hours from now",
    )
    .await;
    let m = w.gw.metrics().await;
    assert_eq!(
        requests(&m, "/api/read*", 401, "deny", "lifetime_too_long"),
        3.0,
        "{m}"
    );
}
