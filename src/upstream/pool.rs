//! Keep-alive connections to one upstream, and the HTTP/1.1 exchange over them.
//!
//! The exchange runs inside the request's own task: the request head is written, the request
//! body streamed and the response head read by the request's future; the response body reads
//! the socket as the client takes it. The wire format is in [`crate::upstream::wire`] (why not
//! hyper's client is said there). A connection is a socket (TLS over it for an `https`
//! upstream, [`crate::tls`]) plus its read buffer, taken from a LIFO list and put back the
//! moment its response has been read to the end.
//!
//! - a request reaches a pooled connection that died under us: retried once on a fresh
//!   connection when the upstream cannot have acted on it (its head could not be written), or
//!   when it is idempotent and bodiless (RFC 9110 9.2.2) and the connection closed before any
//!   byte of a response; anything else is a 502;
//! - a connection idle for more than [`PROBE_AFTER`] is checked for a close before reuse (one
//!   non-blocking read), so an upstream's own idle timeout costs no request; busy connections
//!   skip the check;
//! - an upstream that takes no request bytes, or sends no response body bytes, for its
//!   `request_timeout` loses the request (504 before the response head; after it, the client
//!   connection is closed);
//! - idle connections older than `idle_timeout` are closed when next looked at; at most
//!   `max_idle_connections` are kept;
//! - an early response (before the request body was sent in full) is forwarded and its
//!   connection closed; a failed request body closes the connection;
//! - request trailers are not forwarded (RFC 9110 6.5.1 lets a proxy drop them; HTTP/2
//!   upstreams, `super::h2`, get them);
//! - upgrades (101) take the connection out of the pool for good.

use crate::body::{self, Body, BoxError};
use crate::config::UpstreamConfig;
use crate::telemetry::Metrics;
use crate::timer::Stall;
use crate::tls::{Stream, UpstreamTls};
use crate::upstream::wire::{self, Chunked, Decoded, Malformed, RequestFraming, ResponseFraming};
use crate::upstream::{BodyStalled, BodyTooLarge, ProxyError};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection idle at least this long is checked for a close before it is reused.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(10);
/// Most interim (1xx) responses before the final one.
const MAX_INTERIM: usize = 8;
/// Room made in a connection's read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// One upstream connection.
struct Conn {
    stream: Stream,
    /// Bytes read but not yet consumed. Empty whenever the connection is idle.
    buf: BytesMut,
    since: Instant,
}

/// The upstream side of an upgraded (101) exchange: the connection and any bytes the upstream
/// sent after its 101 head.
pub(crate) struct Upgraded {
    pub stream: Stream,
    pub leftover: Bytes,
}

/// Why an exchange failed.
enum Failure {
    /// The request head could not be written: the upstream cannot have acted on it.
    NotSent,
    /// The connection closed (or reset) before any byte of a response.
    NoResponse,
    Proxy(ProxyError),
}

impl From<Malformed> for Failure {
    fn from(m: Malformed) -> Failure {
        tracing::debug!(error = %m, "upstream response refused");
        Failure::Proxy(ProxyError::BadResponse)
    }
}

/// The pool for one upstream.
pub(crate) struct Pool {
    /// The upstream's name in the config: the label its broken responses are counted under.
    name: String,
    metrics: Arc<Metrics>,
    addr: String,
    /// For an `https` upstream.
    tls: Option<UpstreamTls>,
    /// The longest a new connection may take, TLS handshake included.
    connect_timeout: Duration,
    /// The longest the upstream may take no request bytes, or send no response body bytes
    /// (its `request_timeout`, as nginx's `proxy_send_timeout` and `proxy_read_timeout`).
    stall_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// The pool for one configured upstream; its broken responses are counted in `metrics`.
    pub(crate) fn new(upstream: &UpstreamConfig, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            name: upstream.name.clone(),
            metrics,
            addr: connect_addr(upstream),
            tls: upstream.tls.clone(),
            connect_timeout: upstream.connect_timeout,
            stall_timeout: upstream.request_timeout,
            idle_timeout: upstream.idle_timeout,
            max_idle: upstream.max_idle_connections,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A response body broke off after its head went to the client, who sees the connection
    /// close. Logged as nginx logs "upstream prematurely closed connection", and counted.
    fn aborted(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        tracing::warn!(upstream = %self.name, authority = %self.addr, reason, error = %detail, "upstream response broke off mid-body");
        self.metrics.upstream_abort(&self.name, reason);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection for a request, and whether it was reused.
    async fn checkout(&self) -> Result<(Conn, bool), ProxyError> {
        loop {
            let popped = self.idle().pop();
            let Some(conn) = popped else {
                return self.connect().await.map(|c| (c, false));
            };
            let idle = conn.since.elapsed();
            if idle > self.idle_timeout || (idle >= PROBE_AFTER && !still_open(conn.stream.tcp())) {
                continue;
            }
            return Ok((conn, true));
        }
    }

    /// The upstream's name in the config.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A new connection (TLS made, if any), within `connect_timeout`.
    pub(crate) async fn open_stream(&self) -> Result<crate::tls::Stream, ProxyError> {
        tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| ProxyError::ConnectTimeout)?
    }

    async fn connect(&self) -> Result<Conn, ProxyError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| ProxyError::ConnectTimeout)??;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            since: Instant::now(),
        })
    }

    async fn open(&self) -> Result<Stream, ProxyError> {
        let tcp = match TcpStream::connect(&self.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::ConnectTimeout)
            }
            Err(_) => return Err(ProxyError::Unreachable),
            Ok(s) => s,
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        tls.connect(tcp).await.map_err(|e| {
            tracing::warn!(upstream = %self.name, authority = %self.addr, error = %e, "TLS handshake with the upstream failed");
            ProxyError::Tls
        })
    }

    /// Back to the pool, if the connection can carry another request: nothing unread in it.
    fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() || conn.stream.holds_unread() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            conn.since = Instant::now();
            idle.push(conn);
        }
    }

    /// Sends a request (origin-form, headers already cleaned by `forward::prepare_request`) and
    /// waits for the response head. The response body hands the connection back to the pool
    /// when it has been read to the end. With `upgrade`, a 101 answer comes with the upstream
    /// connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        rewrite: &wire::HeadRewrite,
        upgrade: bool,
    ) -> Result<(Response<Body>, Option<Upgraded>), ProxyError> {
        let (parts, req_body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (head, framing) = wire::encode_head(
            &parts.method,
            target,
            &parts.headers,
            rewrite,
            req_body.is_end_stream(),
            req_body.size_hint().exact(),
        );
        let mut req_body = (framing != RequestFraming::Empty).then_some(req_body);
        let method = parts.method;
        // RFC 9110 9.2.2; a body already streamed cannot be sent twice.
        let replayable = req_body.is_none()
            && matches!(
                method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            );
        let (mut conn, mut reused) = self.checkout().await?;
        let resp = loop {
            let exchange = exchange(
                &mut conn,
                &head,
                &mut req_body,
                framing,
                &method,
                self.stall_timeout,
            );
            match exchange.await {
                Ok(resp) => break resp,
                // The body is taken only once the head is written, so it is still here.
                Err(Failure::NotSent) if reused => {}
                Err(Failure::NoResponse) if reused && replayable => {}
                Err(Failure::Proxy(e)) => return Err(e),
                Err(_) => return Err(ProxyError::Unreachable),
            }
            conn = self.connect().await?;
            reused = false;
        };
        let state = match resp.framing {
            ResponseFraming::Upgrade if upgrade => {
                let upgraded = Upgraded {
                    stream: conn.stream,
                    leftover: conn.buf.freeze(),
                };
                return Ok((into_response(resp, body::empty()), Some(upgraded)));
            }
            ResponseFraming::Upgrade => {
                tracing::debug!("upstream answered 101 to a request that asked for no upgrade");
                return Err(ProxyError::BadResponse);
            }
            ResponseFraming::Empty | ResponseFraming::Length(0) => {
                if resp.keep_alive {
                    self.checkin(conn);
                }
                return Ok((into_response(resp, body::empty()), None));
            }
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(Chunked::default()),
            ResponseFraming::Close => BodyState::Close,
        };
        let body = UpstreamBody {
            conn: Some(conn),
            state,
            keep_alive: resp.keep_alive,
            stall: Stall::new(self.stall_timeout),
            pool: self.clone(),
        };
        Ok((into_response(resp, body::boxed(body)), None))
    }
}

/// `host:port` to connect to: a URL without a port means the scheme's (RFC 9110 4.2), which the
/// socket API does not fill in.
fn connect_addr(upstream: &UpstreamConfig) -> String {
    let a = &upstream.authority;
    match a.port_u16() {
        Some(_) => a.to_string(),
        None if upstream.scheme == http::uri::Scheme::HTTPS => format!("{}:443", a.host()),
        None => format!("{}:80", a.host()),
    }
}

fn into_response(head: wire::ResponseHead, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// Has the upstream closed (or written to) this idle connection? One non-blocking read; none at
/// all when tokio already knows the socket has nothing to read.
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Writes the request, streams its body and reads the final response head. An early response
/// (the upstream answered before the body was sent in full) ends the body and the connection.
async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    req_body: &mut Option<Body>,
    framing: RequestFraming,
    method: &Method,
    stall_timeout: Duration,
) -> Result<wire::ResponseHead, Failure> {
    match send_all(&mut conn.stream, &mut &head[..], stall_timeout).await {
        Ok(()) => {}
        Err(WriteFailure::Stalled) => return Err(Failure::Proxy(ProxyError::Timeout)),
        Err(_) => return Err(Failure::NotSent),
    }
    let Some(req_body) = req_body.take() else {
        return read_head(&mut conn.stream, &mut conn.buf, method).await;
    };
    // The head is read while the body is written: the upstream may answer early.
    let buf = &mut conn.buf;
    match &mut conn.stream {
        Stream::Plain(s) => {
            let (rd, wr) = s.split();
            head_and_body(rd, wr, buf, req_body, framing, method, stall_timeout).await
        }
        Stream::Tls(s) => {
            let (rd, wr) = tokio::io::split(&mut **s);
            head_and_body(rd, wr, buf, req_body, framing, method, stall_timeout).await
        }
    }
}

async fn head_and_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: R,
    mut wr: W,
    buf: &mut BytesMut,
    req_body: Body,
    framing: RequestFraming,
    method: &Method,
    stall_timeout: Duration,
) -> Result<wire::ResponseHead, Failure> {
    let read = read_head(&mut rd, buf, method);
    let write = write_body(&mut wr, req_body, framing, stall_timeout);
    tokio::pin!(read, write);
    tokio::select! {
        biased;
        r = &mut read => {
            let mut resp = r?;
            resp.keep_alive = false;
            Ok(resp)
        }
        w = &mut write => match w {
            Ok(()) => read.await,
            // The client's body failed or stalled: nothing sensible can follow on this
            // connection.
            Err(WriteFailure::Client(e)) => Err(Failure::Proxy(e)),
            Err(WriteFailure::Stalled) => Err(Failure::Proxy(ProxyError::Timeout)),
            // The upstream stopped taking the body; it may still have answered (413, 401...).
            Err(WriteFailure::Io) => read.await.map(|mut resp| {
                resp.keep_alive = false;
                resp
            }),
        },
    }
}

async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<wire::ResponseHead, Failure> {
    let mut interim = 0;
    let mut got_any = false;
    loop {
        if !buf.is_empty() {
            match wire::parse_head(buf, method)? {
                Some(h) if h.is_interim() => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(Malformed("too many interim responses").into());
                    }
                    continue;
                }
                Some(h) => return Ok(h),
                None => {}
            }
        }
        buf.reserve(READ_CHUNK);
        let read = rd.read_buf(buf).await;
        // In TLS 1.3 the server checks a client certificate after the client's handshake is
        // done, so its refusal arrives here, as an alert, rather than from the handshake.
        if let Some(e) = read.as_ref().err().and_then(crate::tls::session_error) {
            tracing::warn!(error = %e, "the upstream ended the TLS session");
            return Err(Failure::Proxy(ProxyError::Tls));
        }
        match read {
            Ok(n) if n > 0 => got_any = true,
            _ if got_any => return Err(Failure::Proxy(ProxyError::Unreachable)),
            _ => return Err(Failure::NoResponse),
        }
    }
}

/// Why a write to the upstream (request head or body) failed.
enum WriteFailure {
    /// The client's body failed (`BodyTimeout` when it stalled) or broke its declared length.
    Client(ProxyError),
    /// Writing to the upstream failed.
    Io,
    /// The upstream took no bytes for `stall_timeout`.
    Stalled,
}

/// Writes all of `buf`, failing if the upstream takes nothing for `limit`. A write that can
/// go at once (the usual case) is tried first with no timer at all: making one cost ~470
/// instructions per request (benches/instructions.py).
async fn send_all<W: AsyncWrite + Unpin, B: Buf>(
    wr: &mut W,
    buf: &mut B,
    limit: Duration,
) -> Result<(), WriteFailure> {
    while buf.has_remaining() {
        let written = match wr.write_buf(buf).now_or_never() {
            Some(r) => r,
            None => tokio::time::timeout(limit, wr.write_buf(buf))
                .await
                .map_err(|_| WriteFailure::Stalled)?,
        };
        let n = written.map_err(|_| WriteFailure::Io)?;
        if n == 0 {
            return Err(WriteFailure::Io);
        }
    }
    // TLS may hold what was written until flushed; on a bare socket this is a no-op.
    let flushed = match wr.flush().now_or_never() {
        Some(r) => r,
        None => tokio::time::timeout(limit, wr.flush())
            .await
            .map_err(|_| WriteFailure::Stalled)?,
    };
    flushed.map_err(|_| WriteFailure::Io)
}

async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: Body,
    framing: RequestFraming,
    limit: Duration,
) -> Result<(), WriteFailure> {
    let broken = WriteFailure::Client(ProxyError::ClientBody);
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            WriteFailure::Client(if e.is::<BodyStalled>() {
                ProxyError::BodyTimeout
            } else if e.is::<BodyTooLarge>() {
                ProxyError::BodyTooLarge
            } else {
                ProxyError::ClientBody
            })
        })?;
        // Trailers are dropped (see the module doc).
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Length(n) if sent > n => return Err(broken),
            RequestFraming::Chunked => {
                let size = format!("{:X}\r\n", data.len());
                let mut chunk = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
                send_all(wr, &mut chunk, limit).await?;
            }
            _ => send_all(wr, &mut data, limit).await?,
        }
    }
    match framing {
        RequestFraming::Length(n) if sent != n => Err(broken),
        RequestFraming::Chunked => send_all(wr, &mut &b"0\r\n\r\n"[..], limit).await,
        _ => Ok(()),
    }
}

enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// An upstream response body, read from the connection as the client takes it. At its exact
/// end the connection goes back to the pool; dropped before that, it is closed. A pause longer
/// than the upstream's `request_timeout` breaks it (nginx's `proxy_read_timeout` counts the
/// same way); a client that reads slowly does not count, since the clock runs only while this
/// body waits on the upstream.
struct UpstreamBody {
    conn: Option<Conn>,
    state: BodyState,
    keep_alive: bool,
    stall: Stall,
    pool: Arc<Pool>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(conn);
            }
        }
    }

    /// Reads more from the upstream: `Ready(Ok(0))` is the close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        conn.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let (data, ended) = match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    *left -= n as u64;
                    (Some(conn.buf.split_to(n).freeze()), *left == 0)
                }
                BodyState::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Decoded::Data(d)) => (Some(d), false),
                    Ok(Decoded::End) => (None, true),
                    Ok(Decoded::NeedMore) => (None, false),
                    Err(m) => {
                        this.conn = None;
                        this.pool.aborted("upstream_bad_chunk", &m);
                        return Poll::Ready(Some(Err(m.into())));
                    }
                },
                BodyState::Close if !conn.buf.is_empty() => {
                    (Some(conn.buf.split().freeze()), false)
                }
                BodyState::Length(_) | BodyState::Close => (None, false),
            };
            if ended {
                this.finish();
            }
            if let Some(d) = data {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if ended {
                return Poll::Ready(None);
            }
            let filled = this.poll_fill(cx);
            if this.stall.expired(cx, &filled) {
                this.conn = None;
                let e = "upstream response body paused past request_timeout";
                this.pool.aborted("upstream_body_timeout", &e);
                return Poll::Ready(Some(Err(e.into())));
            }
            match std::task::ready!(filled) {
                Ok(0) if matches!(this.state, BodyState::Close) => {
                    this.conn = None;
                    this.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    let e = "upstream closed mid-body";
                    this.pool.aborted("upstream_closed_mid_body", &e);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.pool.aborted("upstream_read_error", &e);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr_of(url: &str) -> String {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\nurl = \"{url}\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"u\"\nauth = \"none\"\n"
        );
        let config = crate::config::Config::from_toml_str(&text, "t.toml").unwrap();
        connect_addr(&config.upstreams[0])
    }

    #[test]
    fn a_url_without_a_port_connects_to_the_schemes() {
        assert_eq!(addr_of("http://backend.internal"), "backend.internal:80");
        assert_eq!(addr_of("https://backend.internal"), "backend.internal:443");
        assert_eq!(addr_of("http://[::1]"), "[::1]:80");
        assert_eq!(addr_of("http://127.0.0.1:3000"), "127.0.0.1:3000");
        assert_eq!(addr_of("https://127.0.0.1:8443"), "127.0.0.1:8443");
    }
}
