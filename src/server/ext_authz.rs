//! `[decision] grpc_listen`: Envoy's external authorization service, v3 over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), the protocol Envoy, Istio's `CUSTOM` action,
//! Contour, Envoy Gateway and Gateway API's `ExternalAuth` speak natively.
//!
//! A check is a decision request like the HTTP listener's: its `CheckRequest` becomes the HTTP
//! view of the request it describes (method, path with query, host and headers as Envoy saw
//! them; the source address as `X-Forwarded-For`; a client certificate Envoy verified as the
//! connection's own) and goes through [`Gateway::handle`], so the route, the token
//! checks, the rate limits, the access log, the metrics and the trace span are the HTTP
//! listener's. The answer is then said the way Envoy applies it:
//! - allowed: `OkHttpResponse` setting each claim header (overwriting, so the client's copy
//!   never survives: Envoy's default appends), removing the empty ones, the `_` aliases of
//!   bearward's headers and, with `strip_authorization`, the token; `RateLimit` fields on the
//!   client's response; dynamic metadata (decision, route, subject, client, scopes) for
//!   Envoy's RBAC and access log;
//! - refused: `DeniedHttpResponse` with the HTTP listener's status, headers and body, and the
//!   `google.rpc` code that matches.
//!
//! The peer must be in `[decision] trusted_proxies`, as on the HTTP listener.

use super::{handshake, Drain, Held, Live, Protocols, Shared};
use crate::forward::X_FORWARDED_FOR;
use crate::gateway::{
    ConnInfo, ExtAuthzTarget, Facts, TlsInfo, AUDIT_HEADER, RATELIMIT, RATELIMIT_POLICY,
};
use crate::request::ledger::InFlight;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The gRPC listener's accept loop: its connections share `max_connections` and
/// `max_requests_in_flight` with the other listeners', and drain with them.
pub(super) async fn grpc_loop(
    listener: TcpListener,
    protocols: Arc<Protocols>,
    live: Arc<Live>,
    shared: Shared,
) {
    let metrics = live.metrics.clone();
    while let Some((stream, peer, drain, slot)) =
        shared.accept(&listener, &metrics, "ext_authz").await
    {
        let _ = stream.set_nodelay(true);
        let checker = Checker {
            live: live.clone(),
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            in_flight: shared.in_flight.clone(),
        };
        // TLS with the proxy listener's keys (and client certificates) when it has them, as
        // the config in force when the connection arrived says; h2c otherwise.
        let tls = live.current().config.server.tls.clone();
        let (protocols, live) = (protocols.clone(), live.clone());
        let workers = &shared.workers;
        workers.serve(stream, move |stream, seat| async move {
            let _seat = seat;
            match tls {
                None => serve(stream, checker, drain, slot).await,
                Some(tls) => {
                    // gRPC clients ask ALPN for h2 and refuse a server that selects nothing.
                    let mut config = (*tls.config).clone();
                    config.alpn_protocols = vec![b"h2".to_vec()];
                    let tls = crate::tls::ListenerTls {
                        config: Arc::new(config),
                        client_auth: tls.client_auth,
                    };
                    if let Some((stream, _)) = handshake(stream, &tls, &protocols, &live).await {
                        serve(stream, checker, drain, slot).await;
                    }
                }
            }
        });
    }
}

/// The parts of a `CheckRequest` a check reads, decoded with prost's derive under Envoy's field
/// numbers (`envoy/service/auth/v3/attribute_context.proto`, `envoy/config/core/v3`): the other
/// fields (destination, metadata, TLS session, context extensions) are skipped undecoded, maps
/// arrive as their wire form (repeated key/value entries) without a HashMap, and header names
/// and values as slices of the received frame, never copied. envoy-types' full `CheckRequest`
/// (the crate's generated code) cost a tenth of a check in allocation; the test
/// `decodes_what_envoy_types_encodes` holds these numbers to it.
mod wire {
    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub(super) attributes: Option<Attributes>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Attributes {
        #[prost(message, optional, tag = "1")]
        pub(super) source: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub(super) request: Option<Request>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Peer {
        #[prost(message, optional, tag = "1")]
        pub(super) address: Option<Address>,
        /// URL-encoded PEM of the certificate Envoy verified (a `string`, read as bytes: no
        /// copy, and checked as text only when there is one).
        #[prost(bytes = "bytes", tag = "5")]
        pub(super) certificate: Bytes,
    }

    /// `Address`, whose `oneof address` has `socket_address` at 1 (a pipe or an internal
    /// address, at 2 and 3, leaves it empty).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Address {
        #[prost(message, optional, tag = "1")]
        pub(super) socket_address: Option<SocketAddress>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SocketAddress {
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) address: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Request {
        #[prost(message, optional, tag = "2")]
        pub(super) http: Option<Http>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Http {
        #[prost(string, tag = "2")]
        pub(super) method: String,
        /// `map<string, string> headers`, as it is on the wire.
        #[prost(message, repeated, tag = "3")]
        pub(super) headers: Vec<Entry>,
        #[prost(string, tag = "4")]
        pub(super) path: String,
        #[prost(string, tag = "5")]
        pub(super) host: String,
        #[prost(bytes = "bytes", tag = "6")]
        pub(super) scheme: Bytes,
        #[prost(message, optional, tag = "13")]
        pub(super) header_map: Option<HeaderMap>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Entry {
        #[prost(bytes = "bytes", tag = "1")]
        pub(super) key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) value: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct HeaderMap {
        #[prost(message, repeated, tag = "1")]
        pub(super) headers: Vec<HeaderValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct HeaderValue {
        #[prost(bytes = "bytes", tag = "1")]
        pub(super) key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) value: Bytes,
        #[prost(bytes = "bytes", tag = "3")]
        pub(super) raw_value: Bytes,
    }
}

/// The one method served.
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The largest `CheckRequest` taken (gRPC's default receive limit, as tonic's and Envoy's).
const MAX_MESSAGE: usize = 4 << 20;

/// One HTTP/2 connection of gRPC calls, finished gracefully (GOAWAY, calls in flight
/// complete) when the server drains.
///
/// The unary call is framed here rather than by tonic's server: one `Check` method needs no
/// router, codec stack or streaming decoder, and they were a third of a check's time (a
/// boxed future per layer, moved and copied, and the message in and out of tonic's buffers).
async fn serve<S>(stream: S, checker: Checker, mut drain: Drain, _slot: Held)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let checker = Arc::new(checker);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let checker = checker.clone();
        // Boxed: hyper holds a call's future in the stream's task, which it moves into place;
        // with the check's several KiB inline, memmove was a tenth of a check's time (perf).
        let call = Box::pin(async move { checker.call(req).await });
        async move { Ok::<_, std::convert::Infallible>(call.await) }
    });
    // No `date` on answers: gRPC and Envoy never read it, and it was the one response header
    // whose value changes, so HPACK encoded it afresh every second and hashed it every answer.
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .auto_date_header(false)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = drain.signal.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A unary gRPC answer: one message, then the trailers; or, for an error, nothing (its status
/// is in the headers: a "trailers-only" answer).
struct Unary {
    message: Option<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match self.message.take() {
            Some(m) => Some(http_body::Frame::data(m)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// A call that ends in an error, said in the headers alone.
fn failed(code: tonic::Code, message: &'static str) -> Response<Unary> {
    let mut resp = Response::new(Unary {
        message: None,
        trailers: None,
    });
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, GRPC);
    h.insert("grpc-status", HeaderValue::from(code as i32));
    h.insert("grpc-message", HeaderValue::from_static(message));
    resp
}

impl Checker {
    /// One gRPC call: the method, the framing and the message checked, the check made, the
    /// answer framed.
    async fn call(&self, req: Request<hyper::body::Incoming>) -> Response<Unary> {
        use prost::Message as _;
        if req.uri().path() != CHECK {
            return failed(
                tonic::Code::Unimplemented,
                "only Authorization/Check is served",
            );
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            let mut resp = failed(tonic::Code::Internal, "not a gRPC request");
            *resp.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return resp;
        }
        let body = http_body_util::Limited::new(req.into_body(), MAX_MESSAGE + 5);
        let Ok(body) = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
        else {
            return failed(
                tonic::Code::ResourceExhausted,
                "the request is over 4 MiB or broke off",
            );
        };
        // One message: a flag byte (compressed or not), a 4-byte length, the message.
        let message = match body.split_first_chunk::<5>() {
            Some(([0, len @ ..], rest)) if u32::from_be_bytes(*len) as usize == rest.len() => {
                body.slice(5..)
            }
            Some(([1, ..], _)) => {
                return failed(
                    tonic::Code::Unimplemented,
                    "compressed messages are not taken",
                )
            }
            _ => return failed(tonic::Code::Internal, "not one gRPC message"),
        };
        let Ok(check) = wire::CheckRequest::decode(message) else {
            return failed(tonic::Code::Internal, "not a CheckRequest");
        };
        // The frame: a flag byte (not compressed), the length (filled in after), the message.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&[0; 5]);
        self.check(check, &mut pb::Writer(&mut out)).await;
        let len = u32::try_from(out.len() - 5).expect("an answer is far below 4 GiB");
        out[1..5].copy_from_slice(&len.to_be_bytes());
        let mut trailers = http::HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut resp = Response::new(Unary {
            message: Some(out.into()),
            trailers: Some(trailers),
        });
        resp.headers_mut().insert(http::header::CONTENT_TYPE, GRPC);
        resp
    }
}

struct Checker {
    live: Arc<Live>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
    in_flight: InFlight,
}

impl Checker {
    async fn check(&self, request: wire::CheckRequest, w: &mut pb::Writer<'_>) {
        // Taken first, as on the HTTP listeners: an overload is refused before any token work.
        let place = self.in_flight.enter();
        let gateway = self.live.current();
        let view = http_view(request);
        let removed = gateway.underscored_aliases(view.request.headers());
        let conn = ConnInfo {
            peer: self.peer,
            peer_ip: self.peer_ip.clone(),
            ledger: None,
            request_timer: Default::default(),
            tls: view.tls,
            decision: true,
        };
        // Boxed: the request path's future is several KiB, and the call's own future (which
        // hyper boxes and moves) would otherwise hold it: with it inside, a check spent a
        // tenth of its time in memmove.
        let mut resp = Box::pin(gateway.handle(view.request, &conn, None, place.is_some())).await;
        // Always there for a check; should it not be, a refusal all the same.
        let facts = resp.extensions_mut().remove::<Facts>().unwrap_or(Facts {
            verdict: "deny",
            reason: "ext_authz_refused",
            route: None,
            identity: None,
            token: false,
        });
        gateway.metrics.ext_authz_check(facts.verdict, facts.reason);
        answer(&gateway, resp, &facts, &removed, w).await;
    }
}

/// The request a `CheckRequest` describes, as the decision path reads it.
struct View {
    request: Request<http_body_util::Empty<bytes::Bytes>>,
    tls: Option<TlsInfo>,
}

/// `attributes.request.http` as a decision request in the ext_authz convention: the headers
/// as Envoy saw them (the raw `header_map` when Envoy sends it, else `headers`), the method,
/// path and host in an [`ExtAuthzTarget`] for the decision path's own checks, the source
/// address as the one `X-Forwarded-For` (the client's own is dropped), and a certificate Envoy
/// verified as the connection's.
fn http_view(check: wire::CheckRequest) -> View {
    let attributes = check.attributes.unwrap_or_default();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let mut request = Request::new(http_body_util::Empty::new());
    let headers = request.headers_mut();
    let mut add = |name: &[u8], value: bytes::Bytes| {
        // Pseudo-headers are in the attributes; a name or value HTTP cannot carry is not
        // something Envoy forwards either.
        if name.starts_with(b":") {
            return;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(n, v);
        }
    };
    match http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for h in map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value
                } else {
                    h.raw_value
                };
                add(&h.key, value);
            }
        }
        _ => {
            for e in http.headers {
                add(&e.key, e.value);
            }
        }
    }
    let source = attributes.source.unwrap_or_default();
    // The address as Envoy wrote it, once it reads as one: nothing but an IP address goes on.
    let address = source.address.and_then(|a| a.socket_address).and_then(|s| {
        std::str::from_utf8(&s.address)
            .ok()?
            .parse::<std::net::IpAddr>()
            .ok()?;
        HeaderValue::from_maybe_shared(s.address).ok()
    });
    let headers = request.headers_mut();
    headers.remove(http::header::FORWARDED);
    headers.remove(X_FORWARDED_FOR);
    if let Some(ip) = address {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    let tls = (!source.certificate.is_empty() || http.scheme == "https").then(|| TlsInfo {
        alpn_h2: false,
        client_cert: std::str::from_utf8(&source.certificate)
            .ok()
            .and_then(crate::tls::pem_thumbprint),
    });
    let host = (!http.host.is_empty())
        .then(|| HeaderValue::from_str(&http.host).ok())
        .flatten();
    request.extensions_mut().insert(ExtAuthzTarget {
        method: http.method,
        target: http.path,
        host,
    });
    View { request, tls }
}

/// A `CheckResponse` written straight into the answer's frame, under Envoy's field numbers
/// (`envoy/service/auth/v3/external_auth.proto`, `envoy/config/core/v3/base.proto`,
/// `google/protobuf/struct.proto`, `google/rpc/status.proto`): header names, values and
/// metadata go from where the decision left them into the buffer once. A message built first
/// (prost's derive over owned `Bytes`) cost an allocation, a clone and a drop for each of them,
/// a fifth of a check. The tests hold what is written to envoy-types' generated
/// `CheckResponse`.
mod pb {
    /// Wire type of varints (`int32`, enums).
    const VARINT: u32 = 0;
    /// Wire type of strings, bytes and messages.
    const DELIMITED: u32 = 2;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn varint_len(v: u64) -> usize {
        // One byte per 7 bits, at least one.
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// One protobuf message being written at the end of `out`.
    pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

    impl Writer<'_> {
        fn key(&mut self, tag: u32, wire: u32) {
            varint(self.0, u64::from(tag << 3 | wire));
        }

        /// A `bytes` field, or a `string` one whose value is UTF-8 already.
        pub(super) fn bytes(&mut self, tag: u32, v: &[u8]) {
            self.key(tag, DELIMITED);
            varint(self.0, v.len() as u64);
            self.0.extend_from_slice(v);
        }

        /// A `string` field: as it is when it is UTF-8 (header values nearly always are), else
        /// with the invalid bytes replaced, since Envoy refuses a message with invalid UTF-8.
        pub(super) fn text(&mut self, tag: u32, v: &[u8]) {
            match std::str::from_utf8(v) {
                Ok(_) => self.bytes(tag, v),
                Err(_) => self.bytes(tag, String::from_utf8_lossy(v).as_bytes()),
            }
        }

        /// A `string` field of `parts` joined by `sep`, written without joining them first.
        pub(super) fn joined<S: AsRef<str>>(&mut self, tag: u32, parts: &[S], sep: &str) {
            let len = parts.iter().map(|p| p.as_ref().len()).sum::<usize>()
                + sep.len() * parts.len().saturating_sub(1);
            self.key(tag, DELIMITED);
            varint(self.0, len as u64);
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    self.0.extend_from_slice(sep.as_bytes());
                }
                self.0.extend_from_slice(p.as_ref().as_bytes());
            }
        }

        /// An `int32` field (an enum too); proto3 leaves zero unsaid.
        pub(super) fn int32(&mut self, tag: u32, v: i32) {
            if v != 0 {
                self.key(tag, VARINT);
                // Negative numbers as ten bytes, as protobuf says an int32 is sign-extended.
                varint(self.0, i64::from(v) as u64);
            }
        }

        /// A message field: its fields written by `body`, its length put in front after.
        pub(super) fn message(&mut self, tag: u32, body: impl FnOnce(&mut Writer<'_>)) {
            self.key(tag, DELIMITED);
            let at = self.0.len();
            body(&mut Writer(self.0));
            let len = (self.0.len() - at) as u64;
            // Small messages (all but a refusal's body) move by one byte.
            if len < 0x80 {
                self.0.insert(at, len as u8);
            } else {
                let mut prefix = Vec::with_capacity(varint_len(len));
                varint(&mut prefix, len);
                self.0.splice(at..at, prefix);
            }
        }
    }

    #[cfg(test)]
    #[test]
    fn varints_are_protobufs() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX.into(),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut b = &out[..];
            assert_eq!(prost::encoding::decode_varint(&mut b).unwrap(), v);
        }
    }
}

/// `HeaderAppendAction::OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE: i32 = 2;

/// A `HeaderValueOption` (at `tag`) that overwrites, never appends: Envoy's default action
/// appends to the client's copy.
fn set(w: &mut pb::Writer<'_>, tag: u32, name: &str, value: &[u8]) {
    w.message(tag, |w| {
        w.message(1, |w| {
            w.bytes(1, name.as_bytes());
            w.text(2, value);
        });
        w.int32(3, OVERWRITE);
    });
}

/// One `google.protobuf.Struct` field of a string value.
fn field(w: &mut pb::Writer<'_>, key: &str, value: impl FnOnce(&mut pb::Writer<'_>)) {
    w.message(1, |w| {
        w.bytes(1, key.as_bytes());
        // `Value`, whose `string_value` is at 3.
        w.message(2, |w| value(w));
    });
}

/// The decision as Envoy's dynamic metadata (namespace `envoy.filters.http.ext_authz`):
/// for RBAC rules and the access log.
fn metadata(w: &mut pb::Writer<'_>, out: &Facts) {
    field(w, "decision", |w| w.bytes(3, out.verdict.as_bytes()));
    field(w, "reason", |w| w.bytes(3, out.reason.as_bytes()));
    if let Some(r) = &out.route {
        field(w, "route", |w| w.bytes(3, r.as_bytes()));
    }
    if let Some(i) = &out.identity {
        // The subject and client read once when the token was verified (the client as every
        // other check names it: `azp`, else `client_id`), not looked up again in the claims.
        let p = &i.0.principal;
        if let Some(s) = &p.subject {
            field(w, "subject", |w| w.bytes(3, s.as_bytes()));
        }
        if let Some(c) = &p.client {
            field(w, "client_id", |w| w.bytes(3, c.as_bytes()));
        }
        field(w, "scopes", |w| w.joined(3, &i.0.scopes, " "));
    }
}

/// The `google.rpc` code of a refusal's HTTP status.
fn rpc_code(status: http::StatusCode) -> i32 {
    (match status.as_u16() {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        429 => tonic::Code::ResourceExhausted,
        400 => tonic::Code::InvalidArgument,
        404 => tonic::Code::NotFound,
        502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    }) as i32
}

/// The HTTP decision answer said as a `CheckResponse`, written at the end of `w`.
///
/// Allowed: `OkHttpResponse` (at 3) setting each claim header and the audit note, removing the
/// empty ones (so the client's copy cannot stand in for them), the `removed` ones and, with
/// `strip_authorization`, the token; `RateLimit` fields for the client. Refused:
/// `DeniedHttpResponse` (at 2) with the status, headers and body, and the `google.rpc` code.
/// Both carry the dynamic metadata (at 4).
async fn answer(
    gateway: &crate::gateway::Gateway,
    resp: Response<crate::body::Body>,
    out: &Facts,
    removed: &[HeaderName],
    w: &mut pb::Writer<'_>,
) {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    if status == http::StatusCode::OK {
        // `status`: OK, an empty `google.rpc.Status`.
        w.message(1, |_| {});
        w.message(3, |w| {
            let audit = AUDIT_HEADER;
            let ours = gateway
                .config
                .forward
                .token_headers()
                .chain(std::iter::once(&audit));
            // `headers` (2) and `headers_to_remove` (5) interleave: protobuf keeps the order
            // within each repeated field, which is all either has.
            for name in ours {
                match parts.headers.get(name).filter(|v| !v.is_empty()) {
                    Some(v) => set(w, 2, name.as_str(), v.as_bytes()),
                    None => w.bytes(5, name.as_str().as_bytes()),
                }
            }
            for name in removed {
                w.bytes(5, name.as_str().as_bytes());
            }
            if gateway.config.forward.strip_authorization && out.token {
                w.bytes(5, b"authorization");
            }
            for name in [RATELIMIT, RATELIMIT_POLICY] {
                if let Some(v) = parts.headers.get(&name) {
                    set(w, 6, name.as_str(), v.as_bytes());
                }
            }
        });
        w.message(4, |w| metadata(w, out));
        return;
    }
    // Refusals are small answers bearward made itself, whole in memory already.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    w.message(1, |w| {
        w.int32(1, rpc_code(status));
        w.bytes(2, out.reason.as_bytes());
    });
    w.message(2, |w| {
        // `envoy.type.v3.HttpStatus`.
        w.message(1, |w| w.int32(1, i32::from(status.as_u16())));
        for (n, v) in &parts.headers {
            set(w, 2, n.as_str(), v.as_bytes());
        }
        w.text(3, &body);
    });
    w.message(4, |w| metadata(w, out));
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        address, Address, HeaderMap, HeaderValue as Header, SocketAddress,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as Req,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message as _;

    /// envoy-types' generated CheckResponse reads what `pb` writes, an allowed and a refused
    /// answer, field for field, with messages longer than a one-byte length.
    #[test]
    fn envoy_types_decodes_what_is_encoded() {
        use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpResponse};
        use envoy_types::pb::google::protobuf::value::Kind;
        let facts = Facts {
            verdict: "allow",
            reason: "ok",
            route: Some("/api".into()),
            identity: None,
            token: true,
        };
        let long = "v".repeat(300);
        let mut ok = Vec::new();
        let w = &mut pb::Writer(&mut ok);
        w.message(1, |_| {});
        w.message(3, |w| {
            set(w, 2, "x-auth-subject", b"alice\xff");
            w.bytes(5, b"authorization");
            set(w, 2, "x-long", long.as_bytes());
            w.bytes(5, b"x_auth_subject");
            set(w, 6, "ratelimit", b"limit=5");
        });
        w.message(4, |w| {
            metadata(w, &facts);
            field(w, "scopes", |w| w.joined(3, &["read", "write"], " "));
            field(w, "none", |w| w.joined(3, &[] as &[&str], " "));
        });
        let got = CheckResponse::decode(&ok[..]).unwrap();
        assert_eq!(got.status.unwrap().code, 0);
        let fields = got.dynamic_metadata.unwrap().fields;
        let text = |k: &str| match &fields[k].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            (text("decision"), text("reason"), text("route")),
            ("allow".into(), "ok".into(), "/api".into())
        );
        assert_eq!(
            (text("scopes"), text("none")),
            ("read write".into(), "".into())
        );
        let Some(HttpResponse::OkResponse(okr)) = got.http_response else {
            panic!("not an OkHttpResponse");
        };
        let h = okr.headers[0].header.as_ref().unwrap();
        assert_eq!((&*h.key, &*h.value), ("x-auth-subject", "alice\u{fffd}"));
        assert_eq!(
            okr.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        let h = okr.headers[1].header.as_ref().unwrap();
        assert_eq!((&*h.key, &*h.value), ("x-long", &*long));
        assert_eq!(okr.headers_to_remove, ["authorization", "x_auth_subject"]);
        let r = okr.response_headers_to_add[0].header.as_ref().unwrap();
        assert_eq!((&*r.key, &*r.value), ("ratelimit", "limit=5"));

        let body = format!("{{\"error\":\"{long}\"}}");
        let mut denied = Vec::new();
        let w = &mut pb::Writer(&mut denied);
        w.message(1, |w| {
            w.int32(1, rpc_code(http::StatusCode::TOO_MANY_REQUESTS));
            w.bytes(2, b"rate_limited");
        });
        w.message(2, |w| {
            w.message(1, |w| w.int32(1, 429));
            set(w, 2, "retry-after", b"3");
            w.text(3, body.as_bytes());
        });
        let got = CheckResponse::decode(&denied[..]).unwrap();
        let status = got.status.unwrap();
        assert_eq!(
            (status.code, &*status.message),
            (tonic::Code::ResourceExhausted as i32, "rate_limited")
        );
        let Some(HttpResponse::DeniedResponse(d)) = got.http_response else {
            panic!("not a DeniedHttpResponse");
        };
        assert_eq!(d.status.unwrap().code, 429);
        let h = d.headers[0].header.as_ref().unwrap();
        assert_eq!((&*h.key, &*h.value), ("retry-after", "3"));
        assert_eq!(d.body, body);
    }

    mod props {
        use super::super::*;
        use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
        use envoy_types::pb::google::protobuf::value::Kind;
        use proptest::prelude::*;
        use prost::Message as _;

        /// Header values as HTTP may carry them, non-UTF-8 bytes included, some long enough
        /// for two- and three-byte lengths.
        fn value() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(prop::num::u8::ANY, 0..40),
                prop::collection::vec(prop::num::u8::ANY, 100..300),
                (1usize..40_000).prop_map(|n| vec![b'v'; n]),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            /// Whatever the headers, lengths and nesting, envoy-types reads back what was
            /// written: each value as it is when it is UTF-8, else with U+FFFD for what is not.
            #[test]
            fn what_is_written_is_what_envoy_reads(
                set_values in prop::collection::vec(value(), 0..6),
                removed in prop::collection::vec("[a-z_-]{1,30}", 0..6),
                body in value(),
                scopes in prop::collection::vec("[a-z:.]{0,20}", 0..5),
                status in 400u16..600,
            ) {
                let mut ok = Vec::new();
                let w = &mut pb::Writer(&mut ok);
                w.message(1, |_| {});
                w.message(3, |w| {
                    for (i, v) in set_values.iter().enumerate() {
                        set(w, 2, &format!("x-h{i}"), v);
                    }
                    for r in &removed {
                        w.bytes(5, r.as_bytes());
                    }
                });
                w.message(4, |w| field(w, "scopes", |w| w.joined(3, &scopes, " ")));
                let got = CheckResponse::decode(&ok[..]).unwrap();
                let Some(HttpResponse::OkResponse(okr)) = got.http_response else {
                    panic!("not an OkHttpResponse");
                };
                prop_assert_eq!(okr.headers.len(), set_values.len());
                for (i, (h, v)) in okr.headers.iter().zip(&set_values).enumerate() {
                    let h = h.header.as_ref().unwrap();
                    prop_assert_eq!(&h.key, &format!("x-h{i}"));
                    prop_assert_eq!(&h.value, &String::from_utf8_lossy(v));
                }
                prop_assert_eq!(&okr.headers_to_remove, &removed);
                let fields = got.dynamic_metadata.unwrap().fields;
                prop_assert_eq!(
                    &fields["scopes"].kind,
                    &Some(Kind::StringValue(scopes.join(" ")))
                );

                let mut denied = Vec::new();
                let w = &mut pb::Writer(&mut denied);
                w.message(1, |w| w.int32(1, rpc_code(http::StatusCode::from_u16(status).unwrap())));
                w.message(2, |w| {
                    w.message(1, |w| w.int32(1, i32::from(status)));
                    w.text(3, &body);
                });
                let got = CheckResponse::decode(&denied[..]).unwrap();
                let Some(HttpResponse::DeniedResponse(d)) = got.http_response else {
                    panic!("not a DeniedHttpResponse");
                };
                prop_assert_eq!(d.status.unwrap().code, i32::from(status));
                prop_assert_eq!(&d.body, &String::from_utf8_lossy(&body));
            }

            /// Any bytes as a CheckRequest: refused as one or made into a request view, never
            /// a panic.
            #[test]
            fn any_message_is_decoded_or_refused(bytes in prop::collection::vec(prop::num::u8::ANY, 0..600)) {
                if let Ok(check) = wire::CheckRequest::decode(bytes::Bytes::from(bytes)) {
                    let _ = http_view(check);
                }
            }
        }
    }

    /// The subset in `wire` reads what envoy-types' generated CheckRequest writes, field for
    /// field, with every field bearward skips set too.
    #[test]
    fn decodes_what_envoy_types_encodes() {
        let peer = |ip: &str, cert: &str| Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            principal: "spiffe://x".into(),
            certificate: cert.into(),
            ..Default::default()
        };
        let full = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer("203.0.113.7", "-----BEGIN%20CERTIFICATE-----")),
                destination: Some(peer("10.0.0.1", "")),
                request: Some(Req {
                    http: Some(HttpRequest {
                        id: "1".into(),
                        method: "POST".into(),
                        headers: [("authorization".to_owned(), "Bearer t".to_owned())].into(),
                        path: "/api/x?q=1".into(),
                        host: "api.test".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/2".into(),
                        header_map: Some(HeaderMap {
                            headers: vec![Header {
                                key: "x-raw".into(),
                                value: String::new(),
                                raw_value: b"v\xff".to_vec(),
                            }],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
        };
        let bytes = bytes::Bytes::from(full.encode_to_vec());
        let got = wire::CheckRequest::decode(bytes).unwrap();
        let a = got.attributes.unwrap();
        let source = a.source.unwrap();
        assert_eq!(&source.certificate[..], b"-----BEGIN%20CERTIFICATE-----");
        assert_eq!(
            &source.address.unwrap().socket_address.unwrap().address[..],
            b"203.0.113.7"
        );
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(
            (&*http.method, &*http.path, &*http.host, &http.scheme[..]),
            ("POST", "/api/x?q=1", "api.test", &b"https"[..])
        );
        assert_eq!(http.headers.len(), 1);
        assert_eq!(&http.headers[0].key[..], b"authorization");
        assert_eq!(&http.headers[0].value[..], b"Bearer t");
        let raw = &http.header_map.unwrap().headers[0];
        assert_eq!(
            (&raw.key[..], &raw.raw_value[..]),
            (&b"x-raw"[..], &b"v\xff"[..])
        );
    }
}
