//! The real OpenID provider of the interop tests: oidc-provider 9.x (`tests/interop/`), started
//! with node on loopback, with bearward configs pointed at it and the calls the tests make to it
//! (token grants, its admin hooks, revocation).

use super::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) const API: &str = "http://api.bearward.test/api";
pub(crate) const OTHER_API: &str = "http://other.bearward.test/api";

pub(crate) struct Provider {
    pub(crate) child: Child,
    pub(crate) issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

pub(crate) fn node_present() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts oidc-provider; `None` only when node itself is missing.
pub(crate) fn start_provider() -> Option<Provider> {
    if !node_present() {
        eprintln!("\n*** interop tests NOT RUN: node is not installed ***\n");
        return None;
    }
    assert!(
        std::path::Path::new("tests/interop/node_modules/oidc-provider").exists(),
        "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` (CI does)"
    );
    let mut child = own_group(&mut Command::new("node"))
        .arg("tests/interop/provider.mjs")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    // The ready line is awaited with a bound: a provider that hangs while starting fails the
    // test instead of hanging the whole run.
    let out = BufReader::new(child.stdout.take().unwrap());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = out.lines().map_while(Result::ok);
        let _ = ready_tx.send(lines.next().unwrap_or_default());
        // Keep draining: the provider may log to stdout, and a closed pipe would kill it (EPIPE).
        for l in lines {
            eprintln!("[provider] {l}");
        }
    });
    let Ok(line) = ready_rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the provider printed no ready line within 60 s");
    };
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("provider did not start: {line:?}: {e}"));
    Some(Provider {
        child,
        issuer: v["issuer"].as_str().unwrap().to_owned(),
    })
}

pub(crate) async fn post(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
    json_body: Option<&Value>,
) -> (StatusCode, Value) {
    post_with(url, auth, form, json_body, &[]).await
}

/// [`post`] with extra request headers (a DPoP proof, a client certificate).
pub(crate) async fn post_with(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
    json_body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let client = client();
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match json_body {
        Some(j) => {
            req = req.header("content-type", "application/json");
            j.to_string()
        }
        None => {
            req = req.header("content-type", "application/x-www-form-urlencoded");
            form.iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&")
        }
    };
    if let Some((id, secret)) = auth {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        req = req.header("authorization", format!("Basic {b}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Provider {
    pub(crate) async fn client_credentials(
        &self,
        client: &str,
        scope: &str,
        resource: &str,
    ) -> String {
        let secret = client.replace("-client", "-secret");
        let (status, body) = post(
            &format!("{}/token", self.issuer),
            Some((client, &secret)),
            &[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn admin(&self, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = post(
            &format!("{}/__admin/{path}", self.issuer),
            None,
            &[],
            body.or(Some(&Value::Null)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    }

    pub(crate) async fn jwks_hits(&self) -> u64 {
        let a = get(&client(), &format!("{}/__admin/stats", self.issuer), &[]).await;
        serde_json::from_str::<Value>(&a.body).unwrap()["jwks_hits"]
            .as_u64()
            .unwrap()
    }
}

pub(crate) fn config(up: &Upstream, issuer: &str, algorithms: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{API}"]
algorithms = {algorithms}
leeway = "0s"
{extra}

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes", client_id = "X-Auth-Client" }}

[[routes]]
prefix = "/api/read"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"
"#,
        up.url()
    )
}

pub(crate) async fn start(p: &Provider, algorithms: &str, extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &p.issuer, algorithms, extra)).await;
    wait_ready(&gw).await;
    (up, gw)
}

pub(crate) async fn call(gw: &Gateway, path: &str, token: &str) -> Answer {
    get(
        &client(),
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

pub(crate) fn assert_invalid_token(a: &Answer, why: &str) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(www.contains("error=\"invalid_token\""), "{why}: {www}");
}

// Opaque tokens (RFC 7662): oidc-provider issues opaque access tokens for OPAQUE_API and
// answers introspection; bearward finds the endpoint by discovery and authenticates as the
// resource server `bearward-rs` (client_secret_basic).

pub(crate) const OPAQUE_API: &str = "http://opaque.bearward.test/api";

pub(crate) async fn start_opaque(p: &Provider, extra: &str) -> (Upstream, Gateway) {
    std::env::set_var("BEARWARD_INTEROP_RS_SECRET", "bearward-rs-secret");
    let up = Upstream::start().await;
    let cfg = config(
        &up,
        &p.issuer,
        "[\"RS256\"]",
        &format!(
            "token_format = \"auto\"\nintrospection = true\nintrospection_client_id = \"bearward-rs\"\nintrospection_client_secret_env = \"BEARWARD_INTEROP_RS_SECRET\"\n{extra}"
        ),
    )
    .replace(
        &format!("audiences = [\"{API}\"]"),
        &format!("audiences = [\"{API}\", \"{OPAQUE_API}\"]"),
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    (up, gw)
}

impl Provider {
    pub(crate) async fn introspections(&self) -> u64 {
        let a = get(&client(), &format!("{}/__admin/stats", self.issuer), &[]).await;
        serde_json::from_str::<Value>(&a.body).unwrap()["introspections"]
            .as_u64()
            .unwrap()
    }

    /// RFC 7009 revocation by the client the token was issued to.
    pub(crate) async fn revoke(&self, token: &str, client: (&str, &str)) {
        let (status, body) = post(
            &format!("{}/token/revocation", self.issuer),
            Some(client),
            &[("token", token)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "revocation: {body}");
    }
}
