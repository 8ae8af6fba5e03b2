//! MCP servers behind bearward, with the official SDKs as the clients and the server: an MCP
//! server made with the Python SDK (`tests/mcp/server.py`, mcp 2.3.0), the Python SDK's client
//! (`tests/mcp/client.py`) and the TypeScript SDK's (`tests/interop/mcp-client.mjs`,
//! @modelcontextprotocol/sdk 1.32.2), and the tests' authorization server (oidc-provider), which
//! the clients find through bearward's RFC 9728 metadata and ask for tokens themselves.
//!
//! The route has `mcp` rules: `delete_repo` needs `repo:admin`, the prompt `grüße` (a name the
//! clients send base64-wrapped in `Mcp-Name`) `prompts:special`, `resources/read`
//! `files:read`, and everything `mcp`. The server logs every request it receives and every tool
//! it runs, so each test says what reached it and what ran.
//!
//! Needs `npm ci` in tests/interop and the Python SDK in tests/mcp/.py (`.ci/run` installs both).

mod common;

use common::provider::*;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SDK: &str = "tests/mcp/.py";

struct McpServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for McpServer {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl McpServer {
    async fn start() -> McpServer {
        assert!(
            Path::new(SDK).join("mcp").exists(),
            "{SDK} is missing: run `python3 -m pip install --target {SDK} -r tests/mcp/requirements.txt` (CI does)"
        );
        let dir = std::env::temp_dir().join(format!(
            "bearward-mcp-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("requests.jsonl");
        let (child, [port]) = spawn_holding("the MCP server (python3)", |[port]| {
            let mut cmd = Command::new("python3");
            cmd.arg("tests/mcp/server.py")
                .arg(port.to_string())
                .arg(&log)
                .env("PYTHONPATH", SDK)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        McpServer {
            child,
            port,
            log,
            _dir: TempDir(dir),
        }
    }

    /// Every request the server received, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every tool run, in order.
    fn ran(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.with_extension("jsonl.ran"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

struct Setup {
    p: Provider,
    server: McpServer,
    gw: Gateway,
    /// The MCP endpoint and its RFC 9728 resource identifier.
    url: String,
}

const RULES: &str = r#"{ tools = { delete_repo = ["repo:admin"] }, prompts = { "grüße" = ["prompts:special"] }, methods = { "resources/read" = ["files:read"] } }"#;

async fn setup() -> Option<Setup> {
    let p = start_provider()?;
    let server = McpServer::start().await;
    // The resource identifier is the URL the clients call, so its port is chosen first.
    let url = |port: u16| format!("http://127.0.0.1:{port}/mcp");
    let (port, gw) = Gateway::start_on_free_port(|port| {
        let (url, other) = (url(port), format!("http://127.0.0.1:{port}/other/mcp"));
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{url}", "{other}"]
algorithms = ["RS256"]

[upstreams.mcp]
url = "http://127.0.0.1:{mcp}"

[[routes]]
prefix = "/mcp"
upstream = "mcp"
scopes = ["mcp"]
resource = "{url}"
require_resource_audience = true
max_body_bytes = 70000
mcp = {RULES}
"#,
            issuer = p.issuer,
            mcp = server.port,
        )
    })
    .await;
    let url = url(port);
    wait_ready(&gw).await;
    Some(Setup { p, server, gw, url })
}

/// Runs the Python SDK client: `mode` is `auto` (2026-07-28) or `legacy`.
async fn python_client(s: &Setup, client: &str, secret: &str, mode: &str, ops: Value) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("tests/mcp/client.py").env("PYTHONPATH", SDK);
    run_client(cmd, s, [client, secret, mode], ops).await
}

/// Runs the TypeScript SDK client, configured with `scope`.
async fn node_client(s: &Setup, client: &str, secret: &str, scope: &str, ops: Value) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("tests/interop/mcp-client.mjs");
    run_client(cmd, s, [client, secret, scope], ops).await
}

/// A child the runtime waits on (bearward serves it from this test's runtime), and what it
/// printed.
async fn run_client(
    mut cmd: tokio::process::Command,
    s: &Setup,
    args: [&str; 3],
    ops: Value,
) -> Value {
    let [client, secret, last] = args;
    let out = cmd
        .args([&s.url, &s.p.issuer, client, secret, last, &ops.to_string()])
        .output()
        .await
        .expect("the client runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client printed no result ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The challenges of the 403s bearward answered, in order.
fn refusals(run: &Value) -> Vec<String> {
    run["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == 403)
        .map(|e| {
            e["www_authenticate"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn token_requests(run: &Value) -> Vec<u64> {
    run["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"].as_str().unwrap().ends_with("/token"))
        .map(|e| e["status"].as_u64().unwrap())
        .collect()
}

fn ops() -> Value {
    json!([
        ["tools"],
        ["call", "echo", {"text": "hi"}],
        ["call", "delete_repo", {"name": "r1"}],
        ["prompt", "grüße", {"who": "du"}],
        ["read", "file:///docs/a"]
    ])
}

fn assert_all_ok(run: &Value) {
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "{run:#}");
    assert!(results.iter().all(|r| r["ok"] == true), "{run:#}");
    assert_eq!(results[1]["value"], json!(["delete_repo", "echo"]));
    assert_eq!(results[2]["value"]["text"], json!(["hi"]));
    assert_eq!(results[3]["value"]["text"], json!(["deleted r1"]));
    assert_eq!(results[4]["value"], json!(["Grüße, du"]));
    assert_eq!(results[5]["value"], json!(["document a"]));
}

/// The Python SDK on a 2026-07-28 connection (Mcp-Method and Mcp-Name sent, the prompt's name
/// base64-wrapped): it starts with the route's scope, and each operation that needs more is
/// answered 403 naming everything it needs; the client asks the authorization server for the
/// union and the retry passes. Then the same on the initialize handshake, without the headers.
#[tokio::test]
async fn the_python_sdk_steps_up_per_tool_with_and_without_mcp_headers() {
    let Some(s) = setup().await else { return };
    let run = python_client(&s, "mcp-client", "mcp-secret", "auto", ops()).await;
    assert_eq!(run["results"][0]["protocol"], "2026-07-28", "{run:#}");
    assert_all_ok(&run);
    // One challenge per step, each naming the route's scope and the operation's, in order.
    assert_eq!(
        refusals(&run)
            .iter()
            .map(|w| w.split("scope=").last().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [
            "\"mcp repo:admin\"",
            "\"mcp prompts:special\"",
            "\"mcp files:read\""
        ],
        "{run:#}"
    );
    assert!(refusals(&run)
        .iter()
        .all(|w| w.contains("error=\"insufficient_scope\"")));
    // The first token (the 401's scope), then one per step-up.
    assert_eq!(token_requests(&run), [200, 200, 200, 200], "{run:#}");
    let seen = s.server.requests();
    let wrapped: Vec<&Value> = seen
        .iter()
        .filter(|r| r["body_method"] == "prompts/get")
        .collect();
    assert_eq!(
        wrapped.len(),
        1,
        "the refused prompts/get never reached the server: {seen:#?}"
    );
    assert_eq!(wrapped[0]["mcp_name"], "=?base64?Z3LDvMOfZQ==?=");
    assert_eq!(wrapped[0]["body_target"], "grüße");
    // Every request the server saw carried a token, and each refused one never arrived.
    assert!(seen.iter().all(|r| r["token"] == true), "{seen:#?}");
    let calls = |m: &str, t: &str| {
        seen.iter()
            .filter(|r| r["body_method"] == m && r["body_target"] == t)
            .count()
    };
    assert_eq!(calls("tools/call", "delete_repo"), 1);
    assert_eq!(calls("resources/read", "file:///docs/a"), 1);
    assert!(seen
        .iter()
        .filter(|r| r["method"] == "POST" && r["body_method"] != "server/discover")
        .any(|r| r["mcp_method"].is_string()));
    assert_eq!(s.server.ran(), ["echo hi", "delete_repo r1"]);

    let before = seen.len();
    let run = python_client(&s, "mcp-client", "mcp-secret", "legacy", ops()).await;
    assert_eq!(run["results"][0]["protocol"], "2025-11-25", "{run:#}");
    assert_all_ok(&run);
    assert_eq!(refusals(&run).len(), 3, "{run:#}");
    let seen = s.server.requests();
    let legacy = &seen[before..];
    assert!(legacy
        .iter()
        .all(|r| r["mcp_method"].is_null() && r["mcp_name"].is_null()));
    // The SSE stream (GET) and the session's end (DELETE) need the route's scope only.
    assert!(legacy.iter().any(|r| r["method"] == "GET"), "{legacy:#?}");
    assert!(
        legacy.iter().any(|r| r["method"] == "DELETE"),
        "{legacy:#?}"
    );
    assert_eq!(s.server.ran().len(), 4);

    let metrics = metrics_text(&s.gw).await;
    for (labels, at_least) in [
        (
            "method=\"tools/call\",name=\"delete_repo\",decision=\"deny\"",
            2.0,
        ),
        (
            "method=\"tools/call\",name=\"delete_repo\",decision=\"allow\"",
            2.0,
        ),
        (
            "method=\"tools/call\",name=\"other\",decision=\"allow\"",
            2.0,
        ),
        (
            "method=\"prompts/get\",name=\"grüße\",decision=\"allow\"",
            2.0,
        ),
    ] {
        let n = metric(
            &metrics,
            &format!("bearward_mcp_requests_total{{route=\"/mcp*\",{labels}}}"),
        );
        assert!(n >= at_least, "{labels}: {n}\n{metrics}");
    }
}

/// A client the authorization server will not give `repo:admin`: its step-up fails at the token
/// endpoint and the call ends in an error, once, without a loop; the tool never ran.
#[tokio::test]
async fn a_client_that_cannot_get_the_scope_ends_in_an_error_and_the_tool_never_runs() {
    let Some(s) = setup().await else { return };
    let ops = json!([["call", "echo", {"text": "a"}], ["call", "delete_repo", {"name": "r2"}]]);
    let run = python_client(
        &s,
        "mcp-limited-client",
        "mcp-limited-secret",
        "legacy",
        ops,
    )
    .await;
    let results = run["results"].as_array().unwrap();
    assert_eq!(results[1]["ok"], true, "{run:#}");
    assert_eq!(results[2]["ok"], false, "{run:#}");
    assert_eq!(refusals(&run), ["Bearer realm=\"bearward\", resource_metadata=\"".to_owned() + &s.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp") + "\", error=\"insufficient_scope\", error_description=\"insufficient scope\", scope=\"mcp repo:admin\""]);
    // The first token, then the refused step-up: no second try.
    assert_eq!(token_requests(&run), [200, 400], "{run:#}");
    assert_eq!(s.server.ran(), ["echo a"]);
    assert!(s
        .server
        .requests()
        .iter()
        .all(|r| r["body_target"] != "delete_repo"));
}

/// The TypeScript SDK never sends Mcp-Method or Mcp-Name, and its client-credentials flow asks
/// for the scopes it is configured with: given them all, every operation passes first time.
#[tokio::test]
async fn the_typescript_sdk_calls_every_operation_with_its_configured_scopes() {
    let Some(s) = setup().await else { return };
    let scope = "mcp repo:admin files:read prompts:special";
    let run = node_client(&s, "mcp-client", "mcp-secret", scope, ops()).await;
    assert_all_ok(&run);
    assert!(refusals(&run).is_empty(), "{run:#}");
    let seen = s.server.requests();
    assert!(seen.iter().all(|r| r["mcp_method"].is_null()), "{seen:#?}");
    assert_eq!(s.server.ran(), ["echo hi", "delete_repo r1"]);

    // Configured without the tool's scope: refused, and the tool never ran.
    let run = node_client(
        &s,
        "mcp-client",
        "mcp-secret",
        "mcp",
        json!([["call", "delete_repo", {"name": "r3"}]]),
    )
    .await;
    assert_eq!(run["results"][1]["ok"], false, "{run:#}");
    assert_eq!(s.server.ran().len(), 2);
}

/// An initialized legacy session straight to the server, as a client that skips bearward would
/// have: the session id.
async fn legacy_session(port: u16) -> String {
    let client = client();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let a = mcp_post(&client, &url, None, &[], init.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let session = a.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let a = mcp_post(
        &client,
        &url,
        None,
        &[("mcp-session-id", &session)],
        done.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    session
}

async fn mcp_post(
    client: &HttpClient,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: String,
) -> Answer {
    let mut all = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
        ("mcp-protocol-version", "2025-06-18".to_owned()),
    ];
    if let Some(t) = token {
        all.push(("authorization", format!("Bearer {t}")));
    }
    let mut h: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.extend_from_slice(headers);
    send(client, "POST", url, &h, &body).await
}

/// Headers that name a harmless tool over a body that calls another: the server on an older
/// request format does not compare them (shown straight to it: the tool runs), bearward
/// refuses before the server sees anything, on either format. So do a body that is not one
/// JSON-RPC message, one over the route's limit, and a token minted for another resource.
#[tokio::test]
async fn what_bearward_refuses_never_reaches_the_server() {
    let Some(s) = setup().await else { return };
    let client = client();
    let token = s.p.client_credentials("mcp-client", "mcp", &s.url).await;
    let session = legacy_session(s.server.port).await;
    let spoof = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "delete_repo", "arguments": {"name": "spoofed"}}})
    .to_string();
    let lie = [
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("mcp-session-id", session.as_str()),
    ];

    // Straight to the server: the older format's headers are not compared, and the tool runs.
    let direct = format!("http://127.0.0.1:{}/mcp", s.server.port);
    let a = mcp_post(&client, &direct, None, &lie, spoof.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(s.server.ran(), ["delete_repo spoofed"]);
    let before = s.server.requests().len();

    // Through bearward: refused, in the older format and in the 2026-07-28 one.
    let modern = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "delete_repo", "arguments": {"name": "spoofed"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    for body in [&spoof, &modern] {
        let a = mcp_post(&client, &s.url, Some(&token), &lie, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    }
    // Headers agreeing with the body: then the tool's scope decides.
    let honest = [
        ("mcp-method", "tools/call"),
        ("mcp-name", "delete_repo"),
        ("mcp-session-id", session.as_str()),
    ];
    let a = mcp_post(&client, &s.url, Some(&token), &honest, spoof.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(www.ends_with("scope=\"mcp repo:admin\""), "{www}");

    let sid = [("mcp-session-id", session.as_str())];
    for (body, status) in [
        ("{\"jsonrpc\":\"2.0\"".to_owned(), StatusCode::BAD_REQUEST),
        (format!("[{spoof}]"), StatusCode::BAD_REQUEST),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"name\":\"delete_repo\"}}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x".repeat(80_000)}}})
            .to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let a = mcp_post(&client, &s.url, Some(&token), &sid, body).await;
        assert_eq!(a.status, status, "{}", a.body);
    }

    // RFC 8707: a token for another resource of the same issuer.
    let other =
        s.p.client_credentials("mcp-client", "mcp", &s.url.replace("/mcp", "/other/mcp"))
            .await;
    let list = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}).to_string();
    let a = mcp_post(&client, &s.url, Some(&other), &sid, list.clone()).await;
    assert_invalid_token(&a, "a token for another resource");

    assert_eq!(
        s.server.requests().len(),
        before,
        "{:#?}",
        s.server.requests()
    );
    assert_eq!(s.server.ran(), ["delete_repo spoofed"]);

    // And an honest call with the right token passes, through the same session.
    let a = mcp_post(&client, &s.url, Some(&token), &sid, list).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("delete_repo"), "{}", a.body);
}

async fn metrics_text(gw: &Gateway) -> String {
    let admin = gw.admin.unwrap();
    get(&client(), &format!("http://{admin}/metrics"), &[])
        .await
        .body
}
