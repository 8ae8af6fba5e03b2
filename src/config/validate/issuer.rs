//! `[[issuers]]`: key source, audiences, algorithms, JWKS policy, secrets.

use super::Ctx;
use crate::config::file::*;
use crate::config::*;
use jsonwebtoken::Algorithm;
use std::str::FromStr;
use toml::Spanned;

/// One `[[issuers]]` entry: each part is checked by its own function below, and every
/// problem is reported (with its line) before the entry is refused.
pub(super) fn issuer(
    cx: &mut Ctx<'_>,
    i: usize,
    iss: &Spanned<IssuerFile>,
) -> Option<IssuerConfig> {
    let span = iss.span();
    let f = iss.get_ref();
    let key = |k: &str| format!("issuers[{i}].{k}");
    let before = cx.problems.len();

    let issuer = f.issuer.get_ref().clone();
    if issuer.is_empty() {
        cx.err(f.issuer.span(), &key("issuer"), "must not be empty");
    }
    let has_hmac = f.hmac_secret_file.is_some() || f.hmac_secret_env.is_some();
    let token_format = f
        .token_format
        .as_ref()
        .map_or(TokenFormat::Jwt, |t| *t.get_ref());
    let keys = key_source(cx, i, f, &span, has_hmac, token_format);
    let introspection = introspection(cx, i, f, &span, token_format);
    let audiences = audiences(cx, i, f, &span);
    let algorithms = algorithms(cx, i, f, has_hmac);
    let hmac_secret = hmac_secret(cx, i, f, &span);
    let jwks = jwks_policy(cx, i, f, &span);

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
        max_lifetime: f.max_lifetime.as_ref().map(|_| {
            cx.duration(
                &f.max_lifetime,
                &key("max_lifetime"),
                Duration::ZERO,
                (Duration::from_secs(1), Duration::from_secs(365 * 24 * 3600)),
            )
        }),
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
        token_format,
        introspection,
        proxy: proxy(cx, f.proxy.as_ref(), &key("proxy")),
        allow_insecure_http: f.allow_insecure_http.as_ref().is_some_and(|b| *b.get_ref()),
        trusted_key_origins: trusted_origins(cx, f, &key("trusted_key_origins")),
        revoked: revoked(cx, f, &key("revoked")),
        tenant: tenant(cx, f, token_format, &key),
    };
    transport(cx, f, &config, &key);
    (cx.problems.len() == before).then_some(config)
}

/// The placeholder Entra's discovery document writes for the tenant in its issuer.
const TENANT: &str = "{tenantid}";

/// `issuer` with a `{tenantid}` segment, and `tenants`: the template, or `None` (with the
/// problem reported) for an issuer without one or one that is not a whole path segment.
fn tenant(
    cx: &mut Ctx<'_>,
    f: &IssuerFile,
    format: TokenFormat,
    key: &dyn Fn(&str) -> String,
) -> Option<Box<TenantTemplate>> {
    let issuer = f.issuer.get_ref();
    let Some((prefix, suffix)) = issuer.split_once(TENANT) else {
        if let Some(t) = &f.tenants {
            cx.err(
                t.span(),
                &key("tenants"),
                format!("needs an issuer with a {TENANT} segment (issuer is {issuer:?})"),
            );
        }
        return None;
    };
    let span = f.issuer.span();
    let before = cx.problems.len();
    // The tenant must be a whole path segment after the host: in the host it would name
    // another server, whose keys these are not; beside other text it could be cut two ways.
    let path_segment = prefix.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "https" | "http") && rest.find('/').is_some_and(|at| at > 0)
    }) && prefix.ends_with('/')
        && (suffix.is_empty() || suffix.starts_with('/'));
    if suffix.contains(TENANT) {
        cx.err(
            span.clone(),
            &key("issuer"),
            format!("may hold {TENANT} once"),
        );
    } else if !path_segment {
        cx.err(
            span.clone(),
            &key("issuer"),
            format!(
                "{TENANT} must be a whole path segment of an http(s) URL, after the host (https://login.microsoftonline.com/{TENANT}/v2.0)"
            ),
        );
    }
    if let Some(d) = f.discovery.as_ref().filter(|d| *d.get_ref()) {
        cx.err(
            d.span(),
            &key("discovery"),
            format!(
                "no one discovery document is every tenant's: give the keys with jwks_uri (Entra: https://login.microsoftonline.com/common/discovery/v2.0/keys) with a {TENANT} issuer"
            ),
        );
    }
    if format != TokenFormat::Jwt {
        cx.err(
            span.clone(),
            &key("issuer"),
            format!(
                "a {TENANT} issuer takes JWTs only (token_format = \"jwt\"): an introspection answer names no tenant to check"
            ),
        );
    }
    let mut allowed = std::collections::HashSet::new();
    if let Some(list) = &f.tenants {
        if list.get_ref().len() > MAX_TENANTS {
            cx.err(
                list.span(),
                &key("tenants"),
                format!("lists more than {MAX_TENANTS}"),
            );
        }
        for (n, t) in list.get_ref().iter().enumerate() {
            if !TenantTemplate::is_tenant_id(t.get_ref()) {
                cx.err(
                    t.span(),
                    &format!("{}[{n}]", key("tenants")),
                    format!(
                        "{:?} is not a tenant id: 1 to {MAX_TENANT_ID} letters, digits, '-', '.' or '_'",
                        t.get_ref()
                    ),
                );
            }
            allowed.insert(t.get_ref().clone());
        }
        if list.get_ref().is_empty() {
            cx.err(
                list.span(),
                &key("tenants"),
                "is empty: leave it out to take any tenant, or list the ones taken",
            );
        }
    }
    (cx.problems.len() == before).then(|| {
        Box::new(TenantTemplate {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            allowed,
        })
    })
}

/// Most tenants an issuer may list: a set looked up once per validation.
const MAX_TENANTS: usize = 100_000;

/// Most entries `revoked` may list, all lists together: a set looked up once per validation,
/// and a config that stays quick to load.
const MAX_REVOKED: usize = 100_000;

/// `revoked`: the lists as sets, `issued_before` as RFC 3339.
fn revoked(cx: &mut Ctx<'_>, f: &IssuerFile, key: &str) -> Option<Box<Revoked>> {
    let v = f.revoked.as_ref()?;
    let r = v.get_ref();
    let set = |l: &Option<Vec<String>>| -> std::collections::HashSet<String> {
        l.iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    };
    let issued_before = r
        .issued_before
        .as_ref()
        .and_then(|t| match humantime::parse_rfc3339_weak(t.get_ref()) {
            Ok(at) => Some(
                at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            Err(_) => {
                cx.err(
                    t.span(),
                    &format!("{key}.issued_before"),
                    format!(
                        "{:?} is not an RFC 3339 time (e.g. \"2026-12-07T18:00:00Z\")",
                        t.get_ref()
                    ),
                );
                None
            }
        });
    let revoked = Revoked {
        token_ids: set(&r.token_ids),
        subjects: set(&r.subjects),
        clients: set(&r.clients),
        issued_before,
    };
    let n = revoked.token_ids.len() + revoked.subjects.len() + revoked.clients.len();
    if n > MAX_REVOKED {
        cx.err(
            v.span(),
            key,
            format!("lists {n} entries; at most {MAX_REVOKED}"),
        );
        return None;
    }
    (revoked != Revoked::default()).then(|| Box::new(revoked))
}

pub(super) fn trim_secret(mut bytes: Vec<u8>) -> Secret {
    // A trailing newline from `echo > file` is not part of a secret.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Secret(bytes)
}

/// Where the keys come from: exactly one of `jwks_uri`, `discovery`, `jwks_file` (or none,
/// with an HMAC secret).
fn key_source(
    cx: &mut Ctx<'_>,
    i: usize,
    f: &IssuerFile,
    span: &std::ops::Range<usize>,
    has_hmac: bool,
    format: TokenFormat,
) -> KeySource {
    let key = |k: &str| format!("issuers[{i}].{k}");
    let discovery = f.discovery.as_ref().is_some_and(|d| *d.get_ref());
    let sources = [f.jwks_uri.is_some(), discovery, f.jwks_file.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let mut keys = if sources == 0 {
        KeySource::None
    } else {
        KeySource::Discovery
    };
    if format == TokenFormat::Opaque {
        if sources > 0 || has_hmac {
            cx.err(
                span.clone(),
                &format!("issuers[{i}]"),
                "token_format = \"opaque\" introspects every token, so its signing keys would \
                 never be used: remove them, or set token_format = \"auto\" to take both",
            );
        }
        return KeySource::None;
    }
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
                keys = KeySource::JwksUri(uri);
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
    // A `{tenantid}` issuer's own check says why discovery cannot serve it.
    if discovery && !f.issuer.get_ref().contains(TENANT) {
        match http::Uri::from_str(f.issuer.get_ref()) {
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

    keys
}

/// `audiences`: required, since a token's `aud` must name this API.
fn audiences(
    cx: &mut Ctx<'_>,
    i: usize,
    f: &IssuerFile,
    span: &std::ops::Range<usize>,
) -> Vec<String> {
    let key = |k: &str| format!("issuers[{i}].{k}");
    match &f.audiences {
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
    }
}

/// `algorithms`: registered names only, HS* only with a secret.
fn algorithms(cx: &mut Ctx<'_>, i: usize, f: &IssuerFile, has_hmac: bool) -> Vec<Algorithm> {
    let key = |k: &str| format!("issuers[{i}].{k}");
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
                match crate::jose::algorithm(a.get_ref()) {
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

    algorithms
}

/// `hmac_secret_file` or `hmac_secret_env`, at least 32 bytes.
fn hmac_secret(
    cx: &mut Ctx<'_>,
    i: usize,
    f: &IssuerFile,
    span: &std::ops::Range<usize>,
) -> Option<Secret> {
    let key = |k: &str| format!("issuers[{i}].{k}");
    let hmac_secret = cx.secret(
        (&f.hmac_secret_file, &f.hmac_secret_env),
        &key("hmac_secret"),
        span,
    );
    if let Some(s) = &hmac_secret {
        // RFC 7518 3.2: a key of the same size as the hash output or larger.
        if s.0.len() < 32 {
            let span = f
                .hmac_secret_file
                .as_ref()
                .or(f.hmac_secret_env.as_ref())
                .map_or(span.clone(), toml::Spanned::span);
            cx.err(
                span,
                &key("hmac_secret"),
                format!("the secret is {} bytes; HS256 needs at least 32", s.0.len()),
            );
        }
    }

    hmac_secret
}

/// The JWKS fetch and refresh bounds.
fn jwks_policy(
    cx: &mut Ctx<'_>,
    i: usize,
    f: &IssuerFile,
    span: &std::ops::Range<usize>,
) -> JwksPolicy {
    let key = |k: &str| format!("issuers[{i}].{k}");
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
            .map_or(span.clone(), toml::Spanned::span);
        cx.err(
            s,
            &key("jwks_min_refresh"),
            "is larger than jwks_max_refresh",
        );
    }
    JwksPolicy {
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
    }
}

/// The first introspection key set in an entry, for "does not apply" messages.
fn first_introspection_key(f: &IssuerFile) -> Option<(&'static str, std::ops::Range<usize>)> {
    fn at<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    [
        ("introspection", at(&f.introspection)),
        ("introspection_endpoint", at(&f.introspection_endpoint)),
        ("introspection_client_id", at(&f.introspection_client_id)),
        (
            "introspection_client_auth",
            at(&f.introspection_client_auth),
        ),
        (
            "introspection_client_secret_file",
            at(&f.introspection_client_secret_file),
        ),
        (
            "introspection_client_secret_env",
            at(&f.introspection_client_secret_env),
        ),
        (
            "introspection_client_key_file",
            at(&f.introspection_client_key_file),
        ),
        ("introspection_cache_ttl", at(&f.introspection_cache_ttl)),
        (
            "introspection_negative_ttl",
            at(&f.introspection_negative_ttl),
        ),
        ("introspection_timeout", at(&f.introspection_timeout)),
        (
            "introspection_max_in_flight",
            at(&f.introspection_max_in_flight),
        ),
    ]
    .into_iter()
    .find_map(|(k, s)| Some((k, s?)))
}

/// Where and how opaque tokens are introspected (RFC 7662): for `token_format = "opaque"` or
/// `"auto"` only, and then required.
fn introspection(
    cx: &mut Ctx<'_>,
    i: usize,
    f: &IssuerFile,
    span: &std::ops::Range<usize>,
    format: TokenFormat,
) -> Option<Introspection> {
    let key = |k: &str| format!("issuers[{i}].{k}");
    if let Some(v) = &f.introspection_client_secret {
        cx.err(
            v.span(),
            &key("introspection_client_secret"),
            "a secret never goes in the config file: use introspection_client_secret_file or \
             introspection_client_secret_env",
        );
    }
    if format == TokenFormat::Jwt {
        if let Some((k, s)) = first_introspection_key(f) {
            cx.err(
                s,
                &key(k),
                "introspection applies only to token_format = \"opaque\" or \"auto\" \
                 (this issuer's tokens are JWTs, the default)",
            );
        }
        return None;
    }
    let discovery = f.introspection.as_ref().is_some_and(|d| *d.get_ref());
    let endpoint = match (&f.introspection_endpoint, discovery) {
        (Some(e), true) => {
            cx.err(
                e.span(),
                &key("introspection_endpoint"),
                "give only one of `introspection_endpoint` and `introspection = true`",
            );
            None
        }
        (Some(e), false) => match http::Uri::from_str(e.get_ref()) {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("https" | "http"))
                    && uri.authority().is_some() =>
            {
                Some(uri)
            }
            _ => {
                cx.err(
                    e.span(),
                    &key("introspection_endpoint"),
                    format!("{:?} is not an http(s) URL", e.get_ref()),
                );
                None
            }
        },
        (None, true) => {
            let ok = http::Uri::from_str(f.issuer.get_ref()).is_ok_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some()
            });
            if !ok {
                cx.err(
                    f.issuer.span(),
                    &key("issuer"),
                    "introspection discovery needs the issuer to be an http(s) URL",
                );
            }
            None
        }
        (None, false) => {
            let s = f.token_format.as_ref().map_or(span.clone(), Spanned::span);
            cx.err(
                s,
                &key("token_format"),
                "opaque tokens need an introspection endpoint: set introspection_endpoint = \
                 \"https://...\", or introspection = true to find it by discovery",
            );
            None
        }
    };
    let client_id = match &f.introspection_client_id {
        Some(c) if !c.get_ref().is_empty() => c.get_ref().clone(),
        Some(c) => {
            cx.err(
                c.span(),
                &key("introspection_client_id"),
                "must not be empty",
            );
            String::new()
        }
        None => {
            cx.err(
                span.clone(),
                &key("introspection_client_id"),
                "is required: the introspection endpoint authenticates its callers (RFC 7662 2.1)",
            );
            String::new()
        }
    };
    let fields = ClientAuthFields {
        client_auth: &f.introspection_client_auth,
        client_secret_file: &f.introspection_client_secret_file,
        client_secret_env: &f.introspection_client_secret_env,
        client_key_file: &f.introspection_client_key_file,
        client_key_alg: &f.introspection_client_key_alg,
        client_key_id: &f.introspection_client_key_id,
    };
    let client_auth = client_auth(
        cx,
        fields,
        &format!("issuers[{i}].introspection_"),
        span,
        false,
    )?;
    Some(Introspection {
        endpoint,
        client_id,
        client_auth,
        cache_ttl: cx.duration(
            &f.introspection_cache_ttl,
            &key("introspection_cache_ttl"),
            DEFAULT_INTROSPECTION_CACHE_TTL,
            (Duration::ZERO, Duration::from_secs(3600)),
        ),
        negative_ttl: cx.duration(
            &f.introspection_negative_ttl,
            &key("introspection_negative_ttl"),
            DEFAULT_INTROSPECTION_NEGATIVE_TTL,
            (Duration::ZERO, Duration::from_secs(300)),
        ),
        timeout: cx.duration(
            &f.introspection_timeout,
            &key("introspection_timeout"),
            DEFAULT_INTROSPECTION_TIMEOUT,
            (Duration::from_millis(10), Duration::from_secs(60)),
        ),
        max_in_flight: cx.size(
            &f.introspection_max_in_flight,
            &key("introspection_max_in_flight"),
            DEFAULT_INTROSPECTION_MAX_IN_FLIGHT,
            1,
            4096,
        ),
        require_audience: f
            .introspection_require_audience
            .as_ref()
            .is_none_or(|b| *b.get_ref()),
    })
}

/// The keys of a client's authentication at an authorization server: an issuer's
/// `introspection_client_*`, an upstream's `token_exchange` `client_*`.
pub(super) struct ClientAuthFields<'a> {
    pub client_auth: &'a Option<Spanned<ClientAuthMethod>>,
    pub client_secret_file: &'a Option<Spanned<String>>,
    pub client_secret_env: &'a Option<Spanned<String>>,
    pub client_key_file: &'a Option<Spanned<String>>,
    pub client_key_alg: &'a Option<Spanned<String>>,
    pub client_key_id: &'a Option<Spanned<String>>,
}

/// `client_auth` and its secret or key: `client_secret_basic` (the default
/// without a key file), `client_secret_post`, or `private_key_jwt` (the default with one).
pub(super) fn client_auth(
    cx: &mut Ctx<'_>,
    f: ClientAuthFields<'_>,
    prefix: &str,
    span: &std::ops::Range<usize>,
    certificate: bool,
) -> Option<ClientAuth> {
    let key = |k: &str| format!("{prefix}{k}");
    let name = |k: &str| {
        let full = key(k);
        full.rsplit('.').next().unwrap_or(k).to_owned()
    };
    let method = f.client_auth.as_ref().map_or(
        if f.client_key_file.is_some() {
            ClientAuthMethod::PrivateKeyJwt
        } else {
            ClientAuthMethod::ClientSecretBasic
        },
        |m| *m.get_ref(),
    );
    if method == ClientAuthMethod::TlsClientAuth {
        let m = f.client_auth.as_ref().map_or(span.clone(), Spanned::span);
        if !certificate {
            cx.err(
                m,
                &key("client_auth"),
                "tls_client_auth (RFC 8705) needs a client certificate: tls_client_cert and \
                 tls_client_key (an upstream's token_exchange takes them)",
            );
            return None;
        }
        let unused = (f.client_secret_file.as_ref())
            .or(f.client_secret_env.as_ref())
            .or(f.client_key_file.as_ref());
        if let Some(u) = unused {
            cx.err(
                u.span(),
                &key("client_auth"),
                "tls_client_auth authenticates with the certificate; a secret or key would \
                 never be used",
            );
            return None;
        }
        return Some(ClientAuth::Tls);
    }
    if method == ClientAuthMethod::PrivateKeyJwt {
        let secret = (f.client_secret_file.as_ref()).or(f.client_secret_env.as_ref());
        if let Some(s) = secret {
            cx.err(
                s.span(),
                &key("client_auth"),
                format!(
                    "private_key_jwt signs with {}; a client secret would never be used",
                    name("client_key_file")
                ),
            );
        }
        let Some(file) = &f.client_key_file else {
            cx.err(
                span.clone(),
                &key("client_key_file"),
                "private_key_jwt needs a PEM private key file",
            );
            return None;
        };
        let pem = match cx.read_secret_file(file.get_ref()) {
            Ok(b) => b,
            Err(e) => {
                cx.err(
                    file.span(),
                    &key("client_key_file"),
                    format!("cannot read {:?}: {e}", file.get_ref()),
                );
                return None;
            }
        };
        let alg_name = f
            .client_key_alg
            .as_ref()
            .map_or("RS256", |a| a.get_ref().as_str());
        let alg = crate::jose::algorithm(alg_name)
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let Some(alg) = alg else {
            let s = f
                .client_key_alg
                .as_ref()
                .map_or(span.clone(), Spanned::span);
            cx.err(
                s,
                &key("client_key_alg"),
                format!("{alg_name:?} is not an asymmetric signature algorithm"),
            );
            return None;
        };
        // Signing once here turns a key that does not fit its algorithm into a config error
        // instead of a failure at the first opaque token.
        if let Err(e) = crate::jose::sign_test(&pem, alg) {
            cx.err(
                file.span(),
                &key("client_key_file"),
                format!("{:?} cannot sign {alg_name}: {e}", file.get_ref()),
            );
            return None;
        }
        return Some(ClientAuth::PrivateKeyJwt {
            key_pem: Secret(pem),
            alg,
            kid: f.client_key_id.as_ref().map(|k| k.get_ref().clone()),
        });
    }
    if let Some(k) = &f.client_key_file {
        cx.err(
            k.span(),
            &key("client_key_file"),
            format!(
                "a key file is used only with {} = \"private_key_jwt\"",
                name("client_auth")
            ),
        );
    }
    let secret = cx.secret(
        (f.client_secret_file, f.client_secret_env),
        &key("client_secret"),
        span,
    );
    let Some(secret) = secret else {
        if f.client_secret_file.is_none() && f.client_secret_env.is_none() {
            cx.err(
                span.clone(),
                &key("client_secret_file"),
                format!(
                    "the client needs a secret: {} or {}",
                    name("client_secret_file"),
                    name("client_secret_env")
                ),
            );
        }
        return None;
    };
    if secret.0.is_empty() {
        cx.err(span.clone(), &key("client_secret"), "the secret is empty");
        return None;
    }
    Some(match method {
        ClientAuthMethod::ClientSecretPost => ClientAuth::SecretPost(secret),
        _ => ClientAuth::SecretBasic(secret),
    })
}

/// `proxy`: an `http://` URL with a host and nothing after it but `/`. The URL is not echoed
/// in an error: it may hold credentials.
fn proxy(cx: &mut Ctx<'_>, p: Option<&Spanned<String>>, key: &str) -> Option<http::Uri> {
    let p = p?;
    match http::Uri::from_str(p.get_ref()) {
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.authority().is_some_and(|a| !a.host().is_empty())
                && matches!(
                    uri.path_and_query().map(http::uri::PathAndQuery::as_str),
                    None | Some("/")
                ) =>
        {
            Some(uri)
        }
        _ => {
            cx.err(
                p.span(),
                key,
                "is not an http://host:port proxy URL (HTTPS is tunnelled through it with \
                 CONNECT; https:// and socks proxies are not supported)",
            );
            None
        }
    }
}

/// `trusted_key_origins`: origins only (`scheme://host[:port]`), written as [`origin_of`] does.
fn trusted_origins(cx: &mut Ctx<'_>, f: &IssuerFile, key: &str) -> Vec<String> {
    let Some(list) = &f.trusted_key_origins else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, o) in list.get_ref().iter().enumerate() {
        let uri = http::Uri::from_str(o.get_ref()).ok();
        let origin = uri.as_ref().filter(|u| {
            matches!(u.scheme_str(), Some("https" | "http"))
                && matches!(
                    u.path_and_query().map(http::uri::PathAndQuery::as_str),
                    None | Some("/")
                )
        });
        match origin.and_then(crate::config::origin_of) {
            Some(o) => out.push(o),
            None => cx.err(
                o.span(),
                &format!("{key}[{i}]"),
                format!(
                    "{:?} is not an origin (https://host[:port], nothing after it)",
                    o.get_ref()
                ),
            ),
        }
    }
    out
}

/// The URLs the file names for keys and introspection, and the issuer's own when discovery
/// starts from it: https, or plain http only where nothing can sit between (loopback) or the
/// issuer says `allow_insecure_http`. Trusted origins must be usable the same way.
fn transport(
    cx: &mut Ctx<'_>,
    f: &IssuerFile,
    config: &IssuerConfig,
    key: &dyn Fn(&str) -> String,
) {
    let mut given: Vec<(http::Uri, std::ops::Range<usize>, String)> = Vec::new();
    if let KeySource::JwksUri(u) = &config.keys {
        let span = f.jwks_uri.as_ref().map_or(0..0, Spanned::span);
        given.push((u.clone(), span, key("jwks_uri")));
    }
    let discovers = config.keys == KeySource::Discovery
        || config
            .introspection
            .as_ref()
            .is_some_and(|i| i.endpoint.is_none());
    if discovers {
        if let Ok(u) = http::Uri::from_str(&config.issuer) {
            given.push((u, f.issuer.span(), key("issuer")));
        }
    }
    if let Some(u) = config
        .introspection
        .as_ref()
        .and_then(|i| i.endpoint.clone())
    {
        let span = f
            .introspection_endpoint
            .as_ref()
            .map_or(0..0, Spanned::span);
        given.push((u, span, key("introspection_endpoint")));
    }
    for (i, o) in config.trusted_key_origins.iter().enumerate() {
        if let Ok(u) = http::Uri::from_str(o) {
            let span = f
                .trusted_key_origins
                .as_ref()
                .and_then(|l| l.get_ref().get(i))
                .map_or(0..0, Spanned::span);
            given.push((u, span, format!("{}[{i}]", key("trusted_key_origins"))));
        }
    }
    for (uri, span, k) in given {
        if let Err(e) = config.transport_ok(&uri) {
            cx.err(span, &k, e);
        }
    }
}
