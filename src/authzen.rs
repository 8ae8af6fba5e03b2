//! External decisions: a route's `authzen` asks an OpenID AuthZEN 1.0 policy decision point
//! (Access Evaluation API, `POST /access/v1/evaluation`) whether the caller may do what the
//! request does, after the token, its scopes and `allow_if` passed.
//!
//! - The question is `{subject, action, resource, context}` built from the token's claims, the
//!   request and the route ([`Ask`]); the answer must be a JSON object whose `decision` is a
//!   boolean. Anything else (a status other than 200, a body over [`MAX_ANSWER`], not JSON, a
//!   `decision` that is not a boolean) is an error: 503, never an allow.
//! - Answers are kept per (subject, action, resource), the context left out, for `cache_ttl`
//!   and never past the token's `exp`, in a bounded process cache (moka) whose `try_get_with`
//!   makes a burst of the same question one call; with `[cache] redis_url`, in the shared store
//!   too (under a SHA-256 of the question), so replicas ask once.
//! - At most `max_in_flight` calls at once; each bounded by `timeout` (discovery included).
//! - The PDP's health is reported on `/readyz` (not a reason to leave the load balancer: the
//!   kept answers still serve, and every replica shares the PDP).

use crate::auth::jwks::{self, HttpsClient};
pub use crate::config::PdpConfig;
pub use crate::routes::{Ask, AskResource, ContextItem};
use crate::store::SharedStore;
use crate::telemetry::{Counter, Metrics};
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest answer read.
pub const MAX_ANSWER: usize = 64 * 1024;
/// The longest a question waits for a call slot.
const QUEUE_WAIT: Duration = Duration::from_millis(250);
/// The longest `reason_user` passed to a client, in characters.
const MAX_REASON: usize = 200;

/// What the request shows a question.
pub struct Facts<'a> {
    pub claims: Option<&'a Map<String, Value>>,
    /// The token's `exp`, seconds since the epoch (an answer is kept no longer).
    pub exp: Option<f64>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub params: &'a crate::policy::Values<'a>,
    pub client_ip: Option<std::net::IpAddr>,
    pub request_id: Option<&'a str>,
}

/// The PDP's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// With the PDP's `context.reason_user`, if it gave one (cut to [`MAX_REASON`]).
    Deny(Option<Arc<str>>),
}

/// Why a question got no decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The subject's claim is missing or not a string or number: nothing to ask about.
    NoSubject,
    /// The PDP could not be asked, or answered with something that is not a decision.
    Unavailable,
}

#[derive(Clone)]
struct Kept {
    decision: Decision,
    ttl: Duration,
}

struct KeptExpiry;

impl moka::Expiry<Arc<str>, Kept> for KeptExpiry {
    fn expire_after_create(&self, _: &Arc<str>, k: &Kept, _: Instant) -> Option<Duration> {
        Some(k.ttl)
    }
}

#[derive(Default)]
struct Health {
    last_ok: Option<Instant>,
    failing: Option<(Instant, String)>,
}

/// One `[authzen.NAME]`: its client, its kept answers and its health.
pub struct Pdp {
    pub config: PdpConfig,
    client: HttpsClient<Full<Bytes>>,
    get_client: HttpsClient,
    endpoint: Mutex<Option<Uri>>,
    cache: moka::future::Cache<Arc<str>, Kept, foldhash::fast::RandomState>,
    permits: tokio::sync::Semaphore,
    shared: Option<Arc<SharedStore>>,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
    /// Process hit, process miss, shared hit, shared miss.
    lookups: [Counter; 4],
}

impl Pdp {
    pub fn new(
        config: PdpConfig,
        shared: Option<Arc<SharedStore>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Pdp> {
        let route = crate::egress::Route::Environment;
        let endpoint = config.endpoint.clone().or_else(|| {
            (!config.discover)
                .then(|| format!("{}/access/v1/evaluation", config.url).parse().ok())
                .flatten()
        });
        let tls = config.tls.as_deref();
        let (client, get_client) = (
            jwks::http_client_tls(&route, tls),
            jwks::http_client_tls(&route, tls),
        );
        Arc::new(Pdp {
            client,
            get_client,
            endpoint: Mutex::new(endpoint),
            cache: moka::future::Cache::builder()
                .max_capacity(config.cache_entries)
                .expire_after(KeptExpiry)
                // Keys are questions a hundred bytes long: SipHash cost more than the rest of
                // a hit; the key's parts come from a verified token and the route.
                .build_with_hasher(foldhash::fast::RandomState::default()),
            permits: tokio::sync::Semaphore::new(config.max_in_flight),
            shared,
            health: Mutex::default(),
            lookups: metrics.authzen_cache(&config.name),
            metrics,
            config,
        })
    }

    /// The decision on a request, from the kept answers or the PDP.
    pub async fn decide(&self, ask: &Ask, facts: &Facts<'_>) -> Result<Decision, Failure> {
        let subject = subject_id(ask, facts).ok_or(Failure::NoSubject)?;
        let now = crate::auth::validator::now();
        // Never kept past the token's expiry.
        let ttl = match facts.exp {
            Some(exp) if exp.is_finite() => self
                .config
                .cache_ttl
                .min(Duration::from_secs_f64((exp - now).clamp(0.0, 3600.0))),
            _ => self.config.cache_ttl,
        };
        if ttl.is_zero() {
            let body = question(ask, facts, &subject).ok_or(Failure::NoSubject)?;
            return self.ask(&body).await.map_err(|_| Failure::Unavailable);
        }
        let key: Arc<str> = cache_key(ask, facts, &subject)
            .ok_or(Failure::NoSubject)?
            .into();
        if let Some(k) = self.cache.get(&key).await {
            self.lookups[0].inc();
            return Ok(k.decision);
        }
        self.lookups[1].inc();
        // The whole question (the context with it) only for a call.
        let body = question(ask, facts, &subject).ok_or(Failure::NoSubject)?;
        self.cache
            .try_get_with(key.clone(), self.load(&key, body, ttl))
            .await
            .map(|k| k.decision)
            .map_err(|_| Failure::Unavailable)
    }

    /// The shared store's answer, else the PDP's (then stored there too).
    async fn load(&self, key: &str, body: String, ttl: Duration) -> Result<Kept, ()> {
        let stored_key = self.shared.as_ref().map(|s| {
            s.key(&format!(
                "authzen:{}:{}",
                self.config.name,
                crate::jose::hex(&crate::auth::sha256(key))
            ))
        });
        if let (Some(store), Some(k)) = (&self.shared, &stored_key) {
            if let Ok(found) = store.get_sealed(k).await {
                let kept = found.and_then(|b| stored(&b));
                self.lookups[if kept.is_some() { 2 } else { 3 }].inc();
                if let Some(kept) = kept {
                    return Ok(kept);
                }
            }
        }
        let decision = self.ask(&body).await?;
        let kept = Kept { decision, ttl };
        if let (Some(store), Some(k)) = (&self.shared, &stored_key) {
            let (allow, reason) = match &kept.decision {
                Decision::Allow => (true, None),
                Decision::Deny(r) => (false, r.as_deref()),
            };
            let v = json!({
                "decision": allow,
                "reason": reason,
                "until": crate::auth::validator::now() + ttl.as_secs_f64(),
            });
            // A store that fails is counted and skipped; the answer is good regardless.
            let _ = store.set_sealed(k, v.to_string().as_bytes(), ttl).await;
        }
        Ok(kept)
    }

    /// One call to the PDP, counted, timed and bounded.
    async fn ask(&self, body: &str) -> Result<Decision, ()> {
        let started = Instant::now();
        let name = &self.config.name;
        let Ok(Ok(_slot)) = tokio::time::timeout(QUEUE_WAIT, self.permits.acquire()).await else {
            self.metrics.authzen_call(name, "busy", None);
            return Err(());
        };
        let result = match tokio::time::timeout(self.config.timeout, self.call(body)).await {
            Ok(r) => r,
            Err(_) => Err((
                "timeout",
                format!("no complete answer within {:?}", self.config.timeout),
            )),
        };
        let mut h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(d) => {
                let outcome = if d == Decision::Allow {
                    "allow"
                } else {
                    "deny"
                };
                self.metrics
                    .authzen_call(name, outcome, Some(started.elapsed()));
                h.failing = None;
                h.last_ok = Some(Instant::now());
                Ok(d)
            }
            Err((outcome, detail)) => {
                self.metrics
                    .authzen_call(name, outcome, Some(started.elapsed()));
                tracing::warn!(pdp = %name, reason = outcome, error = %detail, "AuthZEN question failed");
                match &mut h.failing {
                    Some((_, last)) => *last = detail,
                    None => h.failing = Some((Instant::now(), detail)),
                }
                Err(())
            }
        }
    }

    async fn call(&self, body: &str) -> Result<Decision, (&'static str, String)> {
        let uri = self.endpoint().await.map_err(|e| ("discovery_failed", e))?;
        let mut req = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("bearward/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = &self.config.authorization {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| ("client_error", e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            let e = crate::egress::error_chain(&e);
            ("unreachable", format!("POST {uri}: {e}"))
        })?;
        if resp.status() != http::StatusCode::OK {
            return Err((
                "http_error",
                format!("POST {uri}: status {}", resp.status()),
            ));
        }
        let body = jwks::bounded_body(resp, MAX_ANSWER)
            .await
            .map_err(|e| e.of_post(&uri, MAX_ANSWER))?;
        parse_decision(&body).map_err(|e| ("invalid_answer", format!("POST {uri}: {e}")))
    }

    /// The evaluation endpoint: configured, the default path, or read from the PDP's metadata
    /// (kept once read).
    async fn endpoint(&self) -> Result<Uri, String> {
        if let Some(u) = self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Ok(u);
        }
        let base: Uri = self.config.url.parse().map_err(|e| format!("{e}"))?;
        // RFC 8615 as the spec says: the well-known path goes between the host and the path.
        let at = format!(
            "{}://{}/.well-known/authzen-configuration{}",
            base.scheme_str().unwrap_or("https"),
            base.authority().map_or("", |a| a.as_str()),
            base.path().trim_end_matches('/')
        );
        let uri: Uri = at.parse().map_err(|e| format!("{at}: {e}"))?;
        let (body, _) =
            crate::auth::jwks::get(&self.get_client, &uri, MAX_ANSWER, self.config.timeout).await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET {uri}: not JSON: {e}"))?;
        // The metadata must be the PDP's own (mix-up protection).
        let pdp = doc.get("policy_decision_point").and_then(Value::as_str);
        if pdp.map(|p| p.trim_end_matches('/')) != Some(self.config.url.as_str()) {
            return Err(format!(
                "GET {uri}: policy_decision_point is {pdp:?}, not {:?}",
                self.config.url
            ));
        }
        let endpoint = doc
            .get("access_evaluation_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("GET {uri}: no access_evaluation_endpoint"))?;
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("GET {uri}: access_evaluation_endpoint: {e}"))?;
        *self
            .endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// For `/readyz`.
    pub fn health(&self) -> String {
        let h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = &self.config.name;
        match (&h.failing, h.last_ok) {
            (Some((since, e)), _) => format!(
                "authzen {name}: failing for {}s (kept answers still serve): {e}",
                since.elapsed().as_secs()
            ),
            (None, Some(t)) => format!(
                "authzen {name}: ok, last call {}s ago",
                t.elapsed().as_secs()
            ),
            (None, None) => format!("authzen {name}: not asked yet"),
        }
    }
}

/// An answer another replica kept, if it still holds.
fn stored(bytes: &[u8]) -> Option<Kept> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let left = v.get("until")?.as_f64()? - crate::auth::validator::now();
    if left.is_nan() || left <= 0.0 {
        return None;
    }
    let decision = match v.get("decision")?.as_bool()? {
        true => Decision::Allow,
        false => Decision::Deny(v.get("reason").and_then(Value::as_str).map(Arc::from)),
    };
    Some(Kept {
        decision,
        ttl: Duration::from_secs_f64(left.min(3600.0)),
    })
}

/// The subject's id: its claim's string, or a number written out; `None` for anything else.
fn subject_id(ask: &Ask, f: &Facts<'_>) -> Option<String> {
    match f.claims?.get(&ask.subject_claim)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The question's cache key: each part of (subject, action, resource) with its length before
/// it, so no two questions share one; the subject's properties as their JSON.
fn cache_key(ask: &Ask, f: &Facts<'_>, subject: &str) -> Option<String> {
    let mut key = String::with_capacity(128);
    let mut part = |s: &str| {
        key.push_str(itoa::Buffer::new().format(s.len()));
        key.push(':');
        key.push_str(s);
    };
    part(&ask.subject_type);
    part(subject);
    part(action(ask, f));
    part(&ask.resource_type);
    part(resource_id(ask, f)?);
    if !ask.subject_properties.is_empty() {
        let props = serde_json::to_string(&properties(ask, f)).ok()?;
        part(&props);
    }
    Some(key)
}

fn action<'a>(ask: &'a Ask, f: &Facts<'a>) -> &'a str {
    ask.action_names
        .get(f.method)
        .map_or(f.method, String::as_str)
}

fn resource_id<'a>(ask: &Ask, f: &'a Facts<'a>) -> Option<&'a str> {
    Some(match ask.resource_id {
        AskResource::Route => f.route,
        AskResource::Path => f.path,
        AskResource::Param(n) => f.params.get(n)?,
    })
}

fn properties(ask: &Ask, f: &Facts<'_>) -> Map<String, Value> {
    let claims = f.claims;
    ask.subject_properties
        .iter()
        .filter_map(|p| Some((p.clone(), claims?.get(p)?.clone())))
        .collect()
}

/// The whole question, with its context.
fn question(ask: &Ask, f: &Facts<'_>, subject: &str) -> Option<String> {
    let mut subject = json!({ "type": ask.subject_type, "id": subject });
    if !ask.subject_properties.is_empty() {
        subject["properties"] = Value::Object(properties(ask, f));
    }
    let mut q = json!({
        "subject": subject,
        "action": { "name": action(ask, f) },
        "resource": { "type": ask.resource_type, "id": resource_id(ask, f)? },
    });
    if !ask.context.is_empty() {
        let mut context = Map::new();
        for c in &ask.context {
            let (k, v) = match c {
                ContextItem::ClientIp => ("client_ip", f.client_ip.map(|ip| ip.to_string())),
                ContextItem::Time => ("time", Some(rfc3339_now())),
                ContextItem::RequestId => ("request_id", f.request_id.map(str::to_owned)),
                ContextItem::Method => ("method", Some(f.method.to_owned())),
                ContextItem::Path => ("path", Some(f.path.to_owned())),
            };
            if let Some(v) = v {
                context.insert(k.to_owned(), Value::String(v));
            }
        }
        q["context"] = Value::Object(context);
    }
    serde_json::to_string(&q).ok()
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A Decision object (`{"decision": <bool>, "context": {...}}`), or why not.
fn parse_decision(body: &[u8]) -> Result<Decision, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("the answer is not a JSON object")?;
    match obj.get("decision") {
        Some(Value::Bool(true)) => Ok(Decision::Allow),
        Some(Value::Bool(false)) => Ok(Decision::Deny(reason_user(obj.get("context")))),
        Some(other) => Err(format!("`decision` is {other}, not a boolean")),
        None => Err("the answer has no `decision`".into()),
    }
}

/// `context.reason_user`: a string, or an object of strings (the spec's example keys them by
/// status, `{"403": "..."}`): the `403` one, else the first. Control characters dropped, cut
/// to [`MAX_REASON`] characters.
fn reason_user(context: Option<&Value>) -> Option<Arc<str>> {
    let r = context?.get("reason_user")?;
    let text = match r {
        Value::String(s) => s.as_str(),
        Value::Object(m) => m
            .get("403")
            .and_then(Value::as_str)
            .or_else(|| m.values().find_map(Value::as_str))?,
        _ => return None,
    };
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect();
    (!clean.is_empty()).then(|| clean.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_boolean_decision_is_one() {
        assert_eq!(
            parse_decision(br#"{"decision": true}"#),
            Ok(Decision::Allow)
        );
        assert_eq!(
            parse_decision(
                br#"{"decision": false, "context": {"reason_user": {"403": "no\nway"}}}"#
            ),
            Ok(Decision::Deny(Some("noway".into())))
        );
        assert_eq!(
            parse_decision(br#"{"decision": false, "context": {"reason_user": {"en": "nope"}}}"#),
            Ok(Decision::Deny(Some("nope".into())))
        );
        for bad in [
            &br#"{"decision": "true"}"#[..],
            br#"{"decision": 1}"#,
            br#"{"allowed": true}"#,
            br#"[{"decision": true}]"#,
            br#"true"#,
            b"<html>",
        ] {
            assert!(
                parse_decision(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_question_and_its_key() {
        let claims: Map<String, Value> =
            serde_json::from_value(json!({"sub": "alice", "roles": ["editor"]})).unwrap();
        let params: crate::policy::Values<'_> = vec!["42".into()].into();
        let ask = Ask {
            pdp: 0,
            subject_type: "identity".into(),
            subject_claim: "sub".into(),
            subject_properties: vec!["roles".into(), "missing".into()],
            action_names: [("DELETE".to_owned(), "can_delete_todo".to_owned())].into(),
            resource_type: "todo".into(),
            resource_id: AskResource::Param(0),
            context: vec![ContextItem::ClientIp, ContextItem::Time],
            reason_to_client: false,
        };
        let facts = Facts {
            claims: Some(&claims),
            exp: None,
            method: "DELETE",
            path: "/todos/42",
            route: "/todos/{todoId}",
            params: &params,
            client_ip: Some([10, 0, 0, 1].into()),
            request_id: None,
        };
        let subject = subject_id(&ask, &facts).unwrap();
        let body: Value = serde_json::from_str(&question(&ask, &facts, &subject).unwrap()).unwrap();
        assert_eq!(
            body["subject"],
            json!({"type": "identity", "id": "alice", "properties": {"roles": ["editor"]}})
        );
        assert_eq!(body["action"], json!({"name": "can_delete_todo"}));
        assert_eq!(body["resource"], json!({"type": "todo", "id": "42"}));
        assert_eq!(body["context"]["client_ip"], "10.0.0.1");
        assert!(body["context"]["time"].as_str().unwrap().ends_with('Z'));
        // The key leaves the context out and tells its parts apart by their lengths.
        let key = cache_key(&ask, &facts, &subject).unwrap();
        assert_eq!(
            key,
            "8:identity5:alice15:can_delete_todo4:todo2:4220:{\"roles\":[\"editor\"]}"
        );
        let none: Map<String, Value> = Map::new();
        let facts = Facts {
            claims: Some(&none),
            ..facts
        };
        assert!(subject_id(&ask, &facts).is_none());
    }
}
