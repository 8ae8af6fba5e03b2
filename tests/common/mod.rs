//! Test parts: a recording upstream, a gateway on an ephemeral port, HTTP clients (pooled h1,
//! h2 prior knowledge, raw TCP), and the test IdP in `idp`.
#![allow(dead_code)]

pub(crate) mod dpop;
pub(crate) mod idp;
pub(crate) mod introspection;
pub(crate) mod provider;
pub(crate) mod redis;
pub(crate) mod world;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The upstream-side address of bearward's connection.
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    /// The body, when under 1 MiB.
    pub body: Vec<u8>,
    pub body_len: u64,
}

/// A real HTTP/1.1 server that records every request and answers by path:
/// - `/.../slow`: waits 2 s first;
/// - `/.../ws`: accepts an upgrade and echoes bytes;
/// - `/.../big?n=N`: streams N bytes back;
/// - `/.../slow-read`: reads the request body a frame a millisecond;
/// - otherwise 200 `upstream ok`, with hop-by-hop headers a proxy must strip.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls: bool,
}

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        Upstream::start_with(true).await
    }

    /// `keep_alive = false`: every response closes its connection.
    pub(crate) async fn start_with(keep_alive: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve_on(listener, keep_alive, None).await
    }

    /// Over TLS, with the certificate in `tests/fixtures/tls` (for `localhost` and
    /// `127.0.0.1`, signed by `ca.pem` there).
    pub(crate) async fn start_tls() -> Upstream {
        Upstream::start_tls_with(false).await
    }

    /// `mtls`: the handshake needs a client certificate signed by `ca.pem` there.
    pub(crate) async fn start_tls_with(mtls: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve_on(listener, true, Some(tls_acceptor(mtls))).await
    }

    /// Over TLS, with a receive buffer of a few kB, so that bearward's writes meet a full
    /// socket.
    pub(crate) async fn start_tls_small_window() -> Upstream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        Upstream::serve_on(listener, true, Some(tls_acceptor(false))).await
    }

    /// On a Unix domain socket at `path` (an upstream's `unix_socket`); `url` is
    /// `http://app.internal`, which names no address. The `peer` of what it saw is 0.0.0.0:0.
    pub(crate) async fn start_unix(path: &std::path::Path) -> Upstream {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let peer: SocketAddr = "0.0.0.0:0".parse().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, record.clone(), peer));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr: "0.0.0.0:0".parse().unwrap(),
            seen,
            tls: false,
        }
    }

    async fn serve_on(
        listener: TcpListener,
        keep_alive: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let tls_on = tls.is_some();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, record.clone(), peer));
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.keep_alive(keep_alive);
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                    };
                });
            }
        });
        Upstream {
            addr,
            seen,
            tls: tls_on,
        }
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }
}

/// The TLS test upstream's acceptor: the certificate in `tests/fixtures/tls`; with `mtls`, a
/// client certificate signed by `ca.pem` there is required.
pub(crate) fn tls_acceptor(mtls: bool) -> tokio_rustls::TlsAcceptor {
    tls_acceptor_alpn(mtls, Vec::new())
}

/// The test server certificate's acceptor, offering `alpn` (for an `h2` upstream).
pub(crate) fn tls_acceptor_alpn(mtls: bool, alpn: Vec<Vec<u8>>) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter("tests/fixtures/tls/server.pem")
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file("tests/fixtures/tls/server-key.pem").unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter("tests/fixtures/tls/ca.pem").unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = alpn;
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    mut req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    peer: SocketAddr,
) -> Result<Response<TestBody>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let on_upgrade = if path.ends_with("/ws") {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut len = 0u64;
    let slow_reader = path.ends_with("/slow-read");
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            if kept.len() < 1 << 20 {
                kept.extend_from_slice(&data);
            }
        }
        if slow_reader {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    record.lock().unwrap().push(Seen {
        peer,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: kept,
        body_len: len,
    });
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if path.ends_with("/big") {
        let n: u64 = query
            .strip_prefix("n=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len() as u64;
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    Ok(Response::builder()
        .header("x-upstream", "yes")
        .header("keep-alive", "timeout=5")
        .header("connection", "x-resp-secret")
        .header("x-resp-secret", "1")
        .body(Full::new(Bytes::from_static(b"upstream ok")).boxed())
        .unwrap())
}

/// A bearward running in this process.
pub(crate) struct Gateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    pub(crate) async fn start(toml: &str) -> Gateway {
        Gateway::try_start(toml).await.expect("bind")
    }

    /// A gateway whose config names ports of its own (`config(ports)`, from [`free_ports`]):
    /// other ports when one was taken between the pick and the bind, as a test running beside
    /// it can do.
    pub(crate) async fn start_on_free_ports<const N: usize>(
        config: impl Fn([u16; N]) -> String,
    ) -> ([u16; N], Gateway) {
        let mut last = None;
        for _ in 0..5 {
            let ports = free_ports::<N>();
            match Gateway::try_start(&config(ports)).await {
                Ok(gw) => return (ports, gw),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => panic!("bind: {e:?}"),
            }
        }
        panic!("bind: {last:?}");
    }

    /// [`Gateway::start_on_free_ports`] with one port.
    pub(crate) async fn start_on_free_port(config: impl Fn(u16) -> String) -> (u16, Gateway) {
        let ([port], gw) = Gateway::start_on_free_ports(|[p]| config(p)).await;
        (port, gw)
    }

    pub(crate) async fn try_start(toml: &str) -> std::io::Result<Gateway> {
        let config =
            bearward::config::Config::from_toml_str(toml, "test.toml").expect("valid test config");
        let server = bearward::build(config).await?;
        let addr = server.local_addr().unwrap();
        let admin = server.admin_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Ok(Gateway {
            addr,
            admin,
            stop: Some(tx),
            done,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown.
    pub(crate) fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Gateway {
    /// The admin listener's `/metrics` text, as it is now.
    pub(crate) async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin.expect("admin listener"));
        get(&client(), &url, &[]).await.body
    }
}

/// The config used by most tests: open, denied and bearer routes in front of `upstream`.
pub(crate) fn basic_config(upstream: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra_server}

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/empty-jwks.json"
audiences = ["https://api.test"]

[upstreams.app]
url = "{upstream}"
request_timeout = "500ms"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/internal"
upstream = "app"
auth = "deny"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"#
    )
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub(crate) async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    send(client, "GET", url, headers, "").await
}

pub(crate) async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends raw bytes and reads until the server closes or 3 s pass. Returns what came back.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1 bytes.
pub(crate) fn raw_status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `/metrics`, fetched after a pause: for counts made when a connection ends, which land
/// microseconds after the client sees the close.
pub(crate) async fn metrics_after_close(gw: &Gateway) -> String {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{}/metrics", gw.admin.expect("admin listener"));
    get(&client(), &url, &[]).await.body
}

/// Waits until `/readyz` says 200 (keys loaded), at most 5 s.
pub(crate) async fn wait_ready(gw: &Gateway) {
    let c = client();
    let url = format!("http://{}/readyz", gw.admin.expect("admin listener"));
    for _ in 0..100 {
        if get(&c, &url, &[]).await.status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("bearward did not become ready");
}

/// A config with one issuer (`source` is its key-source line) and routes for every scope policy.
pub(crate) fn auth_config(
    upstream: &str,
    issuer: &str,
    source: &str,
    issuer_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
{source}
audiences = ["https://api.test", "https://other-api.test"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_timeout = "1s"
{issuer_extra}

[upstreams.app]
url = "{upstream}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes", client_id = "X-Auth-Client" }}

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/api/read"
scopes = ["read"]
upstream = "app"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"

[[routes]]
prefix = "/api/any"
scopes_any = ["read", "write"]
upstream = "app"

[[routes]]
prefix = "/api/both"
scopes = ["read", "write"]
upstream = "app"

[[routes]]
prefix = "/api/query"
scopes = ["read"]
token_in_query = true
upstream = "app"

[[routes]]
prefix = "/api/iap"
scopes = ["read"]
token_header = "X-Goog-Iap-Jwt-Assertion"
upstream = "app"

[[routes]]
prefix = "/api/cookie"
scopes = ["read"]
token_cookie = "CF_Authorization"
upstream = "app"

[[routes]]
prefix = "/api/maybe"
auth = "optional"
upstream = "app"

[[routes]]
prefix = "/spa"
scopes = ["read"]
token_cookie = "at"
cors = {{ allow_origins = ["https://app.test"], allow_credentials = true }}
login_url = "https://login.test/start?rd={{url}}&x=1"
upstream = "app"
"#
    )
}

/// An h2c (prior knowledge) client connection to `addr`, its connection task spawned. `window`
/// sets the initial stream flow-control window (hyper's default when `None`).
pub(crate) async fn h2_connect(
    addr: SocketAddr,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(w) = window {
        builder.initial_stream_window_size(w);
    }
    let (sender, conn) = builder.handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

/// How long until an h2 connection task ends; panics if it is still running after 3 s.
pub(crate) async fn h2_time_to_close(conn: tokio::task::JoinHandle<hyper::Result<()>>) -> Duration {
    let start = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the h2 connection was still open after 3 s")
        .unwrap()
        .ok();
    start.elapsed()
}

/// Reads until the server closes the connection: what came, and how long that took. Panics if
/// it is still open after 5 s.
pub(crate) async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("connection still open after 5 s")
        .ok();
    (out, start.elapsed())
}

// Shared by the tests of routing, forwarding, framing and timeouts.

pub(crate) async fn setup(extra_server: &str) -> (Upstream, Gateway, HttpClient) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), extra_server)).await;
    (up, gw, client())
}

pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends a WebSocket upgrade request to /public/ws; the stream and the response head.
pub(crate) async fn open_websocket(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /public/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// Reads one response off a keep-alive connection: its status, and the whole body by
/// Content-Length or chunked framing.
pub(crate) async fn read_response(s: &mut TcpStream) -> u16 {
    raw_status(&read_response_head(s).await)
}

/// Reads one response off a keep-alive connection, its whole body by Content-Length or chunked
/// framing: its head, lowercased.
pub(crate) async fn read_response_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    match length {
        Some(n) => {
            let mut body = vec![0u8; n];
            s.read_exact(&mut body).await.unwrap();
        }
        None => {
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            let mut tail = Vec::new();
            while !tail.ends_with(b"0\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                tail.push(byte[0]);
            }
        }
    }
    head
}

/// Opens a connection and sends raw bytes on it.
pub(crate) async fn connect_and_send(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Reads until the peer closes; how long that took.
pub(crate) async fn time_to_close(s: &mut TcpStream) -> Duration {
    read_to_close(s).await.1
}

/// Like `setup`, with a request timeout long enough for `/slow` (2 s).
pub(crate) async fn setup_with_slow_upstream(extra_server: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = basic_config(&up.url(), extra_server)
        .replace("request_timeout = \"500ms\"", "request_timeout = \"10s\"");
    let gw = Gateway::start(&cfg).await;
    (up, gw)
}

/// The value of the metric line that starts with `name_and_labels`, or 0.
pub(crate) fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `bearward_requests_total` of one route, status, decision and reason in a scrape (0 when the
/// series is not there).
pub(crate) fn requests(text: &str, route: &str, status: u16, decision: &str, reason: &str) -> f64 {
    let series = format!(
        "bearward_requests_total{{route=\"{route}\",status=\"{status}\",decision=\"{decision}\",reason=\"{reason}\"}}"
    );
    metric(text, &series)
}

/// One GET over TLS to bearward's listener (trusting the test CA, for `localhost`) with
/// `authorization`, presenting the client certificate `client` (a tests/fixtures/tls name).
pub(crate) async fn tls_get(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
    client: Option<&str>,
) -> StatusCode {
    tls_send(addr, path, &[("authorization", authorization)], client)
        .await
        .0
}

/// A GET over TLS to the test certificate's `localhost`, with `client`'s certificate if named:
/// the answer's status and headers.
pub(crate) async fn tls_send(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    client: Option<&str>,
) -> (StatusCode, HeaderMap) {
    use rustls::pki_types::ServerName;
    let cfg = tls_client_config(client);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    (resp.status(), resp.headers().clone())
}

/// A TLS client trusting the fixtures' CA, with the fixtures' certificate `client` (its
/// `{client}.pem` and `{client}-key.pem`) if given.
pub(crate) fn tls_client_config(client: Option<&str>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter("tests/fixtures/tls/ca.pem").unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match client {
        None => b.with_no_client_auth(),
        Some(name) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(format!("tests/fixtures/tls/{name}.pem"))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(format!("tests/fixtures/tls/{name}-key.pem")).unwrap(),
            )
            .unwrap(),
    }
}

/// `cmd` in a process group of its own, so [`stop_group`] can end it with every process it
/// starts (nginx's workers outlive a master that was killed alone, as orphans of init).
pub(crate) fn own_group(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// Ends a child started with [`own_group`] and everything in its group: SIGTERM (nginx, Caddy
/// and redis-server stop their workers on it), then, after 3 s, SIGKILL; and reaps it.
pub(crate) fn stop_group(child: &mut std::process::Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, "--", &group])
            .stderr(std::process::Stdio::null())
            .status();
    };
    signal("-TERM");
    for _ in 0..60 {
        if child.try_wait().ok().flatten().is_some() {
            // The leader is gone; a worker that lingers goes with the group.
            signal("-KILL");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    signal("-KILL");
    let _ = child.wait();
}

/// A loopback port nothing listens on (just now). Free when picked, not when something binds
/// it later: a test beside this one can take it in between. A server of the test's own binds
/// port 0; a child process goes through [`spawn_holding`]; an in-process gateway through
/// [`Gateway::start_on_free_ports`]; a port that must stay closed is a [`ClosedPort`].
pub(crate) fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (each held until all are picked, so none comes twice).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    free_port_list(N).try_into().unwrap()
}

fn free_port_list(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A Python helper server (tests/authzen/pdp.py, tests/exchange/sts.py) started on port 0,
/// killed with the test: its port is the one its first line, `ready PORT`, names.
pub(crate) struct PyServer {
    pub port: u16,
    _child: tokio::process::Child,
}

impl PyServer {
    pub(crate) async fn start(script: &str, args: &[&str]) -> PyServer {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg("0")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 runs {script}: {e}"));
        let mut line = String::new();
        tokio::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script}'s first line is `ready PORT`: {line:?}"));
        PyServer {
            port,
            _child: child,
        }
    }

    /// Its `/stats` over HTTPS with a client certificate, which the server requires: read with
    /// Python's own client and the fixtures' `client.pem`.
    pub(crate) async fn mtls_stats(&self) -> serde_json::Value {
        const STATS: &str = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="tests/fixtures/tls/ca.pem")
ctx.load_cert_chain("tests/fixtures/tls/client.pem", "tests/fixtures/tls/client-key.pem")
url = f"https://127.0.0.1:{sys.argv[1]}/stats"
print(urllib.request.urlopen(url, timeout=5, context=ctx).read().decode())
"#;
        let out = tokio::process::Command::new("python3")
            .args(["-c", STATS, &self.port.to_string()])
            .output()
            .await
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A loopback port that refuses connections for as long as this lives: bound, never listening,
/// and without SO_REUSEADDR, so nothing else (a server of a test beside this one) can bind it.
pub(crate) struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub(crate) fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        ClosedPort {
            _socket: socket,
            port,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Whether process `pid` itself holds a listening TCP socket on each of `ports`. A connect
/// test cannot tell: when another process took the port between the pick and the bind, the
/// child exits (or, with SO_REUSEPORT, shares it) and the connect reaches the other one. The
/// listening sockets' inodes in /proc/net/tcp{,6}, matched with the child's descriptors, can.
pub(crate) fn holds(pid: u32, ports: &[u16]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let mine: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let tables: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .collect();
    ports.iter().all(|port| {
        let local = format!(":{port:04X}");
        tables.lines().any(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9
                && f[1].ends_with(&local)
                && f[3] == "0A"
                && mine.contains(&format!("socket:[{}]", f[9]))
        })
    })
}

/// Starts `command(ports)` (in a process group of its own, see [`own_group`]) on `N` free
/// ports until the child holds them all itself ([`holds`]): another try, on other ports, when
/// it exits first, as a server does when a test beside it took a port; a panic naming `what`
/// when it neither exits nor listens within 20 s.
pub(crate) fn spawn_holding<const N: usize>(
    what: &str,
    command: impl FnMut([u16; N]) -> std::process::Command,
) -> (std::process::Child, [u16; N]) {
    spawn_holding_tidy(what, command, |_| {})
}

/// [`spawn_holding`] for a child whose tries leave files named by their ports (a config, a
/// directory): `remove(ports)` is called for each try that lost its ports, so only the
/// returned try's files are left, for the caller to remove with the child.
pub(crate) fn spawn_holding_tidy<const N: usize>(
    what: &str,
    mut command: impl FnMut([u16; N]) -> std::process::Command,
    mut remove: impl FnMut([u16; N]),
) -> (std::process::Child, [u16; N]) {
    let (child, ports) = spawn_holding_n(
        what,
        N,
        |p| command(p.try_into().unwrap()),
        |p| remove(p.try_into().unwrap()),
    );
    (child, ports.try_into().unwrap())
}

/// [`spawn_holding_tidy`] with a number of ports known at run time.
pub(crate) fn spawn_holding_n(
    what: &str,
    n: usize,
    mut command: impl FnMut(&[u16]) -> std::process::Command,
    mut remove: impl FnMut(&[u16]),
) -> (std::process::Child, Vec<u16>) {
    for _ in 0..5 {
        let ports = free_port_list(n);
        let mut child = own_group(&mut command(&ports))
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut exited = false;
        for _ in 0..800 {
            if holds(child.id(), &ports) {
                return (child, ports);
            }
            if child.try_wait().ok().flatten().is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        stop_group(&mut child);
        remove(&ports);
        assert!(exited, "{what} did not listen on {ports:?} within 20 s");
    }
    panic!("{what} exited before listening, five times (its ports taken?)");
}
