//! Route matching: pure and table-driven. A route matches a canonical path exactly (`path`) or
//! by segment-aware prefix (`prefix`), optionally restricted to methods; the first match in file
//! order wins.

use crate::resource::{Documents, ResourceId};
use http::header::{HeaderMap, HeaderName};
use http::Method;
use std::sync::Arc;

/// The headers by which frameworks let a request name another method than its own. Found by a
/// pass over the request's names, most ruled out by their first byte: three `HeaderMap`
/// lookups of names outside the standard set cost 640 instructions per request
/// (benches/instructions.py), the pass about a tenth of that.
fn is_method_override(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.as_bytes()[0] == b'x'
        && matches!(
            n,
            "x-http-method-override" | "x-http-method" | "x-method-override"
        )
}

/// `hosts`: the names a route serves, as Envoy's virtual hosts, nginx's `server_name` and the
/// Gateway API's `hostnames` give them: exact names, and `*.example.com` for every name under
/// `example.com` (one label or more, never `example.com` itself). Compared with the request's
/// name as [`crate::request::host::route_name`] gives it (no port, no trailing dot, lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// Exact names, lower case.
    exact: Vec<Box<str>>,
    /// `*.example.com` kept as `.example.com`.
    suffixes: Vec<Box<str>>,
}

impl Hosts {
    /// Parses the patterns of a `hosts` list; the error names the entry and why.
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Hosts, (usize, String)> {
        let mut hosts = Hosts {
            exact: Vec::new(),
            suffixes: Vec::new(),
        };
        for (i, p) in patterns.into_iter().enumerate() {
            let (wild, name) = match p.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, p),
            };
            let ip6 = name.starts_with('[');
            let fault = if name.contains('*') {
                Some("`*` only as a whole first label (`*.example.com`)")
            } else if !ip6 && name.contains(':') || ip6 && !name.ends_with(']') {
                Some("no port: a route's hosts match whatever port the request names")
            } else if name.ends_with('.') {
                Some("no trailing dot: `api.example.com.` is matched as `api.example.com`")
            } else if !crate::request::host::is_valid(name.as_bytes())
                || crate::request::host::route_name(name.as_bytes()).is_err()
                || !ip6
                    && !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                Some("not a host name (letters, digits, `-`, `_`, `.`) or IP address")
            } else if wild && (ip6 || name.parse::<std::net::Ipv4Addr>().is_ok()) {
                Some("an IP address takes no `*.`")
            } else {
                None
            };
            if let Some(why) = fault {
                return Err((i, format!("{p:?}: {why}")));
            }
            let name = name.to_ascii_lowercase();
            if wild {
                hosts.suffixes.push(format!(".{name}").into());
            } else {
                hosts.exact.push(name.into());
            }
        }
        Ok(hosts)
    }

    /// Does a request for `name` (a [`crate::request::host::route_name`]) belong here?
    pub fn takes(&self, name: &str) -> bool {
        self.exact.iter().any(|e| **e == *name) || self.under_a_wildcard(name)
    }

    fn under_a_wildcard(&self, name: &str) -> bool {
        self.suffixes
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(&**s))
    }

    /// Does every name `other` takes belong here too?
    pub fn covers(&self, other: &Hosts) -> bool {
        other.exact.iter().all(|e| self.takes(e))
            && other
                .suffixes
                .iter()
                .all(|s| self.suffixes.contains(s) || self.under_a_wildcard(&s[1..]))
    }

    /// One name of each pattern, for probing: `*.example.com` as `x.example.com`.
    pub fn samples(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns().map(|p| p.replacen('*', "x", 1))
    }

    /// The patterns as written (lower case).
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.exact
            .iter()
            .map(ToString::to_string)
            .chain(self.suffixes.iter().map(|s| format!("*{s}")))
    }
}

/// `prefix_rewrite`: the first `segments` segments of the path (the route's prefix, a `{name}`
/// counting as one) replaced by `to`, as Envoy's `prefix_rewrite` and Traefik's `StripPrefix`
/// have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRewrite {
    pub segments: usize,
    pub to: Box<str>,
}

impl PrefixRewrite {
    /// The upstream's target for a target (canonical path and query) that the route matched,
    /// and the part of the path taken off (`None` when nothing was).
    pub fn apply(&self, target: &str) -> (String, Option<String>) {
        let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
        // A matched path has the prefix's segments; `cut` ends the last of them.
        let mut cut = 0;
        for _ in 0..self.segments {
            match path.get(cut + 1..).and_then(|p| p.find('/')) {
                Some(i) => cut += 1 + i,
                None => {
                    cut = path.len();
                    break;
                }
            }
        }
        let (taken, rest) = path.split_at(cut);
        let base = match rest {
            "" => &*self.to,
            _ => self.to.trim_end_matches('/'),
        };
        let mut out = String::with_capacity(base.len() + rest.len() + query.len() + 1);
        out.push_str(base);
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        out.push_str(query);
        (out, (!taken.is_empty()).then(|| taken.to_owned()))
    }
}

/// What a route does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Forward without a token check.
    None,
    /// Forward only with a valid bearer token carrying the route's scopes.
    Bearer,
    /// Forward a request without a token as it is, and one with a token only if the token is
    /// valid (Envoy's `allow_missing`, Istio's `RequestAuthentication` alone): the upstream
    /// learns who calls when a caller says, and no one can pass as someone else.
    Optional,
    /// Refuse with 403.
    Deny,
}

impl AuthMode {
    /// The name used in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Bearer => "bearer",
            AuthMode::Optional => "optional",
            AuthMode::Deny => "deny",
        }
    }

    /// Does the route read and check a token (every request's, or the ones that carry one)?
    pub fn reads_token(self) -> bool {
        matches!(self, AuthMode::Bearer | AuthMode::Optional)
    }
}

/// How a route matches paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The canonical path equals this.
    Exact(String),
    /// The canonical path is this, or continues it with a new segment.
    Prefix(String),
    /// `path` or `prefix` with `{name}` segments: each takes one non-empty segment, whose
    /// text a policy reads as `request.params.name`.
    Template(Arc<Template>),
}

/// A path with parameters, `/tenants/{tenant}/`: matched segment by segment, as `Exact` or
/// `Prefix` would match the path with the parameters' values written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written in the config.
    pub source: String,
    /// The segments after the leading `/`; a trailing `/` is a last, empty literal.
    segments: Vec<Segment>,
    /// `prefix`: the path may go on past the segments (after a `/`).
    prefix: bool,
    /// The parameters' names, in path order.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// The index of the parameter in `names`.
    Param(usize),
}

impl Template {
    /// `source` (a canonical path but for its `{name}` segments) as a `path` (`prefix` false)
    /// or a `prefix`. `None` when it has no parameter; `Err` says what is wrong with one.
    pub fn parse(source: &str, prefix: bool) -> Result<Option<Template>, String> {
        if !source.contains(['{', '}']) {
            return Ok(None);
        }
        let mut names: Vec<String> = Vec::new();
        let mut segments = Vec::new();
        for seg in segments_of(source) {
            let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                if seg.contains(['{', '}']) {
                    return Err(format!(
                        "{seg:?}: a parameter is a whole segment, `{{name}}`"
                    ));
                }
                segments.push(Segment::Literal(seg.to_owned()));
                continue;
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "{{{name}}}: a parameter's name is a letter or `_`, then letters, digits and `_`"
                ));
            }
            if names.iter().any(|n| n == name) {
                return Err(format!("{{{name}}} appears twice"));
            }
            segments.push(Segment::Param(names.len()));
            names.push(name.to_owned());
        }
        Ok(Some(Template {
            source: source.to_owned(),
            segments,
            prefix,
            names,
        }))
    }

    /// The path with every parameter as `x`: what the canonical form is checked on.
    pub fn filled(source: &str) -> String {
        let mut out = String::with_capacity(source.len());
        for seg in segments_of(source) {
            out.push('/');
            let param = seg.starts_with('{') && seg.ends_with('}');
            out.push_str(if param { "x" } else { seg });
        }
        out
    }

    /// The parameters' values in `path`, in `names` order, or `None` where it does not match.
    pub fn captures<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let mut values = vec![""; self.names.len()];
        self.walk(path, false, |n, v| values[n] = v)
            .then_some(values)
    }

    /// Does `path` match, its literal segments in any ASCII case with `fold` (the route's
    /// `case_sensitive = false`)? Each parameter's index and value (as sent) go to `param` on
    /// the way, in index order.
    pub fn walk<'p>(
        &self,
        path: &'p str,
        fold: bool,
        mut param: impl FnMut(usize, &'p str),
    ) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut more = true;
        let last = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            if !more {
                return false;
            }
            // Segments are short: a plain scan beats memchr's setup.
            let (s, tail) = match rest.bytes().position(|b| b == b'/') {
                Some(at) => (&rest[..at], Some(&rest[at + 1..])),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if s == l || fold && s.eq_ignore_ascii_case(l) => {}
                // A prefix's trailing `/` takes any continuation, an empty one included.
                Segment::Literal(l) if self.prefix && i == last && l.is_empty() => return true,
                Segment::Literal(_) => return false,
                Segment::Param(_) if s.is_empty() => return false,
                Segment::Param(n) => param(*n, s),
            }
            more = tail.is_some();
            rest = tail.unwrap_or("");
        }
        !more || self.prefix
    }

    /// The template with its literal segments in lower case: what a folding one is compared as.
    fn lowered(&self) -> Template {
        let mut t = self.clone();
        t.source.make_ascii_lowercase();
        for seg in &mut t.segments {
            if let Segment::Literal(l) = seg {
                l.make_ascii_lowercase();
            }
        }
        t
    }

    /// The literal path before the first parameter (`/tenants/` of `/tenants/{t}/x`).
    fn head(&self) -> String {
        let mut out = String::from("/");
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    out.push_str(l);
                    out.push('/');
                }
                Segment::Param(_) => break,
            }
        }
        out
    }
}

/// A path's segments after its leading `/`.
fn segments_of(path: &str) -> std::str::Split<'_, char> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

impl PathMatch {
    /// Does this matcher accept the canonical `path`?
    pub fn matches(&self, path: &str) -> bool {
        self.matches_in(path, false)
    }

    /// [`PathMatch::matches`], with ASCII case folded when `fold` (`case_sensitive = false`).
    pub fn matches_in(&self, path: &str, fold: bool) -> bool {
        match self {
            PathMatch::Exact(p) => path == p || fold && path.eq_ignore_ascii_case(p),
            PathMatch::Prefix(p) => prefix_matches_in(p, path, fold),
            PathMatch::Template(t) => t.walk(path, fold, |_, _| {}),
        }
    }

    /// Does every path this matcher accepts also pass `self`? Used to warn about shadowed
    /// routes; a template is said to cover nothing, and to be covered by a prefix of the
    /// literal path before its first parameter.
    pub fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Exact(b)) => prefix_matches(a, b),
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => prefix_matches(a, b),
            (PathMatch::Prefix(a), PathMatch::Template(t)) => prefix_matches(a, &t.head()),
            (PathMatch::Exact(_) | PathMatch::Template(_), _) => false,
        }
    }

    /// The matcher with its literal text in lower case: a folding route covers what this
    /// covers.
    fn lowered(&self) -> PathMatch {
        match self {
            PathMatch::Exact(p) => PathMatch::Exact(p.to_ascii_lowercase()),
            PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase()),
            PathMatch::Template(t) => PathMatch::Template(Arc::new(t.lowered())),
        }
    }

    /// The path or prefix as written.
    pub fn source(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
            PathMatch::Template(t) => &t.source,
        }
    }

    /// The literal path a matcher starts with: its path or prefix, or a template's part before
    /// its first parameter. Only routes whose matcher takes it can cover this one.
    fn literal_head(&self) -> std::borrow::Cow<'_, str> {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => std::borrow::Cow::Borrowed(p),
            PathMatch::Template(t) => std::borrow::Cow::Owned(t.head()),
        }
    }

    /// `path`, `prefix` (as the config says it).
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "path",
            PathMatch::Template(t) if !t.prefix => "path",
            _ => "prefix",
        }
    }
}

/// Methods are case-sensitive tokens (RFC 9110 9.1), so `post` is not `POST` and misses a
/// route limited to `POST`, yet some upstream servers fold it to `POST`: the request would run
/// under another route's policy. As nginx does, bearward takes only methods of upper-case
/// letters, `-` and `_` (every standard and WebDAV method), in requests and in `methods`.
pub fn is_plain_method(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix_matches_in(prefix, path, false)
}

/// Segment-aware: `/api` takes `/api` and `/api/x`, never `/apix`. With `fold`, in any ASCII
/// case; on bytes, as an HTTP/2 path may hold non-ASCII.
fn prefix_matches_in(prefix: &str, path: &str, fold: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let (prefix, path) = (prefix.as_bytes(), path.as_bytes());
    match path.get(..prefix.len()) {
        Some(head) if head == prefix || fold && head.eq_ignore_ascii_case(prefix) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || prefix.ends_with(b"/") || rest.starts_with(b"/")
        }
        _ => false,
    }
}

/// A route's `source_ranges`: an address is served when it lies in one of `allow` (any address
/// when `allow` is empty: the list names only exceptions) and in none of `deny` (the `!`
/// entries), as nginx's `deny` lines before `allow` and Envoy's RBAC `not_id`.
#[derive(Debug)]
pub struct SourceRanges {
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
}

impl SourceRanges {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
            && !self.deny.iter().any(|n| n.contains(ip))
    }

    /// The entries as written, the `!` ones last.
    pub fn entries(&self) -> impl Iterator<Item = String> + '_ {
        let allow = self.allow.iter().map(ToString::to_string);
        allow.chain(self.deny.iter().map(|n| format!("!{n}")))
    }
}

/// A compiled route. Fields beyond matching are read by the service.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs and metrics: the `name` key, else the path or prefix.
    pub name: Arc<str>,
    /// Path matcher.
    pub matcher: PathMatch,
    /// Allowed methods; `None` means any.
    pub methods: Option<Vec<Method>>,
    /// `hosts`: the request's host must be one of these; `None`: any host, or none.
    pub hosts: Option<Arc<Hosts>>,
    /// `source_ranges`: the client addresses the route serves; `None`: any address.
    pub source_ranges: Option<Arc<SourceRanges>>,
    /// `prefix_rewrite`: what the upstream is asked for in place of the matched prefix.
    pub prefix_rewrite: Option<Arc<PrefixRewrite>>,
    /// `case_sensitive`: `false` folds ASCII case when matching a literal `path` or `prefix`.
    pub case_sensitive: bool,
    /// Index into the config's upstream list; `None`: a route the decision listener answers
    /// for, which the proxy listener has nowhere to send.
    pub upstream: Option<usize>,
    /// `respond`: the route's own answer, in place of an upstream's.
    pub respond: Option<Arc<DirectResponse>>,
    /// The policy.
    pub auth: AuthMode,
    /// Every one of these scopes is needed.
    pub scopes: Vec<String>,
    /// At least one of these is needed, when not empty.
    pub scopes_any: Vec<String>,
    /// Accept the token from the `access_token` query parameter (RFC 6750 2.3).
    pub token_in_query: bool,
    /// Read the token from this header, not `Authorization` (`token_header`).
    pub token_header: Option<http::HeaderName>,
    /// Read the token from the cookie of this name, not `Authorization` (`token_cookie`).
    pub token_cookie: Option<Box<str>>,
    /// Where a browser's page navigation is sent instead of a 401 (`login_url`): the text
    /// before `{url}`, and after it if it has one.
    pub login_url: Option<(Box<str>, Option<Box<str>>)>,
    /// Forward CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
    /// without a token: browsers send them without credentials (Fetch standard), so a bearer
    /// check would fail every cross-origin call.
    pub cors_preflight: bool,
    /// `cors`: preflights answered by bearward, CORS headers on every answer.
    pub cors: Option<std::sync::Arc<crate::cors::CorsPolicy>>,
    /// Audit mode: evaluate and report, but forward whatever the verdict.
    pub audit: bool,
    /// `access_log = false`: no access line for an answer under 400.
    pub quiet: bool,
    /// Largest request body forwarded (`max_body_bytes`, else the server's); `None`: no limit.
    pub max_body: Option<u64>,
    /// `request_timeout` in place of the upstream's; `None`: the upstream's.
    pub request_timeout: Option<std::time::Duration>,
    /// Take `%25` followed by two hex digits in the path ([`crate::request::path::has_double_encoding`]),
    /// for APIs that carry literal percent signs before hex digits; refused (400) otherwise.
    pub allow_encoded_percent: bool,
    /// The RFC 9728 resource identifier (`resource`, else the server's): its metadata URL goes
    /// in the route's Bearer challenges.
    pub resource: Option<Arc<ResourceId>>,
    /// `issuers`: indexes of the issuers whose tokens this route takes, in the order their
    /// introspection endpoints are asked about an opaque token; `None`: any issuer.
    pub issuers: Option<Vec<usize>>,
    /// Only sender-constrained tokens (DPoP- or certificate-bound) pass.
    pub require_bound_tokens: bool,
    /// Only requests with a verified client certificate (the listener's mTLS, or a trusted
    /// proxy's header) pass, whatever `auth` says.
    pub require_client_certificate: bool,
    /// `claims`: every condition must hold.
    pub claims: Vec<ClaimCondition>,
    /// `claims_any`: one condition must hold, when not empty.
    pub claims_any: Vec<ClaimCondition>,
    /// `client_ids`: the token's `azp` (else `client_id`) must be one of these, when not empty.
    pub client_ids: Vec<String>,
    /// RFC 9396 `authorization_details`: each must be met by an object of the token's.
    pub authorization_details: Vec<DetailRequirement>,
    /// `audiences` (or the resource, with `require_resource_audience`): the token's `aud` must
    /// name one of these too, when not empty (RFC 8707).
    pub audiences: Vec<String>,
    /// RFC 9470 `acr_values`: the token's `acr` must be one of these, when not empty.
    pub acr_values: Vec<String>,
    /// RFC 9470 `max_age`: the token's `auth_time` no older than this.
    pub max_age: Option<std::time::Duration>,
    /// `rate_limit`, if set.
    pub rate_limit: Option<RateLimit>,
    /// `mcp`: per-operation scopes read off each POST's JSON-RPC body ([`crate::mcp`]).
    pub mcp: Option<Box<crate::mcp::Policy>>,
    /// `allow_if`: CEL conditions ([`crate::policy`]).
    pub allow_if: Option<Arc<crate::policy::Policy>>,
    /// `authzen`: the question for a policy decision point ([`crate::authzen`]).
    pub authzen: Option<Arc<Ask>>,
}

/// What a route asks its `[authzen.NAME]` policy decision point ([`crate::authzen`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// Index into the config's PDPs.
    pub pdp: usize,
    pub subject_type: String,
    /// The claim whose value is the subject's id.
    pub subject_claim: String,
    pub subject_properties: Vec<String>,
    /// Action names by method; a method not listed goes as itself.
    pub action_names: std::collections::BTreeMap<String, String>,
    pub resource_type: String,
    pub resource_id: AskResource,
    pub context: Vec<ContextItem>,
    /// The PDP's `context.reason_user` may go to the client in a refusal's body.
    pub reason_to_client: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskResource {
    /// The route's `path` or `prefix` as written.
    Route,
    /// The canonical path.
    Path,
    /// A path parameter, by index.
    Param(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextItem {
    ClientIp,
    Time,
    RequestId,
    Method,
    Path,
}

/// What a route's requests are counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The token's `sub`.
    Subject,
    /// The token's `azp`, else `client_id`.
    Client,
    /// The client's IP address (the peer's, or from a trusted proxy's `X-Forwarded-For`), IPv6
    /// by its `ipv6_prefix` network; for `auth = "none"` routes, or any.
    Ip,
    /// A claim, by name or dotted path.
    Claim(String),
}

/// A route's rate limit: `count` requests per `window`, bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub key: LimitKey,
    pub count: u32,
    pub window: std::time::Duration,
    pub burst: u32,
    /// `key = "ip"`: IPv6 clients are counted by their network of this many bits.
    pub ipv6_prefix: u8,
    /// `rate_by`: the claim naming a caller's tier, and each tier's rate (count, window),
    /// its burst the same count; a caller of no listed tier is held to the limit above.
    pub tiers: Option<Box<RateTiers>>,
}

/// A route's `rate_by` and `rates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTiers {
    /// The claim, as written, and its dotted path.
    pub claim: String,
    pub path: Vec<String>,
    pub rates: Vec<(String, u32, std::time::Duration)>,
}

/// One claim condition: the claim at `path` (a dotted path into nested objects; a top-level
/// claim named exactly `raw` wins, so namespaced claims such as `https://x.com/roles` work as
/// written) must equal `value`, or be an array holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    /// The key as written in the config.
    pub raw: String,
    pub path: Vec<String>,
    pub value: String,
}

impl ClaimCondition {
    /// Does the token's claim satisfy this condition? A claim of another type (a number where a
    /// string is asked for) never does.
    pub fn holds(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        match claim_at(claims, &self.raw, &self.path) {
            Some(Value::String(s)) => *s == self.value,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(self.value.as_str())),
            _ => false,
        }
    }
}

/// A route's `respond`: a fixed answer, made once at load and copied per request (the body's
/// bytes are shared).
#[derive(Debug)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
}

impl DirectResponse {
    pub fn response(&self) -> http::Response<crate::body::Body> {
        let mut resp = http::Response::new(crate::body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        resp
    }
}

/// A route's `authorization_details` entry (RFC 9396 2): the `type` an object of the token's
/// `authorization_details` must have, and what its common fields must hold. The RFC leaves each
/// type's meaning to the API; these are the fields it defines for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailRequirement {
    pub kind: String,
    /// `actions`, `locations`, `datatypes`, `privileges`: each value listed must be in the
    /// object's array of that name.
    pub lists: Vec<(&'static str, Vec<String>)>,
    /// `identifier`: the object's must equal it.
    pub identifier: Option<String>,
}

impl DetailRequirement {
    /// Does one of the token's objects meet it? Anything that is not an object with these
    /// members as RFC 9396 types them (a string `type`, arrays of strings) meets nothing.
    pub fn met_by(&self, details: &[serde_json::Value]) -> bool {
        details.iter().any(|d| self.met_by_one(d))
    }

    fn met_by_one(&self, d: &serde_json::Value) -> bool {
        use serde_json::Value;
        if d.get("type").and_then(Value::as_str) != Some(self.kind.as_str()) {
            return false;
        }
        if let Some(id) = &self.identifier {
            if d.get("identifier").and_then(Value::as_str) != Some(id.as_str()) {
                return false;
            }
        }
        self.lists.iter().all(|(field, wanted)| {
            let Some(Value::Array(held)) = d.get(*field) else {
                return false;
            };
            wanted
                .iter()
                .all(|w| held.iter().any(|h| h.as_str() == Some(w.as_str())))
        })
    }
}

/// The claim named `raw`, or else at the dotted `path` into nested objects (what
/// [`claim_path`] made of `raw`): route conditions, claim headers and rate-limit keys read
/// claims through this one rule.
pub fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    raw: &str,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    claims.get(raw).or_else(|| {
        let (first, rest) = path.split_first()?;
        rest.iter()
            .try_fold(claims.get(first)?, |v, seg| v.as_object()?.get(seg))
    })
}

/// A dotted claim path: segments split on `.`, where `\.` is a dot inside a segment. `None`
/// for an empty segment.
pub fn claim_path(raw: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('.') => out.last_mut()?.push('.'),
                Some(other) => {
                    out.last_mut()?.push('\\');
                    out.last_mut()?.push(other);
                }
                None => out.last_mut()?.push('\\'),
            },
            '.' => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    (!out.iter().any(String::is_empty)).then_some(out)
}

impl Route {
    /// The header this route reads its token from: its `token_header`, else `Authorization`.
    pub fn token_header_name(&self) -> &http::HeaderName {
        self.token_header
            .as_ref()
            .unwrap_or(&http::header::AUTHORIZATION)
    }

    /// May a token from the issuer at this index be used here?
    pub fn takes_issuer(&self, issuer: usize) -> bool {
        self.issuers.as_ref().is_none_or(|l| l.contains(&issuer))
    }

    /// Does this route take a request with this method, host name
    /// ([`crate::request::host::route_name`]; `None` when the request names no host) and
    /// canonical path?
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == method) {
                return false;
            }
        }
        if let Some(hosts) = &self.hosts {
            if !host.is_some_and(|h| hosts.takes(h)) {
                return false;
            }
        }
        self.matcher.matches_in(path, !self.case_sensitive)
    }

    /// Would this route catch every request `later` could match?
    pub fn shadows(&self, later: &Route) -> bool {
        let methods_cover = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let hosts_cover = match (&self.hosts, &later.hosts) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let paths_cover = match (self.case_sensitive, later.case_sensitive) {
            (true, true) => self.matcher.covers(&later.matcher),
            // It takes one spelling of what `later` takes in any case.
            (true, false) => false,
            (false, _) => self.matcher.lowered().covers(&later.matcher.lowered()),
        };
        methods_cover && hosts_cover && paths_cover
    }
}

/// Routes in file order, and the index that finds the first match without a scan.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Some route has `hosts`: only then is a request's host name worked out.
    hosts: bool,
    /// `None` for a table short enough that a scan costs less than the walk.
    index: Option<Segments>,
}

/// Tables up to this many routes are scanned: a scan of a few routes is cheaper than hashing
/// each segment of the path, and most sidecars have a handful of routes.
const SCAN_AT_MOST: usize = 16;

/// A trie over path segments, built when the config loads: each node holds the indexes, in
/// file order, of the routes whose matcher ends there. A path's candidates are the routes on
/// the nodes its segments walk through (prefixes) and the one they end on (exact paths): at most
/// one node per segment, whatever the number of routes.
#[derive(Debug, Clone, Default)]
struct Segments {
    /// `prefix = "/"`: every path.
    everything: Vec<usize>,
    /// Routes with path parameters or `case_sensitive = false`: tried on every path (their own
    /// matcher decides).
    unindexed: Vec<usize>,
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: std::collections::HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    /// `prefix = "/a/b"`: a path of these segments, or of these and more.
    prefix: Vec<usize>,
    /// `prefix = "/a/b/"`: these segments and at least one more (possibly empty: `/a/b/`).
    prefix_slash: Vec<usize>,
    /// `path = "/a/b"` (or, ending in an empty segment, `/a/b/`): these segments exactly.
    exact: Vec<usize>,
}

/// A canonical path's segments: `/a/b` is `a`, `b`; `/a/b/` is `a`, `b`, ``; `/` is ``.
fn segments(path: &str) -> std::str::Split<'_, char> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

impl Segments {
    fn new(routes: &[Route]) -> Segments {
        let mut t = Segments::default();
        for (i, r) in routes.iter().enumerate() {
            let (path, list): (&str, fn(&mut Node) -> &mut Vec<usize>) = match &r.matcher {
                PathMatch::Prefix(p) if p == "/" => {
                    t.everything.push(i);
                    continue;
                }
                PathMatch::Prefix(p) => match p.strip_suffix('/') {
                    Some(p) => (p, |n| &mut n.prefix_slash),
                    None => (p, |n| &mut n.prefix),
                },
                PathMatch::Exact(p) => (p, |n| &mut n.exact),
                PathMatch::Template(_) => {
                    t.unindexed.push(i);
                    continue;
                }
            };
            // The trie's keys are segments as written; a folding route is tried everywhere.
            if !r.case_sensitive {
                t.unindexed.push(i);
                continue;
            }
            let mut node = &mut t.root;
            for seg in segments(path) {
                node = node.children.entry(seg.into()).or_default();
            }
            list(node).push(i);
        }
        t
    }

    /// The lowest index among the routes whose matcher takes `path` and for which `take`
    /// holds: each node's list is in file order, so its first taken entry is its best.
    fn first(&self, path: &str, take: impl Fn(usize) -> bool) -> Option<usize> {
        let best = |list: &[usize], found: Option<usize>| {
            let limit = found.unwrap_or(usize::MAX);
            let hit = list
                .iter()
                .copied()
                .take_while(|&i| i < limit)
                .find(|&i| take(i));
            hit.or(found)
        };
        let mut found = best(&self.everything, None);
        if !self.unindexed.is_empty() {
            found = best(&self.unindexed, found);
        }
        let mut node = &self.root;
        let mut segs = segments(path).peekable();
        while let Some(seg) = segs.next() {
            let Some(next) = node.children.get(seg) else {
                break;
            };
            node = next;
            found = best(&node.prefix, found);
            if segs.peek().is_some() {
                found = best(&node.prefix_slash, found);
            } else {
                found = best(&node.exact, found);
            }
        }
        found
    }
}

impl RouteTable {
    /// A table from routes in file order.
    pub fn new(routes: Vec<Route>) -> Self {
        let index = (routes.len() > SCAN_AT_MOST).then(|| Segments::new(&routes));
        let hosts = routes.iter().any(|r| r.hosts.is_some());
        RouteTable {
            routes,
            hosts,
            index,
        }
    }

    /// Does any route name `hosts`? Without one, the request's host plays no part.
    pub fn uses_hosts(&self) -> bool {
        self.hosts
    }

    /// The first route that takes this request, with its index. `host`: the request's
    /// [`crate::request::host::route_name`], if it names one.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        let Some(index) = &self.index else {
            return self.scan(method, host, path);
        };
        let i = index.first(path, |i| self.routes[i].matches(method, host, path))?;
        Some((i, &self.routes[i]))
    }

    /// [`RouteTable::find`] by trying every route in order: what the index must agree with.
    pub fn scan(&self, method: &Method, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(method, host, path))
    }

    /// Would every method override of the request leave it on route `index`?
    ///
    /// A method override (`X-HTTP-Method-Override: DELETE` on a `POST`, or `?_method=DELETE`)
    /// makes Express, Symfony, Laravel and Google's APIs run another method than the one sent,
    /// and routes pick their policy by method: a client allowed to `POST` could `DELETE`. An
    /// override passes only when it names a plain method that the same route would serve;
    /// otherwise the upstream would run the request under another route's policy. A `_method`
    /// field in a form body is out of sight (bodies are streamed, not read).
    pub fn overrides_stay(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        host: Option<&str>,
        path: &str,
        index: usize,
    ) -> bool {
        let named = headers
            .iter()
            .filter(|(k, _)| is_method_override(k))
            .map(|(_, v)| v.as_bytes().to_vec());
        // Frameworks read the query decoded: `%5Fmethod=DEL%45TE` is `_method=DELETE`.
        let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
        let in_query = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == "_method" || k.contains('%') && decode(k) == b"_method").then(|| decode(v))
            });
        named.chain(in_query).all(|m| {
            // The frameworks upper-case the name (Rails forms send `_method=delete`).
            let m = m.trim_ascii().to_ascii_uppercase();
            std::str::from_utf8(&m)
                .ok()
                .filter(|m| is_plain_method(m))
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .and_then(|m| self.find(&m, host, path))
                .is_some_and(|(i, _)| i == index)
        })
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Pairs `(earlier, later)` of indexes where the earlier route always catches the later one.
    /// Only a route whose matcher takes the later one's path or prefix can cover it, so the
    /// candidates come from the same index as lookups: loading 100,000 routes is not quadratic.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let index = match &self.index {
            Some(index) => std::borrow::Cow::Borrowed(index),
            None => std::borrow::Cow::Owned(Segments::new(&self.routes)),
        };
        let mut out = Vec::new();
        for (j, later) in self.routes.iter().enumerate() {
            let path = later.matcher.literal_head();
            let earlier = index.first(&path, |i| i < j && self.routes[i].shadows(later));
            if let Some(i) = earlier {
                out.push((i, j));
            }
        }
        out
    }
}

/// How an upstream may read a path more loosely than the routes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loose {
    /// `/API/x` as `/api/x`: ASP.NET Core, and Express by default.
    Case,
    /// `/a/` as `/a`: Express by default, ASP.NET Core, Spring before 6.
    TrailingSlash,
    /// The same path for another host (or none), sent to the same upstream: an upstream that
    /// serves every host alike (or gets the upstream's own `Host`) serves it as the checked
    /// route's.
    Host,
}

/// A path that a checked route does not take and a later route with a weaker check does, which
/// a looser upstream serves as the checked route's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LooseMatch {
    /// The `bearer` or `deny` route.
    pub checked: usize,
    /// The later route that takes `path` with a weaker check ([`Route::weaker_than`]).
    pub weaker: usize,
    pub path: String,
    pub how: Loose,
}

impl Route {
    /// Does this route let through what `checked` would refuse, by `auth` and scopes? Open
    /// under anything checked; a token check under `deny`; a token check that takes a token
    /// `checked` refuses for its scopes. Claims and policies are not compared.
    pub fn weaker_than(&self, checked: &Route) -> bool {
        match (checked.auth, self.auth) {
            // An optional route takes any request that sends no token.
            (AuthMode::None | AuthMode::Optional, _) => false,
            (_, AuthMode::None | AuthMode::Optional) => true,
            (AuthMode::Deny, AuthMode::Bearer) => true,
            (AuthMode::Bearer, AuthMode::Bearer) => {
                // The fewest scopes this route takes: its `scopes`, and one of `scopes_any`.
                // More scopes never fail either check, so these are the ones to try.
                let takes = |extra: Option<&String>| {
                    let has = |s: &String| self.scopes.contains(s) || extra == Some(s);
                    checked.scopes.iter().all(has)
                        && (checked.scopes_any.is_empty() || checked.scopes_any.iter().any(has))
                };
                match self.scopes_any.is_empty() {
                    true => !takes(None),
                    false => self.scopes_any.iter().any(|extra| !takes(Some(extra))),
                }
            }
            (_, AuthMode::Deny) => false,
        }
    }
}

impl RouteTable {
    /// Paths that differ from a checked route's (`bearer` or `deny`) only in case or a trailing
    /// slash and that a later route with a weaker check takes: an upstream that ignores the
    /// difference runs the checked route's handler for them under that weaker check (none at
    /// all, for an open route). The usual causes: an open catch-all (`prefix = "/"`) under the
    /// checked routes, or an exact path above a broader prefix that needs less. Literal paths
    /// only (a template's segments are anyone's); methods as the checked route lists them, else
    /// GET and every method a route lists.
    pub fn loose_matches(&self) -> Vec<LooseMatch> {
        let mut out = Vec::new();
        // A pass over the later routes per host route: skipped past 10^7 pairs (a table of
        // 100,000 routes loads in seconds, and stays so).
        let host_routes = self.routes.iter().filter(|r| r.hosts.is_some()).count();
        let scan_under_hosts = host_routes.saturating_mul(self.routes.len()) <= 10_000_000;
        let mut probe = vec![Method::GET];
        probe.extend(
            self.routes
                .iter()
                .flat_map(|r| r.methods.iter().flatten().cloned()),
        );
        probe.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        probe.dedup();
        for (checked, r) in self.routes.iter().enumerate() {
            if matches!(r.auth, AuthMode::None | AuthMode::Optional) {
                continue;
            }
            let (path, exact) = match &r.matcher {
                PathMatch::Exact(p) => (p.as_str(), true),
                PathMatch::Prefix(p) => (p.as_str(), false),
                _ => continue,
            };
            // The variants are asked for one of the checked route's own hosts (the others are
            // the `Host` variant's).
            let own = r.hosts.as_ref().and_then(|h| h.samples().next());
            let mut variants = Vec::new();
            let upper = path.to_ascii_uppercase();
            if upper != path {
                variants.push((upper, Loose::Case, own.as_deref()));
            }
            // A prefix takes its path with a slash after it already; `/a/` as a prefix is
            // about what lies under it, not `/a` itself.
            if exact && path != "/" {
                let other = match path.strip_suffix('/') {
                    Some(p) => p.to_owned(),
                    None => format!("{path}/"),
                };
                variants.push((other, Loose::TrailingSlash, own.as_deref()));
            }
            if r.hosts.is_some() {
                variants.push((path.to_owned(), Loose::Host, None));
            }
            // `prefix = "/"` has no case or slash variants to look at.
            let methods = r.methods.as_deref().unwrap_or(&probe);
            for (variant, how, host) in variants {
                let weaker = methods.iter().find_map(|m| {
                    let (j, o) = self.find(m, host, &variant)?;
                    let same_upstream = how != Loose::Host || o.upstream == r.upstream;
                    (j != checked && same_upstream && o.weaker_than(r)).then_some(j)
                });
                if let Some(weaker) = weaker {
                    out.push(LooseMatch {
                        checked,
                        weaker,
                        path: variant,
                        how,
                    });
                }
            }
            if r.hosts.is_some() && scan_under_hosts {
                for m in self.under_a_host_route(checked) {
                    let known = out
                        .iter()
                        .any(|o| (o.checked, o.weaker, o.how) == (checked, m.weaker, Loose::Host));
                    if !known {
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    /// Later routes for every host that take, with a weaker check and on the same upstream, a
    /// path under host route `checked`'s own: other hosts' requests for it reach that upstream
    /// under the weaker check (`/api/x` for `www` under `prefix = "/api"` needing `read`, below
    /// `admin`'s `prefix = "/"` needing `admin`).
    fn under_a_host_route(&self, checked: usize) -> Vec<LooseMatch> {
        let r = &self.routes[checked];
        let mut out = Vec::new();
        for (j, later) in self.routes.iter().enumerate().skip(checked + 1) {
            let methods_meet = match (&r.methods, &later.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => true,
            };
            if later.hosts.is_some()
                || later.upstream != r.upstream
                || !methods_meet
                || !later.weaker_than(r)
            {
                continue;
            }
            let path = later.matcher.literal_head();
            let under = r.matcher.matches_in(&path, !r.case_sensitive);
            if under && !out.iter().any(|m: &LooseMatch| m.weaker == j) {
                out.push(LooseMatch {
                    checked,
                    weaker: j,
                    path: path.into_owned(),
                    how: Loose::Host,
                });
            }
        }
        out
    }
}

/// The RFC 9728 metadata documents of the resources the routes name: one per resource, holding
/// what its bearer routes enforce. `issuers` are the configured issuer identifiers: every
/// bearer route accepts tokens from each of them.
pub fn resource_documents<'a>(
    routes: &[Route],
    issuers: impl Iterator<Item = &'a str> + Clone,
    binding: &crate::resource::Binding,
) -> Documents {
    let mut docs = Documents::default();
    for resource in routes.iter().filter_map(|r| r.resource.as_deref()) {
        if docs.has(resource) {
            continue;
        }
        let own: Vec<&Route> = routes
            .iter()
            .filter(|r| r.auth.reads_token())
            .filter(|r| r.resource.as_deref().is_some_and(|x| x.id == resource.id))
            .collect();
        let scopes = own
            .iter()
            .flat_map(|r| {
                let mcp = r
                    .mcp
                    .as_deref()
                    .into_iter()
                    .flat_map(crate::mcp::Policy::all_scopes);
                r.scopes.iter().chain(&r.scopes_any).chain(mcp)
            })
            .map(String::as_str)
            .collect();
        let detail_types = own
            .iter()
            .flat_map(|r| &r.authorization_details)
            .map(|d| d.kind.as_str())
            .collect();
        let mut methods = vec!["header"];
        if own.iter().any(|r| r.token_in_query) {
            methods.push("query");
        }
        let binding = crate::resource::Binding {
            required: !own.is_empty() && own.iter().all(|r| r.require_bound_tokens),
            ..binding.clone()
        };
        docs.add(
            resource,
            issuers.clone().collect(),
            scopes,
            detail_types,
            methods,
            &binding,
        );
    }
    docs
}

/// Routes for unit tests, built from defaults: no struct literal to update when `Route` grows.
#[cfg(test)]
impl Route {
    /// `auth = "none"`, every method, upstream 0, nothing else set.
    pub(crate) fn for_test(matcher: PathMatch) -> Route {
        Route {
            name: "r".into(),
            matcher,
            methods: None,
            hosts: None,
            prefix_rewrite: None,
            case_sensitive: true,
            upstream: Some(0),
            respond: None,
            quiet: false,
            auth: AuthMode::None,
            scopes: vec![],
            scopes_any: vec![],
            token_in_query: false,
            token_header: None,
            token_cookie: None,
            login_url: None,
            cors_preflight: false,
            cors: None,
            audit: false,
            max_body: None,
            request_timeout: None,
            allow_encoded_percent: false,
            resource: None,
            issuers: None,
            require_bound_tokens: false,
            require_client_certificate: false,
            source_ranges: None,
            claims: Vec::new(),
            claims_any: Vec::new(),
            authorization_details: Vec::new(),
            client_ids: Vec::new(),
            audiences: Vec::new(),
            acr_values: Vec::new(),
            max_age: None,
            rate_limit: None,
            mcp: None,
            allow_if: None,
            authzen: None,
        }
    }

    pub(crate) fn with_methods(mut self, methods: &[&str]) -> Route {
        self.methods = Some(methods.iter().map(|m| m.parse().unwrap()).collect());
        self
    }

    /// `auth = "bearer"` with these `scopes` and `scopes_any`.
    pub(crate) fn bearer(mut self, all: &[&str], any: &[&str]) -> Route {
        self.auth = AuthMode::Bearer;
        self.scopes = all.iter().map(|s| (*s).to_owned()).collect();
        self.scopes_any = any.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(m: PathMatch, methods: Option<&[&str]>) -> Route {
        let r = Route::for_test(m);
        match methods {
            Some(ms) => r.with_methods(ms),
            None => r,
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/"));
        assert!(p.matches("/api/x/y"));
        assert!(!p.matches("/apix"));
        assert!(!p.matches("/ap"));
        assert!(!p.matches("/API"));
        let slash = PathMatch::Prefix("/api/".into());
        assert!(slash.matches("/api/x"));
        assert!(!slash.matches("/api"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn open_routes_taking_loose_variants_of_checked_paths_are_found() {
        let exact = |p: &str| PathMatch::Exact(p.into());
        let prefix = |p: &str| PathMatch::Prefix(p.into());
        let deny = |mut r: Route| {
            r.auth = AuthMode::Deny;
            r
        };
        let found = |routes: Vec<Route>| -> Vec<(usize, usize, String, Loose)> {
            let table = RouteTable::new(routes);
            (table.loose_matches().into_iter())
                .map(|m| (m.checked, m.weaker, m.path, m.how))
                .collect()
        };
        let write = || route(exact("/api/write"), Some(&["POST"])).bearer(&["write"], &[]);
        // An open catch-all under checked routes: each one's variants.
        assert_eq!(
            found(vec![
                write(),
                deny(route(prefix("/internal"), None)),
                route(exact("/v1/"), None).bearer(&[], &[]),
                route(prefix("/"), None),
            ]),
            vec![
                (0, 3, "/API/WRITE".into(), Loose::Case),
                (0, 3, "/api/write/".into(), Loose::TrailingSlash),
                (1, 3, "/INTERNAL".into(), Loose::Case),
                (2, 3, "/V1/".into(), Loose::Case),
                (2, 3, "/v1".into(), Loose::TrailingSlash),
            ]
        );
        // Nothing open catches them; or what catches them checks a token; or it takes other
        // methods only; or it is above (the checked route then takes nothing of it anyway).
        assert_eq!(found(vec![write(), route(prefix("/public"), None)]), vec![]);
        assert_eq!(
            found(vec![
                write(),
                route(prefix("/"), None).bearer(&["write"], &[])
            ]),
            vec![]
        );
        // A broader route that checks a token but not the scope: weaker, as is a token check
        // under a deny route.
        assert_eq!(
            found(vec![
                write(),
                route(prefix("/api"), None).bearer(&["read"], &[])
            ]),
            vec![(0, 1, "/api/write/".into(), Loose::TrailingSlash)]
        );
        assert_eq!(
            found(vec![
                deny(route(exact("/api/keys"), None)),
                route(prefix("/api"), None).bearer(&[], &[]),
            ]),
            vec![(0, 1, "/api/keys/".into(), Loose::TrailingSlash)]
        );
        // scopes_any on either side: the weaker one takes a token the stricter one refuses.
        let api = |all: &[&str], any: &[&str]| route(prefix("/api"), None).bearer(all, any);
        let weaker = |all: &[&str], any: &[&str]| api(all, any).weaker_than(&write());
        assert!(weaker(&[], &["read", "write"]) && weaker(&["read"], &[]));
        assert!(!weaker(&[], &["write"]) && !weaker(&["write", "read"], &["a", "b"]));
        let either = route(exact("/x"), None).bearer(&[], &["a", "b"]);
        assert!(api(&[], &["a", "c"]).weaker_than(&either));
        assert!(
            !api(&["b"], &[]).weaker_than(&either) && !api(&[], &["b", "a"]).weaker_than(&either)
        );
        assert_eq!(
            found(vec![write(), route(prefix("/"), Some(&["GET"]))]),
            vec![]
        );
        assert_eq!(
            found(vec![route(prefix("/"), Some(&["GET"])), write()]),
            vec![]
        );
        // A checked route for every method is probed with what the open routes take.
        assert_eq!(
            found(vec![
                route(prefix("/hooks"), None).bearer(&[], &[]),
                route(prefix("/"), Some(&["PUT", "POST"])),
            ]),
            vec![(0, 1, "/HOOKS".into(), Loose::Case)]
        );
        // Case only, where the path has letters; templates are not guessed at.
        assert_eq!(
            found(vec![
                route(prefix("/v1/2"), None).bearer(&[], &[]),
                route(
                    PathMatch::Template(Arc::new(
                        Template::parse("/t/{id}/x", true).unwrap().unwrap()
                    )),
                    None
                )
                .bearer(&[], &[]),
                route(prefix("/"), None),
            ]),
            vec![(0, 2, "/V1/2".into(), Loose::Case)]
        );
    }

    #[test]
    fn a_route_that_folds_case_takes_every_spelling_and_only_that() {
        let fold = |m: PathMatch| {
            let mut r = route(m, None);
            r.case_sensitive = false;
            r
        };
        let exact = fold(PathMatch::Exact("/api/write".into()));
        for p in ["/api/write", "/API/WRITE", "/Api/wRite"] {
            assert!(exact.matches(&Method::GET, None, p), "{p}");
        }
        for p in [
            "/api/write/",
            "/api/writer",
            "/api",
            "/api/wrıte",
            "/api%2Fwrite",
        ] {
            assert!(!exact.matches(&Method::GET, None, p), "{p}");
        }
        let prefix = fold(PathMatch::Prefix("/Api".into()));
        for p in ["/api", "/API/", "/aPi/x/Y"] {
            assert!(prefix.matches(&Method::GET, None, p), "{p}");
        }
        for p in ["/apix", "/APIX/y", "/ap", "/", "/é"] {
            assert!(!prefix.matches(&Method::GET, None, p), "{p}");
        }
        let slash = fold(PathMatch::Prefix("/api/".into()));
        assert!(
            slash.matches(&Method::GET, None, "/API/x")
                && !slash.matches(&Method::GET, None, "/API")
        );
        // Shadows: a folding route covers every spelling; a case-sensitive one only its own.
        let sensitive = route(PathMatch::Prefix("/api".into()), None);
        assert!(prefix.shadows(&sensitive) && prefix.shadows(&exact));
        assert!(!sensitive.shadows(&exact) && !sensitive.shadows(&prefix));
        // Past the 16-route index, a folding route is found in any case, in file order.
        let mut routes: Vec<Route> = (0..20)
            .map(|n| route(PathMatch::Prefix(format!("/r{n}")), None))
            .collect();
        routes.insert(3, fold(PathMatch::Exact("/r7/Admin".into())));
        let table = RouteTable::new(routes);
        assert_eq!(
            table.find(&Method::GET, None, "/R7/ADMIN").map(|(i, _)| i),
            Some(3)
        );
        assert_eq!(
            table.find(&Method::GET, None, "/r7/admin").map(|(i, _)| i),
            Some(3)
        );
        assert_eq!(
            table.find(&Method::GET, None, "/r7/other").map(|(i, _)| i),
            Some(8)
        );
        // A template folds its literal segments; its parameters' values are taken as sent.
        let t = Template::parse("/Tenants/{tenant}/export", false)
            .unwrap()
            .unwrap();
        let t = fold(PathMatch::Template(Arc::new(t)));
        assert!(t.matches(&Method::GET, None, "/tenants/AcMe/EXPORT"));
        assert!(
            !t.matches(&Method::GET, None, "/tenants//export")
                && !t.matches(&Method::GET, None, "/tenants/a/exports")
        );
        let PathMatch::Template(tpl) = &t.matcher else {
            unreachable!()
        };
        let mut values = Vec::new();
        assert!(tpl.walk("/TENANTS/AcMe/Export", true, |_, v| values.push(v)));
        assert_eq!(values, vec!["AcMe"]);
        // A checked route that folds case takes its own upper-case spelling: nothing to warn.
        let mut checked = fold(PathMatch::Exact("/api/write".into()));
        checked.auth = AuthMode::Bearer;
        let table = RouteTable::new(vec![checked, route(PathMatch::Prefix("/".into()), None)]);
        let hows: Vec<Loose> = table.loose_matches().into_iter().map(|m| m.how).collect();
        assert_eq!(hows, vec![Loose::TrailingSlash]);
    }

    #[test]
    fn exact_is_exact() {
        let p = PathMatch::Exact("/api/write".into());
        assert!(p.matches("/api/write"));
        assert!(!p.matches("/api/write/"));
        assert!(!p.matches("/api/writer"));
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let table = RouteTable::new(vec![
            route(PathMatch::Exact("/api/write".into()), Some(&["POST"])),
            route(PathMatch::Prefix("/api".into()), None),
        ]);
        let post = Method::POST;
        let get = Method::GET;
        assert!(std::ptr::eq(
            table.find(&post, None, "/api/write").unwrap().1,
            &table.routes()[0]
        ));
        assert!(std::ptr::eq(
            table.find(&get, None, "/api/write").unwrap().1,
            &table.routes()[1]
        ));
        assert!(table.find(&get, None, "/other").is_none());
    }

    fn hosts(list: &[&str]) -> Arc<Hosts> {
        Arc::new(Hosts::parse(list.iter().copied()).unwrap())
    }

    #[test]
    fn hosts_take_their_names_and_the_names_under_a_wildcard() {
        let h = hosts(&[
            "API.example.com",
            "*.tenants.example.com",
            "10.0.0.1",
            "[::1]",
        ]);
        for name in [
            "api.example.com",
            "a.tenants.example.com",
            "b.a.tenants.example.com",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(h.takes(name), "{name}");
        }
        for name in [
            "example.com",
            "tenants.example.com",
            "xtenants.example.com",
            "api.example.co",
            "10.0.0.2",
        ] {
            assert!(!h.takes(name), "{name}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.b",
            "*x.example.com",
            "api.example.com:443",
            "api.example.com.",
            "a..b",
            ".a",
            "a b",
            "a,b",
            "[::1]:80",
            "*.[::1]",
            "*.10.0.0.1",
            "a%2eb",
        ] {
            assert!(Hosts::parse([bad]).is_err(), "{bad:?}");
        }
        let err = Hosts::parse(["a.example", "b:80"]).unwrap_err();
        assert_eq!(err.0, 1, "the entry at fault is named");
        assert!(hosts(&["*.example.com"]).covers(&hosts(&["a.example.com", "*.b.example.com"])));
        assert!(!hosts(&["*.example.com"]).covers(&hosts(&["example.com"])));
        assert!(!hosts(&["*.b.example.com"]).covers(&hosts(&["*.example.com"])));
        assert!(!hosts(&["a.example.com"]).covers(&hosts(&["*.a.example.com"])));
    }

    #[test]
    fn a_route_with_hosts_takes_only_their_requests_and_others_go_on() {
        let mut admin = route(PathMatch::Prefix("/".into()), None).bearer(&["admin"], &[]);
        admin.hosts = Some(hosts(&["admin.example.com"]));
        let open = route(PathMatch::Prefix("/".into()), None);
        let table = RouteTable::new(vec![admin, open]);
        assert!(table.uses_hosts());
        let get = Method::GET;
        assert_eq!(
            table.find(&get, Some("admin.example.com"), "/x").unwrap().0,
            0
        );
        assert_eq!(
            table.find(&get, Some("www.example.com"), "/x").unwrap().0,
            1
        );
        assert_eq!(
            table.find(&get, None, "/x").unwrap().0,
            1,
            "no host: not the host's route"
        );
        assert!(!RouteTable::new(vec![route(PathMatch::Prefix("/".into()), None)]).uses_hosts());
        // Neither shadows the other; a host route under one without hosts is shadowed.
        assert!(table.shadowed().is_empty());
        let mut under = route(PathMatch::Prefix("/a".into()), None);
        under.hosts = Some(hosts(&["a.example.com"]));
        let mut wide = route(PathMatch::Prefix("/".into()), None);
        wide.hosts = Some(hosts(&["*.example.com"]));
        let t = RouteTable::new(vec![
            route(PathMatch::Prefix("/".into()), None),
            under.clone(),
        ]);
        assert_eq!(t.shadowed(), vec![(0, 1)]);
        assert_eq!(RouteTable::new(vec![wide, under]).shadowed(), vec![(0, 1)]);
        // The open catch-all takes the checked route's paths for every other host, on the same
        // upstream: found; on another upstream it is another site.
        let found = table.loose_matches();
        assert_eq!(
            found,
            vec![LooseMatch {
                checked: 0,
                weaker: 1,
                path: "/".into(),
                how: Loose::Host
            }]
        );
        // A later route for every host under the host route's prefix: its paths for other
        // hosts, on the same upstream, with a weaker check.
        let mut admin = table.routes()[0].clone();
        admin.name = "admin".into();
        let read = route(PathMatch::Prefix("/api".into()), None).bearer(&["read"], &[]);
        let mut elsewhere_read = read.clone();
        elsewhere_read.upstream = Some(1);
        let under = RouteTable::new(vec![admin, read, elsewhere_read]);
        assert_eq!(
            under.loose_matches(),
            vec![LooseMatch {
                checked: 0,
                weaker: 1,
                path: "/api".into(),
                how: Loose::Host
            }]
        );
        let mut elsewhere = table.routes().to_vec();
        elsewhere[1].upstream = Some(1);
        assert!(RouteTable::new(elsewhere).loose_matches().is_empty());
        // The case variants are asked for the route's own host.
        let mut upper = route(PathMatch::Prefix("/admin".into()), None).bearer(&[], &[]);
        upper.hosts = Some(hosts(&["*.example.com"]));
        let mut other = route(PathMatch::Prefix("/".into()), None);
        other.upstream = Some(1);
        let hows: Vec<Loose> = RouteTable::new(vec![upper, other])
            .loose_matches()
            .into_iter()
            .map(|m| m.how)
            .collect();
        assert_eq!(hows, vec![Loose::Case]);
    }

    #[test]
    fn the_index_agrees_with_a_scan_on_hosts() {
        let mut routes: Vec<Route> = (0..20)
            .map(|i| route(PathMatch::Prefix(format!("/p{i}")), None))
            .collect();
        routes[3].hosts = Some(hosts(&["a.example"]));
        routes[5] = route(PathMatch::Prefix("/p3".into()), None);
        let table = RouteTable::new(routes);
        for host in [None, Some("a.example"), Some("b.example")] {
            for path in ["/p3", "/p3/x", "/p5"] {
                assert_eq!(
                    table.find(&Method::GET, host, path).map(|r| r.0),
                    table.scan(&Method::GET, host, path).map(|r| r.0),
                    "{host:?} {path}"
                );
            }
        }
        assert_eq!(
            table
                .find(&Method::GET, Some("a.example"), "/p3")
                .unwrap()
                .0,
            3
        );
        assert_eq!(
            table
                .find(&Method::GET, Some("b.example"), "/p3")
                .unwrap()
                .0,
            5
        );
    }

    #[test]
    fn a_prefix_rewrite_replaces_the_prefix_segments() {
        let rw = |segments: usize, to: &str| PrefixRewrite {
            segments,
            to: to.into(),
        };
        for (r, target, want, taken) in [
            (rw(1, "/"), "/orders/7?x=1", "/7?x=1", Some("/orders")),
            (rw(1, "/"), "/orders", "/", Some("/orders")),
            (rw(1, "/"), "/orders/", "/", Some("/orders")),
            (rw(1, "/"), "/orders?q", "/?q", Some("/orders")),
            (rw(1, "/v2/"), "/orders/7", "/v2/7", Some("/orders")),
            (rw(1, "/v2"), "/orders", "/v2", Some("/orders")),
            (
                rw(3, "/items"),
                "/v1/acme/items/3/",
                "/items/3/",
                Some("/v1/acme/items"),
            ),
            (rw(0, "/api"), "/x/y", "/api/x/y", None),
            (rw(0, "/"), "/", "/", None),
        ] {
            let (out, t) = r.apply(target);
            assert_eq!((out.as_str(), t.as_deref()), (want, taken), "{target}");
        }
    }

    #[test]
    fn shadowing() {
        let table = RouteTable::new(vec![
            route(PathMatch::Prefix("/api".into()), None),
            route(PathMatch::Prefix("/api/admin".into()), None),
            route(PathMatch::Exact("/apix".into()), None),
            route(PathMatch::Exact("/api/x".into()), Some(&["GET"])),
        ]);
        assert_eq!(table.shadowed(), vec![(0, 1), (0, 3)]);
        let methods = RouteTable::new(vec![
            route(PathMatch::Prefix("/".into()), Some(&["GET"])),
            route(PathMatch::Prefix("/a".into()), Some(&["GET", "POST"])),
            route(PathMatch::Prefix("/b".into()), Some(&["GET"])),
        ]);
        assert_eq!(methods.shadowed(), vec![(0, 2)]);
    }

    #[test]
    fn templates_capture_whole_segments() {
        let t = |src: &str, prefix: bool| Template::parse(src, prefix).unwrap().unwrap();
        let tenant = t("/tenants/{tenant}/", true);
        assert_eq!(tenant.names, ["tenant"]);
        assert_eq!(tenant.captures("/tenants/acme/x/y"), Some(vec!["acme"]));
        assert_eq!(tenant.captures("/tenants/acme/"), Some(vec!["acme"]));
        assert_eq!(tenant.captures("/tenants/acme"), None);
        assert_eq!(tenant.captures("/tenants//x"), None);
        assert_eq!(tenant.captures("/tenantsx/acme/"), None);
        let bare = t("/t/{a}", true);
        assert_eq!(bare.captures("/t/a"), Some(vec!["a"]));
        assert_eq!(bare.captures("/t/a/b"), Some(vec!["a"]));
        assert_eq!(bare.captures("/t/"), None);
        let exact = t("/t/{a}/items/{b}", false);
        assert_eq!(exact.captures("/t/1/items/2"), Some(vec!["1", "2"]));
        assert_eq!(exact.captures("/t/1/items/2/"), None);
        assert_eq!(exact.captures("/t/1/items"), None);
        assert_eq!(exact.captures("/t/1/other/2"), None);
        let slash = t("/t/{a}/", false);
        assert_eq!(slash.captures("/t/1/"), Some(vec!["1"]));
        assert_eq!(slash.captures("/t/1/x"), None);
        assert_eq!(Template::parse("/t/a", true), Ok(None));
        assert!(Template::parse("/t/{a}x", true).is_err());
        assert!(Template::parse("/t/{1a}", true).is_err());
        assert!(Template::parse("/{a}/{a}", true).is_err());
        assert_eq!(Template::filled("/t/{a}/"), "/t/x/");
        // A prefix of the literal head shadows the template; nothing else does.
        let table = RouteTable::new(vec![
            route(PathMatch::Prefix("/tenants".into()), None),
            route(PathMatch::Template(Arc::new(tenant.clone())), None),
            route(PathMatch::Template(Arc::new(tenant)), None),
        ]);
        assert_eq!(table.shadowed(), vec![(0, 1), (0, 2)]);
    }

    /// The index and the plain scan pick the same route, and `shadowed` the same pairs as
    /// comparing every pair, for random tables (prefixes with and without a trailing slash,
    /// exact paths, `/`, methods, overlaps, duplicates, routes that fold case) and random
    /// canonical paths in mixed case.
    mod index_agrees_with_the_scan {
        use super::*;
        use proptest::prelude::*;

        fn path() -> impl Strategy<Value = String> {
            let seg = prop::sample::select(vec!["a", "b", "c", "ab", "a.b", "x-1", "A", "aB"]);
            (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(segs, slash)| {
                let mut p = format!("/{}", segs.join("/"));
                if slash && !segs.is_empty() {
                    p.push('/');
                }
                p
            })
        }

        fn routes() -> impl Strategy<Value = Vec<Route>> {
            let methods = prop::option::of(prop::sample::subsequence(
                vec!["GET", "POST", "DELETE"],
                1..3,
            ));
            let one = (any::<bool>(), path(), methods, 0..4usize, 0..4usize).prop_map(
                |(exact, p, m, t, fold)| {
                    // One in four with its second segment a parameter, where it has one.
                    let templated = match p.split('/').nth(2) {
                        Some(seg) if t == 0 && !seg.is_empty() => {
                            let mut segs: Vec<&str> = p.split('/').collect();
                            segs[2] = "{p}";
                            Template::parse(&segs.join("/"), !exact).unwrap()
                        }
                        _ => None,
                    };
                    // One route in four folds case (`case_sensitive = false`).
                    let folds = fold == 0;
                    let matcher = match templated {
                        Some(t) => PathMatch::Template(Arc::new(t)),
                        None if exact => PathMatch::Exact(p),
                        None => PathMatch::Prefix(p),
                    };
                    let mut r = route(matcher, m.as_deref());
                    r.case_sensitive = !folds;
                    r
                },
            );
            prop::collection::vec(one, 0..60)
        }

        fn quadratic(routes: &[Route]) -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            for (j, later) in routes.iter().enumerate() {
                if let Some(i) = routes[..j].iter().position(|r| r.shadows(later)) {
                    out.push((i, j));
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn same_route_and_same_shadows(routes in routes(), paths in prop::collection::vec(path(), 1..12)) {
                let reference = quadratic(&routes);
                let table = RouteTable::new(routes);
                let indexed = Segments::new(table.routes());
                for p in &paths {
                    for m in [Method::GET, Method::POST, Method::PUT] {
                        let scanned = table.scan(&m, None, p).map(|(i, _)| i);
                        prop_assert_eq!(table.find(&m, None, p).map(|(i, _)| i), scanned, "{} {}", m, p);
                        // Small tables scan: the index is checked on every size directly.
                        let via_index = indexed.first(p, |i| table.routes()[i].matches(&m, None, p));
                        prop_assert_eq!(via_index, scanned, "index: {} {}", m, p);
                    }
                }
                prop_assert_eq!(table.shadowed(), reference);
            }
        }
    }
}
