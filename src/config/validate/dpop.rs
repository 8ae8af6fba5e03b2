//! `[dpop]`: how DPoP proofs are checked (and `[cache] dpop_replay_store_down`).

use super::*;

/// `[dpop]`, and `[cache] dpop_replay_store_down`.
pub(super) fn dpop(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::DpopFile>>,
    cache: Option<&Spanned<crate::config::file::CacheFile>>,
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
    let span = f.nonce_secret_file.as_ref().or(f.nonce_secret_env.as_ref());
    if let Some(span) = span.map(Spanned::span) {
        let secret = cx.secret(
            (&f.nonce_secret_file, &f.nonce_secret_env),
            "dpop.nonce_secret",
            &span,
        );
        match secret {
            Some(s) if s.0.len() >= 32 => d.nonce_secret = Some(s),
            Some(_) => cx.err(
                span,
                "dpop.nonce_secret",
                "the secret must be at least 32 bytes",
            ),
            None => {}
        }
    }
    d
}
