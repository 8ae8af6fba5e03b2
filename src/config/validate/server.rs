//! `[server]`.

use super::Ctx;
use crate::config::file::*;
use crate::config::*;
use std::net::SocketAddr;
use std::str::FromStr;
use toml::Spanned;

pub(super) fn server(cx: &mut Ctx<'_>, s: &ServerFile) -> ServerConfig {
    let listen = socket_addr(cx, &s.listen, "server.listen");
    let admin_listen = s
        .admin_listen
        .as_ref()
        .map(|a| socket_addr(cx, a, "server.admin_listen"));
    let trusted_proxies = s
        .trusted_proxies
        .as_ref()
        .map_or_else(Vec::new, |list| cx.ip_nets(list, "server.trusted_proxies"));
    let proxy_protocol_from = s
        .proxy_protocol_from
        .as_ref()
        .map_or_else(Vec::new, |list| {
            cx.ip_nets(list, "server.proxy_protocol_from")
        });
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
    let http2 = s.http2.unwrap_or(true);
    let (tls, tls_files) = listener_tls(cx, s, http2);
    let public_origin = s.public_origin.as_ref().and_then(|o| {
        let text = o.get_ref().trim_end_matches('/');
        let ok = http::Uri::from_str(text).is_ok_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http"))
                && u.authority().is_some()
                && u.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        });
        if ok {
            Some(text.to_owned())
        } else {
            cx.err(
                o.span(),
                "server.public_origin",
                format!(
                    "{:?} is not an origin: scheme://host[:port], no path (e.g. \"https://api.example.com\")",
                    o.get_ref()
                ),
            );
            None
        }
    });
    let client_cert_header = s.client_cert_header.as_ref().and_then(|h| {
        match http::header::HeaderName::from_str(h.get_ref()) {
            Ok(name) => {
                let format = s.client_cert_header_format.as_ref().map_or(
                    if name == "x-forwarded-client-cert" {
                        CertHeaderFormat::Xfcc
                    } else {
                        CertHeaderFormat::Pem
                    },
                    |f| *f.get_ref(),
                );
                if trusted_proxies.is_empty() {
                    cx.err(
                        h.span(),
                        "server.client_cert_header",
                        "is read only from trusted_proxies, and none are set",
                    );
                }
                Some((name, format))
            }
            Err(_) => {
                cx.err(
                    h.span(),
                    "server.client_cert_header",
                    format!("{:?} is not a header name", h.get_ref()),
                );
                None
            }
        }
    });
    ServerConfig {
        listening: Listening {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_listen: admin_listen.flatten(),
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
            header_read_timeout: cx.duration(
                &s.header_read_timeout,
                "server.header_read_timeout",
                DEFAULT_HEADER_READ_TIMEOUT,
                (Duration::from_millis(100), Duration::from_secs(300)),
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
            shutdown_delay: cx.duration(
                &s.shutdown_delay,
                "server.shutdown_delay",
                Duration::ZERO,
                (Duration::ZERO, Duration::from_secs(3600)),
            ),
            http2,
            log_format: s
                .log_format
                .as_ref()
                .map_or(LogFormat::Text, |f| *f.get_ref()),
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
            listen_backlog: cx.size(
                &s.listen_backlog,
                "server.listen_backlog",
                DEFAULT_LISTEN_BACKLOG as usize,
                1,
                1 << 20,
            ) as u32,
            max_requests_in_flight: cx.size(
                &s.max_requests_in_flight,
                "server.max_requests_in_flight",
                DEFAULT_MAX_REQUESTS_IN_FLIGHT,
                1,
                10_000_000,
            ),
            max_requests_per_connection: s.max_requests_per_connection.is_some().then(|| {
                cx.size(
                    &s.max_requests_per_connection,
                    "server.max_requests_per_connection",
                    usize::MAX,
                    1,
                    1_000_000_000,
                )
            }),
            max_connection_age: s.max_connection_age.is_some().then(|| {
                cx.duration(
                    &s.max_connection_age,
                    "server.max_connection_age",
                    Duration::MAX,
                    (Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600)),
                )
            }),
            http2_max_concurrent_streams: cx.size(
                &s.http2_max_concurrent_streams,
                "server.http2_max_concurrent_streams",
                DEFAULT_H2_MAX_CONCURRENT_STREAMS as usize,
                1,
                65_536,
            ) as u32,
        },
        client_cert_header,
        tls,
        tls_files,
        tls_handshake_timeout: cx.duration(
            &s.tls_handshake_timeout,
            "server.tls_handshake_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(300)),
        ),
        public_origin,
        realm,
        path,
        body_read_timeout: cx.duration(
            &s.body_read_timeout,
            "server.body_read_timeout",
            DEFAULT_IDLE_IO_TIMEOUT,
            (Duration::from_millis(100), Duration::from_secs(3600)),
        ),
        trusted_proxies,
        proxy_protocol_from,
        allow_underscores_in_headers: s.allow_underscores_in_headers.unwrap_or(false),
        max_body_bytes: cx.max_body(&s.max_body_bytes, "server.max_body_bytes"),
        resource: cx.resource(&s.resource, "server.resource", path),
        access_log: s.access_log.unwrap_or(true),
        access_log_claims: access_log_claims(cx, &s.access_log_claims),
        request_id_header: request_id_header(cx, &s.request_id_header),
        mode: s.mode.as_ref().map_or(Mode::Enforce, |m| *m.get_ref()),
        watch_config: s.watch_config.unwrap_or(true),
    }
}

/// Most claims an access-log line may carry: it is written for every request.
const MAX_LOGGED_CLAIMS: usize = 16;

/// `server.access_log_claims`: claim paths (as `claim_headers` takes them), each once.
fn access_log_claims(cx: &mut Ctx<'_>, v: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
    let Some(list) = v else {
        return Vec::new();
    };
    let key = "server.access_log_claims";
    if list.get_ref().len() > MAX_LOGGED_CLAIMS {
        cx.err(
            list.span(),
            key,
            format!("names more than {MAX_LOGGED_CLAIMS} claims"),
        );
    }
    let mut out: Vec<String> = Vec::new();
    for (i, c) in list.get_ref().iter().enumerate() {
        let name = c.get_ref();
        if crate::routes::claim_path(name).is_none() {
            cx.err(
                c.span(),
                &format!("{key}[{i}]"),
                "a claim path has no empty segments (write \\. for a dot inside a name)",
            );
        } else if out.contains(name) {
            cx.err(
                c.span(),
                &format!("{key}[{i}]"),
                format!("{name:?} is named twice"),
            );
        } else {
            out.push(name.clone());
        }
    }
    out
}

/// `server.request_id_header`: a header name bearward does not own for another purpose.
fn request_id_header(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<String>>,
) -> Option<http::header::HeaderName> {
    let Some(v) = v else {
        return Some(http::header::HeaderName::from_static("x-request-id"));
    };
    if v.get_ref().is_empty() {
        return None;
    }
    let key = "server.request_id_header";
    match http::header::HeaderName::from_str(v.get_ref()) {
        Ok(name)
            if crate::headers::is_reserved_header(&name)
                || crate::headers::is_hop_view(&name)
                || name == http::header::COOKIE =>
        {
            cx.err(
                v.span(),
                key,
                format!(
                    "{:?} is a header bearward reads or sets for another purpose",
                    v.get_ref()
                ),
            );
            None
        }
        Ok(name) => Some(name),
        Err(_) => {
            cx.err(
                v.span(),
                key,
                format!("{:?} is not a header name", v.get_ref()),
            );
            None
        }
    }
}

pub(super) fn socket_addr(cx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
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

/// `tls_cert_file` and `tls_key_file` (both or neither), `tls_client_ca_file` and
/// `tls_client_auth`: the listener's TLS, read and checked now, and the files to watch.
fn listener_tls(
    cx: &mut Ctx<'_>,
    s: &ServerFile,
    http2: bool,
) -> (Option<crate::tls::ListenerTls>, Vec<std::path::PathBuf>) {
    use crate::tls::{ClientAuth, ListenerTls, ListenerTlsError};
    let auth = s
        .tls_client_auth
        .as_ref()
        .map_or(ClientAuth::None, |a| *a.get_ref());
    let (cert, key) = match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            let stray = [
                (
                    "server.tls_client_ca_file",
                    s.tls_client_ca_file.as_ref().map(Spanned::span),
                ),
                (
                    "server.tls_client_auth",
                    s.tls_client_auth.as_ref().map(Spanned::span),
                ),
                (
                    "server.tls_handshake_timeout",
                    s.tls_handshake_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "server.tls_certificates",
                    s.tls_certificates.as_ref().map(Spanned::span),
                ),
            ];
            for (k, span) in stray {
                if let Some(span) = span {
                    cx.err(
                        span,
                        k,
                        "applies only with TLS on the listener: set tls_cert_file and tls_key_file",
                    );
                }
            }
            return (None, Vec::new());
        }
        (Some(c), None) => {
            cx.err(
                c.span(),
                "server.tls_key_file",
                "tls_cert_file needs tls_key_file",
            );
            return (None, Vec::new());
        }
        (None, Some(k)) => {
            cx.err(
                k.span(),
                "server.tls_cert_file",
                "tls_key_file needs tls_cert_file",
            );
            return (None, Vec::new());
        }
    };
    let ca = s.tls_client_ca_file.as_ref();
    if auth == ClientAuth::None {
        if let Some(ca) = ca {
            cx.err(
                ca.span(),
                "server.tls_client_ca_file",
                "client certificates are not asked for: set tls_client_auth = \"optional\" or \"required\"",
            );
        }
    }
    let mut files = vec![
        std::path::PathBuf::from(cert.get_ref()),
        std::path::PathBuf::from(key.get_ref()),
    ];
    files.extend(ca.map(|c| std::path::PathBuf::from(c.get_ref())));
    let others: &[Spanned<crate::config::file::ListenerCertFile>] =
        s.tls_certificates.as_ref().map_or(&[], |l| l.get_ref());
    if others.len() > 64 {
        let span = s
            .tls_certificates
            .as_ref()
            .map_or(cert.span(), Spanned::span);
        cx.err(span, "server.tls_certificates", "at most 64 certificates");
        return (None, files);
    }
    let paths: Vec<(&std::path::Path, &std::path::Path)> = others
        .iter()
        .map(|o| {
            let o = o.get_ref();
            (
                std::path::Path::new(o.cert_file.get_ref()),
                std::path::Path::new(o.key_file.get_ref()),
            )
        })
        .collect();
    for (c, k) in &paths {
        files.extend([c.to_path_buf(), k.to_path_buf()]);
    }
    match ListenerTls::new(
        std::path::Path::new(cert.get_ref()),
        std::path::Path::new(key.get_ref()),
        &paths,
        ca.map(|c| std::path::Path::new(c.get_ref())),
        auth,
        http2,
    ) {
        Ok(t) => (Some(t), files),
        Err(e) => {
            let (span, k, m) = match e {
                ListenerTlsError::Cert(m) => (cert.span(), "server.tls_cert_file".to_owned(), m),
                ListenerTlsError::Key(m) => (key.span(), "server.tls_key_file".to_owned(), m),
                ListenerTlsError::Extra(i, m) => {
                    (others[i].span(), format!("server.tls_certificates[{i}]"), m)
                }
                ListenerTlsError::ClientCa(m) => (
                    ca.map_or_else(
                        || {
                            s.tls_client_auth
                                .as_ref()
                                .map_or(cert.span(), Spanned::span)
                        },
                        Spanned::span,
                    ),
                    "server.tls_client_ca_file".to_owned(),
                    m,
                ),
            };
            cx.err(span, &k, m);
            (None, files)
        }
    }
}
