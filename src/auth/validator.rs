//! Token validation in order: size -> parse -> issuer (by `iss`) -> algorithm allow-list -> `typ`
//! -> key (by `kid`, fitting the algorithm) -> signature -> `exp`/`nbf`/`iat`/`aud` -> scopes.
//! Claims are trusted only after the signature; before it, `iss` and `kid` only pick a key.

use super::jwks::{IssuerKeys, KeySet, VerifyKey};
use super::token::{self, Parsed};
use super::AuthError;
use crate::config::{IssuerConfig, TypPolicy};
use crate::routes::Route;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 4;

/// A token whose signature and claims passed. Its `Debug` leaves the token out (it shows the
/// token's id), so no debug print or `tracing` field of it can ever log a token.
pub struct Verified {
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: f64,
    /// Index of the issuer in the config.
    pub issuer: usize,
    /// The key that verified it: a cached token stays valid only while this key is published.
    /// `None` for an opaque token, which the issuer's introspection endpoint vouched for.
    pub key: Option<Arc<VerifyKey>>,
    /// How long a cache may keep it.
    pub ttl: Duration,
    /// The token's id in logs, computed once per validation rather than on every cache hit.
    pub token_id: super::TokenId,
    /// The token itself: the verified-token cache's key, shared with its per-thread front,
    /// where a hit is an exact comparison with it.
    pub token: Arc<[u8]>,
    /// The key the token is bound to (`cnf`, RFC 7800), checked on every request.
    pub binding: Binding,
    /// Its subject and client, read on every request of a route keyed or limited by them.
    pub principal: Principal,
    /// Its claims and scopes as `allow_if` expressions read them, made on the first.
    pub policy: crate::policy::TokenValues,
    /// What was minted for it per upstream (identity assertions, exchanged tokens).
    pub minted: super::identity::Minted,
}

/// `sub` and the client (`azp`, else `client_id`), copied out of the claims once per
/// validation: a rate-limit key or `client_ids` reads them on every request, and a lookup
/// in the claims map compares strings at each step down its tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub subject: Option<Box<str>>,
    pub client: Option<Box<str>>,
    /// A delegated token's actors (RFC 8693 4.1 `act`): the current actor's `sub` first, then
    /// each prior one's, comma-separated; for the access log.
    pub actor: Option<Arc<str>>,
}

/// Actors read from nested `act` claims, at most: a chain is a handful deep in practice.
const MAX_ACTORS: usize = 8;

impl Principal {
    pub fn of(claims: &Map<String, Value>) -> Principal {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(Box::from);
        Principal {
            subject: text(claims.get("sub")),
            client: text(claims.get("azp").or_else(|| claims.get("client_id"))),
            actor: actors(claims),
        }
    }
}

/// RFC 8693 4.1: `act` names the party acting for the subject, and an `act` inside it the one
/// that acted before; each by `sub` (`-` when one has none).
pub fn actors(claims: &Map<String, Value>) -> Option<Arc<str>> {
    let mut act = claims.get("act")?.as_object()?;
    let mut chain = Vec::new();
    loop {
        chain.push(act.get("sub").and_then(Value::as_str).unwrap_or("-"));
        match act.get("act").and_then(Value::as_object) {
            Some(prior) if chain.len() < MAX_ACTORS => act = prior,
            _ => break,
        }
    }
    Some(chain.join(",").into())
}

/// What a token's `cnf` binds it to: a DPoP key (RFC 9449 6.1 `jkt`), a client certificate
/// (RFC 8705 3.1 `x5t#S256`), or something bearward cannot check (`jwk`, `jku`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub jkt: Option<String>,
    pub x5t: Option<String>,
    pub other: bool,
}

impl Binding {
    /// Is the token sender-constrained at all?
    pub fn is_bound(&self) -> bool {
        self.jkt.is_some() || self.x5t.is_some() || self.other
    }
}

/// The token's binding; a `cnf` that is not an object of strings is a malformed claim.
/// `accept_bound_tokens` makes every token a plain bearer token.
pub(crate) fn binding_of(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    trace: &mut Trace,
) -> Result<Binding, AuthError> {
    let mut b = Binding::default();
    let Some(cnf) = claims.get("cnf") else {
        return Ok(b);
    };
    let Some(cnf) = cnf.as_object() else {
        trace.note("cnf", false, || "cnf is not an object".into());
        return Err(AuthError::BadClaims);
    };
    for (k, v) in cnf {
        let slot = match k.as_str() {
            "jkt" => &mut b.jkt,
            "x5t#S256" => &mut b.x5t,
            _ => {
                b.other = true;
                continue;
            }
        };
        match v.as_str() {
            Some(s) if !s.is_empty() => *slot = Some(s.to_owned()),
            _ => {
                trace.note("cnf", false, || format!("cnf.{k} is not a string"));
                return Err(AuthError::BadClaims);
            }
        }
    }
    if cfg.accept_bound_tokens {
        trace.note("cnf", true, || {
            "bound to a key, taken as a bearer token (accept_bound_tokens)".into()
        });
        return Ok(Binding::default());
    }
    trace.note("cnf", true, || {
        let mut on = Vec::new();
        if b.jkt.is_some() {
            on.push("a DPoP key (jkt): a DPoP proof by it is needed on each request");
        }
        if b.x5t.is_some() {
            on.push("a client certificate (x5t#S256): the request must come with it");
        }
        if b.other {
            on.push("a key bearward cannot check: refused");
        }
        format!("bound to {}", on.join("; "))
    });
    Ok(b)
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("claims", &self.claims)
            .field("scopes", &self.scopes)
            .field("exp", &self.exp)
            .field("issuer", &self.issuer)
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("token_id", &format_args!("{}", self.token_id))
            .finish_non_exhaustive()
    }
}

/// Steps of a validation, recorded only when asked (for `bearward explain`).
#[derive(Debug, Default)]
pub struct Trace {
    pub enabled: bool,
    pub steps: Vec<(String, bool, String)>,
}

impl Trace {
    pub(crate) fn note(&mut self, check: &str, ok: bool, detail: impl FnOnce() -> String) {
        if self.enabled {
            self.steps.push((check.to_owned(), ok, detail()));
        }
    }
}

/// Seconds since the epoch, with the fraction.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn alg_name(a: Algorithm) -> String {
    format!("{a:?}")
}

/// Full validation of one token against the configured issuers.
pub async fn validate(
    token: &str,
    max_len: usize,
    issuers: &[Arc<IssuerKeys>],
    trace: &mut Trace,
) -> Result<Verified, AuthError> {
    let parsed = token::parse(token, max_len)
        .inspect_err(|e| trace.note("parse", false, || e.to_string()))?;
    trace.note("parse", true, || {
        format!(
            "three base64url parts; header alg={} kid={} typ={}",
            alg_name(parsed.header.alg),
            parsed.header.kid.as_deref().unwrap_or("-"),
            parsed.header.typ.as_deref().unwrap_or("-")
        )
    });

    let iss = parsed.claims.get("iss").and_then(Value::as_str);
    let idx =
        iss.and_then(|iss| crate::config::issuer_index(issuers.iter().map(|i| &i.config), iss));
    let Some(idx) = idx else {
        trace.note("issuer", false, || {
            format!("iss {iss:?} is not a configured issuer")
        });
        return Err(AuthError::UnknownIssuer);
    };
    let keys = &issuers[idx];
    let cfg = &keys.config;
    if let Some(t) = &cfg.tenant {
        let tenant = iss.and_then(|iss| t.tenant_of(iss));
        if let Some(why) = tenant.and_then(|tenant| t.refuses(tenant, &parsed.claims)) {
            trace.note("issuer", false, || format!("{why} ({:?})", cfg.issuer));
            return Err(AuthError::UnknownIssuer);
        }
    }
    trace.note("issuer", true, || format!("iss matches {:?}", cfg.issuer));

    if token.len() > cfg.max_token_bytes {
        trace.note("size", false, || {
            format!("{} bytes > {}", token.len(), cfg.max_token_bytes)
        });
        return Err(AuthError::TooLarge);
    }
    let alg = parsed.header.alg;
    if !cfg.algorithms.contains(&alg) {
        trace.note("algorithm", false, || {
            format!(
                "{} is not in the issuer's allow-list {:?}",
                alg_name(alg),
                cfg.algorithms
            )
        });
        return Err(AuthError::BadAlgorithm);
    }
    trace.note("algorithm", true, || {
        format!("{} is allowed", alg_name(alg))
    });
    let typ_text = parsed
        .header
        .typ
        .as_deref()
        .map_or_else(|| "absent".to_owned(), |t| format!("{t:?}"));
    let policy = match cfg.typ {
        TypPolicy::AtJwt => "at+jwt",
        TypPolicy::Jwt => "jwt",
    };
    if let Err(e) = check_typ(cfg, parsed.header.typ.as_deref()) {
        trace.note("typ", false, || {
            format!("typ {typ_text} does not satisfy the issuer's policy {policy}")
        });
        return Err(e);
    }
    trace.note("typ", true, || {
        format!("typ {typ_text} accepted (policy {policy})")
    });

    let candidates = find_keys(keys, &parsed, trace).await?;
    // Canonical base64url was checked by the parser.
    let signature =
        base64::Engine::decode(&token::B64, parsed.signature).map_err(|_| AuthError::Malformed)?;
    let message = parsed.signing_input.as_bytes();
    let verified_by = candidates
        .iter()
        .find(|k| k.verify(alg, message, parsed.signature, &signature))
        .cloned();
    let Some(key) = verified_by else {
        trace.note("signature", false, || {
            "the signature does not verify".into()
        });
        return Err(AuthError::BadSignature);
    };
    trace.note("signature", true, || {
        format!(
            "verified with key kid={}",
            key.kid.as_deref().unwrap_or("-")
        )
    });

    if trace.enabled {
        if let Some(chain) = actors(&parsed.claims) {
            let sub = parsed
                .claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or("-");
            trace.note("act", true, || {
                format!("delegated (RFC 8693): {chain} acting for subject {sub}")
            });
        }
    }
    let now = now();
    let exp = check_claims(&parsed.claims, cfg, now, trace)?;
    let scopes = extract_scopes(&parsed.claims, &cfg.scope_claims).inspect_err(|_| {
        trace.note("scopes", false, || {
            "the scope claim is neither a string nor an array of strings".into()
        });
    })?;
    let binding = binding_of(&parsed.claims, cfg, trace)?;
    let ttl = Duration::from_secs_f64((exp + cfg.leeway.as_secs_f64() - now).clamp(0.0, 3600.0));
    Ok(Verified {
        binding,
        principal: Principal::of(&parsed.claims),
        policy: Default::default(),
        minted: Default::default(),
        claims: parsed.claims,
        scopes,
        exp,
        issuer: idx,
        key: Some(key),
        ttl,
        token_id: super::token_id(&super::sha256(token)),
        token: token.as_bytes().into(),
    })
}

fn check_typ(cfg: &IssuerConfig, typ: Option<&str>) -> Result<(), AuthError> {
    let is = |t: &str, want: &str| {
        t.eq_ignore_ascii_case(want) || t.eq_ignore_ascii_case(&format!("application/{want}"))
    };
    let ok = match (cfg.typ, typ) {
        (TypPolicy::AtJwt, Some(t)) => is(t, "at+jwt"),
        (TypPolicy::AtJwt, None) => false,
        (TypPolicy::Jwt, None) => true,
        (TypPolicy::Jwt, Some(t)) => is(t, "at+jwt") || is(t, "jwt"),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadType)
    }
}

async fn find_keys(
    keys: &Arc<IssuerKeys>,
    parsed: &Parsed<'_>,
    trace: &mut Trace,
) -> Result<Vec<Arc<VerifyKey>>, AuthError> {
    let alg = parsed.header.alg;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return match &keys.hmac {
            Some(k) => {
                trace.note("key", true, || "the issuer's configured HMAC secret".into());
                Ok(vec![k.clone()])
            }
            None => {
                trace.note("key", false, || "HS* needs a configured secret".into());
                Err(AuthError::BadAlgorithm)
            }
        };
    }
    let kid = parsed.header.kid.as_deref();
    let mut refetched = false;
    loop {
        let Some(set) = keys.usable() else {
            if !refetched && keys.refresh_on_demand().await {
                refetched = true;
                continue;
            }
            trace.note("key", false, || {
                "the issuer has no usable keys (never fetched, or older than max_stale)".into()
            });
            return Err(AuthError::KeysUnavailable);
        };
        match pick(&set, kid, alg) {
            Pick::Found(found) => {
                trace.note("key", true, || {
                    format!("{} candidate(s) from {}", found.len(), set.source)
                });
                return Ok(found);
            }
            Pick::WrongType => {
                trace.note("key", false, || {
                    format!("key kid={kid:?} cannot verify {}", alg_name(alg))
                });
                return Err(AuthError::BadAlgorithm);
            }
            Pick::None => {
                if !refetched && keys.refresh_on_demand().await {
                    refetched = true;
                    continue;
                }
                trace.note("key", false, || {
                    format!("no key kid={kid:?} for {} in {}", alg_name(alg), set.source)
                });
                return Err(AuthError::UnknownKey);
            }
        }
    }
}

enum Pick {
    Found(Vec<Arc<VerifyKey>>),
    WrongType,
    None,
}

fn pick(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Pick {
    match kid {
        Some(kid) => {
            let named: Vec<_> = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Pick::None;
            }
            let fit: Vec<_> = named.into_iter().filter(|k| k.fits(alg)).cloned().collect();
            if fit.is_empty() {
                Pick::WrongType
            } else {
                Pick::Found(fit)
            }
        }
        None => {
            let fit: Vec<_> = set
                .keys
                .iter()
                .filter(|k| k.fits(alg))
                .take(MAX_CANDIDATES)
                .cloned()
                .collect();
            if fit.is_empty() {
                Pick::None
            } else {
                Pick::Found(fit)
            }
        }
    }
}

/// A NumericDate claim (RFC 7519 2): a JSON number. `Ok(None)` when absent.
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(AuthError::BadClaims),
        Some(_) => Err(AuthError::BadClaims),
    }
}

/// Whose claims are checked: a verified JWT's, or an introspection answer's (RFC 7662 2.2),
/// where `exp` and `aud` are optional and `iss` and `token_type` are checked when present.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Jwt,
    Introspection,
}

/// `exp` (required), `nbf`, `iat` with leeway, and `aud`. Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now: f64,
    trace: &mut Trace,
) -> Result<f64, AuthError> {
    check_claims_of(Source::Jwt, claims, cfg, now, trace)?.ok_or(AuthError::BadClaims)
}

/// [`check_claims`] for either source. Returns `exp`, if there is one.
pub(crate) fn check_claims_of(
    source: Source,
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now: f64,
    trace: &mut Trace,
) -> Result<Option<f64>, AuthError> {
    let leeway = cfg.leeway.as_secs_f64();
    let introspected = source == Source::Introspection;
    let fail = |trace: &mut Trace, check: &str, e: AuthError, why: String| {
        trace.note(check, false, || why);
        Err(e)
    };
    if introspected {
        match claims.get("iss") {
            None => {}
            Some(Value::String(s)) if *s == cfg.issuer => {}
            Some(v) => {
                return fail(
                    trace,
                    "iss",
                    AuthError::UnknownIssuer,
                    format!("the answer's iss {v} is not {:?}", cfg.issuer),
                )
            }
        }
        // RFC 6749 1.5: a refresh token is for the authorization server only, never a
        // credential at a resource. IdPs say so in different members: RFC 7662 `token_type`,
        // Keycloak's `typ` (`Refresh`, `Offline`), Ory Hydra's `token_use`.
        for (member, refresh) in [
            ("token_type", &["refresh_token", "refresh"][..]),
            ("typ", &["refresh", "offline"][..]),
            ("token_use", &["refresh_token"][..]),
        ] {
            let Some(t) = claims.get(member) else {
                continue;
            };
            let is_refresh = t
                .as_str()
                .is_none_or(|t| refresh.iter().any(|r| t.eq_ignore_ascii_case(r)));
            if is_refresh {
                return fail(
                    trace,
                    "token_type",
                    AuthError::BadType,
                    format!("{member} {t} is not an access token"),
                );
            }
        }
    }
    let exp = match numeric(claims, "exp") {
        Ok(Some(exp)) => exp,
        Ok(None) if introspected => f64::INFINITY,
        Ok(None) => return fail(trace, "exp", AuthError::BadClaims, "exp is missing".into()),
        Err(e) => return fail(trace, "exp", e, "exp is not a number".into()),
    };
    if now >= exp + leeway {
        return fail(
            trace,
            "exp",
            AuthError::Expired,
            format!("expired {:.0}s ago (leeway {leeway}s)", now - exp),
        );
    }
    if exp.is_finite() {
        trace.note("exp", true, || format!("expires in {:.0}s", exp - now));
    } else {
        trace.note("exp", true, || "absent from the answer".into());
    }
    match numeric(claims, "nbf") {
        Ok(Some(nbf)) if now + leeway < nbf => {
            return fail(
                trace,
                "nbf",
                AuthError::NotYetValid,
                format!("not valid for another {:.0}s", nbf - now),
            )
        }
        Ok(_) => trace.note("nbf", true, || "absent or passed".into()),
        Err(e) => return fail(trace, "nbf", e, "nbf is not a number".into()),
    }
    match numeric(claims, "iat") {
        Ok(Some(iat)) if iat > now + leeway => {
            return fail(
                trace,
                "iat",
                AuthError::IssuedInFuture,
                format!("issued {:.0}s in the future", iat - now),
            )
        }
        Ok(_) => trace.note("iat", true, || "absent or in the past".into()),
        Err(e) => return fail(trace, "iat", e, "iat is not a number".into()),
    }
    if let (Some(max), true) = (cfg.max_lifetime, exp.is_finite()) {
        // Both from the IdP's clock when `iat` is there; from ours, with the leeway, when not.
        let (life, from) = match numeric(claims, "iat") {
            Ok(Some(iat)) => (exp - iat, "iat"),
            _ => (exp - now - leeway, "now"),
        };
        if life > max.as_secs_f64() {
            return fail(
                trace,
                "max_lifetime",
                AuthError::LifetimeTooLong,
                format!(
                    "exp is {life:.0}s after {from}, more than max_lifetime ({}s)",
                    max.as_secs()
                ),
            );
        }
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => {
            let mut v = Vec::with_capacity(a.len());
            for x in a {
                match x.as_str() {
                    Some(s) => v.push(s),
                    None => {
                        return fail(
                            trace,
                            "aud",
                            AuthError::BadClaims,
                            "aud holds a non-string".into(),
                        )
                    }
                }
            }
            v
        }
        None if introspected
            && !cfg
                .introspection
                .as_ref()
                .is_some_and(|i| i.require_audience) =>
        {
            trace.note("aud", true, || "absent from the answer".into());
            Vec::new()
        }
        None => {
            return fail(
                trace,
                "aud",
                AuthError::BadAudience,
                "aud is missing".into(),
            )
        }
        Some(_) => {
            return fail(
                trace,
                "aud",
                AuthError::BadClaims,
                "aud is neither a string nor an array".into(),
            )
        }
    };
    let absent = introspected && !claims.contains_key("aud");
    if !absent && !auds.iter().any(|a| cfg.audiences.iter().any(|c| c == a)) {
        return fail(
            trace,
            "aud",
            AuthError::BadAudience,
            format!("aud {auds:?} names none of {:?}", cfg.audiences),
        );
    }
    if !absent {
        trace.note("aud", true, || format!("aud {auds:?} accepted"));
    }
    if let Some(r) = &cfg.revoked {
        match r.refuses(claims) {
            Some(why) => return fail(trace, "revoked", AuthError::Revoked, why),
            None => trace.note("revoked", true, || "not revoked".into()),
        }
    }
    Ok(exp.is_finite().then_some(exp))
}

/// Scopes from the first present claim of `names`: a space-separated string (`scope`, RFC 8693 /
/// RFC 9068) or an array of strings (`scp`). No claim at all means no scopes.
pub fn extract_scopes(
    claims: &Map<String, Value>,
    names: &[String],
) -> Result<Vec<String>, AuthError> {
    for name in names {
        match claims.get(name) {
            None => continue,
            Some(Value::String(s)) => {
                return Ok(s
                    .split(' ')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect())
            }
            Some(Value::Array(a)) => {
                return a
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or(AuthError::BadClaims))
                    .collect()
            }
            Some(_) => return Err(AuthError::BadClaims),
        }
    }
    Ok(Vec::new())
}

/// The route's claim conditions (`claims`: all; `claims_any`: one; `client_ids`: `azp`, else
/// `client_id`, one of them). The trace says which failed; the answer does not.
pub fn check_claim_conditions(
    token: &Verified,
    route: &Route,
    trace: &mut Trace,
) -> Result<(), AuthError> {
    let claims = &token.claims;
    if let Some(c) = route.claims.iter().find(|c| !c.holds(claims)) {
        trace.note("claims", false, || {
            format!("claim {} must be (or hold) {:?}", c.raw, c.value)
        });
        return Err(AuthError::ClaimMismatch);
    }
    if !route.claims_any.is_empty() && !route.claims_any.iter().any(|c| c.holds(claims)) {
        trace.note("claims", false, || {
            let all: Vec<String> = route
                .claims_any
                .iter()
                .map(|c| format!("{} = {:?}", c.raw, c.value))
                .collect();
            format!("none of claims_any holds: {}", all.join(", "))
        });
        return Err(AuthError::ClaimMismatch);
    }
    if !route.client_ids.is_empty() {
        let client = token.principal.client.as_deref();
        if !client.is_some_and(|c| route.client_ids.iter().any(|x| x == c)) {
            trace.note("claims", false, || {
                format!("client {client:?} (azp, else client_id) is not in client_ids")
            });
            return Err(AuthError::ClaimMismatch);
        }
    }
    if !route.authorization_details.is_empty() {
        check_authorization_details(claims, route, trace)?;
    }
    if !route.audiences.is_empty() {
        let named = |a: &str| route.audiences.iter().any(|x| x == a);
        let holds = match claims.get("aud") {
            Some(Value::String(a)) => named(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
            _ => false,
        };
        if !holds {
            trace.note("aud", false, || {
                format!(
                    "aud {:?} names none of the route's audiences {:?} (RFC 8707)",
                    claims.get("aud"),
                    route.audiences
                )
            });
            return Err(AuthError::BadAudience);
        }
        trace.note("aud", true, || {
            format!(
                "aud names one of the route's audiences {:?}",
                route.audiences
            )
        });
    }
    if !route.acr_values.is_empty() || route.max_age.is_some() {
        check_step_up(claims, route, trace)?;
    }
    if !(route.claims.is_empty() && route.claims_any.is_empty() && route.client_ids.is_empty()) {
        trace.note("claims", true, || {
            "the route's claim conditions hold".into()
        });
    }
    Ok(())
}

/// RFC 9396: every one of the route's `authorization_details` met by an object of the token's
/// array. A token without the claim, or with another type there, meets none. Cold: kept out of
/// the claim checks every cached request runs through, most of them on routes without it.
#[cold]
#[inline(never)]
fn check_authorization_details(
    claims: &Map<String, Value>,
    route: &Route,
    trace: &mut Trace,
) -> Result<(), AuthError> {
    let held = match claims.get("authorization_details") {
        Some(Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    if let Some(r) = route.authorization_details.iter().find(|r| !r.met_by(held)) {
        trace.note("authorization_details", false, || {
            let lists: Vec<String> = r
                .lists
                .iter()
                .map(|(field, v)| format!("{field} {v:?}"))
                .collect();
            format!(
                "no object of type {:?} holding {}{} among the token's {} (RFC 9396)",
                r.kind,
                if lists.is_empty() {
                    "anything".to_owned()
                } else {
                    lists.join(", ")
                },
                r.identifier
                    .as_ref()
                    .map_or(String::new(), |i| format!(", identifier {i:?}")),
                held.len()
            )
        });
        return Err(AuthError::AuthorizationDetailsMismatch);
    }
    trace.note("authorization_details", true, || {
        "the route's authorization details are granted".into()
    });
    Ok(())
}

/// RFC 9470: the route's `acr_values` (the token's `acr` one of them) and `max_age` (its
/// `auth_time` no older). A token without the claim fails: nothing says how it was obtained.
fn check_step_up(
    claims: &Map<String, Value>,
    route: &Route,
    trace: &mut Trace,
) -> Result<(), AuthError> {
    if !route.acr_values.is_empty() {
        let acr = claims.get("acr").and_then(Value::as_str);
        if !acr.is_some_and(|a| route.acr_values.iter().any(|x| x == a)) {
            trace.note("acr", false, || {
                format!(
                    "acr {acr:?} is none of the route's acr_values {:?}",
                    route.acr_values
                )
            });
            return Err(AuthError::InsufficientUserAuthentication);
        }
        trace.note("acr", true, || format!("acr {acr:?} accepted"));
    }
    if let Some(max_age) = route.max_age {
        let auth_time = claims.get("auth_time").and_then(Value::as_f64);
        let age = auth_time.map(|t| now() - t);
        if !age.is_some_and(|a| a <= max_age.as_secs_f64()) {
            trace.note("auth_time", false, || {
                format!("auth_time {auth_time:?} is older than the route's max_age {max_age:?}")
            });
            return Err(AuthError::InsufficientUserAuthentication);
        }
        trace.note("auth_time", true, || format!("authenticated {age:?} s ago"));
    }
    Ok(())
}

/// The route's scope policy: all of `scopes`, and one of `scopes_any` when given. Exact string
/// comparison only: `readwrite` or `read:all` never grants `read`.
pub fn check_scopes(have: &[String], route: &Route) -> Result<(), AuthError> {
    let has = |s: &String| have.iter().any(|h| h == s);
    if !route.scopes.iter().all(has) {
        return Err(AuthError::InsufficientScope {
            needed: route.scopes.join(" "),
        });
    }
    if !route.scopes_any.is_empty() && !route.scopes_any.iter().any(has) {
        return Err(AuthError::InsufficientScope {
            needed: route.scopes_any.join(" "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathMatch;
    use serde_json::json;

    /// RFC 8693 4.1's example: the current actor first, then each prior one; a chain of
    /// nonsense ends where the objects do, and no `act` is no actor.
    #[test]
    fn act_claims_read_as_a_chain_of_actors() {
        let c = claims(
            json!({"sub": "user@example.net", "act": {"sub": "admin@example.net",
            "act": {"sub": "https://service16.example.com", "act": {"iss": "x"}}}}),
        );
        assert_eq!(
            actors(&c).as_deref(),
            Some("admin@example.net,https://service16.example.com,-")
        );
        assert_eq!(actors(&claims(json!({"act": "not an object"}))), None);
        assert_eq!(actors(&claims(json!({"sub": "x"}))), None);
        let mut deep = json!({"sub": "last"});
        for i in 0..20 {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        let chain = actors(&claims(json!({"act": deep}))).unwrap();
        assert_eq!(chain.split(',').count(), MAX_ACTORS);
    }

    #[test]
    fn the_debug_form_of_a_verified_token_leaves_the_token_out() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let v = Verified {
            claims: claims(json!({"sub": "x"})),
            scopes: vec!["read".into()],
            exp: 0.0,
            issuer: 0,
            key: Some(Arc::new(super::super::jwks::VerifyKey::hmac(b"secret"))),
            ttl: Duration::from_secs(1),
            token_id: super::super::token_id(&super::super::sha256(token)),
            token: token.as_bytes().into(),
            binding: Binding::default(),
            principal: Principal::default(),
            policy: Default::default(),
            minted: Default::default(),
        };
        let shown = format!("{v:?}");
        assert!(shown.contains(&v.token_id.to_string()), "{shown}");
        assert!(shown.contains("read"), "{shown}");
        for part in token.split('.') {
            assert!(!shown.contains(part), "{shown}");
        }
        // Nor as the bytes a derived Debug would print.
        let bytes: Vec<String> = token.bytes().take(8).map(|b| b.to_string()).collect();
        assert!(!shown.contains(&bytes.join(", ")), "{shown}");
    }

    fn cfg() -> IssuerConfig {
        crate::config::Config::from_toml_str(
            r#"
[server]
listen = "127.0.0.1:0"
[[issuers]]
issuer = "i"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["api", "api2"]
[upstreams.a]
url = "http://127.0.0.1:1"
[[routes]]
prefix = "/"
upstream = "a"
"#,
            "t",
        )
        .unwrap()
        .issuers
        .remove(0)
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_revoked_token_subject_client_or_issue_time_is_refused() {
        let mut c = cfg();
        c.revoked = Some(Box::new(crate::config::Revoked {
            token_ids: ["t1".to_owned()].into(),
            subjects: ["u9".to_owned()].into(),
            clients: ["leaky".to_owned()].into(),
            issued_before: Some(1_000),
        }));
        let now = 2_000.0;
        let check = |c: &IssuerConfig, edit: Value, drop: Option<&str>| {
            let mut m = claims(json!({
                "exp": 3000, "aud": "api", "iat": 1500, "jti": "t2", "sub": "u1", "client_id": "ok"
            }));
            m.extend(claims(edit));
            if let Some(k) = drop {
                m.remove(k);
            }
            check_claims(&m, c, now, &mut Trace::default())
        };
        assert!(check(&c, json!({}), None).is_ok());
        assert!(
            check(&c, json!({"iat": 1000}), None).is_ok(),
            "at the cut-off"
        );
        for edit in [
            json!({"jti": "t1"}),
            json!({"sub": "u9"}),
            json!({"client_id": "leaky"}),
            json!({"azp": "leaky"}),
            json!({"iat": 999}),
        ] {
            assert_eq!(
                check(&c, edit.clone(), None),
                Err(AuthError::Revoked),
                "{edit}"
            );
        }
        assert_eq!(check(&c, json!({}), Some("iat")), Err(AuthError::Revoked));
        // Without the cut-off, a token without iat is none of the others' business.
        c.revoked.as_mut().unwrap().issued_before = None;
        assert!(check(&c, json!({}), Some("iat")).is_ok());
        assert_eq!(AuthError::Revoked.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::Revoked.code(),
            super::super::ErrorCode::InvalidToken
        );
    }

    #[test]
    fn time_claims_with_leeway() {
        let c = cfg();
        let mut t = Trace::default();
        let now = 1_000_000.0;
        let ok = |v| check_claims(&claims(v), &c, now, &mut Trace::default());
        assert!(ok(json!({"exp": now + 10.0, "aud": "api"})).is_ok());
        assert!(
            ok(json!({"exp": now - 10.0, "aud": "api"})).is_ok(),
            "inside the 30s leeway"
        );
        assert_eq!(
            ok(json!({"exp": now - 31.0, "aud": "api"})),
            Err(AuthError::Expired)
        );
        assert_eq!(ok(json!({"aud": "api"})), Err(AuthError::BadClaims));
        assert_eq!(
            ok(json!({"exp": "2000000000", "aud": "api"})),
            Err(AuthError::BadClaims)
        );
        assert_eq!(
            ok(json!({"exp": now + 99.0, "nbf": now + 60.0, "aud": "api"})),
            Err(AuthError::NotYetValid)
        );
        assert!(ok(json!({"exp": now + 99.0, "nbf": now + 20.0, "aud": "api"})).is_ok());
        assert_eq!(
            ok(json!({"exp": now + 99.0, "iat": now + 60.0, "aud": "api"})),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(
            ok(json!({"exp": now + 99.0, "nbf": "0", "aud": "api"})),
            Err(AuthError::BadClaims)
        );
        assert!(check_claims(
            &claims(json!({"exp": now + 1.0, "aud": "x"})),
            &c,
            now,
            &mut t
        )
        .is_err());
    }

    #[test]
    fn audiences() {
        let c = cfg();
        let now = 1.0;
        let ok = |v| check_claims(&claims(v), &c, now, &mut Trace::default());
        assert!(ok(json!({"exp": 99, "aud": ["other", "api2"]})).is_ok());
        assert_eq!(
            ok(json!({"exp": 99, "aud": ["other"]})),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            ok(json!({"exp": 99, "aud": []})),
            Err(AuthError::BadAudience)
        );
        assert_eq!(ok(json!({"exp": 99})), Err(AuthError::BadAudience));
        assert_eq!(
            ok(json!({"exp": 99, "aud": ["api", 1]})),
            Err(AuthError::BadClaims)
        );
        assert_eq!(
            ok(json!({"exp": 99, "aud": "API"})),
            Err(AuthError::BadAudience)
        );
    }

    #[test]
    fn bindings_are_read_from_cnf_and_ignored_where_the_issuer_says_so() {
        let mut c = cfg();
        let b = |c: &IssuerConfig, v: Value| binding_of(&claims(v), c, &mut Trace::default());
        let dpop = json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}});
        assert_eq!(
            b(&c, dpop.clone()).unwrap().jkt.as_deref(),
            Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
        let mtls = json!({"cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}});
        assert!(b(&c, mtls).unwrap().x5t.is_some());
        assert!(b(&c, json!({"cnf": {"jwk": {}}})).unwrap().other);
        assert!(!b(&c, json!({})).unwrap().is_bound());
        assert_eq!(b(&c, json!({"cnf": "x"})), Err(AuthError::BadClaims));
        assert_eq!(b(&c, json!({"cnf": {"jkt": 1}})), Err(AuthError::BadClaims));
        c.accept_bound_tokens = true;
        assert!(!b(&c, dpop).unwrap().is_bound());
    }

    fn route(all: &[&str], any: &[&str]) -> Route {
        Route::for_test(PathMatch::Prefix("/".into())).bearer(all, any)
    }

    #[test]
    fn scope_policies_compare_exactly() {
        let names = vec!["scope".to_owned(), "scp".to_owned()];
        let have = extract_scopes(
            &claims(json!({"scope": "readwrite read:all  admin"})),
            &names,
        )
        .unwrap();
        assert_eq!(have, ["readwrite", "read:all", "admin"]);
        assert_eq!(
            check_scopes(&have, &route(&["read"], &[])),
            Err(AuthError::InsufficientScope {
                needed: "read".into()
            })
        );
        assert!(check_scopes(&have, &route(&["admin"], &[])).is_ok());
        assert!(check_scopes(&have, &route(&[], &["x", "admin"])).is_ok());
        assert_eq!(
            check_scopes(&have, &route(&["admin"], &["x", "y"])),
            Err(AuthError::InsufficientScope {
                needed: "x y".into()
            })
        );
        let scp = extract_scopes(&claims(json!({"scp": ["read", "write"]})), &names).unwrap();
        assert_eq!(scp, ["read", "write"]);
        assert_eq!(
            extract_scopes(&claims(json!({"scp": [1]})), &names),
            Err(AuthError::BadClaims)
        );
        assert_eq!(
            extract_scopes(&claims(json!({"scope": 5})), &names),
            Err(AuthError::BadClaims)
        );
        assert!(extract_scopes(&claims(json!({})), &names)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn typ_policies() {
        let mut c = cfg();
        assert!(check_typ(&c, Some("at+jwt")).is_ok());
        assert!(check_typ(&c, Some("application/AT+JWT")).is_ok());
        assert!(check_typ(&c, Some("JWT")).is_err());
        assert!(check_typ(&c, None).is_err());
        c.typ = TypPolicy::Jwt;
        assert!(check_typ(&c, Some("JWT")).is_ok());
        assert!(check_typ(&c, None).is_ok());
        assert!(check_typ(&c, Some("at+jwt")).is_ok());
        assert!(check_typ(&c, Some("dpop+jwt")).is_err());
    }
}
