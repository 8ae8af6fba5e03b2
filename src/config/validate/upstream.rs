//! `[upstreams.NAME]`, TLS files included.

use super::Ctx;
use crate::config::file::*;
use crate::config::*;
use std::str::FromStr;
use toml::Spanned;

pub(super) fn upstream(cx: &mut Ctx<'_>, name: &str, u: &Spanned<UpstreamFile>) -> UpstreamConfig {
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
    let mut tls = upstream_tls(cx, u, &scheme, &authority, &key);
    let protocol = match u.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "http1")) => Protocol::Http1,
        Some((p, "h2c")) => {
            if scheme != http::uri::Scheme::HTTP {
                cx.err(
                    p.span(),
                    &key("protocol"),
                    "\"h2c\" is HTTP/2 without TLS: use an http:// url, or \"h2\" for https://",
                );
            }
            Protocol::H2c
        }
        Some((p, "h2")) => {
            if scheme != http::uri::Scheme::HTTPS {
                cx.err(
                    p.span(),
                    &key("protocol"),
                    "\"h2\" is HTTP/2 over TLS: use an https:// url, or \"h2c\" for http://",
                );
            }
            tls = tls.map(|t| t.with_h2());
            Protocol::H2
        }
        Some((p, other)) => {
            cx.err(
                p.span(),
                &key("protocol"),
                format!("{other:?} is none of \"http1\", \"h2c\", \"h2\""),
            );
            Protocol::Http1
        }
    };
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
        protocol,
        h2_keepalive_interval: match &u.h2_keepalive_interval {
            Some(v) if v.get_ref() == "off" => None,
            _ => Some(cx.duration(
                &u.h2_keepalive_interval,
                &key("h2_keepalive_interval"),
                DEFAULT_H2_KEEPALIVE_INTERVAL,
                (Duration::from_secs(1), Duration::from_secs(3600)),
            )),
        },
        h2_keepalive_timeout: cx.duration(
            &u.h2_keepalive_timeout,
            &key("h2_keepalive_timeout"),
            DEFAULT_H2_KEEPALIVE_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(600)),
        ),
    }
}

/// The TLS settings of an `https` upstream; its TLS keys on an `http` one are an error, since
/// they would suggest a protection the connection does not have.
pub(super) fn upstream_tls(
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
