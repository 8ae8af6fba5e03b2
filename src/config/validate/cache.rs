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
    if f.redis_sentinel_urls.is_none() {
        let only = [
            ("cache.redis_sentinel_master", &f.redis_sentinel_master),
            (
                "cache.redis_sentinel_password_file",
                &f.redis_sentinel_password_file,
            ),
            (
                "cache.redis_sentinel_password_env",
                &f.redis_sentinel_password_env,
            ),
        ];
        for (k, v) in only {
            if let Some(v) = v {
                cx.err(v.span(), k, "only applies with redis_sentinel_urls");
            }
        }
    }
    match (&f.redis_cluster_urls, &f.redis_sentinel_urls) {
        (Some(_), Some(s)) => {
            cx.err(
                s.span(),
                "cache.redis_sentinel_urls",
                "give either redis_sentinel_urls (a master the sentinels name) or \
                 redis_cluster_urls (a Redis Cluster)",
            );
            return None;
        }
        (Some(list), None) => return cluster(cx, f, list, span),
        (None, Some(list)) => return sentinel(cx, f, list, span),
        (None, None) => {}
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
    let nodes = Nodes {
        redis_url: url,
        ..Nodes::default()
    };
    Some(rest(cx, f, span, nodes, tls_url))
}

/// `redis_cluster_urls`: seed nodes, all `redis://` or all `rediss://`, database 0, one
/// password; the cluster client's own checks run here, so a mistake is a config error.
fn cluster(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    list: &Spanned<Vec<Spanned<String>>>,
    span: Range<usize>,
) -> Option<CacheConfig> {
    let infos = url_list(
        cx,
        f,
        list,
        "cache.redis_cluster_urls",
        "give either redis_cluster_urls (a Redis Cluster) or redis_url (one node)",
    )?;
    if let Err(e) = redis::cluster::ClusterClient::new(infos.clone()) {
        // redis-rs's messages name no URL ("Cannot use different TLS modes among initial
        // nodes."), so they are safe to show.
        cx.err(list.span(), "cache.redis_cluster_urls", e.to_string());
        return None;
    }
    let tls_url = matches!(infos[0].addr(), redis::ConnectionAddr::TcpTls { .. });
    let nodes = Nodes {
        cluster_urls: secrets(list),
        ..Nodes::default()
    };
    Some(rest(cx, f, span, nodes, tls_url))
}

/// `redis_sentinel_urls` with `redis_sentinel_master`: the sentinels, all `redis://` or all
/// `rediss://` (the master is reached the same way), and their own password apart from the
/// master's.
fn sentinel(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    list: &Spanned<Vec<Spanned<String>>>,
    span: Range<usize>,
) -> Option<CacheConfig> {
    let infos = url_list(
        cx,
        f,
        list,
        "cache.redis_sentinel_urls",
        "give either redis_sentinel_urls (a master the sentinels name) or redis_url (one node)",
    )?;
    let tls_url = matches!(infos[0].addr(), redis::ConnectionAddr::TcpTls { .. });
    for (i, info) in infos.iter().enumerate() {
        let key = format!("cache.redis_sentinel_urls[{i}]");
        let span = list.get_ref()[i].span();
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) != tls_url {
            cx.err(
                span,
                &key,
                "use one scheme for all sentinels: redis:// or rediss://",
            );
        } else if info.redis_settings().db() != 0 {
            cx.err(
                span,
                &key,
                "a sentinel has no database: leave the path out of its URL",
            );
        } else if info.redis_settings().username().is_some()
            || info.redis_settings().password().is_some()
        {
            // The URL is not echoed: it holds a password.
            cx.err(
                span,
                &key,
                "holds credentials: give the sentinels' password in \
                 redis_sentinel_password_file or redis_sentinel_password_env",
            );
        }
    }
    let master = match &f.redis_sentinel_master {
        Some(m) if !m.get_ref().trim().is_empty() => m.get_ref().clone(),
        Some(m) => {
            cx.err(m.span(), "cache.redis_sentinel_master", "must not be empty");
            return None;
        }
        None => {
            cx.err(
                list.span(),
                "cache.redis_sentinel_master",
                "is needed with redis_sentinel_urls: the name the sentinels monitor the master \
                 under (`sentinel monitor NAME ...`, \"mymaster\" in Bitnami's chart)",
            );
            return None;
        }
    };
    let password = password(
        cx,
        (
            &f.redis_sentinel_password_file,
            &f.redis_sentinel_password_env,
        ),
        "cache.redis_sentinel_password",
        &span,
    );
    let nodes = Nodes {
        sentinel: Some(SentinelConfig {
            urls: secrets(list),
            master,
            password,
        }),
        ..Nodes::default()
    };
    Some(rest(cx, f, span, nodes, tls_url))
}

/// A password from its file or variable (`key`_file, `key`_env): the client takes text.
fn password(
    cx: &mut Ctx<'_>,
    from: (&Option<Spanned<String>>, &Option<Spanned<String>>),
    key: &str,
    span: &Range<usize>,
) -> Option<Secret> {
    let p = cx.secret(from, key, span);
    if p.as_ref()
        .is_some_and(|p| std::str::from_utf8(&p.0).is_err())
    {
        cx.err(span.clone(), key, "the password is not UTF-8 text");
    }
    p
}

/// A list of node URLs (`key`) given instead of `redis_url`: not empty, each a `redis://` or
/// `rediss://` URL; never echoed, as one may hold a password.
fn url_list(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    either: &str,
) -> Option<Vec<redis::ConnectionInfo>> {
    if let Some(u) = [&f.redis_url, &f.redis_url_file, &f.redis_url_env]
        .into_iter()
        .flatten()
        .next()
    {
        cx.err(u.span(), key, either);
        return None;
    }
    if list.get_ref().is_empty() {
        cx.err(list.span(), key, "must list at least one node");
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
                &format!("{key}[{i}]"),
                "is not a redis:// or rediss:// URL of a node",
            ),
        }
    }
    (infos.len() == list.get_ref().len()).then_some(infos)
}

fn secrets(list: &Spanned<Vec<Spanned<String>>>) -> Vec<Secret> {
    list.get_ref()
        .iter()
        .map(|u| Secret(u.get_ref().as_bytes().to_vec()))
        .collect()
}

/// Where the store is: one of these is set.
#[derive(Default)]
struct Nodes {
    redis_url: Secret,
    cluster_urls: Vec<Secret>,
    sentinel: Option<SentinelConfig>,
}

/// The keys a single node, a cluster and a sentinel-named master share: the password, the
/// TLS of `rediss://` (`tls_url`), the timeout, the prefix and the fallback.
fn rest(
    cx: &mut Ctx<'_>,
    f: &crate::config::file::CacheFile,
    span: Range<usize>,
    nodes: Nodes,
    tls_url: bool,
) -> CacheConfig {
    let password = password(
        cx,
        (&f.redis_password_file, &f.redis_password_env),
        "cache.redis_password",
        &span,
    );
    let tls = redis_tls(cx, f, tls_url);
    let username = f.redis_username.as_ref().and_then(|u| {
        let name = u.get_ref();
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            cx.err(
                u.span(),
                "cache.redis_username",
                "must be a user name without spaces",
            );
            return None;
        }
        if password.is_none() {
            cx.err(
                u.span(),
                "cache.redis_username",
                "needs redis_password_file or redis_password_env: Redis authenticates a user \
                 with its password",
            );
        }
        Some(name.clone())
    });
    let secret = match cx.secret((&f.secret_file, &f.secret_env), "cache.secret", &span) {
        Some(s) if s.0.len() < 32 => {
            cx.err(
                f.secret_file
                    .as_ref()
                    .or(f.secret_env.as_ref())
                    .map_or(span.clone(), Spanned::span),
                "cache.secret",
                "must be at least 32 bytes (e.g. `openssl rand -base64 48`), the same in every replica",
            );
            None
        }
        s => s,
    };
    let Nodes {
        redis_url,
        cluster_urls,
        sentinel,
    } = nodes;
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
        secret,
        username,
        redis_url,
        cluster_urls,
        sentinel,
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
