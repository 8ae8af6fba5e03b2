//! Signing keys per issuer: fetched from `jwks_uri`, found through discovery, or read from a file;
//! kept as one immutable snapshot per issuer that a fetch replaces whole.
//!
//! Refresh policy:
//! - a background task per issuer refetches before the keys expire: the IdP's
//!   `Cache-Control: max-age` clamped to `[jwks_min_refresh, jwks_max_refresh]`, else
//!   `jwks_refresh`; after a failure it retries with backoff (1 s doubling, capped);
//! - an unknown `kid` triggers a refetch no more often than `unknown_kid_cooldown` per issuer;
//! - every fetch is single flight: concurrent callers share one spawned fetch, and no lock is
//!   held across it;
//! - a failed fetch keeps the last good keys until they are `max_stale` old; then the issuer has
//!   no usable keys (503, readiness false) until a fetch succeeds;
//! - with a shared store that seals (`[cache] redis_url` and `secret`), each fetched key set is
//!   kept there too, and a replica whose fetch fails takes it when it is newer than its own and
//!   younger than `max_stale`: one that starts or restarts while the IdP is down serves with
//!   the keys the others last saw, rather than refusing every token until the IdP is back.
//!
//! Why a snapshot per issuer and not a moka entry per (issuer, kid): a JWKS is one document. A
//! key retired by the IdP must vanish at the same moment its replacement appears, and a refresh
//! must never leave a half-updated set; swapping one `Arc<KeySet>` gives both for free, and a
//! read is one uncontended `RwLock` read and an `Arc` clone.

pub use super::keys::{parse_jwks, KeyKind, KeyPolicy, KeySet, RefusedKey, VerifyKey};
use crate::config::{IssuerConfig, KeySource};
use crate::egress::{Egress, Route};
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub(crate) type HttpsClient<B = Empty<Bytes>> = Client<HttpsConnector<Egress>, B>;

/// The client used for JWKS, discovery and introspection: HTTPS through rustls (system roots,
/// else Mozilla's), plain HTTP where the config allows it, directly or through a proxy as
/// `route` says.
pub fn http_client<B>(route: &Route) -> HttpsClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("the aws-lc-rs provider supports the default TLS versions"),
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .wrap_connector(Egress::new(route));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// [`http_client`], or with `tls` one trusting its roots and presenting its client
/// certificate, for a server with a private CA that asks for one (an AuthZEN decision point, a
/// token endpoint with `tls_client_auth`).
pub fn http_client_tls<B>(route: &Route, tls: Option<&rustls::ClientConfig>) -> HttpsClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(tls) = tls else {
        return http_client(route);
    };
    // hyper-rustls sets ALPN itself (and refuses a config that already has it).
    let mut tls = tls.clone();
    tls.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(Egress::new(route));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The route an issuer's calls take: its own `proxy`, else the environment's.
pub fn issuer_route(issuer: &IssuerConfig) -> Route {
    issuer
        .proxy
        .clone()
        .map_or(Route::Environment, Route::Proxy)
}

/// Bounded GET: status 200, at most `max_bytes`, all within `timeout`.
/// Returns the body and the `max-age` of its `Cache-Control`, if any.
pub(crate) async fn get(
    client: &HttpsClient,
    uri: &Uri,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(Bytes, Option<Duration>), String> {
    let req = Request::get(uri.clone())
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(
            header::USER_AGENT,
            concat!("bearward/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let span = crate::trace::call_span();
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET {uri}: {}", crate::egress::error_chain(&e)))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("GET {uri}: status {}", resp.status()));
        }
        let max_age = max_age(resp.headers());
        let body = bounded_body(resp, max_bytes).await.map_err(|e| match e {
            BodyError::TooLarge => format!("GET {uri}: larger than {max_bytes} bytes"),
            BodyError::Broken(e) => format!("GET {uri}: body: {e}"),
        })?;
        Ok((body, max_age))
    };
    let result = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET {uri}: no complete answer within {timeout:?}"))
        .and_then(|r| r);
    // A fetch made while serving a request (an unknown kid) hangs under its span; the
    // background refreshes have none.
    crate::trace::end_call(
        span,
        "GET jwks",
        || {
            vec![
                crate::trace::attr("http.request.method", "GET"),
                crate::trace::attr("server.address", uri.authority().map_or("", |a| a.as_str())),
                crate::trace::attr("url.path", uri.path()),
            ]
        },
        result.as_ref().err().cloned(),
    );
    result
}

/// Why an answer's body was not read whole.
pub(crate) enum BodyError {
    /// Over the bound: declared so in `Content-Length`, or counted as it came.
    TooLarge,
    /// The connection broke off.
    Broken(String),
}

impl BodyError {
    /// The metric outcome and log detail of a POST whose answer was not read:
    /// `invalid_answer` when too large, `unreachable` when broken off.
    pub(crate) fn of_post(self, uri: &Uri, max: usize) -> (&'static str, String) {
        match self {
            BodyError::TooLarge => (
                "invalid_answer",
                format!("POST {uri}: answer over {max} bytes"),
            ),
            BodyError::Broken(e) => ("unreachable", format!("POST {uri}: body: {e}")),
        }
    }
}

/// An answer's body, at most `max` bytes: refused on its `Content-Length` before a byte is
/// read, else counted as it arrives. The one bounded read of every call bearward makes to an
/// IdP or decision point.
pub(crate) async fn bounded_body(
    resp: http::Response<hyper::body::Incoming>,
    max: usize,
) -> Result<Bytes, BodyError> {
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(resp.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Broken(e.to_string())),
    }
}

/// `max-age` from `Cache-Control`; `no-cache`/`no-store` count as zero (the lower bound applies).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if let Some(n) = d
                .strip_prefix("max-age=")
                .or_else(|| d.strip_prefix("Max-Age="))
            {
                if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                    found = Some(Duration::from_secs(n));
                }
            }
        }
    }
    found
}

/// The issuer's metadata (OpenID Discovery, then RFC 8414's two places), whose `issuer` must
/// be the configured one exactly. Returns where it was found and the document.
pub(crate) async fn discovery_document(
    client: &HttpsClient,
    issuer: &str,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(Uri, Value), String> {
    let configured = issuer;
    let issuer = issuer.trim_end_matches('/');
    let parsed: Uri = issuer
        .parse()
        .map_err(|e| format!("issuer is not a URL: {e}"))?;
    let origin = format!(
        "{}://{}",
        parsed.scheme_str().unwrap_or("https"),
        parsed.authority().map_or("", |a| a.as_str())
    );
    let path = parsed.path().trim_end_matches('/');
    let candidates = [
        format!("{issuer}/.well-known/openid-configuration"),
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/oauth-authorization-server"),
    ];
    let mut errors = Vec::new();
    for c in &candidates {
        let Ok(uri) = c.parse::<Uri>() else { continue };
        match get(client, &uri, max_bytes, timeout).await {
            Ok((body, _)) => {
                let doc: Value = match serde_json::from_slice(&body) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(format!("{uri}: not JSON: {e}"));
                        continue;
                    }
                };
                if doc.get("issuer").and_then(Value::as_str) != Some(configured) {
                    errors.push(format!("{uri}: its issuer is not {configured:?}"));
                    continue;
                }
                return Ok((uri, doc));
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!("discovery failed: {}", errors.join("; ")))
}

/// An http(s) endpoint named in a metadata document, where the issuer may send bearward
/// ([`IssuerConfig::discovered_ok`]: https, on its origin or a trusted one, no metadata
/// address).
pub(crate) fn endpoint_in(
    doc: &Value,
    from: &Uri,
    name: &str,
    issuer: &IssuerConfig,
) -> Result<Uri, String> {
    let text = doc
        .get(name)
        .and_then(Value::as_str)
        .ok_or(format!("{from}: no {name}"))?;
    let uri: Uri = text.parse().map_err(|e| format!("{from}: {name}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.authority().is_none() {
        return Err(format!("{from}: {name} is not an http(s) URL"));
    }
    issuer
        .discovered_ok(&uri)
        .map_err(|e| format!("{from}: {name} refused: {e}"))?;
    Ok(uri)
}

/// What `/readyz`, metrics and `explain` can know about an issuer's keys.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub last_error: Option<String>,
    /// The jwks_uri discovery found.
    pub discovered: Option<Uri>,
    /// The keys the last fetched document held that were refused.
    pub refused: Vec<RefusedKey>,
}

type FetchResult = Result<Duration, String>;

/// One issuer's key store.
pub struct IssuerKeys {
    pub config: IssuerConfig,
    /// The configured HMAC secret as a key, for HS* tokens only.
    pub hmac: Option<Arc<VerifyKey>>,
    current: RwLock<Option<Arc<KeySet>>>,
    status: Mutex<Status>,
    inflight: Mutex<Option<Shared<BoxFuture<'static, FetchResult>>>>,
    last_on_demand: Mutex<Option<Instant>>,
    client: HttpsClient,
    metrics: Arc<Metrics>,
    /// The sealing shared store, if any: where fetched keys are kept for the other replicas.
    shared: RwLock<Option<Arc<SharedStore>>>,
}

/// A fetched key document and what it said about itself.
struct Loaded {
    keys: Vec<Arc<VerifyKey>>,
    refused: Vec<RefusedKey>,
    max_age: Option<Duration>,
    source: String,
    body: Bytes,
}

impl IssuerKeys {
    /// A store with no keys yet; for an HMAC issuer, its secret is its only key.
    pub fn new(
        config: IssuerConfig,
        client: HttpsClient,
        metrics: Arc<Metrics>,
    ) -> Arc<IssuerKeys> {
        let hmac = config
            .hmac_secret
            .as_ref()
            .map(|s| Arc::new(VerifyKey::hmac(&s.0)));
        let initial = match (&config.keys, &hmac) {
            (KeySource::None, Some(k)) => Some(Arc::new(KeySet {
                keys: vec![k.clone()],
                fetched_at: Instant::now(),
                source: "hmac secret".into(),
            })),
            _ => None,
        };
        Arc::new(IssuerKeys {
            config,
            hmac,
            current: RwLock::new(initial),
            status: Mutex::new(Status::default()),
            inflight: Mutex::new(None),
            last_on_demand: Mutex::new(None),
            client,
            metrics,
            shared: RwLock::new(None),
        })
    }

    /// Keeps fetched keys in `store` (a sealing one) and takes them from it when a fetch fails;
    /// `None`: neither. Set again on every reload, since the store may have changed.
    pub fn share_through(&self, store: Option<Arc<SharedStore>>) {
        *self
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }

    /// The store and this issuer's key there: by issuer and where its keys come from, so a
    /// reload that moves `jwks_uri` never reads the old source's set. `None` for keys read from
    /// a file or a secret, which every replica has.
    fn shared_slot(&self) -> Option<(Arc<SharedStore>, String)> {
        let from = match &self.config.keys {
            KeySource::JwksUri(u) => u.to_string(),
            KeySource::Discovery => "discovery".to_owned(),
            KeySource::File(_) | KeySource::None => return None,
        };
        let store = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        let id = super::sha256(&format!("{}\n{from}", self.config.issuer));
        Some((store, format!("keys:{}", crate::jose::hex(&id))))
    }

    /// Puts a fetched key document in the shared store for `max_stale`, the longest anyone
    /// may serve with it. A store that fails is counted there and changes nothing here.
    async fn keep_shared(&self, body: &Bytes, source: &str) {
        let Some((store, key)) = self.shared_slot() else {
            return;
        };
        let ttl = self.config.jwks.max_stale;
        if ttl.is_zero() {
            return;
        }
        let doc = serde_json::json!({
            "at": super::validator::now(),
            "source": source,
            "jwks": String::from_utf8_lossy(body),
        });
        let _ = store
            .set_sealed(&key, doc.to_string().as_bytes(), ttl)
            .await;
    }

    /// After a failed fetch: the key set another replica (or this one, before a restart) kept
    /// in the shared store, if it opens under `[cache] secret`, is younger than `max_stale`
    /// (its age as the replica that fetched it wrote it) and newer than the set held here. Its
    /// keys are taken by this issuer's own rules, as a fetched document's are.
    async fn take_shared(&self) {
        let Some((store, key)) = self.shared_slot() else {
            return;
        };
        let Ok(Some(raw)) = store.get_sealed(&key).await else {
            return;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&raw) else {
            return;
        };
        let (Some(at), Some(source), Some(jwks)) = (
            doc["at"].as_f64(),
            doc["source"].as_str(),
            doc["jwks"].as_str(),
        ) else {
            return;
        };
        // Another replica's clock may run ahead: its set is taken as fetched now, no later.
        let age = Duration::try_from_secs_f64((super::validator::now() - at).max(0.0))
            .unwrap_or(Duration::MAX);
        if age > self.config.jwks.max_stale {
            return;
        }
        let Some(fetched_at) = Instant::now().checked_sub(age) else {
            return;
        };
        if self
            .latest()
            .is_some_and(|held| held.fetched_at >= fetched_at)
        {
            return;
        }
        let policy = KeyPolicy {
            min_rsa_bits: self.config.jwks.min_rsa_bits,
        };
        let Ok((keys, _)) = parse_jwks(jwks.as_bytes(), policy) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        tracing::warn!(issuer = %self.config.issuer, %source, age_s = age.as_secs(), keys = keys.len(), "signing keys taken from the shared store: the IdP could not be reached, a replica fetched these");
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(KeySet {
            keys,
            fetched_at,
            source: format!("shared store ({source})"),
        }));
    }

    /// A store for `config` that starts with `old`'s keys and fetch status, for a reload that
    /// changed only what is checked after the signature ([`IssuerConfig::same_keys`]: an
    /// incident's edit to `revoked` or `audiences` must not wait on a JWKS fetch, nor fail while
    /// the IdP is down). The keys keep their age; the refresher fetches as a new store's does.
    pub fn carrying(
        config: IssuerConfig,
        old: &IssuerKeys,
        client: HttpsClient,
        metrics: Arc<Metrics>,
    ) -> Arc<IssuerKeys> {
        let keys = IssuerKeys::new(config, client, metrics);
        *keys
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = old.latest();
        *keys
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = old.status();
        keys
    }

    fn has_remote_keys(&self) -> bool {
        self.config.keys != KeySource::None
    }

    /// The current keys, unless there are none or they are older than `max_stale`.
    pub fn usable(&self) -> Option<Arc<KeySet>> {
        let set = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        if self.has_remote_keys() && set.fetched_at.elapsed() > self.config.jwks.max_stale {
            return None;
        }
        Some(set)
    }

    /// The latest keys whatever their age.
    pub fn latest(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A copy of the fetch status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refetches now, joining a fetch already in flight. Returns when the next refresh is due.
    pub async fn refresh(self: &Arc<Self>) -> FetchResult {
        let fut = {
            let mut slot = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*slot {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    // Spawned, so the fetch completes even if every waiter goes away; its span
                    // (with [telemetry]) hangs under the request that asked first.
                    let parent = crate::trace::current();
                    let task = tokio::spawn(crate::trace::within(parent, async move {
                        let r = this.fetch_once().await;
                        *this
                            .inflight
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                        r
                    }));
                    let f = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")))
                    }
                    .boxed()
                    .shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        fut.await
    }

    /// An unknown `kid` (or no keys) may refetch once per cooldown. Returns whether it did.
    pub async fn refresh_on_demand(self: &Arc<Self>) -> bool {
        if !self.has_remote_keys() {
            return false;
        }
        let joined = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if !joined {
            let mut last = self
                .last_on_demand
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.config.jwks.unknown_kid_cooldown) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let _ = self.refresh().await;
        true
    }

    async fn fetch_once(&self) -> FetchResult {
        let started = Instant::now();
        let result = self.load().await;
        let fetched = match &result {
            Ok(l) if !l.keys.is_empty() => Some((l.body.clone(), l.source.clone())),
            _ => None,
        };
        let settled = self.settle(result, started);
        match (&settled, fetched) {
            (Ok(_), Some((body, source))) => self.keep_shared(&body, &source).await,
            (Err(_), _) => self.take_shared().await,
            (Ok(_), None) => {}
        }
        settled
    }

    /// Takes a fetch's outcome: the new key set in place, or the error noted.
    fn settle(&self, result: Result<Loaded, String>, started: Instant) -> FetchResult {
        self.metrics.jwks_fetch(
            &self.config.issuer,
            matches!(&result, Ok(l) if !l.keys.is_empty()),
        );
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(Loaded {
                keys,
                refused,
                max_age,
                source,
                ..
            }) => {
                // A refusal is news once: the same document refetched every few minutes says
                // it again at debug level, and the metric keeps saying it.
                for r in &refused {
                    if status.refused.contains(r) {
                        tracing::debug!(issuer = %self.config.issuer, kid = %r.kid, reason = r.reason, "JWKS key refused: {}", r.detail);
                    } else {
                        tracing::warn!(issuer = %self.config.issuer, kid = %r.kid, reason = r.reason, %source, "JWKS key refused: {}", r.detail);
                    }
                }
                self.metrics.set_refused_keys(
                    &self.config.issuer,
                    refused.iter().map(|r| (r.kid.as_str(), r.reason)),
                );
                let n_refused = refused.len();
                status.refused = refused;
                if keys.is_empty() {
                    let e = format!("{source}: no usable signing keys ({n_refused} refused)");
                    return Err(self.failed(&mut status, e));
                }
                tracing::info!(issuer = %self.config.issuer, %source, keys = keys.len(), "signing keys loaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(KeySet {
                    keys,
                    fetched_at: started,
                    source,
                }));
                status.last_error = None;
                let p = &self.config.jwks;
                Ok(max_age.map_or(p.refresh, |a| a.clamp(p.min_refresh, p.max_refresh)))
            }
            Err(e) => Err(self.failed(&mut status, e)),
        }
    }

    fn failed(&self, status: &mut Status, e: String) -> String {
        tracing::warn!(issuer = %self.config.issuer, error = %e, "fetching signing keys failed; keeping the last good keys");
        status.last_error = Some(e.clone());
        if matches!(self.config.keys, KeySource::Discovery) {
            // The metadata may have moved the JWKS; look it up again next time.
            status.discovered = None;
        }
        e
    }

    async fn load(&self) -> Result<Loaded, String> {
        let p = &self.config.jwks;
        let (body, max_age, source) = match &self.config.keys {
            KeySource::None => return Err("no key source".into()),
            KeySource::File(path) => {
                // Read at most one byte past the limit: the file may grow after any size check.
                use tokio::io::AsyncReadExt;
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let mut body = Vec::new();
                file.take(p.max_bytes as u64 + 1)
                    .read_to_end(&mut body)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if body.len() > p.max_bytes {
                    return Err(format!(
                        "{}: larger than {} bytes",
                        path.display(),
                        p.max_bytes
                    ));
                }
                (Bytes::from(body), None, path.display().to_string())
            }
            KeySource::JwksUri(uri) => {
                let (b, a) = get(&self.client, uri, p.max_bytes, p.timeout).await?;
                (b, a, uri.to_string())
            }
            KeySource::Discovery => {
                let known = self
                    .status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .discovered
                    .clone();
                let uri = match known {
                    Some(u) => u,
                    None => {
                        let u = self.discover().await?;
                        self.status
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .discovered = Some(u.clone());
                        u
                    }
                };
                let (b, a) = get(&self.client, &uri, p.max_bytes, p.timeout).await?;
                (b, a, uri.to_string())
            }
        };
        let policy = KeyPolicy {
            min_rsa_bits: p.min_rsa_bits,
        };
        let (keys, refused) = parse_jwks(&body, policy).map_err(|e| format!("{source}: {e}"))?;
        Ok(Loaded {
            keys,
            refused,
            max_age,
            source,
            body,
        })
    }

    /// OpenID Discovery 1.0 section 4, then RFC 8414 section 3 (both its inserted form and the
    /// appended form some servers use). The document's `issuer` must equal ours exactly.
    async fn discover(&self) -> Result<Uri, String> {
        let p = &self.config.jwks;
        let (uri, doc) =
            discovery_document(&self.client, &self.config.issuer, p.max_bytes, p.timeout).await?;
        endpoint_in(&doc, &uri, "jwks_uri", &self.config)
    }

    pub async fn run_refresher(self: Arc<Self>) {
        if !self.has_remote_keys() {
            return;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.refresh().await {
                Ok(next) => {
                    backoff = Duration::from_secs(1);
                    next
                }
                Err(_) => {
                    let w = backoff
                        .min(self.config.jwks.refresh)
                        .min(Duration::from_secs(60));
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.remove(header::CACHE_CONTROL);
        assert_eq!(max_age(&h), None);
    }
}
