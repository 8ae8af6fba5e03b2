//! Why a request was refused by the token check, and the RFC 6750 section 3 answer for each.

use crate::routes::Route;
use http::StatusCode;
use std::fmt::Write as _;

/// A refused or failed token check. One variant per reason, so logs and metrics are exact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    MissingToken,
    #[error("malformed Authorization header")]
    MalformedHeader,
    #[error("more than one token in the request")]
    MultipleTokens,
    #[error("token in an unaccepted place")]
    TokenNotAllowedHere,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    BadAlgorithm,
    #[error("token type not accepted")]
    BadType,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("signing key not found")]
    UnknownKey,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("audience not accepted")]
    BadAudience,
    #[error("required claim missing or malformed")]
    BadClaims,
    #[error("token bound to a key")]
    BoundToken,
    #[error("insufficient scope")]
    InsufficientScope { needed: String },
    #[error("signing keys not available")]
    KeysUnavailable,
    #[error("token not active")]
    Inactive,
    #[error("token issuer not accepted on this route")]
    IssuerNotAllowed,
    #[error("introspection endpoint unavailable")]
    IntrospectionUnavailable,
    #[error("introspection endpoint busy")]
    IntrospectionBusy,
    #[error("introspection endpoint gave an invalid answer")]
    IntrospectionInvalid,
    #[error("{}", .0.describe())]
    DpopProof(super::dpop::ProofError),
    #[error("token not bound to a DPoP key")]
    DpopUnbound,
    #[error("DPoP replay check unavailable")]
    DpopReplayUnavailable,
    #[error("DPoP replay cache full")]
    DpopReplayFull,
    #[error("token bound to a client certificate, and none was presented")]
    CertificateMissing,
    #[error("token bound to another client certificate")]
    CertificateMismatch,
    #[error("this resource requires a sender-constrained token")]
    UnboundToken,
    /// A `claims`, `claims_any` or `client_ids` condition failed. The description never says
    /// which value was required.
    #[error("the token's claims do not grant access to this resource")]
    ClaimMismatch,
    /// RFC 9396: no object of the token's `authorization_details` meets one of the route's.
    /// The description never says which.
    #[error("the token's authorization details do not grant access to this resource")]
    AuthorizationDetailsMismatch,
    /// RFC 9470: the route's `acr_values` or `max_age` does not hold; the challenge names
    /// what the route asks for.
    #[error("a stronger or more recent authentication is required")]
    InsufficientUserAuthentication,
    /// The issuer's `revoked` names the token, its subject or its client, or it was issued
    /// before the cut-off.
    #[error("token revoked")]
    Revoked,
    /// `exp` lies further from `iat` (or now) than the issuer's `max_lifetime`.
    #[error("token made to live longer than this resource accepts")]
    LifetimeTooLong,
}

/// The `error` parameter of `WWW-Authenticate`, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    None,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    /// RFC 9449 7.1.
    InvalidDpopProof,
    /// RFC 9449 8.
    UseDpopNonce,
    /// RFC 9470 3.
    InsufficientUserAuthentication,
}

impl AuthError {
    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MalformedHeader
            | AuthError::MultipleTokens
            | AuthError::TokenNotAllowedHere => StatusCode::BAD_REQUEST,
            AuthError::InsufficientScope { .. }
            | AuthError::ClaimMismatch
            | AuthError::AuthorizationDetailsMismatch => StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::IntrospectionBusy
            | AuthError::IntrospectionInvalid
            | AuthError::DpopReplayUnavailable
            | AuthError::DpopReplayFull => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::MissingToken
            | AuthError::KeysUnavailable
            | AuthError::IntrospectionUnavailable
            | AuthError::IntrospectionBusy
            | AuthError::IntrospectionInvalid
            | AuthError::DpopReplayUnavailable
            | AuthError::DpopReplayFull => ErrorCode::None,
            AuthError::DpopProof(super::dpop::ProofError::Nonce) => ErrorCode::UseDpopNonce,
            AuthError::DpopProof(_) => ErrorCode::InvalidDpopProof,
            AuthError::MalformedHeader
            | AuthError::MultipleTokens
            | AuthError::TokenNotAllowedHere => ErrorCode::InvalidRequest,
            AuthError::InsufficientScope { .. }
            | AuthError::ClaimMismatch
            | AuthError::AuthorizationDetailsMismatch => ErrorCode::InsufficientScope,
            AuthError::InsufficientUserAuthentication => ErrorCode::InsufficientUserAuthentication,
            _ => ErrorCode::InvalidToken,
        }
    }

    /// A fixed reason for logs and metrics (bounded label set).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedHeader => "malformed_authorization",
            AuthError::MultipleTokens => "multiple_tokens",
            AuthError::TokenNotAllowedHere => "token_not_allowed_here",
            AuthError::TooLarge => "token_too_large",
            AuthError::Malformed => "malformed_token",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::BadType => "bad_type",
            AuthError::UnknownIssuer => "bad_issuer",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::BadAudience => "bad_audience",
            AuthError::BadClaims => "bad_claims",
            AuthError::BoundToken => "bound_token",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Inactive => "inactive_token",
            AuthError::IssuerNotAllowed => "issuer_not_allowed",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
            AuthError::IntrospectionBusy => "introspection_overloaded",
            AuthError::IntrospectionInvalid => "introspection_invalid_answer",
            AuthError::DpopProof(e) => e.reason(),
            AuthError::DpopUnbound => "dpop_token_not_bound",
            AuthError::DpopReplayUnavailable => "dpop_replay_store_down",
            AuthError::DpopReplayFull => "dpop_replay_cache_full",
            AuthError::CertificateMissing => "certificate_missing",
            AuthError::CertificateMismatch => "certificate_mismatch",
            AuthError::UnboundToken => "unbound_token",
            AuthError::ClaimMismatch => "claim_mismatch",
            AuthError::AuthorizationDetailsMismatch => "authorization_details_mismatch",
            AuthError::InsufficientUserAuthentication => "insufficient_user_authentication",
            AuthError::Revoked => "token_revoked",
            AuthError::LifetimeTooLong => "lifetime_too_long",
        }
    }

    /// The `WWW-Authenticate` value for a refusal on `route`. The description is fixed text: it
    /// never echoes the token and never says more about a signature than that it failed.
    ///
    /// On a route with an RFC 9728 `resource`, the challenge names its metadata URL (RFC 9728
    /// 5.1), and a 401 also names the scopes the route takes (RFC 6750 3 allows `scope` in any
    /// challenge): MCP clients ask for those rather than for all of `scopes_supported`. Without
    /// a `resource` the operator has not opted in to discovery, and scope names stay unsaid
    /// until a client shows a valid token.
    pub fn www_authenticate(&self, realm: &str, route: Option<&Route>) -> String {
        self.challenge("Bearer", realm, route, None)
    }

    /// The challenge in `scheme` (`Bearer`, or `DPoP` with its `algs`, RFC 9449 7.1).
    pub fn challenge(
        &self,
        scheme: &str,
        realm: &str,
        route: Option<&Route>,
        algs: Option<&str>,
    ) -> String {
        // Pushed piece by piece: `format!` and `write!` made this about 1,200 instructions of
        // every 401 (benches/instructions.py).
        let mut v = String::with_capacity(96);
        for piece in [scheme, " realm=\"", realm, "\""] {
            v.push_str(piece);
        }
        if let Some(algs) = algs {
            for piece in [", algs=\"", algs, "\""] {
                v.push_str(piece);
            }
        }
        if let Some((route, resource)) = route.and_then(|r| Some((r, r.resource.as_deref()?))) {
            for piece in [", resource_metadata=\"", &resource.metadata_url, "\""] {
                v.push_str(piece);
            }
            if self.status() == StatusCode::UNAUTHORIZED {
                let mut hint: Vec<&str> = Vec::new();
                for s in route.scopes.iter().chain(&route.scopes_any) {
                    if !hint.contains(&s.as_str()) {
                        hint.push(s);
                    }
                }
                if !hint.is_empty() {
                    let _ = write!(v, ", scope=\"{}\"", hint.join(" "));
                }
            }
        }
        let error = match self.code() {
            ErrorCode::None => return v,
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::UseDpopNonce => "use_dpop_nonce",
            ErrorCode::InsufficientUserAuthentication => "insufficient_user_authentication",
        };
        let _ = write!(v, ", error=\"{error}\", error_description=\"{self}\"");
        if let AuthError::InsufficientScope { needed } = self {
            let _ = write!(v, ", scope=\"{needed}\"");
        }
        if let (AuthError::InsufficientUserAuthentication, Some(route)) = (self, route) {
            if !route.acr_values.is_empty() {
                let _ = write!(v, ", acr_values=\"{}\"", route.acr_values.join(" "));
            }
            if let Some(max_age) = route.max_age {
                let _ = write!(v, ", max_age=\"{}\"", max_age.as_secs());
            }
        }
        v
    }

    /// Is this a refusal of the DPoP proof itself (answered with a DPoP challenge whatever
    /// the scheme)?
    pub fn is_dpop(&self) -> bool {
        matches!(self, AuthError::DpopProof(_) | AuthError::DpopUnbound)
    }
}
