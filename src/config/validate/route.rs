//! `[[routes]]`: matchers, methods, policy, scopes, limits.

use super::Ctx;
use crate::config::file::*;
use crate::config::*;
use crate::request::path::{canonicalize_with, PathOptions};
use crate::routes::{AuthMode, PathMatch, Route};
use std::sync::Arc;
use toml::Spanned;

pub(super) fn scope_list(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
) -> Vec<String> {
    let Some(v) = v else { return Vec::new() };
    let mut out = Vec::new();
    for (i, s) in v.get_ref().iter().enumerate() {
        let scope = s.get_ref();
        // RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if valid {
            out.push(scope.clone());
        } else {
            cx.err(
                s.span(),
                &format!("{key}[{i}]"),
                format!("{scope:?} is not a valid scope token (RFC 6749 section 3.3)"),
            );
        }
    }
    out
}

/// `prefix_rewrite`: on a `prefix` route (not a gRPC service's: its method paths are fixed)
/// that forwards, a canonical absolute path.
fn prefix_rewrite(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    matcher: Option<&PathMatch>,
    key: &str,
    path_opts: PathOptions,
    ok: &mut bool,
) -> Option<Arc<crate::routes::PrefixRewrite>> {
    let to = r.prefix_rewrite.as_ref()?;
    let fault = if r.prefix.is_none() {
        Some("only applies to a route with `prefix` (a gRPC service's method paths are fixed)")
    } else if r.upstream.is_none() {
        Some("only applies to a route that forwards (it has no upstream)")
    } else if !to.get_ref().starts_with('/')
        || to.get_ref().contains(['?', '#', '{', '}'])
        || canonicalize_with(to.get_ref(), path_opts).ok().as_deref() != Some(to.get_ref().as_str())
    {
        Some("must be a canonical absolute path, without query or `{name}` (e.g. \"/\" or \"/v2/orders\")")
    } else {
        None
    };
    if let Some(why) = fault {
        cx.err(to.span(), key, why);
        *ok = false;
        return None;
    }
    let source = matcher?.source();
    let segments = source.split('/').filter(|s| !s.is_empty()).count();
    Some(Arc::new(crate::routes::PrefixRewrite {
        segments,
        to: to.get_ref().as_str().into(),
    }))
}

/// `hosts`: at least one name, each a host name or `*.` and one, no port.
fn hosts(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    key: &str,
    ok: &mut bool,
) -> Option<Arc<crate::routes::Hosts>> {
    let list = r.hosts.as_ref()?;
    if list.get_ref().is_empty() {
        cx.err(
            list.span(),
            key,
            "an empty list takes no request: leave hosts out to take every host",
        );
        *ok = false;
        return None;
    }
    match crate::routes::Hosts::parse(list.get_ref().iter().map(|h| h.get_ref().as_str())) {
        Ok(h) => Some(Arc::new(h)),
        Err((at, why)) => {
            cx.err(list.get_ref()[at].span(), &format!("{key}[{at}]"), why);
            *ok = false;
            None
        }
    }
}

pub(super) fn route(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &Spanned<RouteFile>,
    upstreams: &[String],
    server: &ServerConfig,
    decision: bool,
) -> Option<Route> {
    let path_opts = server.path;
    let span = r.span();
    let r = r.get_ref();
    let key = |k: &str| format!("routes[{i}].{k}");
    let mut ok = true;

    let matcher = matcher(cx, i, r, &span, path_opts, &mut ok);

    let methods = methods(cx, i, r, &mut ok);
    let hosts = hosts(cx, r, &key("hosts"), &mut ok);
    let source_ranges = match &r.source_ranges {
        Some(list) if list.get_ref().is_empty() => {
            cx.err(
                list.span(),
                &key("source_ranges"),
                "an empty list takes no request: leave source_ranges out to take every address",
            );
            ok = false;
            None
        }
        Some(list) => {
            // `!` entries are the exceptions.
            let mut ranges = crate::routes::SourceRanges {
                allow: Vec::new(),
                deny: Vec::new(),
            };
            for (n, e) in list.get_ref().iter().enumerate() {
                let k = format!("{}[{n}]", key("source_ranges"));
                let text = e.get_ref().trim();
                let (to, text) = match text.strip_prefix('!') {
                    Some(rest) => (&mut ranges.deny, rest),
                    None => (&mut ranges.allow, text),
                };
                to.extend(cx.ip_net(text, e.span(), &k));
            }
            Some(Arc::new(ranges))
        }
        None => None,
    };
    let prefix_rewrite = prefix_rewrite(
        cx,
        r,
        matcher.as_ref(),
        &key("prefix_rewrite"),
        path_opts,
        &mut ok,
    );
    let case_sensitive = match &r.case_sensitive {
        Some(c) if !*c.get_ref() => {
            if r.grpc_service.is_some() {
                cx.err(
                    c.span(),
                    &key("case_sensitive"),
                    "gRPC service and method names are case-sensitive: leave it out",
                );
                ok = false;
            }
            false
        }
        _ => true,
    };
    let upstream = match &r.upstream {
        Some(u) if r.respond.is_some() => {
            cx.err(
                u.span(),
                &key("upstream"),
                "a route that responds itself (respond) forwards nowhere: leave one out",
            );
            None
        }
        Some(u) => upstream_index(cx, i, u, upstreams).map(Some),
        None if r.respond.is_some() => Some(None),
        // Decision mode needs no upstream: the ingress forwards what bearward allows.
        None if decision => Some(None),
        None => {
            cx.err(
                span.clone(),
                &key("upstream"),
                "is required: the upstream this route forwards to (only a config with a \
                 [decision] listener may leave it out, for routes the ingress forwards)",
            );
            None
        }
    };

    let auth = match r.auth.as_ref().map(|a| *a.get_ref()) {
        None | Some(AuthFile::Bearer) => AuthMode::Bearer,
        Some(AuthFile::None) => AuthMode::None,
        Some(AuthFile::Optional) => AuthMode::Optional,
        Some(AuthFile::Deny) => AuthMode::Deny,
    };
    let token_header = check_text(cx, &mut ok, &r.token_header, &key("token_header"), |t| {
        token_header_name(t, auth)
    });
    let has_header = r.token_header.is_some();
    let token_cookie = check_text(cx, &mut ok, &r.token_cookie, &key("token_cookie"), |t| {
        token_cookie_name(t, auth, has_header)
    });
    let login_url = check_text(cx, &mut ok, &r.login_url, &key("login_url"), |t| {
        login_url(t, auth)
    });
    let scopes = scope_list(cx, &r.scopes, &key("scopes"));
    let scopes_any = scope_list(cx, &r.scopes_any, &key("scopes_any"));
    if auth != AuthMode::Bearer {
        for (k, v) in [("scopes", &r.scopes), ("scopes_any", &r.scopes_any)] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    &key(k),
                    format!("scopes only apply to auth = \"bearer\"{}", not_bearer(auth)),
                );
                ok = false;
            }
        }
    }
    if let Some(v) = &r.scopes_any {
        if v.get_ref().is_empty() {
            cx.err(
                v.span(),
                &key("scopes_any"),
                "an empty list can never be satisfied",
            );
            ok = false;
        }
    }

    // What a token must hold to pass is a requirement only where every request needs one; which
    // tokens are believed at all (their audience, their binding) matters wherever one is read.
    if auth != AuthMode::Bearer {
        let spans = [
            ("claims", r.claims.as_ref().map(Spanned::span)),
            ("claims_any", r.claims_any.as_ref().map(Spanned::span)),
            ("client_ids", r.client_ids.as_ref().map(Spanned::span)),
            (
                "authorization_details",
                r.authorization_details.as_ref().map(Spanned::span),
            ),
            ("acr_values", r.acr_values.as_ref().map(Spanned::span)),
            ("max_age", r.max_age.as_ref().map(Spanned::span)),
        ];
        for (k, span) in spans {
            if let Some(span) = span {
                cx.err(
                    span,
                    &key(k),
                    format!("only applies to auth = \"bearer\"{}", not_bearer(auth)),
                );
                ok = false;
            }
        }
    }
    if !auth.reads_token() {
        let spans = [
            ("audiences", r.audiences.as_ref().map(Spanned::span)),
            (
                "require_resource_audience",
                r.require_resource_audience.as_ref().map(Spanned::span),
            ),
        ];
        for (k, span) in spans {
            if let Some(span) = span {
                cx.err(span, &key(k), reads_no_token(auth));
                ok = false;
            }
        }
    }
    if let Some(b) = r.require_bound_tokens.as_ref().filter(|b| *b.get_ref()) {
        if !auth.reads_token() {
            cx.err(b.span(), &key("require_bound_tokens"), reads_no_token(auth));
            ok = false;
        }
    }
    // Only a `true` needs checking: `cors_preflight = false` is the default, fine anywhere.
    let cors_preflight = r.cors_preflight.as_ref().filter(|c| *c.get_ref());
    if let Some(c) = cors_preflight {
        let problem = if !auth.reads_token() {
            Some(reads_no_token(auth))
        } else if methods
            .as_ref()
            .is_some_and(|ms: &Vec<http::Method>| !ms.contains(&http::Method::OPTIONS))
        {
            Some("preflights are OPTIONS requests: add \"OPTIONS\" to this route's methods".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            cx.err(c.span(), &key("cors_preflight"), problem);
            ok = false;
        }
    }

    let name: Arc<str> = match (&r.name, &matcher) {
        (Some(n), _) => {
            let valid = !n.get_ref().is_empty()
                && n.get_ref().len() <= 64
                && n.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
            if !valid {
                cx.err(
                    n.span(),
                    &key("name"),
                    "use 1 to 64 characters of A-Z a-z 0-9 _ - . /",
                );
                ok = false;
            }
            n.get_ref().as_str().into()
        }
        (None, Some(m)) if m.kind() == "prefix" => format!("{}*", m.source()).into(),
        (None, Some(m)) => m.source().into(),
        (None, None) => format!("routes[{i}]").into(),
    };
    // Routes for several hosts often share a path: the first host tells them apart in logs and
    // metrics (`admin.example.com/*`).
    let name = match (&r.name, hosts.as_ref().and_then(|h| h.patterns().next())) {
        (None, Some(host)) => format!("{host}{name}").into(),
        _ => name,
    };

    let resource = cx
        .resource(&r.resource, &key("resource"), path_opts)
        .or_else(|| server.resource.clone());
    let audiences = route_audiences(cx, r, resource.as_deref(), &key);
    let acr_values: Vec<String> = match &r.acr_values {
        Some(list)
            if list.get_ref().is_empty()
                || list
                    .get_ref()
                    .iter()
                    .any(|a| a.get_ref().is_empty() || a.get_ref().contains(['"', '\\'])) =>
        {
            cx.err(
                list.span(),
                &key("acr_values"),
                "must list at least one non-empty value without quotes or backslashes",
            );
            Vec::new()
        }
        Some(list) => list.get_ref().iter().map(|a| a.get_ref().clone()).collect(),
        None => Vec::new(),
    };
    let max_age = r.max_age.as_ref().map(|_| {
        cx.duration(
            &r.max_age,
            &key("max_age"),
            Duration::from_secs(0),
            (Duration::from_secs(1), Duration::from_secs(366 * 24 * 3600)),
        )
    });
    let cors = cors(cx, r, &key, methods.as_deref(), server);
    if let (Some(c), Some(_)) = (&r.cors, cors_preflight) {
        cx.err(
            c.span(),
            &key("cors"),
            "give cors (bearward answers preflights) or cors_preflight (the upstream does), not both",
        );
        ok = false;
    }
    let mcp = mcp_policy(cx, r, &key, auth);
    let allow_if = allow_if(cx, r, &key, matcher.as_ref());
    if !ok {
        return None;
    }
    Some(Route {
        name,
        matcher: matcher?,
        methods,
        hosts,
        source_ranges,
        prefix_rewrite,
        case_sensitive,
        upstream: upstream?,
        respond: respond(cx, r, &key("respond")),
        quiet: r.access_log.as_ref().is_some_and(|l| !*l.get_ref()),
        auth,
        scopes,
        scopes_any,
        token_in_query: r.token_in_query.unwrap_or(false),
        token_header,
        token_cookie,
        login_url,
        cors_preflight: cors_preflight.is_some(),
        cors,
        audit: r.mode.as_ref().map_or(server.mode, |m| *m.get_ref()) == Mode::Audit,
        max_body: cx
            .max_body(&r.max_body_bytes, &key("max_body_bytes"))
            .or(server.max_body_bytes),
        request_timeout: r.request_timeout.as_ref().map(|_| {
            let long = (Duration::from_millis(1), Duration::from_secs(3600));
            cx.duration(
                &r.request_timeout,
                &key("request_timeout"),
                Duration::ZERO,
                long,
            )
        }),
        allow_encoded_percent: r.allow_encoded_percent.unwrap_or(false),
        resource,
        // Resolved against the validated issuers by the caller.
        issuers: None,
        require_bound_tokens: r
            .require_bound_tokens
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
        require_client_certificate: r
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
        rate_limit: rate_limit(cx, r.rate_limit.as_ref(), &key("rate_limit"), auth),
        claims: claim_conditions(cx, &r.claims, &key("claims")),
        claims_any: claim_conditions(cx, &r.claims_any, &key("claims_any")),
        authorization_details: authorization_details(
            cx,
            r.authorization_details.as_ref(),
            &key("authorization_details"),
        ),
        client_ids: r
            .client_ids
            .as_ref()
            .map(|l| l.get_ref().iter().map(|c| c.get_ref().clone()).collect())
            .unwrap_or_default(),
        audiences,
        acr_values,
        max_age,
        mcp,
        allow_if: allow_if?,
        // Resolved against the validated PDPs by the caller.
        authzen: None,
    })
}

/// `allow_if`: each expression compiled against the route's path parameters; a problem is
/// reported at the expression's key with its column in the expression.
fn allow_if(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    key: &dyn Fn(&str) -> String,
    matcher: Option<&PathMatch>,
) -> Option<Option<Arc<crate::policy::Policy>>> {
    let Some(v) = &r.allow_if else {
        return Some(None);
    };
    let params: &[String] = match matcher {
        Some(PathMatch::Template(t)) => &t.names,
        _ => &[],
    };
    let list: Vec<(std::ops::Range<usize>, String, &str)> = match v.get_ref() {
        AllowIfFile::One(s) => vec![(v.span(), key("allow_if"), s.as_str())],
        AllowIfFile::All(l) if l.is_empty() => {
            cx.err(
                v.span(),
                &key("allow_if"),
                "an empty list: leave the key out",
            );
            return None;
        }
        AllowIfFile::All(l) => l
            .iter()
            .enumerate()
            .map(|(j, s)| (v.span(), key(&format!("allow_if[{j}]")), s.as_str()))
            .collect(),
    };
    let mut conditions = Vec::new();
    let mut ok = true;
    for (span, k, source) in list {
        match crate::policy::Condition::compile(source, params) {
            Ok(c) => conditions.push(c),
            Err(e) => {
                cx.err(span, &k, e.to_string());
                ok = false;
            }
        }
    }
    ok.then(|| Some(Arc::new(crate::policy::Policy::new(conditions))))
}

/// `mcp`: scopes per method, tool, prompt and resource prefix, each list checked as `scopes`
/// are; `"*"` is the default of tools, prompts and resources.
fn mcp_policy(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    key: &dyn Fn(&str) -> String,
    auth: AuthMode,
) -> Option<Box<crate::mcp::Policy>> {
    let m = r.mcp.as_ref()?;
    if auth != AuthMode::Bearer {
        cx.err(
            m.span(),
            &key("mcp"),
            format!("only applies to auth = \"bearer\"{}", not_bearer(auth)),
        );
        return None;
    }
    if r.upstream.is_none() {
        cx.err(
            m.span(),
            &key("mcp"),
            "needs the route's upstream: the rules read each request's body, which a decision \
             request (auth_request, forward_auth, ext_authz) does not carry",
        );
        return None;
    }
    let table = |cx: &mut Ctx<'_>, t: &Option<ScopeTable>, name: &str, star: bool| {
        let mut named = std::collections::HashMap::new();
        let mut default = None;
        let Some(t) = t else {
            return (named, default);
        };
        for (k, v) in t.get_ref() {
            let at = key(&format!("mcp.{name}.{k:?}"));
            let scopes = scope_list(cx, &Some(v.clone()), &at);
            if k.is_empty() || (k == "*" && !star) {
                let why = if k.is_empty() {
                    "an empty name matches nothing"
                } else {
                    "methods are named one by one (\"*\" is for tools, prompts and resources)"
                };
                cx.err(v.span(), &at, why);
            } else if k == "*" {
                default = Some(scopes);
            } else {
                named.insert(k.clone(), scopes);
            }
        }
        (named, default)
    };
    let mcp = m.get_ref();
    let (methods, _) = table(cx, &mcp.methods, "methods", false);
    let (tools, tools_default) = table(cx, &mcp.tools, "tools", true);
    let (prompts, prompts_default) = table(cx, &mcp.prompts, "prompts", true);
    let (resources, resources_default) = table(cx, &mcp.resources, "resources", true);
    let mut resources: Vec<(String, Vec<String>)> = resources.into_iter().collect();
    // Longest prefix first: the most specific rule decides.
    resources.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Some(Box::new(crate::mcp::Policy {
        methods,
        tools: crate::mcp::Named {
            named: tools,
            default: tools_default,
        },
        prompts: crate::mcp::Named {
            named: prompts,
            default: prompts_default,
        },
        resources,
        resources_default,
    }))
}

/// `audiences`, or with `require_resource_audience` the route's resource identifier.
fn route_audiences(
    cx: &mut Ctx<'_>,
    r: &crate::config::file::RouteFile,
    resource: Option<&crate::resource::ResourceId>,
    key: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let require = r
        .require_resource_audience
        .as_ref()
        .filter(|b| *b.get_ref());
    match (&r.audiences, require) {
        (Some(list), _) => {
            if list.get_ref().is_empty() || list.get_ref().iter().any(|a| a.get_ref().is_empty()) {
                cx.err(
                    list.span(),
                    &key("audiences"),
                    "must list at least one non-empty audience",
                );
            }
            if let Some(b) = require {
                cx.err(
                    b.span(),
                    &key("require_resource_audience"),
                    "give either audiences or require_resource_audience",
                );
            }
            list.get_ref().iter().map(|a| a.get_ref().clone()).collect()
        }
        (None, Some(b)) => match resource {
            Some(res) => vec![res.id.clone()],
            None => {
                cx.err(
                    b.span(),
                    &key("require_resource_audience"),
                    "needs the route's resource (or [server] resource): it is the audience",
                );
                Vec::new()
            }
        },
        (None, None) => Vec::new(),
    }
}

/// Most `authorization_details` entries a route may require, and values in one of their lists:
/// each is looked for in every object of a token's array, on every request.
const MAX_DETAIL_REQUIREMENTS: usize = 16;
const MAX_DETAIL_VALUES: usize = 64;

/// `authorization_details`: each entry's `type` and lists, none of them empty.
fn authorization_details(
    cx: &mut Ctx<'_>,
    list: Option<&Spanned<Vec<Spanned<AuthorizationDetailFile>>>>,
    key: &str,
) -> Vec<crate::routes::DetailRequirement> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.get_ref().is_empty() || list.get_ref().len() > MAX_DETAIL_REQUIREMENTS {
        cx.err(
            list.span(),
            key,
            format!("give 1 to {MAX_DETAIL_REQUIREMENTS} entries, or leave it out"),
        );
    }
    let mut out = Vec::new();
    for (i, entry) in list.get_ref().iter().enumerate() {
        let k = format!("{key}[{i}]");
        let f = entry.get_ref();
        if f.kind.trim().is_empty() {
            cx.err(entry.span(), &format!("{k}.type"), "must name the type");
        }
        let mut lists = Vec::new();
        for (field, values) in [
            ("actions", &f.actions),
            ("locations", &f.locations),
            ("datatypes", &f.datatypes),
            ("privileges", &f.privileges),
        ] {
            let Some(values) = values else { continue };
            if values.is_empty() || values.len() > MAX_DETAIL_VALUES {
                cx.err(
                    entry.span(),
                    &format!("{k}.{field}"),
                    format!(
                        "give 1 to {MAX_DETAIL_VALUES} values, each of which the token's object \
                         must hold, or leave it out"
                    ),
                );
            }
            lists.push((field, values.clone()));
        }
        out.push(crate::routes::DetailRequirement {
            kind: f.kind.clone(),
            lists,
            identifier: f.identifier.clone(),
        });
    }
    out
}

/// `claims` / `claims_any`: each key a claim path, each value a string or an array of strings
/// (every listed value becomes its own condition).
fn claim_conditions(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<std::collections::BTreeMap<String, Spanned<toml::Value>>>>,
    key: &str,
) -> Vec<crate::routes::ClaimCondition> {
    let Some(v) = v else { return Vec::new() };
    if v.get_ref().is_empty() {
        cx.err(
            v.span(),
            key,
            "an empty table: give at least one claim condition or leave it out",
        );
    }
    let mut out = Vec::new();
    for (name, value) in v.get_ref() {
        let k = format!("{key}.{name:?}");
        let Some(path) = crate::routes::claim_path(name) else {
            cx.err(
                value.span(),
                &k,
                "a claim path has no empty segments (write \\. for a dot inside a name)",
            );
            continue;
        };
        let values: Vec<String> = match value.get_ref() {
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_str) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => {
                cx.err(
                    value.span(),
                    &k,
                    "must be a string or a non-empty array of strings (claims compare as strings, exactly)",
                );
                continue;
            }
        };
        for value in values {
            out.push(crate::routes::ClaimCondition {
                raw: name.clone(),
                path: path.clone(),
                value,
            });
        }
    }
    out
}

/// `rate_limit = { key = "subject" | "client" | "ip" | "claim:PATH", rate = "N/s" | "N/m" |
/// "N/h", burst = M, ipv6_prefix = P }` (burst defaults to N; `ipv6_prefix`, for `ip` only, to
/// 64: a host given a /64, as hosts commonly are, would otherwise have 2^64 buckets).
fn rate_limit(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<RateLimitFile>>,
    key: &str,
    auth: AuthMode,
) -> Option<crate::routes::RateLimit> {
    use crate::routes::{LimitKey, RateLimit};
    let f = f?.get_ref();
    let limit_key = match f.key.get_ref().as_str() {
        "subject" => LimitKey::Subject,
        "client" => LimitKey::Client,
        "ip" => LimitKey::Ip,
        k if k.starts_with("claim:") && crate::routes::claim_path(&k[6..]).is_some() => {
            LimitKey::Claim(k[6..].to_owned())
        }
        other => {
            cx.err(
                f.key.span(),
                &format!("{key}.key"),
                format!("{other:?}: use \"subject\", \"client\", \"ip\" or \"claim:PATH\""),
            );
            return None;
        }
    };
    if auth != AuthMode::Bearer && limit_key != LimitKey::Ip {
        cx.err(
            f.key.span(),
            &format!("{key}.key"),
            format!(
                "a request may come without a token on this route (auth = \"{}\"): only \
                 key = \"ip\" can tell every caller apart",
                auth.as_str()
            ),
        );
        return None;
    }
    let (count, window) = parse_rate(cx, &f.rate, &format!("{key}.rate"))?;
    let tiers = rate_tiers(cx, f, key, auth).ok()?;
    let burst = match &f.burst {
        None => count,
        Some(b) if (1..=1_000_000).contains(b.get_ref()) => *b.get_ref() as u32,
        Some(b) => {
            cx.err(b.span(), &format!("{key}.burst"), "must be 1 to 1000000");
            return None;
        }
    };
    let ipv6_prefix = match &f.ipv6_prefix {
        None => 64,
        Some(p) if limit_key != LimitKey::Ip => {
            cx.err(
                p.span(),
                &format!("{key}.ipv6_prefix"),
                "only for key = \"ip\"",
            );
            return None;
        }
        Some(p) => match u8::try_from(*p.get_ref()) {
            Ok(bits @ 1..=128) => bits,
            _ => {
                cx.err(
                    p.span(),
                    &format!("{key}.ipv6_prefix"),
                    "must be 1 to 128 (bits of the client's IPv6 address that make its key)",
                );
                return None;
            }
        },
    };
    Some(RateLimit {
        key: limit_key,
        count,
        window,
        burst,
        ipv6_prefix,
        tiers,
    })
}

/// `"100/s"`, `"600/m"`, `"10000/h"`: the count and its window.
fn parse_rate(
    cx: &mut Ctx<'_>,
    rate: &Spanned<String>,
    key: &str,
) -> Option<(u32, std::time::Duration)> {
    let text = rate.get_ref();
    let parsed = text.split_once('/').and_then(|(n, unit)| {
        let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => std::time::Duration::from_secs(1),
            "m" | "min" | "minute" => std::time::Duration::from_secs(60),
            "h" | "hour" => std::time::Duration::from_secs(3600),
            _ => return None,
        };
        Some((n, window))
    });
    if parsed.is_none() {
        cx.err(
            rate.span(),
            key,
            format!("{text:?} is not a rate: write e.g. \"100/s\", \"600/m\", \"10000/h\""),
        );
    }
    parsed
}

/// Most tiers a limit may have: each is a limiter of its own.
const MAX_RATE_TIERS: usize = 32;

/// `rate_by` and `rates`, given together, on a route every request of which shows a token.
/// `Ok(None)`: no tiers; `Err`: a problem, reported.
fn rate_tiers(
    cx: &mut Ctx<'_>,
    f: &RateLimitFile,
    key: &str,
    auth: AuthMode,
) -> Result<Option<Box<crate::routes::RateTiers>>, ()> {
    let (by, rates) = match (&f.rate_by, &f.rates) {
        (None, None) => return Ok(None),
        (Some(by), Some(rates)) => (by, rates),
        (by, rates) => {
            let span = (by.as_ref().map(Spanned::span))
                .or_else(|| rates.as_ref().map(Spanned::span))
                .unwrap_or(0..0);
            cx.err(
                span,
                key,
                "give rate_by and rates together (the claim, then each tier's rate)",
            );
            return Err(());
        }
    };
    let claim = by.get_ref().strip_prefix("claim:").unwrap_or_default();
    let Some(path) = crate::routes::claim_path(claim).filter(|_| !claim.is_empty()) else {
        cx.err(
            by.span(),
            &format!("{key}.rate_by"),
            format!(
                "{:?}: write \"claim:PATH\" (the claim naming the tier)",
                by.get_ref()
            ),
        );
        return Err(());
    };
    if auth != AuthMode::Bearer {
        cx.err(
            by.span(),
            &format!("{key}.rate_by"),
            format!("only applies to auth = \"bearer\"{}", not_bearer(auth)),
        );
        return Err(());
    }
    let list = rates.get_ref();
    if list.is_empty() || list.len() > MAX_RATE_TIERS {
        cx.err(
            rates.span(),
            &format!("{key}.rates"),
            format!("give 1 to {MAX_RATE_TIERS} tiers: {{ tier = \"rate\" }}"),
        );
        return Err(());
    }
    let mut out = Vec::new();
    for (tier, rate) in list {
        let (count, window) = parse_rate(cx, rate, &format!("{key}.rates.{tier:?}")).ok_or(())?;
        out.push((tier.clone(), count, window));
    }
    Ok(Some(Box::new(crate::routes::RateTiers {
        claim: claim.to_owned(),
        path,
        rates: out,
    })))
}

/// `prefix` or `path`, in canonical form.
fn matcher(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &RouteFile,
    span: &std::ops::Range<usize>,
    path_opts: PathOptions,
    ok: &mut bool,
) -> Option<PathMatch> {
    let key = |k: &str| format!("routes[{i}].{k}");
    // `grpc_service = "pkg.Service"`: the prefix `/pkg.Service/`, every method of the service.
    let service = r.grpc_service.as_ref().and_then(|g| {
        let name = g.get_ref();
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            cx.err(
                g.span(),
                &key("grpc_service"),
                format!("{name:?} is not a gRPC service name (package.Service: letters, digits, `_` and `.`)"),
            );
            *ok = false;
            return None;
        }
        Some(Spanned::new(g.span(), format!("/{name}/")))
    });
    let given = [
        r.prefix.is_some(),
        r.path.is_some(),
        r.grpc_service.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        let (span, which) = match (&r.path, &r.grpc_service) {
            (Some(p), _) => (p.span(), "path"),
            (None, Some(g)) => (g.span(), "grpc_service"),
            (None, None) => (span.clone(), "prefix"),
        };
        cx.err(
            span,
            &key(which),
            "give one of `prefix`, `path` and `grpc_service`",
        );
        *ok = false;
        return None;
    }
    match (&r.prefix, &r.path, &service) {
        (Some(p), _, _) => templated(cx, p, &key("prefix"), path_opts, true, PathMatch::Prefix),
        (_, Some(p), _) => templated(cx, p, &key("path"), path_opts, false, PathMatch::Exact),
        (_, _, Some(p)) => canonical(cx, p, &key("grpc_service"), path_opts).map(PathMatch::Prefix),
        (None, None, None) => {
            if r.grpc_service.is_none() {
                cx.err(
                    span.clone(),
                    &format!("routes[{i}]"),
                    "needs a `prefix`, a `path` or a `grpc_service`",
                );
            }
            *ok = false;
            None
        }
    }
}

/// `prefix` or `path`, which may have `{name}` segments ([`crate::routes::Template`]): the
/// path with its parameters filled in must be canonical.
fn templated(
    cx: &mut Ctx<'_>,
    p: &Spanned<String>,
    key: &str,
    opts: PathOptions,
    prefix: bool,
    plain: fn(String) -> PathMatch,
) -> Option<PathMatch> {
    let template = match crate::routes::Template::parse(p.get_ref(), prefix) {
        Ok(None) => return canonical(cx, p, key, opts).map(plain),
        Ok(Some(t)) => t,
        Err(e) => {
            cx.err(p.span(), key, e);
            return None;
        }
    };
    let filled = Spanned::new(p.span(), crate::routes::Template::filled(p.get_ref()));
    canonical(cx, &filled, key, opts)?;
    Some(PathMatch::Template(Arc::new(template)))
}

/// `methods`: upper-case names as requests must use; absent means every method. A list with
/// `GET` takes `HEAD` as well: frameworks (Express, Flask, Rails, Go's `ServeMux`) run the GET
/// handler for a HEAD and send its headers, so a route that checked GET alone would let HEAD
/// fall through to a later, laxer route (`auth = "none"` on `/`) and reach that handler
/// unchecked. nginx's `limit_except GET` takes HEAD for the same reason. A HEAD route of its own
/// goes above the GET one.
fn methods(cx: &mut Ctx<'_>, i: usize, r: &RouteFile, ok: &mut bool) -> Option<Vec<http::Method>> {
    let key = |k: &str| format!("routes[{i}].{k}");
    match &r.methods {
        None => None,
        Some(list) if list.get_ref().is_empty() => {
            cx.err(
                list.span(),
                &key("methods"),
                "an empty list matches nothing; leave the key out to match every method",
            );
            *ok = false;
            None
        }
        Some(list) => {
            let mut out = Vec::new();
            for (j, m) in list.get_ref().iter().enumerate() {
                let name = m.get_ref();
                let valid = crate::routes::is_plain_method(name);
                match http::Method::from_bytes(name.as_bytes()) {
                    Ok(method) if valid => out.push(method),
                    _ => {
                        cx.err(
                            m.span(),
                            &format!("routes[{i}].methods[{j}]"),
                            format!("{name:?} is not an HTTP method (methods are upper-case letters, `-` and `_`, e.g. \"GET\")"),
                        );
                        *ok = false;
                    }
                }
            }
            if out.contains(&http::Method::GET) && !out.contains(&http::Method::HEAD) {
                out.push(http::Method::HEAD);
            }
            Some(out)
        }
    }
}

/// Largest `respond` body: an answer made once and kept for every request of the route.
const MAX_RESPOND_BODY: usize = 64 * 1024;

/// `respond`: a status bearward may answer with, a bounded body, and headers it does not write
/// itself (framing, hop-by-hop, the request id).
fn respond(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    key: &str,
) -> Option<Arc<crate::routes::DirectResponse>> {
    let f = r.respond.as_ref()?;
    let span = f.span();
    let before = cx.problems.len();
    let spec = f.get_ref();
    let status = match http::StatusCode::from_u16(spec.status) {
        Ok(s) if (200..600).contains(&spec.status) => s,
        _ => {
            cx.err(
                span.clone(),
                &format!("{key}.status"),
                format!("{} is not a final status (200 to 599)", spec.status),
            );
            http::StatusCode::OK
        }
    };
    let body = spec.body.clone().unwrap_or_default();
    if body.len() > MAX_RESPOND_BODY {
        cx.err(
            span.clone(),
            &format!("{key}.body"),
            format!("is {} bytes, more than {MAX_RESPOND_BODY}", body.len()),
        );
    }
    let mut headers = Vec::new();
    for (name, value) in spec.headers.iter().flatten() {
        let k = format!("{key}.headers.{name:?}");
        let parsed = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        );
        let (Ok(n), Ok(v)) = parsed else {
            cx.err(
                span.clone(),
                &k,
                "is not a header name and value (visible ASCII, no CR or LF)",
            );
            continue;
        };
        // The framing and hop-by-hop lines are bearward's to write, as on upstream answers.
        if crate::headers::is_hop_by_hop(&n) || n == http::header::CONTENT_LENGTH {
            cx.err(
                span.clone(),
                &k,
                "is written by bearward itself (framing and hop-by-hop headers)",
            );
            continue;
        }
        headers.push((n, v));
    }
    if !body.is_empty() && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
        headers.push((
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        ));
    }
    (cx.problems.len() == before).then(|| {
        Arc::new(crate::routes::DirectResponse {
            status,
            headers,
            body: bytes::Bytes::from(body),
        })
    })
}

/// `upstream`: the index of a defined `[upstreams.NAME]`.
fn upstream_index(
    cx: &mut Ctx<'_>,
    i: usize,
    upstream: &Spanned<String>,
    upstreams: &[String],
) -> Option<usize> {
    let key = |k: &str| format!("routes[{i}].{k}");
    match upstreams.iter().position(|u| u == upstream.get_ref()) {
        Some(idx) => Some(idx),
        None => {
            let known = if upstreams.is_empty() {
                "none are defined".to_owned()
            } else {
                format!("defined: {}", upstreams.join(", "))
            };
            cx.err(
                upstream.span(),
                &key("upstream"),
                format!("unknown upstream {:?} ({known})", upstream.get_ref()),
            );
            None
        }
    }
}

pub(super) fn canonical(
    cx: &mut Ctx<'_>,
    p: &Spanned<String>,
    key: &str,
    opts: PathOptions,
) -> Option<String> {
    let raw = p.get_ref();
    if raw.contains('?') {
        cx.err(p.span(), key, "must not contain a query string");
        return None;
    }
    match canonicalize_with(raw, opts) {
        Ok(c) if &c == raw => Some(c),
        Ok(c) => {
            cx.err(
                p.span(),
                key,
                format!("{raw:?} is not in canonical form; write {c:?} (requests are matched after canonicalization, so this could never match as written)"),
            );
            None
        }
        Err(e) => {
            cx.err(p.span(), key, format!("{raw:?} is not a valid path ({e})"));
            None
        }
    }
}

/// `cors`: each origin, method and header name checked; the policy's header values made once.
fn cors(
    cx: &mut Ctx<'_>,
    r: &RouteFile,
    key: &dyn Fn(&str) -> String,
    route_methods: Option<&[http::Method]>,
    server: &ServerConfig,
) -> Option<std::sync::Arc<crate::cors::CorsPolicy>> {
    use crate::cors::{CorsPolicy, OriginRule};
    let c = r.cors.as_ref()?.get_ref();
    let k = |f: &str| key(&format!("cors.{f}"));
    let credentials = c.allow_credentials.unwrap_or(false);
    let mut origins = Vec::new();
    if c.allow_origins.get_ref().is_empty() {
        cx.err(
            c.allow_origins.span(),
            &k("allow_origins"),
            "list the origins allowed (or \"*\")",
        );
    }
    for (i, o) in c.allow_origins.get_ref().iter().enumerate() {
        match OriginRule::parse(o.get_ref()) {
            Ok(OriginRule::Any) if credentials => cx.err(
                o.span(),
                &k(&format!("allow_origins[{i}]")),
                "\"*\" with allow_credentials: browsers refuse it; list the origins",
            ),
            Ok(rule) => origins.push(rule),
            Err(e) => cx.err(o.span(), &k(&format!("allow_origins[{i}]")), e),
        }
    }
    let default_methods = || {
        route_methods
            .map(<[http::Method]>::to_vec)
            .unwrap_or_else(|| {
                use http::Method as M;
                vec![M::GET, M::HEAD, M::POST, M::PUT, M::PATCH, M::DELETE]
            })
    };
    let methods = match &c.allow_methods {
        None => default_methods(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.get_ref().iter().enumerate() {
                let at = k(&format!("allow_methods[{i}]"));
                match http::Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) if route_methods.is_some_and(|rm| !rm.contains(&method)) => {
                        cx.err(
                            m.span(),
                            &at,
                            format!("{method} is not among the route's methods"),
                        );
                    }
                    Ok(method) if method.as_str().bytes().all(|b| !b.is_ascii_lowercase()) => {
                        out.push(method);
                    }
                    _ => cx.err(
                        m.span(),
                        &at,
                        format!("{:?} is not an upper-case method", m.get_ref()),
                    ),
                }
            }
            out
        }
    };
    let names = |cx: &mut Ctx<'_>, list: &Spanned<Vec<Spanned<String>>>, field: &str| {
        let mut out = Vec::new();
        for (i, h) in list.get_ref().iter().enumerate() {
            match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => out.push(name),
                Err(_) => cx.err(
                    h.span(),
                    &k(&format!("{field}[{i}]")),
                    format!("{:?} is not a header name", h.get_ref()),
                ),
            }
        }
        out
    };
    let headers = match &c.allow_headers {
        None => Some(Vec::new()),
        Some(list) if list.get_ref().iter().any(|h| h.get_ref() == "*") => None,
        Some(list) => Some(names(cx, list, "allow_headers")),
    };
    let expose = c
        .expose_headers
        .as_ref()
        .map(|list| names(cx, list, "expose_headers"))
        .unwrap_or_default();
    let max_age = cx.duration(
        &c.max_age,
        &k("max_age"),
        std::time::Duration::from_secs(600),
        (
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(86_400),
        ),
    );
    Some(std::sync::Arc::new(CorsPolicy::new(
        origins,
        methods,
        headers,
        &expose,
        credentials,
        max_age.as_secs(),
        server.request_id_header.as_ref(),
    )))
}

/// A text key, if set, checked by `check`, whose problem is reported at the key.
fn check_text<T>(
    cx: &mut Ctx<'_>,
    ok: &mut bool,
    v: &Option<Spanned<String>>,
    key: &str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let v = v.as_ref()?;
    check(v.get_ref())
        .map_err(|problem| {
            cx.err(v.span(), key, problem);
            *ok = false;
        })
        .ok()
}

/// A route's `login_url`: an absolute `http(s)` URL, with `{url}` at most once, on a route that
/// reads a token; split at `{url}`.
fn login_url(text: &str, auth: AuthMode) -> Result<(Box<str>, Option<Box<str>>), String> {
    let parts = match text.split_once("{url}") {
        Some((_, after)) if after.contains("{url}") => {
            return Err("{url} may appear once".into());
        }
        Some((before, after)) => (before.into(), Some(after.into())),
        None => (text.into(), None),
    };
    let absolute = text
        .replace("{url}", "x")
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some());
    if !absolute {
        Err(format!(
            "{text:?} is not an absolute http(s) URL (e.g. \"https://app.example.com/login?rd={{url}}\")"
        ))
    } else if !auth.reads_token() {
        Err(format!(
            "only routes that read a token (auth = \"bearer\" or \"optional\") answer 401; \
             this route has auth = \"{}\"",
            auth.as_str()
        ))
    } else {
        Ok(parts)
    }
}

/// The end of a message refusing what a token must hold on a route that is not `bearer`.
fn not_bearer(auth: AuthMode) -> String {
    match auth {
        AuthMode::Optional => "; this route has auth = \"optional\", which a request without a \
             token passes: a client would send none to get past it (an allow_if condition can \
             tell the two apart)"
            .into(),
        _ => format!("; this route has auth = \"{}\"", auth.as_str()),
    }
}

/// The message refusing a token setting on a route that reads no token.
fn reads_no_token(auth: AuthMode) -> String {
    format!(
        "only applies to routes that read a token (auth = \"bearer\" or \"optional\"); this \
         route has auth = \"{}\"",
        auth.as_str()
    )
}

/// A route's `token_cookie`: a cookie name (RFC 6265 4.1.1: an RFC 9110 token), on a route that
/// reads a token and has no `token_header` (a route reads its token from one place).
fn token_cookie_name(text: &str, auth: AuthMode, header: bool) -> Result<Box<str>, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if text.is_empty() || !text.bytes().all(tchar) {
        Err(format!(
            "{text:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        ))
    } else if header {
        Err("a route reads its token from one place: token_header or token_cookie".into())
    } else if !auth.reads_token() {
        Err(reads_no_token(auth))
    } else {
        Ok(text.into())
    }
}

/// A route's `token_header`: a header name, other than `Authorization` and the hop-by-hop
/// ones, on a route that reads a token.
fn token_header_name(text: &str, auth: AuthMode) -> Result<http::HeaderName, String> {
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Err(_) => Err(format!("{text:?} is not a header name")),
        Ok(n) if n == http::header::AUTHORIZATION => Err(
            "Authorization is where a route reads its token anyway: leave token_header out".into(),
        ),
        Ok(n) if crate::headers::is_hop_by_hop(&n) => {
            Err(format!("{n} is a hop-by-hop header, dropped on the way in"))
        }
        Ok(_) if !auth.reads_token() => Err(reads_no_token(auth)),
        Ok(n) => Ok(n),
    }
}
