//! `bearward demo`: the first five minutes. One process runs an echo API, a local signing key
//! with its JWKS served over HTTP, and bearward in front with a small policy, then prints curl
//! commands with freshly minted tokens for each kind of answer.

use crate::body::{self, Body};
use crate::config::Config;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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

/// Runs the demo until `shutdown` completes. Prints the walkthrough to stdout.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> io::Result<()> {
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
    let config =
        Config::from_toml_str(&text, "demo.toml").map_err(|e| io::Error::other(e.to_string()))?;
    let server = crate::build(config).await?;
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
        "Next: point an [[issuers]] entry at your IdP (see README: \"From the demo to your IdP\")."
    );
    println!("Press Ctrl-C to stop.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run(shutdown).await
}
