//! The `bearward` binary: `check` end to end (the file and line in its messages, warnings, the
//! shipped config), and a real SIGTERM drain. The table of broken configs runs in process, in
//! tests/config.rs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A minimal valid config: the broken-config cases each change one thing in it.
const GOOD: &str = include_str!("fixtures/good.toml");

fn check(text: &str) -> (bool, String) {
    // A directory per check: with one shared, a check finishing could remove it between
    // another's creating it and writing its file there (seen: NotFound, 1 run in 6).
    let dir = std::env::temp_dir().join(format!(
        "bearward-check-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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

#[test]
fn a_grpc_service_behind_an_http1_upstream_warns() {
    let text =
        GOOD.to_owned() + "\n[[routes]]\ngrpc_service = \"shop.Orders\"\nupstream = \"app\"\n";
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:")
            && out.contains("routes[2].grpc_service")
            && out.contains("protocol = \"h2c\""),
        "{out}"
    );
    let (ok, out) = check(&text.replace("[upstreams.app]", "[upstreams.app]\nprotocol = \"h2c\""));
    assert!(ok && !out.contains("warning:"), "{out}");
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
