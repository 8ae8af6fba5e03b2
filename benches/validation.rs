//! Token validation cost: full validation (signature + claims) per algorithm, and a hit in the
//! verified-token cache. Run: `cargo bench --bench validation`.

use base64::Engine;
use bearward::auth::{Authenticator, Trace};
use bearward::config::Config;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const ISSUER: &str = "https://idp.bench";

struct Key {
    kid: &'static str,
    alg: Algorithm,
    enc: EncodingKey,
}

fn key(file: &str, kid: &'static str, alg: Algorithm) -> Key {
    let pem =
        std::fs::read(format!("tests/fixtures/keys/{file}")).expect("run from the crate root");
    let enc = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    Key { kid, alg, enc }
}

fn token(k: &Key) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": format!("{:?}", k.alg), "typ": "at+jwt", "kid": k.kid}).to_string();
    let claims = json!({"iss": ISSUER, "aud": "https://api.bench", "sub": "u", "exp": now + 3600, "iat": now, "scope": "read write"}).to_string();
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k.enc, k.alg).unwrap();
    format!("{input}.{sig}")
}

fn authenticator(rt: &tokio::runtime::Runtime, keys: &[&Key], cache: u64) -> Authenticator {
    let jwks = json!({"keys": keys.iter().map(|k| {
        let mut j = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&k.enc, k.alg).unwrap()).unwrap();
        j["kid"] = json!(k.kid);
        j
    }).collect::<Vec<_>>()});
    let path =
        std::env::temp_dir().join(format!("bearward-bench-jwks-{}.json", std::process::id()));
    std::fs::write(&path, jwks.to_string()).unwrap();
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
token_cache_entries = {cache}
[[issuers]]
issuer = "{ISSUER}"
jwks_file = "{}"
audiences = ["https://api.bench"]
algorithms = ["RS256", "ES256", "EdDSA"]
[upstreams.a]
url = "http://127.0.0.1:1"
[[routes]]
prefix = "/"
upstream = "a"
"#,
        path.display()
    );
    let config = Config::from_toml_str(&cfg, "bench.toml").unwrap();
    rt.block_on(async {
        let auth = Authenticator::without_refresh(&config);
        auth.issuers()[0].refresh().await.unwrap();
        auth
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rsa = key("rsa1.pem", "rsa", Algorithm::RS256);
    let ec = key("p256.pem", "ec", Algorithm::ES256);
    let ed = key("ed25519.pem", "ed", Algorithm::EdDSA);
    let uncached = authenticator(&rt, &[&rsa, &ec, &ed], 0);
    for (name, k) in [("RS256", &rsa), ("ES256", &ec), ("EdDSA", &ed)] {
        let t = token(k);
        c.bench_function(&format!("validate {name} (cache miss)"), |b| {
            b.iter(|| {
                rt.block_on(uncached.verify(&t, &mut Trace::default()))
                    .unwrap()
            });
        });
    }
    let cached = authenticator(&rt, &[&rsa], 10_000);
    let t = token(&rsa);
    c.bench_function("validate RS256 (cache hit)", |b| {
        b.iter(|| {
            rt.block_on(cached.verify(&t, &mut Trace::default()))
                .unwrap()
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
