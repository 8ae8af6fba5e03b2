//! Routing and the answers bearward gives itself: the canonical path that is matched and
//! forwarded, `Host` rules, refused paths, method overrides, open, denied and unmatched routes,
//! CORS preflights, and HEAD.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let (up, gw, c) = setup("").await;
    let a = send(
        &c,
        "POST",
        &gw.url("/public/items/42?q=a%2Fb&x=1&x=2"),
        &[
            ("x-custom", "yes"),
            ("content-type", "text/plain"),
            ("host", "api.example.com"),
        ],
        "hello body",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "upstream ok");
    assert_eq!(a.headers["x-upstream"], "yes");
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/public/items/42?q=a%2Fb&x=1&x=2");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["x-custom"], "yes");
    assert_eq!(seen.headers["content-type"], "text/plain");
    assert_eq!(
        seen.headers["host"], "api.example.com",
        "Host passes through by default"
    );
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.body, b"hello body");
}

#[tokio::test]
async fn the_canonical_path_is_what_is_forwarded() {
    let (up, gw, c) = setup("").await;
    let a = get(&c, &gw.url("/public/a/../b//c/./d%7e"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/public/b/c/d~");
    // A dot-segment walk out of an open route lands on the protected one and is checked there.
    let a = get(&c, &gw.url("/public/../api/secret"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 1);
}

/// `target` sent as it is, on a connection of its own: 400.
async fn assert_raw_400(gw: &Gateway, target: &str) {
    let resp = raw(
        gw.addr,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_the_upstream() {
    let (up, gw, _) = setup("").await;
    for target in [
        "/public/%2e%2e/api/x",
        "/public%2fapi",
        "/public/%5c..%5capi",
        "/public/a%00b",
        "/public/%ff",
        "/public\\..\\api",
        "/public;x/../api",
        "http://evil.example/public/x",
    ] {
        assert_raw_400(&gw, target).await;
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

/// With `allow_semicolon_in_path`, `/public/..;/api/admin` is an ordinary segment to bearward
/// and `/api/admin` to Tomcat and Spring, which drop `;...` and then resolve `..`. Every
/// spelling of a dot segment with a parameter is refused (400, `path_dot_segment_parameter`)
/// before the upstream; parameters elsewhere still pass.
#[tokio::test]
async fn dot_segments_with_parameters_are_refused_where_semicolons_are_allowed() {
    let (up, gw, c) = setup("allow_semicolon_in_path = true").await;
    for target in [
        "/public/..;/internal/x",
        "/public/..;x=1/internal/x",
        "/public/.;/x",
        "/public/%2e%2e;/internal/x",
        "/public/.%2E;a/internal/x",
        "/public/..%3b/internal/x",
        "/public/..%3Bx/internal/x",
    ] {
        assert_raw_400(&gw, target).await;
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert_eq!(
        metric(
            &m,
            "bearward_requests_total{route=\"-\",status=\"400\",decision=\"deny\",reason=\"path_dot_segment_parameter\"}"
        ),
        7.0,
        "{m}"
    );
    let a = get(&c, &gw.url("/public/a;jsessionid=1/b"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/public/a;jsessionid=1/b");
}

/// A double-encoded path matches the open route but, decoded once more by a lenient backend,
/// names a protected one (`/public/%252e%252e/api/admin/x` -> `/public/../api/admin/x`). Every
/// spelling of `%25` + two hex digits is refused with 400 `double_encoding` before the upstream,
/// in open and protected routes alike, unless the route sets `allow_encoded_percent`.
#[tokio::test]
async fn double_encoded_paths_are_refused_unless_the_route_allows_them() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "").replace(
        "[[routes]]\nprefix = \"/public\"",
        "[[routes]]\nprefix = \"/literal\"\nupstream = \"app\"\nauth = \"none\"\nallow_encoded_percent = true\n\n[[routes]]\nprefix = \"/public\"",
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for target in [
        "/public/%252e%252e/api/admin/x",
        "/public/%252E%252E/api/admin/x",
        "/public/%252e%252e%252fapi%252fadmin",
        "/public/..%252fapi",
        "/public/%255c..%255capi",
        "/public/a/b/%25%32%65%25%32%65/api",
        "/public/%25%32%45%25%32%45/api",
        "/public/%2525252e",
        "/api/read/%252e%252e/admin/x",
        "/api/%252E%252e/x",
        "/public/x?ok=%252e",
    ] {
        let resp = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        if target.contains('?') {
            // The query is not the path: it is forwarded untouched.
            assert_eq!(raw_status(&resp), 200, "{target}: {resp}");
            continue;
        }
        assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
        assert!(
            resp.ends_with("bad request: double_encoding\n"),
            "{target}: {resp}"
        );
    }
    assert_eq!(
        up.count(),
        1,
        "only the request with %252e in its query got through"
    );
    // HTTP/2 takes the same path through the same code.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let a = get(&h2, &gw.url("/public/%252e%252e/api/admin/x"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(up.count(), 1);
    // A route that carries literal percent signs opts out, and gets the path as sent.
    let a = get(&c, &gw.url("/literal/100%2541off"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/literal/100%2541off");
    let m = metrics_after_close(&gw).await;
    assert!(
        m.contains(r#"route="/public*",status="400",decision="deny",reason="double_encoding"} 9"#),
        "{m}"
    );
    assert!(
        m.contains(r#"route="/api*",status="400",decision="deny",reason="double_encoding"} 2"#),
        "{m}"
    );
}

/// RFC 9112 3.2: an HTTP/1.1 request without `Host`, with two, or with an invalid one is a 400,
/// on every route, and reaches no upstream; HTTP/1.0 may leave `Host` out.
#[tokio::test]
async fn a_request_needs_one_valid_host() {
    let (up, gw, c) = setup("").await;
    let cases: &[(&str, &str)] = &[
        ("GET /public/x HTTP/1.1\r\n", "missing_host"),
        (
            "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: a\r\n",
            "multiple_hosts",
        ),
        (
            "GET /public/x HTTP/1.1\r\nHost: a\r\nHOST: b\r\n",
            "multiple_hosts",
        ),
        ("GET /public/x HTTP/1.1\r\nHost: \r\n", "invalid_host"),
        ("GET /public/x HTTP/1.1\r\nHost: user@a\r\n", "invalid_host"),
        ("GET /public/x HTTP/1.1\r\nHost: a/b\r\n", "invalid_host"),
        ("GET /public/x HTTP/1.1\r\nHost: a:http\r\n", "invalid_host"),
        (
            "GET /public/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n",
            "multiple_hosts",
        ),
        (
            "GET /api/x HTTP/1.1\r\nAuthorization: Bearer x.y.z\r\n",
            "missing_host",
        ),
    ];
    for (head, reason) in cases {
        let resp = raw(
            gw.addr,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&resp), 400, "{head:?}: {resp}");
        assert!(
            resp.ends_with(&format!("bad request: {reason}\n")),
            "{head:?}: {resp}"
        );
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[]).await;
    assert!(
        metrics.body.contains(r#"reason="multiple_hosts"} 3"#),
        "{}",
        metrics.body
    );

    let resp = raw(gw.addr, b"GET /public/ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.uri, "/public/ten");
    // No Host from the client: the upstream's own authority.
    assert_eq!(seen.headers["host"], up.url().trim_start_matches("http://"));
    let resp = raw(
        gw.addr,
        b"GET /public/v6 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["host"], "[::1]:8080");
}

/// RFC 9113 8.3.1: an HTTP/2 `Host` that names another host than `:authority` is malformed.
#[tokio::test]
async fn an_h2_host_must_match_the_authority() {
    let (up, gw, _) = setup("").await;
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    let send = |host: &'static str| {
        Request::get("http://api.example.com/public/h2")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = sender.send_request(send("other.example")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"bad request: host_mismatch\n");
    assert_eq!(up.count(), 0);

    let resp = sender
        .send_request(send("API.example.com:80"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn unmatched_denied_and_bearer_routes_never_reach_the_upstream() {
    let (up, gw, c) = setup("").await;
    for path in ["/", "/publicity", "/nothing/here", "/API"] {
        assert_eq!(
            get(&c, &gw.url(path), &[]).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let a = get(&c, &gw.url("/internal/x"), &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let a = get(&c, &gw.url("/api/things"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"bearward\"");

    let a = get(
        &c,
        &gw.url("/api/things"),
        &[("authorization", "Bearer abc.def.ghi")],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(
        www.starts_with("Bearer realm=\"bearward\", error=\"invalid_token\""),
        "{www}"
    );
    assert!(!www.contains("abc.def.ghi"));
    assert_eq!(up.count(), 0);
}

/// `cors_preflight = true` forwards a browser's CORS preflight without a token; nothing else on
/// the route changes, and on other routes a preflight needs a token like any request.
#[tokio::test]
async fn cors_preflights_pass_only_where_allowed_and_only_as_preflights() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "").replace(
        "[[routes]]\nprefix = \"/api\"",
        "[[routes]]\nprefix = \"/spa\"\nscopes = [\"read\"]\nupstream = \"app\"\n\
         cors_preflight = true\ntoken_in_query = true\nmethods = [\"GET\", \"OPTIONS\"]\n\n\
         [[routes]]\nprefix = \"/spa2\"\nscopes = [\"read\"]\nupstream = \"app\"\ncors_preflight = true\n\n\
         [[routes]]\nprefix = \"/spa3\"\nscopes = [\"read\"]\nupstream = \"app\"\ncors_preflight = true\n\
         token_header = \"X-Token\"\n\n\
         [[routes]]\nprefix = \"/api\"",
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let origin = ("origin", "https://app.example");
    let acrm = ("access-control-request-method", "POST");
    let call = |method: &'static str, path: &str, headers: Vec<(&'static str, &'static str)>| {
        let (c, url) = (c.clone(), gw.url(path));
        async move { send(&c, method, &url, &headers, "").await.status.as_u16() }
    };

    assert_eq!(call("OPTIONS", "/spa/x", vec![origin, acrm]).await, 200);
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("OPTIONS", "/spa/x")
    );
    // The preflight of a call that carries its token in the query: the token is not forwarded.
    assert_eq!(
        call(
            "OPTIONS",
            "/spa/x?access_token=abc.def.ghi&n=1",
            vec![origin, acrm]
        )
        .await,
        200
    );
    assert_eq!(up.last().uri, "/spa/x?n=1");
    assert_eq!(up.count(), 2);
    // Also on a route that reads no query token: an unchecked token never goes upstream.
    assert_eq!(
        call(
            "OPTIONS",
            "/spa2/x?access_token=abc.def.ghi",
            vec![origin, acrm]
        )
        .await,
        200
    );
    assert_eq!(up.last().uri, "/spa2/x");

    // Not preflights: they get the bearer check, and none reaches the upstream.
    assert_eq!(call("OPTIONS", "/spa/x", vec![origin]).await, 401);
    assert_eq!(call("OPTIONS", "/spa/x", vec![acrm]).await, 401);
    assert_eq!(call("GET", "/spa/x", vec![origin, acrm]).await, 401);
    let forged = ("authorization", "Bearer forged.token.here");
    assert_ne!(
        call("OPTIONS", "/spa/x", vec![origin, acrm, forged]).await,
        200
    );
    // A route without the key.
    assert_eq!(call("OPTIONS", "/api/x", vec![origin, acrm]).await, 401);
    // On a `token_header` route, a preflight carrying that header is none either.
    let in_header = ("x-token", "forged.token.here");
    assert_ne!(
        call("OPTIONS", "/spa3/x", vec![origin, acrm, in_header]).await,
        200
    );
    assert_eq!(up.count(), 3);
    assert_eq!(call("OPTIONS", "/spa3/x", vec![origin, acrm]).await, 200);
    assert_eq!(up.count(), 4);

    let text = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert!(
        text.contains("bearward_requests_total{route=\"/spa*\",status=\"200\",decision=\"allow\",reason=\"cors_preflight\"} 2\n"),
        "{text}"
    );
}

/// A method override makes frameworks run another method than the one sent, and routes pick
/// their policy by method: an override passes only when the same route would serve the method
/// it names.
#[tokio::test]
async fn a_method_override_must_stay_on_its_route() {
    // Audit mode forwards what the policy refuses, but not this: it is about which policy.
    for mode in ["", "mode = \"audit\""] {
        method_overrides(mode).await;
    }
}

async fn method_overrides(mode: &str) {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), mode).replace(
        "[[routes]]\nprefix = \"/public\"",
        "[[routes]]\nprefix = \"/m\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"app\"\nauth = \"none\"\n\n\
         [[routes]]\nprefix = \"/m\"\nupstream = \"app\"\nauth = \"deny\"\n\n\
         [[routes]]\nprefix = \"/public\"",
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("/m/a", &[("x-http-method-override", "PUT")], 200),
        ("/m/b", &[("x-http-method", "get")], 200),
        ("/m/c?a_method=DELETE&x=1", &[], 200),
        ("/public/d", &[("x-http-method-override", "DELETE")], 200),
        ("/m/e", &[("x-http-method-override", "DELETE")], 400),
        ("/m/f", &[("x-method-override", "PATCH")], 400),
        ("/m/g", &[("x-http-method-override", "no such")], 400),
        (
            "/m/h",
            &[("x-http-method-override", "PUT"), ("x-http-method", "POST")],
            400,
        ),
        ("/m/i?_method=delete", &[], 400),
        ("/m/j?x=1&%5Fmethod=DEL%45TE", &[], 400),
    ];
    for (path, headers, status) in cases {
        let a = get(&c, &gw.url(path), headers).await;
        assert_eq!(
            a.status.as_u16(),
            *status,
            "{mode:?} {path} {headers:?}: {}",
            a.body
        );
        if *status == 400 {
            assert_eq!(a.body, "bad request: method_override\n");
        }
    }
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        ["/m/a", "/m/b", "/m/c?a_method=DELETE&x=1", "/public/d"]
    );
    assert_eq!(up.seen()[0].headers["x-http-method-override"], "PUT");
}

/// RFC 9110 9.3.2: an answer to HEAD carries no content. hyper drops it on HTTP/1 but sends it
/// on HTTP/2, where clients take the DATA frame as a stream error; so bearward's own answers
/// (a 401, a 404) drop it themselves, and keep the Content-Length a GET would have had.
#[tokio::test]
async fn bearwards_own_answers_to_head_carry_no_content_on_either_protocol() {
    let (up, gw, c) = setup("").await;
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    for path in ["/api/x", "/nowhere"] {
        let get_len = get(&c, &gw.url(path), &[]).await.body.len().to_string();
        let req = Request::head(format!("http://{}{path}", gw.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("an h2 answer");
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
        assert_eq!(resp.headers()["content-length"], get_len.as_str(), "{path}");
        let body = resp.into_body().collect().await.expect("no stream error");
        assert!(body.to_bytes().is_empty(), "{path}");

        let h1 = send(&c, "HEAD", &gw.url(path), &[], "").await;
        assert_eq!(h1.headers["content-length"], get_len.as_str(), "{path}");
        assert!(h1.body.is_empty());
    }
    // A HEAD the upstream answers keeps the upstream's headers as they are.
    let head = send(&c, "HEAD", &gw.url("/public/x"), &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
}

/// A route whose `methods` list GET takes HEAD as well: upstream frameworks run the GET handler
/// for a HEAD and send its headers, so a HEAD that fell through to a later `auth = "none"` route
/// would reach that handler unchecked (as nginx's `limit_except GET` takes HEAD). Other methods
/// still fall through, and a HEAD route above the GET one keeps its own policy.
#[tokio::test]
async fn a_get_route_checks_head_as_it_checks_get() {
    let (up, gw, bearer) = with_open_catch_all(
        "[[routes]]\nprefix = \"/status\"\nmethods = [\"HEAD\"]\nauth = \"none\"\nupstream = \"app\"\n\n\
         [[routes]]\nprefix = \"/status\"\nmethods = [\"GET\"]\nscopes = [\"admin\"]\nupstream = \"app\"\n\n\
         [[routes]]\nprefix = \"/reports\"\nmethods = [\"GET\"]\nscopes = [\"read\"]\nupstream = \"app\"\n",
    )
    .await;
    let c = client();
    let (read, write) = (bearer("read"), bearer("write"));

    let head = |path: &'static str, auth: Option<String>| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let h: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            send(&c, "HEAD", &url, &h, "").await
        }
    };
    let a = head("/reports/q3", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"bearward\"");
    let a = head("/reports/q3", Some(write.clone())).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(up.count(), 0, "no refused HEAD reached the upstream");

    let a = head("/reports/q3", Some(read.clone())).await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("HEAD", "/reports/q3")
    );
    assert_eq!(seen.headers["x-auth-scopes"], "read");

    // The route lists GET only: a POST is not its business and goes to the open route.
    let a = send(&c, "POST", &gw.url("/reports/q3"), &[], "x").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().method, "POST");
    assert_eq!(up.count(), 2);

    // A HEAD route of its own, above the GET one, keeps its policy; GET keeps its own.
    assert_eq!(head("/status", None).await.status, StatusCode::OK);
    assert_eq!(up.last().method, "HEAD");
    assert_eq!(
        get(&c, &gw.url("/status"), &[("authorization", &read)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(up.count(), 3);

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"/reports*\",status=\"401\",decision=\"deny\",reason=\"missing_token\"}"),
        1.0,
        "{m}"
    );
}

/// `case_sensitive = false` (Envoy's `case_sensitive: false`): the route takes its path in any
/// case, so an upstream that ignores case cannot be reached by another spelling through a later
/// open route; the path goes upstream as sent. A trailing slash is another spelling the key
/// does not cover.
#[tokio::test]
async fn a_route_that_folds_case_checks_every_spelling() {
    let (up, gw, bearer) = with_open_catch_all(
        "[[routes]]\npath = \"/orders/export\"\ncase_sensitive = false\nmethods = [\"POST\"]\n\
         scopes = [\"admin\"]\nupstream = \"app\"\n\n\
         [[routes]]\nprefix = \"/tenants/{tenant}/admin\"\ncase_sensitive = false\nauth = \"deny\"\n\
         upstream = \"app\"\n",
    )
    .await;
    let c = client();
    let (admin, read) = (bearer("admin"), bearer("read"));
    for path in ["/orders/export", "/ORDERS/EXPORT", "/Orders/eXport"] {
        let a = send(&c, "POST", &gw.url(path), &[], "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        let a = send(&c, "POST", &gw.url(path), &[("authorization", &read)], "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
    }
    for path in ["/tenants/acme/admin", "/TENANTS/Acme/Admin/x"] {
        let a = send(&c, "GET", &gw.url(path), &[("authorization", &admin)], "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: the deny template");
    }
    assert_eq!(up.count(), 0, "no spelling reached the upstream unchecked");
    let a = send(
        &c,
        "POST",
        &gw.url("/Orders/Export"),
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        up.last().uri,
        "/Orders/Export",
        "the path goes upstream as sent"
    );
    // Other paths and other spellings of the path's shape are not the route's.
    for path in ["/orders/export/", "/orders/exports", "/ORDERS"] {
        let a = send(&c, "POST", &gw.url(path), &[], "").await;
        assert_eq!(a.status, StatusCode::OK, "{path}: the open route");
    }
    assert_eq!(up.count(), 4);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"/orders/export\",status=\"401\",decision=\"deny\",reason=\"missing_token\"}"),
        3.0,
        "{m}"
    );
}

/// bearward with `routes` first, then an open catch-all (`prefix = "/"`, `auth = "none"`),
/// tokens from a real JWKS over HTTP; and the `Authorization` value of a token with a scope.
async fn with_open_catch_all(routes: &str) -> (Upstream, Gateway, impl Fn(&str) -> String) {
    with_open_catch_all_behind("", routes).await
}

/// [`with_open_catch_all`], with lines for `[server]` (`trusted_proxies`).
async fn with_open_catch_all_behind(
    server: &str,
    routes: &str,
) -> (Upstream, Gateway, impl Fn(&str) -> String) {
    use common::idp::*;
    let rsa = Key::rsa1();
    let idp = Idp::start(&[&rsa]).await;
    let up = Upstream::start().await;
    let cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        .replace(
            "[[routes]]\nprefix = \"/public\"",
            &format!(
                "{routes}\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n\n\
                 [[routes]]\nprefix = \"/public\""
            ),
        )
        .replace(
            "admin_listen = \"127.0.0.1:0\"\n",
            &format!("admin_listen = \"127.0.0.1:0\"\n{server}\n"),
        );
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let mint = idp.minter("https://api.test");
    // The IdP keeps serving the keys while the tokens are used: it moves into the closure.
    let bearer = move |scope: &str| {
        let _ = &idp;
        format!("Bearer {}", mint.token(&rsa, scope))
    };
    (up, gw, bearer)
}

/// `hosts`: a route for one host, and one for the names under a wildcard, above an open
/// catch-all on the same upstream. Every spelling of the host (case, port, trailing dot, HTTP/2's
/// `:authority`) lands on its route; a name with an empty label is refused rather than let
/// fall through; other hosts, and a request that names none, go on to the catch-all.
#[tokio::test]
async fn a_route_for_a_host_checks_every_spelling_of_it() {
    let (up, gw, bearer) = with_open_catch_all(
        "[[routes]]\nprefix = \"/\"\nhosts = [\"admin.example.com\"]\nscopes = [\"admin\"]\n\
         upstream = \"app\"\n\n\
         [[routes]]\nprefix = \"/orders\"\nhosts = [\"*.tenants.example.com\"]\n\
         scopes = [\"orders\"]\nupstream = \"app\"\n",
    )
    .await;
    let c = client();
    let at = |host: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for host in [
        "admin.example.com",
        "ADMIN.Example.COM",
        "admin.example.com.",
        "admin.example.com:8080",
        "Admin.Example.Com.:443",
    ] {
        let resp = raw(gw.addr, at(host, "/users").as_bytes()).await;
        assert_eq!(raw_status(&resp), 401, "{host}: {resp}");
    }
    for host in ["a.tenants.example.com", "B.A.Tenants.Example.Com."] {
        let resp = raw(gw.addr, at(host, "/orders/1").as_bytes()).await;
        assert_eq!(raw_status(&resp), 401, "{host}: {resp}");
    }
    for host in [
        "admin..example.com",
        ".admin.example.com",
        "admin.example.com..",
    ] {
        let resp = raw(gw.addr, at(host, "/users").as_bytes()).await;
        assert_eq!(raw_status(&resp), 400, "{host}: {resp}");
        assert!(
            resp.ends_with("bad request: invalid_host\n"),
            "{host}: {resp}"
        );
    }
    // HTTP/2 names its host in :authority alone.
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    let resp = sender
        .send_request(
            Request::get("http://admin.example.com/users")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        up.count(),
        0,
        "no spelling of a checked host reached the upstream"
    );

    let admin = bearer("admin");
    let a = get(
        &c,
        &gw.url("/users"),
        &[
            ("host", "Admin.Example.com:8080"),
            ("authorization", &admin),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        up.last().headers["host"],
        "Admin.Example.com:8080",
        "the Host goes on as sent"
    );
    let a = get(
        &c,
        &gw.url("/orders/1"),
        &[
            ("host", "x.tenants.example.com"),
            ("authorization", &bearer("orders")),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.count(), 2);

    // Other hosts, the wildcard's own base name, and a request without a host: the catch-all.
    for host in [
        "www.example.com",
        "tenants.example.com",
        "admin.example.com.evil",
    ] {
        let a = get(&c, &gw.url("/orders/1"), &[("host", host)]).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }
    let resp = raw(gw.addr, b"GET /users HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.count(), 6);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"admin.example.com/*\",status=\"401\",decision=\"deny\",reason=\"missing_token\"}"),
        6.0,
        "{m}"
    );
}

/// `source_ranges`: a route for some client addresses refuses the rest with 403 before the
/// token is looked at, and never hands them to a later route. The address is the peer's; a
/// client's own `X-Forwarded-For` counts for nothing unless the peer is a trusted proxy, and
/// then only right of the proxies.
#[tokio::test]
async fn a_route_for_some_addresses_refuses_the_rest() {
    const ROUTES: &str = "[[routes]]\nprefix = \"/health\"\nauth = \"none\"\n\
        source_ranges = [\"127.0.0.0/8\", \"::1\"]\nupstream = \"app\"\n\n\
        [[routes]]\nprefix = \"/office\"\nscopes = [\"admin\"]\n\
        source_ranges = [\"10.0.0.0/8\", \"!10.9.0.0/16\", \"192.0.2.7\"]\nupstream = \"app\"\n\n\
        [[routes]]\nprefix = \"/kiosk\"\nauth = \"none\"\n\
        source_ranges = [\"!203.0.113.0/24\"]\nupstream = \"app\"\n";
    let (up, gw, bearer) = with_open_catch_all(ROUTES).await;
    let c = client();
    let admin = bearer("admin");
    assert_eq!(
        get(&c, &gw.url("/health"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.count(), 1);
    for forged in [
        None,
        Some("10.1.2.3"),
        Some("192.0.2.7"),
        Some("10.0.0.1, 10.0.0.2"),
    ] {
        for token in [None, Some(admin.as_str())] {
            let mut h = vec![];
            h.extend(forged.map(|f| ("x-forwarded-for", f)));
            h.extend(token.map(|t| ("authorization", t)));
            let a = get(&c, &gw.url("/office/report"), &h).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{h:?}: {}", a.body);
            assert!(!a.headers.contains_key("www-authenticate"), "{h:?}");
        }
    }
    // HTTP/2 is held the same way.
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    let resp = sender
        .send_request(
            Request::get(format!("http://{}/office/report", gw.addr))
                .header("authorization", &admin)
                .header("x-forwarded-for", "10.1.2.3")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        up.count(),
        1,
        "nothing from elsewhere reached the API, nor the catch-all"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "bearward_requests_total{route=\"/office*\",status=\"403\",decision=\"deny\",reason=\"source_not_allowed\"}"
        ),
        9.0,
        "{m}"
    );

    // Behind a trusted proxy (this client plays it), the client is the rightmost address the
    // proxy did not add; addresses the client wrote to its left are never read.
    let (up, gw, bearer) =
        with_open_catch_all_behind("trusted_proxies = [\"127.0.0.1\"]", ROUTES).await;
    let admin = bearer("admin");
    for (path, xff, status) in [
        ("/office/report", "10.1.2.3", StatusCode::OK),
        ("/office/report", "203.0.113.9, 192.0.2.7", StatusCode::OK),
        (
            "/office/report",
            "10.1.2.3, 203.0.113.9",
            StatusCode::FORBIDDEN,
        ),
        ("/office/report", "10.1.2.3, 127.0.0.1", StatusCode::OK),
        ("/office/report", "not-an-address", StatusCode::FORBIDDEN),
        // The exceptions: inside 10/8 but in 10.9/16; everything but 203.0.113/24.
        ("/office/report", "10.9.1.1", StatusCode::FORBIDDEN),
        ("/office/report", "10.10.1.1", StatusCode::OK),
        ("/kiosk", "203.0.113.9", StatusCode::FORBIDDEN),
        ("/kiosk", "198.51.100.7", StatusCode::OK),
        ("/kiosk", "::ffff:203.0.113.9", StatusCode::FORBIDDEN),
    ] {
        let h = [("x-forwarded-for", xff), ("authorization", admin.as_str())];
        let a = get(&c, &gw.url(path), &h).await;
        assert_eq!(a.status, status, "{path} {xff}: {}", a.body);
    }
    // The proxy itself, naming no client: its own address, outside the office.
    let a = get(&c, &gw.url("/office/report"), &[("authorization", &admin)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(up.count(), 5);
}

/// `respond`: bearward answers a route itself (a retired version, maintenance, a fixed file)
/// after the route's own checks, and forwards nothing; HEAD gets the head alone.
#[tokio::test]
async fn a_route_that_responds_itself_answers_after_its_checks_and_forwards_nothing() {
    use common::idp::serve_routes;
    let (key, idp, up, gw) = serve_routes(
        r#"[[routes]]
prefix = "/v1"
auth = "none"
respond = { status = 410, body = "v1 is retired: use /v2\n", headers = { Link = "</v2>; rel=\"successor-version\"" } }

[[routes]]
prefix = "/orders"
scopes = ["read"]
respond = { status = 503, body = "{\"error\":\"maintenance\"}", headers = { "Retry-After" = "600", "Content-Type" = "application/json" } }

[[routes]]
path = "/robots.txt"
auth = "none"
respond = { status = 200, body = "User-agent: *\nDisallow: /\n" }

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"#,
    )
    .await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let bearer = |scope: &str| format!("Bearer {}", mint.token(&key, scope));

    let a = get(&c, &gw.url("/v1/orders/7"), &[]).await;
    assert_eq!(a.status, StatusCode::GONE);
    assert_eq!(a.body, "v1 is retired: use /v2\n");
    assert_eq!(a.headers["link"], "</v2>; rel=\"successor-version\"");
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    assert!(a.headers.contains_key("x-request-id"));
    let head = send(&c, "HEAD", &gw.url("/v1/x"), &[], "").await;
    assert_eq!(head.status, StatusCode::GONE);
    assert_eq!(head.body, "");
    assert_eq!(head.headers["content-length"], "23");

    let a = get(&c, &gw.url("/robots.txt"), &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "User-agent: *\nDisallow: /\n")
    );

    // The route's checks first: no token, 401; a token without the scope, 403; then the answer.
    let a = get(&c, &gw.url("/orders/7"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(
        &c,
        &gw.url("/orders/7"),
        &[("authorization", &bearer("write"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = get(
        &c,
        &gw.url("/orders/7"),
        &[("authorization", &bearer("read"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "600");
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body, "{\"error\":\"maintenance\"}");
    assert_eq!(up.count(), 0, "a route that responds itself forwarded");

    let a = get(&c, &gw.url("/api/x"), &[("authorization", &bearer("read"))]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
    let m = gw.metrics().await;
    let answered =
        |route: &str, status: u16| requests(&m, route, status, "allow", "direct_response");
    assert_eq!(answered("/v1*", 410), 2.0, "{m}");
    assert_eq!(answered("/orders*", 503), 1.0, "{m}");
    assert_eq!(answered("/robots.txt", 200), 1.0, "{m}");
}

#[test]
fn respond_is_a_final_status_a_bounded_body_and_headers_bearward_does_not_own() {
    let base = |route: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\n{route}\n")
    };
    let big = "x".repeat(64 * 1024 + 1);
    for (route, needle) in [
        (
            "upstream = \"a\"\nrespond = { status = 410 }",
            "routes[0].upstream: a route that responds itself",
        ),
        (
            "respond = { status = 101 }",
            "routes[0].respond.status: 101 is not a final status",
        ),
        ("respond = { status = 700 }", "routes[0].respond.status"),
        (
            "respond = { status = 200, headers = { Connection = \"close\" } }",
            "routes[0].respond.headers.\"Connection\": is written by bearward",
        ),
        (
            "respond = { status = 200, headers = { \"Content-Length\" = \"3\" } }",
            "is written by bearward",
        ),
        (
            "respond = { status = 200, headers = { \"X-A\" = \"a\\nb\" } }",
            "routes[0].respond.headers.\"X-A\"",
        ),
        (
            &format!("respond = {{ status = 200, body = \"{big}\" }}"),
            "routes[0].respond.body: is 65537 bytes",
        ),
        (
            "prefix_rewrite = \"/x\"\nrespond = { status = 200 }",
            "routes[0].prefix_rewrite: only applies to a route that forwards",
        ),
        (
            "respond = { status = 200, bdy = \"x\" }",
            "unknown field `bdy`",
        ),
    ] {
        let e = bearward::config::Config::from_toml_str(&base(route), "t.toml")
            .expect_err(route)
            .to_string();
        assert!(e.contains(needle), "{route}: {e}");
    }
    bearward::config::Config::from_toml_str(&base("respond = { status = 204 }"), "t.toml")
        .expect("valid");
}
