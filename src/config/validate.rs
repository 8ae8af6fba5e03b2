//! File shape -> runtime [`Config`]. Every problem is collected, so the operator fixes the file
//! in one pass; each is located by line, column and dotted key.

use super::file::{AuthFile, FileConfig, IssuerFile, RouteFile, ServerFile, UpstreamFile};
use super::*;
use crate::request::path::{canonicalize_with, PathOptions};
use crate::resource::ResourceId;
use crate::routes::{AuthMode, PathMatch, Route};
use jsonwebtoken::Algorithm;
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
            cx.err(span, &key, e.message().trim().to_owned());
            return Err(ConfigError::Invalid(cx.problems));
        }
    };

    let server = server(&mut cx, file.server.get_ref());
    let mut upstream_names = Vec::new();
    let mut upstreams = Vec::new();
    for (name, up) in &file.upstreams {
        upstream_names.push(name.get_ref().clone());
        upstreams.push(upstream(&mut cx, name.get_ref(), up));
    }
    let issuers: Vec<IssuerConfig> = file
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(i, iss)| issuer(&mut cx, i, iss))
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

    let mut routes = Vec::new();
    // Two resources whose documents would share a path (they differ only in scheme, host or
    // port): bearward could serve only one of them.
    let mut resources: Vec<Arc<ResourceId>> = server.resource.iter().cloned().collect();
    for (i, r) in file.routes.iter().enumerate() {
        let Some(route) = route(&mut cx, i, r, &upstream_names, &server) else {
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

    let forward = forward(&mut cx, file.forward.as_ref());
    if let Some(n) = &file.server.get_ref().token_cache_entries {
        if *n.get_ref() > 10_000_000 {
            cx.err(n.span(), "server.token_cache_entries", "at most 10000000");
        }
    }

    if !cx.problems.is_empty() {
        return Err(ConfigError::Invalid(cx.problems));
    }

    let resources =
        crate::routes::resource_documents(&routes, issuers.iter().map(|i| i.issuer.as_str()));
    let table = RouteTable::new(routes);
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
        warnings,
    })
}

/// Best-effort dotted key for a serde error: the table header above the error and the key on
/// its line, so `unknown field` errors name where they are.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in text[..line_start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            break;
        }
    }
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let key = line.split('=').next().unwrap_or("").trim();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn server(cx: &mut Ctx<'_>, s: &ServerFile) -> ServerConfig {
    let listen = socket_addr(cx, &s.listen, "server.listen");
    let admin_listen = s
        .admin_listen
        .as_ref()
        .map(|a| socket_addr(cx, a, "server.admin_listen"));
    let mut trusted_proxies = Vec::new();
    if let Some(list) = &s.trusted_proxies {
        for (i, p) in list.get_ref().iter().enumerate() {
            let raw = p.get_ref().trim();
            let parsed =
                IpNet::from_str(raw).or_else(|_| std::net::IpAddr::from_str(raw).map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => cx.err(
                    p.span(),
                    &format!("server.trusted_proxies[{i}]"),
                    format!("{raw:?} is not an IP address or CIDR block"),
                ),
            }
        }
    }
    let realm = match &s.realm {
        Some(r)
            if r.get_ref().is_empty()
                || !r
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_graphic() || c == ' ')
                || r.get_ref().contains(['"', '\\']) =>
        {
            cx.err(
                r.span(),
                "server.realm",
                "must be printable ASCII without quotes or backslashes",
            );
            DEFAULT_REALM.to_owned()
        }
        Some(r) => r.get_ref().clone(),
        None => DEFAULT_REALM.to_owned(),
    };
    let path = PathOptions {
        allow_semicolon: s.allow_semicolon_in_path.unwrap_or(false),
        max_len: cx.size(
            &s.max_path_bytes,
            "server.max_path_bytes",
            DEFAULT_MAX_PATH_BYTES,
            64,
            64 * 1024,
        ),
    };
    ServerConfig {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_listen: admin_listen.flatten(),
        realm,
        max_header_bytes: cx.size(
            &s.max_header_bytes,
            "server.max_header_bytes",
            DEFAULT_MAX_HEADER_BYTES,
            8192,
            1024 * 1024,
        ),
        max_headers: cx.size(
            &s.max_headers,
            "server.max_headers",
            DEFAULT_MAX_HEADERS,
            8,
            1000,
        ),
        path,
        header_read_timeout: cx.duration(
            &s.header_read_timeout,
            "server.header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(300)),
        ),
        body_read_timeout: cx.duration(
            &s.body_read_timeout,
            "server.body_read_timeout",
            DEFAULT_IDLE_IO_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(3600)),
        ),
        send_timeout: cx.duration(
            &s.send_timeout,
            "server.send_timeout",
            DEFAULT_IDLE_IO_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(3600)),
        ),
        shutdown_grace: cx.duration(
            &s.shutdown_grace,
            "server.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            (Duration::ZERO, Duration::from_secs(3600)),
        ),
        trusted_proxies,
        allow_underscores_in_headers: s.allow_underscores_in_headers.unwrap_or(false),
        max_body_bytes: cx.max_body(&s.max_body_bytes, "server.max_body_bytes"),
        resource: cx.resource(&s.resource, "server.resource", path),
        http2: s.http2.unwrap_or(true),
        log_format: s
            .log_format
            .as_ref()
            .map_or(LogFormat::Text, |f| *f.get_ref()),
        access_log: s.access_log.unwrap_or(true),
        mode: s.mode.as_ref().map_or(Mode::Enforce, |m| *m.get_ref()),
        watch_config: s.watch_config.unwrap_or(true),
        worker_threads: s
            .worker_threads
            .as_ref()
            .map(|_| cx.size(&s.worker_threads, "server.worker_threads", 1, 1, 1024)),
        max_connections: s.max_connections.as_ref().map(|_| {
            cx.size(
                &s.max_connections,
                "server.max_connections",
                1,
                1,
                10_000_000,
            )
        }),
        max_requests_in_flight: cx.size(
            &s.max_requests_in_flight,
            "server.max_requests_in_flight",
            DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            1,
            10_000_000,
        ),
        http2_max_concurrent_streams: cx.size(
            &s.http2_max_concurrent_streams,
            "server.http2_max_concurrent_streams",
            DEFAULT_H2_MAX_CONCURRENT_STREAMS as usize,
            1,
            65_536,
        ) as u32,
    }
}

fn socket_addr(cx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
    match SocketAddr::from_str(v.get_ref()) {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                v.span(),
                key,
                format!(
                    "{:?} is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:8080\")",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

fn upstream(cx: &mut Ctx<'_>, name: &str, u: &Spanned<UpstreamFile>) -> UpstreamConfig {
    let u = u.get_ref();
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let mut scheme = http::uri::Scheme::HTTP;
    let mut authority = http::uri::Authority::from_static("invalid");
    match http::Uri::from_str(u.url.get_ref()) {
        Ok(uri) => {
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                cx.err(
                    u.url.span(),
                    &key("url"),
                    "must be an http:// or https:// URL",
                );
            }
            match uri.authority() {
                Some(a) if !a.as_str().contains('@') => authority = a.clone(),
                Some(_) => cx.err(u.url.span(), &key("url"), "must not carry user information"),
                None => cx.err(u.url.span(), &key("url"), "must name a host"),
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                cx.err(
                    u.url.span(),
                    &key("url"),
                    "must not have a path or query: the request path is forwarded as is",
                );
            }
            if let Some(s) = uri.scheme() {
                scheme = s.clone();
            }
        }
        Err(e) => cx.err(
            u.url.span(),
            &key("url"),
            format!("{:?} is not a URL: {e}", u.url.get_ref()),
        ),
    }
    let tls = upstream_tls(cx, u, &scheme, &authority, &key);
    let long = (Duration::from_millis(1), Duration::from_secs(3600));
    UpstreamConfig {
        name: name.to_owned(),
        scheme,
        authority,
        connect_timeout: cx.duration(
            &u.connect_timeout,
            &key("connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
            long,
        ),
        request_timeout: cx.duration(
            &u.request_timeout,
            &key("request_timeout"),
            DEFAULT_REQUEST_TIMEOUT,
            long,
        ),
        idle_timeout: cx.duration(
            &u.idle_timeout,
            &key("idle_timeout"),
            DEFAULT_IDLE_TIMEOUT,
            long,
        ),
        tunnel_idle_timeout: cx.duration(
            &u.tunnel_idle_timeout,
            &key("tunnel_idle_timeout"),
            DEFAULT_TUNNEL_IDLE_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(24 * 3600)),
        ),
        max_idle_connections: cx.size(
            &u.max_idle_connections,
            &key("max_idle_connections"),
            DEFAULT_MAX_IDLE_CONNECTIONS,
            0,
            10_000,
        ),
        pass_host_header: u.pass_host_header.unwrap_or(true),
        tls_files: [&u.tls_ca_file, &u.tls_client_cert, &u.tls_client_key]
            .into_iter()
            .flatten()
            .filter(|_| tls.is_some())
            .map(|f| PathBuf::from(f.get_ref()))
            .collect(),
        tls,
    }
}

/// The TLS settings of an `https` upstream; its TLS keys on an `http` one are an error, since
/// they would suggest a protection the connection does not have.
fn upstream_tls(
    cx: &mut Ctx<'_>,
    u: &UpstreamFile,
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
    key: &dyn Fn(&str) -> String,
) -> Option<crate::tls::UpstreamTls> {
    if *scheme != http::uri::Scheme::HTTPS {
        for (k, v) in [
            ("tls_ca_file", &u.tls_ca_file),
            ("tls_server_name", &u.tls_server_name),
            ("tls_client_cert", &u.tls_client_cert),
            ("tls_client_key", &u.tls_client_key),
        ] {
            if let Some(v) = v {
                cx.err(v.span(), &key(k), "only applies to an https:// url");
            }
        }
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = match &u.tls_server_name {
        Some(n) => {
            crate::tls::server_name(n.get_ref()).map_err(|e| (n.span(), key("tls_server_name"), e))
        }
        None => crate::tls::server_name(host).map_err(|e| (u.url.span(), key("url"), e)),
    };
    let ca = u.tls_ca_file.as_ref();
    let roots = crate::tls::roots(ca.map(|f| Path::new(f.get_ref().as_str())))
        .map_err(|e| (ca.map_or(0..0, Spanned::span), key("tls_ca_file"), e));
    let identity = match (&u.tls_client_cert, &u.tls_client_key) {
        (None, None) => Ok(None),
        (Some(c), None) => Err((
            c.span(),
            key("tls_client_key"),
            "is needed with tls_client_cert".into(),
        )),
        (None, Some(k)) => Err((
            k.span(),
            key("tls_client_cert"),
            "is needed with tls_client_key".into(),
        )),
        (Some(c), Some(k)) => {
            crate::tls::Identity::load(Path::new(c.get_ref()), Path::new(k.get_ref()))
                .map(Some)
                .map_err(|e| match e {
                    crate::tls::IdentityError::Cert(e) => (c.span(), key("tls_client_cert"), e),
                    crate::tls::IdentityError::Key(e) => (k.span(), key("tls_client_key"), e),
                })
        }
    };
    let made = match (name, roots, identity) {
        (Ok(name), Ok(roots), Ok(identity)) => crate::tls::UpstreamTls::new(name, roots, identity)
            .map_err(|e| {
                let span = u
                    .tls_client_key
                    .as_ref()
                    .map_or(u.url.span(), Spanned::span);
                (span, key("tls_client_key"), e)
            }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    };
    made.map_err(|(span, k, e)| cx.err(span, &k, e)).ok()
}

fn scope_list(
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

fn route(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &Spanned<RouteFile>,
    upstreams: &[String],
    server: &ServerConfig,
) -> Option<Route> {
    let path_opts = server.path;
    let span = r.span();
    let r = r.get_ref();
    let key = |k: &str| format!("routes[{i}].{k}");
    let mut ok = true;

    let matcher = match (&r.prefix, &r.path) {
        (Some(_), Some(p)) => {
            cx.err(
                p.span(),
                &key("path"),
                "give either `prefix` or `path`, not both",
            );
            ok = false;
            None
        }
        (None, None) => {
            cx.err(
                span.clone(),
                &format!("routes[{i}]"),
                "needs a `prefix` or a `path`",
            );
            ok = false;
            None
        }
        (Some(p), None) => canonical(cx, p, &key("prefix"), path_opts).map(PathMatch::Prefix),
        (None, Some(p)) => canonical(cx, p, &key("path"), path_opts).map(PathMatch::Exact),
    };

    let methods = match &r.methods {
        None => None,
        Some(list) if list.get_ref().is_empty() => {
            cx.err(
                list.span(),
                &key("methods"),
                "an empty list matches nothing; leave the key out to match every method",
            );
            ok = false;
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
                        ok = false;
                    }
                }
            }
            Some(out)
        }
    };

    let upstream = match upstreams.iter().position(|u| u == r.upstream.get_ref()) {
        Some(idx) => Some(idx),
        None => {
            let known = if upstreams.is_empty() {
                "none are defined".to_owned()
            } else {
                format!("defined: {}", upstreams.join(", "))
            };
            cx.err(
                r.upstream.span(),
                &key("upstream"),
                format!("unknown upstream {:?} ({known})", r.upstream.get_ref()),
            );
            None
        }
    };

    let auth = match r.auth.as_ref().map(|a| *a.get_ref()) {
        None | Some(AuthFile::Bearer) => AuthMode::Bearer,
        Some(AuthFile::None) => AuthMode::None,
        Some(AuthFile::Deny) => AuthMode::Deny,
    };
    let scopes = scope_list(cx, &r.scopes, &key("scopes"));
    let scopes_any = scope_list(cx, &r.scopes_any, &key("scopes_any"));
    if auth != AuthMode::Bearer {
        for (k, v) in [("scopes", &r.scopes), ("scopes_any", &r.scopes_any)] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    &key(k),
                    format!(
                        "scopes only apply to auth = \"bearer\"; this route has auth = \"{}\"",
                        auth.as_str()
                    ),
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

    // Only a `true` needs checking: `cors_preflight = false` is the default, fine anywhere.
    let cors_preflight = r.cors_preflight.as_ref().filter(|c| *c.get_ref());
    if let Some(c) = cors_preflight {
        let problem = if auth != AuthMode::Bearer {
            Some(format!(
                "only applies to auth = \"bearer\"; this route has auth = \"{}\"",
                auth.as_str()
            ))
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
        (None, Some(PathMatch::Prefix(p))) => format!("{p}*").into(),
        (None, Some(PathMatch::Exact(p))) => p.as_str().into(),
        (None, None) => format!("routes[{i}]").into(),
    };

    if !ok {
        return None;
    }
    Some(Route {
        name,
        matcher: matcher?,
        methods,
        upstream: upstream?,
        auth,
        scopes,
        scopes_any,
        token_in_query: r.token_in_query.unwrap_or(false),
        cors_preflight: cors_preflight.is_some(),
        audit: r.mode.as_ref().map_or(server.mode, |m| *m.get_ref()) == Mode::Audit,
        max_body: cx
            .max_body(&r.max_body_bytes, &key("max_body_bytes"))
            .or(server.max_body_bytes),
        allow_encoded_percent: r.allow_encoded_percent.unwrap_or(false),
        resource: cx
            .resource(&r.resource, &key("resource"), path_opts)
            .or_else(|| server.resource.clone()),
    })
}

fn canonical(
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

fn parse_alg(s: &str) -> Option<Algorithm> {
    crate::jose::algorithm(s)
}

fn issuer(cx: &mut Ctx<'_>, i: usize, iss: &Spanned<IssuerFile>) -> Option<IssuerConfig> {
    let span = iss.span();
    let f = iss.get_ref();
    let key = |k: &str| format!("issuers[{i}].{k}");
    let before = cx.problems.len();

    let issuer = f.issuer.get_ref().clone();
    if issuer.is_empty() {
        cx.err(f.issuer.span(), &key("issuer"), "must not be empty");
    }

    let discovery = f.discovery.as_ref().is_some_and(|d| *d.get_ref());
    let sources = [f.jwks_uri.is_some(), discovery, f.jwks_file.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let has_hmac = f.hmac_secret_file.is_some() || f.hmac_secret_env.is_some();
    let mut keys = if sources == 0 {
        KeySource::None
    } else {
        KeySource::Discovery
    };
    if sources > 1 {
        cx.err(
            span.clone(),
            &format!("issuers[{i}]"),
            "give only one of `jwks_uri`, `discovery = true`, `jwks_file`",
        );
    } else if sources == 0 && !has_hmac {
        cx.err(
            span.clone(),
            &format!("issuers[{i}]"),
            "needs a key source: `jwks_uri`, `discovery = true` or `jwks_file`",
        );
    }
    if let Some(u) = &f.jwks_uri {
        match http::Uri::from_str(u.get_ref()) {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("https" | "http"))
                    && uri.authority().is_some() =>
            {
                keys = KeySource::JwksUri(uri)
            }
            _ => cx.err(
                u.span(),
                &key("jwks_uri"),
                format!("{:?} is not an http(s) URL", u.get_ref()),
            ),
        }
    } else if let Some(p) = &f.jwks_file {
        if !std::path::Path::new(p.get_ref()).is_file() {
            cx.err(
                p.span(),
                &key("jwks_file"),
                format!(
                    "{:?} is not a readable file (relative paths start in the working directory)",
                    p.get_ref()
                ),
            );
        }
        keys = KeySource::File(PathBuf::from(p.get_ref()));
    }
    if discovery {
        match http::Uri::from_str(&issuer) {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("https" | "http"))
                    && uri.authority().is_some() => {}
            _ => cx.err(
                f.issuer.span(),
                &key("issuer"),
                "discovery needs the issuer to be an http(s) URL",
            ),
        }
    }

    let audiences = match &f.audiences {
        Some(a) if !a.get_ref().is_empty() && a.get_ref().iter().all(|s| !s.is_empty()) => {
            a.get_ref().clone()
        }
        Some(a) => {
            cx.err(
                a.span(),
                &key("audiences"),
                "must list at least one non-empty audience",
            );
            Vec::new()
        }
        None => {
            cx.err(
                span.clone(),
                &key("audiences"),
                "is required: a token's `aud` must name this API (RFC 9068 section 4)",
            );
            Vec::new()
        }
    };

    let mut algorithms = Vec::new();
    match &f.algorithms {
        None => algorithms.push(Algorithm::RS256),
        Some(list) if list.get_ref().is_empty() => cx.err(
            list.span(),
            &key("algorithms"),
            "must list at least one algorithm",
        ),
        Some(list) => {
            for (j, a) in list.get_ref().iter().enumerate() {
                match parse_alg(a.get_ref()) {
                    Some(alg) if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) && !has_hmac => cx.err(
                        a.span(),
                        &format!("issuers[{i}].algorithms[{j}]"),
                        format!("{} needs a symmetric key: set `hmac_secret_file` or `hmac_secret_env`", a.get_ref()),
                    ),
                    Some(alg) => algorithms.push(alg),
                    None => cx.err(
                        a.span(),
                        &format!("issuers[{i}].algorithms[{j}]"),
                        format!(
                            "{:?} is not an accepted algorithm (RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA HS256 HS384 HS512; never \"none\")",
                            a.get_ref()
                        ),
                    ),
                }
            }
        }
    }

    let mut hmac_secret = None;
    if f.hmac_secret_file.is_some() && f.hmac_secret_env.is_some() {
        cx.err(
            span.clone(),
            &format!("issuers[{i}]"),
            "give only one of `hmac_secret_file`, `hmac_secret_env`",
        );
    } else if let Some(p) = &f.hmac_secret_file {
        match std::fs::read(p.get_ref()) {
            Ok(bytes) => hmac_secret = Some(trim_secret(bytes)),
            Err(e) => cx.err(
                p.span(),
                &key("hmac_secret_file"),
                format!("cannot read {:?}: {e}", p.get_ref()),
            ),
        }
    } else if let Some(v) = &f.hmac_secret_env {
        match std::env::var(v.get_ref()) {
            Ok(s) => hmac_secret = Some(trim_secret(s.into_bytes())),
            Err(_) => cx.err(
                v.span(),
                &key("hmac_secret_env"),
                format!("environment variable {:?} is not set", v.get_ref()),
            ),
        }
    }
    if let Some(s) = &hmac_secret {
        // RFC 7518 3.2: a key of the same size as the hash output or larger.
        if s.0.len() < 32 {
            let span = f
                .hmac_secret_file
                .as_ref()
                .or(f.hmac_secret_env.as_ref())
                .map_or(span.clone(), |s| s.span());
            cx.err(
                span,
                &key("hmac_secret"),
                format!("the secret is {} bytes; HS256 needs at least 32", s.0.len()),
            );
        }
    }

    let minute = Duration::from_secs(60);
    let day = Duration::from_secs(24 * 3600);
    let min_refresh = cx.duration(
        &f.jwks_min_refresh,
        &key("jwks_min_refresh"),
        DEFAULT_JWKS_MIN_REFRESH,
        (Duration::from_millis(100), day),
    );
    let max_refresh = cx.duration(
        &f.jwks_max_refresh,
        &key("jwks_max_refresh"),
        DEFAULT_JWKS_MAX_REFRESH,
        (Duration::from_millis(100), 7 * day),
    );
    let refresh = cx.duration(
        &f.jwks_refresh,
        &key("jwks_refresh"),
        DEFAULT_JWKS_REFRESH,
        (Duration::from_millis(100), 7 * day),
    );
    if min_refresh > max_refresh {
        let s = f
            .jwks_min_refresh
            .as_ref()
            .map_or(span.clone(), |s| s.span());
        cx.err(
            s,
            &key("jwks_min_refresh"),
            "is larger than jwks_max_refresh",
        );
    }
    let jwks = JwksPolicy {
        refresh: refresh.clamp(min_refresh.min(max_refresh), max_refresh),
        min_refresh,
        max_refresh,
        timeout: cx.duration(
            &f.jwks_timeout,
            &key("jwks_timeout"),
            DEFAULT_JWKS_TIMEOUT,
            (Duration::from_millis(10), minute),
        ),
        max_bytes: cx.size(
            &f.jwks_max_bytes,
            &key("jwks_max_bytes"),
            DEFAULT_JWKS_MAX_BYTES,
            1024,
            16 * 1024 * 1024,
        ),
        // aws-lc verifies RSA from 2048 to 8192 bits; an operator may only raise the floor.
        min_rsa_bits: cx.size(&f.min_rsa_bits, &key("min_rsa_bits"), 2048, 2048, 8192),
        unknown_kid_cooldown: cx.duration(
            &f.unknown_kid_cooldown,
            &key("unknown_kid_cooldown"),
            DEFAULT_UNKNOWN_KID_COOLDOWN,
            (Duration::ZERO, day),
        ),
        max_stale: cx.duration(
            &f.max_stale,
            &key("max_stale"),
            DEFAULT_MAX_STALE,
            (Duration::ZERO, 30 * day),
        ),
    };

    let scope_claims = match &f.scope_claims {
        Some(c) if c.get_ref().is_empty() => {
            cx.err(
                c.span(),
                &key("scope_claims"),
                "must name at least one claim",
            );
            Vec::new()
        }
        Some(c) => c.get_ref().clone(),
        None => vec!["scope".to_owned(), "scp".to_owned()],
    };

    let config = IssuerConfig {
        issuer,
        keys,
        audiences,
        algorithms,
        leeway: cx.duration(
            &f.leeway,
            &key("leeway"),
            DEFAULT_LEEWAY,
            (Duration::ZERO, Duration::from_secs(300)),
        ),
        typ: f.typ.as_ref().map_or(TypPolicy::AtJwt, |t| *t.get_ref()),
        scope_claims,
        hmac_secret,
        max_token_bytes: cx.size(
            &f.max_token_bytes,
            &key("max_token_bytes"),
            DEFAULT_MAX_TOKEN_BYTES,
            256,
            64 * 1024,
        ),
        accept_bound_tokens: f.accept_bound_tokens.unwrap_or(false),
        jwks,
    };
    (cx.problems.len() == before).then_some(config)
}

fn trim_secret(mut bytes: Vec<u8>) -> Secret {
    // A trailing newline from `echo > file` is not part of a secret.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Secret(bytes)
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
