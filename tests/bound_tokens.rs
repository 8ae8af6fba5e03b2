//! Sender-constrained tokens end to end (RFC 9449 DPoP, RFC 8705 certificate-bound tokens): a
//! real IdP's keys, tokens bound with `cnf`, proofs signed per request by a client key, a
//! recording upstream that must receive nothing refused.

mod common;

use base64::Engine as _;
use common::dpop::{sha256, DpopKey as Client};
use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

struct Setup {
    idp: Idp,
    up: Upstream,
    gw: Gateway,
    c: HttpClient,
    mint: Minter,
}

fn config(up: &Upstream, idp: &Idp, server_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server_extra}

[[issuers]]
issuer = "{}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject" }}

[[routes]]
prefix = "/bound-only"
require_bound_tokens = true
upstream = "app"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
{extra}
"#,
        idp.issuer(),
        up.url()
    )
}

async fn start(server_extra: &str, extra: &str) -> Setup {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &idp, server_extra, extra)).await;
    wait_ready(&gw).await;
    Setup {
        mint: idp.minter("https://api.test"),
        idp,
        up,
        gw,
        c: client(),
    }
}

impl Setup {
    fn bound_token(&self, cnf: Value) -> String {
        self.mint.token_claims(&Key::rsa1(), |c| {
            c.insert("cnf".into(), cnf);
        })
    }

    fn htu(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.addr)
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(&self.c, method, &self.gw.url(path), headers, "").await
    }

    async fn metrics(&self) -> String {
        get(
            &self.c,
            &format!("http://{}/metrics", self.gw.admin.unwrap()),
            &[],
        )
        .await
        .body
    }

    /// `GET path` with the `Authorization` value `auth` and one DPoP proof: refused as
    /// [`Setup::refused`] says.
    async fn refuses_proof(
        &self,
        path: &str,
        auth: &str,
        proof: &str,
        (error, reason): (&str, &str),
        before: usize,
    ) {
        let a = self
            .send("GET", path, &[("authorization", auth), ("dpop", proof)])
            .await;
        self.refused(&a, error, reason, before).await;
    }

    /// A 401 with the DPoP challenge and `error`, counted with `reason`; the upstream got
    /// nothing new.
    async fn refused(&self, a: &Answer, error: &str, reason: &str, before: usize) {
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{reason}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(
            www.starts_with("DPoP realm=\"bearward\", algs=\"ES256 ES384 EdDSA RS256 PS256\"")
                && www.contains(&format!("error=\"{error}\"")),
            "{reason}: {www}"
        );
        assert_eq!(self.up.count(), before, "{reason}: the upstream got it");
        let m = self.metrics().await;
        assert!(
            m.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted"
        );
    }
}

#[tokio::test]
async fn a_dpop_bound_token_passes_with_a_fresh_proof_per_request_and_nothing_else() {
    let s = start("", "").await;
    let client = Client::new(Key::p256());
    let token = s.bound_token(json!({"jkt": client.jkt}));
    let auth = format!("DPoP {token}");
    let htu = s.htu("/api/items");
    for _ in 0..3 {
        let proof = client.proof("GET", &htu, Some(&token));
        let a = s
            .send(
                "GET",
                "/api/items",
                &[("authorization", &auth), ("dpop", &proof)],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    assert_eq!(s.up.count(), 3);
    assert_eq!(s.up.last().headers["x-auth-subject"], "user-42");
    // The DPoP header and the token go on to the upstream only as the config says: the
    // Authorization header stays (strip_authorization is off), as for bearer tokens.

    // A replayed proof.
    let proof = client.proof("GET", &htu, Some(&token));
    let ok = s
        .send(
            "GET",
            "/api/items",
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let n = s.up.count();
    s.refuses_proof(
        "/api/items",
        &auth,
        &proof,
        ("invalid_dpop_proof", "dpop_proof_replayed"),
        n,
    )
    .await;

    // For another method, and another URI (path or query-less origin).
    for (proof, reason) in [
        (client.proof("POST", &htu, Some(&token)), "dpop_proof_htm"),
        (
            client.proof("GET", &s.htu("/api/other"), Some(&token)),
            "dpop_proof_htu",
        ),
        (
            client.proof("GET", "https://elsewhere.test/api/items", Some(&token)),
            "dpop_proof_htu",
        ),
    ] {
        s.refuses_proof(
            "/api/items",
            &auth,
            &proof,
            ("invalid_dpop_proof", reason),
            n,
        )
        .await;
    }
    // The query is not part of htu: a proof naming the path alone is good for a request
    // with a query.
    let p = client.proof("GET", &htu, Some(&token));
    let a = s
        .send(
            "GET",
            "/api/items?page=2",
            &[("authorization", &auth), ("dpop", &p)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let n = s.up.count();

    // Signed by another key: its own jwk (thumbprint not the token's), or the bound jwk with
    // another key's signature.
    let thief = Client::new(Key::rsa2());
    let p = thief.proof("GET", &htu, Some(&token));
    s.refuses_proof(
        "/api/items",
        &auth,
        &p,
        ("invalid_dpop_proof", "dpop_key_mismatch"),
        n,
    )
    .await;
    let forged = thief.sign(
        &json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": client.header()["jwk"]}),
        &Client::claims("GET", &htu, Some(&token)),
    );
    s.refuses_proof(
        "/api/items",
        &auth,
        &forged,
        ("invalid_dpop_proof", "dpop_proof_alg"),
        n,
    )
    .await;

    // No ath, a wrong ath, an old iat, a wrong typ, a symmetric alg, a private jwk.
    let claims = || Client::claims("GET", &htu, Some(&token));
    let mut no_ath = claims();
    no_ath.as_object_mut().unwrap().remove("ath");
    let mut old = claims();
    old["iat"] = json!(now() - 300);
    let mut jwt_typ = client.header();
    jwt_typ["typ"] = json!("JWT");
    for (header, c, reason) in [
        (client.header(), no_ath, "dpop_proof_ath"),
        (
            client.header(),
            Client::claims("GET", &htu, Some("another-token")),
            "dpop_proof_ath",
        ),
        (client.header(), old, "dpop_proof_iat"),
        (jwt_typ, claims(), "dpop_proof_typ"),
    ] {
        let proof = client.sign(&header, &c);
        s.refuses_proof(
            "/api/items",
            &auth,
            &proof,
            ("invalid_dpop_proof", reason),
            n,
        )
        .await;
    }
    let mut h = client.header();
    h["jwk"]["d"] = json!("c2VjcmV0");
    let a = s
        .send(
            "GET",
            "/api/items",
            &[
                ("authorization", &auth),
                (
                    "dpop",
                    &client.sign(&h, &Client::claims("GET", &htu, Some(&token))),
                ),
            ],
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a jwk with private parts"
    );
    let hs = sign_raw(
        &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": client.header()["jwk"]}).to_string(),
        &Client::claims("GET", &htu, Some(&token)).to_string(),
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        jsonwebtoken::Algorithm::HS256,
    );
    s.refuses_proof(
        "/api/items",
        &auth,
        &hs,
        ("invalid_dpop_proof", "dpop_proof_alg"),
        n,
    )
    .await;

    // No proof, two proofs.
    let a = s
        .send("GET", "/api/items", &[("authorization", &auth)])
        .await;
    s.refused(&a, "invalid_dpop_proof", "dpop_proof_missing", n)
        .await;
    let (p1, p2) = (
        client.proof("GET", &htu, Some(&token)),
        client.proof("GET", &htu, Some(&token)),
    );
    let a = s
        .send(
            "GET",
            "/api/items",
            &[("authorization", &auth), ("dpop", &p1), ("dpop", &p2)],
        )
        .await;
    s.refused(&a, "invalid_dpop_proof", "dpop_proof_multiple", n)
        .await;

    // The downgrade (RFC 9449 7.2): the bound token with the Bearer scheme, even with a proof.
    let p = client.proof("GET", &htu, Some(&token));
    s.refuses_proof(
        "/api/items",
        &format!("Bearer {token}"),
        &p,
        ("invalid_token", "bound_token"),
        n,
    )
    .await;

    // An unbound token with the DPoP scheme.
    let plain = s.mint.token(&Key::rsa1(), "read");
    let p = client.proof("GET", &htu, Some(&plain));
    s.refuses_proof(
        "/api/items",
        &format!("DPoP {plain}"),
        &p,
        ("invalid_token", "dpop_token_not_bound"),
        n,
    )
    .await;

    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "bearward_dpop_proofs_total{outcome=\"ok\"}"),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "bearward_dpop_proofs_total{outcome=\"dpop_proof_replayed\"}"
        ),
        1.0,
        "{m}"
    );
    drop(s.idp);
}

/// Behind a trusted proxy without `public_origin`, `htu` is built from the value the proxy
/// added to `X-Forwarded-Host`/`-Proto`: the rightmost. A proxy that appends keeps what the
/// client wrote to its left, which must never choose the origin (a proof captured by another
/// server would replay here); one that overwrites sends a single value.
#[tokio::test]
async fn htu_comes_from_the_value_the_trusted_proxy_added() {
    let s = start("trusted_proxies = [\"127.0.0.1\"]", "").await;
    let client = Client::new(Key::p256());
    let token = s.bound_token(json!({"jkt": client.jkt}));
    let auth = format!("DPoP {token}");
    let ours = "https://api.example.com/api/items";
    let theirs = "http://elsewhere.test/api/items";
    // (X-Forwarded-Host lines, X-Forwarded-Proto lines) as an appending proxy sends them: the
    // client's own values, then the proxy's.
    let appended: [(&[&str], &[&str]); 3] = [
        (&["elsewhere.test, api.example.com"], &["http, https"]),
        (&["elsewhere.test", "api.example.com"], &["http", "https"]),
        (&["api.example.com"], &["https"]),
    ];
    for (hosts, protos) in appended {
        let mut h: Vec<(&str, &str)> = vec![("authorization", &auth)];
        h.extend(hosts.iter().map(|v| ("x-forwarded-host", *v)));
        h.extend(protos.iter().map(|v| ("x-forwarded-proto", *v)));
        let captured = client.proof("GET", theirs, Some(&token));
        let mut with = h.clone();
        with.push(("dpop", &captured));
        let n = s.up.count();
        let a = s.send("GET", "/api/items", &with).await;
        s.refused(&a, "invalid_dpop_proof", "dpop_proof_htu", n)
            .await;
        let good = client.proof("GET", ours, Some(&token));
        h.push(("dpop", &good));
        let a = s.send("GET", "/api/items", &h).await;
        assert_eq!(a.status, StatusCode::OK, "{hosts:?} {protos:?}: {}", a.body);
    }
}

#[tokio::test]
async fn routes_that_require_bound_tokens_refuse_plain_ones_and_say_how() {
    let s = start("", "").await;
    let plain = s.mint.token(&Key::rsa1(), "read");
    let a = s
        .send(
            "GET",
            "/bound-only/x",
            &[("authorization", &format!("Bearer {plain}"))],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let www: Vec<&str> = a
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(www.len(), 2, "{www:?}");
    assert!(
        www[0].starts_with("DPoP ") && www[0].contains("error=\"invalid_token\""),
        "{www:?}"
    );
    assert!(www[1].starts_with("Bearer "), "{www:?}");
    // Without any token: both challenges, no error.
    let a = s.send("GET", "/bound-only/x", &[]).await;
    let www: Vec<&str> = a
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        www,
        [
            "DPoP realm=\"bearward\", algs=\"ES256 ES384 EdDSA RS256 PS256\"",
            "Bearer realm=\"bearward\""
        ]
    );
    // A DPoP-bound token with its proof passes.
    let client = Client::new(Key::p256());
    let token = s.bound_token(json!({"jkt": client.jkt}));
    let p = client.proof("GET", &s.htu("/bound-only/x"), Some(&token));
    let a = s
        .send(
            "GET",
            "/bound-only/x",
            &[("authorization", &format!("DPoP {token}")), ("dpop", &p)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(s.up.count(), 1);
    let m = s.metrics().await;
    assert!(m.contains("reason=\"unbound_token\""), "{m}");
}

#[tokio::test]
async fn server_nonces_are_asked_for_and_then_accepted() {
    let s = start("", "[dpop]\nnonce = true").await;
    let client = Client::new(Key::p256());
    let token = s.bound_token(json!({"jkt": client.jkt}));
    let auth = format!("DPoP {token}");
    let htu = s.htu("/api/items");
    let p = client.proof("GET", &htu, Some(&token));
    let a = s
        .send(
            "GET",
            "/api/items",
            &[("authorization", &auth), ("dpop", &p)],
        )
        .await;
    s.refused(&a, "use_dpop_nonce", "use_dpop_nonce", 0).await;
    let nonce = a.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let mut c = Client::claims("GET", &htu, Some(&token));
    c["nonce"] = json!(nonce);
    let a = s
        .send(
            "GET",
            "/api/items",
            &[
                ("authorization", &auth),
                ("dpop", &client.sign(&client.header(), &c)),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let mut c = Client::claims("GET", &htu, Some(&token));
    c["nonce"] = json!("made-up");
    let a = s
        .send(
            "GET",
            "/api/items",
            &[
                ("authorization", &auth),
                ("dpop", &client.sign(&client.header(), &c)),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.up.count(), 1);
}

fn cert_thumbprint(name: &str) -> (String, String) {
    use rustls::pki_types::pem::PemObject;
    let der =
        rustls::pki_types::CertificateDer::pem_file_iter(format!("tests/fixtures/tls/{name}.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
    let hash = sha256(der.as_ref());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    (B64.encode(&hash), hex)
}

#[tokio::test]
async fn certificate_bound_tokens_need_their_certificate_on_the_connection() {
    let s = start(
        "tls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"\ntls_client_ca_file = \"tests/fixtures/tls/ca.pem\"\ntls_client_auth = \"optional\"",
        "",
    )
    .await;
    let (x5t, _) = cert_thumbprint("client");
    let token = s.bound_token(json!({"x5t#S256": x5t}));
    let auth = format!("Bearer {token}");
    let status = |client: Option<&'static str>| {
        let addr = s.gw.addr;
        let auth = auth.clone();
        async move { tls_get(addr, "/api/x", &auth, client).await }
    };
    assert_eq!(status(Some("client")).await, StatusCode::OK);
    assert_eq!(status(Some("client2")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.up.count(), 1);
    let m = s.metrics().await;
    assert!(m.contains("reason=\"certificate_mismatch\""), "{m}");
    assert!(m.contains("reason=\"certificate_missing\""), "{m}");
}

#[tokio::test]
async fn a_trusted_proxy_may_pass_the_certificate_and_nobody_else() {
    let (x5t, hex) = cert_thumbprint("client");
    let pem = std::fs::read_to_string("tests/fixtures/tls/client.pem").unwrap();
    let escaped: String =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();

    // Envoy's XFCC from a trusted peer.
    let s = start(
        "trusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = \"x-forwarded-client-cert\"",
        "",
    )
    .await;
    let token = s.bound_token(json!({"x5t#S256": x5t}));
    let auth = format!("Bearer {token}");
    let xfcc =
        format!("By=spiffe://cluster/bearward;Hash={hex};Subject=\"CN=bearward test client\"");
    let a = s
        .send(
            "GET",
            "/api/x",
            &[("authorization", &auth), ("x-forwarded-client-cert", &xfcc)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let cert_form = format!("By=spiffe://x;Cert=\"{escaped}\"");
    let a = s
        .send(
            "GET",
            "/api/x",
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &cert_form),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "XFCC Cert=: {}", a.body);
    let (_, other_hex) = cert_thumbprint("client2");
    let a = s
        .send(
            "GET",
            "/api/x",
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &format!("Hash={other_hex}")),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Mallory's own certificate, with a subject of her choosing that spells alice's hash:
    // after an escaped quote and comma (how Envoy writes an RFC 2253 subject), or after a `;`
    // inside the quotes. Neither is read as a key of its own.
    for forged in [
        format!("By=spiffe://x;Hash={other_hex};Subject=\"CN=mallory,street=x\\\"\\,Hash={hex}\""),
        format!("By=spiffe://x;Hash={other_hex};Subject=\"CN=m;Hash={hex}\""),
        format!("By=spiffe://x;Subject=\"CN=m;Hash={hex}\""),
        format!("By=spiffe://x;Hash={other_hex};Hash={hex}"),
    ] {
        let a = s
            .send(
                "GET",
                "/api/x",
                &[
                    ("authorization", &auth),
                    ("x-forwarded-client-cert", &forged),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{forged}");
    }
    let a = s.send("GET", "/api/x", &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.up.count(), 2);
    // The trusted proxy's header goes on upstream (the API may want it).
    assert!(s.up.last().headers.contains_key("x-forwarded-client-cert"));

    // nginx's $ssl_client_escaped_cert in a header of the operator's naming.
    let s = start(
        "trusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = \"x-ssl-client-cert\"",
        "",
    )
    .await;
    let token = s.bound_token(json!({"x5t#S256": x5t}));
    let a = s
        .send(
            "GET",
            "/api/x",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-ssl-client-cert", &escaped),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // The same header from a peer that is not trusted: ignored, and stripped before the
    // upstream sees it.
    let open = "[[routes]]\nprefix = \"/open\"\nauth = \"none\"\nupstream = \"app\"";
    let s = start(
        "trusted_proxies = [\"10.0.0.0/8\"]\nclient_cert_header = \"x-forwarded-client-cert\"",
        open,
    )
    .await;
    let token = s.bound_token(json!({"x5t#S256": x5t}));
    let a = s
        .send(
            "GET",
            "/api/x",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-forwarded-client-cert", &xfcc),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.up.count(), 0);
    let a = s
        .send("GET", "/open/x", &[("x-forwarded-client-cert", &xfcc)])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !s.up.last().headers.contains_key("x-forwarded-client-cert"),
        "an untrusted client's certificate header reached the upstream"
    );
}

#[tokio::test]
async fn the_resource_metadata_advertises_dpop() {
    let s = start("resource = \"https://api.test/api\"", "").await;
    let doc = get(
        &s.c,
        &s.gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
    )
    .await;
    let doc: Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "RS256", "PS256"])
    );
    assert!(
        doc.get("dpop_bound_access_tokens_required").is_none(),
        "{doc}"
    );
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn explain_shows_the_binding_and_what_a_request_must_bring() {
    let s = start("", "").await;
    let config =
        bearward::config::Config::from_toml_str(&config(&s.up, &s.idp, "", ""), "t.toml").unwrap();
    let client = Client::new(Key::p256());
    let token = s.bound_token(json!({"jkt": client.jkt}));
    let get = http::Method::GET;
    let e = bearward::explain::explain_request(&config, &get, "/api/x", Some(&token)).await;
    assert_eq!(e.reason, "bound_token", "{}", e.text);
    assert!(
        e.text
            .contains("a DPoP proof by it is needed on each request")
            && e.text.contains("Bearer scheme"),
        "{}",
        e.text
    );
    let (x5t, _) = cert_thumbprint("client");
    let token = s.bound_token(json!({"x5t#S256": x5t}));
    let e = bearward::explain::explain_request(&config, &get, "/api/x", Some(&token)).await;
    assert_eq!(e.reason, "certificate_missing", "{}", e.text);
    assert!(
        e.text.contains("the request must come with it"),
        "{}",
        e.text
    );
}

#[tokio::test]
async fn a_route_may_require_a_verified_client_certificate() {
    let s = start(
        "tls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"\ntls_client_ca_file = \"tests/fixtures/tls/ca.pem\"\ntls_client_auth = \"optional\"",
        "[[routes]]\nprefix = \"/partners\"\nauth = \"none\"\nrequire_client_certificate = true\nupstream = \"app\"",
    )
    .await;
    // Routes are matched in order; /partners comes after /api and /bound-only, so it is its own.
    assert_eq!(
        tls_get(s.gw.addr, "/partners/x", "", Some("client")).await,
        StatusCode::OK
    );
    assert_eq!(
        tls_get(s.gw.addr, "/partners/x", "", Some("client2")).await,
        StatusCode::OK
    );
    assert_eq!(
        tls_get(s.gw.addr, "/partners/x", "", None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(s.up.count(), 2);
    let m = s.metrics().await;
    assert!(m.contains("reason=\"client_certificate_required\""), "{m}");
    // A config where no certificate could ever arrive is refused.
    let e = bearward::config::Config::from_toml_str(
        &config(&s.up, &s.idp, "", "[[routes]]\nprefix = \"/p\"\nauth = \"none\"\nrequire_client_certificate = true\nupstream = \"app\""),
        "t.toml",
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("require_client_certificate"), "{e}");
}
