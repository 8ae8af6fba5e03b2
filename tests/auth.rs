//! Bearer-token enforcement end to end: a real IdP (discovery + JWKS over HTTP), fixture keys,
//! a recording upstream. Every rejection also checks that the upstream received nothing.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::time::Duration;

struct World {
    idp: Idp,
    up: Upstream,
    gw: Gateway,
    c: HttpClient,
    mint: Minter,
}

impl World {
    async fn start(keys: &[&Key], issuer_extra: &str) -> World {
        World::start_with(keys, "discovery = true", issuer_extra).await
    }

    async fn start_with(keys: &[&Key], source: &str, issuer_extra: &str) -> World {
        let idp = Idp::start(keys).await;
        let up = Upstream::start().await;
        let source = source.replace("JWKS_URI", &idp.jwks_uri());
        let gw = Gateway::start(&auth_config(
            &up.url(),
            &idp.issuer(),
            &source,
            issuer_extra,
        ))
        .await;
        wait_ready(&gw).await;
        let mint = idp.minter("https://api.test");
        World {
            idp,
            up,
            gw,
            c: client(),
            mint,
        }
    }

    async fn call(&self, path: &str, token: &str) -> Answer {
        get(
            &self.c,
            &self.gw.url(path),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// Asserts a 401 invalid_token and that the upstream saw nothing new.
    async fn refused(&self, path: &str, token: &str, why: &str) {
        let before = self.up.count();
        let a = self.call(path, token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(
            www.starts_with("Bearer realm=\"bearward\", error=\"invalid_token\""),
            "{why}: {www}"
        );
        assert!(!www.contains(token), "{why}: the token is echoed");
        assert_eq!(
            self.up.count(),
            before,
            "{why}: the upstream received a refused request"
        );
    }

    async fn accepted(&self, path: &str, token: &str, why: &str) {
        let before = self.up.count();
        let a = self.call(path, token).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{why}: {} {:?}",
            a.body,
            a.headers.get("www-authenticate")
        );
        assert_eq!(self.up.count(), before + 1, "{why}");
    }
}

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

use base64::Engine as _;
const B64_ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

/// RFC 9728: `[server] resource` for every route, one route with its own, and a catch-all
/// route that would forward the well-known paths if bearward did not answer them itself.
async fn resource_world() -> (Idp, Upstream, Gateway) {
    let idp = Idp::start(&[&Key::rsa1()]).await;
    let up = Upstream::start().await;
    let mut cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        .replace(
            "admin_listen = \"127.0.0.1:0\"\n",
            "admin_listen = \"127.0.0.1:0\"\nresource = \"https://api.test/api\"\n",
        )
        .replace(
            "prefix = \"/api/admin\"\n",
            "prefix = \"/api/admin\"\nresource = \"https://api.test/api/admin\"\n",
        );
    cfg.push_str("\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n");
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    (idp, up, gw)
}

#[tokio::test]
async fn protected_resource_metadata_is_served_by_bearward_for_each_resource() {
    let (idp, up, gw) = resource_world().await;
    let c = client();
    let api = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
    )
    .await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);
    assert_eq!(api.headers["content-type"], "application/json");
    assert_eq!(api.headers["access-control-allow-origin"], "*");
    let doc: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://api.test/api",
            "authorization_servers": [idp.issuer()],
            // The routes that inherit the server's resource: read, any, both, query.
            "scopes_supported": ["read", "write"],
            "bearer_methods_supported": ["header", "query"],
        })
    );
    let admin = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/api/admin"),
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&admin.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://api.test/api/admin",
            "authorization_servers": [idp.issuer()],
            "scopes_supported": ["admin"],
            "bearer_methods_supported": ["header"],
        })
    );
    // Spelled another way, the path still canonicalizes to the document's.
    let dotted = get(
        &c,
        &gw.url("/.well-known/./oauth-protected-resource/api/admin"),
        &[],
    )
    .await;
    assert_eq!(dotted.body, admin.body);

    let head = send(
        &c,
        "HEAD",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
        "",
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let preflight = send(
        &c,
        "OPTIONS",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "mcp-protocol-version"),
        ],
        "",
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers["access-control-allow-headers"],
        "mcp-protocol-version"
    );
    let post = send(
        &c,
        "POST",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
        "x",
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD, OPTIONS");
    assert_eq!(
        up.count(),
        0,
        "the upstream was asked for bearward's metadata"
    );

    // A well-known path no resource has is the routes' business: the catch-all forwards it.
    let other = get(&c, &gw.url("/.well-known/oauth-protected-resource"), &[]).await;
    assert_eq!(other.body, "upstream ok");
    assert_eq!(up.count(), 1);

    let m = metrics_after_close(&gw).await;
    assert!(
        m.contains(r#"route="-",status="200",decision="allow",reason="resource_metadata"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(r#"status="405",decision="deny",reason="method_not_allowed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn bearer_challenges_name_the_route_resource_metadata_and_its_scopes() {
    let (idp, up, gw) = resource_world().await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let api = "https://api.test/.well-known/oauth-protected-resource/api";
    let admin = "https://api.test/.well-known/oauth-protected-resource/api/admin";

    let none = get(&c, &gw.url("/api/read/x"), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.headers["www-authenticate"],
        format!("Bearer realm=\"bearward\", resource_metadata=\"{api}\", scope=\"read\"").as_str()
    );
    let any = get(&c, &gw.url("/api/any/x"), &[]).await;
    assert_eq!(
        any.headers["www-authenticate"],
        format!("Bearer realm=\"bearward\", resource_metadata=\"{api}\", scope=\"read write\"")
            .as_str()
    );
    let bad = get(
        &c,
        &gw.url("/api/admin/x"),
        &[("authorization", "Bearer a.b.c")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.headers["www-authenticate"],
        format!(
            "Bearer realm=\"bearward\", resource_metadata=\"{admin}\", scope=\"admin\", \
             error=\"invalid_token\", \
             error_description=\"malformed token\""
        )
        .as_str()
    );
    let read = mint.token(&Key::rsa1(), "read");
    let scope = get(
        &c,
        &gw.url("/api/admin/x"),
        &[("authorization", &format!("Bearer {read}"))],
    )
    .await;
    assert_eq!(scope.status, StatusCode::FORBIDDEN);
    assert_eq!(
        scope.headers["www-authenticate"],
        format!(
            "Bearer realm=\"bearward\", resource_metadata=\"{admin}\", \
             error=\"insufficient_scope\", error_description=\"insufficient scope\", scope=\"admin\""
        )
        .as_str()
    );
    assert_eq!(up.count(), 0);
    let ok = get(
        &c,
        &gw.url("/api/read/x"),
        &[("authorization", &format!("Bearer {read}"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
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
    w.refused("/api/read/x", &bound, "a DPoP-bound token").await;
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
