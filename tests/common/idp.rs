//! A test identity provider: fixture keys, token minting, and a real HTTP server for the
//! discovery document and the JWKS (swappable while it runs, hits counted, stoppable).
#![allow(dead_code)]

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub(crate) const B64: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A fixture key pair.
pub(crate) struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    /// The public JWK, with `kid` and without `alg`.
    pub jwk: Value,
    /// The public key PEM (for the key-confusion test).
    pub public_pem: Vec<u8>,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/keys/{name}"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

impl Key {
    /// `file` in tests/fixtures/keys; `alg` decides how the PEM is read.
    pub(crate) fn load(file: &str, kid: &str, alg: Algorithm) -> Key {
        let pem = fixture(file);
        let enc = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).unwrap();
        let mut jwk = serde_json::to_value(jwk).unwrap();
        let obj = jwk.as_object_mut().unwrap();
        obj.remove("alg");
        obj.insert("kid".into(), json!(kid));
        obj.insert("use".into(), json!("sig"));
        Key {
            kid: kid.into(),
            alg,
            enc,
            jwk,
            public_pem: fixture(&format!("pub/{file}")),
        }
    }

    pub(crate) fn rsa1() -> Key {
        Key::load("rsa1.pem", "rsa1", Algorithm::RS256)
    }
    pub(crate) fn rsa2() -> Key {
        Key::load("rsa2.pem", "rsa2", Algorithm::RS256)
    }
    pub(crate) fn p256() -> Key {
        Key::load("p256.pem", "p256", Algorithm::ES256)
    }
    pub(crate) fn p384() -> Key {
        Key::load("p384.pem", "p384", Algorithm::ES384)
    }
    pub(crate) fn ed25519() -> Key {
        Key::load("ed25519.pem", "ed", Algorithm::EdDSA)
    }

    /// The same key under another algorithm of its family (RS384, PS256, ...).
    pub(crate) fn with_alg(mut self, alg: Algorithm) -> Key {
        self.alg = alg;
        self
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `header` and `claims` (both JSON objects, written as given) with `key` under `alg`.
pub(crate) fn sign_raw(header: &str, claims: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// Token minting for one issuer and audience.
#[derive(Clone)]
pub(crate) struct Minter {
    pub issuer: String,
    pub audience: String,
}

impl Minter {
    /// Standard valid claims, expiring in 5 minutes, with `scope`.
    pub(crate) fn claims(&self, scope: &str) -> Value {
        json!({
            "iss": self.issuer,
            "sub": "user-42",
            "aud": self.audience,
            "exp": now() + 300,
            "iat": now() - 5,
            "nbf": now() - 5,
            "scope": scope,
            "client_id": "test-client",
        })
    }

    pub(crate) fn header(key: &Key) -> Value {
        json!({ "alg": format!("{:?}", key.alg), "typ": "at+jwt", "kid": key.kid })
    }

    pub(crate) fn token_with(&self, key: &Key, header: Value, claims: Value) -> String {
        sign_raw(&header.to_string(), &claims.to_string(), &key.enc, key.alg)
    }

    pub(crate) fn token(&self, key: &Key, scope: &str) -> String {
        self.token_with(key, Self::header(key), self.claims(scope))
    }

    pub(crate) fn token_claims(
        &self,
        key: &Key,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> String {
        let mut c = self.claims("read");
        edit(c.as_object_mut().unwrap());
        self.token_with(key, Self::header(key), c)
    }

    pub(crate) fn token_expired(&self, key: &Key) -> String {
        self.token_claims(key, |c| {
            c.insert("exp".into(), json!(now() - 120));
            c.insert("iat".into(), json!(now() - 400));
            c.insert("nbf".into(), json!(now() - 400));
        })
    }
}

struct IdpState {
    issuer: Mutex<String>,
    jwks: Mutex<Value>,
    /// Bodies served as they are instead of the documents, when set.
    raw_jwks: Mutex<Option<String>>,
    raw_discovery: Mutex<Option<String>>,
    cache_control: Mutex<Option<String>>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
}

/// The test IdP: `/.well-known/openid-configuration` and `/jwks` on 127.0.0.1.
pub(crate) struct Idp {
    pub addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub(crate) async fn start(keys: &[&Key]) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            issuer: Mutex::new(format!("http://{addr}")),
            jwks: Mutex::new(
                json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }),
            ),
            raw_jwks: Mutex::new(None),
            raw_discovery: Mutex::new(None),
            cache_control: Mutex::new(None),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(req, s.clone()));
                    // No keep-alive: stopping the accept loop makes the IdP unreachable at once.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Idp { addr, state, task }
    }

    pub(crate) fn issuer(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    pub(crate) fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub(crate) fn minter(&self, audience: &str) -> Minter {
        Minter {
            issuer: self.issuer(),
            audience: audience.into(),
        }
    }

    pub(crate) fn set_keys(&self, keys: &[&Key]) {
        *self.state.jwks.lock().unwrap() =
            json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    }

    pub(crate) fn set_jwks(&self, doc: Value) {
        *self.state.jwks.lock().unwrap() = doc;
    }

    /// Serves `body` (any bytes, not necessarily JSON) as the JWKS.
    pub(crate) fn set_jwks_raw(&self, body: String) {
        *self.state.raw_jwks.lock().unwrap() = Some(body);
    }

    /// Serves `body` as the discovery document.
    pub(crate) fn set_discovery_raw(&self, body: String) {
        *self.state.raw_discovery.lock().unwrap() = Some(body);
    }

    pub(crate) fn set_cache_control(&self, v: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = v.map(str::to_owned);
    }

    pub(crate) fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub(crate) fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    /// Stops answering: the port is closed.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    s: Arc<IdpState>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (status, body, cc) = match req.uri().path() {
        "/.well-known/openid-configuration" => {
            s.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let issuer = s.issuer.lock().unwrap().clone();
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/jwks"),
                "token_endpoint": format!("{issuer}/token"),
            });
            let raw = s.raw_discovery.lock().unwrap().clone();
            (StatusCode::OK, raw.unwrap_or_else(|| doc.to_string()), None)
        }
        "/jwks" => {
            s.jwks_hits.fetch_add(1, Ordering::SeqCst);
            let raw = s.raw_jwks.lock().unwrap().clone();
            let doc = raw.unwrap_or_else(|| s.jwks.lock().unwrap().to_string());
            (StatusCode::OK, doc, s.cache_control.lock().unwrap().clone())
        }
        _ => (StatusCode::NOT_FOUND, String::new(), None),
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(cc) = cc {
        resp = resp.header("cache-control", cc);
    }
    Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
}

/// A config taking `idp`'s RS256 tokens for `https://api.test` (keys by discovery), with one
/// upstream, `app` at `upstream`, an admin listener, and `routes` (`[[routes]]` tables).
pub(crate) fn idp_config(idp: &Idp, upstream: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"https://api.test\"]\n\
         algorithms = [\"RS256\"]\n\n[upstreams.app]\nurl = \"{upstream}\"\n\n{routes}\n",
        idp.issuer()
    )
}

/// An IdP signing with [`Key::rsa1`], a recording upstream, and bearward on [`idp_config`]
/// with `routes`, ready (its keys loaded).
pub(crate) async fn serve_routes(routes: &str) -> (Key, Idp, super::Upstream, super::Gateway) {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = super::Upstream::start().await;
    let gw = super::Gateway::start(&idp_config(&idp, &up.url(), routes)).await;
    super::wait_ready(&gw).await;
    (key, idp, up, gw)
}
