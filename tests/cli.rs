//! The `bearward` binary: `check` on broken configs, and a real SIGTERM drain.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/empty-jwks.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "http://127.0.0.1:3000"

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"#;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("bearward-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("c{}.toml", rand_suffix()));
    std::fs::File::create(&file)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A name no other check in this process uses: tests run in parallel, and two that wrote the
/// same file would read each other's config.
fn rand_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos}-{n}")
}

#[test]
fn good_config_passes() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(out.starts_with("OK:"), "{out}");
}

#[test]
fn shipped_example_config_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config", "config/bearward.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Each broken config: (what is broken, the replacement, text the message must contain).
#[test]
fn broken_configs_are_rejected_naming_the_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("typo in a route key", "scopes = [\"read\"]", "scoeps = [\"read\"]", "scoeps"),
        ("unknown top-level key", "[server]", "[sever]\nx=1\n[server]", "sever"),
        ("missing upstream", "upstream = \"app\"\nauth = \"none\"", "upstream = \"nope\"\nauth = \"none\"", "routes[0].upstream"),
        ("bad duration", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nleeway = \"thirty\"", "issuers[0].leeway"),
        ("non-canonical prefix", "prefix = \"/public\"", "prefix = \"/public/../x\"", "routes[0].prefix"),
        ("encoded prefix", "prefix = \"/api\"", "prefix = \"/%61pi\"", "routes[1].prefix"),
        ("prefix and path", "prefix = \"/api\"", "prefix = \"/api\"\npath = \"/api/x\"", "routes[1].path"),
        ("no matcher", "prefix = \"/api\"\n", "", "routes[1]"),
        ("bad listen", "listen = \"127.0.0.1:0\"", "listen = \"localhost\"", "server.listen"),
        ("ftp upstream", "url = \"http://127.0.0.1:3000\"", "url = \"ftp://127.0.0.1:3000\"", "upstreams.app.url"),
        ("TLS key on an http upstream", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/ca.pem\"", "upstreams.app.tls_ca_file"),
        ("missing CA file", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/nope.pem\"", "upstreams.app.tls_ca_file"),
        ("CA file without certificates", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/gen.sh\"", "upstreams.app.tls_ca_file"),
        ("client certificate without its key", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"", "upstreams.app.tls_client_key"),
        ("client key that is no key", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"\ntls_client_key = \"tests/fixtures/tls/client.pem\"", "upstreams.app.tls_client_key"),
        ("client key of another certificate", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"\ntls_client_key = \"tests/fixtures/tls/server-key.pem\"", "upstreams.app.tls_client_key"),
        ("bad TLS server name", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_server_name = \"not a name\"", "upstreams.app.tls_server_name"),
        ("upstream with a path", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000/base\"", "upstreams.app.url"),
        ("bad auth mode", "auth = \"none\"", "auth = \"open\"", "auth"),
        ("alg none", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nalgorithms = [\"none\"]", "issuers[0].algorithms[0]"),
        ("HS256 without a secret", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nalgorithms = [\"HS256\"]", "issuers[0].algorithms[0]"),
        ("no audiences", "audiences = [\"https://api.test\"]", "", "issuers[0].audiences"),
        ("two key sources", "jwks_file = \"tests/fixtures/empty-jwks.json\"", "jwks_file = \"x.json\"\njwks_uri = \"https://idp.test/jwks\"", "issuers[0]"),
        ("lower-case method", "scopes = [\"read\"]", "scopes = [\"read\"]\nmethods = [\"get\"]", "routes[1].methods[0]"),
        ("scopes on an open route", "auth = \"none\"", "auth = \"none\"\nscopes = [\"x\"]", "routes[0].scopes"),
        ("invalid scope token", "scopes = [\"read\"]", "scopes = [\"re ad\"]", "routes[1].scopes[0]"),
        ("missing jwks file", "jwks_file = \"tests/fixtures/empty-jwks.json\"", "jwks_file = \"tests/fixtures/nope.json\"", "issuers[0].jwks_file"),
        ("audit typo", "auth = \"none\"", "auth = \"none\"\nmode = \"audti\"", "mode"),
        ("preflight pass on an open route", "auth = \"none\"", "auth = \"none\"\ncors_preflight = true", "routes[0].cors_preflight"),
        ("preflight pass without OPTIONS", "scopes = [\"read\"]", "scopes = [\"read\"]\nmethods = [\"GET\"]\ncors_preflight = true", "routes[1].cors_preflight"),
        ("wrong type", "listen = \"127.0.0.1:0\"", "listen = 8080", "listen"),
        ("no worker threads", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nworker_threads = 0", "server.worker_threads"),
        ("http resource", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nresource = \"http://api.test\"", "server.resource"),
        ("resource with a query", "scopes = [\"read\"]", "scopes = [\"read\"]\nresource = \"https://api.test/api?v=1\"", "routes[1].resource"),
        ("two resources, one metadata path", "auth = \"none\"\n\n[[routes]]\nprefix = \"/api\"\n", "auth = \"none\"\nresource = \"https://a.test\"\n\n[[routes]]\nprefix = \"/api\"\nresource = \"https://b.test/\"\n", "routes[1].resource"),
        ("bearer route without issuers", "[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/empty-jwks.json\"\naudiences = [\"https://api.test\"]\n", "", "routes[1].auth"),
    ];
    for (what, from, to, needle) in cases {
        assert!(
            GOOD.contains(from),
            "{what}: fixture text {from:?} not found"
        );
        let broken = GOOD.replacen(from, to, 1);
        let (ok, out) = check(&broken);
        assert!(!ok, "{what}: accepted\n{broken}");
        assert!(
            out.contains(needle),
            "{what}: message does not name {needle:?}:\n{out}"
        );
        assert!(
            out.contains(".toml:"),
            "{what}: message does not name the file and line:\n{out}"
        );
    }
}

#[test]
fn errors_are_all_reported_with_lines() {
    let broken = GOOD
        .replace("upstream = \"app\"\nauth", "upstream = \"nope\"\nauth")
        .replace("prefix = \"/api\"", "prefix = \"/api/\"");
    let broken = broken.replace("prefix = \"/api/\"", "prefix = \"/a//b\"");
    let (ok, out) = check(&broken);
    assert!(!ok);
    assert_eq!(out.lines().count(), 2, "both problems in one pass:\n{out}");
    // routes[0].upstream is on line 15 of GOOD (it opens with a newline).
    assert!(
        out.contains(":15:12:") && out.contains("routes[0].upstream"),
        "{out}"
    );
}

#[test]
fn shadowed_routes_warn() {
    let text = GOOD.to_owned()
        + "\n[[routes]]\nprefix = \"/api/admin\"\nscopes = [\"admin\"]\nupstream = \"app\"\n";
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("routes[2]") && out.contains("never matches"),
        "{out}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = common::Upstream::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = common::basic_config(&up.url(), "shutdown_grace = \"10s\"")
        .replace(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let file = std::env::temp_dir().join(format!("bearward-sigterm-{}.toml", rand_suffix()));
    std::fs::write(&file, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/public/slow");
    let c = common::client();
    let mut up_yet = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up_yet = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up_yet, "bearward did not start");
    let in_flight = tokio::spawn(async move { common::get(&c, &url, &[]).await.status });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(
        in_flight.await.unwrap(),
        http::StatusCode::OK,
        "the in-flight request finished"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_resource_outside_every_issuers_audiences_warns() {
    let with = |resource: &str| {
        GOOD.replacen(
            "scopes = [\"read\"]",
            &format!("scopes = [\"read\"]\nresource = \"{resource}\""),
            1,
        )
    };
    let (ok, out) = check(&with("https://api.test"));
    assert!(ok, "{out}");
    assert!(!out.contains("warning:"), "an accepted audience: {out}");
    let (ok, out) = check(&with("https://elsewhere.test/api"));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:")
            && out.contains("routes[1].resource")
            && out.contains("bad_audience"),
        "{out}"
    );
}
