//! `[cache]`: the Valkey/Redis store replicas share.

use super::*;
use redis::IntoConnectionInfo;

/// `[cache]`: a `redis://` URL (or `rediss://` for TLS, `redis+unix://`), inline or from a
/// file or the environment, an optional password kept apart from it, the TLS trust for
/// `rediss://`, a command timeout and a key prefix.
pub(super) fn cache(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::CacheFile>>,
) -> Option<CacheConfig> {
    let span = f?.span();
    let f = f?.get_ref();
    if let Some(list) = &f.redis_cluster_urls {
        return cluster(cx, f, list, span);
    }
    let url = match (&f.redis_url, &f.redis_url_file, &f.redis_url_env) {
        (Some(u), None, None) => Some(Secret(u.get_ref().as_bytes().to_vec())),
        (None, None, None) => {
            cx.err(
                span,
                "cache.redis_url",
                "is required in [cache]: the Valkey/Redis URL, e.g. \"redis://127.0.0.1:6379/0\" \
                 (or redis_url_file / redis_url_env)",
            );
            return None;
        }
        (Some(u), _, _) => {
            cx.err(
                u.span(),
                "cache.redis_url",
                "give only one of `redis_url`, `redis_url_file`, `redis_url_env`",
            );
            return None;
        }
        (None, file, env) => cx.secret((file, env), "cache.redis_url", &span),
    }?;
    let url_span = [&f.redis_url, &f.redis_url_file, &f.redis_url_env]
        .into_iter()
        .flatten()
        .next()
        .map_or(span.clone(), Spanned::span);
    // The URL is never echoed: it may hold a password.
    let info = std::str::from_utf8(&url.0)
        .ok()
        .filter(|u| {
            ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| u.starts_with(s))
        })
        .and_then(|u| u.into_connection_info().ok());
    let Some(info) = info else {
        cx.err(
            url_span,
            "cache.redis_url",
            "is not a redis://, rediss:// (TLS) or redis+unix:// URL that bearward can use",
        );
        return None;
    };
    let tls_url = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let password = cx.secret(
        (&f.redis_password_file, &f.redis_password_env),
        "cache.redis_password",
        &span,
    );
    if password
        .as_ref()
        .is_some_and(|p| std::str::from_utf8(&p.0).is_err())
    {
        cx.err(
            span.clone(),
            "cache.redis_password",
            "the password is not UTF-8 text",
        );
    }
    let tls = redis_tls(cx, f, tls_url);
    Some(rest(cx, f, span, url, Vec::new(), password, tls))
}

/// `redis_cluster_urls`: seed nodes, all `redis://` or all `rediss://`, database 0, one
/// password; the cluster client's own checks run here, so a mistake is a config error.
fn cluster(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    list: &Spanned<Vec<Spanned<String>>>,
    span: Range<usize>,
) -> Option<CacheConfig> {
    if let Some(u) = [&f.redis_url, &f.redis_url_file, &f.redis_url_env]
        .into_iter()
        .flatten()
        .next()
    {
        cx.err(
            u.span(),
            "cache.redis_cluster_urls",
            "give either redis_cluster_urls (a Redis Cluster) or redis_url (one node)",
        );
        return None;
    }
    if list.get_ref().is_empty() {
        cx.err(
            list.span(),
            "cache.redis_cluster_urls",
            "must list at least one node",
        );
        return None;
    }
    let mut infos = Vec::new();
    for (i, u) in list.get_ref().iter().enumerate() {
        let text = u.get_ref().as_str();
        let info = ["redis://", "rediss://"]
            .iter()
            .any(|s| text.starts_with(s))
            .then(|| text.into_connection_info().ok())
            .flatten();
        match info {
            Some(info) => infos.push(info),
            None => cx.err(
                u.span(),
                &format!("cache.redis_cluster_urls[{i}]"),
                "is not a redis:// or rediss:// URL of a cluster node",
            ),
        }
    }
    if infos.len() != list.get_ref().len() {
        return None;
    }
    if let Err(e) = redis::cluster::ClusterClient::new(infos.clone()) {
        // redis-rs's messages name no URL ("Cannot use different TLS modes among initial
        // nodes."), so they are safe to show.
        cx.err(list.span(), "cache.redis_cluster_urls", e.to_string());
        return None;
    }
    let password = cx.secret(
        (&f.redis_password_file, &f.redis_password_env),
        "cache.redis_password",
        &span,
    );
    let tls_url = matches!(infos[0].addr(), redis::ConnectionAddr::TcpTls { .. });
    let tls = redis_tls(cx, f, tls_url);
    let urls = list
        .get_ref()
        .iter()
        .map(|u| Secret(u.get_ref().as_bytes().to_vec()))
        .collect();
    Some(rest(cx, f, span, Secret(Vec::new()), urls, password, tls))
}

/// The keys a single node and a cluster share.
fn rest(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    span: Range<usize>,
    redis_url: Secret,
    cluster_urls: Vec<Secret>,
    password: Option<Secret>,
    tls: Option<RedisTls>,
) -> CacheConfig {
    let key_prefix = f
        .key_prefix
        .as_ref()
        .map_or_else(|| "bearward:".to_owned(), |p| p.get_ref().clone());
    if !cluster_urls.is_empty() && key_prefix.contains(['{', '}']) {
        // A hash tag in the prefix would put every key in one slot, on one master.
        cx.err(
            f.key_prefix.as_ref().map_or(span.clone(), Spanned::span),
            "cache.key_prefix",
            "must not hold `{` or `}` on a cluster: a hash tag there would put every key on one master",
        );
    }
    if key_prefix.len() > 64 {
        cx.err(
            f.key_prefix.as_ref().map_or(span, Spanned::span),
            "cache.key_prefix",
            "at most 64 bytes",
        );
    }
    CacheConfig {
        redis_url,
        cluster_urls,
        password,
        tls,
        timeout: cx.duration(
            &f.redis_timeout,
            "cache.redis_timeout",
            Duration::from_millis(100),
            (Duration::from_millis(1), Duration::from_secs(10)),
        ),
        key_prefix,
        rate_limit_fallback_replicas: cx.size(
            &f.rate_limit_fallback_replicas,
            "cache.rate_limit_fallback_replicas",
            1,
            1,
            10_000,
        ) as u32,
    }
}

/// `redis_ca_file` and the client certificate: loaded and checked here (a CA file without a
/// certificate, a key that is not the certificate's), kept as the PEM the client takes.
fn redis_tls(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    tls_url: bool,
) -> Option<RedisTls> {
    let keys = [
        ("cache.redis_ca_file", &f.redis_ca_file),
        ("cache.redis_client_cert_file", &f.redis_client_cert_file),
        ("cache.redis_client_key_file", &f.redis_client_key_file),
    ];
    if !tls_url {
        for (k, v) in keys {
            if let Some(v) = v {
                cx.err(v.span(), k, "only applies to a rediss:// url");
            }
        }
        return None;
    }
    let mut tls = RedisTls::default();
    if let Some(ca) = &f.redis_ca_file {
        match crate::tls::roots(Some(Path::new(ca.get_ref()))) {
            Ok(_) => tls.ca_pem = std::fs::read(ca.get_ref()).ok(),
            Err(e) => cx.err(ca.span(), "cache.redis_ca_file", e),
        }
    }
    match (&f.redis_client_cert_file, &f.redis_client_key_file) {
        (None, None) => {}
        (Some(c), None) => cx.err(
            c.span(),
            "cache.redis_client_key_file",
            "is needed with redis_client_cert_file",
        ),
        (None, Some(k)) => cx.err(
            k.span(),
            "cache.redis_client_cert_file",
            "is needed with redis_client_key_file",
        ),
        (Some(c), Some(k)) => {
            match crate::tls::Identity::load(Path::new(c.get_ref()), Path::new(k.get_ref())) {
                Ok(_) => {
                    let key = cx.read_secret_file(k.get_ref()).ok().map(Secret);
                    tls.client = std::fs::read(c.get_ref()).ok().zip(key);
                }
                Err(crate::tls::IdentityError::Cert(e)) => {
                    cx.err(c.span(), "cache.redis_client_cert_file", e);
                }
                Err(crate::tls::IdentityError::Key(e)) => {
                    cx.err(k.span(), "cache.redis_client_key_file", e);
                }
            }
        }
    }
    Some(tls)
}
