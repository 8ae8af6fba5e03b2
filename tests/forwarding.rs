//! Forwarding to a real upstream: the header rules both ways, bodies (streamed, bounded),
//! WebSocket upgrades, h2c from clients, pooled connections, and https upstreams with mTLS.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (up, gw, c) = setup("").await;
    let a = get(
        &c,
        &gw.url("/public/x"),
        &[
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=9"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["x-kept"], "1");
    // The upstream's own Connection-named header and Keep-Alive do not reach the client.
    assert!(!a.headers.contains_key("x-resp-secret"));
    assert!(!a.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_clients_are_replaced() {
    let (up, gw, c) = setup("").await;
    // What frameworks read as the client's address or the URL asked for, from a proxy.
    let hop_views = [
        ("x-real-ip", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("x-client-ip", "10.0.0.1"),
        ("x-cluster-client-ip", "10.0.0.1"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-server", "evil"),
        ("x-original-url", "/api/admin"),
        ("x-original-uri", "/api/admin"),
        ("x-rewrite-url", "/api/admin"),
    ];
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil"),
        ("forwarded", "for=6.6.6.6"),
        ("x-auth-subject", "admin"),
        ("x-auth-scopes", "admin"),
    ];
    let spoof: Vec<_> = spoof.iter().chain(&hop_views).copied().collect();
    get(&c, &gw.url("/public/x"), &spoof).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_ne!(seen.headers["x-forwarded-host"], "evil");
    assert!(!seen.headers.contains_key("forwarded"));
    for (h, _) in hop_views {
        assert!(
            !seen.headers.contains_key(h),
            "{h} from an untrusted client"
        );
    }
    assert!(
        !seen.headers.contains_key("x-auth-subject"),
        "identity headers are always removed"
    );
    assert!(!seen.headers.contains_key("x-auth-scopes"));

    let (up, gw, c) = setup("trusted_proxies = [\"127.0.0.0/8\"]").await;
    get(&c, &gw.url("/public/x"), &spoof).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "evil");
    for (h, v) in hop_views {
        assert_eq!(seen.headers[h], v, "{h} from a trusted proxy");
    }
    assert!(
        !seen.headers.contains_key("x-auth-subject"),
        "even from a trusted proxy"
    );
}

/// CGI, PHP, WSGI and Rack read `X_Auth_Subject` as `X-Auth-Subject`: underscore spellings are
/// dropped (nginx's and Caddy's default), and with `allow_underscores_in_headers` only those of
/// the headers bearward sets or filters are.
#[tokio::test]
async fn underscore_spellings_of_headers_never_reach_the_upstream() {
    let sent = [
        ("x_auth_subject", "admin"),
        ("x-auth_scopes", "admin"),
        ("x_bearward_audit", "allow"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x_real_ip", "10.0.0.1"),
        ("transfer_encoding", "chunked"),
        ("x-app_setting", "1"),
        ("x-kept", "1"),
    ];
    for (extra, passed) in [
        ("", &["x-kept"][..]),
        (
            "allow_underscores_in_headers = true",
            &["x-app_setting", "x-kept"][..],
        ),
    ] {
        let (up, gw, c) = setup(extra).await;
        let a = get(&c, &gw.url("/public/x"), &sent).await;
        assert_eq!(a.status, StatusCode::OK);
        let seen = up.last();
        for (h, _) in sent {
            assert_eq!(
                seen.headers.contains_key(h),
                passed.contains(&h),
                "{extra:?}: {h}"
            );
        }
    }
}

/// RFC 9110 7.6.3: a gateway sends `Via` in each request it forwards, after any chain the
/// client's request came through, naming the protocol it came in on.
#[tokio::test]
async fn via_names_this_hop_after_the_clients_chain() {
    let (up, gw, c) = setup("").await;
    get(&c, &gw.url("/public/x"), &[]).await;
    assert_eq!(up.last().headers["via"], "1.1 bearward");

    let chain = [("via", "1.1 cdn-a"), ("via", "1.0 edge (squid)")];
    get(&c, &gw.url("/public/x"), &chain).await;
    let seen = up.last();
    assert_eq!(
        seen.headers.get_all("via").iter().collect::<Vec<_>>(),
        ["1.1 cdn-a, 1.0 edge (squid), 1.1 bearward"]
    );

    let resp = raw(gw.addr, b"GET /public/x HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["via"], "1.0 bearward");

    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    let req = Request::get("http://a.example/public/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(up.last().headers["via"], "2 bearward");
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    let (up, gw, _) = setup("").await;
    const CHUNK: usize = 256 * 1024;
    // 256 MiB by default; BEARWARD_BIG_BODY_MIB=1024 for the 1 GiB check.
    let mib: usize = std::env::var("BEARWARD_BIG_BODY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let chunks = mib * 4;
    let before = rss_kib();
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(gw.url("/public/upload"))
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(up.last().body_len, (CHUNK * chunks) as u64);

    // And down: 128 MiB from the upstream, read as it comes.
    let resp = common::client()
        .request(
            Request::get(gw.url("/public/big?n=134217728"))
                .body(http_body_util::Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, 134_217_728);
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB while streaming 384 MiB"
    );
}

/// h2c smuggling: an `Upgrade: h2c` passed through would let a client open an HTTP/2 tunnel on
/// an open route and then ask the upstream for any path, past every policy. Only WebSocket is
/// passed; any other upgrade reaches the upstream as a plain request, without its `Upgrade`,
/// and a 101 the upstream sends anyway (this test upstream upgrades whatever reaches `/ws`) is
/// a 502, never a tunnel.
#[tokio::test]
async fn only_websocket_upgrades_are_passed() {
    let (up, gw, _) = setup("").await;
    for (i, upgrade) in [
        "h2c",
        "websocket, h2c",
        "TLS/1.2",
        "websocket\r\nUpgrade: h2c",
    ]
    .iter()
    .enumerate()
    {
        let resp = raw(
            gw.addr,
            format!(
                "GET /public/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                 Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
                 Connection: close\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&resp), 502, "{upgrade:?}: {resp}");
        let seen = up.seen();
        assert_eq!(seen.len(), i + 1, "{upgrade:?}");
        let h = &seen[i].headers;
        assert!(
            !h.contains_key("upgrade") && !h.contains_key("connection"),
            "{upgrade:?}: {h:?}"
        );
    }
    // Elsewhere the upgrade is just left out, and the request served.
    let resp = raw(
        gw.addr,
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(!up.last().headers.contains_key("upgrade"));
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let (up, gw, _) = setup("").await;
    let (mut s, head) = open_websocket(gw.addr).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"));
    let seen = up.last();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert!(seen.headers["connection"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    for msg in [&b"ping"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let (up, gw, _) = setup("").await;
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    // Cookies sent as separate fields, as h2 clients may (RFC 9113 8.2.3).
    let req = Request::get("http://api.example.com:8443/public/h2?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"upstream ok");
    let seen = up.last();
    assert_eq!(seen.uri, "/public/h2?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], "api.example.com:8443");
    // One Cookie line over HTTP/1.1, the fields joined with "; ".
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);

    // The bearer check applies over h2 too.
    let req = Request::get(format!("http://{}/api/x", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 1);
}

/// `max_body_bytes` (nginx's `client_max_body_size`): a declared length over the limit is a
/// 413 before anything is forwarded; a chunked body is counted as it streams and cut at the
/// limit, so the upstream never gets a whole request. A route's own limit beats the server's.
#[tokio::test]
async fn bodies_over_max_body_bytes_are_refused() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "max_body_bytes = 100").replace(
        "[[routes]]\nprefix = \"/public\"",
        "[[routes]]\nprefix = \"/small\"\nupstream = \"app\"\nauth = \"none\"\nmax_body_bytes = 10\n\n\
         [[routes]]\nprefix = \"/public\"",
    );
    let gw = Gateway::start(&cfg).await;
    let post = |path: &str, framing: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{framing}\r\n{body}")
    };
    let fixed =
        |path: &str, n: usize| post(path, &format!("Content-Length: {n}\r\n"), &"b".repeat(n));
    let chunked = |path: &str, sizes: &[usize]| {
        let mut body = String::new();
        for n in sizes {
            body += &format!("{n:x}\r\n{}\r\n", "c".repeat(*n));
        }
        post(
            path,
            "Transfer-Encoding: chunked\r\n",
            &(body + "0\r\n\r\n"),
        )
    };
    for (req, status) in [
        (fixed("/small/a", 10), 200),
        (chunked("/small/b", &[4, 6]), 200),
        (fixed("/public/c", 100), 200),
        (fixed("/small/x", 11), 413),
        (chunked("/small/y", &[5, 6]), 413),
        (fixed("/public/z", 101), 413),
    ] {
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(raw_status(&resp), status, "{req:.60}: {resp}");
        if status == 413 {
            assert!(resp.contains("connection: close"), "{resp}");
        }
    }
    let seen: Vec<(String, u64)> = up.seen().into_iter().map(|s| (s.uri, s.body_len)).collect();
    assert_eq!(
        seen,
        [
            ("/small/a".to_owned(), 10),
            ("/small/b".to_owned(), 10),
            ("/public/c".to_owned(), 100)
        ]
    );
    let metrics = metrics_after_close(&gw).await;
    assert!(
        metrics
            .contains(r#"route="/small*",status="413",decision="deny",reason="body_too_large"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (up, gw, c) = setup("").await;
    for _ in 0..50 {
        assert_eq!(
            get(&c, &gw.url("/public/x"), &[]).await.status,
            StatusCode::OK
        );
    }
    let peers: std::collections::HashSet<_> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(up.count(), 50);
    assert_eq!(
        peers.len(),
        1,
        "50 sequential requests over one pooled connection"
    );
}

#[tokio::test]
async fn a_connection_closed_by_the_upstream_is_not_a_failure() {
    let up = Upstream::start_with(false).await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let c = client();
    for i in 0..30 {
        let a = send(&c, "POST", &gw.url("/public/x"), &[], "body").await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
    }
    assert_eq!(up.count(), 30);
}

/// `basic_config` in front of the TLS test upstream, with `tls` lines for `[upstreams.app]`.
async fn setup_tls(tls: &str) -> (Upstream, Gateway, HttpClient) {
    setup_tls_with(false, tls).await
}

async fn setup_tls_with(mtls: bool, tls: &str) -> (Upstream, Gateway, HttpClient) {
    let up = Upstream::start_tls_with(mtls).await;
    let cfg = basic_config(&up.url(), "").replace(
        "request_timeout = \"500ms\"",
        &format!("request_timeout = \"500ms\"\n{tls}"),
    );
    let gw = Gateway::start(&cfg).await;
    (up, gw, client())
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_verified_tls() {
    for name in ["", "tls_server_name = \"localhost\""] {
        let (up, gw, c) = setup_tls(&format!(
            "tls_ca_file = \"tests/fixtures/tls/ca.pem\"\n{name}"
        ))
        .await;
        let a = get(&c, &gw.url("/public/a?x=1"), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {}", a.body);
        assert_eq!(a.body, "upstream ok");
        let body = "x".repeat(200_000);
        let b = send(&c, "POST", &gw.url("/public/b"), &[], &body).await;
        assert_eq!(b.status, StatusCode::OK, "{name}: {}", b.body);
        let seen = up.seen();
        assert_eq!(seen[0].uri, "/public/a?x=1");
        assert_eq!(seen[1].body_len, 200_000, "the body crossed TLS whole");
        assert_eq!(
            seen[0].peer, seen[1].peer,
            "one pooled TLS connection carried both"
        );

        // A WebSocket tunnel runs over TLS too.
        let (mut ws, head) = open_websocket(gw.addr).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.write_all(b"ping over tls").await.unwrap();
        let mut echo = [0u8; 13];
        ws.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping over tls");
    }
}

#[tokio::test]
async fn an_upstream_whose_certificate_does_not_verify_is_sent_nothing() {
    for (tls, why) in [
        (
            "tls_ca_file = \"tests/fixtures/tls/other-ca.pem\"",
            "a CA that signed nothing",
        ),
        ("", "the system's roots"),
        (
            "tls_ca_file = \"tests/fixtures/tls/ca.pem\"\ntls_server_name = \"api.test\"",
            "a name the certificate is not for",
        ),
    ] {
        let (up, gw, c) = setup_tls(tls).await;
        let a = get(&c, &gw.url("/public/a"), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{why}: {}", a.body);
        assert!(a.body.contains("upstream_tls"), "{why}: {}", a.body);
        assert_eq!(up.count(), 0, "{why}: the upstream received a request");
        let m = metrics_after_close(&gw).await;
        assert!(
            m.contains(r#"status="502",decision="error",reason="upstream_tls"} 1"#),
            "{why}: {m}"
        );
    }
}

#[tokio::test]
async fn an_upstream_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let ca = "tls_ca_file = \"tests/fixtures/tls/ca.pem\"";
    let identity = "tls_client_cert = \"tests/fixtures/tls/client.pem\"\n\
                    tls_client_key = \"tests/fixtures/tls/client-key.pem\"";
    let (up, gw, c) = setup_tls_with(true, &format!("{ca}\n{identity}")).await;
    let a = get(&c, &gw.url("/public/a"), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(up.count(), 1);

    // Without one, the upstream refuses the handshake and gets no request.
    let (up, gw, c) = setup_tls_with(true, ca).await;
    let a = get(&c, &gw.url("/public/a"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert!(a.body.contains("upstream_tls"), "{}", a.body);
    assert_eq!(up.count(), 0);
}

/// A large upload over TLS to an upstream with a tiny receive window that reads slowly: the
/// socket is full most of the time, so the TLS writes go through their would-block path, and
/// the body must still arrive whole. (The flush at the end of each write is for the case where
/// TLS still holds the body's last bytes then; loopback's large send buffers make that case too
/// rare to provoke here, and this test passes without the flush too.)
#[tokio::test]
async fn a_large_upload_crosses_tls_to_a_slow_reader_whole() {
    let up = Upstream::start_tls_small_window().await;
    let cfg = basic_config(&up.url(), "").replace(
        "request_timeout = \"500ms\"",
        "request_timeout = \"5s\"\ntls_ca_file = \"tests/fixtures/tls/ca.pem\"",
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for size in [300_000, 6_000_000] {
        let body = "y".repeat(size);
        let a = send(&c, "POST", &gw.url("/public/slow-read"), &[], &body).await;
        assert_eq!(a.status, StatusCode::OK, "{size} bytes: {}", a.body);
        assert_eq!(up.last().body_len, size as u64);
    }
}

/// `prefix_rewrite`: the upstream is asked for the path with the route's prefix replaced (a
/// `{name}` counting as a segment, a folded-case prefix taken off in the case sent), the query
/// kept, and the part taken off in `X-Forwarded-Prefix`, whatever the client sent there.
#[tokio::test]
async fn a_prefix_rewrite_sends_the_path_under_its_new_prefix() {
    let up = Upstream::start().await;
    let routes = "[[routes]]\nprefix = \"/orders\"\nprefix_rewrite = \"/\"\nauth = \"none\"\nupstream = \"app\"\n\n\
        [[routes]]\nprefix = \"/v1/{tenant}/items\"\nprefix_rewrite = \"/items\"\nauth = \"none\"\nupstream = \"app\"\n\n\
        [[routes]]\nprefix = \"/legacy/\"\nprefix_rewrite = \"/api/v2\"\ncase_sensitive = false\nauth = \"none\"\nupstream = \"app\"\n\n\
        [[routes]]\nprefix = \"/public\"";
    let cfg = basic_config(&up.url(), "").replacen("[[routes]]\nprefix = \"/public\"", routes, 1);
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for (path, upstream, prefix) in [
        ("/orders/7?x=1&y=%2F", "/7?x=1&y=%2F", "/orders"),
        ("/orders", "/", "/orders"),
        ("/orders/", "/", "/orders"),
        ("/orders/a/../b", "/b", "/orders"),
        ("/v1/acme/items/3", "/items/3", "/v1/acme/items"),
        ("/v1/acme/items", "/items", "/v1/acme/items"),
        ("/LEGACY/x/y", "/api/v2/x/y", "/LEGACY"),
    ] {
        let a = get(&c, &gw.url(path), &[("x-forwarded-prefix", "/evil")]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let seen = up.last();
        assert_eq!(seen.uri, upstream, "{path}");
        assert_eq!(seen.headers["x-forwarded-prefix"], prefix, "{path}");
        assert_eq!(
            seen.headers.get_all("x-forwarded-prefix").iter().count(),
            1,
            "{path}: the client's copy passed too"
        );
    }
    // Routes without it forward the path as matched, and a client's prefix never passes.
    get(&c, &gw.url("/public/x"), &[("x-forwarded-prefix", "/evil")]).await;
    let seen = up.last();
    assert_eq!(seen.uri, "/public/x");
    assert!(!seen.headers.contains_key("x-forwarded-prefix"));
    // The access log and metrics name the route and path the client asked for.
    let m = gw.metrics().await;
    assert!(m.contains("route=\"/orders*\",status=\"200\""), "{m}");
}

/// An instance that answers each request with `B` and closes, counting them; aborting its task
/// closes its port.
async fn closing_instance() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    counting_instance(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB",
    ))
    .await
}

/// An instance that reads one request head per connection, counts it, writes `answer` (if
/// any) and closes.
async fn counting_instance(
    answer: Option<&'static [u8]>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(answer) = answer {
                    let _ = s.write_all(answer).await;
                }
            });
        }
    });
    (addr, hits, task)
}

/// `endpoints`: requests go to each instance in turn; one that refuses connections (from the
/// start, or once it stops) is left out and its requests go to the others, none failing; each
/// failed connection is counted once per time out.
#[tokio::test]
async fn requests_rotate_over_endpoints_and_skip_one_that_is_down() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = Upstream::start().await;
    let (b, b_hits, b_task) = closing_instance().await;
    // Refuses connections for as long as it lives; nothing else can take the port.
    let closed = ClosedPort::new();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", closed.port).parse().unwrap();
    let cfg = basic_config(&a.url(), "").replacen(
        "request_timeout = \"500ms\"",
        &format!(
            "request_timeout = \"500ms\"\nendpoints = [\"{}\", \"{b}\", \"{dead}\"]",
            a.addr
        ),
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for i in 0..30 {
        let r = get(&c, &gw.url(&format!("/public/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let (on_a, on_b) = (a.count(), b_hits.load(SeqCst));
    assert_eq!(on_a + on_b, 30);
    assert!(on_a >= 10 && on_b >= 8, "a {on_a}, b {on_b}: not in turn");
    let m = gw.metrics().await;
    let failures = |m: &str, at: std::net::SocketAddr| {
        metric(
            m,
            &format!("bearward_upstream_connect_failures_total{{upstream=\"app\",endpoint=\"{at}\",reason=\"upstream_unreachable\"}}"),
        )
    };
    assert_eq!(failures(&m, dead), 1.0, "one failure, then out: {m}");

    b_task.abort();
    let _ = b_task.await;
    for i in 0..20 {
        let r = get(&c, &gw.url(&format!("/public/after/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i} after b stopped");
    }
    assert_eq!(a.count(), on_a + 20, "all on a");
    assert_eq!(b_hits.load(SeqCst), on_b);
    let m = gw.metrics().await;
    assert_eq!(failures(&m, b), 1.0, "{m}");
}

/// `set_headers` (as written, from a file, from the environment): every request to the upstream
/// carries them, one value each in place of what the client sent; the values read from a file
/// or the environment never show in the config's debug form.
#[tokio::test]
async fn an_upstreams_set_headers_replace_the_clients() {
    std::env::set_var("BEARWARD_TEST_SET_HEADER_BASIC", "Basic dXNlcjpwdw==");
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "").replacen(
        "request_timeout = \"500ms\"",
        "request_timeout = \"500ms\"\nset_headers = { \"X-Env\" = \"prod\" }\n\
         set_headers_file = { \"X-Api-Key\" = \"tests/fixtures/legacy-api-key\" }\n\
         set_headers_env = { Authorization = \"BEARWARD_TEST_SET_HEADER_BASIC\" }",
        1,
    );
    let config = bearward::config::Config::from_toml_str(&cfg, "t.toml").unwrap();
    let shown = format!("{:?}", config.upstreams[0]);
    assert!(
        !shown.contains("k-123") && !shown.contains("dXNlcjpwdw"),
        "{shown}"
    );
    assert!(
        shown.contains("prod"),
        "the written value is no secret: {shown}"
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let a = get(
        &c,
        &gw.url("/public/x"),
        &[
            ("x-api-key", "forged"),
            ("x-env", "dev"),
            ("authorization", "Bearer a.b.c"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    for (name, want) in [
        ("x-api-key", "k-123"),
        ("x-env", "prod"),
        ("authorization", "Basic dXNlcjpwdw=="),
    ] {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values, [want], "{name}");
    }
}

/// `remove_headers`: a header a legacy API trusts (who the user is) and the client's cookies
/// never reach it, every line of each, whatever their case; other headers pass. Names bearward
/// owns, and a name `set_headers` gives, are refused at load.
#[tokio::test]
async fn an_upstreams_remove_headers_never_reach_it() {
    let up = Upstream::start().await;
    let lines = |extra: &str| {
        basic_config(&up.url(), "").replacen(
            "request_timeout = \"500ms\"",
            &format!("request_timeout = \"500ms\"\n{extra}"),
            1,
        )
    };
    let gw = Gateway::start(&lines("remove_headers = [\"X-User-Id\", \"cookie\"]")).await;
    let c = client();
    let a = get(
        &c,
        &gw.url("/public/x"),
        &[
            ("x-user-id", "admin"),
            ("X-User-Id", "root"),
            ("cookie", "session=abc"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.last();
    assert!(
        !seen.headers.contains_key("x-user-id"),
        "{:?}",
        seen.headers
    );
    assert!(!seen.headers.contains_key("cookie"), "{:?}", seen.headers);
    assert_eq!(seen.headers["x-kept"], "yes");

    for (extra, needle) in [
        (
            "remove_headers = [\"Host\"]",
            "upstreams.app.remove_headers[0]: \"Host\" is a header bearward sets",
        ),
        (
            "remove_headers = [\"X-Forwarded-For\"]",
            "upstreams.app.remove_headers[0]",
        ),
        (
            "remove_headers = [\"X-Auth-Subject\"]",
            "upstreams.app.remove_headers[0]",
        ),
        (
            "remove_headers = [\"a\", \"A\"]",
            "upstreams.app.remove_headers[1]: \"A\" is listed twice",
        ),
        (
            "remove_headers = [\"X-Env\"]\nset_headers = { \"X-Env\" = \"prod\" }",
            "is one set_headers gives",
        ),
        ("remove_headers = [\"bad header\"]", "is not a header name"),
    ] {
        let e = bearward::config::Config::from_toml_str(&lines(extra), "t.toml")
            .expect_err(extra)
            .to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
}

/// `remove_response_headers` and `set_response_headers`: a legacy upstream's `Server` and
/// `X-Powered-By` lines (every one of them) never reach the client, its `X-Frame-Options` is
/// replaced and HSTS added, over HTTP/1 and HTTP/2 from the client; bearward's own answers for
/// the same upstream carry none of it.
#[tokio::test]
async fn an_upstreams_response_headers_are_changed_on_the_way_out() {
    // A legacy stack's answer, as it writes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = "HTTP/1.1 200 OK\r\nServer: Apache/2.2.15 (CentOS)\r\n\
                            X-Powered-By: PHP/5.3.3\r\nX-Powered-By: ASP.NET\r\n\
                            X-Frame-Options: SAMEORIGIN\r\nX-Kept: yes\r\n\
                            Content-Length: 2\r\n\r\nok";
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let cfg = basic_config(&format!("http://{at}"), "").replacen(
        "request_timeout = \"500ms\"",
        "request_timeout = \"500ms\"\nremove_response_headers = [\"Server\", \"x-powered-by\"]\n\
         set_response_headers = { \"X-Frame-Options\" = \"DENY\", \
         \"Strict-Transport-Security\" = \"max-age=63072000\" }",
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let check = |headers: &http::HeaderMap, via: &str| {
        assert!(!headers.contains_key("server"), "{via}: {headers:?}");
        assert!(!headers.contains_key("x-powered-by"), "{via}: {headers:?}");
        let frame: Vec<_> = headers.get_all("x-frame-options").iter().collect();
        assert_eq!(frame, ["DENY"], "{via}");
        assert_eq!(
            headers["strict-transport-security"], "max-age=63072000",
            "{via}"
        );
        assert_eq!(headers["x-kept"], "yes", "{via}");
    };
    for _ in 0..2 {
        let a = get(&c, &gw.url("/public/x"), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
        check(&a.headers, "HTTP/1.1");
    }
    let (mut sender, _conn) = h2_connect(gw.addr, None).await;
    let resp = sender
        .send_request(
            Request::get(format!("http://{}/public/x", gw.addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    check(resp.headers(), "HTTP/2");
    let a = get(&c, &gw.url("/api/x"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(!a.headers.contains_key("strict-transport-security"));
}

/// One instance of an API for `health_check`: answers `/healthz` 200 or 503 as `healthy`
/// says, everything else 200; counts checks and other requests apart.
struct Checked {
    addr: std::net::SocketAddr,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn checked_instance() -> Checked {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (healthy, checks, hits) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let inst = Checked {
        addr: listener.local_addr().unwrap(),
        healthy: healthy.clone(),
        checks: checks.clone(),
        hits: hits.clone(),
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (healthy, checks, hits) = (healthy.clone(), checks.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let answer = if head.starts_with("GET /healthz HTTP/1.1\r\n") {
                            checks.fetch_add(1, SeqCst);
                            assert!(head.contains("\r\nConnection: close"), "{head}");
                            match healthy.load(SeqCst) {
                                true => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                false => {
                                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                                }
                            }
                        } else {
                            hits.fetch_add(1, SeqCst);
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    inst
}

/// `health_check`: an endpoint whose checks fail leaves the rotation though it still serves
/// requests (the passive rule would never take it out), and comes back once they pass; the
/// gauge and the failure counter say so. Checks go on with no request in sight.
#[tokio::test]
async fn an_endpoint_failing_its_health_checks_leaves_the_rotation_until_they_pass() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b) = (checked_instance().await, checked_instance().await);
    let cfg = basic_config(&format!("http://{}", a.addr), "").replacen(
        "request_timeout = \"500ms\"",
        &format!(
            "request_timeout = \"500ms\"\nendpoints = [\"{}\", \"{}\"]\n\
             health_check = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\", \
             unhealthy_threshold = 2, healthy_threshold = 2 }}",
            a.addr, b.addr
        ),
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let healthy = |m: &str, at: std::net::SocketAddr| {
        metric(
            m,
            &format!("bearward_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"{at}\"}}"),
        )
    };
    // Checks run before any request.
    let waited = std::time::Instant::now();
    while a.checks.load(SeqCst) < 2 || b.checks.load(SeqCst) < 2 {
        assert!(waited.elapsed() < Duration::from_secs(5), "no checks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = gw.metrics().await;
    assert_eq!(
        (healthy(&m, a.addr), healthy(&m, b.addr)),
        (1.0, 1.0),
        "{m}"
    );
    // Requests on a and on b out of `n` sent.
    let spread = |n: usize| {
        let (c, url, a, b) = (c.clone(), gw.url("/public/x"), &a, &b);
        async move {
            let before = (a.hits.load(SeqCst), b.hits.load(SeqCst));
            for _ in 0..n {
                assert_eq!(get(&c, &url, &[]).await.status, StatusCode::OK);
            }
            (
                a.hits.load(SeqCst) - before.0,
                b.hits.load(SeqCst) - before.1,
            )
        }
    };
    assert_eq!(spread(10).await, (5, 5), "in turn");

    b.healthy.store(false, SeqCst);
    let wait_for = |want: f64| {
        let gw = &gw;
        async move {
            let waited = std::time::Instant::now();
            loop {
                let m = gw.metrics().await;
                if healthy(&m, b.addr) == want {
                    return m;
                }
                assert!(
                    waited.elapsed() < Duration::from_secs(5),
                    "b never {want}: {m}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let m = wait_for(0.0).await;
    assert!(
        metric(&m, &format!("bearward_upstream_health_check_failures_total{{upstream=\"app\",endpoint=\"{}\",reason=\"status_5xx\"}}", b.addr)) >= 2.0,
        "{m}"
    );
    assert_eq!(spread(10).await, (10, 0), "b is out though it serves");

    b.healthy.store(true, SeqCst);
    wait_for(1.0).await;
    assert_eq!(spread(10).await, (5, 5), "b is back");
}

/// A reload that drops an upstream's `health_check` stops its checks (the old upstreams' task
/// ends with them), and one that adds it back starts them again.
#[tokio::test]
async fn a_reload_stops_and_starts_health_checks() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = checked_instance().await;
    let without = basic_config(&format!("http://{}", a.addr), "");
    let with = without.replacen(
        "request_timeout = \"500ms\"",
        "request_timeout = \"500ms\"\n\
         health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\" }",
        1,
    );
    let parse = |t: &str| bearward::config::Config::from_toml_str(t, "t.toml").unwrap();
    let server = bearward::build(parse(&with)).await.unwrap();
    let live = server.live();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let grows = || async {
        let before = a.checks.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.checks.load(SeqCst) > before
    };
    assert!(grows().await, "checks run");
    live.apply(parse(&without));
    // A request on the new config, and the old upstreams' last tick, go by.
    let r = get(&client(), &format!("http://{addr}/public/x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !grows().await,
        "checks go on after the reload took them out"
    );
    live.apply(parse(&with));
    assert!(grows().await, "checks back");
}

/// An instance that takes connections and drops requests unanswered: a request it could not
/// have acted on twice (GET, DELETE without a body) goes on to the next endpoint and is
/// answered; a POST is not sent again (the instance may have acted on it) and is a 502.
#[tokio::test]
async fn an_idempotent_request_dropped_by_one_endpoint_goes_to_the_next() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = Upstream::start().await;
    // Reads each request head, counts it, and closes without a byte of answer.
    let (dropper, heads, _task) = counting_instance(None).await;
    let cfg = basic_config(&a.url(), "").replacen(
        "request_timeout = \"500ms\"",
        &format!(
            "request_timeout = \"500ms\"\nendpoints = [\"{dropper}\", \"{}\"]",
            a.addr
        ),
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for i in 0..6 {
        let r = get(&c, &gw.url(&format!("/public/get/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "GET {i}");
        let r = send(
            &c,
            "DELETE",
            &gw.url(&format!("/public/delete/{i}")),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "DELETE {i}");
    }
    assert_eq!(a.count(), 12, "every one answered by a");
    let dropped = heads.load(SeqCst);
    assert!(dropped >= 1, "the dropper was tried");
    let m = gw.metrics().await;
    let retried = metric(
        &m,
        &format!("bearward_upstream_retries_total{{upstream=\"app\",endpoint=\"{dropper}\"}}"),
    );
    assert_eq!(retried, dropped as f64, "{m}");
    // POSTs, until one lands on the dropper: that one is a 502 and reached it once.
    posts_land_once(&gw, &heads, Duration::ZERO, StatusCode::BAD_GATEWAY).await;
}

/// Four POSTs (`pause` before each), in rotation: each that reached the instance counting
/// `heads` got `status` and reached it once; some landed there and some elsewhere (200).
async fn posts_land_once(
    gw: &Gateway,
    heads: &std::sync::atomic::AtomicUsize,
    pause: Duration,
    status: StatusCode,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        tokio::time::sleep(pause).await;
        let before = heads.load(SeqCst);
        let url = gw.url(&format!("/public/post/{i}"));
        let r = send(&c, "POST", &url, &[], "x=1").await;
        statuses.push(r.status);
        if heads.load(SeqCst) > before {
            assert_eq!(r.status, status);
            assert_eq!(heads.load(SeqCst), before + 1, "sent once");
        }
    }
    assert!(
        statuses.contains(&status) && statuses.contains(&StatusCode::OK),
        "{statuses:?}"
    );
}

/// Weighted `endpoints` take their share of requests in nginx's order; a backup takes none
/// while a primary is in, and all of them when none is (a primary that refuses connections).
#[tokio::test]
async fn weighted_endpoints_share_requests_and_a_backup_waits_for_the_primaries() {
    let (a, b, backup) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let with = |endpoints: String| {
        basic_config(&a.url(), "").replacen(
            "request_timeout = \"500ms\"",
            &format!("request_timeout = \"500ms\"\nendpoints = [{endpoints}]"),
            1,
        )
    };
    let c = client();
    let gw = Gateway::start(&with(format!(
        "{{ address = \"{}\", weight = 3 }}, \"{}\", {{ address = \"{}\", backup = true }}",
        a.addr, b.addr, backup.addr
    )))
    .await;
    for i in 0..8 {
        let r = get(&c, &gw.url(&format!("/public/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!((a.count(), b.count(), backup.count()), (6, 2, 0));

    let down = ClosedPort::new();
    let gw = Gateway::start(&with(format!(
        "\"127.0.0.1:{}\", {{ address = \"{}\", backup = true }}",
        down.port, backup.addr
    )))
    .await;
    for i in 0..4 {
        let r = get(&c, &gw.url(&format!("/public/b/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "served by the backup");
    }
    assert_eq!(backup.count(), 4);
    let m = gw.metrics().await;
    let failures = format!(
        "bearward_upstream_connect_failures_total{{upstream=\"app\",endpoint=\"127.0.0.1:{}\",reason=\"upstream_unreachable\"}}",
        down.port
    );
    assert_eq!(metric(&m, &failures), 1.0, "{m}");
}

/// `max_connection_age`: a pooled connection carries requests until it is that old, and none
/// after: the next request gets a new connection (its name resolved again, placed anew by
/// whatever balances in front of the instances).
#[tokio::test]
async fn a_connection_older_than_max_connection_age_carries_no_new_request() {
    let z = Duration::ZERO;
    let pauses = [z, z, z, Duration::from_millis(1100)];
    let peers = upstream_peers_of_gets("max_connection_age = \"1s\"", &pauses).await;
    assert_eq!(peers[..3], [peers[0]; 3], "one connection while young");
    assert_ne!(peers[3], peers[0], "a new connection once it is 1 s old");
}

/// `max_requests_per_connection`: a pooled connection carries that many requests, then the
/// next goes over a new one.
#[tokio::test]
async fn an_upstream_connection_carries_max_requests_per_connection() {
    let peers =
        upstream_peers_of_gets("max_requests_per_connection = 2", &[Duration::ZERO; 5]).await;
    assert_eq!(peers[0], peers[1]);
    assert_eq!(peers[2], peers[3]);
    assert!(
        peers[0] != peers[2] && peers[2] != peers[4] && peers[0] != peers[4],
        "two requests a connection: {peers:?}"
    );
}

/// A GET through a gateway whose upstream has `lines` more, after each pause in turn (all
/// answered 200): the connection each reached the upstream on.
async fn upstream_peers_of_gets(lines: &str, pauses: &[Duration]) -> Vec<std::net::SocketAddr> {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "").replacen(
        "request_timeout = \"500ms\"",
        &format!("request_timeout = \"500ms\"\n{lines}"),
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    for (i, pause) in pauses.iter().enumerate() {
        tokio::time::sleep(*pause).await;
        let r = get(&c, &gw.url(&format!("/public/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    up.seen().iter().map(|s| s.peer).collect()
}

/// `balance = "least_request"`: an instance that takes requests and answers none keeps the one
/// it got in flight, and every later request goes to the other instance (turns would send it
/// every second one); released, it answers the held request.
#[tokio::test]
async fn least_request_sends_past_an_instance_that_holds_its_requests() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = Upstream::start().await;
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (stuck, heads) = holding_instance(release.clone()).await;
    let cfg = basic_config(&a.url(), "").replacen(
        "request_timeout = \"500ms\"",
        &format!(
            "request_timeout = \"60s\"\nbalance = \"least_request\"\nendpoints = [\"{stuck}\", \"{}\"]",
            a.addr
        ),
        1,
    );
    let gw = Gateway::start(&cfg).await;
    let mut held = Vec::new();
    for i in 0..20 {
        let url = gw.url(&format!("/public/{i}"));
        let before = heads.load(SeqCst);
        let mut req = tokio::spawn(async move { get(&client(), &url, &[]).await.status });
        let reached_stuck = async {
            while heads.load(SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            r = &mut req => assert_eq!(r.unwrap(), StatusCode::OK, "answered by a"),
            () = reached_stuck => held.push(req),
        }
    }
    assert_eq!(
        heads.load(SeqCst),
        1,
        "the stuck instance got one request, then none"
    );
    assert_eq!(a.count(), 19);
    let in_flight = |m: &str, e: &str| {
        metric(
            m,
            &format!("bearward_upstream_endpoint_requests_in_flight{{upstream=\"app\",endpoint=\"{e}\"}}"),
        )
    };
    let m = gw.metrics().await;
    assert_eq!(in_flight(&m, &stuck.to_string()), 1.0, "{m}");
    assert_eq!(in_flight(&m, &a.addr.to_string()), 0.0, "{m}");
    release.add_permits(1);
    for r in held {
        assert_eq!(
            r.await.unwrap(),
            StatusCode::OK,
            "the held request answered"
        );
    }
    let m = gw.metrics().await;
    assert_eq!(in_flight(&m, &stuck.to_string()), 0.0, "{m}");
}

/// An instance that reads each request head, counts it, and answers 200 only once `release`
/// gives it a permit.
async fn holding_instance(
    release: std::sync::Arc<tokio::sync::Semaphore>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (counted, release) = (counted.clone(), release.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(permit) = release.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// `retry_statuses`: an instance that answers 503 (draining) costs an idempotent request
/// nothing: it goes to the next endpoint, and the instance is out for `endpoint_fail_timeout`;
/// a POST gets the 503 as it came, sent once; when every instance answers 503 the client gets
/// the last one's.
#[tokio::test]
async fn a_status_in_retry_statuses_sends_an_idempotent_request_to_the_next_endpoint() {
    use std::sync::atomic::Ordering::SeqCst;
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy!";
    let a = Upstream::start().await;
    let (draining, heads, _task) = counting_instance(Some(BUSY)).await;
    let with = |endpoints: String, fail: &str| {
        basic_config(&a.url(), "").replacen(
            "request_timeout = \"500ms\"",
            &format!(
                "request_timeout = \"500ms\"\nendpoints = [{endpoints}]\n\
                 retry_statuses = [502, 503]\nendpoint_fail_timeout = \"{fail}\""
            ),
            1,
        )
    };
    let gw = Gateway::start(&with(format!("\"{draining}\", \"{}\"", a.addr), "10s")).await;
    let c = client();
    for i in 0..6 {
        let r = get(&c, &gw.url(&format!("/public/get/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "GET {i}");
        assert_eq!(r.body, "upstream ok");
    }
    assert_eq!(a.count(), 6);
    assert_eq!(
        heads.load(SeqCst),
        1,
        "tried once, then out for its fail timeout"
    );
    let m = gw.metrics().await;
    let series =
        format!("bearward_upstream_retries_total{{upstream=\"app\",endpoint=\"{draining}\"}}");
    assert_eq!(metric(&m, &series), 1.0, "{m}");

    // Back in after 100 ms: POSTs until one lands on it get its 503, sent once.
    let gw = Gateway::start(&with(format!("\"{draining}\", \"{}\"", a.addr), "100ms")).await;
    let pause = Duration::from_millis(150);
    posts_land_once(&gw, &heads, pause, StatusCode::SERVICE_UNAVAILABLE).await;

    // A POST's 503 takes the instance out too (its answer was the client's): the GETs after
    // it, within the fail timeout, never reach it.
    let gw = Gateway::start(&with(format!("\"{draining}\", \"{}\"", a.addr), "10s")).await;
    let before = heads.load(SeqCst);
    let first = send(&c, "POST", &gw.url("/public/post"), &[], "x=1").await;
    let second = send(&c, "POST", &gw.url("/public/post"), &[], "x=1").await;
    let statuses = [first.status, second.status];
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert_eq!(heads.load(SeqCst), before + 1);
    for i in 0..4 {
        let r = get(&c, &gw.url(&format!("/public/after/{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(heads.load(SeqCst), before + 1, "out since the POST's 503");

    // Every instance busy: each asked once, the last answer is the client's.
    let (other, other_heads, _task2) = counting_instance(Some(BUSY)).await;
    let gw = Gateway::start(&with(format!("\"{draining}\", \"{other}\""), "10s")).await;
    let before = heads.load(SeqCst);
    let r = get(&c, &gw.url("/public/all-busy"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "busy!");
    assert_eq!(heads.load(SeqCst) - before + other_heads.load(SeqCst), 2);
}

/// `max_requests`: past the limit a request waits up to `queue_timeout` for a place, and is
/// sent only when it has one; one that finds none in time gets 503 with `Retry-After`, and the
/// upstream never sees it.
#[tokio::test]
async fn an_upstreams_max_requests_queue_and_then_refuse() {
    let up = Upstream::start().await;
    let with = |lines: &str| {
        basic_config(&up.url(), "").replacen(
            "request_timeout = \"500ms\"",
            &format!("request_timeout = \"5s\"\n{lines}"),
            1,
        )
    };
    let c = client();
    let in_flight = |m: &str| metric(m, "bearward_upstream_requests_in_flight{upstream=\"app\"}");

    // Two places, a short queue: a third request while both are taken is refused.
    let gw = Gateway::start(&with("max_requests = 2\nqueue_timeout = \"100ms\"")).await;
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url(&format!("/public/{i}/slow")));
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    while up.count() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight(&gw.metrics().await), 2.0);
    let a = get(&c, &gw.url("/public/third"), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(up.count(), 2, "the refused request was not sent");
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        get(&c, &gw.url("/public/after"), &[]).await.status,
        StatusCode::OK
    );
    let m = gw.metrics().await;
    assert_eq!(in_flight(&m), 0.0, "{m}");
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"/public*\",status=\"503\",decision=\"error\",reason=\"upstream_overloaded\"}"),
        1.0,
        "{m}"
    );

    // One place, a long queue: the second request waits, unsent, until the first is done.
    let before = up.count();
    let gw = Gateway::start(&with("max_requests = 1\nqueue_timeout = \"10s\"")).await;
    let first = {
        let (c, url) = (c.clone(), gw.url("/public/first/slow"));
        tokio::spawn(async move { get(&c, &url, &[]).await.status })
    };
    while up.count() < before + 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = {
        let (c, url) = (c.clone(), gw.url("/public/second"));
        tokio::spawn(async move { get(&c, &url, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "answered while the place was taken");
    assert_eq!(up.count(), before + 1, "sent while the place was taken");
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(up.last().uri, "/public/second");
}

/// A reload keeps the health checks' verdicts: an endpoint they took out stays out on the new
/// config (its checks go on from there) rather than taking requests until enough checks fail
/// again.
#[tokio::test]
async fn a_reload_keeps_an_endpoint_its_checks_took_out_out() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b) = (checked_instance().await, checked_instance().await);
    // Three failures in a row, 300 ms apart: a fresh start would keep b in for 600 ms.
    let text = basic_config(&format!("http://{}", a.addr), "").replacen(
        "request_timeout = \"500ms\"",
        &format!(
            "request_timeout = \"500ms\"\nendpoints = [\"{}\", \"{}\"]\n\
             health_check = {{ path = \"/healthz\", interval = \"300ms\", timeout = \"200ms\", \
             unhealthy_threshold = 3, healthy_threshold = 1 }}",
            a.addr, b.addr
        ),
        1,
    );
    let parse = |t: &str| bearward::config::Config::from_toml_str(t, "t.toml").unwrap();
    let server = bearward::build(parse(&text)).await.unwrap();
    let (live, addr) = (server.live(), server.local_addr().unwrap());
    tokio::spawn(server.run(std::future::pending()));
    b.healthy.store(false, SeqCst);
    let waited = std::time::Instant::now();
    let series = format!(
        "bearward_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"{}\"}}",
        b.addr
    );
    // `metric` reads an absent series as 0: the series must be there.
    let gauge = || {
        let m = live.metrics.render();
        m.contains(&series).then(|| metric(&m, &series))
    };
    while gauge() != Some(0.0) {
        assert!(waited.elapsed() < Duration::from_secs(5), "b never out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live.apply(parse(&text));
    let c = client();
    let before = b.hits.load(SeqCst);
    for _ in 0..10 {
        let r = get(&c, &format!("http://{addr}/public/x"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        b.hits.load(SeqCst),
        before,
        "b took requests after the reload"
    );
    assert_eq!(gauge(), Some(0.0));
}

/// An upstream on a Unix domain socket (`unix_socket`): requests, bodies, keep-alive and
/// WebSockets go over it, the `Host` is the client's (or the `url`'s with
/// `pass_host_header = false`), a socket nobody listens on is a 502, and the health check asks
/// through it too.
#[tokio::test]
async fn an_upstream_on_a_unix_socket_is_served_over_it() {
    let dir = std::env::temp_dir().join(format!("bearward-uds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("app.sock");
    let up = Upstream::start_unix(&sock).await;
    let config = basic_config("http://app.internal", "").replace(
        "url = \"http://app.internal\"\n",
        &format!(
            "url = \"http://app.internal\"\nunix_socket = \"{}\"\n\
             health_check = {{ path = \"/public/healthz\", interval = \"200ms\" }}\n",
            sock.display()
        ),
    );
    let gw = Gateway::start(&config).await;
    let c = client();
    for i in 0..3 {
        let a = send(&c, "POST", &gw.url(&format!("/public/x{i}")), &[], "hello").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body, "upstream ok");
        let seen = served(&up);
        assert_eq!(seen.uri, format!("/public/x{i}"));
        assert_eq!(seen.body, b"hello");
        assert_eq!(seen.headers["host"], gw.addr.to_string());
    }
    let (mut s, head) = open_websocket(gw.addr).await;
    assert!(
        head.to_ascii_lowercase().starts_with("http/1.1 101"),
        "{head}"
    );
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    // Checks every 200 ms: one within a few seconds, however loaded the machine.
    for _ in 0..100 {
        if up.seen().iter().any(|s| s.uri == "/public/healthz") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up.seen().iter().any(|s| s.uri == "/public/healthz"),
        "the health check asked over the socket"
    );
    let m = gw.metrics().await;
    let healthy = format!(
        "bearward_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"unix:{}\"}} 1",
        sock.display()
    );
    assert!(m.contains(&healthy), "{m}");

    // pass_host_header = false: the url's host, as over TCP.
    let gw2 = Gateway::start(&config.replace(
        "request_timeout = \"500ms\"",
        "request_timeout = \"500ms\"\npass_host_header = false",
    ))
    .await;
    let a = get(&c, &gw2.url("/public/y"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(served(&up).headers["host"], "app.internal");

    // Nobody on the socket: 502.
    let gone = dir.join("gone.sock");
    let gw3 =
        Gateway::start(&config.replace(&*sock.to_string_lossy(), &gone.to_string_lossy())).await;
    let a = get(&c, &gw3.url("/public/z"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let m = gw3.metrics().await;
    assert!(m.contains("reason=\"upstream_unreachable\""), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The last request the upstream saw other than its health checks.
fn served(up: &Upstream) -> Seen {
    let mut seen = up.seen().into_iter().rev();
    seen.find(|s| s.uri != "/public/healthz").unwrap()
}

/// `unix_socket` is an absolute path for a plain `http` upstream with no endpoints of its own.
#[test]
fn a_unix_socket_upstream_is_checked_when_the_config_loads() {
    let load = |lines: &str| {
        let text = basic_config("http://app.internal", "")
            .replace("url = \"http://app.internal\"\n", lines);
        bearward::config::Config::from_toml_str(&text, "t.toml").map(|_| ())
    };
    load("url = \"http://app.internal\"\nunix_socket = \"/run/app.sock\"\n").unwrap();
    let long = format!("/{}", "a".repeat(107));
    for (lines, says) in [
        (
            "url = \"http://app.internal\"\nunix_socket = \"run/app.sock\"\n",
            "not an absolute path",
        ),
        (
            &*format!("url = \"http://app.internal\"\nunix_socket = \"{long}\"\n"),
            "107 bytes",
        ),
        (
            "url = \"https://app.internal\"\nunix_socket = \"/run/app.sock\"\n",
            "needs no TLS",
        ),
        (
            "url = \"http://app.internal\"\nunix_socket = \"/run/app.sock\"\nendpoints = [\"10.0.0.1:80\"]\n",
            "leave endpoints out",
        ),
    ] {
        let e = load(lines).expect_err(lines).to_string();
        assert!(
            e.contains("upstreams.app.unix_socket") && e.contains(says),
            "{lines}: {e}"
        );
    }
}

/// Idle upstream connections are kept per connection worker (nginx's `keepalive` is per worker
/// process): with two workers and two client connections, one on each, each client's requests
/// go over an upstream connection of its own worker, the same one every time, and never the
/// other worker's, even while that one lies idle in the pool.
#[tokio::test]
async fn idle_upstream_connections_are_kept_per_worker() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "worker_threads = 2")).await;
    // Two clients, one keep-alive connection each; both stay open, so the second goes to the
    // worker serving none.
    let (a, b) = (client(), client());
    for round in 0..3 {
        for (c, who) in [(&a, "a"), (&b, "b")] {
            let r = get(c, &gw.url(&format!("/public/{who}")), &[]).await;
            assert_eq!(r.status, StatusCode::OK, "round {round}, client {who}");
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    let peers = |who: &str| {
        seen.iter()
            .filter(|s| s.uri.ends_with(&format!("/{who}")))
            .map(|s| s.peer)
            .collect::<std::collections::HashSet<_>>()
    };
    let (pa, pb) = (peers("a"), peers("b"));
    assert_eq!(
        pa.len(),
        1,
        "client a's requests on one upstream connection: {pa:?}"
    );
    assert_eq!(
        pb.len(),
        1,
        "client b's requests on one upstream connection: {pb:?}"
    );
    assert!(
        pa.is_disjoint(&pb),
        "the workers share no upstream connection"
    );
    // Each worker serves one of the two open client connections.
    let m = gw.metrics().await;
    for worker in ["0", "1"] {
        let series = format!("bearward_worker_connections{{worker=\"{worker}\"}} 1");
        assert!(m.lines().any(|l| l == series), "{series} in:\n{m}");
    }
}
