//! The `mcp` phase of a bearer route with `mcp` rules: after the token passed, a POST's
//! JSON-RPC body is read (bounded in size and in pauses), its method and target decide the
//! scopes needed, and the body goes upstream unchanged. Routes without `mcp` never come here.

use super::{Gateway, Outcome, Rejection};
use crate::auth::AuthError;
use crate::body::{self, Body};
use crate::mcp::{self, Call, Policy};
use crate::routes::Route;
use crate::upstream::{NotifyEnd, ProxyError};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::time::Duration;

/// The body an `mcp` route reads when it has no `max_body_bytes` of its own.
pub(super) const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// What the access log and the metrics say of an MCP request: the method and target as sent
/// (cut short; never the arguments), and the labels they are counted under.
#[derive(Debug)]
pub struct McpNote {
    pub method: String,
    pub name: Option<String>,
    pub method_label: &'static str,
    pub name_label: String,
}

/// Text for a log line or a status page: at most `max` bytes, on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The whole body, bounded as one on its way upstream is ([`NotifyEnd::bounded`]), or the
/// client's fault: over `limit` (413), a pause past `pause` (408), broken off (400). A body of
/// one frame comes back without a copy.
async fn read_body(body: Body, limit: u64, pause: Duration) -> Result<Bytes, Rejection> {
    // Trailers carry nothing an MCP message needs; they are not forwarded.
    NotifyEnd::bounded(body, pause, limit)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| Rejection::Proxy(ProxyError::of_client_body(e.as_ref())))
}

/// The scopes an operation needs, the route's own first, each once, in a fixed order; with
/// `scopes_any` unmet, its first scope too (one set that grants the operation).
fn needed<'r>(
    route: &'r Route,
    policy: &'r Policy,
    call: &Call<'_>,
    have: &[String],
) -> Vec<&'r str> {
    let mut needed: Vec<&str> = Vec::new();
    for s in route.scopes.iter().chain(policy.scopes(call)) {
        if !needed.contains(&s.as_str()) {
            needed.push(s);
        }
    }
    let has = |s: &String| have.iter().any(|h| h == s);
    if !route.scopes_any.is_empty() && !route.scopes_any.iter().any(has) {
        if let Some(first) = route.scopes_any.first() {
            if !needed.contains(&first.as_str()) {
                needed.push(first);
            }
        }
    }
    needed
}

impl Gateway {
    /// `mcp`: the body decides which scopes the request needs; `have` are the token's. The
    /// outer error is a body that could not be read whole, refused even in audit mode (there
    /// is no whole request to forward); the inner result is the policy's verdict, with the body
    /// back in place for the upstream either way.
    pub(super) async fn check_mcp(
        &self,
        req: &mut Request<Body>,
        route: &Route,
        policy: &Policy,
        have: &[String],
        decision: bool,
        out: &mut Outcome,
    ) -> Result<Result<(), Rejection>, Rejection> {
        // An ingress asking about a request sends no body to decide on.
        if decision {
            return Ok(Err(Rejection::Forbidden("mcp_body_unavailable")));
        }
        let limit = route.max_body.unwrap_or(DEFAULT_MAX_BODY);
        let body = std::mem::replace(req.body_mut(), body::empty());
        let bytes = read_body(body, limit, self.config.server.body_read_timeout).await?;
        let verdict = decide(req.headers(), &bytes, route, policy, have, out);
        *req.body_mut() = body::full(bytes);
        Ok(verdict)
    }
}

/// The operation the body names, checked against its headers and the token's scopes.
fn decide(
    headers: &http::HeaderMap,
    bytes: &[u8],
    route: &Route,
    policy: &Policy,
    have: &[String],
    out: &mut Outcome,
) -> Result<(), Rejection> {
    let call = mcp::parse(bytes).map_err(|e| Rejection::BadRequest(e.reason()))?;
    out.mcp = Some(Box::new(McpNote {
        method: call
            .method
            .as_deref()
            .map(|m| cut(m, 64))
            .unwrap_or_default(),
        name: call.target.as_deref().map(|t| cut(t, 128)),
        method_label: mcp::method_label(call.method.as_deref()),
        name_label: policy.label(&call).to_owned(),
    }));
    mcp::check_headers(headers, &call).map_err(|e| Rejection::BadRequest(e.reason()))?;
    let needed = needed(route, policy, &call, have);
    if needed.iter().all(|s| have.iter().any(|h| h == s)) {
        Ok(())
    } else {
        Err(Rejection::Auth(AuthError::InsufficientScope {
            needed: needed.join(" "),
        }))
    }
}
