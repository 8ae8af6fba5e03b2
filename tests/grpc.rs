//! gRPC end to end: a real grpcio server behind bearward and a real grpcio client in front
//! (`tests/grpc/service.py`; grpcio rather than tonic because it is gRPC's reference C core,
//! costs no build time here, and is what most legacy gRPC services run on).
//!
//! Over h2c (client -> bearward -> upstream in cleartext HTTP/2) and over TLS (bearward's
//! listener with TLS and `protocol = "h2"` to a TLS upstream): unary and server-streaming
//! calls pass with the right scope; no token is UNAUTHENTICATED with the challenge; another
//! scope PERMISSION_DENIED; the upstream's own status, message and trailers arrive intact; a
//! 20 MB client-streaming upload is streamed (this process's RSS, bearward's included, is
//! sampled throughout); and with the upstream sending GOAWAY every 300 ms, 600 calls all pass
//! and each reaches it exactly once.

mod common;

use common::idp::*;
use common::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const FIX: &str = "tests/fixtures/tls";

struct GrpcServer {
    /// Killed when dropped.
    _child: tokio::process::Child,
    port: u16,
}

async fn grpc_server(extra: &[&str]) -> GrpcServer {
    let mut child = tokio::process::Command::new("python3")
        .arg("tests/grpc/service.py")
        .arg("serve")
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the gRPC server started")
        .unwrap()
        .expect("a PORT line (is grpcio installed? .ci/run installs it)");
    let port = line.strip_prefix("PORT ").unwrap().parse().unwrap();
    GrpcServer {
        _child: child,
        port,
    }
}

fn config(idp: &Idp, upstream: &str, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server_extra}

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[forward]
claim_headers = {{ sub = "X-Auth-Subject" }}

[upstreams.grpc]
{upstream}

[[routes]]
grpc_service = "test.Echo"
scopes = ["read"]
upstream = "grpc"
"#,
        issuer = idp.issuer()
    )
}

/// Runs the client's checks against `target`; returns its JSON answer.
async fn run_checks(target: &str, ca: Option<&str>, tokens: (&str, &str), calls: usize) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("tests/grpc/service.py").arg("check").arg(target);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = cmd
        .env("TOKEN_READ", tokens.0)
        .env("TOKEN_OTHER", tokens.1)
        .env("LOAD_CALLS", calls.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the client")
}

fn assert_checks(out: &Value, calls: usize) {
    assert_eq!(
        out["unary"],
        json!({"code": "OK", "reply": "hello", "trailer": "done", "subject": "grpc-user"}),
        "{out}"
    );
    assert_eq!(
        out["stream"],
        json!({"code": "OK", "count": 50, "last": "m49"})
    );
    assert_eq!(out["no_token"]["code"], "UNAUTHENTICATED", "{out}");
    assert!(
        out["no_token"]["www_authenticate"]
            .as_str()
            .is_some_and(|w| w.starts_with("Bearer")),
        "the challenge reaches the client: {out}"
    );
    assert_eq!(out["wrong_scope"]["code"], "PERMISSION_DENIED", "{out}");
    assert!(out["wrong_scope"]["www_authenticate"]
        .as_str()
        .is_some_and(|w| w.contains("insufficient_scope")));
    assert_eq!(
        out["upstream_error"],
        json!({"code": "NOT_FOUND", "details": "no such thing", "why": "test"}),
        "the upstream's status, message and trailers arrive intact"
    );
    assert_eq!(out["upload"]["code"], "OK", "{out}");
    assert_eq!(out["upload"]["reply"], (20 * 1024 * 1024).to_string());
    if calls > 0 {
        assert_eq!(out["load"]["codes"], json!({"OK": calls}), "{out}");
        assert_eq!(
            out["load"]["upstream_calls"], calls,
            "each call reached the upstream once"
        );
    }
}

fn tokens(idp: &Idp, key: &Key) -> (String, String) {
    let mint = idp.minter("https://api.test");
    let with = |scope: &'static str| {
        mint.token_claims(key, move |cl| {
            cl.insert("sub".into(), json!("grpc-user"));
            cl.insert("scope".into(), json!(scope));
        })
    };
    (with("read"), with("write"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_and_tls() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let (read, other) = tokens(&idp, &key);

    // h2c both sides; the upstream sends GOAWAY on every connection 300 ms old.
    let server = grpc_server(&["--max-age-ms", "300"]).await;
    let upstream = format!(
        "url = \"http://127.0.0.1:{}\"\nprotocol = \"h2c\"",
        server.port
    );
    let gw = Gateway::start(&config(&idp, &upstream, "")).await;
    wait_ready(&gw).await;
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let out = run_checks(&gw.addr.to_string(), None, (&read, &other), 600).await;
    sampling.abort();
    eprintln!("h2c: {out}");
    assert_checks(&out, 600);
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("RSS grew {grown} KiB during the checks");
    assert!(
        grown < 12 * 1024,
        "a 20 MB upload was streamed, not gathered: RSS grew {grown} KiB"
    );
    drop(server);

    // TLS both sides: bearward's listener, and h2 (ALPN) to a TLS upstream.
    let server = grpc_server(&[
        "--tls",
        &format!("{FIX}/server.pem"),
        &format!("{FIX}/server-key.pem"),
    ])
    .await;
    let upstream = format!(
        "url = \"https://localhost:{}\"\nprotocol = \"h2\"\ntls_ca_file = \"{FIX}/ca.pem\"",
        server.port
    );
    let listener =
        format!("tls_cert_file = \"{FIX}/server.pem\"\ntls_key_file = \"{FIX}/server-key.pem\"");
    let gw = Gateway::start(&config(&idp, &upstream, &listener)).await;
    wait_ready(&gw).await;
    let out = run_checks(
        &format!("localhost:{}", gw.addr.port()),
        Some(&format!("{FIX}/ca.pem")),
        (&read, &other),
        0,
    )
    .await;
    assert_checks(&out, 0);
    drop(server);
}

/// `service.py health|count|calls`: one JSON answer.
async fn control(args: &[&str], token: Option<&str>) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("tests/grpc/service.py").args(args);
    if let Some(t) = token {
        cmd.env("TOKEN_READ", t);
    }
    let out = cmd.kill_on_drop(true).output().await.expect("python3");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the client")
}

/// Two real grpcio instances behind one `h2c` upstream: calls spread over both; with
/// `health_check = { grpc_service = "test.Echo" }`, an instance whose gRPC health says
/// NOT_SERVING (while it still serves calls) leaves the rotation, and comes back once it says
/// SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_takes_an_instance_out_and_back() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let (read, _) = tokens(&idp, &key);
    let (a, b) = (grpc_server(&[]).await, grpc_server(&[]).await);
    let upstream = format!(
        "url = \"http://127.0.0.1:{}\"\nprotocol = \"h2c\"\n\
         endpoints = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
         health_check = {{ grpc_service = \"test.Echo\", interval = \"200ms\", timeout = \"200ms\", \
         unhealthy_threshold = 1, healthy_threshold = 1 }}",
        a.port, a.port, b.port
    );
    let gw = Gateway::start(&config(&idp, &upstream, "")).await;
    wait_ready(&gw).await;
    let target = gw.addr.to_string();
    let (at_a, at_b) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );
    // Each instance's calls so far, less the asking calls (each asking call counts itself).
    let asked = std::sync::atomic::AtomicU64::new(0);
    let counts = || async {
        let n = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let a = control(&["count", &at_a], None).await["count"]
            .as_u64()
            .unwrap();
        let b = control(&["count", &at_b], None).await["count"]
            .as_u64()
            .unwrap();
        (a - n, b - n)
    };
    let calls = |n: &'static str| {
        let (target, read) = (target.clone(), read.clone());
        async move { control(&["calls", &target, n], Some(&read)).await }
    };
    let healthy = |want: f64| {
        let (gw, at_b) = (&gw, at_b.clone());
        async move {
            let waited = std::time::Instant::now();
            loop {
                let m = gw.metrics().await;
                let series = format!(
                    "bearward_upstream_endpoint_healthy{{upstream=\"grpc\",endpoint=\"{at_b}\"}}"
                );
                if metric(&m, &series) == want {
                    return m;
                }
                assert!(
                    waited.elapsed() < Duration::from_secs(10),
                    "never {want}: {m}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    healthy(1.0).await;
    let before = counts().await;
    assert_eq!(calls("20").await, json!({"OK": 20}));
    let after = counts().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (10, 10), "spread");

    control(&["health", &at_b, "test.Echo", "NOT_SERVING"], None).await;
    let m = healthy(0.0).await;
    let failed = format!("bearward_upstream_health_check_failures_total{{upstream=\"grpc\",endpoint=\"{at_b}\",reason=\"grpc_not_serving\"}}");
    assert!(metric(&m, &failed) >= 1.0, "{m}");
    let before = counts().await;
    assert_eq!(calls("20").await, json!({"OK": 20}));
    let after = counts().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (20, 0), "b out");

    control(&["health", &at_b, "test.Echo", "SERVING"], None).await;
    healthy(1.0).await;
    let before = counts().await;
    assert_eq!(calls("20").await, json!({"OK": 20}));
    let after = counts().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (10, 10), "b back");
}
