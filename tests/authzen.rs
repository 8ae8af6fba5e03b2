//! `authzen` (issue 39 part 2): routes asking an OpenID AuthZEN 1.0 policy decision point, here
//! a PDP written to the spec's text (tests/authzen/pdp.py) holding the interop's API gateway
//! scenario, with the scenario's own expected decisions (tests/authzen/decisions.json) as
//! fixtures; cached answers, single flight, the token's `exp`, replicas sharing answers through
//! Redis, and a PDP that is slow, down, or answers nonsense.

mod common;

use common::idp::*;
use common::redis::Redis;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// The PDP as a child process, killed with the test.
struct Pdp {
    server: PyServer,
    mtls: bool,
}

impl Pdp {
    async fn start(mode: &str) -> Pdp {
        Pdp::start_with(mode, &[]).await
    }

    async fn start_with(mode: &str, extra: &[&str]) -> Pdp {
        let mut args = vec!["--mode", mode, "--token", "pdp-secret"];
        args.extend_from_slice(extra);
        Pdp {
            server: PyServer::start("tests/authzen/pdp.py", &args).await,
            mtls: extra.contains(&"--mtls"),
        }
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    async fn stats(&self) -> Value {
        if self.mtls {
            return self.server.mtls_stats().await;
        }
        let url = format!("http://127.0.0.1:{}/stats", self.port());
        serde_json::from_str(&get(&client(), &url, &[]).await.body).unwrap()
    }

    async fn evaluations(&self) -> u64 {
        self.stats().await["evaluations"].as_u64().unwrap()
    }
}

/// The PDP's bearer token: a fixture, read by every test's bearward (never rewritten, so tests in
/// parallel cannot read it half-written).
const TOKEN_FILE: &str = "tests/fixtures/pdp-token";

fn config(up: &Upstream, pdp_port: u16, extra_pdp: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra_server}

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["todo"]

[authzen.todo]
url = "http://127.0.0.1:{pdp_port}"
bearer_token_file = "{token}"
timeout = "500ms"
{extra_pdp}

[upstreams.app]
url = "{up}"

[[routes]]
path = "/users/{{userId}}"
methods = ["GET"]
authzen = "todo"
upstream = "app"

[[routes]]
path = "/todos"
methods = ["GET", "POST"]
authzen = "todo"
upstream = "app"

[[routes]]
path = "/todos/{{todoId}}"
methods = ["PUT", "DELETE"]
authzen = {{ pdp = "todo", reason_to_client = true, context = ["client_ip", "time"] }}
upstream = "app"
"#,
        token = TOKEN_FILE,
        up = up.url()
    )
}

fn token_for(sub: &str, exp_in: i64) -> String {
    Minter {
        issuer: "https://idp.test".into(),
        audience: "todo".into(),
    }
    .token_claims(&Key::rsa1(), |cl| {
        cl.insert("sub".into(), json!(sub));
        cl.insert("exp".into(), json!(now() + exp_in));
    })
}

async fn call(gw: &Gateway, method: &str, path: &str, token: &str) -> Answer {
    send(
        &client(),
        method,
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

/// Every case of the interop's API gateway scenario, decided as the scenario expects; what the
/// PDP was asked is the scenario's payload; nothing refused reaches the upstream.
#[tokio::test]
async fn the_interop_scenario_decides_as_expected() {
    let pdp = Pdp::start("normal").await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, pdp.port(), "", "")).await;
    let fixtures: Value =
        serde_json::from_str(&std::fs::read_to_string("tests/authzen/decisions.json").unwrap())
            .unwrap();
    let cases = fixtures["evaluation"].as_array().unwrap();
    assert_eq!(cases.len(), 25);
    let (mut allowed, mut denied) = (0, 0);
    for case in cases {
        let q = &case["request"];
        let expected = case["expected"].as_bool().unwrap();
        let sub = q["subject"]["id"].as_str().unwrap();
        let method = q["action"]["name"].as_str().unwrap();
        let route = q["resource"]["id"].as_str().unwrap();
        let path = route
            .replace("{userId}", "rick%40the-citadel.com")
            .replace("{todoId}", "7");
        let seen = up.count();
        let before = pdp.evaluations().await;
        let a = call(&gw, method, &path, &token_for(sub, 600)).await;
        if expected {
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{method} {path} for {sub}: {}",
                a.body
            );
            assert_eq!(up.count(), seen + 1);
            allowed += 1;
        } else {
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path} for {sub}");
            assert!(a.body.contains("pdp_denied"), "{}", a.body);
            assert!(a.headers.get("www-authenticate").is_none());
            assert_eq!(up.count(), seen, "a denied request reached the upstream");
            // The PDP's reason_user only where the route passes it on.
            assert_eq!(
                a.body.contains("Your role cannot do this."),
                route == "/todos/{todoId}",
                "{}",
                a.body
            );
            denied += 1;
        }
        // Asked once per new (subject, action, resource), with the scenario's payload.
        let stats = pdp.stats().await;
        if stats["evaluations"].as_u64().unwrap() > before {
            let last = &stats["last"];
            assert_eq!(last["subject"], json!({"type": "identity", "id": sub}));
            assert_eq!(last["action"], json!({"name": method}));
            assert_eq!(last["resource"], json!({"type": "route", "id": route}));
            assert_eq!(stats["headers"]["authorization"], "Bearer pdp-secret");
            assert_eq!(stats["headers"]["content-type"], "application/json");
            assert_eq!(stats["path"], "/access/v1/evaluation");
            if route == "/todos/{todoId}" {
                assert_eq!(last["context"]["client_ip"], "127.0.0.1");
                assert!(last["context"]["time"].as_str().unwrap().ends_with('Z'));
            } else {
                assert!(last.get("context").is_none(), "{last}");
            }
        }
    }
    assert_eq!((allowed, denied), (19, 6));
    // A token without the subject's claim has nothing to ask about.
    let no_sub = Minter {
        issuer: "https://idp.test".into(),
        audience: "todo".into(),
    }
    .token_claims(&Key::rsa1(), |cl| {
        cl.remove("sub");
    });
    let a = call(&gw, "GET", "/todos", &no_sub).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("pdp_no_subject"), "{}", a.body);
    let m = metrics_after_close(&gw).await;
    assert!(m.contains("reason=\"pdp_denied\""), "{m}");
    assert!(
        m.contains("bearward_authzen_calls_total{pdp=\"todo\",outcome=\"allow\"}"),
        "{m}"
    );
    assert!(
        m.contains("bearward_authzen_calls_total{pdp=\"todo\",outcome=\"deny\"}"),
        "{m}"
    );
}

/// A burst of the same question asks once; the answer then serves until its time (never past
/// the token's `exp`); another question asks again.
#[tokio::test]
async fn answers_are_kept_and_a_burst_asks_once() {
    let pdp = Pdp::start("normal").await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, pdp.port(), "cache_ttl = \"60s\"", "")).await;
    let morty = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let t = token_for(morty, 600);
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (gw_url, t) = (gw.url("/todos"), t.clone());
            tokio::spawn(async move {
                get(
                    &client(),
                    &gw_url,
                    &[("authorization", &format!("Bearer {t}"))],
                )
                .await
                .status
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(pdp.evaluations().await, 1, "50 at once asked once");
    for _ in 0..50 {
        assert_eq!(call(&gw, "GET", "/todos", &t).await.status, StatusCode::OK);
    }
    assert_eq!(pdp.evaluations().await, 1, "then answered from the cache");
    assert_eq!(call(&gw, "POST", "/todos", &t).await.status, StatusCode::OK);
    assert_eq!(
        pdp.evaluations().await,
        2,
        "another action is another question"
    );

    // A token that expires in 2 s: its answer is kept 2 s, not the 60 s of cache_ttl (the
    // issuer's leeway still takes the token for a while after).
    let short = token_for(
        "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
        2,
    );
    assert_eq!(
        call(&gw, "GET", "/todos", &short).await.status,
        StatusCode::OK
    );
    assert_eq!(pdp.evaluations().await, 3);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        call(&gw, "GET", "/todos", &short).await.status,
        StatusCode::OK
    );
    assert_eq!(
        pdp.evaluations().await,
        4,
        "asked again once the token's exp passed"
    );
    let m = metrics_after_close(&gw).await;
    assert!(
        m.contains(
            "bearward_authzen_cache_lookups_total{pdp=\"todo\",layer=\"process\",outcome=\"hit\"}"
        ),
        "{m}"
    );
}

/// Fail closed: a PDP that is slow, down, failing or answering something else than a decision
/// gets 503 with Retry-After, counted; nothing reaches the upstream; /readyz names it.
#[tokio::test]
async fn a_pdp_that_cannot_answer_refuses_with_503() {
    let up = Upstream::start().await;
    let rick = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let t = token_for(rick, 600);
    for (mode, outcome) in [
        ("slow", "timeout"),
        ("malformed", "invalid_answer"),
        ("http_error", "http_error"),
        ("down", "unreachable"),
    ] {
        let pdp = if mode == "down" {
            None
        } else {
            Some(Pdp::start(mode).await)
        };
        let closed = ClosedPort::new();
        let port = pdp.as_ref().map_or(closed.port, Pdp::port);
        let gw = Gateway::start(&config(&up, port, "", "")).await;
        let seen = up.count();
        let a = call(&gw, "GET", "/todos", &t).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{mode}: {}",
            a.body
        );
        assert_eq!(a.headers["retry-after"], "5", "{mode}");
        assert!(a.body.contains("pdp_unavailable"), "{mode}: {}", a.body);
        assert_eq!(up.count(), seen, "{mode}: the upstream was reached");
        let m = metrics_after_close(&gw).await;
        assert!(
            m.contains(&format!(
                "bearward_authzen_calls_total{{pdp=\"todo\",outcome=\"{outcome}\"}}"
            )),
            "{mode}: {m}"
        );
        assert!(m.contains("reason=\"pdp_unavailable\""), "{m}");
        let ready = get(
            &client(),
            &format!("http://{}/readyz", gw.admin.unwrap()),
            &[],
        )
        .await;
        assert!(
            ready.body.contains("authzen todo: failing"),
            "{mode}: {}",
            ready.body
        );
    }
}

/// `discover = true`: the endpoint comes from the PDP's metadata, whose
/// `policy_decision_point` must be the configured URL.
#[tokio::test]
async fn the_endpoint_can_come_from_the_pdps_metadata() {
    let pdp = Pdp::start("normal").await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, pdp.port(), "discover = true", "")).await;
    let t = token_for(
        "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
        600,
    );
    assert_eq!(call(&gw, "GET", "/todos", &t).await.status, StatusCode::OK);
    assert_eq!(pdp.stats().await["path"], "/pdp/v1/evaluate");

    // Metadata naming another PDP is not used (mix-up): no decision, 503.
    let other = format!("http://localhost:{}", pdp.port());
    let cfg = config(&up, pdp.port(), "discover = true", "").replace(
        &format!("url = \"http://127.0.0.1:{}\"", pdp.port()),
        &format!("url = \"{other}\""),
    );
    let gw = Gateway::start(&cfg).await;
    let a = call(&gw, "GET", "/todos", &t).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let m = metrics_after_close(&gw).await;
    assert!(m.contains("outcome=\"discovery_failed\""), "{m}");
}

/// A PDP on HTTPS that asks for a client certificate: bearward trusts its CA and presents
/// one; without the certificate there is no decision (503), never an allow.
#[tokio::test]
async fn a_pdp_behind_mtls() {
    let pdp = Pdp::start_with("normal", &["--mtls"]).await;
    let up = Upstream::start().await;
    let tls = "ca_file = \"tests/fixtures/tls/ca.pem\"";
    let cert = "client_cert_file = \"tests/fixtures/tls/client.pem\"\nclient_key_file = \"tests/fixtures/tls/client-key.pem\"";
    let https = |extra: &str| {
        config(&up, pdp.port(), extra, "").replace(
            &format!("url = \"http://127.0.0.1:{}\"", pdp.port()),
            &format!("url = \"https://127.0.0.1:{}\"", pdp.port()),
        )
    };
    let t = token_for(
        "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
        600,
    );
    let gw = Gateway::start(&https(&format!("{tls}\n{cert}"))).await;
    assert_eq!(call(&gw, "GET", "/todos", &t).await.status, StatusCode::OK);
    assert_eq!(pdp.evaluations().await, 1);
    let without = Gateway::start(&https(tls)).await;
    let a = call(&without, "POST", "/todos", &t).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(pdp.evaluations().await, 1, "the PDP refused the connection");
}

/// Two gateways asking `pdp`, sharing its answers through `redis` (sealed).
async fn sharing_replicas(redis: &Redis, pdp: &Pdp, up: &Upstream) -> (Gateway, Gateway) {
    let cache = format!(
        "[cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\nsecret_file = \"tests/fixtures/store-secret\"",
        redis.port
    );
    let cfg =
        config(up, pdp.port(), "", "").replace("[[issuers]]", &format!("{cache}\n\n[[issuers]]"));
    (Gateway::start(&cfg).await, Gateway::start(&cfg).await)
}

/// Two replicas with one Redis: the second takes the first's answer and asks nothing.
#[tokio::test]
async fn replicas_share_answers_through_the_store() {
    let redis = Redis::start();
    let pdp = Pdp::start("normal").await;
    let up = Upstream::start().await;
    let (a, b) = sharing_replicas(&redis, &pdp, &up).await;
    let morty = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let jerry = "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    assert_eq!(
        call(&a, "POST", "/todos", &token_for(morty, 600))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&a, "POST", "/todos", &token_for(jerry, 600))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(pdp.evaluations().await, 2);
    assert_eq!(
        call(&b, "POST", "/todos", &token_for(morty, 600))
            .await
            .status,
        StatusCode::OK
    );
    let denied = call(&b, "DELETE", "/todos/1", &token_for(jerry, 600)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&b, "POST", "/todos", &token_for(jerry, 600))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        pdp.evaluations().await,
        3,
        "b asked only the question a had not"
    );
    let m = metrics_after_close(&b).await;
    assert!(
        m.contains(
            "bearward_authzen_cache_lookups_total{pdp=\"todo\",layer=\"shared\",outcome=\"hit\"} 2"
        ),
        "{m}"
    );
}

/// A permit written into the store over a sealed deny (by anything else that can write to it)
/// is not taken: the replica asks the PDP again, and is told no.
#[tokio::test]
async fn a_permit_written_into_the_store_is_not_taken() {
    let redis = Redis::start();
    let pdp = Pdp::start("normal").await;
    let up = Upstream::start().await;
    let (a, b) = sharing_replicas(&redis, &pdp, &up).await;
    let jerry = "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let t = token_for(jerry, 600);
    assert_eq!(
        call(&a, "POST", "/todos", &t).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(pdp.evaluations().await, 1);
    let keys = redis.cli(&["--scan", "--pattern", "*authzen:*"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let until = common::idp::now() + 600;
    let permit = format!(r#"{{"decision":true,"reason":null,"until":{until}}}"#);
    assert_eq!(redis.cli(&["set", keys[0], &permit]).trim(), "OK");

    let seen = up.count();
    assert_eq!(
        call(&b, "POST", "/todos", &t).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(up.count(), seen, "the upstream was reached");
    assert_eq!(pdp.evaluations().await, 2, "b asked the PDP itself");
    let m = metrics_after_close(&b).await;
    assert!(
        m.contains(r#"bearward_shared_store_operations_total{op="open",outcome="forged"} 1"#),
        "{m}"
    );
}

#[test]
fn authzen_settings_are_checked_when_the_config_loads() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n\n[authzen.pdp]\nurl = \"http://127.0.0.1:9\"\n";
    let refused = |extra: &str| {
        bearward::config::Config::from_toml_str(&format!("{base}{extra}\n"), "t.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let route = |a: &str| {
        format!("\n[[routes]]\npath = \"/t/{{id}}\"\nupstream = \"app\"\nauthzen = {a}\n")
    };
    assert!(refused(&route("\"nope\"")).contains("no [authzen.nope] (defined: pdp)"));
    assert!(refused(&route(
        "{ pdp = \"pdp\", resource = { id = \"param:other\" } }"
    ))
    .contains("has no {other} segment"));
    assert!(
        refused(&route("{ pdp = \"pdp\", context = [\"weather\"] }"))
            .contains("context \"weather\"")
    );
    assert!(refused("cache_ttl = \"2h\"").contains("authzen.pdp.cache_ttl"));
    assert!(refused("client_id = \"x\"").contains("needs client_secret_file"));
    assert!(refused("discover = true\nevaluation_endpoint = \"http://x/e\"").contains("not both"));
    assert_eq!(
        refused(&route(
            "{ pdp = \"pdp\", resource = { type = \"todo\", id = \"param:id\" } }"
        )),
        ""
    );
    // A route with GET takes HEAD (routes' `methods`), and HEAD asks what GET asks, unless named.
    let names = |names: &str| {
        let text = format!(
            "{base}{}",
            route(&format!(
                "{{ pdp = \"pdp\", action = {{ names = {{ {names} }} }} }}"
            ))
        );
        let config = bearward::config::Config::from_toml_str(&text, "t.toml").unwrap();
        let ask = config.routes.routes()[0].authzen.clone().unwrap();
        ask.action_names.clone()
    };
    let n = names("GET = \"can_read\"");
    assert_eq!(n["HEAD"], "can_read");
    let n = names("GET = \"can_read\", HEAD = \"can_peek\"");
    assert_eq!(
        (n["GET"].as_str(), n["HEAD"].as_str()),
        ("can_read", "can_peek")
    );
    assert!(!names("PUT = \"can_write\"").contains_key("HEAD"));
}
