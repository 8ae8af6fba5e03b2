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

/// bearward as a process on fixed loopback ports (`listen`, `admin_listen`), in front of `up`,
/// with `extra` in `[server]`; returns once `/readyz` says 200.
struct Process {
    child: std::process::Child,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    file: std::path::PathBuf,
}

impl Process {
    async fn start(up: &common::Upstream, extra: &str) -> Process {
        let free = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (listen, admin) = (free(), free());
        let text = common::basic_config(&up.url(), extra)
            .replace(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\"\nadmin_listen = \"{admin}\""),
            )
            .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"")
            .replace("empty-jwks.json", "jwks-rsa1.json");
        let file = std::env::temp_dir().join(format!("bearward-drain-{}.toml", rand_suffix()));
        std::fs::write(&file, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bearward"))
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Process {
            child,
            listen,
            admin,
            file,
        };
        for _ in 0..100 {
            if p.ready().await == Some(200) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("bearward did not become ready");
    }

    /// `/readyz`'s status, `None` when the admin listener does not answer.
    async fn ready(&self) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(common::raw_status(&String::from_utf8_lossy(&out)))
    }

    fn signal(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// A request on a new connection; its status, 0 when the connection is refused.
    async fn fresh_request(&self) -> u16 {
        match tokio::net::TcpStream::connect(self.listen).await {
            Err(_) => 0,
            Ok(mut s) => {
                use tokio::io::AsyncWriteExt;
                s.write_all(b"GET /public/a HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                common::read_response(&mut s).await
            }
        }
    }

    /// Waits for the exit (at most `within`); whether it was a success.
    async fn exits_ok(mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let _ = std::fs::remove_file(&self.file);
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("bearward still running {within:?} after the signal");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_turns_readiness_off_and_serves_through_the_delay_then_drains() {
    use tokio::io::AsyncWriteExt;
    let up = common::Upstream::start().await;
    let p = Process::start(&up, "shutdown_grace = \"10s\"\nshutdown_delay = \"2s\"").await;
    // A keep-alive connection from before the signal.
    let mut kept = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    let on_kept = b"GET /public/kept HTTP/1.1\r\nHost: a\r\n\r\n";
    kept.write_all(on_kept).await.unwrap();
    assert_eq!(common::read_response(&mut kept).await, 200);

    let signalled = std::time::Instant::now();
    p.signal();
    let mut not_ready = None;
    for _ in 0..40 {
        if p.ready().await == Some(503) {
            not_ready = Some(signalled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let not_ready = not_ready.expect("/readyz turned 503 after SIGTERM");
    assert!(not_ready < Duration::from_secs(1), "{not_ready:?}");
    // Requests on new connections and on the old one, all through the delay.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1700) {
        assert_eq!(
            p.fresh_request().await,
            200,
            "a new connection during the delay"
        );
        kept.write_all(on_kept).await.unwrap();
        assert_eq!(common::read_response(&mut kept).await, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 10, "{served}");
    // Past the delay: no new connections, and the process drains and exits.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        p.fresh_request().await,
        0,
        "still accepting after the delay"
    );
    assert!(p.exits_ok(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_second_sigterm_ends_the_delay_and_a_busy_keep_alive_connection_is_told_to_close() {
    use tokio::io::AsyncWriteExt;
    let up = common::Upstream::start().await;
    // A delay the test would never sit out.
    let p = Process::start(&up, "shutdown_grace = \"10s\"\nshutdown_delay = \"600s\"").await;
    let mut kept = tokio::net::TcpStream::connect(p.listen).await.unwrap();
    p.signal();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.ready().await, Some(503));
    assert_eq!(p.fresh_request().await, 200, "accepting during the delay");
    // /public/slow answers after 2 s: in flight when the second signal comes.
    kept.write_all(b"GET /public/slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.fresh_request().await,
        0,
        "the second signal ended the delay"
    );
    let (answer, _) = common::read_to_close(&mut kept).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert_eq!(common::raw_status(&answer), 200, "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(p.exits_ok(Duration::from_secs(5)).await);
}
