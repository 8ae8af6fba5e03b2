//! How forwarding fails: the upstream's faults and the client body's, each with its status and
//! its fixed reason.

use http::StatusCode;

/// Why forwarding failed. Each becomes a 502, 504, 408, 400 or 413 in `gateway::Rejection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Connection refused, reset, or the upstream broke the exchange.
    Unreachable,
    /// The upstream's response could not be framed exactly (see [`wire`](super::wire)).
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
    /// The upstream's `max_requests` were in flight for all of `queue_timeout`: 503, sent
    /// nowhere.
    Overloaded,
}

impl ProxyError {
    /// The client's doing, not the upstream's: its body stalled, broke off or ran over the
    /// route's limit.
    pub fn is_clients(self) -> bool {
        matches!(
            self,
            ProxyError::BodyTimeout | ProxyError::ClientBody | ProxyError::BodyTooLarge
        )
    }

    /// Status answered to the client.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::Unreachable | ProxyError::BadResponse | ProxyError::Tls => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout | ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
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
            ProxyError::Overloaded => "upstream_overloaded",
        }
    }
}

impl ProxyError {
    /// The client's fault a request body's own error stands for: a pause past
    /// `body_read_timeout`, a run past `max_body_bytes` ([`NotifyEnd`](super::NotifyEnd)), or
    /// else a body that broke off or was malformed.
    pub(crate) fn of_client_body(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        if e.is::<BodyStalled>() {
            ProxyError::BodyTimeout
        } else if e.is::<BodyTooLarge>() {
            ProxyError::BodyTooLarge
        } else {
            ProxyError::ClientBody
        }
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
