//! Decision mode end to end: a real nginx (`auth_request`) and a real Caddy (`forward_auth`),
//! both Debian's, started here on loopback ports in front of a recording upstream, asking
//! bearward's decision listener; and the same table of requests through proxy mode, which must
//! get the same answers. `.ci/run` installs nginx and caddy; without them these tests fail.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// bearward with a proxy listener and a decision listener on the same policy.
fn config(up: &Upstream, idp: &Idp, decision: u16, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[decision]
listen = "127.0.0.1:{decision}"
{extra}

[[issuers]]
issuer = "{}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/audit"
scopes = ["admin"]
mode = "audit"
upstream = "app"

[[routes]]
prefix = "/whoami"
upstream = "app"

[[routes]]
prefix = "/limited"
auth = "none"
rate_limit = {{ key = "ip", rate = "6/m", burst = 3 }}
upstream = "app"
"#,
        idp.issuer(),
        up.url()
    )
}

struct Ingress {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        stop_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ingress_dir(name: &str, port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bearward-{name}-{port}-{}", std::process::id()))
}

/// A shipped ingress config made local: `listen` (the line it listens with, and its
/// replacement) first, then the decision listener's and the upstream's addresses.
fn shipped_config(file: &str, listen: (&str, &str), decision: u16, upstream: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .replace(listen.0, listen.1)
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{decision}"))
        .replace(
            "127.0.0.1:3000",
            upstream.trim_start_matches("http://").trim_end_matches('/'),
        )
}

/// An ingress on a fresh port: `command` gets its directory (made, and removed with it) and the
/// port, and writes its config there. A try whose port was taken leaves no directory behind.
fn start_ingress(
    name: &str,
    what: &str,
    command: impl Fn(&std::path::Path, u16) -> Command,
) -> Ingress {
    let (child, [port]) = spawn_holding_tidy(
        what,
        |[port]| {
            let dir = ingress_dir(name, port);
            std::fs::create_dir_all(&dir).unwrap();
            let mut cmd = command(&dir, port);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        },
        |[port]| {
            let _ = std::fs::remove_dir_all(ingress_dir(name, port));
        },
    );
    let dir = ingress_dir(name, port);
    Ingress { child, port, dir }
}

/// nginx with `auth_request` to the decision listener, as deploy/decision/nginx.conf has it.
async fn nginx(decision: u16, upstream: &str) -> Ingress {
    let what = "nginx (apt-get install nginx; .ci/run does)";
    start_ingress("nginx", what, |dir, port| {
        let listen = format!("listen 127.0.0.1:{port};");
        let conf = shipped_config(
            "deploy/decision/nginx.conf",
            ("listen 8080;", &listen),
            decision,
            upstream,
        )
        .replace(
            "/var/run/nginx-bearward.pid",
            &format!("{}/nginx.pid", dir.display()),
        )
        .replace(
            "/var/log/nginx/bearward-error.log",
            &format!("{}/error.log", dir.display()),
        )
        .replace("/var/lib/nginx/bearward", &dir.display().to_string());
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.args([
            "-c",
            &dir.join("nginx.conf").display().to_string(),
            "-g",
            "daemon off;",
        ]);
        cmd
    })
}

/// `"nginx"` or `"caddy"`, in front of `upstream`, asking the decision listener on `decision`.
async fn ingress_named(which: &str, decision: u16, upstream: &str) -> Ingress {
    match which {
        "nginx" => nginx(decision, upstream).await,
        _ => caddy(decision, upstream).await,
    }
}

/// Caddy with `forward_auth` to the decision listener, as deploy/decision/Caddyfile has it.
async fn caddy(decision: u16, upstream: &str) -> Ingress {
    let what = "caddy (apt-get install caddy; .ci/run does)";
    start_ingress("caddy", what, |dir, port| {
        // Every host, as the shipped `:8080` site has it (Caddy answers a host no site names
        // with an empty 200), on loopback only.
        let listen = format!("http://:{port} {{\n\tbind 127.0.0.1");
        let conf = shipped_config(
            "deploy/decision/Caddyfile",
            (":8080 {", &listen),
            decision,
            upstream,
        );
        std::fs::write(dir.join("Caddyfile"), conf).unwrap();
        let mut cmd = Command::new("caddy");
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", dir);
        cmd
    })
}

struct Case {
    why: &'static str,
    path: &'static str,
    token: Option<String>,
    status: StatusCode,
}

fn table(mint: &Minter, key: &Key) -> Vec<Case> {
    let read = mint.token(key, "read");
    let admin = mint.token(key, "read admin");
    let c = |why, path, token: Option<&String>, status| Case {
        why,
        path,
        token: token.cloned(),
        status,
    };
    vec![
        c("public", "/public/x", None, StatusCode::OK),
        c("no token", "/api/x", None, StatusCode::UNAUTHORIZED),
        c("read token", "/api/x", Some(&read), StatusCode::OK),
        c(
            "read token, admin route",
            "/api/admin/x",
            Some(&read),
            StatusCode::FORBIDDEN,
        ),
        c(
            "admin token, admin route",
            "/api/admin/x",
            Some(&admin),
            StatusCode::OK,
        ),
        c(
            "dot segments into admin",
            "/api/x/../admin/y",
            Some(&read),
            StatusCode::FORBIDDEN,
        ),
        c(
            "encoded slash",
            "/api%2Fadmin/y",
            Some(&read),
            StatusCode::BAD_REQUEST,
        ),
        c(
            "semicolon parameter",
            "/api/admin;x=1/y",
            Some(&read),
            StatusCode::BAD_REQUEST,
        ),
        c(
            "query never routes",
            "/api/x?/api/admin",
            Some(&read),
            StatusCode::OK,
        ),
        c(
            "bad token",
            "/api/x",
            Some(&"e30.e30.e30".to_owned()),
            StatusCode::UNAUTHORIZED,
        ),
        c("audit mode", "/audit/x", Some(&read), StatusCode::OK),
    ]
}

async fn run_table(c: &HttpClient, base: &str, cases: &[Case], mode: &str) -> Vec<StatusCode> {
    let mut got = Vec::new();
    for case in cases {
        let mut h = vec![("x-auth-subject".to_owned(), "spoofed".to_owned())];
        if let Some(t) = &case.token {
            h.push(("authorization".to_owned(), format!("Bearer {t}")));
        }
        let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = get(c, &format!("{base}{}", case.path), &hv).await;
        assert_eq!(a.status, case.status, "{mode}: {}: {}", case.why, a.body);
        if a.status == StatusCode::UNAUTHORIZED {
            assert!(
                a.headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer realm=\"bearward\"")),
                "{mode}: {}: the challenge did not reach the client",
                case.why
            );
        }
        if case.status == StatusCode::FORBIDDEN {
            let www = a.headers["www-authenticate"].to_str().unwrap();
            assert!(
                www.contains("error=\"insufficient_scope\""),
                "{mode}: {www}"
            );
        }
        got.push(a.status);
    }
    got
}

/// An IdP, an upstream, and bearward with both listeners (the decision one on `dport`).
async fn start() -> (Key, Idp, Upstream, u16, Gateway) {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let (dport, gw) = Gateway::start_on_free_port(|p| config(&up, &idp, p, "")).await;
    wait_ready(&gw).await;
    (key, idp, up, dport, gw)
}

#[tokio::test]
async fn nginx_and_caddy_get_the_decisions_proxy_mode_gives() {
    let (key, idp, up, dport, gw) = start().await;
    let mint = idp.minter("https://api.test");
    let cases = table(&mint, &key);
    let c = client();

    let proxy = run_table(&c, &format!("http://{}", gw.addr), &cases, "proxy").await;
    let forwarded = up.count();
    assert_eq!(
        forwarded,
        cases.iter().filter(|k| k.status == StatusCode::OK).count()
    );
    for seen in up.seen() {
        assert_ne!(
            seen.headers
                .get("x-auth-subject")
                .map(|v| v.to_str().unwrap()),
            Some("spoofed")
        );
    }

    let ng = nginx(dport, &up.url()).await;
    let via_nginx = run_table(
        &c,
        &format!("http://127.0.0.1:{}", ng.port),
        &cases,
        "nginx",
    )
    .await;
    assert_eq!(
        via_nginx, proxy,
        "nginx auth_request and proxy mode disagree"
    );
    let cd = caddy(dport, &up.url()).await;
    let via_caddy = run_table(
        &c,
        &format!("http://127.0.0.1:{}", cd.port),
        &cases,
        "caddy",
    )
    .await;
    assert_eq!(
        via_caddy, proxy,
        "caddy forward_auth and proxy mode disagree"
    );

    // What reached the upstream through the ingresses: the allowed requests only, with the
    // identity bearward answered and never the client's own copy.
    let seen = up.seen();
    assert_eq!(seen.len(), forwarded * 3);
    for s in &seen[forwarded..] {
        let subject = s
            .headers
            .get("x-auth-subject")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_ne!(
            subject.as_deref(),
            Some("spoofed"),
            "{}: a client-sent identity reached the upstream",
            s.uri
        );
        if s.uri.starts_with("/api") {
            assert_eq!(subject.as_deref(), Some("user-42"), "{}", s.uri);
        }
    }

    // Decisions are counted and logged as proxy-mode requests are, by route and reason.
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert!(metric(&m, "bearward_requests_total{route=\"/api/admin*\",status=\"403\",decision=\"deny\",reason=\"insufficient_scope\"}") >= 3.0, "{m}");
}

/// A rate limit decided on the decision listener: keyed by the client the ingress names
/// (X-Forwarded-For, its rightmost entry: the client's own entries never count), and its 429
/// with Retry-After and the RateLimit fields reaching the client through nginx and Caddy.
#[tokio::test]
async fn rate_limits_hold_through_the_ingress() {
    let (_key, _idp, up, dport, gw) = start().await;
    let c = client();
    let ng = nginx(dport, &up.url()).await;
    let cd = caddy(dport, &up.url()).await;
    let check_429 = |a: &Answer, via: &str| {
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{via}: {}", a.body);
        let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&wait), "{via}: Retry-After {wait}");
        let rl = a.headers["ratelimit"].to_str().unwrap();
        assert!(rl.starts_with("\"/limited*\";r=0;t="), "{via}: {rl}");
        assert_eq!(
            a.headers["ratelimit-policy"], "\"/limited*\";q=6;w=60",
            "{via}"
        );
    };
    // burst 3, one more every 10 s; every request claims another address to the left of the
    // one nginx appends.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let forged = format!("192.0.2.{i}");
        let a = get(
            &c,
            &format!("http://127.0.0.1:{}/limited/x", ng.port),
            &[("x-forwarded-for", &forged)],
        )
        .await;
        if a.status == StatusCode::OK {
            let rl = a.headers["ratelimit"].to_str().unwrap();
            assert!(rl.starts_with("\"/limited*\";r="), "nginx, allowed: {rl}");
        } else {
            check_429(&a, "nginx");
        }
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "through nginx");
    // Caddy names the same client (127.0.0.1), whose bucket is empty.
    for i in 0..3 {
        let forged = format!("198.51.100.{i}");
        let a = get(
            &c,
            &format!("http://127.0.0.1:{}/limited/x", cd.port),
            &[("x-forwarded-for", &forged)],
        )
        .await;
        check_429(&a, "caddy");
    }
    assert_eq!(up.count(), 3, "the upstream got what passed");
    // Asked directly, as an ingress on another host would: the client is the one named, not
    // the ingress (which would put every client behind it in one bucket).
    let ask = |xff: &'static str| {
        let (c, url) = (c.clone(), format!("http://127.0.0.1:{dport}/auth"));
        async move {
            let h = [("x-original-uri", "/limited/x"), ("x-forwarded-for", xff)];
            get(&c, &url, &h).await.status.as_u16()
        }
    };
    let mut statuses = Vec::new();
    for xff in [
        "203.0.113.9",
        "203.0.113.9",
        "203.0.113.9",
        "203.0.113.9",
        "198.51.100.1",
    ] {
        statuses.push(ask(xff).await);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 200],
        "keyed by the named client"
    );
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert!(
        metric(&m, "bearward_requests_total{route=\"/limited*\",status=\"429\",decision=\"deny\",reason=\"rate_limited\"}") >= 6.0,
        "{m}"
    );
}

#[tokio::test]
async fn original_request_headers_count_only_from_trusted_peers() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    // Nobody is trusted: loopback itself is left out.
    let (dport, gw) =
        Gateway::start_on_free_port(|p| config(&up, &idp, p, "trusted_proxies = [\"10.0.0.0/8\"]"))
            .await;
    wait_ready(&gw).await;
    let c = client();
    let read = idp.minter("https://api.test").token(&key, "read");
    let a = get(
        &c,
        &format!("http://127.0.0.1:{dport}/auth"),
        &[
            ("x-original-uri", "/public/x"),
            ("authorization", &format!("Bearer {read}")),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert!(m.contains("reason=\"untrusted_decision_peer\""), "{m}");

    // Trusted (the default, loopback), but asking without an original URI, or with two.
    let (dport, gw) = Gateway::start_on_free_port(|p| config(&up, &idp, p, "")).await;
    wait_ready(&gw).await;
    let url = format!("http://127.0.0.1:{dport}/public/x");
    let a = get(&c, &url, &[]).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "no fallback to the decision request's own path"
    );
    let a = send(
        &c,
        "GET",
        &format!("http://127.0.0.1:{dport}/auth"),
        &[
            ("x-original-uri", "/public/x"),
            ("x-original-uri", "/api/x"),
        ],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = get(
        &c,
        &format!("http://127.0.0.1:{dport}/auth"),
        &[("x-original-uri", "/public/x")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.count(), 0, "a decision never reaches the upstream");
    drop(gw);
}

#[tokio::test]
async fn a_decision_only_config_needs_no_upstream() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let cfg = |dport: u16| {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[decision]
listen = "127.0.0.1:{dport}"

[[issuers]]
issuer = "{}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[[routes]]
prefix = "/api"
scopes = ["read"]
"#,
            idp.issuer()
        )
    };
    let (dport, gw) = Gateway::start_on_free_port(&cfg).await;
    let c = client();
    let read = idp.minter("https://api.test").token(&key, "read");
    let auth = format!("Bearer {read}");
    let ask = |uri: &'static str| {
        let (c, auth) = (c.clone(), auth.clone());
        async move {
            get(
                &c,
                &format!("http://127.0.0.1:{dport}/auth"),
                &[("x-original-uri", uri), ("authorization", &auth)],
            )
            .await
            .status
        }
    };
    // Keys load on the first request that needs them.
    let mut status = ask("/api/x").await;
    for _ in 0..40 {
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = ask("/api/x").await;
    }
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ask("/other").await, StatusCode::NOT_FOUND);
    // The proxy listener has nowhere to send it.
    let a = get(&c, &gw.url("/api/x"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Without [decision], a route must name its upstream.
    let e = bearward::config::Config::from_toml_str(
        &cfg(dport).replace(&format!("[decision]\nlisten = \"127.0.0.1:{dport}\""), ""),
        "t.toml",
    )
    .expect_err("refused")
    .to_string();
    assert!(
        e.contains("routes[0].upstream") && e.contains("is required"),
        "{e}"
    );
}

/// A key, an IdP serving it, a recording upstream and a client.
async fn parts() -> (Key, Idp, Upstream, HttpClient) {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    (key, idp, Upstream::start().await, client())
}

/// bearward with `[decision]` lines `extra` (e.g. `ingress = "caddy"`), on a fresh port.
async fn start_with(idp: &Idp, up: &Upstream, extra: &str) -> (u16, Gateway) {
    let (dport, gw) = Gateway::start_on_free_port(|p| config(up, idp, p, extra)).await;
    wait_ready(&gw).await;
    (dport, gw)
}

/// The original-request headers of every convention bearward knows, and ours to check.
const CONVENTION_HEADERS: [&str; 4] = [
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
];

/// Through the real ingresses, with `ingress` set and unset: a client that writes another
/// convention's description of the request (pointing at an open route) is still checked on
/// the path it asked for, and that description never reaches the API. On today's main, Caddy
/// let `X-Original-URI: /public/x` open `/api/admin/secret` without a token.
#[tokio::test]
async fn a_client_cannot_choose_the_original_request_through_either_ingress() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let read = idp.minter("https://api.test").token(&key, "read");
    let c = client();
    let forged: [&[(&str, &str)]; 4] = [
        &[
            ("x-original-uri", "/public/x"),
            ("x-original-method", "GET"),
        ],
        &[
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-method", "GET"),
        ],
        &[("x-original-uri", "/api/x"), ("x-forwarded-uri", "/api/x")],
        &[
            ("x-forwarded-uri", "/public/x"),
            ("x-original-uri", "/public/x"),
        ],
    ];
    for (which, setting) in [
        ("caddy", ""),
        ("caddy", "ingress = \"caddy\""),
        ("nginx", ""),
        ("nginx", "ingress = \"nginx\""),
    ] {
        let (dport, _gw) = start_with(&idp, &up, setting).await;
        let ingress = ingress_named(which, dport, &up.url()).await;
        let base = format!("http://127.0.0.1:{}", ingress.port);
        let before = up.count();
        for h in forged {
            let a = get(&c, &format!("{base}/api/admin/secret"), h).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{which} {setting:?} {h:?}: {}",
                a.body
            );
            let auth = format!("Bearer {read}");
            let mut with = h.to_vec();
            with.push(("authorization", &auth));
            let a = get(&c, &format!("{base}/api/admin/secret"), &with).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{which} {setting:?} {h:?}");
        }
        assert_eq!(
            up.count(),
            before,
            "{which} {setting:?}: the API was reached"
        );
        // Allowed requests reach the API without any convention's headers the client wrote.
        for h in forged {
            let a = get(&c, &format!("{base}/public/ok"), h).await;
            assert_eq!(a.status, StatusCode::OK, "{which} {setting:?} {h:?}");
            let seen = up.last();
            for name in CONVENTION_HEADERS {
                assert!(
                    !seen.headers.contains_key(name),
                    "{which} {setting:?}: {name} reached the API: {:?}",
                    seen.headers
                );
            }
        }
    }
}

/// Asked directly, as an ingress would: only the configured convention is read, the others
/// are ignored; unset, a request carrying two conventions is a 400. Every answer below that is
/// not 400 is a 401 for `/api/admin/x`: had a forged `/public/x` been read, it would be 200.
#[tokio::test]
async fn only_the_configured_convention_is_read() {
    let (_key, idp, up, c) = parts().await;
    const O: (&str, &str) = ("x-original-uri", "/api/admin/x");
    const F: (&str, &str) = ("x-forwarded-uri", "/api/admin/x");
    const FO: (&str, &str) = ("x-original-uri", "/public/x");
    const FF: (&str, &str) = ("x-forwarded-uri", "/public/x");
    let prefix = "envoy_path_prefix = \"/ext_authz\"";
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [(String, Vec<Row<'_>>); 4] = [
        (
            "ingress = \"nginx\"".to_owned(),
            vec![
                ("/auth", &[O], 401),
                ("/auth", &[F], 400),
                ("/ext_authz/api/admin/x", &[], 400),
                ("/auth", &[O, FF], 401),
                ("/auth", &[FF, O, ("x-forwarded-method", "GET")], 401),
            ],
        ),
        (
            "ingress = \"caddy\"".to_owned(),
            vec![
                ("/auth", &[F], 401),
                ("/auth", &[O], 400),
                ("/auth", &[F, FO], 401),
                ("/auth", &[FO, ("x-original-method", "GET"), F], 401),
            ],
        ),
        (
            format!("ingress = \"envoy\"\n{prefix}"),
            vec![
                ("/ext_authz/api/admin/x", &[], 401),
                ("/ext_authz/api/admin/x", &[FO, FF], 401),
                ("/auth", &[FO], 400),
                ("/auth", &[FF], 400),
            ],
        ),
        (
            prefix.to_owned(),
            vec![
                ("/auth", &[O], 401),
                ("/auth", &[F], 401),
                ("/ext_authz/api/admin/x", &[], 401),
                ("/auth", &[O, FF], 400),
                ("/auth", &[F, FO], 400),
                ("/ext_authz/api/admin/x", &[FO], 400),
                ("/ext_authz/api/admin/x", &[FF], 400),
                ("/auth", &[("x-original-method", "GET"), F], 400),
                ("/auth", &[("x-forwarded-method", "GET"), O], 400),
            ],
        ),
    ];
    for (setting, rows) in &cases {
        let (dport, gw) = start_with(&idp, &up, setting).await;
        for (path, h, status) in rows {
            let a = get(&c, &format!("http://127.0.0.1:{dport}{path}"), h).await;
            assert_eq!(
                a.status.as_u16(),
                *status,
                "{setting:?} {path} {h:?}: {}",
                a.body
            );
        }
        let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
            .await
            .body;
        let allowed: f64 = m
            .lines()
            .filter(|l| l.starts_with("bearward_requests_total{") && l.contains("status=\"200\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(allowed, 0.0, "{setting:?}: {m}");
    }
    assert_eq!(up.count(), 0);
}

/// A token without a `scope` claim, and a client that sends its own `X-Auth-Scopes` (and the
/// `_` spelling PHP reads as the same): bearward's answer carries every configured claim
/// header, empty where the claim is absent, and neither ingress lets the client's copy reach
/// the API (Caddy's copy_headers kept a client's copy when the answer had none,
/// GHSA-7r4p-vjf4-gxv4).
#[tokio::test]
async fn a_client_copy_of_a_claim_header_never_reaches_the_api() {
    let (key, idp, up, c) = parts().await;
    let no_scope = idp.minter("https://api.test").token_claims(&key, |claims| {
        claims.remove("scope");
    });
    let auth = format!("Bearer {no_scope}");
    let h = [
        ("authorization", auth.as_str()),
        ("x-auth-scopes", "admin"),
        ("x_auth_scopes", "admin"),
        ("x_auth_subject", "spoofed"),
        ("x-bearward-audit", "allow"),
        ("x_bearward_audit", "allow"),
    ];
    for (which, setting) in [
        ("caddy", ""),
        ("caddy", "ingress = \"caddy\""),
        ("nginx", ""),
        ("nginx", "ingress = \"nginx\""),
    ] {
        let (dport, _gw) = start_with(&idp, &up, setting).await;
        // The answer itself: every claim header, empty where the token has no such claim.
        let a = get(
            &c,
            &format!("http://127.0.0.1:{dport}/auth"),
            &[
                ("authorization", auth.as_str()),
                if which == "nginx" {
                    ("x-original-uri", "/whoami")
                } else {
                    ("x-forwarded-uri", "/whoami")
                },
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.headers["x-auth-scopes"], "");
        assert_eq!(a.headers["x-auth-subject"], "user-42");
        assert_eq!(a.headers["x-bearward-audit"], "");
        let ingress = ingress_named(which, dport, &up.url()).await;
        let a = get(&c, &format!("http://127.0.0.1:{}/whoami", ingress.port), &h).await;
        assert_eq!(a.status, StatusCode::OK, "{which}: {}", a.body);
        let seen = up.last();
        let value = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert!(
            value("x-auth-scopes").unwrap_or_default().is_empty(),
            "{which}: {:?}",
            seen.headers
        );
        assert_eq!(
            value("x-auth-subject").as_deref(),
            Some("user-42"),
            "{which}"
        );
        assert!(
            value("x-bearward-audit").unwrap_or_default().is_empty(),
            "{which}"
        );
        for underscored in ["x_auth_scopes", "x_auth_subject", "x_bearward_audit"] {
            assert_eq!(
                value(underscored),
                None,
                "{which}: {underscored} reached the API"
            );
        }
    }
}

/// `payload_header` in a decision answer: the verified payload, else empty (never absent), as
/// the claim headers are, so an ingress that copies only what an answer carries cannot pass
/// the client's own on.
#[tokio::test]
async fn a_decision_answer_carries_the_payload_header_or_an_empty_one() {
    let (key, idp, up, c) = parts().await;
    let (dport, _gw) = Gateway::start_on_free_port(|p| {
        config(&up, &idp, p, "ingress = \"nginx\"").replace(
            "[forward]\n",
            "[forward]\npayload_header = \"X-Jwt-Payload\"\n",
        )
    })
    .await;
    let token = idp.minter("https://api.test").token(&key, "read");
    let bearer = format!("Bearer {token}");
    let ask = |uri: &'static str, auth: Option<String>| {
        let c = c.clone();
        async move {
            let mut h = vec![
                ("x-original-uri", uri),
                ("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9"),
            ];
            if let Some(a) = &auth {
                h.push(("authorization", a.as_str()));
            }
            let a = get(&c, &format!("http://127.0.0.1:{dport}/auth"), &h).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
            a.headers["x-jwt-payload"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        ask("/api/x", Some(bearer)).await,
        token.split('.').nth(1).unwrap()
    );
    assert_eq!(ask("/public/x", None).await, "");
}

/// A fragment is never part of a request: `#` anywhere in the original URI, or `%23` in its
/// path, is a 400 (a rule matched on a string holding one was widened by it in oauth2-proxy,
/// CVE-2026-41059). In the query, `%23` is data.
#[tokio::test]
async fn a_fragment_in_the_original_uri_is_refused() {
    let (_key, idp, up, c) = parts().await;
    let (dport, _gw) = start_with(&idp, &up, "ingress = \"nginx\"").await;
    for (uri, status) in [
        ("/api/admin/x#/public/x", 400),
        ("/public/x#", 400),
        ("/public/x%23/../../api/admin", 400),
        ("/public%23x", 400),
        ("/public/x?c=%23fff", 200),
        ("/public/x?c=#fff", 400),
    ] {
        let a = get(
            &c,
            &format!("http://127.0.0.1:{dport}/auth"),
            &[("x-original-uri", uri)],
        )
        .await;
        assert_eq!(a.status.as_u16(), status, "{uri}");
    }
    // Through nginx, whose $request_uri keeps the client's escapes.
    let ng = nginx(dport, &up.url()).await;
    let a = get(
        &c,
        &format!("http://127.0.0.1:{}/public/x%23y", ng.port),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(up.count(), 0);
}

/// No shortcut: whatever the path, method or User-Agent (Kubernetes, AWS, Envoy and Google
/// health checkers among them), a request on the decision listener is answered by the phases,
/// never 200 on its own form (oauth2-proxy's CVE-2026-34457 answered some without a check).
#[tokio::test]
async fn no_request_form_on_the_decision_listener_skips_the_phases() {
    let (_key, idp, up, c) = parts().await;
    let paths = [
        "/",
        "/auth",
        "/healthz",
        "/health",
        "/readyz",
        "/livez",
        "/ping",
        "/ready",
        "/status",
        "/-/healthy",
        "/favicon.ico",
        "/ext_authz",
        "/ext_authz/",
        "/metrics",
        "/.well-known/openid-configuration",
    ];
    let agents = [
        "kube-probe/1.30",
        "ELB-HealthChecker/2.0",
        "Envoy/HC",
        "GoogleHC/1.0",
        "Consul Health Check",
        "curl/8.5.0",
    ];
    for setting in [
        "",
        "ingress = \"nginx\"",
        "ingress = \"caddy\"",
        "ingress = \"envoy\"\nenvoy_path_prefix = \"/ext_authz\"",
    ] {
        let (dport, gw) = start_with(&idp, &up, setting).await;
        let mut n = 0;
        for path in paths {
            for ua in agents {
                for method in ["GET", "HEAD", "OPTIONS"] {
                    let a = send(
                        &c,
                        method,
                        &format!("http://127.0.0.1:{dport}{path}"),
                        &[("user-agent", ua)],
                        "",
                    )
                    .await;
                    assert_ne!(a.status, StatusCode::OK, "{setting:?} {method} {path} {ua}");
                    n += 1;
                }
            }
        }
        let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
            .await
            .body;
        let denied: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("bearward_requests_total{") && l.contains("decision=\"deny\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            denied,
            f64::from(n),
            "{setting:?}: every one counted with a reason: {m}"
        );
    }
    assert_eq!(up.count(), 0);
}

/// Request ids through the ingresses: the ingress's own id (nginx's `$request_id`, Caddy's
/// `{http.request.uuid}`) reaches bearward, the API and the client, never the client's; asked
/// directly, bearward answers with the id the ingress sent.
#[tokio::test]
async fn request_ids_are_the_ingresses_never_the_clients() {
    let (_key, _idp, up, dport, _gw) = start().await;
    let c = client();
    let ng = nginx(dport, &up.url()).await;
    let cd = caddy(dport, &up.url()).await;
    let sent = [("x-request-id", "chosen-by-the-client")];
    for (port, via, len) in [(ng.port, "nginx", 32), (cd.port, "caddy", 36)] {
        let a = get(&c, &format!("http://127.0.0.1:{port}/public/x"), &sent).await;
        assert_eq!(a.status, StatusCode::OK, "{via}");
        let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), len, "{via}: {id}");
        assert!(
            id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{via}: {id}"
        );
        let upstream: Vec<_> = up
            .last()
            .headers
            .get_all("x-request-id")
            .iter()
            .cloned()
            .collect();
        assert_eq!(
            upstream,
            [id.as_str()],
            "{via}: the API got the ingress's id"
        );
        // A refusal quotes the ingress's id to the client as well.
        let a = get(&c, &format!("http://127.0.0.1:{port}/api/x"), &sent).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{via}");
        let refused = a.headers["x-request-id"].to_str().unwrap();
        assert!(refused.len() == len && refused != id, "{via}: {refused}");
    }
    let ask = format!("http://127.0.0.1:{dport}/auth");
    let a = get(
        &c,
        &ask,
        &[
            ("x-original-uri", "/public/x"),
            ("x-request-id", "ingress-42"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-request-id"], "ingress-42");
}

/// A GET route takes HEAD through the ingresses too: nginx's `auth_request` asks with a GET
/// and names the method in `X-Original-Method`, Caddy's `forward_auth` in `X-Forwarded-Method`,
/// and a HEAD must be checked as the GET it stands for, not fall through to an open catch-all.
#[tokio::test]
async fn a_head_is_checked_as_a_get_through_nginx_and_caddy() {
    let (key, idp, up, c) = parts().await;
    let read = format!(
        "Bearer {}",
        idp.minter("https://api.test").token(&key, "read")
    );
    let (dport, gw) = Gateway::start_on_free_port(|p| {
        config(&up, &idp, p, "").replace(
            "[[routes]]\nprefix = \"/public\"",
            "[[routes]]\nprefix = \"/reports\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"app\"\n\n\
             [[routes]]\nprefix = \"/public\"",
        ) + "\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n"
    })
    .await;
    wait_ready(&gw).await;
    let (ng, cd) = (nginx(dport, &up.url()).await, caddy(dport, &up.url()).await);
    for (name, port) in [("nginx", ng.port), ("caddy", cd.port)] {
        let url = format!("http://127.0.0.1:{port}/reports/q3");
        let seen = up.count();
        let a = send(&c, "HEAD", &url, &[], "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            up.count(),
            seen,
            "{name}: a HEAD without a token reached the API"
        );
        let a = send(&c, "HEAD", &url, &[("authorization", &read)], "").await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
        assert_eq!(up.count(), seen + 1, "{name}");
        assert_eq!(up.last().method, "HEAD", "{name}");
        // A POST is not the route's: it goes to the open catch-all.
        let a = send(&c, "POST", &url, &[], "").await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"/reports*\",status=\"401\",decision=\"deny\",reason=\"missing_token\"}"),
        2.0,
        "{m}"
    );
}

/// Routes chosen by host, through the real nginx and Caddy with their shipped configs: the host
/// the client asked for (in any spelling) picks the route, as in proxy mode; a client that
/// writes another host into either convention's host header (`X-Original-Host`,
/// `X-Forwarded-Host`) is still checked on its own, and neither header reaches the API.
#[tokio::test]
async fn routes_for_a_host_hold_through_nginx_and_caddy() {
    const HOST_ROUTES: &str = "\n[[routes]]\nprefix = \"/tenant\"\nhosts = [\"admin.test\"]\n\
        scopes = [\"admin\"]\nupstream = \"app\"\n\n[[routes]]\nprefix = \"/tenant\"\n\
        auth = \"none\"\nupstream = \"app\"\n";
    let (key, idp, up, c) = parts().await;
    let admin = format!(
        "Bearer {}",
        idp.minter("https://api.test").token(&key, "admin")
    );
    let (_, proxy) = Gateway::start_on_free_port(|p| config(&up, &idp, p, "") + HOST_ROUTES).await;
    wait_ready(&proxy).await;
    let forged: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-original-host", "www.test")],
        &[("x-forwarded-host", "www.test")],
    ];
    for (which, setting) in [
        (
            "nginx",
            "ingress = \"nginx\"\noriginal_host_header = \"X-Original-Host\"",
        ),
        ("caddy", "ingress = \"caddy\""),
    ] {
        let (dport, _gw) =
            Gateway::start_on_free_port(|p| config(&up, &idp, p, setting) + HOST_ROUTES).await;
        wait_ready(&_gw).await;
        let ingress = ingress_named(which, dport, &up.url()).await;
        let base = format!("http://127.0.0.1:{}", ingress.port);
        let before = up.count();
        for (url, mode) in [(base.as_str(), which), (&proxy.url(""), "proxy")] {
            for host in ["admin.test", "ADMIN.test", "admin.test."] {
                for h in forged {
                    let mut with = h.to_vec();
                    with.push(("host", host));
                    let a = get(&c, &format!("{url}/tenant/x"), &with).await;
                    assert_eq!(
                        a.status,
                        StatusCode::UNAUTHORIZED,
                        "{mode} {host} {h:?}: {}",
                        a.body
                    );
                }
            }
        }
        assert_eq!(up.count(), before, "{which}: the API was reached unchecked");
        for (url, mode) in [(base.as_str(), which), (&proxy.url(""), "proxy")] {
            let a = get(
                &c,
                &format!("{url}/tenant/x"),
                &[("host", "admin.test"), ("authorization", &admin)],
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{mode}");
            let a = get(
                &c,
                &format!("{url}/tenant/x"),
                &[("host", "www.test"), ("x-original-host", "admin.test")],
            )
            .await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{mode}: another host, the open route"
            );
            if mode != "proxy" {
                assert!(
                    !up.last().headers.contains_key("x-original-host"),
                    "{mode}: X-Original-Host reached the API: {:?}",
                    up.last().headers
                );
            }
        }
    }
}

/// `source_ranges` through the real nginx and Caddy: the client is the address the ingress
/// names (nginx appends the one it sees to `X-Forwarded-For`, Caddy replaces the header), so an
/// office address the client writes itself does not open an office route; asked directly, the
/// decision listener reads the address the ingress names and refuses a request that names
/// none, since its peer is the ingress, never the client.
#[tokio::test]
async fn source_ranges_hold_through_nginx_and_caddy() {
    const ROUTES: &str = "\n[[routes]]\nprefix = \"/lan\"\nauth = \"none\"\n\
        source_ranges = [\"127.0.0.0/8\"]\nupstream = \"app\"\n\n[[routes]]\n\
        prefix = \"/office\"\nauth = \"none\"\nsource_ranges = [\"10.0.0.0/8\"]\n\
        upstream = \"app\"\n";
    let (_key, idp, up, c) = parts().await;
    let forged: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-forwarded-for", "10.1.2.3")],
        &[("x-real-ip", "10.1.2.3"), ("forwarded", "for=10.1.2.3")],
    ];
    for (which, setting, uri_header) in [
        ("nginx", "ingress = \"nginx\"", "x-original-uri"),
        ("caddy", "ingress = \"caddy\"", "x-forwarded-uri"),
    ] {
        let (dport, gw) =
            Gateway::start_on_free_port(|p| config(&up, &idp, p, setting) + ROUTES).await;
        wait_ready(&gw).await;
        let ingress = ingress_named(which, dport, &up.url()).await;
        let base = format!("http://127.0.0.1:{}", ingress.port);
        let before = up.count();
        for h in forged {
            let a = get(&c, &format!("{base}/office/x"), h).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{which} {h:?}: {}", a.body);
        }
        assert_eq!(up.count(), before, "{which}: the API was reached");
        for h in forged {
            let a = get(&c, &format!("{base}/lan/x"), h).await;
            assert_eq!(a.status, StatusCode::OK, "{which} {h:?}: {}", a.body);
        }
        assert_eq!(up.count(), before + forged.len());
        // Asked directly, as an ingress on another host would.
        let url = format!("http://127.0.0.1:{dport}/auth");
        let mut statuses = Vec::new();
        for (path, xff) in [
            ("/office/x", Some("10.1.2.3")),
            ("/office/x", Some("10.1.2.3, 203.0.113.9")),
            ("/office/x", None),
            ("/lan/x", None),
        ] {
            let mut h = vec![(uri_header, path)];
            if which == "caddy" {
                h.push(("x-forwarded-method", "GET"));
            }
            h.extend(xff.map(|x| ("x-forwarded-for", x)));
            statuses.push(get(&c, &url, &h).await.status.as_u16());
        }
        assert_eq!(statuses, [200, 403, 403, 403], "{which}, asked directly");
        let m = gw.metrics().await;
        assert_eq!(
            metric(&m, "bearward_requests_total{route=\"/office*\",status=\"403\",decision=\"deny\",reason=\"source_not_allowed\"}"),
            5.0,
            "{which}: {m}"
        );
    }
}

/// A `token_header` route behind nginx and Caddy: the ingress passes the header to the decision
/// listener as any other, and the token in it is checked there; a token in `Authorization` is
/// not that route's.
#[tokio::test]
async fn a_token_header_route_is_checked_through_nginx_and_caddy() {
    let (key, idp, up, c) = parts().await;
    let mint = idp.minter("https://api.test");
    let (read, write) = (mint.token(&key, "read"), mint.token(&key, "write"));
    let route = "[[routes]]\nprefix = \"/iap\"\nscopes = [\"read\"]\n\
                 token_header = \"Cf-Access-Jwt-Assertion\"\nupstream = \"app\"";
    let (dport, _gw) = with_route_first(&up, &idp, route, "").await;
    let (ng, cd) = (nginx(dport, &up.url()).await, caddy(dport, &up.url()).await);
    let bearer = format!("Bearer {read}");
    for (name, port) in [("nginx", ng.port), ("caddy", cd.port)] {
        let url = format!("http://127.0.0.1:{port}/iap/x");
        let seen = up.count();
        for (headers, want) in [
            (vec![], StatusCode::UNAUTHORIZED),
            (
                vec![("authorization", bearer.as_str())],
                StatusCode::UNAUTHORIZED,
            ),
            (
                vec![("cf-access-jwt-assertion", write.as_str())],
                StatusCode::FORBIDDEN,
            ),
        ] {
            let a = send(&c, "GET", &url, &headers, "").await;
            assert_eq!(a.status, want, "{name}: {headers:?}");
        }
        assert_eq!(
            up.count(),
            seen,
            "{name}: a refused request reached the API"
        );
        let a = send(&c, "GET", &url, &[("cf-access-jwt-assertion", &read)], "").await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
        assert_eq!(up.count(), seen + 1, "{name}");
        assert_eq!(up.last().uri, "/iap/x", "{name}");
    }
}

/// An `auth = "optional"` route behind nginx and Caddy: a request without a token reaches the
/// API with empty claim headers in place of the client's own, one with a valid token with its
/// claims, and one with a bad token not at all.
#[tokio::test]
async fn an_optional_route_is_decided_through_nginx_and_caddy() {
    let (key, idp, up, c) = parts().await;
    let mint = idp.minter("https://api.test");
    let route = "[[routes]]\nprefix = \"/maybe\"\nauth = \"optional\"\nupstream = \"app\"";
    let (dport, _gw) = with_route_first(&up, &idp, route, "").await;
    let (ng, cd) = (nginx(dport, &up.url()).await, caddy(dport, &up.url()).await);
    let bearer = format!("Bearer {}", mint.token(&key, "write"));
    let foreign = format!("Bearer {}", mint.token(&Key::rsa2(), "read"));
    for (name, port) in [("nginx", ng.port), ("caddy", cd.port)] {
        let url = format!("http://127.0.0.1:{port}/maybe/x");
        let subject = |headers: &[(&str, &str)]| {
            let (c, url) = (c.clone(), url.clone());
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let up = &up;
            async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let a = send(&c, "GET", &url, &h, "").await;
                assert_eq!(a.status, StatusCode::OK, "{name}: {headers:?}");
                let seen = up.last();
                seen.headers
                    .get("x-auth-subject")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }
        };
        assert_eq!(subject(&[("x-auth-subject", "admin")]).await, "", "{name}");
        assert_eq!(
            subject(&[("authorization", &bearer), ("x-auth-subject", "admin")]).await,
            "user-42",
            "{name}"
        );
        let seen = up.count();
        let a = send(&c, "GET", &url, &[("authorization", &foreign)], "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(up.count(), seen, "{name}: a bad token reached the API");
    }
}

/// A `token_cookie` route behind nginx and Caddy: the ingress passes `Cookie`, the original
/// method and the browser's `Sec-Fetch-Site` and `Origin` to the decision listener, and an unsafe
/// request from another site is refused there, whatever its cookie holds; API clients' tokens
/// in `Authorization` are taken too.
#[tokio::test]
async fn a_token_cookie_route_is_checked_through_nginx_and_caddy() {
    let (key, idp, up, c) = parts().await;
    let mint = idp.minter("https://api.test");
    let (read, write) = (mint.token(&key, "read"), mint.token(&key, "write"));
    let route = "[[routes]]\nprefix = \"/spa\"\nscopes = [\"read\"]\n\
                 token_cookie = \"CF_Authorization\"\nupstream = \"app\"\n\
                 login_url = \"https://login.test/?rd={url}\"";
    let (dport, _gw) = with_route_first(&up, &idp, route, "").await;
    let (ng, cd) = (nginx(dport, &up.url()).await, caddy(dport, &up.url()).await);
    let (jar, wrong) = (
        format!("a=1; CF_Authorization={read}"),
        format!("CF_Authorization={write}"),
    );
    let bearer = format!("Bearer {read}");
    for (name, port) in [("nginx", ng.port), ("caddy", cd.port)] {
        let url = format!("http://127.0.0.1:{port}/spa/x");
        let seen = up.count();
        for (method, headers, want) in [
            ("GET", vec![], StatusCode::UNAUTHORIZED),
            // The ingress's own error page sends a browser to sign in: bearward says 401.
            (
                "GET",
                vec![("sec-fetch-mode", "navigate")],
                StatusCode::UNAUTHORIZED,
            ),
            (
                "GET",
                vec![("cookie", wrong.as_str())],
                StatusCode::FORBIDDEN,
            ),
            (
                "POST",
                vec![("cookie", jar.as_str()), ("sec-fetch-site", "cross-site")],
                StatusCode::FORBIDDEN,
            ),
            (
                "DELETE",
                vec![("cookie", jar.as_str()), ("origin", "https://evil.test")],
                StatusCode::FORBIDDEN,
            ),
        ] {
            let a = send(&c, method, &url, &headers, "").await;
            assert_eq!(a.status, want, "{name}: {method} {headers:?}");
        }
        assert_eq!(
            up.count(),
            seen,
            "{name}: a refused request reached the API"
        );
        for method in ["GET", "POST"] {
            let h = [("cookie", jar.as_str()), ("sec-fetch-site", "same-origin")];
            let a = send(&c, method, &url, &h, "").await;
            assert_eq!(a.status, StatusCode::OK, "{name}: {method}");
        }
        // An API client on the same route, from anywhere: its token is no cookie.
        let h = [
            ("authorization", bearer.as_str()),
            ("origin", "https://cli.test"),
        ];
        let a = send(&c, "PUT", &url, &h, "").await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
        assert_eq!(up.count(), seen + 3, "{name}");
        assert_eq!(up.last().method, "PUT", "{name}");
    }
}

/// Behind Caddy, which hands a refusal to the client as bearward wrote it, a `login_url` route
/// sends a browser opening a page without a token to sign in from the decision listener; behind
/// nginx, whose auth_request takes 401 and 403 only, it stays a 401 for nginx's own error page.
#[tokio::test]
async fn behind_caddy_a_browser_opening_a_page_is_sent_to_sign_in() {
    let (key, idp, up, c) = parts().await;
    let read = format!("at={}", idp.minter("https://api.test").token(&key, "read"));
    let route = "[[routes]]\nprefix = \"/spa\"\nscopes = [\"read\"]\ntoken_cookie = \"at\"\n\
                 login_url = \"https://login.test/?rd={url}\"\nupstream = \"app\"";
    for (ingress, want) in [
        ("caddy", StatusCode::FOUND),
        ("nginx", StatusCode::UNAUTHORIZED),
    ] {
        let setting = format!("ingress = \"{ingress}\"");
        let (dport, _gw) = with_route_first(&up, &idp, route, &setting).await;
        let front = match ingress {
            "caddy" => caddy(dport, &up.url()).await,
            _ => nginx(dport, &up.url()).await,
        };
        let url = format!("http://127.0.0.1:{}/spa/x?a=1", front.port);
        let seen = up.count();
        let a = send(&c, "GET", &url, &[("sec-fetch-mode", "navigate")], "").await;
        assert_eq!(a.status, want, "{ingress}");
        if want == StatusCode::FOUND {
            let page = format!("http%3A%2F%2F127.0.0.1%3A{}%2Fspa%2Fx%3Fa%3D1", front.port);
            assert_eq!(
                a.headers["location"],
                format!("https://login.test/?rd={page}").as_str()
            );
        }
        // The page's fetch gets the 401; nothing reached the API.
        let a = send(&c, "GET", &url, &[("sec-fetch-mode", "cors")], "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{ingress}");
        assert_eq!(up.count(), seen, "{ingress}");
        let h = [("sec-fetch-mode", "navigate"), ("cookie", read.as_str())];
        let a = send(&c, "GET", &url, &h, "").await;
        assert_eq!(a.status, StatusCode::OK, "{ingress}");
    }
}

/// A decision gateway (`extra` in its `[decision]`) with `route` first among the routes,
/// ready: its decision port and the gateway.
async fn with_route_first(up: &Upstream, idp: &Idp, route: &str, extra: &str) -> (u16, Gateway) {
    let (dport, gw) = Gateway::start_on_free_port(|p| {
        let first = format!("{route}\n\n[[routes]]\nprefix = \"/public\"");
        config(up, idp, p, extra).replace("[[routes]]\nprefix = \"/public\"", &first)
    })
    .await;
    wait_ready(&gw).await;
    (dport, gw)
}

/// A route that answers itself (`respond`) keeps the API out behind an ingress as behind the
/// proxy: its non-2xx answer is the decision, which Caddy passes to the client (nginx's
/// `auth_request` makes it a 500); nothing reaches the upstream. A 2xx `respond` is a "yes"
/// there, and the ingress serves the request from its upstream.
#[tokio::test]
async fn a_route_that_responds_itself_keeps_the_api_out_through_the_ingress() {
    let (_key, idp, up, c) = parts().await;
    let routes = "[[routes]]\nprefix = \"/maintenance\"\nauth = \"none\"\n\
        respond = { status = 503, body = \"back soon\\n\", headers = { \"Retry-After\" = \"600\" } }\n\n\
        [[routes]]\nprefix = \"/fixed\"\nauth = \"none\"\nrespond = { status = 200, body = \"fixed\\n\" }\n\n\
        [[routes]]\nprefix = \"/public\"";
    let (dport, gw) = Gateway::start_on_free_port(|p| {
        config(&up, &idp, p, "ingress = \"caddy\"").replacen(
            "[[routes]]\nprefix = \"/public\"",
            routes,
            1,
        )
    })
    .await;
    wait_ready(&gw).await;
    let cd = caddy(dport, &up.url()).await;
    let via = |path: &str| format!("http://127.0.0.1:{}{path}", cd.port);

    let a = get(&c, &via("/maintenance/orders"), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body, "back soon\n");
    assert_eq!(a.headers["retry-after"], "600");
    let a = get(&c, &gw.url("/maintenance/orders"), &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "back soon\n")
    );
    assert_eq!(up.count(), 0, "the API behind the ingress was asked");

    let a = get(&c, &gw.url("/fixed/x"), &[]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "fixed\n"));
    assert_eq!(up.count(), 0);
    let a = get(&c, &via("/fixed/x"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.count(), 1, "a 2xx respond is a yes through the ingress");

    let m = gw.metrics().await;
    assert_eq!(
        requests(&m, "/maintenance*", 503, "allow", "direct_response"),
        2.0,
        "{m}"
    );
}
