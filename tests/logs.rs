//! The logs never hold a token: accepted, refused, malformed, in the header or in the query.
//! Its own test binary, so the global log subscriber captures this test alone.

mod common;

use common::idp::*;
use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_text_in_the_logs() {
    let buf = Buf::default();
    let writer = buf.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .json()
        .init();

    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(
        &up.url(),
        &idp.issuer(),
        "discovery = true",
        "",
    ))
    .await;
    wait_ready(&gw).await;
    let m = idp.minter("https://api.test");
    let c = client();
    let tokens = [
        m.token(&rsa, "read"),
        m.token(&rsa, "admin"),
        m.token_expired(&rsa),
        m.token_claims(&rsa, |c| {
            c.insert("aud".into(), serde_json::json!("https://elsewhere.test"));
        }),
        "not-a-jwt-but-secret-looking-material".to_owned(),
    ];
    for t in &tokens {
        get(
            &c,
            &gw.url("/api/read/x"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
        get(
            &c,
            &format!("{}?access_token={t}", gw.url("/api/query/x")),
            &[],
        )
        .await;
        get(
            &c,
            &format!("{}?access_token={t}", gw.url("/api/read/x")),
            &[],
        )
        .await;
    }
    // A head hyper cannot parse, carrying a token: refused before the service, logged with its
    // reason and, like the rest, without the token.
    let resp = raw(
        gw.addr,
        format!(
            "GET /api/read/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX : b\r\n\r\n",
            tokens[0]
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"reason\":\"malformed_request\""),
        "the refused head has an access line"
    );
    assert!(
        logs.contains("bearward::access"),
        "access lines were captured"
    );
    assert!(
        logs.contains("\"token\":\""),
        "a token id is logged for correlation"
    );
    // The id is the token's SHA-256 prefix whichever way the check went: validated, served from
    // the verified-token cache (the first token, on its second request), or refused.
    for t in &tokens {
        let id = format!(
            "\"token\":\"{}\"",
            bearward::auth::token_id(&bearward::auth::sha256(t))
        );
        assert!(logs.contains(&id), "{id} is logged");
    }
    let first = bearward::auth::token_id(&bearward::auth::sha256(&tokens[0])).to_string();
    assert_eq!(
        logs.matches(&format!("\"token\":\"{first}\"")).count(),
        2,
        "validated, then from the cache: the same id (a query token on /api/read is never read)"
    );
    for t in &tokens {
        // Any 16-character window of a token (its signature or payload) must not appear.
        for part in t.split('.').filter(|p| p.len() >= 16) {
            assert!(
                !logs.contains(&part[..16]),
                "token material in the logs: {}",
                &part[..16]
            );
        }
    }
    assert!(
        !logs.to_ascii_lowercase().contains("bearer "),
        "no Authorization header in the logs"
    );
    // A delegated token's actors (RFC 8693 `act`) are named in its access line.
    let delegated = m.token_claims(&rsa, |c| {
        c.insert("scope".into(), serde_json::json!("read"));
        let act = serde_json::json!({"sub": "svc-a", "act": {"sub": "svc-b"}});
        c.insert("act".into(), act);
    });
    let bearer = format!("Bearer {delegated}");
    let a = get(&c, &gw.url("/api/read/x"), &[("authorization", &bearer)]).await;
    assert_eq!(a.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"actor\":\"svc-a,svc-b\""),
        "the actors are logged"
    );
    client_in_the_access_log(&buf, &up).await;
    claims_in_the_access_log(&buf, &up, &idp, &rsa).await;
    quiet_routes_log_only_refusals(&buf, &up).await;
}

/// A route with `access_log = false` writes no line for its answers under 400, and one for
/// each refusal or error, with its reason; the metrics count them all.
async fn quiet_routes_log_only_refusals(buf: &Buf, up: &Upstream) {
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/empty-jwks.json\"\naudiences = [\"a\"]\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [[routes]]\nprefix = \"/probe\"\nauth = \"none\"\naccess_log = false\nupstream = \"app\"\n\
         [[routes]]\nprefix = \"/quiet-guarded\"\naccess_log = false\nupstream = \"app\"\n\
         [[routes]]\nprefix = \"/loud\"\nauth = \"none\"\nupstream = \"app\"\n",
        up.url()
    ))
    .await;
    let c = client();
    for (path, status) in [
        ("/probe/ready", 200),
        ("/quiet-guarded/x", 401),
        ("/loud/x", 200),
    ] {
        assert_eq!(get(&c, &gw.url(path), &[]).await.status, status, "{path}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = |path: &str| {
        logs.lines()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")) && l.contains("bearward::access"))
            .map(str::to_owned)
    };
    assert_eq!(line("/probe/ready"), None, "a quiet route's 200 was logged");
    let refused = line("/quiet-guarded/x").expect("a quiet route's refusal is logged");
    assert!(
        refused.contains("\"reason\":\"missing_token\""),
        "{refused}"
    );
    assert!(line("/loud/x").is_some());
    let m = gw.metrics().await;
    assert!(m.contains("route=\"/probe*\",status=\"200\""), "{m}");
}

/// `access_log_claims`: a verified token's claims in its access lines, allowed or refused
/// after the check, as one JSON object whatever their text holds (quotes, a line break), each
/// cut at 128 bytes; a token that fails its check has none logged.
async fn claims_in_the_access_log(buf: &Buf, up: &Upstream, idp: &Idp, rsa: &Key) {
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\naccess_log_claims = [\"azp\", \"tid\", \"org.name\", \"note\", \"missing\"]\n\
         [[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"https://api.test\"]\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [[routes]]\nprefix = \"/logged\"\nscopes = [\"read\"]\nupstream = \"app\"\n",
        idp.issuer(),
        up.url()
    ))
    .await;
    wait_ready(&gw).await;
    let m = idp.minter("https://api.test");
    let token = |scope: &str| {
        m.token_claims(rsa, |c| {
            c.insert("scope".into(), serde_json::json!(scope));
            c.insert("azp".into(), serde_json::json!("billing"));
            c.insert("tid".into(), serde_json::json!("4f6c"));
            c.insert(
                "org".into(),
                serde_json::json!({"name": "Acme \"East\"\nBranch"}),
            );
            c.insert("note".into(), serde_json::json!("é".repeat(100)));
        })
    };
    let c = client();
    for (path, t, status) in [
        ("/logged/ok", token("read"), 200),
        ("/logged/scope", token("write"), 403),
        ("/logged/forged", format!("{}x", token("read")), 401),
    ] {
        let a = get(
            &c,
            &gw.url(path),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = |path: &str| -> serde_json::Value {
        let l = logs
            .lines()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")) && l.contains("bearward::access"))
            .unwrap_or_else(|| panic!("an access line for {path}"));
        serde_json::from_str(l).unwrap()
    };
    for path in ["/logged/ok", "/logged/scope"] {
        let l = line(path);
        let claims: serde_json::Value =
            serde_json::from_str(l["fields"]["claims"].as_str().expect("claims logged")).unwrap();
        assert_eq!(claims["azp"], "billing", "{l}");
        assert_eq!(claims["tid"], "4f6c", "{l}");
        assert_eq!(claims["org.name"], "Acme \"East\"\nBranch", "{l}");
        // 100 two-byte characters, cut at 128 bytes on a character boundary.
        assert_eq!(claims["note"], "é".repeat(64), "{l}");
        assert!(claims.get("missing").is_none(), "{l}");
    }
    let forged = line("/logged/forged");
    assert!(forged["fields"].get("claims").is_none(), "{forged}");
}

/// Behind a trusted proxy the access line names the client as well as the peer; an ingress
/// asking about a route keyed by address without X-Forwarded-For is warned about, once. (Here,
/// because this binary's one subscriber is set up by the test above.)
async fn client_in_the_access_log(buf: &Buf, up: &Upstream) {
    let (dport, gw) = Gateway::start_on_free_port(|dport| {
        format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [decision]\nlisten = \"127.0.0.1:{dport}\"\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [upstreams.dead]\nurl = \"http://127.0.0.1:1\"\n\
         [upstreams.pair]\nurl = \"http://api.internal\"\nendpoints = [\"127.0.0.1:1\", \"{}\"]\n\
         [upstreams.pair_dead]\nurl = \"http://api.internal\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
         [[routes]]\nprefix = \"/dead\"\nauth = \"none\"\nupstream = \"dead\"\n\
         [[routes]]\nprefix = \"/pair/\"\nauth = \"none\"\nupstream = \"pair\"\n\
         [[routes]]\nprefix = \"/pair-dead\"\nauth = \"none\"\nupstream = \"pair_dead\"\n\
         [[routes]]\nprefix = \"/by-ip\"\nauth = \"none\"\nrate_limit = {{ key = \"ip\", rate = \"100/s\" }}\nupstream = \"app\"\n",
            up.url(),
            up.addr
        )
    })
    .await;
    let c = client();
    let a = get(
        &c,
        &gw.url("/by-ip/x"),
        &[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-request-id", "lb-5e1d"),
        ],
    )
    .await;
    assert_eq!(a.status, http::StatusCode::OK);
    let a = get(&c, &gw.url("/dead/x"), &[("x-request-id", "lb-dead")]).await;
    assert_eq!(a.status, http::StatusCode::BAD_GATEWAY);
    // Of several endpoints, the one that answered (after the first refused the connection)
    // is named; so is the one that failed last, in the access line and the warning.
    for _ in 0..2 {
        let a = get(&c, &gw.url("/pair/x"), &[]).await;
        assert_eq!(a.status, http::StatusCode::OK);
    }
    let a = get(
        &c,
        &gw.url("/pair-dead/x"),
        &[("x-request-id", "lb-pair-dead")],
    )
    .await;
    assert_eq!(a.status, http::StatusCode::BAD_GATEWAY);
    let ask = format!("http://127.0.0.1:{dport}/auth");
    for _ in 0..2 {
        let a = get(&c, &ask, &[("x-original-uri", "/by-ip/x")]).await;
        assert_eq!(a.status, http::StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("\"path\":\"/by-ip/x\"") && l.contains("bearward::access"))
        .expect("an access line for /by-ip/x");
    assert!(line.contains("\"client\":\"203.0.113.9\""), "{line}");
    assert!(line.contains("\"peer\":\"127.0.0.1\""), "{line}");
    // The trusted proxy's request id, as the upstream and the client got it.
    assert!(line.contains("\"request_id\":\"lb-5e1d\""), "{line}");
    let served = format!("\"upstream_addr\":\"{}\"", up.addr);
    let pair_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"path\":\"/pair/x\"") && l.contains("bearward::access"))
        .collect();
    assert_eq!(pair_lines.len(), 2);
    assert!(
        pair_lines.iter().all(|l| l.contains(&served)),
        "{pair_lines:?}"
    );
    assert!(
        !line.contains("upstream_addr"),
        "one endpoint: its url names it; {line}"
    );
    let dead_pair = logs
        .lines()
        .find(|l| l.contains("\"path\":\"/pair-dead/x\"") && l.contains("bearward::access"))
        .expect("an access line for /pair-dead/x");
    assert!(
        dead_pair.contains("\"upstream_addr\":\"127.0.0.1:"),
        "{dead_pair}"
    );
    let warned = logs
        .lines()
        .find(|l| l.contains("upstream request failed") && l.contains("lb-pair-dead"))
        .expect("a warning for the dead pair");
    assert!(warned.contains("\"endpoint\":\"127.0.0.1:"), "{warned}");
    trace_id_in_the_access_log(buf, up).await;
    // A warning made while serving a request names it too.
    let failed = logs
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .expect("a warning for the dead upstream");
    assert!(failed.contains("\"request_id\":\"lb-dead\""), "{failed}");
    assert_eq!(
        logs.matches("came without X-Forwarded-For").count(),
        1,
        "the ingress without X-Forwarded-For is warned about once"
    );
}

/// With [telemetry], the access line names the request's trace (logs to traces), next to its
/// request id; the export may fail (nothing listens), the line is written all the same.
async fn trace_id_in_the_access_log(buf: &Buf, up: &Upstream) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [[routes]]\nprefix = \"/traced\"\nauth = \"none\"\nupstream = \"app\"\n\
         [telemetry]\notlp_endpoint = \"http://{closed}\"\n",
        up.url()
    ))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace}-00f067aa0ba902b7-01");
    let a = get(&client(), &gw.url("/traced/x"), &[("traceparent", &sent)]).await;
    assert_eq!(a.status, http::StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("\"path\":\"/traced/x\"") && l.contains("bearward::access"))
        .expect("an access line for /traced/x");
    assert!(
        line.contains(&format!("\"trace_id\":\"{trace}\"")),
        "{line}"
    );
    assert!(line.contains("\"request_id\":\""), "{line}");
}
