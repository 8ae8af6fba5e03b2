//! The PROXY protocol on the proxy listener (`server.proxy_protocol_from`), through a real
//! HAProxy in TCP mode (deploy/proxy-protocol/haproxy.cfg made local) sending version 1 and 2,
//! TLS passed through. Loopback has room for the three parties: the clients connect from
//! 127.0.0.3 (the office) and 127.0.0.4, HAProxy to bearward from 127.0.0.2 (the balancer),
//! and a client straight to bearward from 127.0.0.1.

mod common;

use common::{
    basic_config, metric, metrics_after_close, raw_status, spawn_holding_tidy, stop_group, Gateway,
    Upstream,
};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BALANCER: &str = "127.0.0.2";
const OFFICE: &str = "127.0.0.3";
const ELSEWHERE: &str = "127.0.0.4";
const FIX: &str = "tests/fixtures/tls";

/// The usual test config (its `/public` route open to all) behind the balancer, an office-only
/// route, and `routes_extra`.
fn config(upstream: &str, server_extra: &str, routes_extra: &str) -> String {
    let server = format!(
        "proxy_protocol_from = [\"{BALANCER}\"]\nheader_read_timeout = \"1s\"\n{server_extra}"
    );
    basic_config(upstream, &server)
        + &format!(
            "\n[[routes]]\nprefix = \"/office\"\nauth = \"none\"\n\
             source_ranges = [\"{OFFICE}\"]\nupstream = \"app\"\n{routes_extra}\n"
        )
}

/// HAProxy in front of `bearward`: the shipped config with its frontend on a port of its own
/// and a second one sending version 1, connecting from [`BALANCER`].
struct Balancer {
    child: Child,
    v2: SocketAddr,
    v1: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        stop_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn balancer_dir(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bearward-haproxy-{port}-{}", std::process::id()))
}

fn balancer(bearward: SocketAddr) -> Balancer {
    let shipped = std::fs::read_to_string("deploy/proxy-protocol/haproxy.cfg").unwrap();
    let (child, [v2, v1]) = spawn_holding_tidy(
        "haproxy (apt-get install haproxy; .ci/run does)",
        |[v2, v1]| {
            let server = format!("{bearward} send-proxy-v2 source {BALANCER}");
            // Its file-descriptor needs within this machine's limit (20,000).
            let conf = shipped
                .replace("maxconn 10000", "maxconn 256")
                .replace("bind :443", &format!("bind 127.0.0.1:{v2}"))
                .replace("10.0.0.20:8443 send-proxy-v2", &server)
                + &format!(
                    "\nfrontend v1\n    bind 127.0.0.1:{v1}\n    default_backend v1\n\n\
                     backend v1\n    server bearward {bearward} send-proxy source {BALANCER}\n"
                );
            assert!(conf.contains(&server), "the shipped config's server line");
            let dir = balancer_dir(v2);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("haproxy.cfg");
            std::fs::write(&file, conf).unwrap();
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&file);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        },
        |[v2, _]| {
            let _ = std::fs::remove_dir_all(balancer_dir(v2));
        },
    );
    Balancer {
        child,
        v2: SocketAddr::from(([127, 0, 0, 1], v2)),
        v1: SocketAddr::from(([127, 0, 0, 1], v1)),
        dir: balancer_dir(v2),
    }
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Writes `bytes` and reads until the other side closes (or 5 s pass).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) -> String {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn the_balancers_header_names_the_client_in_both_versions() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up.url(), "", "")).await;
    let lb = balancer(gw.addr);

    for front in [lb.v2, lb.v1] {
        let before = up.count();
        let answer = exchange(connect_from(OFFICE, front).await, &get("/office/x")).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        assert_eq!(up.count(), before + 1);
        assert_eq!(up.last().headers["x-forwarded-for"], OFFICE);

        // Another client through the same balancer is not the office.
        let answer = exchange(connect_from(ELSEWHERE, front).await, &get("/office/x")).await;
        assert_eq!(raw_status(&answer), 403, "{answer}");
        let answer = exchange(connect_from(ELSEWHERE, front).await, &get("/public/x")).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        assert_eq!(up.last().headers["x-forwarded-for"], ELSEWHERE);
        assert_eq!(up.count(), before + 2);
    }

    // A client straight to bearward is served as itself: no header is read from it.
    let answer = exchange(connect_from(OFFICE, gw.addr).await, &get("/public/y")).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().headers["x-forwarded-for"], OFFICE);

    let m = metrics_after_close(&gw).await;
    assert_eq!(
        metric(&m, r#"bearward_proxy_protocol_headers_total{outcome="ok"}"#),
        6.0
    );
}

#[tokio::test]
async fn a_client_cannot_write_the_header_itself() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up.url(), "", "")).await;
    let lb = balancer(gw.addr);
    let spoof = [
        &b"PROXY TCP4 127.0.0.3 127.0.0.1 40000 443\r\n"[..],
        &get("/office/x"),
    ]
    .concat();

    // Straight to bearward, from a peer that is not the balancer: a malformed request.
    let answer = exchange(connect_from(ELSEWHERE, gw.addr).await, &spoof).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    // Through the balancer, after its own header: the same.
    for front in [lb.v2, lb.v1] {
        let answer = exchange(connect_from(ELSEWHERE, front).await, &spoof).await;
        assert_eq!(raw_status(&answer), 400, "{answer}");
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_balancer_connection_without_a_valid_header_is_closed_unserved() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up.url(), "", "")).await;

    // Plain HTTP from the balancer's address: closed, not a byte answered.
    let answer = exchange(connect_from(BALANCER, gw.addr).await, &get("/public/x")).await;
    assert_eq!(answer, "");
    // A v1 line cut short, then nothing: closed at header_read_timeout.
    let mut s = connect_from(BALANCER, gw.addr).await;
    s.write_all(b"PROXY TCP4 127.0.0.3 ").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "closed within the timeout");
    assert!(out.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A datagram header (UDP over IPv4) on a TCP connection.
    let mut udp = b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c".to_vec();
    udp.extend([127, 0, 0, 3, 127, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    udp.extend(get("/public/x"));
    let answer = exchange(connect_from(BALANCER, gw.addr).await, &udp).await;
    assert_eq!(answer, "");
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    let m = metrics_after_close(&gw).await;
    for (outcome, n) in [("invalid", 1.0), ("timeout", 1.0), ("not_stream", 1.0)] {
        let series = format!(r#"bearward_proxy_protocol_headers_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &series), n, "{series}");
    }
}

#[tokio::test]
async fn a_local_header_keeps_the_balancers_own_address() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up.url(), "", "")).await;
    // v2 LOCAL, as a balancer's health check sends: no addresses.
    let local = [
        &b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"[..],
        &get("/public/health"),
    ]
    .concat();
    let answer = exchange(connect_from(BALANCER, gw.addr).await, &local).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().headers["x-forwarded-for"], BALANCER);
    let unknown = [&b"PROXY UNKNOWN\r\n"[..], &get("/office/x")].concat();
    let answer = exchange(connect_from(BALANCER, gw.addr).await, &unknown).await;
    assert_eq!(raw_status(&answer), 403, "{answer}");

    let m = metrics_after_close(&gw).await;
    assert_eq!(
        metric(
            &m,
            r#"bearward_proxy_protocol_headers_total{outcome="local"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn tls_and_client_certificates_pass_through_the_balancer_and_http2_follows_the_header() {
    let up = Upstream::start().await;
    let tls = format!(
        "tls_cert_file = \"{FIX}/server.pem\"\ntls_key_file = \"{FIX}/server-key.pem\"\n\
         tls_client_ca_file = \"{FIX}/ca.pem\"\ntls_client_auth = \"optional\""
    );
    let partners = "[[routes]]\nprefix = \"/partners\"\nauth = \"none\"\n\
                    require_client_certificate = true\nupstream = \"app\"";
    let gw = Gateway::start(&config(&up.url(), &tls, partners)).await;
    let lb = balancer(gw.addr);

    for front in [lb.v2, lb.v1] {
        let tcp = connect_from(OFFICE, front).await;
        let answer = exchange(tls_client(tcp, None).await, &get("/office/tls")).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        assert_eq!(up.last().headers["x-forwarded-for"], OFFICE);
        assert_eq!(up.last().uri, "/office/tls");
        // The client's certificate reaches bearward through the balancer, which cannot read
        // it: what certificate-bound tokens (RFC 8705) need, without a header to trust.
        let before = up.count();
        let tcp = connect_from(ELSEWHERE, front).await;
        let answer = exchange(tls_client(tcp, Some("client")).await, &get("/partners/x")).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
        let tcp = connect_from(ELSEWHERE, front).await;
        let answer = exchange(tls_client(tcp, None).await, &get("/partners/x")).await;
        assert_eq!(raw_status(&answer), 403, "{answer}");
        assert_eq!(up.count(), before + 1);
    }

    // h2c prior knowledge after a v2 header (the preface is looked for after it).
    let plain = Gateway::start(&config(&up.url(), "", "")).await;
    let lb = balancer(plain.addr);
    let tcp = connect_from(OFFICE, lb.v2).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://api.test/office/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-forwarded-for"], OFFICE);
}

async fn tls_client(
    tcp: TcpStream,
    certificate: Option<&str>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = common::tls_client_config(certificate);
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}
