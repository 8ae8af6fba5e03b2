//! `[decision]`: the listener ingresses ask, who may ask, and the one convention read.

use super::*;

/// `[decision]`: its listener, who may ask, and where the original request is read from.
pub(super) fn decision(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::DecisionFile>>,
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
    let grpc_listen = f.grpc_listen.as_ref().and_then(|g| {
        let addr = server::socket_addr(cx, g, "decision.grpc_listen")?;
        if (addr == listen || addr == server.listening.listen) && addr.port() != 0 {
            cx.err(
                g.span(),
                "decision.grpc_listen",
                "is another listener's address",
            );
        }
        Some(addr)
    });
    let trusted_proxies = match &f.trusted_proxies {
        None => vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "::1/128".parse().expect("a CIDR"),
        ],
        Some(list) => cx.ip_nets(list, "decision.trusted_proxies"),
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
    let host_header = f.original_host_header.as_ref().map(|_| {
        header(
            &f.original_host_header,
            "decision.original_host_header",
            "x-original-host",
            cx,
        )
    });
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
                (&f.original_host_header, "original_host_header"),
            ],
            Ingress::Envoy => &[
                (&f.original_method_header, "original_method_header"),
                (&f.original_uri_header, "original_uri_header"),
                (&f.original_host_header, "original_host_header"),
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
        grpc_listen,
        trusted_proxies,
        method_header,
        uri_header,
        host_header,
        // Set once the routes are known.
        hosts: false,
        envoy_path_prefix,
        ingress,
    })
}
