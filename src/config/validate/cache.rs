//! `[cache]`: the Valkey/Redis store replicas share.

use super::*;

/// `[cache]`: a `redis://` URL (or `rediss://` for TLS, `redis+unix://`), a command timeout
/// and a key prefix.
pub(super) fn cache(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::CacheFile>>,
) -> Option<CacheConfig> {
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
