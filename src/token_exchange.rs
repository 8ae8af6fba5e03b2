//! Token exchange per upstream (RFC 8693): the client's token, traded at the authorization
//! server for one minted for this upstream, is what the upstream receives; the client's own
//! never is.
//!
//! - One [`Exchanger`] per upstream with `token_exchange`. A new token is kept three ways: with
//!   the verified client token ([`crate::auth::Minted`], a hit costs a lock and a compare), in a
//!   process cache keyed by the client token's SHA-256 (never the token itself), and with
//!   `[cache]` in the shared store, so replicas exchange once per client token. Concurrent
//!   requests with one token share one call (moka's `try_get_with`).
//! - Kept until shortly before the new token's `expires_in` ([`reuse_until`]). A refusal
//!   (`invalid_grant`, `invalid_target`, `invalid_scope`) is kept [`REFUSED_TTL`], so a client
//!   retrying a refused token does not reach the server once per request; failures are not kept.
//! - Every call is bounded by `timeout` and [`MAX_ANSWER_BYTES`]. A server that is down, slow
//!   or answers nonsense is 503 with `Retry-After`, never the client's token as a fallback.

use crate::auth::epoch_secs as now;
use crate::auth::introspect::{form_post, parse_answer};
use crate::auth::jwks::{self, HttpsClient};
use crate::auth::Verified;
use crate::config::{IssuerConfig, TokenExchangeConfig, ACCESS_TOKEN_TYPE};
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde_json::Value;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Largest token endpoint answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest token accepted from it: the upstream must take it in a header.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How long a refusal of a client token is kept.
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// The life assumed of a new token whose answer gives no `expires_in` (RFC 8693 2.2.1 only
/// recommends it) and which is no JWT with an `exp`.
const DEFAULT_LIFE: u64 = 60;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A POST's status and JSON object, or the metric outcome and a detail of its failure.
type Posted = Result<(StatusCode, serde_json::Map<String, Value>), (&'static str, String)>;

/// Why no token was had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server refused the client's token for this upstream: 403 with this reason.
    Refused(&'static str),
    /// The server could not be asked, or answered nonsense: 503.
    Unavailable,
}

#[derive(Clone)]
enum Kept {
    /// `Authorization: Bearer ...`, to be reused until `until` (seconds since the epoch).
    Token(HeaderValue, u64),
    Refused(&'static str),
}

struct KeptExpiry;

impl moka::Expiry<[u8; 32], Kept> for KeptExpiry {
    fn expire_after_create(&self, _: &[u8; 32], k: &Kept, _: Instant) -> Option<Duration> {
        Some(match k {
            Kept::Token(_, until) => Duration::from_secs(until.saturating_sub(now())),
            Kept::Refused(_) => REFUSED_TTL,
        })
    }
}

/// When to stop using a token that expires at `exp`: 30 s before, or a tenth of its life
/// when that is shorter, so a token is never sent upstream in its last moments.
pub fn reuse_until(now: u64, exp: u64) -> u64 {
    let life = exp.saturating_sub(now);
    exp - (life / 10).min(30)
}

/// One upstream's exchanges.
pub struct Exchanger {
    /// This exchanger's entries in [`crate::auth::Minted`].
    id: u64,
    upstream: String,
    /// The `[[issuers]]` entry of `cfg.issuer`: discovery's bounds and origins.
    issuer: Option<IssuerConfig>,
    cfg: TokenExchangeConfig,
    endpoint: Mutex<Option<Uri>>,
    get_client: HttpsClient,
    client: HttpsClient<Full<Bytes>>,
    signer: Option<jsonwebtoken::EncodingKey>,
    cache: moka::future::Cache<[u8; 32], Kept>,
    shared: Option<Arc<SharedStore>>,
    shared_prefix: String,
    /// bearward's own token for `actor_token`, and when to get a new one.
    actor: tokio::sync::Mutex<Option<(String, u64)>>,
    metrics: Arc<Metrics>,
}

impl Exchanger {
    /// `issuer`: the `[[issuers]]` entry `cfg.issuer` names, if any (the config check requires
    /// one for discovery): its proxy is used, and its origins bound a discovered endpoint.
    pub fn new(
        upstream: &str,
        cfg: &TokenExchangeConfig,
        issuer: Option<&IssuerConfig>,
        shared: Option<Arc<SharedStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Exchanger, String> {
        let signer = match &cfg.client_auth {
            crate::config::ClientAuth::PrivateKeyJwt { key_pem, alg, .. } => {
                Some(crate::jose::encoding_key(&key_pem.0, *alg)?)
            }
            _ => None,
        };
        let route = issuer.map_or(crate::egress::Route::Environment, jwks::issuer_route);
        // Keyed by what the answer depends on: a reload that changes the upstream's exchange
        // never reads another config's tokens from the store.
        let what = format!(
            "{upstream}\n{}\n{:?}\n{:?}\n{:?}\n{}\n{}\n{}",
            cfg.issuer,
            cfg.audience,
            cfg.resource,
            cfg.scope,
            cfg.requested_token_type,
            cfg.actor,
            cfg.client_id
        );
        let hash = crate::auth::sha256(&what);
        Ok(Exchanger {
            id: crate::auth::Minted::new_minter(),
            upstream: upstream.to_owned(),
            issuer: issuer.cloned(),
            endpoint: Mutex::new(cfg.token_endpoint.clone()),
            get_client: jwks::http_client_tls(&route, cfg.tls.as_deref()),
            client: jwks::http_client_tls(&route, cfg.tls.as_deref()),
            signer,
            cache: moka::future::Cache::builder()
                .max_capacity(cfg.cache_entries)
                .expire_after(KeptExpiry)
                .build(),
            shared,
            shared_prefix: format!("exchange:{}:", crate::jose::hex(&hash[..8])),
            actor: tokio::sync::Mutex::new(None),
            cfg: cfg.clone(),
            metrics,
        })
    }

    /// The `Authorization` value kept with `verified` for this upstream, if any: the hot path,
    /// no call and no future.
    pub fn kept(&self, verified: &Verified) -> Option<HeaderValue> {
        verified.minted.get(self.id, now())
    }

    /// The `Authorization` value for the upstream in place of the client's token that
    /// `verified` is: `subject`, or for a JWT the token `verified` holds.
    pub async fn token(
        &self,
        subject: Option<&str>,
        verified: &Verified,
    ) -> Result<HeaderValue, Failure> {
        if let Some(v) = self.kept(verified) {
            return Ok(v);
        }
        let held = std::str::from_utf8(&verified.token).ok();
        let Some(subject) = subject.or(held).filter(|s| !s.is_empty()) else {
            return Err(Failure::Unavailable);
        };
        let hash = crate::auth::sha256(subject);
        let kept = self
            .cache
            .try_get_with(hash, self.fetch(subject, &hash, verified))
            .await
            .map_err(|_| Failure::Unavailable)?;
        match kept {
            Kept::Token(v, until) => {
                verified.minted.put(self.id, v.clone(), until);
                Ok(v)
            }
            Kept::Refused(reason) => Err(Failure::Refused(reason)),
        }
    }

    /// The shared store's kept token, else a call; a new token goes to the store.
    async fn fetch(&self, subject: &str, hash: &[u8; 32], verified: &Verified) -> Result<Kept, ()> {
        let key = format!("{}{}", self.shared_prefix, crate::jose::hex(hash));
        if let Some(store) = &self.shared {
            if let Ok(Some(raw)) = store.get_sealed(&key).await {
                if let Some(kept) = from_store(&raw) {
                    self.metrics.token_exchange(&self.upstream, "shared_hit");
                    return Ok(kept);
                }
            }
        }
        let started = Instant::now();
        let result = self.call(subject).await;
        let outcome = match &result {
            Ok(Kept::Token(..)) => "ok",
            Ok(Kept::Refused(r)) => r.strip_prefix("token_exchange_").unwrap_or(r),
            Err((outcome, _)) => outcome,
        };
        self.metrics.token_exchange(&self.upstream, outcome);
        match result {
            Ok(Kept::Token(v, until)) => {
                if let Some(store) = &self.shared {
                    let ttl = Duration::from_secs(until.saturating_sub(now()));
                    if !ttl.is_zero() {
                        let doc = serde_json::json!({"v": v.to_str().unwrap_or(""), "u": until});
                        let _ = store
                            .set_sealed(&key, doc.to_string().as_bytes(), ttl)
                            .await;
                    }
                }
                tracing::debug!(upstream = %self.upstream, token_id = %verified.token_id, took_ms = started.elapsed().as_millis() as u64, "token exchanged");
                Ok(Kept::Token(v, until))
            }
            Ok(refused) => {
                tracing::info!(upstream = %self.upstream, token_id = %verified.token_id, reason = outcome, "token exchange refused");
                Ok(refused)
            }
            Err((outcome, detail)) => {
                tracing::warn!(upstream = %self.upstream, token_id = %verified.token_id, outcome, error = %detail, "token exchange failed");
                Err(())
            }
        }
    }

    /// The token endpoint, found by discovery the first time when it was not configured.
    async fn endpoint(&self) -> Result<Uri, String> {
        if let Some(u) = self
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(u);
        }
        let issuer = self
            .issuer
            .as_ref()
            .ok_or("no token_endpoint, and the issuer is none of [[issuers]]")?;
        let (from, doc) = jwks::discovery_document(
            &self.get_client,
            &issuer.issuer,
            issuer.jwks.max_bytes,
            self.cfg.timeout,
        )
        .await?;
        let uri = jwks::endpoint_in(&doc, &from, "token_endpoint", issuer)?;
        *self.endpoint.lock().unwrap_or_else(PoisonError::into_inner) = Some(uri.clone());
        Ok(uri)
    }

    /// One exchange, bounded by `timeout` whole (discovery and the actor's token included).
    async fn call(&self, subject: &str) -> Result<Kept, (&'static str, String)> {
        let span = crate::trace::call_span();
        let result = tokio::time::timeout(self.cfg.timeout, self.exchange(subject)).await;
        let result = result.unwrap_or_else(|_| {
            Err((
                "timeout",
                format!("no complete answer within {:?}", self.cfg.timeout),
            ))
        });
        crate::trace::end_call(
            span,
            "POST token exchange",
            || {
                vec![
                    crate::trace::attr("http.request.method", "POST"),
                    crate::trace::attr("bearward.upstream", self.upstream.as_str()),
                ]
            },
            result.as_ref().err().map(|(o, _)| (*o).to_owned()),
        );
        result
    }

    async fn exchange(&self, subject: &str) -> Result<Kept, (&'static str, String)> {
        let uri = self.endpoint().await.map_err(|e| ("discovery_failed", e))?;
        let actor = if self.cfg.actor {
            Some(self.actor_token(&uri).await?)
        } else {
            None
        };
        let call = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", GRANT_TYPE);
            form.append_pair("subject_token", subject);
            form.append_pair("subject_token_type", ACCESS_TOKEN_TYPE);
            form.append_pair("requested_token_type", &self.cfg.requested_token_type);
            for (name, v) in [
                ("audience", &self.cfg.audience),
                ("resource", &self.cfg.resource),
                ("scope", &self.cfg.scope),
            ] {
                if let Some(v) = v {
                    form.append_pair(name, v);
                }
            }
            if let Some(actor) = &actor {
                form.append_pair("actor_token", actor);
                form.append_pair("actor_token_type", ACCESS_TOKEN_TYPE);
            }
            self.post(&uri, form)
        };
        let (status, answer) = call.await?;
        if status != StatusCode::OK {
            // RFC 6749 5.2 errors; the three that say "not this token for this upstream" are
            // the client's, the rest (invalid_client, unauthorized_client, invalid_request)
            // are bearward's config or the server's state: unavailable, not the client's fault.
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
            let refused = match error {
                "invalid_grant" => Some("token_exchange_invalid_grant"),
                "invalid_target" => Some("token_exchange_invalid_target"),
                "invalid_scope" => Some("token_exchange_invalid_scope"),
                _ => None,
            };
            return match refused {
                Some(r) if status == StatusCode::BAD_REQUEST => Ok(Kept::Refused(r)),
                _ => Err((
                    "http_error",
                    format!("POST {uri}: status {status}, error {error:?}"),
                )),
            };
        }
        let (token, exp) = issued(&answer, &self.cfg.requested_token_type)
            .map_err(|e| ("invalid_answer", format!("POST {uri}: {e}")))?;
        let value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            (
                "invalid_answer",
                format!("POST {uri}: the token is not header text"),
            )
        })?;
        let now = now();
        Ok(Kept::Token(value, reuse_until(now, exp.max(now))))
    }

    /// bearward's own token (client credentials), for `actor_token`; kept as exchanged ones are.
    async fn actor_token(&self, uri: &Uri) -> Result<String, (&'static str, String)> {
        let mut kept = self.actor.lock().await;
        if let Some((token, until)) = &*kept {
            if now() < *until {
                return Ok(token.clone());
            }
        }
        let call = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            self.post(uri, form)
        };
        let (status, answer) = call.await?;
        if status != StatusCode::OK {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
            return Err((
                "actor_token_failed",
                format!("POST {uri} (client_credentials): status {status}, error {error:?}"),
            ));
        }
        let (token, exp) = issued(&answer, ACCESS_TOKEN_TYPE).map_err(|e| {
            (
                "actor_token_failed",
                format!("POST {uri} (client_credentials): {e}"),
            )
        })?;
        let now = now();
        *kept = Some((token.clone(), reuse_until(now, exp.max(now))));
        Ok(token)
    }

    /// A POST with the client's authentication; the status and the JSON object answered. The
    /// form is finished before the first await (its serializer is not `Send`).
    fn post<'a>(
        &'a self,
        uri: &'a Uri,
        form: form_urlencoded::Serializer<'_, String>,
    ) -> impl std::future::Future<Output = Posted> + Send + 'a {
        let req = form_post(
            uri,
            form,
            &self.cfg.client_id,
            &self.cfg.client_auth,
            self.signer.as_ref(),
        )
        .map_err(|e| ("client_error", e));
        async move { self.send(uri, req?).await }
    }

    async fn send(&self, uri: &Uri, req: Request<Full<Bytes>>) -> Posted {
        let resp = self.client.request(req).await.map_err(|e| {
            let e = crate::egress::error_chain(&e);
            ("unreachable", format!("POST {uri}: {e}"))
        })?;
        let status = resp.status();
        let body = jwks::bounded_body(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.of_post(uri, MAX_ANSWER_BYTES))?;
        match parse_answer(&body) {
            Ok(answer) => Ok((status, answer)),
            // A 5xx page in HTML is the server's trouble, said by its status.
            Err(_) if status != StatusCode::OK && status != StatusCode::BAD_REQUEST => {
                Ok((status, serde_json::Map::new()))
            }
            Err((_, d)) => Err(("invalid_answer", format!("POST {uri}: {d}"))),
        }
    }
}

/// The token in a successful answer (RFC 8693 2.2.1, RFC 6749 5.1) and when it expires.
fn issued(
    answer: &serde_json::Map<String, Value>,
    requested: &str,
) -> Result<(String, u64), String> {
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no access_token")?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is over {MAX_TOKEN_BYTES} bytes"));
    }
    // An access token must be a bearer one: a DPoP- or mTLS-bound token would be useless to
    // the upstream without the key bearward does not hold. Other types say `N_A`.
    let token_type = answer
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let fits = if requested == ACCESS_TOKEN_TYPE {
        token_type.eq_ignore_ascii_case("bearer")
    } else {
        token_type.eq_ignore_ascii_case("bearer") || token_type.eq_ignore_ascii_case("n_a")
    };
    if !fits {
        return Err(format!(
            "token_type {token_type:?} is not one bearward can send"
        ));
    }
    let now = now();
    let exp = match answer.get("expires_in").and_then(Value::as_u64) {
        Some(s) => now.saturating_add(s),
        None => jwt_exp(token).unwrap_or(now + DEFAULT_LIFE),
    };
    Ok((token.to_owned(), exp))
}

/// A JWT's `exp`, read without checking it: only for how long to keep it, never to trust it.
fn jwt_exp(token: &str) -> Option<u64> {
    let parsed = crate::auth::token::parse(token, MAX_TOKEN_BYTES).ok()?;
    parsed.claims.get("exp")?.as_u64()
}

/// A token kept in the shared store, while it is still to be used.
fn from_store(raw: &[u8]) -> Option<Kept> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let until = v.get("u")?.as_u64()?;
    if until <= now() {
        return None;
    }
    let value = HeaderValue::from_str(v.get("v")?.as_str()?).ok()?;
    Some(Kept::Token(value, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_reused_until_shortly_before_it_expires() {
        assert_eq!(reuse_until(1000, 1300), 1270);
        assert_eq!(reuse_until(1000, 1060), 1054);
        assert_eq!(reuse_until(1000, 1000), 1000);
        assert_eq!(reuse_until(1000, 5000), 4970);
    }

    #[test]
    fn an_answer_gives_a_bearer_token_and_its_expiry() {
        let ok: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"access_token":"abc","token_type":"Bearer","expires_in":300,
               "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
        )
        .unwrap();
        let (t, exp) = issued(&ok, ACCESS_TOKEN_TYPE).unwrap();
        assert_eq!(t, "abc");
        assert!(exp >= now() + 299);
        let dpop: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"access_token":"abc","token_type":"DPoP"}"#).unwrap();
        assert!(issued(&dpop, ACCESS_TOKEN_TYPE).is_err());
        let none: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"token_type":"Bearer"}"#).unwrap();
        assert!(issued(&none, ACCESS_TOKEN_TYPE).is_err());
    }
}
