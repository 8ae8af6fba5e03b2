//! File shape -> runtime [`Config`]. Every problem is collected, so the operator fixes the file
//! in one pass; each is located by line, column and dotted key.

mod issuer;
mod route;
mod server;
mod upstream;

use super::file::FileConfig;
use super::*;
use crate::request::path::PathOptions;
use crate::resource::ResourceId;
use crate::routes::{AuthMode, Route};
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use toml::Spanned;

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn locate(&self, span: Range<usize>, key: &str, message: String) -> Problem {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
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
        file: name,
        problems: Vec::new(),
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
        upstreams.push(upstream::upstream(&mut cx, name.get_ref(), up));
    }
    let issuers = issuers(&mut cx, &file);
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
    let cache = cache(&mut cx, file.cache.as_ref());
    let dpop = dpop(&mut cx, file.dpop.as_ref(), file.cache.as_ref());
    let decision = decision(&mut cx, file.decision.as_ref(), &server);

    let forward = forward(&mut cx, file.forward.as_ref());
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
        warnings,
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
    // Two resources whose documents would share a path (they differ only in scheme, host or
    // port): bearward could serve only one of them.
    let mut resources: Vec<Arc<ResourceId>> = server.resource.iter().cloned().collect();
    for (i, r) in file.routes.iter().enumerate() {
        let Some(route) = route::route(cx, i, r, upstream_names, server, file.decision.is_some())
        else {
            continue;
        };
        if let (Some(v), Some(res)) = (&r.get_ref().resource, &route.resource) {
            match resources
                .iter()
                .find(|o| o.metadata_path == res.metadata_path)
            {
                Some(o) if o.id != res.id => cx.err(
                    v.span(),
                    &format!("routes[{i}].resource"),
                    format!(
                        "its metadata would be served at {:?}, as that of {:?}: give resources \
                         that differ in their path",
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
    if routes.iter().any(|r| r.auth == AuthMode::Bearer) && file.issuers.is_empty() {
        let i = routes
            .iter()
            .position(|r| r.auth == AuthMode::Bearer)
            .unwrap_or(0);
        cx.err(
            file.routes[i].span(),
            &format!("routes[{i}].auth"),
            "this route needs a bearer token (the default) but no [[issuers]] are configured; \
             add an issuer or set auth = \"none\"",
        );
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
            if route.auth == AuthMode::Bearer && introspecting.len() > 1 {
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
        if route.auth != AuthMode::Bearer {
            cx.err(
                list.span(),
                &key,
                format!(
                    "issuers only apply to auth = \"bearer\"; this route has auth = \"{}\"",
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

/// `[cache]`: a `redis://` URL (or `rediss://` for TLS, `redis+unix://`), a command timeout
/// and a key prefix.
fn cache(cx: &mut Ctx<'_>, f: Option<&Spanned<super::file::CacheFile>>) -> Option<CacheConfig> {
    let f = f?;
    let Some(url) = &f.get_ref().redis_url else {
        cx.err(
            f.span(),
            "cache.redis_url",
            "is required in [cache]: the Valkey/Redis URL, e.g. \"redis://127.0.0.1:6379/0\"",
        );
        return None;
    };
    let text = url.get_ref().as_str();
    let scheme_ok = ["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| text.starts_with(s));
    if !scheme_ok || redis::Client::open(text).is_err() {
        // The URL is not echoed: it may hold a password.
        cx.err(
            url.span(),
            "cache.redis_url",
            "is not a redis:// (or redis+unix://) URL that bearward can use",
        );
        return None;
    }
    let key_prefix = f
        .get_ref()
        .key_prefix
        .as_ref()
        .map_or_else(|| "bearward:".to_owned(), |p| p.get_ref().clone());
    if key_prefix.len() > 64 {
        cx.err(
            f.get_ref()
                .key_prefix
                .as_ref()
                .map_or(f.span(), Spanned::span),
            "cache.key_prefix",
            "at most 64 bytes",
        );
    }
    Some(CacheConfig {
        redis_url: Secret(text.as_bytes().to_vec()),
        timeout: cx.duration(
            &f.get_ref().redis_timeout,
            "cache.redis_timeout",
            Duration::from_millis(100),
            (Duration::from_millis(1), Duration::from_secs(10)),
        ),
        key_prefix,
        rate_limit_fallback_replicas: cx.size(
            &f.get_ref().rate_limit_fallback_replicas,
            "cache.rate_limit_fallback_replicas",
            1,
            1,
            10_000,
        ) as u32,
    })
}

/// `[decision]`: its listener, who may ask, and where the original request is read from.
fn decision(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<super::file::DecisionFile>>,
    server: &ServerConfig,
) -> Option<DecisionConfig> {
    let f = f?.get_ref();
    let listen = server::socket_addr(cx, &f.listen, "decision.listen")?;
    if listen == server.listening.listen && listen.port() != 0 {
        cx.err(
            f.listen.span(),
            "decision.listen",
            "is the proxy listener's address",
        );
    }
    let trusted_proxies = match &f.trusted_proxies {
        None => vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "::1/128".parse().expect("a CIDR"),
        ],
        Some(list) => {
            let mut nets = Vec::new();
            for (i, p) in list.get_ref().iter().enumerate() {
                let raw = p.get_ref().trim();
                match IpNet::from_str(raw)
                    .or_else(|_| std::net::IpAddr::from_str(raw).map(IpNet::from))
                {
                    Ok(n) => nets.push(n),
                    Err(_) => cx.err(
                        p.span(),
                        &format!("decision.trusted_proxies[{i}]"),
                        format!("{raw:?} is not an IP address or CIDR block"),
                    ),
                }
            }
            nets
        }
    };
    let header =
        |v: &Option<Spanned<String>>, key: &str, default: &'static str, cx: &mut Ctx<'_>| {
            let Some(v) = v else {
                return HeaderName::from_static(default);
            };
            HeaderName::from_str(v.get_ref()).unwrap_or_else(|_| {
                cx.err(
                    v.span(),
                    key,
                    format!("{:?} is not a header name", v.get_ref()),
                );
                HeaderName::from_static(default)
            })
        };
    let method_header = header(
        &f.original_method_header,
        "decision.original_method_header",
        "x-original-method",
        cx,
    );
    let uri_header = header(
        &f.original_uri_header,
        "decision.original_uri_header",
        "x-original-uri",
        cx,
    );
    let envoy_path_prefix = f.envoy_path_prefix.as_ref().and_then(|p| {
        let v = p.get_ref().trim_end_matches('/');
        if v.starts_with('/') && !v.contains(['?', '#', '%']) && v.len() > 1 {
            Some(v.to_owned())
        } else {
            cx.err(
                p.span(),
                "decision.envoy_path_prefix",
                "must be an absolute path such as \"/ext_authz\"",
            );
            None
        }
    });
    let ingress = f.ingress.as_ref().map(|i| *i.get_ref());
    // Each setting belongs to one convention: naming another's is a config that cannot work.
    if let Some(i) = &f.ingress {
        let foreign: &[(&Option<Spanned<String>>, &str)] = match i.get_ref() {
            Ingress::Nginx | Ingress::Haproxy => &[(&f.envoy_path_prefix, "envoy_path_prefix")],
            Ingress::Caddy | Ingress::Traefik => &[
                (&f.envoy_path_prefix, "envoy_path_prefix"),
                (&f.original_method_header, "original_method_header"),
                (&f.original_uri_header, "original_uri_header"),
            ],
            Ingress::Envoy => &[
                (&f.original_method_header, "original_method_header"),
                (&f.original_uri_header, "original_uri_header"),
            ],
        };
        for (v, key) in foreign {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    &format!("decision.{key}"),
                    format!(
                        "is not read with ingress = {:?}, which describes the original request \
                         its own way",
                        i.get_ref().as_str()
                    ),
                );
            }
        }
    }
    Some(DecisionConfig {
        listen,
        trusted_proxies,
        method_header,
        uri_header,
        envoy_path_prefix,
        ingress,
    })
}

/// `[dpop]`, and `[cache] dpop_replay_store_down`.
fn dpop(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<super::file::DpopFile>>,
    cache: Option<&Spanned<super::file::CacheFile>>,
) -> DpopConfig {
    let mut d = DpopConfig::default();
    if let Some(s) = cache.and_then(|c| c.get_ref().dpop_replay_store_down.as_ref()) {
        d.store_down = *s.get_ref();
    }
    let Some(f) = f else { return d };
    let f = f.get_ref();
    if let Some(list) = &f.algorithms {
        let mut algs = Vec::new();
        for (j, a) in list.get_ref().iter().enumerate() {
            match crate::jose::algorithm(a.get_ref()) {
                Some(alg) if crate::jose::dpop_algorithms().contains(&alg) || matches!(alg, jsonwebtoken::Algorithm::RS384 | jsonwebtoken::Algorithm::RS512 | jsonwebtoken::Algorithm::PS384 | jsonwebtoken::Algorithm::PS512) => algs.push(alg),
                _ => cx.err(
                    a.span(),
                    &format!("dpop.algorithms[{j}]"),
                    format!(
                        "{:?} is not an asymmetric signature algorithm (ES256 ES384 EdDSA RS256 RS384 RS512 PS256 PS384 PS512)",
                        a.get_ref()
                    ),
                ),
            }
        }
        if algs.is_empty() && list.get_ref().is_empty() {
            cx.err(
                list.span(),
                "dpop.algorithms",
                "must list at least one algorithm",
            );
        }
        d.algorithms = algs;
    }
    let minute = Duration::from_secs(60);
    d.max_age = cx.duration(
        &f.max_age,
        "dpop.max_age",
        d.max_age,
        (Duration::from_secs(1), 10 * minute),
    );
    d.leeway = cx.duration(
        &f.leeway,
        "dpop.leeway",
        d.leeway,
        (Duration::ZERO, 5 * minute),
    );
    d.replay_cache_entries = cx.size(
        &f.replay_cache_entries,
        "dpop.replay_cache_entries",
        d.replay_cache_entries,
        1000,
        100_000_000,
    );
    d.nonce = f.nonce.unwrap_or(false);
    d.nonce_lifetime = cx.duration(
        &f.nonce_lifetime,
        "dpop.nonce_lifetime",
        d.nonce_lifetime,
        (Duration::from_secs(1), 24 * 60 * minute),
    );
    if let Some(p) = &f.nonce_secret_file {
        match std::fs::read(p.get_ref()) {
            Ok(b) if issuer::trim_secret(b.clone()).0.len() >= 32 => {
                d.nonce_secret = Some(issuer::trim_secret(b));
            }
            Ok(_) => cx.err(
                p.span(),
                "dpop.nonce_secret_file",
                "the secret must be at least 32 bytes",
            ),
            Err(e) => cx.err(
                p.span(),
                "dpop.nonce_secret_file",
                format!("cannot read {:?}: {e}", p.get_ref()),
            ),
        }
    }
    d
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
    // RFC 8707 clients (MCP's among them) ask for a token whose audience is the resource the
    // metadata names; a token an issuer grants that way would be refused as bad_audience.
    let named = (file.server.get_ref().resource.iter())
        .map(|v| (v, "server.resource".to_owned()))
        .chain(file.routes.iter().enumerate().filter_map(|(i, r)| {
            let v = r.get_ref().resource.as_ref()?;
            let bearer = table.routes()[i].auth == AuthMode::Bearer;
            bearer.then(|| (v, format!("routes[{i}].resource")))
        }));
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

fn forward(cx: &mut Ctx<'_>, f: Option<&Spanned<super::file::ForwardFile>>) -> ForwardConfig {
    let Some(f) = f else {
        return ForwardConfig::default();
    };
    let f = f.get_ref();
    let mut claim_headers = Vec::new();
    if let Some(map) = &f.claim_headers {
        for (claim, header) in map.get_ref() {
            let key = format!("forward.claim_headers.{claim}");
            match HeaderName::from_str(header.get_ref()) {
                Ok(h) if crate::headers::is_reserved_header(&h) => cx.err(
                    header.span(),
                    &key,
                    format!("{:?} is a header bearward manages itself", header.get_ref()),
                ),
                Ok(h) => claim_headers.push((claim.clone(), h)),
                Err(_) => cx.err(
                    header.span(),
                    &key,
                    format!("{:?} is not a valid header name", header.get_ref()),
                ),
            }
        }
    }
    ForwardConfig {
        claim_headers,
        strip_authorization: f.strip_authorization.unwrap_or(false),
    }
}
