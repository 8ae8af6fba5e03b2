//! `bearward explain` golden files: the binary's output for a valid token, an expired one, one
//! for another audience, and one without the route's scope. The token's size, its id and the
//! seconds to or since `exp` vary from run to run and are normalized. `BEARWARD_BLESS=1` rewrites the golden files.

mod common;

use common::idp::*;
use serde_json::json;
use std::process::Command;

/// Replaces the number that follows `after` (up to the next non-digit) with `N`.
fn blank_number(line: &str, after: &str) -> String {
    match line.find(after) {
        Some(i) => {
            let start = i + after.len();
            let end = start
                + line[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(line.len() - start);
            format!("{}N{}", &line[..start], &line[end..])
        }
        None => line.to_owned(),
    }
}

fn normalize(s: &str) -> String {
    s.lines()
        .map(|l| {
            let mut l = blank_number(l, "token      ");
            l = blank_number(&l, "expires in ");
            l = blank_number(&l, "expired ");
            if let Some(i) = l.find(", id ") {
                let rest = &l[i + 5..];
                let tail = rest.find(' ').map_or("", |j| &rest[j..]);
                l = format!("{}, id ID{tail}", &l[..i]);
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

const FIXTURE: &str = "tests/fixtures/explain.toml";

/// `bearward explain` on `config`; without `token`, stdin is empty (no token).
fn run(config: &std::path::Path, method: &str, path: &str, token: Option<&str>) -> (String, i32) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearward"));
    cmd.arg("explain")
        .arg("--config")
        .arg(config)
        .args(["--method", method, "--path", path]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

/// `bearward explain --config FILE ARGS...` on a config of `text`, written to a file of its own
/// (removed after); the output and the exit code.
fn explain_on(text: &str, args: &[&str]) -> (String, Option<i32>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("bearward-explain-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (String::from_utf8(out.stdout).unwrap(), out.status.code())
}

fn explain(path: &str, token: &str) -> (String, i32) {
    run(FIXTURE.as_ref(), "GET", path, Some(token))
}

fn golden(name: &str, actual: &str) {
    let file = format!("tests/golden/{name}.txt");
    let actual = normalize(actual);
    if std::env::var_os("BEARWARD_BLESS").is_some() {
        std::fs::write(&file, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&file)
        .unwrap_or_else(|_| panic!("{file} missing; run with BEARWARD_BLESS=1"));
    assert_eq!(
        actual, expected,
        "{file} differs; the new output:\n{actual}"
    );
}

/// The fixture's config with `route` (the lines of a `[[routes]]` table) first among its
/// routes, named `name` in messages.
fn with_route_first(route: &str, name: &str) -> bearward::config::Config {
    let text = std::fs::read_to_string(FIXTURE).unwrap().replacen(
        "[[routes]]",
        &format!("[[routes]]\n{route}\n\n[[routes]]"),
        1,
    );
    bearward::config::Config::from_toml_str(&text, name).unwrap()
}

fn minter() -> Minter {
    Minter {
        issuer: "https://idp.example.com".into(),
        audience: "https://api.example.com".into(),
    }
}

#[test]
fn valid_token() {
    let t = minter().token(&Key::rsa1(), "read");
    let (out, code) = explain("/api/orders/../orders/7?x=1", &t);
    assert_eq!(code, 0);
    golden("explain-valid", &out);
}

#[test]
fn expired_token() {
    let t = minter().token_expired(&Key::rsa1());
    let (out, code) = explain("/api/orders/7", &t);
    assert_eq!(code, 2);
    golden("explain-expired", &out);
}

#[test]
fn wrong_audience() {
    let t = minter().token_claims(&Key::rsa1(), |c| {
        c.insert("aud".into(), json!("https://elsewhere.example.com"));
    });
    let (out, code) = explain("/api/orders/7", &t);
    assert_eq!(code, 2);
    golden("explain-wrong-audience", &out);
}

#[test]
fn missing_scope() {
    let t = minter().token(&Key::rsa1(), "read write");
    let (out, code) = explain("/api/admin/users", &t);
    assert_eq!(code, 2);
    golden("explain-missing-scope", &out);
}

#[test]
fn no_token_and_no_route() {
    let (out, _) = run(FIXTURE.as_ref(), "GET", "/api/x", None);
    golden("explain-no-token", &out);
    let (out, code) = explain("/elsewhere", "x");
    assert_eq!(code, 2);
    assert!(out.contains("404"), "{out}");
}

#[test]
fn a_lowercase_method_is_refused_as_the_proxy_refuses_it() {
    let (text, code) = run(FIXTURE.as_ref(), "get", "/api/orders/7", None);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("FAIL invalid_method"), "{text}");
    assert!(text.contains("answer     400"), "{text}");
}

#[test]
fn a_query_method_override_that_leaves_the_route_is_refused() {
    let cfg = std::fs::read_to_string("tests/fixtures/explain.toml").unwrap().replacen(
        "[[routes]]",
        "[[routes]]\nprefix = \"/api/orders\"\nmethods = [\"GET\"]\nauth = \"none\"\nupstream = \"legacy\"\n\n[[routes]]",
        1,
    );
    let file = std::env::temp_dir().join(format!("bearward-explain-{}.toml", std::process::id()));
    std::fs::write(&file, cfg).unwrap();
    let run = |path: &str| run(&file, "GET", path, None);
    let (text, code) = run("/api/orders/7?_method=delete");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("FAIL method_override"), "{text}");
    assert!(text.contains("answer     400"), "{text}");
    let (text, code) = run("/api/orders/7?_method=GET");
    assert_eq!(code, 0, "{text}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn resource_metadata_is_explained_as_bearward_answers_it() {
    let cfg = std::fs::read_to_string(FIXTURE).unwrap().replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nresource = \"https://api.example.com/api\"",
        1,
    );
    let file =
        std::env::temp_dir().join(format!("bearward-explain-rm-{}.toml", std::process::id()));
    std::fs::write(&file, cfg).unwrap();
    let (text, code) = run(
        &file,
        "GET",
        "/.well-known/oauth-protected-resource/api",
        None,
    );
    assert_eq!(code, 2, "not forwarded: {text}");
    assert!(text.contains("metadata   RFC 9728"), "{text}");
    assert!(text.contains("answer     200"), "{text}");
    let (text, _) = run(
        &file,
        "POST",
        "/.well-known/oauth-protected-resource/api",
        None,
    );
    assert!(text.contains("answer     405"), "{text}");
    let (text, _) = run(&file, "GET", "/api/orders/7", None);
    assert!(
        text.contains("WWW-Authenticate: Bearer realm=\"bearward\", resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/api\", scope=\"read\""),
        "{text}"
    );
    std::fs::remove_file(&file).unwrap();
}

/// Every request the golden cases explain, and more, through `explain` (in process) and the
/// live proxy: the same status and the same reason, since both run the same phases.
#[tokio::test]
async fn explain_and_the_proxy_agree_on_every_case() {
    let up = common::Upstream::start().await;
    let text = std::fs::read_to_string(FIXTURE)
        .unwrap()
        .replace("http://127.0.0.1:3000", &up.url())
        .replacen(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nresource = \"https://api.example.com/api\"",
            1,
        )
        .replacen(
            "[[routes]]",
            "[[routes]]\nprefix = \"/api/orders\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"legacy\"\n\n[[routes]]\nprefix = \"/audit\"\nmode = \"audit\"\nscopes = [\"admin\"]\nupstream = \"legacy\"\n\n[[routes]]\nprefix = \"/closed\"\nauth = \"deny\"\nupstream = \"legacy\"\n\n[[routes]]",
            1,
        );
    let config = bearward::config::Config::from_toml_str(&text, "agree.toml").unwrap();
    let gw = common::Gateway::start(&text).await;
    let m = minter();
    let (read, expired) = (m.token(&Key::rsa1(), "read"), m.token_expired(&Key::rsa1()));
    let other_aud = m.token_claims(&Key::rsa1(), |c| {
        c.insert("aud".into(), json!("https://elsewhere.example.com"));
    });
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/api/orders/../orders/7?x=1", Some(&read)),
        ("GET", "/api/orders/7", Some(&expired)),
        ("GET", "/api/orders/7", Some(&other_aud)),
        ("GET", "/api/admin/users", Some(&read)),
        ("GET", "/api/x", None),
        ("GET", "/elsewhere", Some("x")),
        ("GET", "/api/x", Some("not-a-jwt")),
        ("get", "/api/orders/7", None),
        ("GET", "/api/orders/7?_method=DELETE", Some(&read)),
        ("GET", "/api/%252e%252e/admin", Some(&read)),
        ("GET", "/api/%2e%2e/admin", Some(&read)),
        ("GET", "/.well-known/oauth-protected-resource/api", None),
        ("POST", "/.well-known/oauth-protected-resource/api", None),
        ("GET", "/audit/x", Some(&read)),
        ("GET", "/closed/x", Some(&read)),
    ];
    let c = common::client();
    let metrics_url = format!("http://{}/metrics", gw.admin.unwrap());
    let counts = |text: &str| -> std::collections::BTreeMap<String, f64> {
        text.lines()
            .filter(|l| l.starts_with("bearward_requests_total{"))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect()
    };
    let mut before = counts(&common::get(&c, &metrics_url, &[]).await.body);
    for (method, target, token) in cases {
        let e =
            bearward::explain::explain_request(&config, &method.parse().unwrap(), target, token)
                .await;
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let live = common::send(&c, method, &gw.url(target), &headers, "").await;
        let after = counts(&common::get(&c, &metrics_url, &[]).await.body);
        let moved: Vec<&String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(moved.len(), 1, "{method} {target}: {moved:?}");
        let label = |name: &str| {
            let at = moved[0].find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            moved[0][at..].split('"').next().unwrap().to_owned()
        };
        let case = format!("{method} {target}\n{}", e.text);
        // A forwarded request's status is the upstream's; explain says 200 for it.
        assert_eq!(live.status, e.status, "{case}");
        assert_eq!(label("status"), e.status.as_u16().to_string(), "{case}");
        assert_eq!(label("reason"), e.reason, "{case}");
        before = after;
    }
}

#[test]
fn a_route_s_rate_limit_is_shown() {
    let (out, code) = explain_on(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n\
         [[routes]]\nprefix = \"/open\"\nauth = \"none\"\n\
         rate_limit = { key = \"ip\", rate = \"600/m\", burst = 20, ipv6_prefix = 56 }\nupstream = \"app\"\n",
        &["--path", "/open/x"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(r#"route      routes[0] "/open*": prefix = "/open", auth = "none", rate_limit = 600 per 60s per ip (IPv6 by /56), burst 20"#),
        "{out}"
    );
}

/// `explain --decision`: a decision request read as the `[decision]` listener reads it, in
/// every pairing of the conventions (nginx's `X-Original-*`, Caddy's and Traefik's
/// `X-Forwarded-*`, Envoy's path prefix): with `ingress` set only its own is read and the
/// others ignored, unset a request carrying two is refused. The forged description always
/// names an open route: had it been read, the answer would be 200 and the exit code 0.
#[test]
fn decision_requests_are_explained_in_the_one_convention_read() {
    let open =
        "[[routes]]\nprefix = \"/public\"\nauth = \"none\"\nupstream = \"legacy\"\n\n[[routes]]";
    let base = std::fs::read_to_string(FIXTURE)
        .unwrap()
        .replacen("[[routes]]", open, 1);
    let o = "X-Original-URI: /api/admin/x";
    let f = "X-Forwarded-Uri: /api/admin/x";
    let fo = "X-Original-URI: /public/x";
    let ff = "X-Forwarded-Uri: /public/x";
    let prefix = "envoy_path_prefix = \"/ext_authz\"";
    /// (decision path, header lines, what the output must hold)
    type Row<'a> = (&'a str, Vec<&'a str>, &'a str);
    let table: [(String, Vec<Row<'_>>); 4] = [
        (
            "ingress = \"nginx\"".to_owned(),
            vec![
                ("/auth", vec![o, ff], "answer     401"),
                ("/auth", vec![f], "FAIL missing_original_uri"),
                (
                    "/ext_authz/api/admin/x",
                    vec![],
                    "FAIL missing_original_uri",
                ),
            ],
        ),
        (
            "ingress = \"caddy\"".to_owned(),
            vec![
                ("/auth", vec![f, fo], "answer     401"),
                ("/auth", vec![o], "FAIL missing_original_uri"),
            ],
        ),
        (
            format!("ingress = \"envoy\"\n{prefix}"),
            vec![
                ("/ext_authz/api/admin/x", vec![fo, ff], "answer     401"),
                ("/auth", vec![fo], "FAIL missing_original_uri"),
            ],
        ),
        (
            prefix.to_owned(),
            vec![
                ("/auth", vec![o], "answer     401"),
                ("/auth", vec![f], "answer     401"),
                ("/ext_authz/api/admin/x", vec![], "answer     401"),
                ("/auth", vec![o, ff], "FAIL ambiguous_original_request"),
                ("/auth", vec![f, fo], "FAIL ambiguous_original_request"),
                (
                    "/ext_authz/api/admin/x",
                    vec![fo],
                    "FAIL ambiguous_original_request",
                ),
                (
                    "/ext_authz/api/admin/x",
                    vec![ff],
                    "FAIL ambiguous_original_request",
                ),
            ],
        ),
    ];
    for (i, (setting, rows)) in table.iter().enumerate() {
        let cfg = format!("{base}\n[decision]\nlisten = \"127.0.0.1:0\"\n{setting}\n");
        let file = std::env::temp_dir().join(format!(
            "bearward-explain-decision-{i}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&file, cfg).unwrap();
        for (path, headers, expect) in rows {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearward"));
            cmd.args(["explain", "--decision", "--path", path, "--config"])
                .arg(&file);
            for h in headers {
                cmd.args(["-H", h]);
            }
            let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{setting} {path} {headers:?}:\n{text}"
            );
            assert!(
                text.contains(expect),
                "{setting} {path} {headers:?}:\n{text}"
            );
            if expect.starts_with("answer") {
                assert!(text.contains("original   GET /api/admin/x"), "{text}");
            }
        }
        std::fs::remove_file(&file).unwrap();
    }
}

/// A route with `hosts`: `-H 'Host: ...'` picks it in any spelling of the host, another host
/// goes on to the next route, and a name with an empty label is refused, as in the proxy.
#[test]
fn the_host_a_request_names_picks_its_route() {
    let with_host = |host: &str| {
        explain_on(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n\
             [[routes]]\nprefix = \"/\"\nhosts = [\"admin.test\"]\nauth = \"deny\"\nupstream = \"app\"\n\
             [[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n",
            &["--path", "/x", "-H", &format!("Host: {host}")],
        )
    };
    let (out, code) = with_host("Admin.Test.:8443");
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(r#"route      routes[0] "admin.test/*": prefix = "/", hosts = ["admin.test"], auth = "deny""#),
        "{out}"
    );
    let (out, code) = with_host("www.test");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#"route      routes[1] "/*""#), "{out}");
    let (out, code) = with_host("admin..test");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("FAIL invalid_host"), "{out}");
}

/// A route's `prefix_rewrite` is shown, and the path the upstream would be asked for.
#[test]
fn a_prefix_rewrite_shows_the_upstreams_path() {
    let (out, code) = explain_on(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n\
         [[routes]]\nprefix = \"/orders\"\nprefix_rewrite = \"/v2\"\nauth = \"none\"\nupstream = \"app\"\n",
        &["--path", "/orders/./7?x=1"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(r#"prefix = "/orders", prefix_rewrite = "/v2", auth = "none""#),
        "{out}"
    );
    assert!(
        out.contains(r#"forward    to upstream "app" (http://127.0.0.1:3000) as /v2/7?x=1"#),
        "{out}"
    );
}

/// A route with `source_ranges`: the address comes from `--from` (a decision request's from the
/// ingress's `X-Forwarded-For`); without one the route refuses, as the proxy would a client it
/// cannot place.
#[test]
fn the_client_address_given_decides_a_route_with_source_ranges() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[decision]\nlisten = \"127.0.0.1:0\"\n\
                  ingress = \"nginx\"\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n\
                  [[routes]]\nprefix = \"/office\"\nsource_ranges = [\"10.0.0.0/8\"]\n\
                  auth = \"none\"\nupstream = \"app\"\n";
    let (out, code) = explain_on(config, &["--path", "/office/x", "--from", "10.1.2.3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(r#"prefix = "/office", source_ranges = ["10.0.0.0/8"], auth = "none""#),
        "{out}"
    );
    let (out, code) = explain_on(config, &["--path", "/office/x", "--from", "192.0.2.1"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("FAIL source_not_allowed: 192.0.2.1 is not among source_ranges"),
        "{out}"
    );
    let (out, code) = explain_on(config, &["--path", "/office/x"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("FAIL source_not_allowed: no client address"),
        "{out}"
    );
    // A decision request: the ingress's rightmost X-Forwarded-For, whatever --from says.
    for (xff, want) in [
        ("192.0.2.1, 10.1.2.3", Some(0)),
        ("10.1.2.3, 192.0.2.1", Some(2)),
    ] {
        let (out, code) = explain_on(
            config,
            &[
                "--decision",
                "--path",
                "/auth",
                "-H",
                "X-Original-URI: /office/x",
                "-H",
                &format!("X-Forwarded-For: {xff}"),
                "--from",
                "10.9.9.9",
            ],
        );
        assert_eq!(code, want, "{xff}: {out}");
    }
}

/// A CORS preflight on a route with `cors`: bearward's own answer, for the route the method it
/// asks about takes; an origin the route does not allow is refused with its reason.
#[test]
fn a_cors_preflight_is_explained_as_bearward_answers_it() {
    let config =
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n\
                  [[routes]]\nprefix = \"/orders\"\nmethods = [\"POST\"]\nauth = \"none\"\n\
                  upstream = \"app\"\ncors = { allow_origins = [\"https://app.example.com\"] }\n";
    let ask = |origin: &str| {
        let origin = format!("Origin: {origin}");
        let args = [
            "--method",
            "OPTIONS",
            "--path",
            "/orders/7",
            "-H",
            &origin,
            "-H",
            "Access-Control-Request-Method: POST",
        ];
        explain_on(config, &args)
    };
    let (out, code) = ask("https://app.example.com");
    assert_eq!(code, Some(2), "bearward's own answer: {out}");
    assert!(
        out.contains(r#"prefix = "/orders", methods = ["POST"]"#),
        "{out}"
    );
    assert!(out.contains("answer     204 No Content"), "{out}");
    let (out, _) = ask("https://evil.test");
    assert!(
        out.contains("cors       FAIL cors_origin_not_allowed"),
        "{out}"
    );
    assert!(out.contains("answer     403 Forbidden"), "{out}");
}

/// A route with `token_header` reads the token explain is given from that header, as the proxy
/// does; the other routes from `Authorization`.
#[tokio::test]
async fn explain_puts_the_token_where_the_route_reads_it() {
    let config = with_route_first("prefix = \"/iap\"\nscopes = [\"read\"]\ntoken_header = \"X-Goog-Iap-Jwt-Assertion\"\nupstream = \"legacy\"", "iap.toml");
    let read = minter().token(&Key::rsa1(), "read");
    for target in ["/iap/x", "/api/orders/7"] {
        let e =
            bearward::explain::explain_request(&config, &http::Method::GET, target, Some(&read))
                .await;
        assert_eq!(e.status, http::StatusCode::OK, "{target}\n{}", e.text);
    }
}

/// A route with `token_cookie` takes the token explain is given in `Authorization`, as its API
/// clients send it.
#[tokio::test]
async fn explain_checks_a_cookie_route_with_the_token_in_authorization() {
    let config = with_route_first(
        "prefix = \"/spa\"\nscopes = [\"read\"]\ntoken_cookie = \"at\"\nupstream = \"legacy\"",
        "spa.toml",
    );
    let read = minter().token(&Key::rsa1(), "read");
    for target in ["/spa/x", "/api/orders/7"] {
        let e =
            bearward::explain::explain_request(&config, &http::Method::GET, target, Some(&read))
                .await;
        assert_eq!(e.status, http::StatusCode::OK, "{target}\n{}", e.text);
    }
}

/// What a browser gets on a cookie route, as the proxy answers it: the sign-in redirect of a
/// page opened without a token, and the refusal of another site's request.
#[tokio::test]
async fn explain_says_what_a_browser_gets_on_a_cookie_route() {
    let config = with_route_first("prefix = \"/spa\"\nscopes = [\"read\"]\ntoken_cookie = \"at\"\nlogin_url = \"https://login.test/?rd={url}\"\nupstream = \"legacy\"", "spa.toml");
    let ask = |method, headers| bearward::explain::Asked {
        method,
        target: "/spa/x?a=1",
        token: None,
        headers,
        decision: false,
        from: None,
    };
    let nav = [("Sec-Fetch-Mode".to_owned(), "navigate".to_owned())];
    let e = bearward::explain::explain_with(&config, &ask(&http::Method::GET, &nav)).await;
    assert_eq!(e.status, http::StatusCode::FOUND, "{}", e.text);
    assert!(
        e.text.contains(
            "Location: https://login.test/?rd=http%3A%2F%2Fexplain.invalid%2Fspa%2Fx%3Fa%3D1"
        ),
        "{}",
        e.text
    );
    let e = bearward::explain::explain_with(&config, &ask(&http::Method::GET, &[])).await;
    assert_eq!(e.status, http::StatusCode::UNAUTHORIZED, "{}", e.text);

    let read = minter().token(&Key::rsa1(), "read");
    let forged = [
        ("Cookie".to_owned(), format!("at={read}")),
        ("Sec-Fetch-Site".to_owned(), "cross-site".to_owned()),
    ];
    let e = bearward::explain::explain_with(&config, &ask(&http::Method::POST, &forged)).await;
    assert_eq!(e.status, http::StatusCode::FORBIDDEN, "{}", e.text);
    assert!(
        e.text.contains("FAIL cross_origin_request: it carries"),
        "{}",
        e.text
    );
}

/// An optional route: no token is a request without a caller, forwarded; a bad one is refused
/// as anywhere; `allow_if` tells the two apart.
#[tokio::test]
async fn explain_forwards_a_request_without_a_token_on_an_optional_route() {
    let config = with_route_first("prefix = \"/maybe\"\nauth = \"optional\"\nallow_if = 'subject != \"\" || request.method == \"GET\"'\nupstream = \"legacy\"", "maybe.toml");
    let read = minter().token(&Key::rsa1(), "read");
    let expired = minter().token_expired(&Key::rsa1());
    for (method, token, want) in [
        (http::Method::GET, None, http::StatusCode::OK),
        (http::Method::POST, None, http::StatusCode::FORBIDDEN),
        (
            http::Method::POST,
            Some(read.as_str()),
            http::StatusCode::OK,
        ),
        (
            http::Method::GET,
            Some(expired.as_str()),
            http::StatusCode::UNAUTHORIZED,
        ),
    ] {
        let e = bearward::explain::explain_request(&config, &method, "/maybe/x", token).await;
        assert_eq!(e.status, want, "{method} {token:?}\n{}", e.text);
        if token.is_none() {
            assert!(
                e.text.contains("token      none: the route is optional"),
                "{}",
                e.text
            );
        }
    }
}
