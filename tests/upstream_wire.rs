//! bearward's upstream side against a scripted upstream that writes raw bytes: response framing
//! (chunked, lengths, close-delimited, interim responses), responses refused as malformed,
//! connection reuse, and the retry rules for pooled connections that die.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does with the n-th request it reads (0-based, over all
/// connections).
#[derive(Clone)]
enum Act {
    /// Writes these bytes and waits for the next request on the connection.
    Reply(&'static str),
    /// Writes these bytes and closes.
    ReplyClose(&'static str),
    /// Closes without answering.
    Close,
    /// Answers as soon as the head is in, without reading the body, then closes.
    Early(&'static str),
    /// Reads the head, then neither reads nor answers for 10 s.
    Hold,
    /// Writes the first bytes, waits this many ms, writes the rest, and keeps the connection.
    Pause(&'static str, u64, &'static str),
}

struct Scripted {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    /// Request heads, in the order read (bodies are not kept).
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: Vec<Act>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let script = Arc::new(script);
        let (c, h) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, script.clone(), h.clone()));
            }
        });
        Scripted { addr, conns, heads }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

async fn serve(mut s: TcpStream, script: Arc<Vec<Act>>, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let n = {
            let mut h = heads.lock().unwrap();
            h.push(head.clone());
            h.len() - 1
        };
        let act = script.get(n).cloned().unwrap_or(Act::Close);
        if let Act::Early(bytes) = act {
            let _ = s.write_all(bytes.as_bytes()).await;
            return;
        }
        if let Act::Hold = act {
            tokio::time::sleep(Duration::from_secs(10)).await;
            return;
        }
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        match act {
            Act::Reply(bytes) => {
                if s.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Act::Pause(first, ms, rest) => {
                let _ = s.write_all(first.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if s.write_all(rest.as_bytes()).await.is_err() {
                    return;
                }
            }
            Act::ReplyClose(bytes) => {
                let _ = s.write_all(bytes.as_bytes()).await;
                return;
            }
            Act::Close | Act::Early(_) | Act::Hold => return,
        }
    }
}

async fn gateway(up: &Scripted) -> Gateway {
    Gateway::start(&basic_config(&format!("http://{}", up.addr), "")).await
}

/// `bearward_upstream_response_aborts_total` for upstream `app` and `reason`.
async fn aborts(gw: &Gateway, reason: &str) -> String {
    let text = metrics_after_close(gw).await;
    let series =
        format!("bearward_upstream_response_aborts_total{{upstream=\"app\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or("0")
        .to_owned()
}

#[tokio::test]
async fn a_chunked_response_is_decoded_and_its_connection_reused() {
    let up = Scripted::start(vec![
        Act::Reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    let a = get(&c, &gw.url("/public/a"), &[]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "hello world"));
    let b = get(&c, &gw.url("/public/b"), &[]).await;
    assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "next"));
    assert_eq!(up.conns(), 1, "the connection was reused");
}

#[tokio::test]
async fn ambiguous_or_malformed_responses_are_refused_and_their_connection_closed() {
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    ] {
        let up = Scripted::start(vec![
            Act::Reply(bad),
            Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
        ])
        .await;
        let gw = gateway(&up).await;
        let c = client();
        let a = get(&c, &gw.url("/public/a"), &[]).await;
        assert_eq!(a.status.as_u16(), 502, "{bad:?}");
        assert!(a.body.contains("upstream_bad_response"), "{}", a.body);
        let b = get(&c, &gw.url("/public/b"), &[]).await;
        assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "next"));
        assert_eq!(up.conns(), 2, "{bad:?}: the refused response's connection was reused");
    }
}

/// `GET /public/a` on a connection of its own, read to its close: what a client saw of a
/// response that broke off.
async fn get_closing(gw: &Gateway) -> String {
    raw(
        gw.addr,
        b"GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn a_malformed_chunk_breaks_the_client_response_and_the_connection() {
    let up = Scripted::start(vec![
        Act::Reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let out = get_closing(&gw).await;
    // The client sees the connection close before a complete response (how much of the head
    // and the first chunk got out first depends on buffering), never a cleanly ended body.
    assert!(
        out.is_empty() || raw_status(&out) == 200,
        "unexpected answer: {out:?}"
    );
    assert!(
        !out.contains("\r\n0\r\n\r\n"),
        "the broken body was ended cleanly: {out:?}"
    );
    let b = get(&client(), &gw.url("/public/b"), &[]).await;
    assert_eq!(b.body, "next");
    assert_eq!(up.conns(), 2);
    assert_eq!(aborts(&gw, "upstream_bad_chunk").await, "1");
}

#[tokio::test]
async fn an_upstream_that_closes_mid_body_is_counted_and_logged_as_an_abort() {
    let up = Scripted::start(vec![Act::ReplyClose(
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    )])
    .await;
    let gw = gateway(&up).await;
    let out = get_closing(&gw).await;
    assert!(out.is_empty() || out.ends_with("abc"), "{out:?}");
    assert_eq!(aborts(&gw, "upstream_closed_mid_body").await, "1");
}

#[tokio::test]
async fn bytes_after_a_response_are_never_taken_as_the_next_response() {
    // A desync attempt: a second response rides behind the first one's body.
    let up = Scripted::start(vec![
        Act::Reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\
             HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/public/a"), &[]).await.body, "hi");
    let b = get(&c, &gw.url("/public/b"), &[]).await;
    assert_eq!(b.body, "next");
    assert_eq!(up.conns(), 2);
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn a_close_delimited_body_is_read_to_the_close() {
    let up = Scripted::start(vec![
        Act::ReplyClose("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    assert_eq!(
        get(&c, &gw.url("/public/a"), &[]).await.body,
        "until the end"
    );
    assert_eq!(get(&c, &gw.url("/public/b"), &[]).await.body, "next");
    assert_eq!(up.conns(), 2);
    assert_eq!(
        aborts(&gw, "upstream_closed_mid_body").await,
        "0",
        "a close ends it"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_responses_have_no_body() {
    let up = Scripted::start(vec![
        Act::Reply(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        ),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    let a = send(&c, "POST", &gw.url("/public/a"), &[], "payload").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (201, "done"));
    let h = send(&c, "HEAD", &gw.url("/public/h"), &[], "").await;
    assert_eq!(h.status.as_u16(), 200);
    assert_eq!(h.headers["content-length"], "1000");
    // The HEAD response had no body to wait for, and its connection carried on.
    assert_eq!(get(&c, &gw.url("/public/b"), &[]).await.body, "next");
    assert_eq!(up.conns(), 1);
}

#[tokio::test]
async fn a_pooled_connection_that_dies_unanswered_is_retried_only_for_idempotent_requests() {
    // Each first request on a connection is answered; the second is read, then the connection
    // closes without an answer (an upstream restarting, or closing an idle connection as the
    // request arrives).
    let up = Scripted::start(vec![
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        Act::Close,
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"),
        Act::Close,
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/public/1"), &[]).await.body, "a");
    // GET: sent on the pooled connection, unanswered, sent again on a fresh one.
    assert_eq!(get(&c, &gw.url("/public/2"), &[]).await.body, "b");
    assert_eq!((up.conns(), up.requests()), (2, 3));
    assert_eq!(get(&c, &gw.url("/public/3"), &[]).await.body, "c");
    // POST: the upstream may have acted on it; it is not sent twice.
    let p = send(&c, "POST", &gw.url("/public/4"), &[], "once").await;
    assert_eq!(p.status.as_u16(), 502);
    assert_eq!(up.requests(), 5, "the POST was sent once");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    // Answered, then closed by the upstream while idle in the pool (keep-alive timeout).
    let up = Scripted::start(vec![
        Act::ReplyClose("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let gw = gateway(&up).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/public/1"), &[]).await.body, "a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A POST cannot be retried, so this passes only if the dead connection was never tried.
    let p = send(&c, "POST", &gw.url("/public/2"), &[], "x").await;
    assert_eq!((p.status.as_u16(), p.body.as_str()), (200, "b"));
    assert_eq!((up.conns(), up.requests()), (2, 2));
}

#[tokio::test]
async fn an_early_answer_to_a_large_upload_is_forwarded() {
    let up = Scripted::start(vec![Act::Early(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo long",
    )])
    .await;
    let gw = gateway(&up).await;
    let body = "x".repeat(8 << 20);
    let a = send(&client(), "POST", &gw.url("/public/upload"), &[], &body).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (413, "too long"));
}

#[tokio::test]
async fn an_oversized_response_head_is_refused() {
    let big: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(70 * 1024)
        )
        .into_boxed_str(),
    );
    let up = Scripted::start(vec![Act::Reply(big)]).await;
    let gw = gateway(&up).await;
    let a = get(&client(), &gw.url("/public/a"), &[]).await;
    assert_eq!(a.status.as_u16(), 502);
    assert!(a.body.contains("upstream_bad_response"), "{}", a.body);
}

#[tokio::test]
async fn a_response_body_that_stops_coming_is_cut_off() {
    // Three of ten bytes, then nothing; the connection stays open. request_timeout is 500 ms.
    let up = Scripted::start(vec![Act::Reply(
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    )])
    .await;
    let gw = gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (out, took) = read_to_close(&mut s).await;
    assert!(took >= Duration::from_millis(400), "cut early: {took:?}");
    assert!(took < Duration::from_millis(2500), "cut late: {took:?}");
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("abc") || out.ends_with("abc"), "{out:?}");
    assert_eq!(aborts(&gw, "upstream_body_timeout").await, "1");
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_request_body_gets_a_504() {
    // request_timeout is 500 ms; the body is far larger than the socket buffers between.
    let up = Scripted::start(vec![Act::Hold]).await;
    let gw = gateway(&up).await;
    let body = "x".repeat(32 << 20);
    let start = std::time::Instant::now();
    let a = send(&client(), "POST", &gw.url("/public/upload"), &[], &body).await;
    let took = start.elapsed();
    assert_eq!(a.status.as_u16(), 504, "{}", a.body);
    assert!(a.body.contains("upstream_timeout"), "{}", a.body);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn an_h2_body_waiting_on_a_slow_upstream_is_not_taken_for_a_stalled_client() {
    // The upstream pauses 400 ms mid-body: past send_timeout (150 ms) twice over, well within
    // request_timeout (5 s). The h2 client reads all along, so its connection must survive:
    // only time spent waiting on the client counts against send_timeout.
    let up = Scripted::start(vec![Act::Pause(
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        400,
        "world",
    )])
    .await;
    let cfg = basic_config(&format!("http://{}", up.addr), "send_timeout = \"150ms\"")
        .replace("request_timeout = \"500ms\"", "request_timeout = \"5s\"");
    let gw = Gateway::start(&cfg).await;
    let (mut sender, conn) = h2_connect(gw.addr, None).await;
    let req = http::Request::get(format!("http://{}/public/a", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"helloworld");
    assert!(!conn.is_finished());
}

#[tokio::test]
async fn content_length_on_a_204_or_304_frames_nothing_and_a_204_loses_it() {
    // RFC 9112 6.3: both end at their head, whatever their headers say. A Content-Length on a
    // 304 describes the representation; on a 204 it must not be sent (RFC 9110 8.6).
    let up = Scripted::start(vec![
        Act::Reply("HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"a\"\r\n\r\n"),
        Act::Reply("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let gw = gateway(&up).await;
    let out = raw(
        gw.addr,
        b"GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /public/b HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /public/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    let responses: Vec<&str> = out.split("http/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{out}");
    assert!(
        responses[0].starts_with("304") && responses[0].contains("etag: \"a\""),
        "{out}"
    );
    assert!(
        responses[1].starts_with("204") && !responses[1].contains("content-length"),
        "{out}"
    );
    assert!(
        responses[2].starts_with("200") && responses[2].ends_with("\r\n\r\nnext"),
        "{out}"
    );
    assert_eq!(
        up.conns(),
        1,
        "the upstream connection carried on after both"
    );
}

#[tokio::test]
async fn a_101_reaches_the_client_with_no_body_framing_and_the_tunnel_follows() {
    // A 101 ends at its head (RFC 9112 6.3); what follows belongs to the new protocol, so a
    // Content-Length or Transfer-Encoding on it frames nothing and is not passed on.
    let up = Scripted::start(vec![Act::Reply(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
         Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    )])
    .await;
    let gw = gateway(&up).await;
    let out = raw(
        gw.addr,
        b"GET /public/ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let (head, rest) = out.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{out}");
    assert!(head.contains("upgrade: websocket"), "{out}");
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "{out}"
    );
    assert_eq!(rest, "hello", "the upstream's first tunnel bytes");
}
