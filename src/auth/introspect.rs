//! Opaque access tokens: asking the issuer's introspection endpoint (RFC 7662) and keeping its
//! answers.
//!
//! - One [`Introspector`] per issuer with `token_format = "opaque"` or `"auto"`.
//! - Answers are kept in a process cache keyed by the token's SHA-256 (the token itself is never
//!   stored): an active one for min(`exp` - now, `introspection_cache_ttl`), anything refused for
//!   `introspection_negative_ttl`. Concurrent requests with the same uncached token share one
//!   call (moka's `try_get_with` coalesces them). Failures are not kept: the next request asks.
//! - With `[cache] redis_url`, answers are also kept in the shared store under the same hash, so
//!   replicas ask the IdP once per token and TTL; the store's answer keeps its original age.
//! - At most `introspection_max_in_flight` calls per issuer; a request that waits longer than
//!   [`QUEUE_WAIT`] for a slot gets 503. Every call is bounded by `introspection_timeout` and
//!   [`MAX_INTROSPECTION_ANSWER_BYTES`]; an IdP that is down or answers nonsense gives 503
//!   (never a pass), while cached answers keep serving.

use super::jwks::{self, HttpsClient};
use super::validator::{self, Source, Trace, Verified};
use super::AuthError;
use crate::config::{ClientAuth, IssuerConfig, MAX_INTROSPECTION_ANSWER_BYTES};
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a request waits for one of the issuer's call slots before it gets 503.
pub const QUEUE_WAIT: Duration = Duration::from_millis(250);

/// A kept answer.
#[derive(Clone)]
enum Answer {
    Active(Arc<Verified>),
    /// Inactive, or active but not usable here (expired, another audience, a refresh token):
    /// refused with this error until the entry expires.
    Refused(AuthError, Duration),
}

struct AnswerExpiry;

impl moka::Expiry<[u8; 32], Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &[u8; 32], a: &Answer, _: Instant) -> Option<Duration> {
        Some(match a {
            Answer::Active(v) => v.ttl,
            Answer::Refused(_, ttl) => *ttl,
        })
    }
}

/// The last call's outcome, for `/readyz`.
#[derive(Default)]
struct Health {
    last_ok: Option<Instant>,
    failing: Option<(Instant, String)>,
}

/// One issuer's introspection endpoint, its client and its answers.
pub struct Introspector {
    /// The issuer's index in the config.
    pub index: usize,
    /// The issuer's config: the checks on an answer, and what a reload compares.
    pub issuer: IssuerConfig,
    /// Claims kept from an answer besides the ones bearward checks: the claim headers.
    keep: Vec<String>,
    endpoint: Mutex<Option<Uri>>,
    get_client: HttpsClient,
    client: HttpsClient<Full<Bytes>>,
    signer: Option<jsonwebtoken::EncodingKey>,
    cache: moka::future::Cache<[u8; 32], Answer>,
    permits: tokio::sync::Semaphore,
    shared: Option<Arc<SharedStore>>,
    /// This issuer's part of the shared store's keys.
    shared_prefix: String,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
    /// Cache lookups: process hit, process miss, shared hit, shared miss.
    lookups: [crate::telemetry::Counter; 4],
}

/// The answer members bearward reads (RFC 7662 2.2, RFC 7800 `cnf`), kept in the shared store
/// with the claim headers' claims; nothing else of an answer is stored.
const CHECKED: [&str; 20] = [
    "active",
    "scope",
    "client_id",
    "username",
    "token_type",
    "typ",
    "token_use",
    "exp",
    "iat",
    "nbf",
    "sub",
    "aud",
    "iss",
    "cnf",
    // `revoked`, besides sub, client_id and iat above.
    "jti",
    "azp",
    // RFC 9470 step-up on routes (acr_values, max_age).
    "acr",
    "auth_time",
    // RFC 8693 4.1: who acts for the subject, for the access log.
    "act",
    // RFC 9396 9.2: routes' `authorization_details`.
    "authorization_details",
];

impl Introspector {
    /// For the issuer at `index`, which must have an introspection config.
    pub fn new(
        index: usize,
        issuer: IssuerConfig,
        keep: Vec<String>,
        entries: u64,
        get_client: HttpsClient,
        shared: Option<Arc<SharedStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Introspector>, String> {
        let cfg = issuer
            .introspection
            .as_ref()
            .ok_or("the issuer does not introspect")?;
        let signer = match &cfg.client_auth {
            ClientAuth::PrivateKeyJwt { key_pem, alg, .. } => {
                Some(crate::jose::encoding_key(&key_pem.0, *alg)?)
            }
            _ => None,
        };
        let hash = super::sha256(&issuer.issuer);
        Ok(Arc::new(Introspector {
            index,
            endpoint: Mutex::new(cfg.endpoint.clone()),
            get_client,
            client: jwks::http_client(&jwks::issuer_route(&issuer)),
            signer,
            cache: moka::future::Cache::builder()
                .max_capacity(entries.max(1))
                .expire_after(AnswerExpiry)
                .build(),
            permits: tokio::sync::Semaphore::new(cfg.max_in_flight),
            shared,
            shared_prefix: format!("introspection:{}:", crate::jose::hex(&hash[..8])),
            health: Mutex::new(Health::default()),
            lookups: metrics.introspection_cache(&issuer.issuer),
            metrics,
            keep,
            issuer,
        }))
    }

    fn cfg(&self) -> &crate::config::Introspection {
        self.issuer
            .introspection
            .as_ref()
            .expect("an introspector is made only for an introspecting issuer")
    }

    /// Is this the same endpoint, asked the same way, so that a reload may keep its answers?
    pub fn same(
        &self,
        issuer: &IssuerConfig,
        keep: &[String],
        shared: Option<&Arc<SharedStore>>,
    ) -> bool {
        self.issuer == *issuer
            && self.keep == keep
            && match (&self.shared, shared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Answers kept in this process.
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The checked identity behind an opaque token, `hash` being its SHA-256.
    pub async fn check(
        &self,
        token: &str,
        hash: &[u8; 32],
        trace: &mut Trace,
    ) -> Result<Arc<Verified>, AuthError> {
        if trace.enabled {
            // `bearward explain` asks afresh, with each step noted.
            let answer = self.ask(token, hash, trace).await?;
            return self.still(answer, hash).await;
        }
        let answer = match self.cache.get(hash).await {
            Some(a) => {
                self.lookups[0].inc();
                a
            }
            None => {
                self.lookups[1].inc();
                self.cache
                    .try_get_with(*hash, self.load(token, hash))
                    .await
                    .map_err(|e| (*e).clone())?
            }
        };
        self.still(answer, hash).await
    }

    /// A kept answer, as of now: an active token may have expired since.
    async fn still(&self, answer: Answer, hash: &[u8; 32]) -> Result<Arc<Verified>, AuthError> {
        match answer {
            Answer::Active(v) => {
                if validator::now() >= v.exp + self.issuer.leeway.as_secs_f64() {
                    self.cache.invalidate(hash).await;
                    return Err(AuthError::Expired);
                }
                Ok(v)
            }
            Answer::Refused(e, _) => Err(e),
        }
    }

    /// An answer from the shared store, else from the endpoint (then stored there too).
    async fn load(&self, token: &str, hash: &[u8; 32]) -> Result<Answer, AuthError> {
        let key = format!("{}{}", self.shared_prefix, crate::jose::hex(hash));
        if let Some(store) = &self.shared {
            if let Ok(found) = store.get_sealed(&key).await {
                let answer = found.and_then(|b| self.stored_answer(&b, hash));
                self.lookups[if answer.is_some() { 2 } else { 3 }].inc();
                if let Some(a) = answer {
                    return Ok(a);
                }
            }
        }
        let mut trace = Trace::default();
        let (answer, kept) = self.ask_kept(token, hash, &mut trace).await?;
        if let Some(store) = &self.shared {
            let ttl = match &answer {
                Answer::Active(v) => v.ttl,
                Answer::Refused(_, ttl) => *ttl,
            };
            if !ttl.is_zero() {
                let stored = serde_json::json!({
                    "at": validator::now(),
                    "ttl": ttl.as_secs_f64(),
                    "answer": kept,
                });
                // A store that fails is counted and skipped; the answer is good regardless.
                let _ = store
                    .set_sealed(&key, stored.to_string().as_bytes(), ttl)
                    .await;
            }
        }
        Ok(answer)
    }

    /// An answer another replica stored: judged as if fresh, kept no longer than it had left.
    fn stored_answer(&self, bytes: &[u8], hash: &[u8; 32]) -> Option<Answer> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let at = v.get("at")?.as_f64()?;
        let ttl = v.get("ttl")?.as_f64()?;
        let left = at + ttl - validator::now();
        if left.is_nan() || left <= 0.0 {
            return None;
        }
        let left = Duration::from_secs_f64(left.min(3600.0));
        let answer = v.get("answer")?.as_object()?.clone();
        match self.judge(answer, hash, &mut Trace::default()).ok()? {
            Answer::Active(v) => {
                let mut v = Arc::into_inner(v)?;
                v.ttl = v.ttl.min(left);
                Some(Answer::Active(Arc::new(v)))
            }
            Answer::Refused(e, ttl) => Some(Answer::Refused(e, ttl.min(left))),
        }
    }

    async fn ask(
        &self,
        token: &str,
        hash: &[u8; 32],
        trace: &mut Trace,
    ) -> Result<Answer, AuthError> {
        self.ask_kept(token, hash, trace).await.map(|(a, _)| a)
    }

    /// Calls the endpoint and judges its answer; also returns the members worth storing.
    async fn ask_kept(
        &self,
        token: &str,
        hash: &[u8; 32],
        trace: &mut Trace,
    ) -> Result<(Answer, Map<String, Value>), AuthError> {
        let started = Instant::now();
        let result = self.call(token).await;
        let name = &self.issuer.issuer;
        let map = match result {
            Ok(map) => map,
            Err((outcome, e, detail)) => {
                self.metrics.introspection(
                    name,
                    outcome,
                    (outcome != "busy").then(|| started.elapsed()),
                );
                trace.note("introspection", false, || detail.clone());
                if outcome != "busy" {
                    tracing::warn!(issuer = %name, reason = outcome, error = %detail, "introspection failed");
                    let mut h = self
                        .health
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if h.failing.is_none() {
                        h.failing = Some((Instant::now(), detail));
                    } else if let Some((_, last)) = &mut h.failing {
                        *last = detail;
                    }
                }
                return Err(e);
            }
        };
        {
            let mut h = self
                .health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h.failing = None;
            h.last_ok = Some(Instant::now());
        }
        let kept: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| CHECKED.contains(&k.as_str()) || self.keep.iter().any(|c| c == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let active = map.get("active") == Some(&Value::Bool(true));
        trace.note("introspection", true, || {
            format!(
                "the endpoint answered active={}",
                map.get("active").unwrap_or(&Value::Null)
            )
        });
        let answer = self.judge(kept.clone(), hash, trace);
        let outcome = match &answer {
            Ok(Answer::Active(_)) => "active",
            Ok(Answer::Refused(..)) if active => "refused",
            Ok(Answer::Refused(..)) => "inactive",
            Err(_) => "invalid_answer",
        };
        self.metrics
            .introspection(name, outcome, Some(started.elapsed()));
        if let Err(e) = &answer {
            tracing::warn!(issuer = %name, reason = "invalid_answer", error = %e, "introspection answer refused: `active` is not a boolean");
        }
        Ok((answer?, kept))
    }

    /// RFC 7662 2.2: `active` must be `true`; then the answer's claims are checked as a JWT's
    /// would be (where present), and its `scope` gives the scopes.
    fn judge(
        &self,
        answer: Map<String, Value>,
        hash: &[u8; 32],
        trace: &mut Trace,
    ) -> Result<Answer, AuthError> {
        let cfg = self.cfg();
        let refused = |e| Ok(Answer::Refused(e, cfg.negative_ttl));
        match answer.get("active") {
            Some(Value::Bool(true)) => {}
            // A missing `active` is not an active token (the member is REQUIRED).
            None | Some(Value::Bool(false)) => {
                trace.note("active", false, || "the token is not active".into());
                return refused(AuthError::Inactive);
            }
            Some(_) => {
                trace.note("active", false, || "`active` is not a boolean".into());
                return Err(AuthError::IntrospectionInvalid);
            }
        }
        let now = validator::now();
        let exp = match validator::check_claims_of(
            Source::Introspection,
            &answer,
            &self.issuer,
            now,
            trace,
        ) {
            Ok(exp) => exp,
            Err(e) => return refused(e),
        };
        // RFC 7662 2.2: `scope` is one space-separated string (the array form some JWTs use
        // for `scp` is not an introspection answer's).
        let scopes = match answer.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => {
                trace.note("scopes", false, || "scope is not a string".into());
                return refused(AuthError::BadClaims);
            }
        };
        let binding = match validator::binding_of(&answer, &self.issuer, trace) {
            Ok(b) => b,
            Err(e) => return refused(e),
        };
        let left = exp.map_or(cfg.cache_ttl, |exp| {
            Duration::from_secs_f64((exp - now).clamp(0.0, 3600.0))
        });
        Ok(Answer::Active(Arc::new(Verified {
            principal: validator::Principal::of(&answer),
            policy: Default::default(),
            minted: Default::default(),
            claims: answer,
            scopes,
            exp: exp.unwrap_or(f64::INFINITY),
            issuer: self.index,
            key: None,
            ttl: left.min(cfg.cache_ttl),
            token_id: super::token_id(hash),
            // Never the token itself: this entry is keyed by its hash.
            token: Arc::from(&[][..]),
            binding,
        })))
    }

    /// The endpoint, found by discovery the first time when it was not configured.
    async fn endpoint(&self) -> Result<Uri, String> {
        if let Some(u) = self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Ok(u);
        }
        let p = &self.issuer.jwks;
        let (from, doc) = jwks::discovery_document(
            &self.get_client,
            &self.issuer.issuer,
            p.max_bytes,
            p.timeout,
        )
        .await?;
        let uri = jwks::endpoint_in(&doc, &from, "introspection_endpoint", &self.issuer)?;
        *self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(uri.clone());
        Ok(uri)
    }

    /// One call: a slot, then the POST, all bounded. Errors carry the metric outcome, the
    /// refusal, and a detail for the log.
    async fn call(
        &self,
        token: &str,
    ) -> Result<Map<String, Value>, (&'static str, AuthError, String)> {
        let cfg = self.cfg();
        let Ok(Ok(_slot)) = tokio::time::timeout(QUEUE_WAIT, self.permits.acquire()).await else {
            return Err((
                "busy",
                AuthError::IntrospectionBusy,
                format!("{} calls already in flight", cfg.max_in_flight),
            ));
        };
        let unavailable = |outcome, detail| (outcome, AuthError::IntrospectionUnavailable, detail);
        let invalid = |outcome, detail| (outcome, AuthError::IntrospectionInvalid, detail);
        let work = async {
            let uri = self
                .endpoint()
                .await
                .map_err(|e| unavailable("discovery_failed", e))?;
            let req = self
                .request(&uri, token)
                .map_err(|e| unavailable("client_error", e))?;
            let resp = self.client.request(req).await.map_err(|e| {
                let e = crate::egress::error_chain(&e);
                unavailable("unreachable", format!("POST {uri}: {e}"))
            })?;
            if resp.status() != http::StatusCode::OK {
                return Err(unavailable(
                    "http_error",
                    format!("POST {uri}: status {}", resp.status()),
                ));
            }
            let max = MAX_INTROSPECTION_ANSWER_BYTES;
            let body = jwks::bounded_body(resp, max).await.map_err(|e| match e {
                jwks::BodyError::TooLarge => {
                    invalid("too_large", format!("POST {uri}: answer over {max} bytes"))
                }
                jwks::BodyError::Broken(e) => {
                    unavailable("unreachable", format!("POST {uri}: body: {e}"))
                }
            })?;
            parse_answer(&body).map_err(|(o, d)| invalid(o, format!("POST {uri}: {d}")))
        };
        let span = crate::trace::call_span();
        let result = tokio::time::timeout(cfg.timeout, work).await;
        crate::trace::end_call(
            span,
            "POST introspection",
            || {
                vec![
                    crate::trace::attr("http.request.method", "POST"),
                    crate::trace::attr("bearward.issuer", self.issuer.issuer.as_str()),
                ]
            },
            match &result {
                Ok(Ok(_)) => None,
                Ok(Err((outcome, _, _))) => Some((*outcome).to_owned()),
                Err(_) => Some("timeout".to_owned()),
            },
        );
        match result {
            Ok(r) => r,
            Err(_) => Err(unavailable(
                "timeout",
                format!("no complete answer within {:?}", cfg.timeout),
            )),
        }
    }

    /// The POST of RFC 7662 2.1, with the client authentication configured.
    fn request(&self, uri: &Uri, token: &str) -> Result<Request<Full<Bytes>>, String> {
        let cfg = self.cfg();
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        form_post(
            uri,
            form,
            &cfg.client_id,
            &cfg.client_auth,
            self.signer.as_ref(),
        )
    }

    /// For `/readyz`: how the endpoint is doing.
    pub fn health(&self) -> String {
        let h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&h.failing, h.last_ok) {
            (Some((since, e)), _) => format!(
                "introspection failing for {}s (cached answers still serve): {e}",
                since.elapsed().as_secs()
            ),
            (None, Some(t)) => {
                format!("introspection ok, last call {}s ago", t.elapsed().as_secs())
            }
            (None, None) => "introspection not called yet".into(),
        }
    }

    /// Is the endpoint failing now?
    pub fn failing(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failing
            .is_some()
    }
}

/// A form POST to an authorization server's endpoint at `uri`, as the client `client_id`
/// (RFC 6749 2.3.1, RFC 7523 and OpenID Connect Core 9 for `private_key_jwt`): the
/// introspection call's and the token exchange's.
pub(crate) fn form_post(
    uri: &Uri,
    mut form: form_urlencoded::Serializer<'_, String>,
    client_id: &str,
    auth: &ClientAuth,
    signer: Option<&jsonwebtoken::EncodingKey>,
) -> Result<Request<Full<Bytes>>, String> {
    let req = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("bearward/", env!("CARGO_PKG_VERSION")),
        );
    let req = authenticate(req, &mut form, client_id, auth, signer, uri)?;
    req.body(Full::new(Bytes::from(form.finish())))
        .map_err(|e| e.to_string())
}

/// The client's authentication added to a POST to `uri`.
fn authenticate(
    mut req: http::request::Builder,
    form: &mut form_urlencoded::Serializer<'_, String>,
    client_id: &str,
    auth: &ClientAuth,
    signer: Option<&jsonwebtoken::EncodingKey>,
    uri: &Uri,
) -> Result<http::request::Builder, String> {
    match auth {
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 2.3.1: both parts form-encoded before Basic encoding.
            let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
            let pw: String = form_urlencoded::byte_serialize(&secret.0).collect();
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{id}:{pw}"),
            );
            req = req.header(header::AUTHORIZATION, format!("Basic {basic}"));
        }
        ClientAuth::Tls => {
            form.append_pair("client_id", client_id);
        }
        ClientAuth::SecretPost(secret) => {
            form.append_pair("client_id", client_id);
            form.append_pair(
                "client_secret",
                std::str::from_utf8(&secret.0).map_err(|_| "the client secret is not UTF-8")?,
            );
        }
        ClientAuth::PrivateKeyJwt { alg, kid, .. } => {
            let key = signer.ok_or("no signing key")?;
            // Whole seconds: some IdPs refuse a NumericDate with a fraction.
            #[allow(clippy::cast_possible_truncation)]
            let now = validator::now() as i64;
            let mut jti = [0u8; 16];
            aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness")?;
            // RFC 7523 3: iss and sub are the client; aud the endpoint called (Okta and
            // oidc-provider take it; Keycloak takes it as well as the token endpoint).
            let claims = serde_json::json!({
                "iss": client_id, "sub": client_id, "aud": uri.to_string(),
                "jti": crate::jose::hex(&jti), "iat": now, "exp": now + 60,
            });
            let assertion = crate::jose::sign(&claims, key, *alg, kid.as_deref())?;
            form.append_pair("client_id", client_id);
            form.append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            form.append_pair("client_assertion", &assertion);
        }
    }
    Ok(req)
}

/// A JSON object with unique member names, or why not (the metric outcome and a detail).
pub(crate) fn parse_answer(body: &[u8]) -> Result<Map<String, Value>, (&'static str, String)> {
    match serde_json::from_slice::<Value>(body) {
        Err(e) => return Err(("not_json", format!("the answer is not JSON: {e}"))),
        Ok(v) if !v.is_object() => {
            return Err(("not_json", "the answer is not a JSON object".into()))
        }
        Ok(_) => {}
    }
    // Two parsers that keep different copies of a duplicated `active` disagree on the answer.
    super::token::parse_object(body).map_err(|_| {
        (
            "duplicate_member",
            "the answer repeats a member name".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_are_not_one_json_object_are_refused_with_their_reason() {
        assert_eq!(parse_answer(b"<html>").unwrap_err().0, "not_json");
        assert_eq!(parse_answer(b"[true]").unwrap_err().0, "not_json");
        assert_eq!(
            parse_answer(b"{\"active\":true} x").unwrap_err().0,
            "not_json"
        );
        assert_eq!(
            parse_answer(br#"{"active":false,"active":true}"#)
                .unwrap_err()
                .0,
            "duplicate_member"
        );
        assert!(parse_answer(br#"{"active":true,"scope":"a b"}"#).is_ok());
    }
}
