//! Why a request did not reach the upstream, and the one place that becomes a response.

use super::Challenge;
use crate::body::{self, Body};
use crate::routes::Route;
use crate::upstream::ProxyError;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::auth::AuthError;

/// Why a request did not reach the upstream (or failed there). Turned into a response in one
/// place, [`Rejection::into_response`].
#[derive(Debug)]
pub enum Rejection {
    /// 400 with a fixed reason.
    BadRequest(&'static str),
    /// A request whose framing could smuggle another one past: 400 or 501, and the connection
    /// closes, since what follows on it cannot be trusted to frame the next request.
    Framing(Framing),
    /// 404: no route.
    NoRoute,
    /// 405 from something bearward answers itself; the value is its `Allow`.
    MethodNotAllowed(&'static str),
    /// 403: `auth = "deny"`.
    Denied,
    /// 403 with a fixed reason: a decision request from a peer that may not ask.
    Forbidden(&'static str),
    /// The token check said no.
    Auth(AuthError),
    /// The upstream failed.
    Proxy(ProxyError),
    /// bearward itself could not build the upstream request.
    Internal(&'static str),
    /// 503: `max_requests_in_flight` requests are in flight on the listener.
    Overloaded,
    /// 429: the route's `rate_limit` for this caller is used up (headers added by the gateway).
    RateLimited,
    /// 403: the route's AuthZEN decision point said no; with its `reason_user` where the
    /// route passes it on.
    PdpDenied(Option<Arc<str>>),
    /// 503: the route's AuthZEN decision point could not be asked or gave no decision.
    PdpUnavailable,
    /// 503: the upstream's token exchange could not be made.
    ExchangeUnavailable,
}

/// How a request's framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Two Content-Lengths, `chunked` twice, or what request::framing saw in the raw head: 400.
    Ambiguous,
    /// A transfer coding other than a lone `chunked`: 501 (RFC 9112 6.1).
    UnsupportedCoding,
}

/// Whose fault a failed request is, as pingora tells an error's source: the client's (its body
/// broke off, stalled or ran over the limit), the upstream's, or bearward's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

/// What an answer to a refusal is made with besides the refusal itself.
pub struct Answering<'a> {
    pub realm: &'a str,
    /// The route that refused, for what its challenges say beyond the error.
    pub route: Option<&'a Route>,
    pub challenge: Challenge,
    /// DPoP's settings: the `algs` of a DPoP challenge, and the nonce clients must use now
    /// (when nonces are on), made only for an answer that carries one.
    pub dpop: &'a crate::auth::dpop::Verifier,
    /// A gRPC request: answered in gRPC's form ([`grpc_form`]).
    pub grpc: bool,
}

impl Rejection {
    /// Fixed reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(r) => r,
            Rejection::Framing(Framing::Ambiguous) => "ambiguous_framing",
            Rejection::Framing(Framing::UnsupportedCoding) => "unsupported_transfer_coding",
            Rejection::NoRoute => "no_route",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::Denied => "route_denied",
            Rejection::Forbidden(r) => r,
            Rejection::RateLimited => "rate_limited",
            Rejection::Auth(e) => e.reason(),
            Rejection::Proxy(e) => e.reason(),
            Rejection::Internal(r) => r,
            Rejection::Overloaded => "overloaded",
            Rejection::PdpDenied(_) => "pdp_denied",
            Rejection::PdpUnavailable => "pdp_unavailable",
            Rejection::ExchangeUnavailable => "token_exchange_unavailable",
        }
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Framing(Framing::Ambiguous) => StatusCode::BAD_REQUEST,
            Rejection::Framing(Framing::UnsupportedCoding) => StatusCode::NOT_IMPLEMENTED,
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Denied | Rejection::Forbidden(_) | Rejection::PdpDenied(_) => {
                StatusCode::FORBIDDEN
            }
            Rejection::PdpUnavailable | Rejection::ExchangeUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Auth(e) => e.status(),
            Rejection::Proxy(e) => e.status(),
            Rejection::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whose fault it is, if anything failed: `None` for a refusal (a policy, a limit or a
    /// malformed request said no).
    pub fn fault(&self) -> Option<Fault> {
        match self {
            Rejection::Proxy(e) if e.is_clients() => Some(Fault::Client),
            Rejection::Proxy(_) => Some(Fault::Upstream),
            Rejection::Internal(_) | Rejection::Overloaded => Some(Fault::Internal),
            Rejection::PdpUnavailable | Rejection::ExchangeUnavailable => Some(Fault::Upstream),
            _ => None,
        }
    }

    /// The `decision` label of the request's metrics and log line: `deny` for a refusal, and
    /// for a body over the route's limit (a limit said no, as for a declared length); `error`
    /// for anything that failed.
    pub fn decision_label(&self) -> &'static str {
        match (self, self.fault()) {
            (Rejection::Proxy(ProxyError::BodyTooLarge), _) | (_, None) => "deny",
            (_, Some(_)) => "error",
        }
    }

    /// The connection closes after this answer: the rest of the request's body (a smuggled
    /// request, a stalled or broken or oversized body) cannot be trusted to frame the next one.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Rejection::Framing(_)) || self.fault() == Some(Fault::Client)
    }

    /// The one place a rejection becomes a response. `route` is the route that refused, for
    /// what its Bearer challenges say beyond the error.
    pub fn into_response(self, a: &Answering<'_>) -> Response<Body> {
        let (mut resp, text) = self.answer(a);
        if a.grpc {
            return grpc_form(resp, &text);
        }
        *resp.body_mut() = body::full(text);
        resp
    }

    /// The answer without its body, and the body's text (the gRPC form carries the text in a
    /// header instead).
    pub(super) fn answer(self, a: &Answering<'_>) -> (Response<Body>, String) {
        let (realm, route) = (a.realm, a.route);
        let status = self.status();
        let mut text = match &self {
            Rejection::Auth(e) => {
                // Room for the newline too: pushing it onto an exact-length string reallocated.
                let mut t = String::with_capacity(64);
                let _ = write!(t, "{e}");
                t
            }
            Rejection::BadRequest(_) | Rejection::Framing(Framing::Ambiguous) => {
                format!("bad request: {}", self.reason())
            }
            Rejection::PdpDenied(Some(why)) => format!("forbidden: pdp_denied: {why}"),
            other => {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_")
                    + ": "
                    + other.reason()
            }
        };
        text.push('\n');
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Rejection::Auth(e) => {
                let algs = Some(a.dpop.algs());
                // The challenge strings become the header values without a copy.
                let mut challenge = |scheme, algs| {
                    let c = bytes::Bytes::from(e.challenge(scheme, realm, route, algs));
                    if let Ok(v) = HeaderValue::from_maybe_shared(c) {
                        h.append(header::WWW_AUTHENTICATE, v);
                    }
                };
                match (a.challenge, e.is_dpop()) {
                    (Challenge::Bearer, false) => challenge("Bearer", None),
                    (Challenge::Both, false) => {
                        challenge("DPoP", algs);
                        challenge("Bearer", None);
                    }
                    _ => challenge("DPoP", algs),
                }
                // RFC 9449 8: the nonce to use, with the error that asks for one (and with any
                // other DPoP refusal, which saves the client a round trip).
                if let Some(n) = e.is_dpop().then(|| a.dpop.current_nonce()).flatten() {
                    if let Ok(v) = HeaderValue::from_str(&n) {
                        h.insert(http::HeaderName::from_static("dpop-nonce"), v);
                    }
                }
                // The IdP (keys, introspection) cannot answer now; the token may well be good.
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                }
            }
            Rejection::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // RFC 9110 15.6.4: the overload is expected to pass; clients with backoff wait.
            Rejection::PdpUnavailable | Rejection::ExchangeUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Rejection::Overloaded | Rejection::Proxy(ProxyError::Overloaded) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (resp, text)
    }
}

/// A route's answer to a request that carries no token, the refusal most often made (clients
/// that have not logged in yet, probes): made once when the config loads, by
/// [`Rejection::answer`] as every other answer is, and cloned for each such request. Building it
/// afresh (the challenge's text, its validation, the map's inserts, the body's formatting) was
/// a tenth of a 401.
pub(super) struct Prepared {
    /// The challenge the answer was made for: a request that asked for another (none can
    /// without a token, but the answer must match what it would have been) gets a fresh one.
    challenge: Challenge,
    status: StatusCode,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Prepared {
    /// The answer of `route` to a request without a token.
    /// `request_id`: `server.request_id_header`, whose line `finish_response` sets on every
    /// answer. The prepared map has it already, empty, so that setting it replaces a value in
    /// place: a clone of the map has no spare room, and the line added to it grew it (about 550
    /// instructions of a 401).
    pub(super) fn missing_token(
        realm: &str,
        route: &Route,
        dpop: &crate::auth::dpop::Verifier,
        request_id: Option<&http::HeaderName>,
    ) -> Prepared {
        // As `check_token` leaves it for a request without a token.
        let challenge = if route.require_bound_tokens {
            Challenge::Both
        } else {
            Challenge::Bearer
        };
        let a = Answering {
            realm,
            route: Some(route),
            challenge,
            dpop,
            grpc: false,
        };
        let (resp, text) = Rejection::Auth(AuthError::MissingToken).answer(&a);
        let mut headers = resp.headers().clone();
        if let Some(name) = request_id {
            headers.insert(name.clone(), HeaderValue::from_static(""));
        }
        Prepared {
            challenge,
            status: resp.status(),
            headers,
            body: text.into(),
        }
    }

    /// The answer, when it is the one `rej` would get with `challenge` over HTTP.
    pub(super) fn answers(
        &self,
        rej: &Rejection,
        challenge: Challenge,
        grpc: bool,
    ) -> Option<Response<Body>> {
        if grpc
            || challenge != self.challenge
            || !matches!(rej, Rejection::Auth(AuthError::MissingToken))
        {
            return None;
        }
        let mut resp = Response::new(body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        Some(resp)
    }
}

/// The gRPC status for an HTTP status bearward answers, after gRPC's "HTTP to gRPC status code
/// mapping", with two departures that say more: 429 and 413 are RESOURCE_EXHAUSTED (8) and a
/// timeout (504, 408) DEADLINE_EXCEEDED (4).
pub(super) fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// gRPC's percent-encoding of `grpc-message` (PROTOCOL-HTTP2.md): every byte outside printable
/// ASCII, and `%`, as `%XX`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A refusal in gRPC's form: HTTP 200 with no body ("Trailers-Only": the status travels in the
/// one HEADERS frame), `grpc-status` and a percent-encoded `grpc-message`; the other headers
/// (`WWW-Authenticate`, `Retry-After`, `DPoP-Nonce`) stay, so a client can still read the
/// challenge. gRPC clients take any other status or content type as a transport failure.
pub(super) fn grpc_form(resp: Response<Body>, message: &str) -> Response<Body> {
    let code = grpc_status(resp.status());
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::CONNECTION);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    let encoded = percent_encoding::utf8_percent_encode(message.trim_end(), GRPC_MESSAGE);
    if let Ok(v) = HeaderValue::from_str(&encoded.to_string()) {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `%`, control bytes and every non-ASCII byte as `%XX`; printable ASCII as it is, space
    /// included (gRPC's PROTOCOL-HTTP2.md); trailing white space dropped.
    #[test]
    fn grpc_messages_are_percent_encoded_as_grpc_says() {
        let resp = grpc_form(
            Response::new(body::empty()),
            "bad token: 100% \"é\"\twith\nlines \n",
        );
        assert_eq!(
            resp.headers()["grpc-message"],
            "bad token: 100%25 \"%C3%A9\"%09with%0Alines"
        );
    }
}
