//! The request path in process: canonicalization, route matching over 100 routes, and one
//! whole request through bearward's service to a real upstream on loopback (open route, and a
//! bearer route with a cached RS256 token). Run: `cargo bench --bench gateway`.

use base64::Engine;
use bearward::config::Config;
use bearward::request::path::canonicalize;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

fn routes_config(n: usize, upstream: &str, jwks: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\nwatch_config = false\n\
         [[issuers]]\nissuer = \"https://idp.bench\"\njwks_file = \"{jwks}\"\naudiences = [\"https://api.bench\"]\n\
         [upstreams.app]\nurl = \"{upstream}\"\n"
    );
    for i in 0..n - 2 {
        s += &format!(
            "[[routes]]\nprefix = \"/svc{i}/v1\"\nscopes = [\"s{i}\"]\nupstream = \"app\"\n"
        );
    }
    s += "[[routes]]\nprefix = \"/public\"\nupstream = \"app\"\nauth = \"none\"\n";
    s += "[[routes]]\nprefix = \"/api\"\nscopes = [\"read\"]\nupstream = \"app\"\n";
    s
}

fn token() -> String {
    let pem = std::fs::read("tests/fixtures/keys/rsa1.pem").expect("run from the crate root");
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = json!({"alg": "RS256", "typ": "at+jwt", "kid": "rsa1"}).to_string();
    let c = json!({"iss": "https://idp.bench", "aud": "https://api.bench", "sub": "u", "exp": now + 3600, "scope": "read"}).to_string();
    let input = format!("{}.{}", b64.encode(h), b64.encode(c));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{input}.{sig}")
}

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    for (name, p) in [
        ("canonical", "/api/orders/12345/items"),
        ("dots and slashes", "/api//orders/./12345/../12345/items"),
        ("escapes", "/api/%6Frders/caf%C3%A9/a%20b"),
    ] {
        c.bench_function(&format!("canonicalize {name}"), |b| {
            b.iter(|| canonicalize(black_box(p)).unwrap());
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream());
    let text = routes_config(
        100,
        &format!("http://{up}"),
        "tests/fixtures/jwks-rsa1.json",
    );
    let config = Config::from_toml_str(&text, "bench.toml").unwrap();
    let table = config.routes.clone();
    assert_eq!(table.routes().len(), 100);
    c.bench_function("route match, 100 routes, last route", |b| {
        b.iter(|| {
            table
                .find(black_box(&Method::GET), None, black_box("/api/orders/1"))
                .unwrap()
        });
    });
    c.bench_function("route match, 100 routes, no match", |b| {
        b.iter(|| {
            table
                .find(black_box(&Method::GET), None, black_box("/nothing/here"))
                .is_none()
        });
    });

    let server = rt.block_on(bearward::build(config)).unwrap();
    let gateway = server.gateway();
    rt.block_on(gateway.auth.issuers()[0].refresh()).unwrap();
    let conn = bearward::gateway::ConnInfo {
        peer: "127.0.0.1:40000".parse().unwrap(),
        peer_ip: http::HeaderValue::from_static("127.0.0.1"),
        ledger: None,
        request_timer: Default::default(),
        tls: None,
        decision: false,
    };
    let tok = format!("Bearer {}", token());
    let run = |gw: &Arc<bearward::gateway::Gateway>, path: &str, auth: Option<&str>| {
        let mut req = Request::get(path).header("host", "api.bench");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        rt.block_on(async {
            let resp = gw.handle(req, &conn, None, true).await;
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        });
    };
    c.bench_function("request through the service, open route", |b| {
        b.iter(|| run(&gateway, "/public/x", None));
    });
    c.bench_function("request through the service, RS256 cached", |b| {
        b.iter(|| run(&gateway, "/api/orders/1", Some(&tok)));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
