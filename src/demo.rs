//! `bearward demo`: the first five minutes. One process runs an echo API, a local signing key
//! with its JWKS served over HTTP, and bearward in front with a small policy, then prints curl
//! commands with freshly minted tokens for each kind of answer.

use crate::body::{self, Body};
use crate::config::Config;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

const AUDIENCE: &str = "https://demo.bearward.local/api";
const KID: &str = "demo-key-1";

/// A signing key made for this run only.
struct DemoKey {
    enc: EncodingKey,
    jwk: serde_json::Value,
}

fn make_key() -> io::Result<DemoKey> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| io::Error::other("cannot generate a P-256 key"))?;
    let enc = EncodingKey::from_ec_der(pkcs8.as_ref());
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256)
        .map_err(io::Error::other)?;
    let mut jwk = serde_json::to_value(jwk).map_err(io::Error::other)?;
    jwk["kid"] = json!(KID);
    jwk["use"] = json!("sig");
    Ok(DemoKey { enc, jwk })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn mint(key: &DemoKey, issuer: &str, scope: &str, exp: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": KID});
    let claims = json!({
        "iss": issuer, "sub": "demo-user", "aud": AUDIENCE, "client_id": "demo-client",
        "iat": now(), "exp": exp, "scope": scope,
    });
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.enc, Algorithm::ES256)
        .unwrap_or_default();
    format!("{input}.{sig}")
}

/// Serves `handler` on a fresh loopback port until the process ends.
async fn serve<F, Fut>(handler: F) -> io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(format!("{v}\n")));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The demo policy, as a user would write it.
pub fn demo_config(
    listen: SocketAddr,
    issuer: &str,
    jwks_uri: &str,
    upstream: SocketAddr,
) -> String {
    format!(
        r#"[server]
listen = "{listen}"
resource = "{AUDIENCE}"    # RFC 9728: 401s point clients at this API's metadata

[[issuers]]
issuer = "{issuer}"
jwks_uri = "{jwks_uri}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
leeway = "0s"

[upstreams.echo]
url = "http://{upstream}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/public"
upstream = "echo"
auth = "none"

[[routes]]
prefix = "/api/orders"
methods = ["GET"]
scopes = ["orders:read"]
upstream = "echo"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "echo"
"#
    )
}

/// What the demo runs: a signing key, its IdP (JWKS over HTTP), an echo API, and bearward in
/// front of them, bound and with its keys loaded.
struct Demo {
    key: Arc<DemoKey>,
    issuer: String,
    jwks_uri: String,
    echo: SocketAddr,
    server: crate::server::Server,
    base: String,
    text: String,
}

async fn start(listen: SocketAddr, workers: Option<usize>) -> io::Result<Demo> {
    let key = Arc::new(make_key()?);

    let jwks = json!({ "keys": [key.jwk.clone()] });
    let idp = serve(move |_req| {
        let jwks = jwks.clone();
        async move { json_response(jwks) }
    })
    .await?;
    let issuer = format!("http://{idp}");
    let jwks_uri = format!("http://{idp}/jwks");

    let echo = serve(|req: Request<Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        json_response(json!({
            "echo": "hello from the API behind bearward",
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "x-auth-subject": h("x-auth-subject"),
            "x-auth-scopes": h("x-auth-scopes"),
        }))
    })
    .await?;

    let text = demo_config(listen, &issuer, &jwks_uri, echo);
    let mut config =
        Config::from_toml_str(&text, "demo.toml").map_err(|e| io::Error::other(e.to_string()))?;
    config.server.listening.worker_threads = workers;
    // The demo's listener comes from `--listen`, not from a file: say so when it is taken.
    let server = crate::build(config).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{e} (the demo's --listen; another port: bearward demo --listen 127.0.0.1:8081)"
            ),
        )
    })?;
    let addr = server.local_addr()?;
    let base = format!("http://{addr}");
    let text = demo_config(addr, &issuer, &jwks_uri, echo);
    // Keys are fetched in the background; wait so the first curl does not meet a 503.
    for _ in 0..100 {
        if server.gateway().auth.readiness().is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    Ok(Demo {
        key,
        issuer,
        jwks_uri,
        echo,
        server,
        base,
        text,
    })
}

/// Runs the demo until `shutdown` completes. Prints the walkthrough to stdout.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let Demo {
        key,
        issuer,
        jwks_uri,
        echo,
        server,
        base,
        text,
    } = start(listen, None).await?;
    let good = mint(&key, &issuer, "orders:read", now() + 3600);
    let expired = mint(&key, &issuer, "orders:read", now() - 600);
    println!("bearward demo: bearward is listening on {base}");
    println!("  in front of an echo API on http://{echo}, trusting tokens signed by a key made for this run");
    println!("  (issuer {issuer}, JWKS at {jwks_uri}, audience {AUDIENCE}).");
    println!();
    println!("The policy (paste it into a file and run `bearward check --config FILE`):");
    println!();
    for line in text.lines() {
        println!("    {line}");
    }
    println!();
    println!("Try these (tokens are valid for an hour):");
    println!();
    let show = |n: u32, expect: u16, what: &str, cmd: String| {
        println!("[{n}] expect {expect}: {what}");
        println!("    {cmd}");
        println!();
    };
    show(
        1,
        200,
        "a token with the scope orders:read; the API sees X-Auth-Subject and X-Auth-Scopes",
        format!("curl -i -H 'Authorization: Bearer {good}' {base}/api/orders"),
    );
    show(
        2,
        401,
        "no token, and the API is never contacted: WWW-Authenticate names the route's scope and the metadata of [6]",
        format!("curl -i {base}/api/orders"),
    );
    show(3, 403, "the same token on a route that needs the scope admin: error=\"insufficient_scope\", scope=\"admin\"", format!("curl -i -H 'Authorization: Bearer {good}' {base}/api/admin/users"));
    show(
        4,
        401,
        "an expired token: error=\"invalid_token\", error_description=\"token expired\"",
        format!("curl -i -H 'Authorization: Bearer {expired}' {base}/api/orders"),
    );
    show(
        5,
        200,
        "an open route (auth = \"none\"): no token needed",
        format!("curl -i {base}/public/status"),
    );
    show(
        6,
        200,
        "the API's RFC 9728 metadata, answered by bearward: which authorization server issues its tokens, which scopes it takes",
        format!("curl -i {base}{}/api", crate::resource::WELL_KNOWN),
    );
    println!("Each request prints one access-log line on stderr: the decision and its reason.");
    println!(
        "Next: point an [[issuers]] entry at your IdP (see the manual, docs/src/introduction.md: \"From the demo to your IdP\")."
    );
    println!("Press Ctrl-C to stop.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run(shutdown).await
}

/// One call of the training mix: method, path, token, body, and the status it must get.
type Call = (Method, String, Option<String>, Bytes, u16);

/// One pass of the profile-guided build's training run (`bearward demo --train SECONDS`, used by
/// `deploy/pgo.sh`): the demo's own IdP, echo API and bearward, and a load from this process
/// for `seconds`: HTTP/1.1 keep-alive and HTTP/2 clients sending the mix a gateway serves
/// (mostly cached valid tokens; no, expired and tampered tokens; a missing scope; an open route
/// with and without a body; the RFC 9728 document). It needs nothing but the binary. Every
/// answer is checked, so a training run that trained on errors fails instead. Returns the
/// number of requests sent. `workers`: `server.worker_threads` for bearward (the machine's
/// CPUs when `None`).
pub async fn train(seconds: u64, workers: Option<usize>) -> io::Result<u64> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use std::sync::atomic::{AtomicU64, Ordering};

    let demo = start(SocketAddr::from(([127, 0, 0, 1], 0)), workers).await?;
    let base = demo.base.clone();
    let good = mint(&demo.key, &demo.issuer, "orders:read", now() + 3600);
    let expired = mint(&demo.key, &demo.issuer, "orders:read", now() - 600);
    // One signature character changed, well inside it: the last one carries only 2 bits of an
    // ES256 signature, so changing it can give back the same signature or a non-canonical one.
    let tampered = {
        let mut t = good.clone().into_bytes();
        let i = t.len() - 10;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).map_err(io::Error::other)?
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo.server.run(async {
        let _ = stopped.await;
    }));

    let upload = Bytes::from(vec![b'x'; 4096]);
    let mix: Arc<Vec<Call>> = Arc::new({
        let mut m = Vec::new();
        for _ in 0..13 {
            m.push((
                Method::GET,
                "/api/orders/7".into(),
                Some(good.clone()),
                Bytes::new(),
                200,
            ));
        }
        m.push((Method::GET, "/api/orders".into(), None, Bytes::new(), 401));
        m.push((
            Method::GET,
            "/api/orders".into(),
            Some(expired),
            Bytes::new(),
            401,
        ));
        m.push((
            Method::GET,
            "/api/orders".into(),
            Some(tampered),
            Bytes::new(),
            401,
        ));
        m.push((
            Method::GET,
            "/api/admin/users".into(),
            Some(good),
            Bytes::new(),
            403,
        ));
        m.push((
            Method::GET,
            "/public/status?x=1".into(),
            None,
            Bytes::new(),
            200,
        ));
        m.push((Method::POST, "/public/upload".into(), None, upload, 200));
        let doc = format!("{}/api", crate::resource::WELL_KNOWN);
        m.push((Method::GET, doc, None, Bytes::new(), 200));
        m
    });
    let sent = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let h1 = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut workers = Vec::new();
    for w in 0..12usize {
        // Two of three workers on HTTP/1.1 (one connection each), the rest share one HTTP/2
        // connection.
        let client = if w % 3 == 2 { h2.clone() } else { h1.clone() };
        let (mix, sent, base) = (mix.clone(), sent.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while tokio::time::Instant::now() < until {
                let (method, path, token, body, want) = &mix[i % mix.len()];
                i += 1;
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(format!("{base}{path}"));
                if let Some(t) = token {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let req = req
                    .body(Full::new(body.clone()))
                    .map_err(io::Error::other)?;
                let resp = client.request(req).await.map_err(io::Error::other)?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await.map_err(io::Error::other)?;
                if status != *want {
                    return Err(io::Error::other(format!(
                        "{method} {path}: {status}, expected {want}"
                    )));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(())
        }));
    }
    let mut failed = None;
    for w in workers {
        if let Err(e) = w.await.map_err(io::Error::other).and_then(|r| r) {
            failed.get_or_insert(e);
        }
    }
    let _ = stop.send(());
    server.await.map_err(io::Error::other)??;
    match failed {
        Some(e) => Err(e),
        None => Ok(sent.load(Ordering::Relaxed)),
    }
}
