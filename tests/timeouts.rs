//! Every clock on a connection: upstream connect and request timeouts, the header timer,
//! body pauses, send timeouts on both protocols, idle HTTP/2 connections and tunnels, and the
//! graceful drain.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let gw = Gateway::start(&basic_config(&format!("http://{dead}"), "")).await;
    let c = client();
    let a = get(&c, &gw.url("/public/x"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);

    let (_up, gw, c) = setup("").await;
    let start = std::time::Instant::now();
    let a = get(&c, &gw.url("/public/slow"), &[]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered at the 500ms request timeout"
    );
}

/// A route's own `request_timeout` replaces its upstream's for that route alone: the slow
/// answer (2 s) is waited for on the patient route, cut at the upstream's 500 ms elsewhere, and
/// cut sooner on a route that sets less. A slow response body pauses under the route's too.
#[tokio::test]
async fn a_routes_request_timeout_replaces_its_upstreams() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "")
        + "\n[[routes]]\nprefix = \"/patient\"\nauth = \"none\"\nupstream = \"app\"\n\
           request_timeout = \"5s\"\n\
           \n[[routes]]\nprefix = \"/hasty\"\nauth = \"none\"\nupstream = \"app\"\n\
           request_timeout = \"100ms\"\n";
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let timed = |path: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let start = Instant::now();
            let status = get(&c, &url, &[]).await.status;
            (status, start.elapsed())
        }
    };
    let (status, took) = timed("/patient/slow").await;
    assert_eq!(status, StatusCode::OK, "waited {took:?}");
    assert!(took >= Duration::from_secs(2));
    let (status, took) = timed("/public/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let (status, took) = timed("/hasty/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_millis(450), "{took:?}");
    // Fast answers pass on every route.
    assert_eq!(timed("/hasty/x").await.0, StatusCode::OK);

    // An upstream whose body pauses 1 s after its head: broken off at the upstream's 500 ms,
    // read whole under the patient route's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pausing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst";
                let _ = s.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = s.write_all(b"-last").await;
            });
        }
    });
    let cfg = basic_config(&format!("http://{pausing}"), "")
        + "\n[[routes]]\nprefix = \"/patient\"\nauth = \"none\"\nupstream = \"app\"\n\
           request_timeout = \"5s\"\n";
    let gw = Gateway::start(&cfg).await;
    let whole = get(&c, &gw.url("/patient/x"), &[]).await;
    assert_eq!(
        (whole.status, whole.body.as_str()),
        (StatusCode::OK, "first-last")
    );
    let cut = get(&c, &gw.url("/public/x"), &[]).await;
    assert_eq!(cut.status, StatusCode::OK, "the head came in time");
    // The client's read fails (the connection closes mid-body), so `send` gives no body.
    assert_eq!(cut.body, "", "the body broken off at the pause");
}

/// The request timeout is kept per client connection and pushed forward per request: on one
/// keep-alive connection, fast requests after a timed-out one are not cut short, and a slow one
/// after fast ones still times out on time.
#[tokio::test]
async fn request_timeout_holds_for_every_request_on_a_connection() {
    let (up, gw, _) = setup("").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for path in [
        "/public/a",
        "/public/slow",
        "/public/b",
        "/public/c",
        "/public/slow",
    ] {
        // Spaced so a timer left over from the previous request would fire inside this one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.ready().await.unwrap();
        let start = std::time::Instant::now();
        let resp = tx
            .send_request(
                Request::get(path)
                    .header("host", "x")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        let took = start.elapsed();
        if status == StatusCode::GATEWAY_TIMEOUT {
            assert!(
                took >= Duration::from_millis(450),
                "{path}: cut at {took:?}"
            );
            assert!(took < Duration::from_millis(1500), "{path}: late, {took:?}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 504, 200, 200, 504]);
    assert_eq!(up.count(), 5);
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_but_a_busy_one_is_not() {
    let (_up, gw) = setup_with_slow_upstream("header_read_timeout = \"500ms\"").await;
    let (mut sender, conn) = h2_connect(gw.addr, None).await;
    // A 2 s upstream answer spans several idle periods: a stream in flight keeps it open.
    let req = Request::get(format!("http://{}/public/slow", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    // Then nothing: closed within two periods (and some slack), not left open.
    let took = h2_time_to_close(conn).await;
    assert!(took >= Duration::from_millis(400), "closed early: {took:?}");
}

#[tokio::test]
async fn an_h2_client_that_takes_no_data_loses_the_connection_at_send_timeout() {
    let (_up, gw, _) = setup("send_timeout = \"500ms\"").await;
    let req = || {
        Request::get(format!("http://{}/public/x", gw.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // A window of 0: the head arrives, the body never can.
    let (mut stuck, stuck_conn) = h2_connect(gw.addr, Some(0)).await;
    let resp = stuck.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A client that reads normally, on its own connection, past the same time.
    let (mut fine, fine_conn) = h2_connect(gw.addr, Some(65_535)).await;
    let took = h2_time_to_close(stuck_conn).await;
    assert!(took >= Duration::from_millis(400), "closed early: {took:?}");
    drop(resp);
    let resp = fine.send_request(req()).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"upstream ok");
    assert!(
        !fine_conn.is_finished(),
        "a reading client lost its connection"
    );
}

#[tokio::test]
async fn the_header_timer_spares_requests_in_flight_and_closes_idle_connections() {
    // /slow takes 2 s, four times the header timeout.
    let (up, gw) = setup_with_slow_upstream("header_read_timeout = \"500ms\"").await;
    let mut s = connect_and_send(gw.addr, b"GET /public/slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut s).await, 200);
    // Idle for less than the timeout, then a request: the timer started over after the
    // response, so it does not count the 2 s the first request took.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET /public/b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    // Then silence: waiting for a head that never comes ends at the timeout.
    let idle = time_to_close(&mut s).await;
    assert!(idle >= Duration::from_millis(400), "closed early: {idle:?}");
    assert!(idle < Duration::from_millis(2000), "closed late: {idle:?}");
    assert_eq!(up.count(), 2);
}

/// `bearward_connections_parked` from the admin listener.
async fn parked(gw: &Gateway) -> u64 {
    let url = format!("http://{}/metrics", gw.admin.expect("admin listener"));
    let body = get(&client(), &url, &[]).await.body;
    let line = body
        .lines()
        .find(|l| l.starts_with("bearward_connections_parked "))
        .expect("the parked-connections gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_idle_connection_gives_its_buffers_back_and_carries_on() {
    let (up, mut gw, _) = setup("header_read_timeout = \"800ms\"").await;
    let mut s = connect_and_send(gw.addr, b"GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut s).await, 200);
    // Idle past the park point (10 ms): hyper's state is dropped, the socket waits alone.
    // Asked until it is, well within the header timeout: a loaded machine (CI, with builds
    // beside it) can take longer than a fixed wait to get there.
    let waited = std::time::Instant::now();
    while parked(&gw).await != 1 {
        assert!(
            waited.elapsed() < Duration::from_millis(600),
            "not parked within 600 ms"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A head that comes in two pieces wakes it: the fresh hyper connection reads the rest.
    s.write_all(b"GET /public/b HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    // Two pipelined requests after another idle spell: both answered, in order.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(
        b"GET /public/c HTTP/1.1\r\nHost: x\r\n\r\nGET /public/d HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    assert_eq!(read_response(&mut s).await, 200);
    let seen: Vec<String> = up.seen().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, ["/public/a", "/public/b", "/public/c", "/public/d"]);
    // Parked, the header timer still holds: silence ends at header_read_timeout, counted
    // from the last response, not from the park.
    let idle = time_to_close(&mut s).await;
    assert!(idle >= Duration::from_millis(650), "closed early: {idle:?}");
    assert!(idle < Duration::from_millis(2000), "closed late: {idle:?}");
    assert_eq!(parked(&gw).await, 0);
    // A parked connection closes at once when the server drains.
    let mut s = connect_and_send(gw.addr, b"GET /public/e HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut s).await, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.stop();
    let drained = time_to_close(&mut s).await;
    assert!(
        drained < Duration::from_millis(500),
        "closed late: {drained:?}"
    );
}

#[tokio::test]
async fn a_pipelined_request_behind_a_slow_one_is_answered() {
    // The second head arrives with the first and waits in hyper's buffer for 2 s, four times
    // the header timeout: it is a received head, not a slow one.
    let (up, gw) = setup_with_slow_upstream("header_read_timeout = \"500ms\"").await;
    let mut s = connect_and_send(
        gw.addr,
        b"GET /public/slow HTTP/1.1\r\nHost: x\r\n\r\nGET /public/next HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(read_response(&mut s).await, 200);
    assert_eq!(read_response(&mut s).await, 200);
    let seen: Vec<String> = up.seen().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, ["/public/slow", "/public/next"]);
}

#[tokio::test]
async fn the_admin_port_has_the_header_timer_too() {
    let (_up, gw, _) = setup("header_read_timeout = \"500ms\"").await;
    let mut s = connect_and_send(gw.admin.unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    let waited = time_to_close(&mut s).await;
    assert!(
        waited < Duration::from_millis(2000),
        "closed late: {waited:?}"
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_408_and_the_upstream_never_gets_it_whole() {
    let (up, gw, _) = setup("body_read_timeout = \"500ms\"").await;
    let mut s = connect_and_send(
        gw.addr,
        b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    let (out, took) = read_to_close(&mut s).await;
    let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert_eq!(raw_status(&out), 408, "{out}");
    assert!(out.contains("client_body_timeout"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(took >= Duration::from_millis(400), "early: {took:?}");
    assert!(took < Duration::from_millis(2500), "late: {took:?}");
    // The upstream records a request once it has read its whole body: it never did.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.count(), 0);
}

/// A malformed chunked body is the client's fault: 400 with its own reason, not a 502 that
/// blames the upstream, and the upstream never gets the request whole.
#[tokio::test]
async fn a_malformed_request_body_is_400_and_the_upstream_never_gets_it_whole() {
    let (up, gw, _) = setup("").await;
    for body in [
        "3\nabc\n0\n\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "zz\r\nabc\r\n0\r\n\r\n",
    ] {
        let out = raw(
            gw.addr,
            format!("POST /public/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes(),
        )
        .await
        .to_ascii_lowercase();
        assert_eq!(raw_status(&out), 400, "{body:?}: {out}");
        assert!(out.contains("client_body_invalid"), "{body:?}: {out}");
        assert!(out.contains("connection: close"), "{body:?}: {out}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_slow_but_steady_request_body_is_not_cut() {
    // A byte every 200 ms for 2 s, under a 500 ms limit on each pause.
    let (up, gw, _) = setup("body_read_timeout = \"500ms\"").await;
    let mut s = connect_and_send(
        gw.addr,
        b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    for b in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(read_response(&mut s).await, 200);
    assert_eq!(up.last().body, b"0123456789");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let (_up, gw, _) = setup("send_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // 64 MiB, far more than the socket buffers between us hold; then nothing is read for 2 s.
    s.write_all(b"GET /public/big?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was still open");
    assert!(got < 64 << 20, "the whole response came: {got} bytes");
}

#[tokio::test]
async fn a_trickled_head_is_cut_at_the_deadline() {
    let (up, gw, _) = setup("header_read_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let start = std::time::Instant::now();
    let mut cut = None;
    // A byte every 50 ms: 4 s for the whole head, always something new before the deadline.
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("the whole head was accepted byte by byte");
    assert!(cut < Duration::from_millis(2000), "cut late: {cut:?}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_upgrade_header_without_an_upgrade_keeps_the_header_timer() {
    let (up, gw, _) = setup("header_read_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Asks for an upgrade that the upstream does not grant: the connection stays HTTP/1.
    s.write_all(
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    s.write_all(b"GET /public/y HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = time_to_close(&mut s).await;
    assert!(
        waited < Duration::from_millis(2000),
        "closed late: {waited:?}"
    );
    assert_eq!(up.count(), 1);
}

/// Past the 101 nothing else bounds a tunnel: one with no byte either way for
/// `tunnel_idle_timeout` is closed, and one in use is not.
#[tokio::test]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "").replace(
        "request_timeout = \"500ms\"",
        "request_timeout = \"500ms\"\ntunnel_idle_timeout = \"400ms\"",
    );
    let gw = Gateway::start(&cfg).await;
    let (mut s, head) = open_websocket(gw.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A frame each way every 200 ms for three idle periods.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let msg = format!("frame {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
            .await
            .expect("the busy tunnel answers")
            .expect("the busy tunnel is open");
        assert_eq!(back, msg.as_bytes());
    }
    // Then silence: closed after the idle time, not before.
    let took = time_to_close(&mut s).await;
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn an_upgraded_connection_outlives_the_header_timer() {
    let (_up, gw, _) = setup("header_read_timeout = \"300ms\"").await;
    let (mut s, head) = open_websocket(gw.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Quiet for three header timeouts, then a frame each way.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still here");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    // /slow takes 2 s: longer than basic_config's 500ms request timeout, so raise it.
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "shutdown_grace = \"5s\"")
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let mut gw = Gateway::start(&cfg).await;
    let c = client();
    let url = gw.url("/public/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url, &[]).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "no new connections after shutdown starts"
    );
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    let done = tokio::time::timeout(Duration::from_secs(5), gw.done).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
}

#[tokio::test]
async fn graceful_shutdown_sends_http2_clients_goaway_and_finishes_their_streams() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "shutdown_grace = \"5s\"")
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let mut gw = Gateway::start(&cfg).await;
    let (mut send, conn) = h2_connect(gw.addr, None).await;
    let req = Request::get(format!("http://{}/public/slow", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = tokio::spawn(send.send_request(req));
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop();
    // The stream in flight when the drain began is answered in full; then the connection ends
    // (GOAWAY, not a reset: a reset would fail the stream).
    let resp = in_flight.await.unwrap().expect("the stream is answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap();
    assert!(!body.to_bytes().is_empty());
    h2_time_to_close(conn).await;
    let done = tokio::time::timeout(Duration::from_secs(5), gw.done).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
}

/// A client that closes its connection while its request waits on the upstream: the request is
/// counted at once (not when the upstream answers, 2 s later) under nginx's status for it, 499,
/// decision `error`, reason `connection_closed`; answered requests never are.
#[tokio::test]
async fn a_client_that_goes_away_mid_request_is_counted_as_499() {
    let (up, gw) = setup_with_slow_upstream("").await;
    let closed = "bearward_requests_total{route=\"/public*\",status=\"499\",decision=\"error\",reason=\"connection_closed\"}";
    assert_eq!(get(&client(), &gw.url("/public/a"), &[]).await.status, 200);
    assert_eq!(get(&client(), &gw.url("/api/a"), &[]).await.status, 401);
    let s = connect_and_send(gw.addr, b"GET /public/slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    for _ in 0..100 {
        if up.count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 2, "the slow request reached the upstream");
    assert_eq!(metric(&gw.metrics().await, closed), 0.0);
    drop(s);
    let start = Instant::now();
    let mut m = String::new();
    while start.elapsed() < Duration::from_secs(1) {
        m = gw.metrics().await;
        if metric(&m, closed) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&m, closed), 1.0, "{m}");
    let answered = m
        .lines()
        .filter(|l| l.starts_with("bearward_requests_total{") && !l.contains("\"499\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(answered, 2.0, "{m}");
}

/// `max_requests_per_connection` (HTTP/1): the answer to a connection's last request says
/// `Connection: close` and the connection closes after it; the answers before it keep it open.
/// `max_connection_age`: the first request past the age is the last.
#[tokio::test]
async fn a_client_connection_ends_at_its_last_request() {
    const GET: &[u8] = b"GET /public/x HTTP/1.1\r\nHost: t\r\n\r\n";
    let (_up, gw, _) = setup("max_requests_per_connection = 3").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..3 {
        s.write_all(GET).await.unwrap();
        let head = read_response_head(&mut s).await;
        assert_eq!(raw_status(&head), 200, "{head}");
        assert_eq!(
            head.contains("connection: close"),
            i == 2,
            "answer {i}: {head}"
        );
    }
    let (rest, took) = read_to_close(&mut s).await;
    assert!(rest.is_empty() && took < Duration::from_secs(1), "{took:?}");

    let (_up, gw, _) = setup("max_connection_age = \"1s\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..2 {
        s.write_all(GET).await.unwrap();
        let head = read_response_head(&mut s).await;
        assert!(
            !head.contains("connection: close"),
            "young, answer {i}: {head}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.write_all(GET).await.unwrap();
    let head = read_response_head(&mut s).await;
    assert!(head.contains("connection: close"), "{head}");
    let (_, took) = read_to_close(&mut s).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// `max_requests_per_connection` (HTTP/2): GOAWAY as the last request starts; it is answered,
/// and the connection then closes.
#[tokio::test]
async fn an_h2_client_connection_gets_goaway_at_its_last_request() {
    let (_up, gw, _) = setup("max_requests_per_connection = 2").await;
    let (mut sender, conn) = h2_connect(gw.addr, None).await;
    for _ in 0..2 {
        let req = Request::get(format!("http://{}/public/x", gw.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    // Closed within h2_time_to_close's 3 s, where header_read_timeout (10 s) would not.
    h2_time_to_close(conn).await;
}
