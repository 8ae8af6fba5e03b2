//! The floor of an HTTP/1 keep-alive server: hyper's against a minimal loop, both answering
//! every request with the same small 401 (4 headers, 16-byte body), current-thread runtime.
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &[u8] = b"no bearer token\n";

fn answer() -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from_static(BODY)));
    *r.status_mut() = http::StatusCode::UNAUTHORIZED;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"bearward\""),
    );
    r
}

/// One `name: value` header line.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn hyper_conn(s: tokio::net::TcpStream) {
    let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(answer())
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}

/// Where each header's name and value lie in `buf`, which httparse parsed into `headers`,
/// written into `spans`: offsets, so the head can be split off and its values kept as slices
/// of it. (Filled in place: a 64-entry array moved by value cost a request about 500
/// instructions of copies.)
fn spans<'s>(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    spans: &'s mut [(usize, usize, usize, usize); 64],
) -> &'s [(usize, usize, usize, usize)] {
    let base = buf.as_ptr() as usize;
    for (sp, h) in spans.iter_mut().zip(headers) {
        *sp = (
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        );
    }
    &spans[..headers.len()]
}

/// The head's first `n` bytes split off `buf` and its headers in a `HeaderMap`, as a gateway
/// on the `http` types holds them (values are slices of the head, no copy).
fn header_map(
    buf: &mut BytesMut,
    n: usize,
    spans: &[(usize, usize, usize, usize)],
) -> Option<http::HeaderMap> {
    let head = buf.split_to(n).freeze();
    let mut map = http::HeaderMap::with_capacity(spans.len());
    for &(n0, nl, v0, vl) in spans {
        map.append(
            http::HeaderName::from_bytes(&head[n0..n0 + nl]).ok()?,
            http::HeaderValue::from_maybe_shared(head.slice(v0..v0 + vl)).ok()?,
        );
    }
    Some(map)
}

async fn minimal_conn(mut s: tokio::net::TcpStream) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(1024);
    loop {
        // Parse what is there; read more when the head is incomplete.
        let req = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut at = [(0, 0, 0, 0); 64];
                    let spans = spans(&buf, r.headers, &mut at);
                    let method = http::Method::from_bytes(r.method.unwrap().as_bytes()).unwrap();
                    let uri = http::Uri::try_from(r.path.unwrap()).unwrap();
                    // As a gateway would: an http::Request with its HeaderMap.
                    let map = header_map(&mut buf, n, spans).unwrap();
                    let mut req = http::Request::new(());
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = map;
                    break req;
                }
                Ok(httparse::Status::Partial) => {
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        drop(req);
        let resp = answer();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\n");
        for (n, v) in resp.headers() {
            line(&mut out, n.as_str().as_bytes(), v.as_bytes());
        }
        out.extend_from_slice(b"content-length: 16\r\ndate: Sun, 06 Dec 2026 15:00:00 GMT\r\n\r\n");
        out.extend_from_slice(BODY);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Hop-by-hop lines (RFC 9110 7.6.1) and the client's own forwarding lines: never passed on.
fn dropped(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"x-forwarded-for",
        b"via",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// One response from `up` into `out`: its head (parsed into `HeaderMap` first when `typed`,
/// as bearward does, else its lines copied as they are, hop-by-hop ones dropped) and its
/// Content-Length body.
async fn relay_response(
    up: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    typed: bool,
) -> Option<()> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf).ok()? {
            httparse::Status::Complete(n) => {
                let mut length = 0usize;
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(r.code?.to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
                out.extend_from_slice(b"\r\n");
                if typed {
                    let mut at = [(0, 0, 0, 0); 64];
                    let spans = spans(buf, r.headers, &mut at);
                    let mut map = header_map(buf, n, spans)?;
                    map.remove(http::header::CONNECTION);
                    map.remove("keep-alive");
                    if let Some(v) = map.get(http::header::CONTENT_LENGTH) {
                        length = v.to_str().ok()?.parse().ok()?;
                    }
                    map.insert(
                        http::header::VIA,
                        http::HeaderValue::from_static("1.1 h1floor"),
                    );
                    for (k, v) in &map {
                        line(out, k.as_str().as_bytes(), v.as_bytes());
                    }
                } else {
                    for h in r.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value).ok()?.parse().ok()?;
                        } else if h.name.eq_ignore_ascii_case("connection")
                            || h.name.eq_ignore_ascii_case("keep-alive")
                        {
                            continue;
                        }
                        line(out, h.name.as_bytes(), h.value);
                    }
                    out.extend_from_slice(b"via: 1.1 h1floor\r\n");
                    let _ = buf.split_to(n);
                }
                out.extend_from_slice(b"\r\n");
                while buf.len() < length {
                    if up.read_buf(buf).await.ok()? == 0 {
                        return None;
                    }
                }
                out.extend_from_slice(&buf.split_to(length));
                return Some(());
            }
            httparse::Status::Partial => {
                if up.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
        }
    }
}

/// A bare proxy hop (GET requests without a body), one upstream connection per client
/// connection, kept alive. `typed`: the request goes through an `http::Request` with its
/// `HeaderMap` and the response through a `HeaderMap`, as in bearward; else heads stay bytes.
async fn proxy_conn(mut s: tokio::net::TcpStream, upstream: u16, typed: bool) -> Option<()> {
    let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
        .await
        .ok()?;
    let _ = up.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8192);
    let mut ubuf = BytesMut::with_capacity(8192);
    let mut head = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        head.clear();
        out.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&buf).ok()? {
                httparse::Status::Complete(n) => {
                    head.extend_from_slice(r.method?.as_bytes());
                    head.push(b' ');
                    head.extend_from_slice(r.path?.as_bytes());
                    head.extend_from_slice(b" HTTP/1.1\r\n");
                    if typed {
                        let mut at = [(0, 0, 0, 0); 64];
                        let spans = spans(&buf, r.headers, &mut at);
                        let method = http::Method::from_bytes(r.method?.as_bytes()).ok()?;
                        let uri = http::Uri::try_from(r.path?).ok()?;
                        let map = header_map(&mut buf, n, spans)?;
                        let mut req = http::Request::new(());
                        *req.method_mut() = method;
                        *req.uri_mut() = uri;
                        *req.headers_mut() = map;
                        for (k, v) in req.headers() {
                            if !dropped(k.as_str().as_bytes()) {
                                line(&mut head, k.as_str().as_bytes(), v.as_bytes());
                            }
                        }
                    } else {
                        for h in r.headers.iter() {
                            if !dropped(h.name.as_bytes()) {
                                line(&mut head, h.name.as_bytes(), h.value);
                            }
                        }
                        let _ = buf.split_to(n);
                    }
                    head.extend_from_slice(
                        b"x-forwarded-for: 127.0.0.1\r\nvia: 1.1 h1floor\r\n\r\n",
                    );
                    break;
                }
                httparse::Status::Partial => {
                    if s.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
            }
        }
        up.write_all(&head).await.ok()?;
        relay_response(&mut up, &mut ubuf, &mut out, typed).await?;
        s.write_all(&out).await.ok()?;
    }
}

fn main() {
    // h1floor MODE [PORT [UPSTREAM_PORT]]: hyper | minimal (a fixed 401) | proxy-raw | proxy-typed
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let port: u16 = args.get(2).map_or(18999, |p| p.parse().unwrap());
    let upstream: u16 = args.get(3).map_or(18998, |p| p.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            match mode.as_str() {
                "minimal" => drop(tokio::spawn(minimal_conn(s))),
                "proxy-raw" => drop(tokio::spawn(proxy_conn(s, upstream, false))),
                "proxy-typed" => drop(tokio::spawn(proxy_conn(s, upstream, true))),
                _ => drop(tokio::spawn(hyper_conn(s))),
            }
        }
    });
}
