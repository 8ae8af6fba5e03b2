//! Operations: exact metrics, hot reload under load, invalid reloads, audit mode, SIGHUP.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn metrics_count_a_known_mix_exactly() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        + "\n[[routes]]\nprefix = \"/internal\"\nupstream = \"app\"\nauth = \"deny\"\n";
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let m = idp.minter("https://api.test");
    let c = client();
    let call = |path: &'static str, token: Option<String>| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let h = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                h.iter().map(|v| ("authorization", v.as_str())).collect();
            get(&c, &url, &headers).await.status
        }
    };
    let good = m.token(&rsa, "read");
    for _ in 0..3 {
        assert_eq!(
            call("/api/read/x", Some(good.clone())).await,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(call("/api/read/x", None).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        call("/api/read/x", Some(m.token_expired(&rsa))).await,
        StatusCode::UNAUTHORIZED
    );
    // A valid signature, but over other claims.
    let other = m.token(&rsa, "admin");
    let forged = format!(
        "{}.{}",
        &good[..good.rfind('.').unwrap()],
        &other[other.rfind('.').unwrap() + 1..]
    );
    assert_eq!(
        call("/api/read/x", Some(forged)).await,
        StatusCode::UNAUTHORIZED
    );
    let wrong_aud = m.token_claims(&rsa, |c| {
        c.insert("aud".into(), json!("https://elsewhere.test"));
    });
    assert_eq!(
        call("/api/read/x", Some(wrong_aud)).await,
        StatusCode::UNAUTHORIZED
    );
    for _ in 0..2 {
        assert_eq!(
            call("/api/admin/x", Some(good.clone())).await,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(call("/nowhere", None).await, StatusCode::NOT_FOUND);
    assert_eq!(call("/internal/x", None).await, StatusCode::FORBIDDEN);
    assert_eq!(call("/public/x", None).await, StatusCode::OK);

    let text = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    let req = |route: &str, status: u16, decision: &str, reason: &str| {
        requests(&text, route, status, decision, reason)
    };
    assert_eq!(req("/api/read*", 200, "allow", "ok"), 3.0, "{text}");
    assert_eq!(
        metric(
            &text,
            &format!(
                "bearward_build_info{{version=\"{}\",commit=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                env!("BEARWARD_COMMIT")
            )
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        req("/api/read*", 401, "deny", "missing_token"),
        2.0,
        "{text}"
    );
    assert_eq!(req("/api/read*", 401, "deny", "expired"), 1.0, "{text}");
    assert_eq!(
        req("/api/read*", 401, "deny", "bad_signature"),
        1.0,
        "{text}"
    );
    assert_eq!(
        req("/api/read*", 401, "deny", "bad_audience"),
        1.0,
        "{text}"
    );
    assert_eq!(
        req("/api/admin*", 403, "deny", "insufficient_scope"),
        2.0,
        "{text}"
    );
    assert_eq!(req("-", 404, "deny", "no_route"), 1.0, "{text}");
    assert_eq!(
        req("/internal*", 403, "deny", "route_denied"),
        1.0,
        "{text}"
    );
    assert_eq!(req("/public*", 200, "allow", "ok"), 1.0, "{text}");
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("bearward_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 13.0, "nothing else was counted:\n{text}");
    assert_eq!(
        metric(
            &text,
            "bearward_request_duration_seconds_count{route=\"/api/read*\"}"
        ),
        8.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bearward_upstream_duration_seconds_count{route=\"/api/read*\"}"
        ),
        3.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!(
                "bearward_jwks_fetches_total{{issuer=\"{}\",outcome=\"ok\"}}",
                idp.issuer()
            )
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("bearward_signing_keys{{issuer=\"{}\"}}", idp.issuer())
        ),
        1.0,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "bearward_jwks_age_seconds{{issuer=\"{}\"}}",
            idp.issuer()
        )),
        "{text}"
    );
    // The good token: validated once, then found in the cache twice on /api/read and twice on /api/admin.
    assert!(
        metric(&text, "bearward_token_cache_lookups_total{outcome=\"hit\"}") >= 4.0,
        "{text}"
    );
    assert_eq!(metric(&text, "bearward_token_cache_entries"), 1.0, "{text}");
}

fn reload_config(up: &str, public_auth: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{up}"

[[routes]]
prefix = "/public"
upstream = "app"
auth = "{public_auth}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_switches_policy_and_loses_nothing() {
    let up = Upstream::start().await;
    let file = std::env::temp_dir().join(format!("bearward-reload-{}.toml", std::process::id()));
    std::fs::write(&file, reload_config(&up.url(), "none")).unwrap();
    let config = bearward::config::Config::load(&file).unwrap();
    let server = bearward::build(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let live = server.live();
    tokio::spawn(server.run(std::future::pending()));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, denied, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, denied, failed) = (stop.clone(), ok.clone(), denied.clone(), failed.clone());
        // One keep-alive client each: reloads must not disturb open connections.
        clients.push(tokio::spawn(async move {
            let c = client();
            let url = format!("http://{addr}/public/x");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::<bytes::Bytes>::default())
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                        denied.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let probe = |path: &'static str| async move {
        get(&client(), &format!("http://{addr}{path}"), &[])
            .await
            .status
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe("/public/a").await, StatusCode::OK);

    // Reload through the file watcher: the open route now needs a token.
    let watcher = tokio::spawn(bearward::server::watch_config(
        live.clone(),
        file.clone(),
        Duration::from_millis(50),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&file, reload_config(&up.url(), "bearer")).unwrap();
    let mut switched = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if probe("/public/a").await == StatusCode::UNAUTHORIZED {
            switched = true;
            break;
        }
    }
    assert!(switched, "the file change was applied");
    let denied_mid = denied.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        denied.load(Ordering::Relaxed) > denied_mid,
        "the load now gets 401s"
    );

    // An invalid file keeps the running policy.
    std::fs::write(
        &file,
        reload_config(&up.url(), "bearer").replace(
            "prefix = \"/public\"",
            "prefix = \"/public\"\nscoeps = [\"x\"]",
        ),
    )
    .unwrap();
    assert!(live.reload_file(&file).is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probe("/public/a").await,
        StatusCode::UNAUTHORIZED,
        "the invalid file changed nothing"
    );
    // So does an `allow_if` that does not compile, with its column in the error.
    std::fs::write(
        &file,
        reload_config(&up.url(), "none").replace(
            "prefix = \"/public\"",
            "prefix = \"/public\"\nallow_if = \"request.method ==\"",
        ),
    )
    .unwrap();
    let e = live.reload_file(&file).unwrap_err().to_string();
    assert!(e.contains("allow_if: column 18 of the expression"), "{e}");
    assert_eq!(probe("/public/a").await, StatusCode::UNAUTHORIZED);

    // And back, through an explicit reload (what SIGHUP does).
    std::fs::write(&file, reload_config(&up.url(), "none")).unwrap();
    live.reload_file(&file).unwrap();
    assert_eq!(probe("/public/a").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    watcher.abort();
    let (ok, denied, failed) = (
        ok.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "no request was lost ({ok} ok, {denied} denied)");
    assert!(ok > 100 && denied > 10, "{ok} ok, {denied} denied");
    let metrics = live.metrics.render();
    assert!(
        metric(&metrics, "bearward_config_reloads_total{outcome=\"ok\"}") >= 2.0,
        "{metrics}"
    );
    // The watcher saw the invalid file too, so one or two failed reloads.
    assert!(
        metric(&metrics, "bearward_config_reloads_total{outcome=\"error\"}") >= 1.0,
        "{metrics}"
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn reload_keeps_the_key_store_of_unchanged_issuers() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let text = auth_config(&up.url(), &idp.issuer(), "discovery = true", "");
    let config = bearward::config::Config::from_toml_str(&text, "t.toml").unwrap();
    let server = bearward::build(config).await.unwrap();
    let live = server.live();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let c = client();
    let t = idp.minter("https://api.test").token(&rsa, "read");
    let auth = [("authorization", format!("Bearer {t}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..50 {
        if get(&c, &format!("http://{addr}/api/read/x"), &auth)
            .await
            .status
            == StatusCode::OK
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetches = idp.jwks_hits();
    let before = Arc::as_ptr(&live.current().auth.issuers()[0]);
    // A route change only: the issuer is the same.
    let changed = text.replace(
        "prefix = \"/api/admin\"",
        "prefix = \"/api/administration\"",
    );
    live.apply(bearward::config::Config::from_toml_str(&changed, "t.toml").unwrap());
    assert_eq!(
        Arc::as_ptr(&live.current().auth.issuers()[0]),
        before,
        "same key store"
    );
    assert_eq!(
        get(&c, &format!("http://{addr}/api/read/x"), &auth)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(idp.jwks_hits(), fetches, "no refetch");
    // The issuer changed: a new store.
    let changed = changed
        .replace("leeway", "# leeway")
        .replace("jwks_timeout = \"1s\"", "jwks_timeout = \"2s\"");
    live.apply(bearward::config::Config::from_toml_str(&changed, "t.toml").unwrap());
    assert_ne!(Arc::as_ptr(&live.current().auth.issuers()[0]), before);
}

#[tokio::test]
async fn audit_mode_forwards_with_the_verdict_and_counts_it() {
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "").replace(
        "prefix = \"/api/admin\"\n",
        "prefix = \"/api/admin\"\nmode = \"audit\"\n",
    );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let m = idp.minter("https://api.test");
    let c = client();
    let url = gw.url("/api/admin/users");

    let a = get(&c, &url, &[("x-bearward-audit", "allow")]).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "forwarded although it has no token"
    );
    let seen = up.last();
    assert_eq!(
        seen.headers["x-bearward-audit"],
        "would-deny; reason=missing_token; status=401"
    );
    // A client cannot hide the verdict by naming the header in `Connection`.
    let a = get(&c, &url, &[("connection", "x-bearward-audit")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        up.last().headers["x-bearward-audit"],
        "would-deny; reason=missing_token; status=401"
    );

    let read_only = format!("Bearer {}", m.token(&rsa, "read"));
    assert_eq!(
        get(&c, &url, &[("authorization", &read_only)]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.last().headers["x-bearward-audit"],
        "would-deny; reason=insufficient_scope; status=403"
    );
    assert_eq!(
        up.last().headers["x-auth-subject"],
        "user-42",
        "the token was valid: its identity is passed"
    );

    let admin = format!("Bearer {}", m.token(&rsa, "admin"));
    assert_eq!(
        get(&c, &url, &[("authorization", &admin)]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.last().headers["x-bearward-audit"], "allow");

    // Enforcing routes are unaffected, and clients cannot forge the marker there.
    let a = get(&c, &gw.url("/api/read/x"), &[("x-bearward-audit", "allow")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&c, &gw.url("/public/x"), &[("x-bearward-audit", "allow")])
            .await
            .status,
        StatusCode::OK
    );
    assert!(!up.last().headers.contains_key("x-bearward-audit"));

    let text = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert_eq!(metric(&text, "bearward_requests_total{route=\"/api/admin*\",status=\"200\",decision=\"audit_deny\",reason=\"missing_token\"}"), 2.0, "{text}");
    assert_eq!(metric(&text, "bearward_requests_total{route=\"/api/admin*\",status=\"200\",decision=\"audit_deny\",reason=\"insufficient_scope\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "bearward_requests_total{route=\"/api/admin*\",status=\"200\",decision=\"allow\",reason=\"ok\"}"), 1.0, "{text}");
}

#[tokio::test]
async fn global_audit_mode_applies_to_every_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "mode = \"audit\"")).await;
    let c = client();
    assert_eq!(
        get(&c, &gw.url("/internal/x"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.last().headers["x-bearward-audit"],
        "would-deny; reason=route_denied; status=403"
    );
    assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, StatusCode::OK);
    assert_eq!(
        up.last().headers["x-bearward-audit"],
        "would-deny; reason=missing_token; status=401"
    );
    // Protocol-level refusals are not policy: audit mode never forwards them.
    assert_eq!(
        get(&c, &gw.url("/nowhere"), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let resp = raw(
        gw.addr,
        b"GET /public/%2e%2e/api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400);
    assert_eq!(up.count(), 2);
}

/// The bearward binary on a free port, running `reload_config`'s file with `server_extra` lines
/// added to `[server]`.
struct Binary {
    child: std::process::Child,
    port: u16,
    file: std::path::PathBuf,
}

impl Binary {
    /// Its stderr piped with `piped`, else dropped.
    fn start(up: &str, auth: &str, server_extra: &str, piped: bool) -> Binary {
        let file = |port: u16| {
            std::env::temp_dir().join(format!("bearward-bin-{port}-{}.toml", std::process::id()))
        };
        let start = |[port]: [u16; 1]| {
            std::fs::write(file(port), Binary::config(up, auth, port, server_extra)).unwrap();
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bearward"));
            cmd.arg("--config")
                .arg(file(port))
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::null())
                .stderr(match piped {
                    true => std::process::Stdio::piped(),
                    false => std::process::Stdio::null(),
                });
            cmd
        };
        let (child, [port]) = common::spawn_holding_tidy("bearward", start, |[port]| {
            let _ = std::fs::remove_file(file(port));
        });
        Binary {
            child,
            port,
            file: file(port),
        }
    }

    fn config(up: &str, auth: &str, port: u16, server_extra: &str) -> String {
        reload_config(up, auth).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\n{server_extra}"),
        )
    }

    fn rewrite(&self, up: &str, auth: &str, server_extra: &str) {
        std::fs::write(
            &self.file,
            Binary::config(up, auth, self.port, server_extra),
        )
        .unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits for the listener, then the status of a first request.
    async fn first_status(&self, c: &HttpClient, path: &str) -> Option<StatusCode> {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Some(get(c, &self.url(path), &[]).await.status);
            }
        }
        None
    }

    /// The status of `path`, asked every 50 ms for 2 s until it is `want`.
    async fn status_within(&self, c: &HttpClient, path: &str, want: StatusCode) -> StatusCode {
        let mut got = StatusCode::OK;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            got = get(c, &self.url(path), &[]).await.status;
            if got == want {
                break;
            }
        }
        got
    }

    fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// SIGTERM; the exit status says the drain went well.
    fn stop(mut self) {
        self.signal("-TERM");
        assert!(self.child.wait().unwrap().success());
    }
}

/// A test that fails before `stop` leaves no bearward running, nor its config file.
impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let up = Upstream::start().await;
    let extra = "watch_config = false";
    let bin = Binary::start(&up.url(), "none", extra, false);
    let c = client();
    assert_eq!(
        bin.first_status(&c, "/public/x").await,
        Some(StatusCode::OK)
    );
    bin.rewrite(&up.url(), "deny", extra);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&c, &bin.url("/public/x"), &[]).await.status,
        StatusCode::OK,
        "watch_config = false: no reload without SIGHUP"
    );
    bin.signal("-HUP");
    let after = bin
        .status_within(&c, "/public/x", StatusCode::FORBIDDEN)
        .await;
    assert_eq!(
        after,
        StatusCode::FORBIDDEN,
        "SIGHUP applied the new policy"
    );
    bin.stop();
}

/// One change, one reload, whichever noticed it first: a SIGHUP right after a write applies the
/// content, and the file watch (polling every second) does not apply it a second time; a write
/// the watch alone notices is applied once too. Counted from the "config reloaded" lines.
#[tokio::test]
async fn one_change_reloads_once_whoever_notices_it() {
    use std::io::BufRead;
    let up = Upstream::start().await;
    let mut bin = Binary::start(&up.url(), "none", "", true);
    let stderr = bin.child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(l);
        }
    });
    let reloads = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("config reloaded"))
            .count()
    };
    let c = client();
    assert_eq!(
        bin.first_status(&c, "/public/x").await,
        Some(StatusCode::OK)
    );
    bin.rewrite(&up.url(), "deny", "");
    bin.signal("-HUP");
    let after = bin
        .status_within(&c, "/public/x", StatusCode::FORBIDDEN)
        .await;
    assert_eq!(after, StatusCode::FORBIDDEN, "SIGHUP applied the change");
    // Long enough for the watch to see the new content stable over two polls, twice over.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(reloads(), 1, "{:#?}", lines.lock().unwrap());

    // The watch alone: one reload for one write.
    bin.rewrite(&up.url(), "none", "");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        get(&c, &bin.url("/public/x"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(reloads(), 2, "{:#?}", lines.lock().unwrap());
    // And a SIGHUP with nothing changed still reloads (an operator asking for it).
    bin.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reloads(), 3, "{:#?}", lines.lock().unwrap());
    bin.stop();
}

/// `server.worker_threads`: 1 serves the connections on the main thread, N on N worker threads
/// of their own (as the start line reports, and the process's threads show); either way the
/// binary serves and drains on SIGTERM.
///
/// The test closes its end of bearward's stderr after the start line, so every access-log line
/// after it meets a broken pipe: requests must still be answered (tracing-subscriber's own
/// error report used to panic there and drop every logged request's connection).
#[tokio::test]
async fn worker_threads_sets_the_runtime() {
    use std::io::BufRead;
    let up = Upstream::start().await;
    for (threads, expect) in [(1, "workers=1"), (3, "workers=3")] {
        let extra = format!("watch_config = false\nworker_threads = {threads}");
        let mut bin = Binary::start(&up.url(), "none", &extra, true);
        let stderr = bin.child.stderr.take().unwrap();
        let started = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains("bearward listening"))
        })
        .await
        .unwrap()
        .unwrap_or_default();
        assert!(
            started.contains(expect),
            "worker_threads = {threads}: {started}"
        );
        let c = client();
        for _ in 0..5 {
            assert_eq!(
                get(&c, &bin.url("/public/x"), &[]).await.status,
                StatusCode::OK
            );
        }
        let pid = bin.child.id();
        let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("worker-"))
            .count();
        let expect = if threads == 1 { 0 } else { threads };
        assert_eq!(
            workers, expect,
            "worker_threads = {threads}: worker threads"
        );
        bin.stop();
    }
}

/// A reload starts a fresh verified-token cache, per-thread fronts included. An HMAC issuer is
/// the case where nothing else would catch a stale entry: its secret has no key set for a cached
/// result to be checked against, so only the cache's own reset keeps the new audiences in force.
#[tokio::test]
async fn a_reload_that_drops_an_audience_refuses_tokens_cached_for_it() {
    let secret = "reload-test-secret-0123456789abcdef0123456789";
    std::env::set_var("BEARWARD_TEST_RELOAD_HS_SECRET", secret);
    let up = Upstream::start().await;
    let cfg = auth_config(
        &up.url(),
        "https://idp.test",
        "jwks_file = \"tests/fixtures/jwks-rsa1.json\"",
        "hmac_secret_env = \"BEARWARD_TEST_RELOAD_HS_SECRET\"",
    )
    .replace(
        "algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]",
        "algorithms = [\"HS256\"]",
    );
    let config = bearward::config::Config::from_toml_str(&cfg, "t.toml").unwrap();
    let server = bearward::build(config).await.unwrap();
    let live = server.live();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));

    let minter = Minter {
        issuer: "https://idp.test".into(),
        audience: "https://other-api.test".into(),
    };
    let token = sign_raw(
        &json!({"alg": "HS256", "typ": "at+jwt"}).to_string(),
        &minter.claims("read").to_string(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    );
    let auth = format!("Bearer {token}");
    let c = client();
    let url = format!("http://{addr}/api/read/x");
    for _ in 0..3 {
        let r = get(&c, &url, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let metrics = live.metrics.render();
    assert!(
        metric(
            &metrics,
            "bearward_token_cache_lookups_total{outcome=\"hit\"}"
        ) >= 2.0,
        "served from the cache: {metrics}"
    );
    let forwarded = up.count();

    let narrowed = cfg.replace(
        "audiences = [\"https://api.test\", \"https://other-api.test\"]",
        "audiences = [\"https://api.test\"]",
    );
    assert_ne!(narrowed, cfg);
    live.apply(bearward::config::Config::from_toml_str(&narrowed, "t.toml").unwrap());
    let r = get(&c, &url, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.headers);
    assert_eq!(
        up.count(),
        forwarded,
        "the refused request never reached the upstream"
    );
}

/// A renewed CA bundle (or client certificate) takes effect like a changed config file: the
/// watcher counts the TLS files the running config names as part of it.
#[tokio::test]
async fn a_changed_tls_file_is_reloaded_without_a_restart() {
    let up = Upstream::start_tls().await;
    let dir = std::env::temp_dir().join(format!("bearward-tls-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::copy("tests/fixtures/tls/other-ca.pem", &ca).unwrap();
    let file = dir.join("bearward.toml");
    let cfg = reload_config(&up.url(), "none").replace(
        &format!("url = \"{}\"", up.url()),
        &format!("url = \"{}\"\ntls_ca_file = \"{}\"", up.url(), ca.display()),
    );
    std::fs::write(&file, cfg).unwrap();
    let config = bearward::config::Config::load(&file).unwrap();
    let server = bearward::build(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let live = server.live();
    tokio::spawn(server.run(std::future::pending()));
    tokio::spawn(bearward::server::watch_config(
        live,
        file.clone(),
        Duration::from_millis(50),
    ));
    let probe = || async move {
        get(&client(), &format!("http://{addr}/public/a"), &[])
            .await
            .status
    };
    assert_eq!(
        probe().await,
        StatusCode::BAD_GATEWAY,
        "a CA that signed nothing"
    );
    assert_eq!(up.count(), 0);

    std::fs::copy("tests/fixtures/tls/ca.pem", &ca).unwrap();
    let mut renewed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if probe().await == StatusCode::OK {
            renewed = true;
            break;
        }
    }
    assert!(renewed, "the renewed CA bundle was not picked up");
    assert_eq!(up.count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// bearward running the config in `file`, in this process: its proxy and admin addresses and
/// its reload handle.
async fn serve_file(
    file: &std::path::Path,
) -> (
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    Arc<bearward::server::Live>,
) {
    let config = bearward::config::Config::load(file).unwrap();
    let server = bearward::build(config).await.unwrap();
    let (addr, admin) = (server.local_addr().unwrap(), server.admin_addr());
    let live = server.live();
    tokio::spawn(server.run(std::future::pending()));
    (addr, admin, live)
}

/// `GET /public/x` on `addr` with `token` as the bearer token.
async fn with_bearer(c: &HttpClient, addr: std::net::SocketAddr, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    get(
        c,
        &format!("http://{addr}/public/x"),
        &[("authorization", &auth)],
    )
    .await
}

/// `/status` on the admin listener says what runs: the SHA-256 of the config text in force
/// (the file's until a refused reload, the new one's after a good one), the last reload's
/// outcome with its error, each issuer's keys by id, and each upstream's endpoints, one that
/// refused a connection out of the rotation. The reload gauges follow.
#[tokio::test]
async fn the_status_page_says_what_runs_and_what_the_last_reload_did() {
    let up = Upstream::start().await;
    let file = std::env::temp_dir().join(format!("bearward-status-{}.toml", std::process::id()));
    let text = |auth: &str| {
        reload_config(&up.url(), auth)
            .replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
            )
            .replace(
                &format!("url = \"{}\"", up.url()),
                &format!(
                    "url = \"{}\"\nendpoints = [\"{}\", \"127.0.0.1:1\"]",
                    up.url(),
                    up.addr
                ),
            )
    };
    let sha = |t: &str| -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    };
    let first = text("none");
    std::fs::write(&file, &first).unwrap();
    let (addr, admin, live) = serve_file(&file).await;
    let admin = admin.unwrap();
    let c = client();
    let status = || {
        let c = c.clone();
        async move {
            let a = get(&c, &format!("http://{admin}/status"), &[]).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.headers["content-type"], "application/json");
            serde_json::from_str::<serde_json::Value>(&a.body).unwrap()
        }
    };
    // The issuer's keys are loaded in the background: ready first, as a probe would wait.
    for _ in 0..100 {
        let ready = get(&c, &format!("http://{admin}/readyz"), &[]).await;
        if ready.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both endpoints in turn: the second refuses, goes out, and the request goes on.
    for _ in 0..2 {
        let a = get(&c, &format!("http://{addr}/public/x"), &[]).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let s = status().await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config"]["file"], file.display().to_string());
    assert_eq!(s["config"]["sha256"], sha(&first));
    assert!(s["config"]["last_reload"].is_null(), "{s}");
    assert_eq!(s["issuers"][0]["issuer"], "https://idp.test");
    assert_eq!(s["issuers"][0]["keys"][0]["kid"], "rsa1");
    assert_eq!(s["issuers"][0]["keys_usable"], true);
    let endpoints = &s["upstreams"][0]["endpoints"];
    assert_eq!(endpoints[0]["address"], up.addr.to_string());
    assert_eq!(endpoints[0]["in_rotation"], true, "{s}");
    assert!(
        endpoints[0]["idle_connections"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert_eq!(endpoints[1]["address"], "127.0.0.1:1");
    assert_eq!(endpoints[1]["in_rotation"], false, "{s}");
    assert!(
        endpoints[1]["failed_out_for_seconds"].as_u64().unwrap() > 0,
        "{s}"
    );
    let m = live.metrics.render();
    assert_eq!(
        metric(&m, "bearward_config_last_reload_successful"),
        1.0,
        "{m}"
    );
    let loaded = metric(&m, "bearward_config_last_reload_success_timestamp_seconds");
    assert!(loaded > 1.7e9, "{m}");

    // A refused reload: the running config's digest stays, and the error is there to read.
    std::fs::write(&file, first.replace("prefix = ", "prefx = ")).unwrap();
    assert!(live.reload_file(&file).is_err());
    let s = status().await;
    assert_eq!(s["config"]["sha256"], sha(&first));
    assert_eq!(s["config"]["last_reload"]["outcome"], "error", "{s}");
    let error = s["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("prefx"), "{error}");
    let m = live.metrics.render();
    assert_eq!(
        metric(&m, "bearward_config_last_reload_successful"),
        0.0,
        "{m}"
    );

    assert!(s["issuers"][0]["revoked"].is_null(), "{s}");

    // A good one: the new text's digest, and the gauges back.
    let second = text("deny").replace(
        "audiences = [\"https://api.test\"]",
        "audiences = [\"https://api.test\"]\nrevoked = { subjects = [\"u1\", \"u2\"], issued_before = \"2026-01-01T00:00:00Z\" }",
    );
    std::fs::write(&file, &second).unwrap();
    live.reload_file(&file).unwrap();
    let s = status().await;
    assert_eq!(s["config"]["sha256"], sha(&second));
    assert_eq!(s["config"]["last_reload"]["outcome"], "ok", "{s}");
    assert!(s["config"]["last_reload"]["error"].is_null(), "{s}");
    let revoked = &s["issuers"][0]["revoked"];
    assert_eq!(revoked["subjects"], 2, "{s}");
    assert_eq!(revoked["token_ids"], 0, "{s}");
    assert_eq!(revoked["issued_before"], 1_767_225_600u64, "{s}");
    let m = live.metrics.render();
    assert_eq!(
        metric(&m, "bearward_config_last_reload_successful"),
        1.0,
        "{m}"
    );
    assert!(metric(&m, "bearward_config_last_reload_success_timestamp_seconds") >= loaded);
    let _ = std::fs::remove_file(&file);
}

/// `revoked`: a token in use, cached as valid, is refused from the first request after the
/// reload that names its `jti`, its `sub` or its client, or that cuts off tokens issued
/// before a time; other tokens pass, and nothing refused reaches the upstream.
#[tokio::test]
async fn a_reload_that_revokes_a_token_refuses_it_at_once() {
    let up = Upstream::start().await;
    let file = std::env::temp_dir().join(format!("bearward-revoke-{}.toml", std::process::id()));
    let text = |revoked: &str| {
        reload_config(&up.url(), "bearer").replace(
            "audiences = [\"https://api.test\"]",
            &format!("audiences = [\"https://api.test\"]\n{revoked}"),
        )
    };
    std::fs::write(&file, text("")).unwrap();
    let (addr, _, live) = serve_file(&file).await;
    let mint = Minter {
        issuer: "https://idp.test".into(),
        audience: "https://api.test".into(),
    };
    let key = Key::rsa1();
    let token = |jti: &str, sub: &str, client: &str| {
        mint.token_claims(&key, |c| {
            c.insert("jti".into(), json!(jti));
            c.insert("sub".into(), json!(sub));
            c.insert("client_id".into(), json!(client));
        })
    };
    let (leaked, user, app, fine) = (
        token("j-leaked", "u1", "web"),
        token("j2", "u-gone", "web"),
        token("j3", "u3", "leaky-app"),
        token("j4", "u4", "web"),
    );
    let c = client();
    let call = |t: &str| {
        let (c, t) = (c.clone(), t.to_owned());
        async move { with_bearer(&c, addr, &t).await.status }
    };
    for t in [&leaked, &user, &app, &fine] {
        assert_eq!(call(t).await, StatusCode::OK, "cached as valid first");
    }
    std::fs::write(
        &file,
        text("revoked = { token_ids = [\"j-leaked\"], subjects = [\"u-gone\"], clients = [\"leaky-app\"] }"),
    )
    .unwrap();
    live.reload_file(&file).unwrap();
    let seen = up.count();
    for t in [&leaked, &user, &app] {
        let a = with_bearer(&c, addr, t).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let challenge = a.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains("token revoked"), "{challenge}");
    }
    assert_eq!(up.count(), seen, "no revoked token reached the upstream");
    assert_eq!(call(&fine).await, StatusCode::OK);
    let m = live.metrics.render();
    assert!(m.contains("reason=\"token_revoked\"} 3"), "{m}");

    // Everyone out: tokens issued before now, the fine one among them.
    let cut =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1));
    std::fs::write(
        &file,
        text(&format!("revoked = {{ issued_before = \"{cut}\" }}")),
    )
    .unwrap();
    live.reload_file(&file).unwrap();
    assert_eq!(call(&fine).await, StatusCode::UNAUTHORIZED);
    // A bad time is a config error naming the key, and the running config stays.
    std::fs::write(&file, text("revoked = { issued_before = \"yesterday\" }")).unwrap();
    let e = live.reload_file(&file).unwrap_err().to_string();
    assert!(e.contains("issuers[0].revoked.issued_before"), "{e}");
    assert_eq!(call(&fine).await, StatusCode::UNAUTHORIZED);
    let _ = std::fs::remove_file(&file);
}

/// A reload that changes only what an issuer checks after the signature (`revoked`,
/// `audiences`, `leeway`) keeps its keys: with the IdP down, the tokens in use that are not
/// revoked still pass (a new key store would have none to check them with), and the revoked
/// one is refused. A new key source starts with none.
#[tokio::test]
async fn revoking_a_token_while_the_idp_is_down_keeps_the_keys() {
    let up = Upstream::start().await;
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let file =
        std::env::temp_dir().join(format!("bearward-revoke-idp-{}.toml", std::process::id()));
    let text = |revoked: &str| {
        reload_config(&up.url(), "bearer")
            .replace("https://idp.test", &idp.issuer())
            .replace(
                "jwks_file = \"tests/fixtures/jwks-rsa1.json\"",
                &format!("jwks_uri = \"{}\"\n{revoked}", idp.jwks_uri()),
            )
    };
    std::fs::write(&file, text("")).unwrap();
    let (addr, _, live) = serve_file(&file).await;
    let mint = idp.minter("https://api.test");
    let token = |jti: &str| {
        mint.token_claims(&key, |c| {
            c.insert("jti".into(), json!(jti));
        })
    };
    let (leaked, fine) = (token("j-leaked"), token("j-fine"));
    let c = client();
    let call = |t: &str| {
        let (c, t) = (c.clone(), t.to_owned());
        async move { with_bearer(&c, addr, &t).await.status }
    };
    // Keys fetched once the first token is checked (or the refresher ran).
    for _ in 0..50 {
        if call(&fine).await == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(&leaked).await, StatusCode::OK);
    idp.stop();
    std::fs::write(&file, text("revoked = { token_ids = [\"j-leaked\"] }")).unwrap();
    live.reload_file(&file).unwrap();
    assert_eq!(call(&leaked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&fine).await, StatusCode::OK, "the keys stayed");
    // So does one that changes the audiences or the leeway.
    let more = text("revoked = { token_ids = [\"j-leaked\"] }\nleeway = \"10s\"").replace(
        "audiences = [\"https://api.test\"]",
        "audiences = [\"https://api.test\", \"https://other.test\"]",
    );
    std::fs::write(&file, more).unwrap();
    live.reload_file(&file).unwrap();
    assert_eq!(call(&fine).await, StatusCode::OK, "the keys stayed");
    assert_eq!(call(&leaked).await, StatusCode::UNAUTHORIZED);
    // A new key source starts from nothing, and the IdP is down: 503, never an allow.
    let elsewhere = text("").replace(&idp.jwks_uri(), &format!("{}/other", idp.jwks_uri()));
    std::fs::write(&file, elsewhere).unwrap();
    live.reload_file(&file).unwrap();
    assert_eq!(call(&fine).await, StatusCode::SERVICE_UNAVAILABLE);
    let _ = std::fs::remove_file(&file);
}
