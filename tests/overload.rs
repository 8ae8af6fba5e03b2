//! Overload limits with real sockets: `max_connections` (new connections wait in the backlog),
//! `max_requests_in_flight` (503 before any token work), and the HTTP/2 limits (streams per
//! connection, header list size, reset-stream rate) against a client that breaks them on
//! purpose, written frame by frame. Each test also shows that valid requests on the
//! connections already open keep being served while the limit holds.

mod common;

use common::*;
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn admin_metrics(gw: &Gateway) -> String {
    get(
        &client(),
        &format!("http://{}/metrics", gw.admin.unwrap()),
        &[],
    )
    .await
    .body
}

/// Sends one keep-alive HTTP/1.1 request on `s` and reads its whole response (the test
/// upstream answers with a Content-Length).
async fn h1_exchange(s: &mut TcpStream, path: &str, extra: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    read_response(s).await
}

async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_and_open_ones_are_served() {
    let up = Upstream::start().await;
    // Keys from a file, so /readyz can say 200 while the limit holds.
    let cfg =
        basic_config(&up.url(), "max_connections = 3").replace("empty-jwks.json", "jwks-rsa1.json");
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let r = h1_exchange(&mut s, "/public/x", "").await;
        assert_eq!(raw_status(&r), 200, "{r}");
        open.push(s);
    }
    // The fourth connects (the kernel completes the handshake into the backlog) but is not
    // accepted: its request gets no answer while three are open.
    let mut waiting = TcpStream::connect(gw.addr).await.unwrap();
    waiting
        .write_all(b"GET /public/waited HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut one = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut one)).await;
    assert!(
        early.is_err(),
        "the fifth connection was served past the limit"
    );
    assert!(!up.seen().iter().any(|s| s.uri == "/public/waited"));
    // Open connections keep being served, and the admin listener keeps answering.
    for s in &mut open {
        let r = h1_exchange(s, "/public/again", "").await;
        assert_eq!(raw_status(&r), 200, "{r}");
    }
    let ready = get(
        &client(),
        &format!("http://{}/readyz", gw.admin.unwrap()),
        &[],
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);
    let m = admin_metrics(&gw).await;
    assert_eq!(metric(&m, "bearward_connections_open"), 3.0, "{m}");
    assert_eq!(metric(&m, "bearward_connections_max"), 3.0, "{m}");
    assert!(
        metric(&m, "bearward_connections_deferred_total") >= 1.0,
        "{m}"
    );
    // One closes: the waiting connection is accepted and its request, sent long ago, served.
    drop(open.pop());
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut waiting))
        .await
        .expect("the waiting connection was accepted once a slot freed");
    assert_eq!(raw_status(&r), 200, "{r}");
    assert_eq!(up.last().uri, "/public/waited");
}

/// A burst of new connections far past `max_connections`: they wait in the listen backlog
/// (`server.listen_backlog`, 4096 by default), so the kernel completes every handshake at once
/// and none waits for a SYN retransmit (1 s on Linux), which tokio's own backlog of 128 gave
/// past 50 + 129 connections; and every request is answered as slots free up.
#[tokio::test]
async fn a_burst_past_max_connections_waits_in_the_backlog_without_retransmits() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "max_connections = 50");
    let gw = Gateway::start(&cfg).await;
    const BURST: usize = 600;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let connect = start.elapsed();
                s.write_all(
                    format!(
                        "GET /public/burst{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                let r = tokio::time::timeout(Duration::from_secs(30), read_response(&mut s))
                    .await
                    .expect("answered");
                (connect, raw_status(&r))
            })
        })
        .collect();
    let mut slow = Vec::new();
    for t in tasks {
        let (connect, status) = t.await.unwrap();
        assert_eq!(status, 200);
        if connect >= Duration::from_millis(900) {
            slow.push(connect);
        }
    }
    assert!(
        slow.is_empty(),
        "{} of {BURST} connects waited for a SYN retransmit, the first: {:?}",
        slow.len(),
        &slow[..slow.len().min(5)]
    );
    assert_eq!(up.count(), BURST);
    let m = admin_metrics(&gw).await;
    assert!(
        metric(&m, "bearward_connections_deferred_total") >= 1.0,
        "the burst went past the limit: {m}"
    );
}

#[tokio::test]
async fn past_max_requests_in_flight_requests_get_503_before_any_token_work() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "max_requests_in_flight = 2")
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let gw = Gateway::start(&cfg).await;
    let c = client();
    // Two slow requests hold both places, each on its own connection.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/public/slow"));
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    for _ in 0..100 {
        if up.count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.count(), 2);
    // A third, open route or not, token or not: 503 with Retry-After, and nothing upstream.
    // A bearer route with a bad token answers 503, not 401: the token was never looked at.
    for (path, auth) in [
        ("/public/third", None),
        ("/api/x", Some("Bearer not.a.jwt")),
        ("/no/route", None),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let a = get(&c, &gw.url(path), &headers).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            a.body
        );
        assert_eq!(a.headers["retry-after"], "1");
        assert_eq!(a.body, "service_unavailable: overloaded\n");
    }
    assert_eq!(up.count(), 2, "a refused request reached the upstream");
    let m = admin_metrics(&gw).await;
    assert_eq!(metric(&m, "bearward_requests_in_flight"), 2.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"bearward_requests_total{route="-",status="503",decision="error",reason="overloaded"}"#
        ),
        3.0,
        "{m}"
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    // The places are given back once the responses are sent.
    let a = get(&c, &gw.url("/public/after"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let m = admin_metrics(&gw).await;
    assert_eq!(metric(&m, "bearward_requests_in_flight"), 0.0, "{m}");
}

/// A hand-written HTTP/2 client that can break the rules.
struct RawH2 {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One frame read back: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const REFUSED_STREAM: u32 = 7;
const ENHANCE_YOUR_CALM: u32 = 11;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK (RFC 7541) without Huffman or indexing: `:method GET`, `:scheme http` from the
/// static table, then `:path`, `:authority` and `extra` as literals.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        // A 7-bit prefix integer (RFC 7541 5.1), H = 0.
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        let mut n = n - 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, path), (1, "x")] {
        b.push(index);
        len(&mut b, value.len());
        b.extend_from_slice(value.as_bytes());
    }
    for (name, value) in extra {
        b.push(0);
        len(&mut b, name.len());
        b.extend_from_slice(name.as_bytes());
        len(&mut b, value.len());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

impl RawH2 {
    async fn connect(gw: &Gateway) -> RawH2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        RawH2 { s, buf: Vec::new() }
    }

    /// A GET on `stream`, ended (END_STREAM | END_HEADERS).
    fn get(stream: u32, path: &str) -> Vec<u8> {
        frame(HEADERS, 0x5, stream, &request_block(path, &[]))
    }

    /// Reads the next frame, acknowledging the server's SETTINGS; `None` at close or timeout.
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    let (kind, flags) = (f[3], f[4]);
                    if kind == SETTINGS && flags & 1 == 0 {
                        self.s.write_all(&frame(SETTINGS, 1, 0, &[])).await.ok()?;
                    }
                    return Some((kind, flags, stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(wait, self.s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every frame until the connection is quiet for `quiet` or closes.
    async fn drain(&mut self, quiet: Duration) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.next(quiet).await {
            out.push(f);
        }
        out
    }
}

/// The `:status` of a response HEADERS block from hyper's encoder: 200 is static index 8
/// (0x88); another status is a literal with the name indexed (0x48) and a value hyper encodes
/// with Huffman codes (RFC 7541 Appendix B), of which digits are all a status needs.
fn status_of(block: &[u8]) -> u16 {
    match block {
        [0x88, ..] => 200,
        [0x48, len, rest @ ..] if len & 0x80 != 0 => {
            let n = (len & 0x7f) as usize;
            huffman_digits(&rest[..n.min(rest.len())]).unwrap_or(0)
        }
        [0x48, 3, a, b, c, ..] => std::str::from_utf8(&[*a, *b, *c])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Decodes a Huffman string of digits: `0`-`2` are the 5-bit codes 0-2, `3`-`9` the 6-bit
/// codes 0x19-0x1f; the rest is padding of 1 bits.
fn huffman_digits(bytes: &[u8]) -> Option<u16> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| bits[at..at + n].iter().fold(0u8, |v, b| v << 1 | b);
    let (mut at, mut out) = (0, 0u16);
    while bits.len() - at >= 5 && bits[at..].contains(&0) {
        let five = take(at, 5);
        if five <= 2 {
            out = out * 10 + five as u16;
            at += 5;
        } else {
            let six = take(at, 6);
            if !(0x19..=0x1f).contains(&six) {
                return None;
            }
            out = out * 10 + (six - 0x19 + 3) as u16;
            at += 6;
        }
    }
    Some(out)
}

fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(payload[at..at + 4].try_into().unwrap())
}

#[tokio::test]
async fn h2_streams_past_the_limit_are_refused_and_the_rest_are_served() {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), "")
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let gw = Gateway::start(&cfg).await;
    let mut h2 = RawH2::connect(&gw).await;
    // 300 streams at once, each held 2 s by the upstream: 44 past the default of 256.
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(RawH2::get(1 + 2 * i, "/public/slow"));
    }
    h2.s.write_all(&burst).await.unwrap();
    let frames = h2.drain(Duration::from_secs(5)).await;
    let refused = frames
        .iter()
        .filter(|(k, _, _, p)| *k == RST_STREAM && code(p, 0) == REFUSED_STREAM)
        .count();
    let ok = frames
        .iter()
        .filter(|(k, _, s, p)| *k == HEADERS && *s > 0 && status_of(p) == 200)
        .count();
    assert_eq!(refused, 44, "streams refused past max_concurrent_streams");
    assert_eq!(ok, 256, "the streams within the limit are answered");
    assert!(!frames.iter().any(|(k, ..)| *k == GOAWAY));
    assert_eq!(
        up.count(),
        256,
        "refused streams never reached the upstream"
    );
    // The connection still serves new streams.
    h2.s.write_all(&RawH2::get(601, "/public/after"))
        .await
        .unwrap();
    let f = h2.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((f.0, f.2, status_of(&f.3)), (HEADERS, 601, 200));
}

#[tokio::test]
async fn an_h2_header_list_over_the_limit_is_refused_on_its_stream_only() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let mut h2 = RawH2::connect(&gw).await;
    // 20 kB of header against max_header_bytes = 16384: a HEADERS and a CONTINUATION frame.
    let big = "a".repeat(20_000);
    let block = request_block("/public/big", &[("x-big", &big)]);
    let (first, rest) = block.split_at(16_000);
    let mut out = frame(HEADERS, 0x1, 1, first);
    out.extend(frame(CONTINUATION, 0x4, 1, rest));
    out.extend(RawH2::get(3, "/public/small"));
    h2.s.write_all(&out).await.unwrap();
    let frames = h2.drain(Duration::from_millis(1500)).await;
    let on = |stream: u32| -> Vec<&Frame> { frames.iter().filter(|f| f.2 == stream).collect() };
    let big_frames = on(1);
    assert!(
        big_frames
            .iter()
            .any(|(k, _, _, p)| (*k == HEADERS && status_of(p) == 431) || *k == RST_STREAM),
        "{big_frames:?}"
    );
    assert!(!big_frames
        .iter()
        .any(|(k, _, _, p)| *k == HEADERS && status_of(p) == 200));
    assert!(
        on(3)
            .iter()
            .any(|(k, _, _, p)| *k == HEADERS && status_of(p) == 200),
        "the next stream on the same connection is served"
    );
    assert!(!frames.iter().any(|(k, ..)| *k == GOAWAY));
    let seen: Vec<_> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/public/small"]);
}

#[tokio::test]
async fn an_h2_rapid_reset_flood_ends_the_connection_and_spares_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let h2 = RawH2::connect(&gw).await;
    // HTTP/2 rapid reset (CVE-2023-44487): open and cancel 2,000 streams as fast as the socket
    // takes them, reading what comes back meanwhile (the server closes on unread bytes, and the
    // reset would take its GOAWAY with it).
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        flood.extend(RawH2::get(id, "/public/flood"));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let (mut reader, mut writer) = h2.s.into_split();
    let write = tokio::spawn(async move {
        for chunk in flood.chunks(4096) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
        }
        writer
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_secs(2), reader.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    drop(write.await);
    let mut frames = Vec::new();
    while got.len() >= 9 {
        let len = (got[0] as usize) << 16 | (got[1] as usize) << 8 | got[2] as usize;
        if got.len() < 9 + len {
            break;
        }
        let f: Vec<u8> = got.drain(..9 + len).collect();
        frames.push((f[3], f[4], 0u32, f[9..].to_vec()));
    }
    let goaway = frames
        .iter()
        .find(|(k, ..)| *k == GOAWAY)
        .expect("GOAWAY for the flood");
    assert_eq!(code(&goaway.3, 4), ENHANCE_YOUR_CALM);
    assert!(
        up.count() < 100,
        "{} of 2,000 cancelled streams reached the upstream",
        up.count()
    );
    // Other clients are served.
    let a = get(&client(), &gw.url("/public/other"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
}
