//! File shape -> runtime [`Config`]. Every problem is collected, so the operator fixes the file
//! in one pass; each is located by line, column and dotted key. One file per table (`server`,
//! `issuer`, `upstream`, `route`, `cache`, `dpop`, `decision`, `forward`); here, what spans
//! tables: the order they are read in, route issuers, warnings, serde's errors and their hints.

mod authzen;
mod cache;
mod decision;
mod dpop;
mod forward;
mod issuer;
mod route;
mod server;
mod telemetry;
mod upstream;

use super::file::FileConfig;
use super::*;
use crate::request::path::PathOptions;
use crate::resource::ResourceId;
use crate::routes::Route;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use toml::Spanned;

struct Ctx<'a> {
    text: &'a str,
    /// Where each line of `text` starts, found when the first problem is located: counting
    /// from the top per problem made 20,000 warnings on a 1.5 MB file take a minute.
    line_starts: std::cell::OnceCell<Vec<usize>>,
    file: &'a str,
    problems: Vec<Problem>,
    /// Files secrets were read from: the reload watch follows them, as Kubernetes rewrites a
    /// mounted Secret in place.
    secret_files: Vec<PathBuf>,
}

impl Ctx<'_> {
    /// A file holding a secret, remembered for the reload watch. The error names the file,
    /// never its content.
    fn read_secret_file(&mut self, path: &str) -> std::io::Result<Vec<u8>> {
        self.secret_files.push(PathBuf::from(path));
        std::fs::read(path)
    }

    /// A secret from `<key>_file` or `<key>_env` (at most one of them), trailing newline
    /// trimmed.
    fn secret(
        &mut self,
        (file, env): (&Option<Spanned<String>>, &Option<Spanned<String>>),
        key: &str,
        span: &Range<usize>,
    ) -> Option<Secret> {
        match (file, env) {
            (Some(_), Some(_)) => {
                self.err(
                    span.clone(),
                    key,
                    format!("give only one of `{key}_file`, `{key}_env`"),
                );
                None
            }
            (Some(p), None) => match self.read_secret_file(p.get_ref()) {
                Ok(bytes) => Some(issuer::trim_secret(bytes)),
                Err(e) => {
                    self.err(
                        p.span(),
                        &format!("{key}_file"),
                        format!("cannot read {:?}: {e}", p.get_ref()),
                    );
                    None
                }
            },
            (None, Some(v)) => match std::env::var(v.get_ref()) {
                Ok(s) => Some(issuer::trim_secret(s.into_bytes())),
                Err(_) => {
                    self.err(
                        v.span(),
                        &format!("{key}_env"),
                        format!("environment variable {:?} is not set", v.get_ref()),
                    );
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// A list of IP addresses and CIDR blocks (`trusted_proxies`); each entry that is neither
    /// is reported as `key[i]`.
    fn ip_nets(&mut self, list: &Spanned<Vec<Spanned<String>>>, key: &str) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, p) in list.get_ref().iter().enumerate() {
            nets.extend(self.ip_net(p.get_ref(), p.span(), &format!("{key}[{i}]")));
        }
        nets
    }

    /// One address or CIDR block; `None` (and the error reported at `key`) if it is neither.
    fn ip_net(&mut self, raw: &str, span: Range<usize>, key: &str) -> Option<IpNet> {
        let raw = raw.trim();
        let net =
            IpNet::from_str(raw).or_else(|_| std::net::IpAddr::from_str(raw).map(IpNet::from));
        if net.is_err() {
            self.err(
                span,
                key,
                format!("{raw:?} is not an IP address or CIDR block"),
            );
        }
        net.ok()
    }

    fn locate(&self, span: Range<usize>, key: &str, message: String) -> Problem {
        let start = span.start.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            let after_newlines = self.text.match_indices('\n').map(|(i, _)| i + 1);
            std::iter::once(0).chain(after_newlines).collect()
        });
        // The last line start at or before `start` (the first is 0).
        let line = starts.partition_point(|&s| s <= start);
        let column = start - starts[line - 1] + 1;
        Problem {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }

    fn err(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let p = self.locate(span, key, message.into());
        self.problems.push(p);
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        bounds: (Duration, Duration),
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if d < bounds.0 || d > bounds.1 => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "{:?} is out of range ({} to {})",
                        v.get_ref(),
                        humantime::format_duration(bounds.0),
                        humantime::format_duration(bounds.1)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"30s\", \"500ms\", \"5m\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn size(
        &mut self,
        v: &Option<Spanned<u64>>,
        key: &str,
        default: usize,
        min: u64,
        max: u64,
    ) -> usize {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                v.span(),
                key,
                format!("{n} is out of range ({min} to {max})"),
            );
            return default;
        }
        n as usize
    }
}

impl Ctx<'_> {
    /// An RFC 9728 resource identifier, if the key is set.
    fn resource(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        opts: PathOptions,
    ) -> Option<Arc<ResourceId>> {
        let v = v.as_ref()?;
        match ResourceId::parse(v.get_ref(), opts) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                self.err(v.span(), key, e);
                None
            }
        }
    }

    /// A body size limit in bytes, if the key is set: up to 1 TiB, 0 refusing any body.
    fn max_body(&mut self, v: &Option<Spanned<u64>>, key: &str) -> Option<u64> {
        v.as_ref()?;
        Some(self.size(v, key, 0, 0, 1 << 40) as u64)
    }
}

/// Parses, validates and compiles config text.
pub(super) fn compile(text: &str, name: &str) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        text,
        line_starts: std::cell::OnceCell::new(),
        file: name,
        problems: Vec::new(),
        secret_files: Vec::new(),
    };
    let file: FileConfig = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(text, span.start);
            cx.err(span, &key, with_hint(e.message(), &key));
            return Err(ConfigError::Invalid(cx.problems));
        }
    };

    let server = server::server(&mut cx, file.server.get_ref());
    let mut upstream_names = Vec::new();
    let mut upstreams = Vec::new();
    for (name, up) in &file.upstreams {
        upstream_names.push(name.get_ref().clone());
        upstreams.push(upstream::upstream(&mut cx, name.get_ref(), up, &server));
    }
    let issuers = issuers(&mut cx, &file);
    upstream::exchange_issuers(&mut cx, &file, &issuers);
    let mut routes = routes(&mut cx, &file, &upstream_names, &server);
    for (i, r) in file.routes.iter().enumerate() {
        let asks = r
            .get_ref()
            .require_client_certificate
            .as_ref()
            .filter(|b| *b.get_ref());
        let certs_arrive = server.client_cert_header.is_some()
            || server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth != crate::tls::ClientAuth::None);
        if let (Some(b), false) = (asks, certs_arrive) {
            cx.err(
                b.span(),
                &format!("routes[{i}].require_client_certificate"),
                "no client certificate can arrive: set [server] tls_client_auth (with \
                 tls_client_ca_file), or client_cert_header behind a TLS-terminating proxy",
            );
        }
    }
    route_issuers(&mut cx, &file, &mut routes, &issuers);
    let pdps = authzen::pdps(&mut cx, &file.authzen);
    if routes.len() == file.routes.len() {
        authzen::routes(&mut cx, &file.routes, &mut routes, &pdps);
    }
    let cache = cache::cache(&mut cx, file.cache.as_ref());
    let dpop = dpop::dpop(&mut cx, file.dpop.as_ref(), file.cache.as_ref());
    let mut decision = decision::decision(&mut cx, file.decision.as_ref(), &server);
    if let Some(d) = decision.as_mut() {
        d.hosts = routes.iter().any(|r| r.hosts.is_some());
        let original = matches!(d.ingress, Some(Ingress::Nginx | Ingress::Haproxy));
        if d.hosts && original && d.host_header.is_none() {
            let f = file
                .decision
                .as_ref()
                .expect("validated from the file's [decision]");
            cx.err(
                f.span(),
                "decision.original_host_header",
                "is required: routes name hosts, and behind nginx or HAProxy a decision request's \
                 own Host names the auth location, not the original request's host (set it to \
                 the header the ingress fills with $host, e.g. \"X-Original-Host\")",
            );
        }
    }
    let telemetry = telemetry::telemetry(&mut cx, file.telemetry.as_ref());

    let forward = forward::forward(
        &mut cx,
        file.forward.as_ref(),
        server.request_id_header.as_ref(),
    );
    // An upstream may neither set nor remove a header the token fills: the claims would lose to
    // the set one, and the removal would take it out after it was filled (a client's own copy
    // is removed already).
    let claimed = |header: &str| {
        HeaderName::from_str(header).is_ok_and(|h| forward.token_headers().any(|c| *c == h))
    };
    for (name, up) in &file.upstreams {
        let up = up.get_ref();
        let set = up
            .set_header_sources()
            .into_iter()
            .flat_map(|(map, which)| {
                let entries = map.iter().flat_map(Spanned::get_ref);
                entries.map(move |(header, source)| {
                    (header.as_str(), source.span(), format!("{which}.{header}"))
                })
            });
        let removed = up.remove_headers.iter().flat_map(Spanned::get_ref);
        let removed = removed.enumerate().map(|(i, h)| {
            let at = format!("remove_headers[{i}]");
            (h.get_ref().as_str(), h.span(), at)
        });
        for (header, span, at) in set.chain(removed).filter(|(h, ..)| claimed(h)) {
            cx.err(
                span,
                &format!("upstreams.{}.{at}", name.get_ref()),
                format!("{header:?} is filled from the token ([forward] claim_headers or payload_header)"),
            );
        }
    }
    if let Some(n) = &file.server.get_ref().token_cache_entries {
        if *n.get_ref() > 10_000_000 {
            cx.err(n.span(), "server.token_cache_entries", "at most 10000000");
        }
    }

    if !cx.problems.is_empty() {
        return Err(ConfigError::Invalid(cx.problems));
    }

    let binding = crate::resource::Binding {
        dpop_algs: dpop.algorithms.iter().map(|a| format!("{a:?}")).collect(),
        required: false,
        mtls: server.client_cert_header.is_some()
            || server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth != crate::tls::ClientAuth::None),
    };
    let resources = crate::routes::resource_documents(
        &routes,
        issuers.iter().map(|i| i.issuer.as_str()),
        &binding,
    );
    let table = RouteTable::new(routes);
    let warnings = warnings(&mut cx, &file, &table, &issuers, &upstreams);

    Ok(Config {
        source: name.to_owned(),
        digest: [0; 32],
        server,
        upstreams,
        routes: table,
        issuers,
        forward,
        resources,
        token_cache_entries: file
            .server
            .get_ref()
            .token_cache_entries
            .as_ref()
            .map_or(DEFAULT_TOKEN_CACHE_ENTRIES, |n| *n.get_ref()),
        cache,
        dpop,
        decision,
        telemetry,
        authzen: pdps.configs,
        warnings,
        secret_files: cx.secret_files,
    })
}

/// Every `[[issuers]]` entry that passed, each issuer named once.
fn issuers(cx: &mut Ctx<'_>, file: &FileConfig) -> Vec<IssuerConfig> {
    let issuers: Vec<IssuerConfig> = file
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(i, iss)| issuer::issuer(cx, i, iss))
        .collect();
    for (i, a) in issuers.iter().enumerate() {
        if issuers[..i].iter().any(|b| b.issuer == a.issuer) {
            let span = file.issuers[i].get_ref().issuer.span();
            cx.err(
                span,
                &format!("issuers[{i}].issuer"),
                format!("issuer {:?} is configured twice", a.issuer),
            );
        }
    }

    issuers
}

/// Every `[[routes]]` entry that passed, in file order; no two resources whose documents would
/// share a path; and a bearer route only where some issuer can vouch for tokens.
fn routes(
    cx: &mut Ctx<'_>,
    file: &FileConfig,
    upstream_names: &[String],
    server: &ServerConfig,
) -> Vec<Route> {
    let mut routes = Vec::new();
    // Two resources on one host whose documents would share a path (they differ only in scheme
    // or port): bearward could serve only one of them. On different hosts, each request's host
    // picks its own.
    let mut resources: Vec<Arc<ResourceId>> = server.resource.iter().cloned().collect();
    for (i, r) in file.routes.iter().enumerate() {
        let Some(route) = route::route(cx, i, r, upstream_names, server, file.decision.is_some())
        else {
            continue;
        };
        if let (Some(v), Some(res)) = (&r.get_ref().resource, &route.resource) {
            match resources
                .iter()
                .find(|o| o.metadata_path == res.metadata_path && o.host == res.host)
            {
                Some(o) if o.id != res.id => cx.err(
                    v.span(),
                    &format!("routes[{i}].resource"),
                    format!(
                        "its metadata would be served at {:?} for the same host as that of {:?}: \
                         give resources that differ in their path or host",
                        res.metadata_path, o.id
                    ),
                ),
                Some(_) => {}
                None => resources.push(res.clone()),
            }
        }
        routes.push(route);
    }
    if file.routes.is_empty() {
        cx.err(
            file.server.span(),
            "routes",
            "no [[routes]]: every request would answer 404",
        );
    }
    if file.issuers.is_empty() {
        if let Some(i) = routes.iter().position(|r| r.auth.reads_token()) {
            cx.err(
                file.routes[i].span(),
                &format!("routes[{i}].auth"),
                "this route checks bearer tokens (auth = \"bearer\", the default, or \
                 \"optional\") but no [[issuers]] are configured; add an issuer or set \
                 auth = \"none\"",
            );
        }
    }

    routes
}

/// Routes' `issuers` lists, as indexes into the issuers; and, since an opaque token names no
/// issuer, a bearer route where several issuers introspect must say which to ask.
fn route_issuers(
    cx: &mut Ctx<'_>,
    file: &FileConfig,
    routes: &mut [Route],
    issuers: &[IssuerConfig],
) {
    if routes.len() != file.routes.len() || issuers.len() != file.issuers.len() {
        return; // An entry already failed; its problems are reported.
    }
    let introspecting: Vec<&str> = issuers
        .iter()
        .filter(|i| i.introspection.is_some())
        .map(|i| i.issuer.as_str())
        .collect();
    for (i, (route, r)) in routes.iter_mut().zip(&file.routes).enumerate() {
        let key = format!("routes[{i}].issuers");
        let Some(list) = &r.get_ref().issuers else {
            if route.auth.reads_token() && introspecting.len() > 1 {
                cx.err(
                    r.span(),
                    &key,
                    format!(
                        "several issuers introspect opaque tokens ({}), and an opaque token \
                         names none: list the ones this route asks, in order, in `issuers`",
                        introspecting.join(", ")
                    ),
                );
            }
            continue;
        };
        if !route.auth.reads_token() {
            cx.err(
                list.span(),
                &key,
                format!(
                    "issuers only apply to routes that read a token (auth = \"bearer\" or \
                     \"optional\"); this route has auth = \"{}\"",
                    route.auth.as_str()
                ),
            );
            continue;
        }
        if list.get_ref().is_empty() {
            cx.err(list.span(), &key, "an empty list would refuse every token");
            continue;
        }
        let mut found = Vec::new();
        for (j, name) in list.get_ref().iter().enumerate() {
            match issuers.iter().position(|c| c.issuer == *name.get_ref()) {
                Some(x) if found.contains(&x) => cx.err(
                    name.span(),
                    &format!("{key}[{j}]"),
                    format!("{:?} is listed twice", name.get_ref()),
                ),
                Some(x) => found.push(x),
                None => cx.err(
                    name.span(),
                    &format!("{key}[{j}]"),
                    format!("{:?} is not a configured issuer", name.get_ref()),
                ),
            }
        }
        route.issuers = Some(found);
    }
}

/// One warning per route with a weaker check that takes a case or trailing-slash variant of a
/// stricter route's path ([`RouteTable::loose_matches`]), with a few of the paths as examples.
fn loose_warnings(cx: &mut Ctx<'_>, file: &FileConfig, table: &RouteTable) -> Vec<Problem> {
    use crate::routes::{AuthMode, Loose};
    // Grouped in one pass: a table can have as many weaker routes as findings.
    let mut by_route: std::collections::BTreeMap<usize, Vec<_>> = Default::default();
    for m in table.loose_matches() {
        by_route.entry(m.weaker).or_default().push(m);
    }
    let mut out = Vec::new();
    for (j, here) in by_route {
        let mut examples: Vec<String> = here
            .iter()
            .take(3)
            .map(|m| {
                let r = &table.routes()[m.checked];
                match (m.how, &r.hosts) {
                    (Loose::Host, Some(h)) => format!(
                        "{} for hosts other than {} (routes[{}] {})",
                        m.path,
                        h.patterns().collect::<Vec<_>>().join(", "),
                        m.checked,
                        r.name
                    ),
                    _ => format!("{} (routes[{}] {})", m.path, m.checked, r.name),
                }
            })
            .collect();
        if here.len() > 3 {
            examples.push(format!("{} more", here.len() - 3));
        }
        let (mut how, mut remedy) = (Vec::new(), Vec::new());
        if here.iter().any(|m| m.how == Loose::Case) {
            how.push("case (ASP.NET Core, Express by default)");
            remedy.push("give the checked route case_sensitive = false");
        }
        if here.iter().any(|m| m.how == Loose::TrailingSlash) {
            how.push("a trailing slash (Express by default, ASP.NET Core, Spring before 6)");
            remedy.push("give the other spelling of an exact path a route of its own");
        }
        if here.iter().any(|m| m.how == Loose::Host) {
            how.push("the host (one site on the upstream, or pass_host_header = false)");
            remedy
                .push("give this route hosts of its own, or send other hosts to another upstream");
        }
        // A weaker route is open or checks a token (`Route::weaker_than`).
        let route = &table.routes()[j];
        let open = matches!(route.auth, AuthMode::None | AuthMode::Optional);
        let mut needs = route.scopes.join(" ");
        if !route.scopes_any.is_empty() {
            let sep = if needs.is_empty() { "" } else { " and " };
            needs = format!("{needs}{sep}one of {}", route.scopes_any.join(", "));
        }
        let (check, unchecked) = match (open, needs.is_empty()) {
            (true, _) if route.auth == AuthMode::Optional => (
                "without a token (auth = \"optional\")".to_owned(),
                "unchecked",
            ),
            (true, _) => ("with no token check".to_owned(), "unchecked"),
            (false, true) => (
                "with a token of any scope".to_owned(),
                "without their scopes",
            ),
            (false, false) => (format!("with a token for {needs}"), "without their scopes"),
        };
        if open {
            remedy.push("list the open paths instead of catching everything");
        }
        out.push(cx.locate(
            file.routes[j].span(),
            &format!("routes[{j}]"),
            format!(
                "takes, {check}, paths that stricter routes above it do not: {}. An upstream \
                 that ignores {} serves them as those routes' paths, {unchecked}. If yours does, \
                 {}",
                examples.join(", "),
                how.join(" or "),
                remedy.join(", or ")
            ),
        ));
    }
    out
}

/// What `bearward check` warns about: routes that can never match, and resources no issuer
/// lists among its audiences.
fn warnings(
    cx: &mut Ctx<'_>,
    file: &FileConfig,
    table: &RouteTable,
    issuers: &[IssuerConfig],
    upstreams: &[UpstreamConfig],
) -> Vec<Problem> {
    let mut warnings: Vec<Problem> = table
        .shadowed()
        .into_iter()
        .map(|(i, j)| {
            cx.locate(
                file.routes[j].span(),
                &format!("routes[{j}]"),
                format!(
                    "never matches: routes[{i}] ({}) above it catches every request it could take",
                    table.routes()[i].name
                ),
            )
        })
        .collect();
    warnings.extend(loose_warnings(cx, file, table));
    // RFC 8707 clients (MCP's among them) ask for a token whose audience is the resource the
    // metadata names; a token an issuer grants that way would be refused as bad_audience.
    let named = (file.server.get_ref().resource.iter())
        .map(|v| (v, "server.resource".to_owned()))
        .chain(file.routes.iter().enumerate().filter_map(|(i, r)| {
            let v = r.get_ref().resource.as_ref()?;
            let bearer = table.routes()[i].auth.reads_token();
            bearer.then(|| (v, format!("routes[{i}].resource")))
        }));
    // A cut-off in the future refuses every token the issuer gives until then, the ones it
    // gives after the incident too: more often a date or a time zone written wrong than meant.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (i, f) in file.issuers.iter().enumerate() {
        let cut = f.get_ref().revoked.as_ref();
        let Some(t) = cut.and_then(|r| r.get_ref().issued_before.as_ref()) else {
            continue;
        };
        let before = issuers
            .get(i)
            .and_then(|c| c.revoked.as_ref()?.issued_before);
        if let Some(before) = before.filter(|b| *b > now.saturating_add(60)) {
            warnings.push(cx.locate(
                t.span(),
                &format!("issuers[{i}].revoked.issued_before"),
                format!(
                    "is {} s in the future: every token this issuer gives until then is refused, \
                     the ones it gives after the incident too (a date or time zone written \
                     wrong? RFC 3339 times end in Z for UTC)",
                    before - now
                ),
            ));
        }
    }
    // Anyone can create a tenant at a multi-tenant IdP and have it sign tokens for an
    // application that takes every tenant's: the routes must then decide by `tid` themselves.
    for (i, f) in file.issuers.iter().enumerate() {
        let open = issuers
            .get(i)
            .and_then(|c| c.tenant.as_ref())
            .is_some_and(|t| t.allowed.is_empty());
        if open {
            warnings.push(
                cx.locate(
                    f.get_ref().issuer.span(),
                    &format!("issuers[{i}].issuer"),
                    "takes the tokens of every tenant of the IdP, one anybody creates included: \
                 list the ones taken in `tenants`, or be sure each route taking this issuer \
                 checks `tid` (claims, allow_if)"
                        .to_owned(),
                ),
            );
        }
    }
    if let Some(d) = &file.decision {
        if d.get_ref().ingress.is_none() {
            warnings.push(cx.locate(
                d.span(),
                "decision.ingress",
                "is not set: each decision request is read in whichever convention it carries, \
                 and one carrying two is refused (400). Name the one ingress in front (\"nginx\", \
                 \"caddy\", \"traefik\", \"haproxy\" or \"envoy\"), so that headers only it \
                 overwrites are ever read"
                    .to_owned(),
            ));
        }
    }
    // A password written in the file sits in a ConfigMap and in every copy of it.
    let cache = file.cache.as_ref().map(Spanned::get_ref);
    let inline_urls = cache.and_then(|c| c.redis_url.as_ref()).into_iter().chain(
        cache
            .and_then(|c| c.redis_cluster_urls.as_ref())
            .into_iter()
            .flat_map(|l| l.get_ref().iter()),
    );
    for u in inline_urls {
        use redis::IntoConnectionInfo;
        let info = u.get_ref().as_str().into_connection_info().ok();
        if info.is_some_and(|i| i.redis_settings().password().is_some()) {
            warnings.push(
                cx.locate(
                    u.span(),
                    "cache.redis_url",
                    "holds a password inline: read the URL from redis_url_file or redis_url_env, \
                 or the password alone from redis_password_file or redis_password_env"
                        .to_owned(),
                ),
            );
        }
    }
    // Without the seal, what the store would hold of these decides who gets in, and anything
    // else that can write to the store could write it.
    if let Some(c) = &file.cache {
        let cf = c.get_ref();
        if cf.secret_file.is_none() && cf.secret_env.is_none() {
            let kept: Vec<&str> = [
                (
                    issuers.iter().any(|i| i.introspection.is_some()),
                    "introspection answers",
                ),
                (!file.authzen.is_empty(), "AuthZEN decisions"),
                (
                    upstreams.iter().any(|u| u.token_exchange.is_some()),
                    "exchanged tokens",
                ),
            ]
            .into_iter()
            .filter_map(|(on, what)| on.then_some(what))
            .collect();
            if !kept.is_empty() {
                warnings.push(cx.locate(
                    c.span(),
                    "cache.secret_file",
                    format!(
                        "is not set: {} stay in each process, not shared through the store \
                         (anything else that can write to it could forge them); set secret_file \
                         or secret_env, the same in every replica, to share them sealed",
                        kept.join(", ")
                    ),
                ));
            }
        }
    }
    // listen(2) silently caps the backlog: the operator would count on a queue it does not get.
    if let (Some(b), Some(max)) = (&file.server.get_ref().listen_backlog, somaxconn()) {
        if *b.get_ref() > u64::from(max) {
            warnings.push(cx.locate(
                b.span(),
                "server.listen_backlog",
                format!(
                    "is above the kernel's net.core.somaxconn ({max}), which caps it: raise \
                     that sysctl (in Kubernetes, the pod's securityContext.sysctls) or expect \
                     {max}"
                ),
            ));
        }
    }
    // gRPC needs HTTP/2 to the service: over HTTP/1.1 every call fails at the upstream.
    for (i, r) in file.routes.iter().enumerate() {
        let (Some(g), Some(u)) = (&r.get_ref().grpc_service, table.routes()[i].upstream) else {
            continue;
        };
        let up = &upstreams[u];
        if up.protocol == Protocol::Http1 {
            warnings.push(cx.locate(
                g.span(),
                &format!("routes[{i}].grpc_service"),
                format!(
                    "upstream {:?} speaks HTTP/1.1; gRPC needs protocol = \"h2c\" (or \"h2\" over https) on it",
                    up.name
                ),
            ));
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for (v, key) in named {
        let id = v.get_ref().as_str();
        if issuers.is_empty()
            || seen.contains(&id)
            || issuers.iter().any(|i| i.audiences.iter().any(|a| a == id))
        {
            continue;
        }
        seen.push(id);
        warnings.push(cx.locate(
            v.span(),
            &key,
            format!(
                "no issuer lists {id:?} in its audiences: a client that asks for a token for \
                 this resource (RFC 8707, as MCP clients do) would be refused with bad_audience"
            ),
        ));
    }
    warnings
}

/// The kernel's cap on any listen backlog (`net.core.somaxconn`), where it can be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Best-effort key path for a serde error: the table header above the error (with its index
/// for an array of tables: `routes[2]`) and the key on its line, so `unknown field` errors name
/// where they are.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let headers_to = |end: usize| {
        text[..end]
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('['))
            .collect::<Vec<_>>()
    };
    // `[[routes]]` counts the headers of that array up to and including this one.
    let named = |header: &str, above: &[&str]| {
        let name = header
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
        if header.starts_with("[[") {
            let n = above.iter().filter(|h| **h == header).count();
            format!("{name}[{}]", n.saturating_sub(1))
        } else {
            name
        }
    };
    if line.starts_with('[') {
        return named(line, &headers_to(line_end));
    }
    let above = headers_to(line_start);
    let table = above.last().map(|h| named(h, &above)).unwrap_or_default();
    let key = line.split('=').next().unwrap_or("").trim();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// A serde message with what would fix it: the closest known key to an unknown one, and the
/// list form of a string given where a list goes.
fn with_hint(message: &str, key: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let best = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
            .min()
            .filter(|(d, k)| *d <= (k.len() / 3).max(2));
        if let Some((_, k)) = best {
            return format!("{message}; did you mean `{k}`?");
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: string ") {
        if let Some(value) = rest.strip_suffix(", expected a sequence") {
            let name = key.rsplit('.').next().unwrap_or(key);
            return format!("{message}: a list, even of one, `{name} = [{value}]`");
        }
    }
    message.to_owned()
}

/// The keys of a CA file, a client certificate and its key.
type TlsFiles<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<String>>,
);

/// A CA file and a client certificate and key (any of them unset) as rustls settings for an
/// HTTPS client; `None` when none is set. `names`: the three keys, for errors.
fn client_tls(
    cx: &mut Ctx<'_>,
    (ca, cert, cert_key): TlsFiles<'_>,
    names: [&str; 3],
    key: &dyn Fn(&str) -> String,
) -> Result<Option<Arc<rustls::ClientConfig>>, ()> {
    use std::path::Path;
    if ca.is_none() && cert.is_none() && cert_key.is_none() {
        return Ok(None);
    }
    let roots = match crate::tls::roots(ca.as_ref().map(|c| Path::new(c.get_ref().as_str()))) {
        Ok(r) => r,
        Err(e) => {
            let span = ca.as_ref().map_or(0..0, Spanned::span);
            cx.err(span, &key(names[0]), e);
            return Err(());
        }
    };
    let identity = match (cert, cert_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            match crate::tls::Identity::load(Path::new(c.get_ref()), Path::new(k.get_ref())) {
                Ok(i) => Some(i),
                Err(crate::tls::IdentityError::Cert(e)) => {
                    cx.err(c.span(), &key(names[1]), e);
                    return Err(());
                }
                Err(crate::tls::IdentityError::Key(e)) => {
                    cx.err(k.span(), &key(names[2]), e);
                    return Err(());
                }
            }
        }
        (Some(c), None) | (None, Some(c)) => {
            cx.err(
                c.span(),
                &key(names[1]),
                format!("give both {} and {}", names[1], names[2]),
            );
            return Err(());
        }
    };
    // The server name is the URL's host, checked by the connector; any will do here.
    let name = crate::tls::server_name("localhost").map_err(|_| ())?;
    match crate::tls::UpstreamTls::new(name, roots, identity) {
        Ok(t) => Ok(Some(t.client_config())),
        Err(e) => {
            cx.err(0..0, &key(names[1]), e);
            Err(())
        }
    }
}
