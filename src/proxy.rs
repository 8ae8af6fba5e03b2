//! Forwarding: the pooled upstream clients and the header rules (hop-by-hop removal,
//! `X-Forwarded-*`, `Host`, identity headers the client must not set).

use crate::body::{self, Body};
use crate::config::{Config, UpstreamConfig};
use crate::gateway::ConnInfo;
use crate::h1client::HeadRewrite;
use crate::pool::Pool;
use crate::telemetry::Metrics;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why forwarding failed. Each becomes a 502, 504 or 408 in `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Connection refused, reset, or the upstream broke the exchange.
    Unreachable,
    /// The upstream's response could not be framed exactly (see [`crate::h1client`]).
    BadResponse,
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// No response head within `request_timeout`.
    Timeout,
    /// The client's request body paused for longer than `server.body_read_timeout`; the
    /// upstream connection carrying it was closed mid-body.
    BodyTimeout,
    /// The client's request body broke off or was malformed (bad chunked coding, a connection
    /// closed mid-body); the upstream connection carrying it was closed mid-body.
    ClientBody,
    /// The client's request body ran past the route's `max_body_bytes`; the upstream
    /// connection carrying it was closed mid-body, so the upstream never got a whole request.
    BodyTooLarge,
    /// The TLS handshake with an `https` upstream failed (its certificate did not verify, or
    /// it speaks no TLS bearward accepts).
    Tls,
}

impl ProxyError {
    /// Status answered to the client.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::Unreachable | ProxyError::BadResponse | ProxyError::Tls => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout | ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Fixed reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::Unreachable => "upstream_unreachable",
            ProxyError::BadResponse => "upstream_bad_response",
            ProxyError::Tls => "upstream_tls",
            ProxyError::ConnectTimeout => "upstream_connect_timeout",
            ProxyError::Timeout => "upstream_timeout",
            ProxyError::BodyTimeout => "client_body_timeout",
            ProxyError::ClientBody => "client_body_invalid",
            ProxyError::BodyTooLarge => "body_too_large",
        }
    }
}

/// Header names bearward sets itself; a claim header may not take one of them.
pub fn is_reserved_header(h: &HeaderName) -> bool {
    HOP_BY_HOP.contains(h)
        || matches!(
            h.as_str(),
            "host"
                | "authorization"
                | "content-length"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "forwarded"
                | "via"
                | "x-bearward-audit"
        )
}

/// RFC 9110 7.6.1 and the connection-specific headers everyone strips.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// Runs on every request and response, and most responses carry `Connection: keep-alive`, so
/// the common case allocates nothing: the fixed names present are noted in a bit set and
/// removed, and a header named by a `Connection` option is looked up only for options other
/// than `keep-alive` (itself on the fixed list).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for k in headers.keys() {
        // Every fixed name starts with one of these; most headers are ruled out by one byte.
        if !matches!(k.as_str().as_bytes()[0], b'c' | b'k' | b'p' | b't' | b'u') {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        for option in v.as_bytes().split(|b| *b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() || option.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(option) {
                if headers.contains_key(&n) {
                    named.push(n);
                }
            }
        }
    }
    for h in &named {
        headers.remove(h);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// Client headers whose names hold `_`. CGI, PHP, WSGI (Django, Flask) and Rack give the
/// application `X_Auth_Subject` and `X-Auth-Subject` under one name (`HTTP_X_AUTH_SUBJECT`), so
/// a client could pass an underscore spelling of a header bearward removes or sets, and the
/// application might read the client's value: the hole of oauth2-proxy's CVE-2025-64484.
/// As nginx (`underscores_in_headers off`) and Caddy do, they are dropped. With
/// `server.allow_underscores_in_headers`, they pass, except the spellings of the headers
/// bearward sets or filters (`managed`).
///
/// Runs on every request: a pass over the names that allocates only when one holds a `_`.
pub fn drop_underscored(
    headers: &mut HeaderMap,
    allow: bool,
    managed: impl Fn(&HeaderName) -> bool,
) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            !allow
                || HeaderName::from_bytes(k.as_str().replace('_', "-").as_bytes())
                    .is_ok_and(|dashed| managed(&dashed))
        })
        .cloned()
        .collect();
    for k in &doomed {
        headers.remove(k);
    }
}

/// Is this a header bearward sets or filters on every request (`forward.claim_headers` aside,
/// which the service knows)?
pub fn is_managed(name: &HeaderName) -> bool {
    is_reserved_header(name) || crate::h1client::is_hop_view(name)
}

/// Strips hop-by-hop headers; with `keep_upgrade`, the `Upgrade` header survives with a fresh
/// `Connection: upgrade` (the two headers an upgrade handshake is made of).
fn strip_hop_by_hop_except_upgrade(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// Is this an HTTP/1.1 WebSocket upgrade request (`Connection: upgrade` + `Upgrade: websocket`)?
///
/// WebSocket is the one protocol passed: once the upstream answers 101, bearward sees nothing
/// more of the connection, so a protocol that carries HTTP requests would carry them past every
/// route's policy. `Upgrade: h2c` is the known case ("h2c smuggling": a tunnel, opened on an
/// open route, then used to ask the upstream for anything). Any other `Upgrade` is dropped with
/// the other hop-by-hop headers and the request goes on as a plain one, which RFC 9110 7.8
/// lets a server do; Envoy passes only the upgrade types a route names, websocket the usual one.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let mut upgrade = req.headers().get_all(header::UPGRADE).iter();
    req.version() == Version::HTTP_11
        && matches!(
            (upgrade.next(), upgrade.next()),
            (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
        )
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Is `peer` one of the proxies whose `X-Forwarded-*` headers we believe?
pub fn is_trusted(trusted: &[IpNet], peer: &SocketAddr) -> bool {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// One connection pool per upstream, built from the config.
pub struct Upstreams {
    clients: Vec<UpstreamClient>,
    body_read_timeout: Duration,
}

struct UpstreamClient {
    config: UpstreamConfig,
    pool: Arc<Pool>,
}

impl Upstreams {
    /// Builds the pools. No connection is made until the first request.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Upstreams {
        let clients = config
            .upstreams
            .iter()
            .map(|u| UpstreamClient {
                config: u.clone(),
                pool: Pool::new(u, metrics.clone()),
            })
            .collect();
        Upstreams {
            clients,
            body_read_timeout: config.server.body_read_timeout,
        }
    }

    /// Upstream config by index (as routes refer to it).
    pub fn config(&self, idx: usize) -> &UpstreamConfig {
        &self.clients[idx].config
    }

    /// Sends `req` (already rewritten by [`prepare_request`]) and waits for the response head.
    /// Returns the response and the time to its head.
    pub async fn send(
        &self,
        idx: usize,
        mut req: Request<Body>,
        rewrite: &HeadRewrite,
        timer: &RequestTimer,
        max_body: Option<u64>,
    ) -> Result<(Response<Body>, Duration), ProxyError> {
        let up = &self.clients[idx];
        let client_upgrade = rewrite.upgrade.then(|| hyper::upgrade::on(&mut req));
        let start = Instant::now();
        // request_timeout counts from the end of the request body, so a long upload is not cut
        // off by it: the upstream cannot answer before it has the whole body. Until then the
        // body itself is bounded: no pause longer than body_read_timeout.
        let (req, body_done) = if req.body().is_end_stream() {
            (req, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let req = req.map(|inner| {
                body::boxed(NotifyEnd {
                    inner,
                    tx: Some(tx),
                    stall: crate::timer::Stall::new(self.body_read_timeout),
                    left: max_body,
                })
            });
            (req, Some(rx))
        };
        let fut = up.pool.send(req, rewrite, client_upgrade.is_some());
        tokio::pin!(fut);
        // A stalled body fails `fut` itself, with `BodyTimeout` (the pool reads the cause off
        // the body's error), and drops the half-sent request: its connection is not reused.
        let early = match body_done {
            Some(done) => tokio::select! {
                r = &mut fut => Some(r),
                _ = done => None,
            },
            None => None,
        };
        let result = match early {
            Some(r) => r,
            None => timer
                .run(up.config.request_timeout, fut)
                .await
                .ok_or(ProxyError::Timeout)?,
        };
        let elapsed = start.elapsed();
        let (resp, upgraded) = result?;
        if let (Some(mut upstream), Some(client_upgrade)) = (upgraded, client_upgrade) {
            let idle = up.config.tunnel_idle_timeout;
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Ok(client) = client_upgrade.await {
                    let mut client = TokioIo::new(client);
                    // What the upstream sent right after its 101 belongs to the new protocol.
                    if client.write_all(&upstream.leftover).await.is_ok() {
                        tunnel(&mut client, &mut upstream.stream, idle).await;
                    }
                }
            });
        }
        Ok((resp, elapsed))
    }
}

/// Copies an upgraded connection both ways until both sides have closed, or until no byte has
/// gone either way for `idle` (`tunnel_idle_timeout`): past the 101 nothing else bounds it, and
/// a silent tunnel would hold two sockets for good. Each side's reads mark the shared clock;
/// a watchdog sleeps until the earliest moment the tunnel could be idle, so a busy tunnel
/// wakes it about once per `idle`.
async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let mut a = Marked {
        io: a,
        start,
        last: &last,
    };
    let mut b = Marked {
        io: b,
        start,
        last: &last,
    };
    let watchdog = async {
        loop {
            let since = start.elapsed().saturating_sub(Duration::from_millis(
                last.load(std::sync::atomic::Ordering::Relaxed),
            ));
            if since >= idle {
                tracing::debug!(idle = ?idle, "closing an idle upgraded connection");
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        () = watchdog => {}
    }
}

/// One side of a tunnel: each read that brings bytes notes the time (ms after `start`).
struct Marked<'a, T> {
    io: &'a mut T,
    start: tokio::time::Instant,
    last: &'a std::sync::atomic::AtomicU64,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Marked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.start.elapsed().as_millis() as u64;
            self.last.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Marked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// A connection's `request_timeout` timer, kept from one request to the next (see
/// [`crate::timer`] for why). HTTP/1 runs one exchange at a time; concurrent h2 streams that
/// find the timer taken make their own.
#[derive(Default)]
pub struct RequestTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl RequestTimer {
    /// Runs `fut` for at most `timeout`; `None` when the time ran out first.
    pub async fn run<F: Future>(&self, timeout: Duration, fut: F) -> Option<F::Output> {
        let mut kept = self.slot().take();
        crate::timer::rearm(&mut kept, timeout);
        let mut sleep = kept.expect("rearm makes the timer");
        let mut fut = std::pin::pin!(fut);
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await;
        *self.slot() = Some(sleep);
        out
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<tokio::time::Sleep>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error a request body fails with when the client paused past `body_read_timeout`; the
/// pool answers it with [`ProxyError::BodyTimeout`].
#[derive(Debug, thiserror::Error)]
#[error("request body paused past body_read_timeout")]
pub struct BodyStalled;

/// The error a request body fails with when it runs past `max_body_bytes`; the pool answers it
/// with [`ProxyError::BodyTooLarge`].
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes")]
pub struct BodyTooLarge;

/// A request body that says when it has ended (sent in full, failed or dropped), and fails with
/// [`BodyStalled`] when the client sends nothing for `body_read_timeout` while it is being
/// waited for (nginx's `client_body_timeout`: time the upstream spends not reading does not
/// count).
struct NotifyEnd {
    inner: Body,
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    stall: crate::timer::Stall,
    /// Bytes the body may still bring (`max_body_bytes`); `None`: no limit.
    left: Option<u64>,
}

impl NotifyEnd {
    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl http_body::Body for NotifyEnd {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // A body without a declared length (chunked, or h2) is counted as it comes: the byte
        // past the limit fails it, and what went before never makes a whole request upstream.
        if let (Some(left), Poll::Ready(Some(Ok(frame)))) = (&mut self.left, &r) {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(n) {
                Some(l) => *left = l,
                None => {
                    self.end();
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
            }
        }
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.end(),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        if self.tx.is_some() && self.stall.expired(cx, &r) {
            self.end();
            return Poll::Ready(Some(Err(Box::new(BodyStalled))));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Rewrites a client request for the upstream: origin `path_and_query` (canonical path plus the
/// untouched query), HTTP/1.1, hop-by-hop headers removed (an upgrade's own two kept). Returns
/// the `Host` (as configured) and `X-Forwarded-*` lines the head is written with, in place of
/// the client's (`Forwarded` too, from an untrusted peer).
pub fn prepare_request(
    req: &mut Request<Body>,
    upstream: &UpstreamConfig,
    path_and_query: String,
    client: &ConnInfo,
    trusted_proxies: &[IpNet],
) -> Result<HeadRewrite, http::Error> {
    let upgrade = is_upgrade_request(req);
    let version = req.version();
    let client_host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    // Origin-form, as sent on the upstream connection; Host carries the authority.
    *req.uri_mut() = Uri::try_from(path_and_query)?;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop_except_upgrade(headers, upgrade);
    if version == Version::HTTP_2 {
        join_h2_cookies(headers);
    }

    // What replaces the client's headers of these names is written into the upstream head
    // directly (h1client::HeadRewrite); the client's own never pass.
    let trusted = is_trusted(trusted_proxies, &client.peer);
    let (xff, xfp, xfh) = (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST);
    let prior: Vec<&str> = if trusted {
        headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let value = if prior.is_empty() {
        client.peer_ip.clone()
    } else {
        let chain = format!("{}, {}", prior.join(", "), client.peer.ip());
        HeaderValue::from_str(&chain).unwrap_or_else(|_| client.peer_ip.clone())
    };
    let mut rewrite = HeadRewrite {
        untrusted: !trusted,
        upgrade,
        ..HeadRewrite::default()
    };
    rewrite.replace[0] = Some((xff, Some(value)));
    if !(trusted && headers.contains_key(&xfp)) {
        rewrite.replace[1] = Some((xfp, Some(HeaderValue::from_static("http"))));
    }
    if !(trusted && headers.contains_key(&xfh)) {
        rewrite.replace[2] = Some((xfh, client_host.clone()));
    }
    if !trusted {
        rewrite.replace[3] = Some((FORWARDED, None));
    }
    rewrite.replace[4] = Some((header::VIA, Some(via(headers, version))));

    rewrite.host = if upstream.pass_host_header {
        client_host.or_else(|| HeaderValue::from_str(upstream.authority.as_str()).ok())
    } else {
        HeaderValue::from_str(upstream.authority.as_str()).ok()
    };
    Ok(rewrite)
}

/// RFC 9113 8.2.3: HTTP/2 clients may send each cookie as its own `cookie` field (it compresses
/// better), and those MUST be joined with `"; "` before they go on over HTTP/1.1, where a
/// request carries one `Cookie` line and servers commonly read only the first.
fn join_h2_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Joined from valid values with ASCII, so it is valid.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// `Via` for the upstream (RFC 9110 7.6.3: a gateway MUST send one in each inbound request): the
/// client's chain, if any, and this hop, named by the protocol it came in on and the pseudonym
/// `bearward` (no host name or version is disclosed).
fn via(headers: &HeaderMap, version: Version) -> HeaderValue {
    let hop = match version {
        Version::HTTP_10 => "1.0 bearward",
        Version::HTTP_2 => "2 bearward",
        _ => "1.1 bearward",
    };
    let prior: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if prior.is_empty() {
        return HeaderValue::from_static(hop);
    }
    let mut chain = prior.join(&b", "[..]);
    chain.extend_from_slice(b", ");
    chain.extend_from_slice(hop.as_bytes());
    // Built from valid values and ASCII, so it is valid.
    HeaderValue::from_bytes(&chain).unwrap_or_else(|_| HeaderValue::from_static(hop))
}

/// Cleans an upstream response for the client: hop-by-hop headers go, except on a 101, whose
/// `Connection` and `Upgrade` complete the handshake.
pub fn prepare_response(resp: &mut Response<Body>) {
    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop_except_upgrade(resp.headers_mut(), upgraded);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret , keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Two Connection lines, odd case and spacing, a name that is not a header.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("KEEP-ALIVE"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" ,X-One,, x-two ,bad name"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);

        // The one-byte filter must let every fixed name through.
        for h in &HOP_BY_HOP {
            let mut one = HeaderMap::new();
            one.insert(h.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut one);
            assert!(one.is_empty(), "{h}");
        }

        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn trust_matches_cidrs_and_mapped_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted(&nets, &"10.1.2.3:5".parse().unwrap()));
        assert!(is_trusted(&nets, &"[::ffff:10.1.2.3]:5".parse().unwrap()));
        assert!(!is_trusted(&nets, &"11.1.2.3:5".parse().unwrap()));
        assert!(!is_trusted(&[], &"127.0.0.1:5".parse().unwrap()));
    }
}
