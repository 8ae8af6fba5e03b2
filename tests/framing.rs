//! Request framing on the wire: smuggling shapes, transfer codings, heads over the limits,
//! and an upgrade that does not happen.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn smuggling_shaped_requests_are_refused() {
    let (up, gw, _) = setup("").await;
    let cases: &[&[u8]] = &[
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /public/x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        // A clean first request hiding a smuggled second one.
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPOST /public/y HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        let resp = raw(gw.addr, case).await;
        let statuses: Vec<u16> = resp
            .split("HTTP/1.1 ")
            .skip(1)
            .filter_map(|s| s.get(..3).and_then(|c| c.parse().ok()))
            .collect();
        assert!(
            statuses.last().is_some_and(|s| *s == 400),
            "case {i}: {resp:?}"
        );
        if i < cases.len() - 1 {
            assert_eq!(statuses.len(), 1, "case {i}: {resp:?}");
        }
    }
    // Only the clean first request of the last case was forwarded.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, "/public/x");
}

/// Requests bearward could only pass on wrongly: a transfer coding under `chunked` (hyper
/// would hand on the body still coded, with nothing saying so), `chunked` applied twice, and a
/// method that is not upper case (it misses a route's `methods` while some upstreams fold it to
/// the method it spells). Each is refused with its reason, nginx's status, and reaches nothing.
#[tokio::test]
async fn codings_under_chunked_and_lowercase_methods_are_refused() {
    let (up, gw, _) = setup("").await;
    let cases: &[(&str, u16, &str)] = &[
        (
            "POST /public/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
            "not_implemented: unsupported_transfer_coding",
        ),
        (
            "POST /public/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "not_implemented: unsupported_transfer_coding",
        ),
        (
            "POST /public/x HTTP/1.1\r\nTransfer-Encoding: chunked, Chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad request: ambiguous_framing",
        ),
        (
            "POST /public/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad request: ambiguous_framing",
        ),
        (
            "get /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            "bad request: invalid_method",
        ),
        (
            "Delete /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            "bad request: invalid_method",
        ),
    ];
    for (head, status, body) in cases {
        let (line, rest) = head.split_once("\r\n").unwrap();
        let req = format!("{line}\r\nHost: x\r\n{rest}");
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(raw_status(&resp), *status, "{head:?}: {resp}");
        assert!(resp.ends_with(&format!("{body}\n")), "{head:?}: {resp}");
        // The body under an unknown coding is not read, so nothing after it can pass as a
        // next request.
        if *status == 501 {
            assert!(resp.contains("connection: close"), "{resp}");
        }
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let metrics = metrics_after_close(&gw).await;
    for want in [
        r#"status="501",decision="deny",reason="unsupported_transfer_coding"} 2"#,
        r#"reason="invalid_method"} 2"#,
    ] {
        assert!(metrics.contains(want), "{want}: {metrics}");
    }

    // The methods that are meant stay untouched: a lone `chunked`, WebDAV's `-` methods.
    for req in [
        "POST /public/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "VERSION-CONTROL /public/v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(raw_status(&resp), 200, "{req:?}: {resp}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[1].method, "VERSION-CONTROL");
}

/// An `Upgrade` header that upgrades nothing (no `Connection: upgrade`, or an upgrade that is
/// refused), or a refused `CONNECT`, must not switch off the smuggling check for the requests
/// after it.
#[tokio::test]
async fn an_upgrade_that_does_not_happen_leaves_the_smuggling_check_on() {
    let (up, gw, _) = setup("").await;
    let smuggled = "POST /public/y HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for first in [
        "GET /public/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        // An upgrade asked for on a bearer route without a token: refused with 401.
        "GET /api/read/x HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        // CONNECT, which bearward refuses with 400 and hyper then reads past.
        "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    ] {
        let resp = raw(gw.addr, format!("{first}{smuggled}").as_bytes()).await;
        let statuses: Vec<&str> = resp
            .split("HTTP/1.1 ")
            .skip(1)
            .filter_map(|s| s.get(..3))
            .collect();
        assert_eq!(statuses.last(), Some(&"400"), "{first:?}: {resp:?}");
    }
    let seen = up.seen();
    assert!(seen.iter().all(|s| s.uri != "/public/y"), "{seen:?}");
}

/// A `max_headers` other than hyper's own default (100) is applied.
#[tokio::test]
async fn max_headers_setting() {
    let (up, gw, _) = setup("max_headers = 60").await;
    let head = |n: usize| {
        let mut h = String::from("GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..n {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h + "\r\n"
    };
    let resp = raw(gw.addr, head(50).as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let resp = raw(gw.addr, head(70).as_bytes()).await;
    assert!(matches!(raw_status(&resp), 431 | 400), "{resp}");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn header_limits_and_slow_heads() {
    let (up, gw, _) = setup("header_read_timeout = \"500ms\"").await;
    let big = "a".repeat(20 * 1024);
    let resp = raw(
        gw.addr,
        format!("GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 431, "{resp}");

    let mut many = String::from("GET /public/x HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(gw.addr, many.as_bytes()).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    let resp = raw(
        gw.addr,
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX : b\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert!(up.seen().is_empty());

    // Slowloris: half a head, then silence. The connection is closed at the header timeout.
    let mut s = connect_and_send(gw.addr, b"GET /public/x HTTP/1.1\r\nHost: x\r\n").await;
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection still open after 5 s");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count(), 0);
    // A connection that sends nothing, or nothing after its last answer, is closed too, but
    // is no refused request.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    time_to_close(&mut idle).await;
    let mut kept = connect_and_send(gw.addr, b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut kept).await, 200);
    time_to_close(&mut kept).await;

    // Each refusal is counted with its reason, under route "-" (408: nginx's status for a
    // request cut off by the header timer, though nothing is sent).
    let expected = [
        ("431", "head_too_large", 2.0),
        ("400", "malformed_request", 1.0),
        ("408", "head_timeout", 1.0),
    ];
    let text = metrics_after_close(&gw).await;
    for (status, reason, n) in expected {
        let series = format!(
            "bearward_requests_total{{route=\"-\",status=\"{status}\",decision=\"deny\",reason=\"{reason}\"}} {n}\n"
        );
        assert!(text.contains(&series), "{series} in\n{text}");
    }
}

/// hyper answers a URI over 64 KiB with 414 (reachable with `max_header_bytes` above that);
/// it is counted as that, not as the 431 of a head too large.
#[tokio::test]
async fn a_uri_over_64_kib_is_414_and_counted_so() {
    let (up, gw, _) = setup("max_header_bytes = 131072").await;
    let path = format!("/public/{}", "a".repeat(70_000));
    let resp = raw(
        gw.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 414, "{}", &resp[..resp.len().min(200)]);
    assert_eq!(up.count(), 0);
    let text = metrics_after_close(&gw).await;
    assert!(
        text.contains("bearward_requests_total{route=\"-\",status=\"414\",decision=\"deny\",reason=\"head_too_large\"} 1\n"),
        "{text}"
    );
}

/// A request refused with its body unread (a POST without a token, its body sent after the
/// head, as clients such as Python's httpx write it): hyper reads on only what has arrived and
/// then closes the connection, so the answer says so. Without the `Connection: close`, a client
/// reusing the connection lost its next request ("server disconnected"). A refusal of a request
/// without a body keeps the connection.
#[tokio::test]
async fn a_refusal_with_the_body_unread_says_the_connection_closes() {
    let (up, gw, _) = setup("").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let (resp, _) = read_to_close(&mut s).await;
    let resp = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 401"), "{resp}");
    assert!(resp.contains("\r\nconnection: close\r\n"), "{resp}");

    let two = b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\nGET /public/y HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw(gw.addr, two).await;
    assert!(
        !resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 2, "{resp}");
    assert_eq!(up.count(), 1);
}
