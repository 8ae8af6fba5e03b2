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
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"bearward\""));
    r
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
                    let base = buf.as_ptr() as usize;
                    let at = |p: *const u8| p as usize - base;
                    let mut spans = [(0usize, 0usize, 0usize, 0usize); 64];
                    let count = r.headers.len();
                    for (sp, h) in spans.iter_mut().zip(r.headers.iter()) {
                        *sp = (at(h.name.as_ptr()), h.name.len(), at(h.value.as_ptr()), h.value.len());
                    }
                    let method = http::Method::from_bytes(r.method.unwrap().as_bytes()).unwrap();
                    let uri = http::Uri::try_from(r.path.unwrap()).unwrap();
                    let head = buf.split_to(n).freeze();
                    // As a gateway would: an http::Request with its HeaderMap.
                    let mut map = http::HeaderMap::with_capacity(count);
                    for &(n0, nl, v0, vl) in &spans[..count] {
                        map.append(
                            http::HeaderName::from_bytes(&head[n0..n0 + nl]).unwrap(),
                            http::HeaderValue::from_maybe_shared(head.slice(v0..v0 + vl)).unwrap(),
                        );
                    }
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
            out.extend_from_slice(n.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"content-length: 16\r\ndate: Sun, 06 Dec 2026 15:00:00 GMT\r\n\r\n");
        out.extend_from_slice(BODY);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn main() {
    let minimal = std::env::args().nth(1).as_deref() == Some("minimal");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:18999").await.unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            if minimal {
                tokio::spawn(minimal_conn(s));
            } else {
                tokio::spawn(hyper_conn(s));
            }
        }
    });
}
