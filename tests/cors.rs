//! `cors` on a route: bearward answers the browser's preflights and puts the CORS headers on
//! every answer of the route, its own 401 included, in place of the upstream's.

mod common;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "https://app.example.com";

/// An upstream that answers every request with its own, wider CORS headers, as a framework
/// left on defaults does.
async fn permissive_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\n\
                              Access-Control-Allow-Credentials: true\r\nX-Total-Count: 3\r\n\
                              Content-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// The usual test config (its `/public`, `/internal` and `/api` routes) and three of CORS.
fn config(upstream: &str) -> String {
    basic_config(upstream, "")
        + &format!(
            r#"
[[routes]]
prefix = "/orders"
methods = ["GET", "POST"]
scopes = ["read"]
upstream = "app"
cors = {{ allow_origins = ["{APP}", "https://*.preview.example.com"], allow_headers = ["X-Tenant"], expose_headers = ["X-Total-Count"], max_age = "1h" }}

[[routes]]
prefix = "/open"
auth = "none"
upstream = "app"
cors = {{ allow_origins = ["{APP}"] }}

[[routes]]
prefix = "/plain"
auth = "none"
upstream = "app"

[[routes]]
prefix = "/office"
auth = "none"
source_ranges = ["10.0.0.0/8"]
upstream = "app"
cors = {{ allow_origins = ["{APP}"] }}
"#
        )
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        h.push(("access-control-request-headers", headers));
    }
    h
}

#[tokio::test]
async fn preflights_are_answered_by_bearward_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up.url())).await;
    let c = client();
    let url = gw.url("/orders/7");

    // The route takes GET and POST, not OPTIONS: the preflight is matched by the method it
    // asks about.
    let headers = preflight(APP, "POST", "authorization, content-type, x-tenant");
    let ok = send(&c, "OPTIONS", &url, &headers, "").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.body);
    let h = &ok.headers;
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, POST, HEAD");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, dpop, content-type, x-tenant"
    );
    assert_eq!(h["access-control-max-age"], "3600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    // A subdomain of the preview pattern.
    let headers = preflight("https://pr-7.preview.example.com", "GET", "");
    let sub = send(&c, "OPTIONS", &url, &headers, "").await;
    assert_eq!(sub.status, StatusCode::NO_CONTENT);
    assert_eq!(
        sub.headers["access-control-allow-origin"],
        "https://pr-7.preview.example.com"
    );

    // /open takes every method; its policy, the usual ones.
    let open = gw.url("/open/x");
    let refusals = [
        (
            &url,
            preflight("https://evil.test", "GET", ""),
            "cors_origin_not_allowed",
        ),
        (
            &url,
            preflight("https://preview.example.com", "GET", ""),
            "cors_origin_not_allowed",
        ),
        (
            &open,
            preflight(APP, "PURGE", ""),
            "cors_method_not_allowed",
        ),
        (
            &url,
            preflight(APP, "GET", "x-secret"),
            "cors_header_not_allowed",
        ),
    ];
    for (url, headers, reason) in refusals {
        let refused = send(&c, "OPTIONS", url, &headers, "").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{reason}");
        assert!(!refused.headers.contains_key("access-control-allow-origin"));
        let m = gw.metrics().await;
        assert!(m.contains(&format!("reason=\"{reason}\"")), "{reason}: {m}");
    }
    // A route kept to some networks refuses the preflights of others, as their requests.
    let office = gw.url("/office/x");
    let refused = send(&c, "OPTIONS", &office, &preflight(APP, "GET", ""), "").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let m = gw.metrics().await;
    assert!(m.contains("reason=\"source_not_allowed\""), "{m}");
    // A method no route takes on the path: no route (404), as for the request itself.
    let none = send(&c, "OPTIONS", &url, &preflight(APP, "DELETE", ""), "").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(up.count(), 0, "no preflight reached the upstream");
    let m = gw.metrics().await;
    assert!(m.contains("reason=\"cors_preflight\""), "{m}");
}

#[tokio::test]
async fn every_answer_of_the_route_carries_the_policys_headers() {
    let upstream = permissive_upstream().await;
    let gw = Gateway::start(&config(&format!("http://{upstream}"))).await;
    let c = client();

    // bearward's own 401: readable by the page, challenge included.
    let a = get(&c, &gw.url("/orders/7"), &[("origin", APP)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["access-control-allow-origin"], APP);
    let exposed = a.headers["access-control-expose-headers"].to_str().unwrap();
    for name in [
        "www-authenticate",
        "dpop-nonce",
        "x-request-id",
        "x-total-count",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert!(a.headers.contains_key("www-authenticate"));
    assert!(a.headers["vary"].to_str().unwrap().contains("Origin"));

    // The upstream's answer: its `*` and credentials replaced by the route's policy.
    let a = get(&c, &gw.url("/open/x"), &[("origin", APP)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["access-control-allow-origin"], APP);
    assert!(!a.headers.contains_key("access-control-allow-credentials"));
    assert_eq!(a.headers["x-total-count"], "3");
    // Another origin: served (CORS binds the browser, not the server) but not readable.
    let a = get(&c, &gw.url("/open/x"), &[("origin", "https://evil.test")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.headers.contains_key("access-control-allow-origin"));
    assert!(!a.headers.contains_key("access-control-allow-credentials"));
    assert_eq!(a.headers["vary"], "Origin");
    // A route without `cors` passes the upstream's headers as they are.
    let a = get(&c, &gw.url("/plain/x"), &[("origin", APP)]).await;
    assert_eq!(a.headers["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn cors_and_cors_preflight_are_one_or_the_other() {
    let cfg = config("http://127.0.0.1:3000").replacen(
        "cors = { allow_origins = [\"https://app.example.com\"] }",
        "cors = { allow_origins = [\"https://app.example.com\"] }\ncors_preflight = true",
        1,
    );
    let e = bearward::config::Config::from_toml_str(&cfg, "t.toml").unwrap_err();
    assert!(e.to_string().contains("routes[4].cors: give cors"), "{e}");
}

/// Behind an ingress (decision mode) CORS is the ingress's: a preflight for a `cors` route
/// passes without a token (200, for the ingress to answer or forward); the request it asks
/// about is checked as ever.
#[tokio::test]
async fn a_decision_listener_passes_a_cors_routes_preflight() {
    let (port, _gw) = Gateway::start_on_free_port(|port| {
        config("http://127.0.0.1:3000")
            + &format!("\n[decision]\nlisten = \"127.0.0.1:{port}\"\ningress = \"nginx\"\n")
    })
    .await;
    let c = client();
    let ask = format!("http://127.0.0.1:{port}/auth");
    let mut headers = vec![
        ("x-original-method", "OPTIONS"),
        ("x-original-uri", "/orders/7"),
    ];
    headers.extend(preflight(APP, "POST", "authorization"));
    let a = get(&c, &ask, &headers).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // A network-kept route's preflight, from a client outside it: refused there too.
    let mut office = vec![
        ("x-original-method", "OPTIONS"),
        ("x-original-uri", "/office/x"),
        ("x-forwarded-for", "192.0.2.9"),
    ];
    office.extend(preflight(APP, "GET", ""));
    let a = get(&c, &ask, &office).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let request = [
        ("x-original-method", "POST"),
        ("x-original-uri", "/orders/7"),
    ];
    let a = get(&c, &ask, &request).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}
