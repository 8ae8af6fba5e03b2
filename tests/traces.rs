//! OpenTelemetry traces through bearward, with a real OTLP receiver (tests/otlp/receiver.py:
//! the collector's TraceService from the OpenTelemetry protobuf definitions, over gRPC or
//! OTLP/HTTP): the client's trace continued, a client span per upstream exchange that the
//! upstream's `traceparent` names, refusals with their reason, parent-based sampling, and a
//! collector that is down or never answers costing requests nothing but dropped spans.

mod common;

use common::{
    basic_config, client, connect_and_send, get, metric, setup_with_slow_upstream, Gateway,
    Upstream,
};
use http::StatusCode;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        common::stop_group(&mut self.child);
    }
}

impl Receiver {
    fn start(mode: &str) -> Receiver {
        let mut cmd = Command::new("python3");
        cmd.args(["tests/otlp/receiver.py", mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = common::own_group(&mut cmd)
            .spawn()
            .expect("python3 with grpcio and opentelemetry-proto (.ci/run installs them)");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver starts").unwrap();
        let port = first
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver says where it listens: {first}"));
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let record = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver { child, port, spans }
    }

    /// The spans of a trace once there are `n` of them (at most 10 s).
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let found: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no {n} spans of {trace_id}: {:?}",
            self.spans.lock().unwrap()
        );
    }

    fn count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

fn telemetry(endpoint: &str, extra: &str) -> String {
    format!("\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n{extra}\n")
}

/// The trace and parent ids of a `traceparent`.
fn ids(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn the_clients_trace_continues_through_bearward_to_the_upstream() {
    for mode in ["grpc", "http"] {
        let rx = Receiver::start(mode);
        let up = Upstream::start().await;
        let endpoint = format!("http://127.0.0.1:{}", rx.port);
        let protocol = format!("otlp_protocol = \"{mode}\"\nservice_name = \"edge-auth\"");
        let cfg = basic_config(&up.url(), "") + &telemetry(&endpoint, &protocol);
        let gw = Gateway::start(&cfg).await;
        let c = client();
        let sent = format!("00-{TRACE}-{PARENT}-01");
        let a = get(
            &c,
            &gw.url("/public/a?x=1"),
            &[("traceparent", &sent), ("tracestate", "vendor=opaque")],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{mode}");
        let seen = up.last();
        let upstream_tp = seen.headers["traceparent"].to_str().unwrap().to_owned();
        let (trace, upstream_parent, flags) = ids(&upstream_tp);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{mode}");
        assert_ne!(
            upstream_parent, PARENT,
            "{mode}: the upstream's parent is bearward's span"
        );
        assert_eq!(seen.headers["tracestate"], "vendor=opaque", "{mode}");

        let spans = rx.trace(TRACE, 2).await;
        let server = spans
            .iter()
            .find(|s| s["kind"] == 2)
            .expect("a server span");
        let upstream = spans
            .iter()
            .find(|s| s["kind"] == 3)
            .expect("a client span");
        assert_eq!(server["parent_span_id"], PARENT, "{mode}: {server}");
        assert_eq!(upstream["parent_span_id"], server["span_id"], "{mode}");
        assert_eq!(upstream["span_id"], upstream_parent.as_str(), "{mode}");
        assert_eq!(server["name"], "GET /public*", "{mode}: {server}");
        let attrs = &server["attributes"];
        assert_eq!(attrs["http.request.method"], "GET");
        assert_eq!(attrs["http.response.status_code"], 200);
        assert_eq!(attrs["url.path"], "/public/a");
        assert_eq!(attrs["http.route"], "/public*");
        assert_eq!(attrs["bearward.decision"], "allow");
        assert_eq!(
            attrs["http.request.header.x-request-id"],
            a.headers["x-request-id"].to_str().unwrap()
        );
        assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
        assert_eq!(server["resource"]["service.name"], "edge-auth");
        assert!(server["end"].as_u64() >= server["start"].as_u64());
        // Nothing of a token in a span, ever (here there is none; the refusal test below sends
        // one).
    }
}

#[tokio::test]
async fn a_refusal_is_a_span_with_its_reason_and_no_upstream_call() {
    let rx = Receiver::start("grpc");
    let up = Upstream::start().await;
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let gw = Gateway::start(&(basic_config(&up.url(), "") + &telemetry(&endpoint, ""))).await;
    let c = client();
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtdG9rZW4tbWF0ZXJpYWwifQ.c2lnbmF0dXJl";
    let a = get(
        &c,
        &gw.url("/api/a"),
        &[
            ("traceparent", &sent),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 0);
    let spans = rx.trace(TRACE, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_now = rx.trace(TRACE, 1).await;
    assert_eq!(spans_now.len(), 1, "no client span: {spans_now:?}");
    let server = &spans[0];
    assert_eq!(server["attributes"]["bearward.decision"], "deny");
    assert_eq!(server["attributes"]["http.response.status_code"], 401);
    let reason = server["attributes"]["bearward.reason"].as_str().unwrap();
    assert!(!reason.is_empty() && reason != "ok", "{server}");
    // A 4xx is not a server error.
    assert_eq!(server["status_code"], 0, "{server}");
    let text = serde_json::to_string(&spans_now).unwrap();
    for part in token.split('.') {
        assert!(!text.contains(part), "token material in a span: {text}");
    }
}

#[tokio::test]
async fn sampling_is_parent_based_and_a_bad_traceparent_starts_a_new_trace() {
    let rx = Receiver::start("grpc");
    let up = Upstream::start().await;
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let cfg = basic_config(&up.url(), "") + &telemetry(&endpoint, "trace_sample_ratio = 0.0");
    let gw = Gateway::start(&cfg).await;
    let c = client();
    // No parent, ratio 0: not recorded, but the upstream still gets a traceparent (flags 00).
    let a = get(&c, &gw.url("/public/a"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let (root, _, flags) = ids(up.last().headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    // A sampled parent is kept whatever the ratio; an unsampled one is not.
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    get(&c, &gw.url("/public/b"), &[("traceparent", &sampled)]).await;
    let other = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = format!("00-{other}-{PARENT}-00");
    get(&c, &gw.url("/public/c"), &[("traceparent", &unsampled)]).await;
    assert_eq!(
        ids(up.last().headers["traceparent"].to_str().unwrap()).0,
        other
    );
    rx.trace(TRACE, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = rx.spans.lock().unwrap().clone();
    assert!(all.iter().all(|s| s["trace_id"] == TRACE), "{all:?}");
    assert!(!all.iter().any(|s| s["trace_id"] == root.as_str()));
    // Malformed, or two: a new trace, never a 4xx.
    for bad in [vec!["00-xyz"], vec![sampled.as_str(), sampled.as_str()]] {
        let headers: Vec<(&str, &str)> = bad.iter().map(|v| ("traceparent", *v)).collect();
        let a = get(&c, &gw.url("/public/d"), &headers).await;
        assert_eq!(a.status, StatusCode::OK);
        let (trace, _, _) = ids(up.last().headers["traceparent"].to_str().unwrap());
        assert_ne!(trace, TRACE);
    }
}

#[tokio::test]
async fn a_collector_down_or_silent_costs_requests_nothing_and_spans_are_counted_dropped() {
    let up = Upstream::start().await;
    // Down: nothing listens. Silent: accepts and never answers.
    let closed = common::ClosedPort::new();
    let down = closed.url();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let silent_port = silent.local_addr().unwrap().port().to_string();
    let _held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            kept.push(s);
        }
    });
    for (endpoint, protocol) in [
        (down, "grpc"),
        (silent_url.clone(), "grpc"),
        (silent_url, "http"),
    ] {
        let extra = format!(
            "otlp_protocol = \"{protocol}\"\notlp_timeout = \"500ms\"\nmax_queued_spans = 8"
        );
        let gw =
            Gateway::start(&(basic_config(&up.url(), "") + &telemetry(&endpoint, &extra))).await;
        let c = client();
        for i in 0..60 {
            let a = tokio::time::timeout(
                Duration::from_secs(2),
                get(&c, &gw.url(&format!("/public/{i}")), &[]),
            )
            .await
            .expect("a request is never held up by the collector");
            assert_eq!(a.status, StatusCode::OK);
        }
        // Every one of the 120 spans is dropped and counted: the batches sent fail (at once, or
        // past otlp_timeout), and while one is out, what the queue of 8 cannot hold.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
            .await
            .body;
        let full = metric(&m, "bearward_trace_spans_total{outcome=\"queue_full\"}");
        let failed = metric(&m, "bearward_trace_spans_total{outcome=\"export_failed\"}");
        assert_eq!(full + failed, 120.0, "{endpoint} {protocol}\n{m}");
        assert!(
            failed >= 8.0,
            "{endpoint} {protocol}: export_failed {failed}\n{m}"
        );
        if endpoint.ends_with(&silent_port) {
            assert!(full > 0.0, "{endpoint} {protocol}: queue_full {full}\n{m}");
        }
        assert_eq!(
            metric(&m, "bearward_trace_spans_total{outcome=\"exported\"}"),
            0.0
        );
    }
}

#[tokio::test]
async fn without_telemetry_the_clients_traceparent_passes_untouched() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    get(&client(), &gw.url("/public/a"), &[("traceparent", &sent)]).await;
    assert_eq!(up.last().headers["traceparent"], sent.as_str());
}

#[tokio::test]
async fn the_decision_answer_carries_bearwards_span_for_the_ingress() {
    let rx = Receiver::start("grpc");
    let up = Upstream::start().await;
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let (dport, _gw) = Gateway::start_on_free_port(|dport| {
        basic_config(&up.url(), "")
            + &format!("\n[decision]\nlisten = \"127.0.0.1:{dport}\"\ningress = \"nginx\"\n")
            + &telemetry(&endpoint, "")
    })
    .await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let a = get(
        &client(),
        &format!("http://127.0.0.1:{dport}/auth"),
        &[("x-original-uri", "/public/x"), ("traceparent", &sent)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let (trace, span, _) = ids(a.headers["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE);
    let spans = rx.trace(TRACE, 1).await;
    assert_eq!(spans[0]["span_id"], span.as_str());
    assert_eq!(spans[0]["attributes"]["bearward.mode"], "decision");
    assert_eq!(rx.count(), 1);
}

#[tokio::test]
async fn an_introspection_call_and_the_shared_store_are_spans_under_the_request() {
    std::env::set_var("BEARWARD_TEST_TRACE_SECRET", "s3cret");
    let rx = Receiver::start("grpc");
    // A real redis-server on a loopback port, for the shared-store spans.
    let store = common::redis::Redis::start();
    let ep = common::introspection::Endpoint::start().await;
    let up = Upstream::start().await;
    let issuer = "https://opaque.idp.test";
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[issuers]]\nissuer = \"{issuer}\"\n\
         token_format = \"opaque\"\nintrospection_endpoint = \"{}\"\n\
         introspection_client_id = \"bearward\"\n\
         introspection_client_secret_env = \"BEARWARD_TEST_TRACE_SECRET\"\n\
         audiences = [\"https://api.test\"]\n\n[upstreams.app]\nurl = \"{}\"\n\n\
         [[routes]]\nprefix = \"/api\"\nscopes = [\"read\"]\nupstream = \"app\"\n\n\
         [cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\n\
         secret_file = \"tests/fixtures/store-secret\"\n",
        ep.url(),
        up.url(),
        store.port
    ) + &telemetry(&format!("http://127.0.0.1:{}", rx.port), "");
    let gw = Gateway::start(&cfg).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ep.set(
        "opaque-traced",
        serde_json::json!({
            "active": true, "scope": "read", "sub": "user-7", "aud": "https://api.test",
            "iss": issuer, "exp": now + 300, "iat": now,
        }),
    );
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let a = get(
        &client(),
        &gw.url("/api/x"),
        &[
            ("traceparent", &sent),
            ("authorization", "Bearer opaque-traced"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // The server span, the introspection call, the store's lookup and its write, the upstream.
    let spans = rx.trace(TRACE, 5).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let store_spans: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["db.system.name"] == "redis")
        .collect();
    assert!(store_spans.len() >= 2, "{spans:?}");
    for s in &store_spans {
        assert_eq!(s["parent_span_id"], server["span_id"], "{s}");
        assert_eq!(s["status_code"], 0, "{s}");
    }
    assert_eq!(server["attributes"]["bearward.issuer"], issuer, "{server}");
    let call = spans
        .iter()
        .find(|s| s["name"] == "POST introspection")
        .expect("an introspection span");
    assert_eq!(call["parent_span_id"], server["span_id"]);
    assert_eq!(call["kind"], 3);
    assert_eq!(call["attributes"]["bearward.issuer"], issuer);
    assert_eq!(call["status_code"], 0, "{call}");
    assert!(!serde_json::to_string(&spans)
        .unwrap()
        .contains("opaque-traced"));
}

#[tokio::test]
async fn a_jwks_fetch_for_an_unknown_kid_is_a_span_under_the_request() {
    use common::idp::{Idp, Key};
    let rx = Receiver::start("grpc");
    let (rsa1, rsa2) = (Key::rsa1(), Key::rsa2());
    let idp = Idp::start(&[&rsa1]).await;
    let up = Upstream::start().await;
    let cfg = common::auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        + &telemetry(&format!("http://127.0.0.1:{}", rx.port), "");
    let gw = Gateway::start(&cfg).await;
    common::wait_ready(&gw).await;
    // Signed by a key the JWKS does not hold: bearward fetches the JWKS again, once, while
    // serving this request.
    let token = idp.minter("https://api.test").token(&rsa2, "read");
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let a = get(
        &client(),
        &gw.url("/api/read/x"),
        &[
            ("traceparent", &sent),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let spans = rx.trace(TRACE, 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let fetch = spans
        .iter()
        .find(|s| s["name"] == "GET jwks")
        .expect("a JWKS fetch span");
    assert_eq!(fetch["parent_span_id"], server["span_id"]);
    assert_eq!(fetch["attributes"]["http.request.method"], "GET");
    assert_eq!(server["attributes"]["bearward.reason"], "unknown_kid");
}

/// A client that gives up on a slow upstream: its server span ends when the connection closes,
/// with status 499 and reason `connection_closed`, not 2 s later when the upstream answers, and
/// the upstream exchange's client span ends with it.
#[tokio::test]
async fn a_client_that_goes_away_leaves_a_span_with_status_499() {
    let rx = Receiver::start("grpc");
    let (up, gw) = setup_with_slow_upstream(&format!(
        "\n{}",
        telemetry(&format!("http://127.0.0.1:{}", rx.port), "")
    ))
    .await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let head = format!(
        "GET /public/slow HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{trace}-{PARENT}-01\r\n\r\n"
    );
    let s = connect_and_send(gw.addr, head.as_bytes()).await;
    for _ in 0..100 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1, "the request reached the upstream");
    drop(s);
    let spans = rx.trace(trace, 2).await;
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    // The span the upstream's traceparent named ends too, as an error.
    let upstream_tp = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let upstream = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    assert_eq!(upstream["span_id"], ids(&upstream_tp).1.as_str());
    assert_eq!(upstream["parent_span_id"], server["span_id"]);
    assert_eq!(
        upstream["attributes"]["error.type"], "connection_closed",
        "{upstream}"
    );
    let attrs = &server["attributes"];
    assert_eq!(attrs["http.response.status_code"], 499, "{server}");
    assert_eq!(attrs["bearward.decision"], "error", "{server}");
    assert_eq!(attrs["bearward.reason"], "connection_closed", "{server}");
    assert_eq!(attrs["url.path"], "/public/slow", "{server}");
    let took = server["end"].as_u64().unwrap() - server["start"].as_u64().unwrap();
    assert!(
        took < 1_500_000_000,
        "the span ended when the upstream answered: {took} ns"
    );
}
