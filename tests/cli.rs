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

/// The example users start from passes, and without a warning: it should teach no trap.
#[test]
fn shipped_example_config_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config", "config/bearward.toml"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("warning"), "{text}");
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

/// A `methods` list with GET takes HEAD too, so a HEAD route below a GET route on the same
/// path never matches: said, as for any shadowed route.
#[test]
fn a_head_route_under_a_get_route_warns() {
    let text = GOOD.to_owned()
        + "\n[[routes]]\nprefix = \"/r\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"app\"\n\
           \n[[routes]]\nprefix = \"/r\"\nmethods = [\"HEAD\"]\nauth = \"none\"\nupstream = \"app\"\n";
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("routes[3]") && out.contains("never matches"),
        "{out}"
    );
    // Above it, a HEAD route has its own policy: no warning.
    let text = GOOD.to_owned()
        + "\n[[routes]]\nprefix = \"/r\"\nmethods = [\"HEAD\"]\nauth = \"none\"\nupstream = \"app\"\n\
           \n[[routes]]\nprefix = \"/r\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"app\"\n";
    let (ok, out) = check(&text);
    assert!(ok && !out.contains("never matches"), "{out}");
}

/// An open catch-all under checked routes takes their paths in another case or with a trailing
/// slash, which some upstreams serve as the checked paths: said once, on the open route.
#[test]
fn an_open_catch_all_taking_loose_variants_warns() {
    let write = "\n[[routes]]\npath = \"/api/write\"\nmethods = [\"POST\"]\nscopes = [\"write\"]\nupstream = \"app\"\n";
    let open = "\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n";
    let text = GOOD.replace(
        "[[routes]]\nprefix = \"/public\"",
        &format!("{write}\n[[routes]]\nprefix = \"/public\""),
    ) + open;
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("with no token check"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = lines[0];
    assert!(line.contains("routes[3]:"), "{line}");
    assert!(
        line.contains("/API/WRITE (routes[0] /api/write)")
            && line.contains("/API (routes[2] /api*)"),
        "{line}"
    );
    // `/api/write/` goes to the bearer route `/api`, which needs `read` where `/api/write`
    // needs `write`: said on that route.
    assert!(!line.contains("/api/write/"), "{line}");
    let weaker: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("with a token for read"))
        .collect();
    assert_eq!(weaker.len(), 1, "{out}");
    assert!(
        weaker[0].contains("routes[2]:")
            && weaker[0].contains("/api/write/ (routes[0] /api/write)"),
        "{out}"
    );
    // Its line is where routes[3] is written.
    let at = text.lines().position(|l| l == "prefix = \"/\"").unwrap();
    assert!(line.contains(&format!(":{at}:")), "line {at}: {line}");
    // Without the catch-all, nothing to say.
    let (ok, out) = check(&text.replace(open, ""));
    assert!(ok && !out.contains("with no token check"), "{out}");
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
    let file = std::env::temp_dir().join(format!("bearward-sigterm-{}.toml", rand_suffix()));
    let (mut child, [port]) = common::spawn_holding("bearward", |[port]| {
        let text = common::basic_config(&up.url(), "shutdown_grace = \"10s\"")
            .replace(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
        std::fs::write(&file, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearward"));
        cmd.arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    });
    let url = format!("http://127.0.0.1:{port}/public/slow");
    let c = common::client();
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
    /// Its stderr: the log.
    log: std::path::PathBuf,
}

impl Process {
    async fn start(up: &common::Upstream, extra: &str) -> Process {
        let file = std::env::temp_dir().join(format!("bearward-drain-{}.toml", rand_suffix()));
        let log = file.with_extension("log");
        let (child, [listen, admin]) = common::spawn_holding("bearward", |[listen, admin]| {
            let text = common::basic_config(&up.url(), extra)
                .replace(
                    "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
                    &format!(
                        "listen = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\""
                    ),
                )
                .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"")
                .replace("empty-jwks.json", "jwks-rsa1.json");
            std::fs::write(&file, text).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearward"));
            cmd.arg("--config")
                .arg(&file)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            cmd
        });
        let (listen, admin) = (
            std::net::SocketAddr::from(([127, 0, 0, 1], listen)),
            std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        );
        let p = Process {
            child,
            listen,
            admin,
            file,
            log,
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
        self.admin_call("GET", "/readyz").await.map(|(s, _)| s)
    }

    /// A call to the admin listener: its status and body.
    async fn admin_call(&self, method: &str, target: &str) -> Option<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!("{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((common::raw_status(&text), body))
    }

    /// The log lines so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        self.fresh_request_to("/public/a").await
    }

    async fn fresh_request_to(&self, path: &str) -> u16 {
        match tokio::net::TcpStream::connect(self.listen).await {
            Err(_) => 0,
            Ok(mut s) => {
                use tokio::io::AsyncWriteExt;
                let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
                s.write_all(head.as_bytes()).await.unwrap();
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
                let _ = std::fs::remove_file(&self.log);
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

#[tokio::test]
async fn log_levels_change_at_runtime_for_bearwards_targets_only() {
    let up = common::Upstream::start().await;
    let p = Process::start(&up, "").await;
    let wait_log = || tokio::time::sleep(Duration::from_millis(200));
    let logged = |p: &Process, path: &str| {
        p.log()
            .lines()
            .any(|l| l.contains("bearward::access") && l.contains(path))
    };
    assert_eq!(p.fresh_request_to("/public/first").await, 200);
    wait_log().await;
    assert!(logged(&p, "/public/first"), "{}", p.log());
    // No colours in a log that is not a terminal.
    assert!(!p.log().contains('\u{1b}'), "{}", p.log());

    let (status, body) = p.admin_call("GET", "/logging").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "info\n"));
    let (status, body) = p
        .admin_call("POST", "/logging?bearward::access=off")
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "info,bearward::access=off\n")
    );
    assert_eq!(p.fresh_request_to("/public/quiet").await, 200);
    wait_log().await;
    assert!(!logged(&p, "/public/quiet"), "{}", p.log());

    // A dependency's level, a level that is none, another method: refused, nothing changed.
    for (method, target, want) in [
        ("POST", "/logging?hyper=trace", 400),
        ("POST", "/logging?h2=debug", 400),
        ("POST", "/logging?level=loud", 400),
        ("POST", "/logging", 400),
        ("PUT", "/logging?level=debug", 405),
    ] {
        let (status, body) = p.admin_call(method, target).await.unwrap();
        assert_eq!(status, want, "{method} {target}: {body}");
    }
    let (_, body) = p.admin_call("GET", "/logging").await.unwrap();
    assert_eq!(body, "info,bearward::access=off\n");

    // `level` sets bearward's level as a whole (its modules' settings go); `reset` returns to
    // the startup filter.
    let (status, body) = p.admin_call("POST", "/logging?level=debug").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "info,bearward=debug\n"));
    assert_eq!(p.fresh_request_to("/public/again").await, 200);
    let (status, body) = p.admin_call("POST", "/logging?reset").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "info\n"));
    wait_log().await;
    assert!(logged(&p, "/public/again"), "{}", p.log());
    p.signal();
    assert!(p.exits_ok(Duration::from_secs(5)).await);
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    let commit = head.unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        text.trim(),
        format!("bearward {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_taken_address_is_named_with_its_config_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for (key, line) in [
        ("server.listen", format!("listen = \"{addr}\"")),
        (
            "server.admin_listen",
            format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"{addr}\""),
        ),
    ] {
        let text = GOOD.replacen("listen = \"127.0.0.1:0\"", &line, 1);
        let file = std::env::temp_dir().join(format!("bearward-bind-{}.toml", rand_suffix()));
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(key) && err.contains(&addr.to_string()),
            "{key}: {err}"
        );
        assert!(err.contains("in use"), "{err}");
    }
    // The demo names its flag.
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["demo", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--listen") && err.contains(&addr.to_string()),
        "{err}"
    );
}
