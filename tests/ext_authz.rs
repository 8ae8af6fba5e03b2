//! Envoy's ext_authz v3 over gRPC (`[decision] grpc_listen`), asked the way Envoy asks by a
//! client built from Envoy's own protos (tests/ext_authz/client.py: Python grpcio and the
//! xds-protos package, which `.ci/run` installs), nothing shared with bearward's generated
//! code. One table through both decision listeners: the gRPC answer's HTTP status is the HTTP
//! listener's, and its form is what Envoy applies.

mod common;

use base64::Engine as _;
use common::dpop::{sha256, DpopKey};
use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Envoy's `HeaderValueOption.append_action`: `OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE: i64 = 2;

fn config(up: &Upstream, idp: &Idp, decision: u16, grpc: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_origin = "https://api.test"

[decision]
listen = "127.0.0.1:{decision}"
grpc_listen = "127.0.0.1:{grpc}"
ingress = "envoy"

[[issuers]]
issuer = "{}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/limited"
auth = "none"
rate_limit = {{ key = "ip", rate = "6/m", burst = 2 }}
upstream = "app"
"#,
        idp.issuer(),
        up.url()
    )
}

struct World {
    key: Key,
    idp: Idp,
    up: Upstream,
    gw: Gateway,
    decision: u16,
    grpc_port: u16,
}

/// The test IdP, an upstream, and bearward with both decision listeners on [`config`] as
/// `edit` changes it, ready.
async fn world(edit: impl Fn(String) -> String) -> World {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let ([decision, grpc_port], gw) =
        Gateway::start_on_free_ports(|[d, g]| edit(config(&up, &idp, d, g))).await;
    wait_ready(&gw).await;
    World {
        key,
        idp,
        up,
        gw,
        decision,
        grpc_port,
    }
}

/// Sends `cases` to the gRPC listener with Envoy's protos; the answers.
async fn grpc(port: u16, cases: Vec<Value>) -> Vec<Value> {
    grpc_with(port, cases, None).await.expect("client.py")
}

/// Over TLS when `ca` names the CA to trust; the client's error when the calls fail.
async fn grpc_with(port: u16, cases: Vec<Value>, ca: Option<&str>) -> Result<Vec<Value>, String> {
    let ca = ca.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("python3");
        if let Some(ca) = ca {
            cmd.env("BEARWARD_TEST_CA", ca);
        }
        let mut child = cmd
            .arg("tests/ext_authz/client.py")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(Value::Array(cases).to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            // .ci/run installs grpcio==1.68.1, protobuf==4.25.9 and, with --target
            // tests/ext_authz/.xds, xds-protos==1.62.1.
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap())
    })
    .await
    .unwrap()
}

/// The HTTP status a gRPC answer stands for.
fn status_of(a: &Value) -> u16 {
    match a.get("denied") {
        Some(d) => d["status"].as_u64().unwrap() as u16,
        None => {
            assert!(a.get("ok").is_some(), "{a}");
            200
        }
    }
}

/// The same case on the HTTP decision listener (Envoy's HTTP ext_authz: the original path as
/// the request's own, the client's headers, the downstream address in X-Forwarded-For).
async fn http(c: &HttpClient, port: u16, case: &Value) -> StatusCode {
    let mut headers: Vec<(String, String)> = case["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    headers.push(("host".into(), "api.test".into()));
    headers.push((
        "x-forwarded-for".into(),
        case["source"].as_str().unwrap_or("203.0.113.7").into(),
    ));
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = format!("http://127.0.0.1:{port}{}", case["path"].as_str().unwrap());
    send(c, case["method"].as_str().unwrap_or("GET"), &url, &h, "")
        .await
        .status
}

fn pem(name: &str) -> String {
    let text = std::fs::read_to_string(format!("tests/fixtures/tls/{name}.pem")).unwrap();
    percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn cert_thumbprint(name: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der =
        rustls::pki_types::CertificateDer::pem_file_iter(format!("tests/fixtures/tls/{name}.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
    B64.encode(sha256(der.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_checks_get_the_http_listeners_answers_in_envoys_form() {
    let World {
        key,
        idp,
        up: _up,
        gw,
        decision,
        grpc_port,
    } = world(|c| c).await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let read = mint.token(&key, "read");
    let bearer = |t: &str| format!("Bearer {t}");

    // (case, HTTP status both listeners give); the last two only gRPC can carry (an HTTP
    // request line has no fragment and no relative path).
    let table = vec![
        (
            json!({"path": "/api/read?x=1", "headers": {"authorization": bearer(&read)}}),
            200,
        ),
        (json!({"path": "/api/read"}), 401),
        (
            json!({"path": "/api/admin/users", "headers": {"authorization": bearer(&read)}}),
            403,
        ),
        (
            json!({"path": "/api/read", "headers": {"authorization": "Bearer not.a.token"}}),
            401,
        ),
        (json!({"path": "/public/status"}), 200),
        // Path confusion: the canonical path decides the route, as on the main listener.
        (json!({"path": "/public/../api/admin"}), 401),
        (json!({"path": "/public/%2e%2e/api/admin"}), 400),
        (
            json!({"path": "/api/read#frag", "headers": {"authorization": bearer(&read)}}),
            400,
        ),
        (
            json!({"path": "api/read", "headers": {"authorization": bearer(&read)}}),
            400,
        ),
    ];
    let cases: Vec<Value> = table.iter().map(|(c, _)| c.clone()).collect();
    let answers = grpc(grpc_port, cases).await;
    for (i, ((case, want), answer)) in table.iter().zip(&answers).enumerate() {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
        if i < table.len() - 2 {
            assert_eq!(
                http(&c, decision, case).await.as_u16(),
                *want,
                "HTTP {case}"
            );
        }
        let code = answer["code"].as_i64().unwrap();
        let want_code = match want {
            200 => 0,
            401 => 16,
            403 => 7,
            400 => 3,
            _ => unreachable!(),
        };
        assert_eq!(code, want_code, "{case}: {answer}");
    }
    // A refusal carries the HTTP listener's challenge and body.
    let denied = &answers[1]["denied"];
    assert!(
        denied["headers"]["www-authenticate"]
            .as_str()
            .unwrap()
            .starts_with("Bearer"),
        "{denied}"
    );
    let insufficient = &answers[2]["denied"];
    assert!(
        insufficient["headers"]["www-authenticate"]
            .as_str()
            .unwrap()
            .contains("insufficient_scope"),
        "{insufficient}"
    );
    // An allowed check sets the claim headers, overwriting; its metadata says who.
    let ok = &answers[0]["ok"];
    let set = ok["set"].as_array().unwrap();
    assert!(
        set.contains(&json!(["x-auth-subject", "user-42", OVERWRITE])),
        "{ok}"
    );
    assert!(
        set.contains(&json!(["x-auth-scopes", "read", OVERWRITE])),
        "{ok}"
    );
    let meta = &answers[0]["metadata"];
    assert_eq!(meta["decision"], "allow", "{meta}");
    assert_eq!(meta["subject"], "user-42", "{meta}");
    assert_eq!(meta["scopes"], "read", "{meta}");
    assert_eq!(meta["route"], "/api*", "{meta}");

    // Every refusal counted with its reason, under the ext_authz listener.
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    let denied: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("bearward_decisions_total{") && l.contains("listener=\"ext_authz\"")
        })
        .filter(|l| l.contains("decision=\"deny\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(denied, 7.0, "{m}");
    assert!(
        m.contains("listener=\"ext_authz\",decision=\"deny\",reason=\"insufficient_scope\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_overwritten_or_removed_never_kept() {
    let World {
        key,
        idp,
        up: _up,
        gw: _gw,
        decision: _decision,
        grpc_port,
    } = world(|c| c).await;
    let no_scope = idp.minter("https://api.test").token_claims(&key, |c| {
        c.remove("scope");
    });
    let spoof = json!({
        "x-auth-subject": "admin",
        "x_auth_subject": "admin",
        "x-auth_scopes": "admin",
        "x-bearward-audit": "forged",
    });
    let mut with_token = spoof.clone();
    with_token["authorization"] = json!(format!("Bearer {no_scope}"));
    let answers = grpc(
        grpc_port,
        vec![
            json!({"path": "/public/x", "headers": spoof}),
            json!({"path": "/public/x", "headers": with_token}),
        ],
    )
    .await;
    for a in &answers {
        let ok = &a["ok"];
        let set: Vec<&str> = ok["set"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap())
            .collect();
        let removed: Vec<&str> = ok["remove"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for alias in ["x_auth_subject", "x-auth_scopes"] {
            assert!(removed.contains(&alias), "{alias}: {ok}");
        }
        // Each of bearward's headers is either set (overwriting) or removed: never left as
        // the client sent it, and never both (Envoy removes after it sets).
        for h in ["x-auth-subject", "x-auth-scopes", "x-bearward-audit"] {
            assert!(set.contains(&h) != removed.contains(&h), "{h}: {ok}");
        }
        for s in ok["set"].as_array().unwrap() {
            assert_eq!(s[2], OVERWRITE, "{ok}");
        }
    }
    // No token on an open route: nothing to set, every identity header removed.
    let removed = answers[0]["ok"]["remove"].as_array().unwrap();
    assert!(removed.contains(&json!("x-auth-subject")), "{}", answers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_certificates_and_dpop_through_grpc() {
    let World {
        key,
        idp,
        up,
        gw: _gw,
        decision,
        grpc_port,
    } = world(|c| c).await;
    let c = client();
    let mint = idp.minter("https://api.test");

    // `ip` limits read the source address Envoy gives (burst 2), not the client's XFF; the
    // HTTP listener, from Envoy's X-Forwarded-For, holds the same limit for another client.
    let limited = |source: &str, xff: &str| json!({"path": "/limited/x", "source": source, "headers": {"x-forwarded-for": xff}});
    let answers = grpc(
        grpc_port,
        vec![
            limited("203.0.113.7", "1.1.1.1"),
            limited("203.0.113.7", "2.2.2.2"),
            limited("203.0.113.7", "3.3.3.3"),
            limited("203.0.113.8", "203.0.113.7"),
        ],
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(status_of).collect();
    assert_eq!(statuses, [200, 200, 429, 200], "{answers:?}");
    let over = &answers[2];
    assert_eq!(over["code"], 8, "{over}");
    assert!(
        over["denied"]["headers"]["retry-after"].is_string(),
        "{over}"
    );
    assert!(over["denied"]["headers"]["ratelimit"].is_string(), "{over}");
    let ok = &answers[0]["ok"];
    assert!(
        ok["response"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "ratelimit"),
        "the client's response gets the RateLimit fields: {ok}"
    );
    let http_statuses = [
        http(&c, decision, &limited("198.51.100.9", "")).await,
        http(&c, decision, &limited("198.51.100.9", "")).await,
        http(&c, decision, &limited("198.51.100.9", "")).await,
    ];
    assert_eq!(http_statuses.map(|s| s.as_u16()), [200, 200, 429]);

    // A certificate-bound token: the certificate Envoy verified, URL-encoded PEM.
    let bound = mint.token_claims(&key, |cl| {
        cl.insert("cnf".into(), json!({"x5t#S256": cert_thumbprint("client")}));
    });
    let case = |cert: Option<String>| {
        let mut c = json!({"path": "/api/read", "scheme": "https", "headers": {"authorization": format!("Bearer {bound}")}});
        if let Some(cert) = cert {
            c["certificate"] = json!(cert);
        }
        c
    };
    let answers = grpc(
        grpc_port,
        vec![
            case(Some(pem("client"))),
            case(Some(pem("client2"))),
            case(None),
        ],
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(status_of).collect();
    assert_eq!(statuses[0], 200, "{answers:?}");
    assert_eq!(statuses[1], 401, "another certificate: {answers:?}");
    assert_eq!(statuses[2], 401, "no certificate: {answers:?}");

    // A DPoP-bound token with its proof in the headers; the same proof again is a replay.
    let dpop = DpopKey::new(Key::p256());
    let token = mint.token_claims(&key, |cl| {
        cl.insert("cnf".into(), json!({"jkt": dpop.jkt}));
    });
    let proof = dpop.sign(
        &dpop.header(),
        &DpopKey::claims("GET", "https://api.test/api/read", Some(&token)),
    );
    let case = json!({"path": "/api/read", "headers": {"authorization": format!("DPoP {token}"), "dpop": proof}});
    let answers = grpc(grpc_port, vec![case.clone(), case]).await;
    let statuses: Vec<u16> = answers.iter().map(status_of).collect();
    assert_eq!(statuses, [200, 401], "{answers:?}");
    assert_eq!(up.count(), 0, "decision mode never forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_keys_the_grpc_listener_speaks_tls_with_them() {
    let World {
        key,
        idp,
        gw: _gw,
        grpc_port,
        ..
    } = world(|c| {
        c.replace(
            "public_origin = \"https://api.test\"",
            "public_origin = \"https://api.test\"\ntls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"",
        )
    })
    .await;
    let token = idp.minter("https://api.test").token(&key, "read");
    let case =
        json!({"path": "/api/read", "headers": {"authorization": format!("Bearer {token}")}});
    let answers = grpc_with(
        grpc_port,
        vec![case.clone()],
        Some("tests/fixtures/tls/ca.pem"),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&answers[0]), 200, "{answers:?}");
    let plain = grpc_with(grpc_port, vec![case], None).await;
    assert!(plain.is_err(), "h2c to a TLS listener: {plain:?}");
}

/// What is not one uncompressed `CheckRequest` to `Authorization/Check` ends in the gRPC status
/// a gRPC server gives it (the calls are framed by bearward itself, not by tonic's server), and
/// a good check on the same connection still passes.
#[tokio::test]
async fn other_methods_bad_messages_and_compression_get_grpc_errors() {
    let World {
        key,
        idp,
        gw: _gw,
        grpc_port,
        ..
    } = world(|c| c).await;
    let token = idp.minter("https://api.test").token(&key, "read");
    let check = "/envoy.service.auth.v3.Authorization/Check";
    let answers = grpc(
        grpc_port,
        vec![
            json!({"raw": "/envoy.service.auth.v3.Authorization/Other"}),
            json!({"raw": "/grpc.health.v1.Health/Check"}),
            // Field 1 as a varint where a message is due: no CheckRequest.
            json!({"raw": check, "payload": "0801"}),
            // attributes holding 1,000 bytes of an unknown field: a CheckRequest gzip shrinks
            // (grpcio sends a message uncompressed when that does not make it smaller).
            json!({"raw": check, "payload": format!("0aec07a201e807{}", "61".repeat(1000)), "gzip": true}),
            json!({"path": "/api/read", "headers": {"authorization": format!("Bearer {token}")}}),
        ],
    )
    .await;
    let errors: Vec<&str> = answers[..4]
        .iter()
        .map(|a| a["error"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        errors,
        [
            "UNIMPLEMENTED",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNIMPLEMENTED"
        ],
        "{answers:?}"
    );
    assert_eq!(status_of(&answers[4]), 200, "{answers:?}");
}

/// Envoy's check of a HEAD on a GET route is the GET route's: a HEAD does not fall through to
/// an open catch-all (the method comes from `attributes.request.http.method`).
#[tokio::test]
async fn a_head_is_checked_as_a_get() {
    let w = world(|c| {
        c.replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/reports\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        ) + "\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n"
    })
    .await;
    let read = format!(
        "Bearer {}",
        w.idp.minter("https://api.test").token(&w.key, "read")
    );
    let table = [
        (json!({"method": "HEAD", "path": "/reports/q3"}), 401),
        (
            json!({"method": "HEAD", "path": "/reports/q3", "headers": {"authorization": read}}),
            200,
        ),
        (json!({"method": "POST", "path": "/reports/q3"}), 200),
    ];
    let answers = grpc(w.grpc_port, table.iter().map(|(c, _)| c.clone()).collect()).await;
    for ((case, want), answer) in table.iter().zip(&answers) {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
    }
}

/// Routes with `hosts` take the host Envoy gives (the `CheckRequest`'s, or the HTTP service's
/// `Host`) in any spelling; another host goes on to the next route; a check without a host is
/// refused once a route names one, not matched against every host's routes.
#[tokio::test]
async fn routes_by_host_take_the_host_envoy_gives() {
    let w = world(|c| {
        c.replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/tenant\"\nhosts = [\"admin.test\"]\nscopes = [\"admin\"]\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/tenant\"\nauth = \"none\"\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        )
    })
    .await;
    let table = [
        (json!({"path": "/tenant/x", "host": "admin.test"}), 401),
        (json!({"path": "/tenant/x", "host": "ADMIN.test.:443"}), 401),
        (json!({"path": "/tenant/x", "host": "www.test"}), 200),
        (json!({"path": "/tenant/x", "host": "admin..test"}), 400),
        (json!({"path": "/tenant/x", "host": ""}), 400),
    ];
    let answers = grpc(w.grpc_port, table.iter().map(|(c, _)| c.clone()).collect()).await;
    for ((case, want), answer) in table.iter().zip(&answers) {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
    }
    // The HTTP service: Envoy sends the original Host as the check request's own.
    let c = client();
    let url = format!("http://127.0.0.1:{}/tenant/x", w.decision);
    for (host, want) in [("Admin.Test:8443", 401), ("www.test", 200)] {
        let a = get(&c, &url, &[("host", host)]).await;
        assert_eq!(a.status.as_u16(), want, "HTTP {host}");
    }
    assert_eq!(w.up.count(), 0, "decisions only");
}

/// `source_ranges` over gRPC reads the source address Envoy gives in the `CheckRequest`, never
/// an `X-Forwarded-For` among the original request's headers; over the HTTP service, the
/// address Envoy appends (`use_remote_address`), and a check that names none is refused.
#[tokio::test]
async fn source_ranges_take_the_address_envoy_gives() {
    let w = world(|c| {
        c.replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/office\"\nauth = \"none\"\n\
             source_ranges = [\"203.0.113.0/24\"]\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        )
    })
    .await;
    let table = [
        (json!({"path": "/office/x", "source": "203.0.113.7"}), 200),
        (json!({"path": "/office/x", "source": "198.51.100.1"}), 403),
        (
            json!({"path": "/office/x", "source": "198.51.100.1",
                   "headers": {"x-forwarded-for": "203.0.113.7"}}),
            403,
        ),
    ];
    let answers = grpc(w.grpc_port, table.iter().map(|(c, _)| c.clone()).collect()).await;
    for ((case, want), answer) in table.iter().zip(&answers) {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
    }
    let c = client();
    let url = format!("http://127.0.0.1:{}/office/x", w.decision);
    for (xff, want) in [
        (Some("203.0.113.7"), 200),
        (Some("203.0.113.7, 198.51.100.1"), 403),
        (None, 403),
    ] {
        let h: Vec<_> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        let a = get(&c, &url, &h).await;
        assert_eq!(a.status.as_u16(), want, "HTTP {xff:?}");
    }
    assert_eq!(w.up.count(), 0, "decisions only");
}

/// A `token_header` route over Envoy's gRPC check: the token is read from the header the route
/// names among the `CheckRequest`'s headers, and not from `authorization`.
#[tokio::test]
async fn a_token_header_route_reads_the_header_envoy_passes() {
    let w = world(|c| {
        c.replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/iap\"\nscopes = [\"read\"]\ntoken_header = \"Cf-Access-Jwt-Assertion\"\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        )
    })
    .await;
    let mint = w.idp.minter("https://api.test");
    let (read, write) = (mint.token(&w.key, "read"), mint.token(&w.key, "write"));
    let table = [
        (json!({"path": "/iap/x"}), 401),
        (
            json!({"path": "/iap/x", "headers": {"authorization": format!("Bearer {read}")}}),
            401,
        ),
        (
            json!({"path": "/iap/x", "headers": {"cf-access-jwt-assertion": write}}),
            403,
        ),
        (
            json!({"path": "/iap/x", "headers": {"cf-access-jwt-assertion": read}}),
            200,
        ),
    ];
    let answers = grpc(w.grpc_port, table.iter().map(|(c, _)| c.clone()).collect()).await;
    for ((case, want), answer) in table.iter().zip(&answers) {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
    }
    assert_eq!(w.up.count(), 0, "decisions only");
}

/// A `token_cookie` route over Envoy's gRPC check: the token is read from the `cookie` among
/// the `CheckRequest`'s headers, and an unsafe call another site's page made is refused.
#[tokio::test]
async fn a_token_cookie_route_reads_the_cookie_envoy_passes() {
    let w = world(|c| {
        c.replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/spa\"\nscopes = [\"read\"]\ntoken_cookie = \"CF_Authorization\"\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        )
    })
    .await;
    let mint = w.idp.minter("https://api.test");
    let (read, write) = (mint.token(&w.key, "read"), mint.token(&w.key, "write"));
    let jar = format!("x=1; CF_Authorization={read}");
    let table = [
        (json!({"path": "/spa/x"}), 401),
        (
            json!({"path": "/spa/x", "method": "PUT", "headers": {"authorization": format!("Bearer {read}"), "sec-fetch-site": "cross-site"}}),
            200,
        ),
        (
            json!({"path": "/spa/x", "headers": {"authorization": format!("Bearer {read}"), "cookie": jar}}),
            400,
        ),
        (
            json!({"path": "/spa/x", "headers": {"cookie": format!("CF_Authorization={write}")}}),
            403,
        ),
        (json!({"path": "/spa/x", "headers": {"cookie": jar}}), 200),
        (
            json!({"path": "/spa/x", "method": "POST", "headers": {"cookie": jar, "sec-fetch-site": "cross-site"}}),
            403,
        ),
        (
            json!({"path": "/spa/x", "method": "POST", "headers": {"cookie": jar, "sec-fetch-site": "same-origin"}}),
            200,
        ),
    ];
    let answers = grpc(w.grpc_port, table.iter().map(|(c, _)| c.clone()).collect()).await;
    for ((case, want), answer) in table.iter().zip(&answers) {
        assert_eq!(status_of(answer), *want, "gRPC {case}: {answer}");
    }
    assert_eq!(w.up.count(), 0, "decisions only");
}
