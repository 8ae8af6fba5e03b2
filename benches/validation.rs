//! Token validation cost: full validation (signature + claims) per algorithm, a hit in the
//! verified-token cache, and a DPoP proof check against the bare ES256 verification inside it
//! (what a proof costs beyond its signature). Run: `cargo bench --bench validation`.

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

/// One DPoP proof (ES256, with its public JWK) for GET https://api.bench/x, bound to `token`.
fn dpop_proof(k: &Key, token: &str) -> (String, String, Vec<u8>) {
    let jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&k.enc, k.alg).unwrap())
            .unwrap();
    let (x, y) = (jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap());
    let public = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
    let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let jkt = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        thumb.as_bytes(),
    ));
    let ath = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public}).to_string();
    let claims = json!({"jti": "bench-1", "htm": "GET", "htu": "https://api.bench/x", "iat": now, "ath": ath}).to_string();
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k.enc, k.alg).unwrap();
    let mut point = vec![4u8];
    point.extend(B64.decode(x).unwrap());
    point.extend(B64.decode(y).unwrap());
    (format!("{input}.{sig}"), jkt, point)
}

fn bench_dpop(c: &mut Criterion) {
    let ec = key("p256.pem", "ec", Algorithm::ES256);
    let token = "opaque-or-jwt-access-token-of-some-length-0123456789abcdef";
    let (proof, jkt, point) = dpop_proof(&ec, token);
    let verifier = bearward::auth::dpop::Verifier::new(bearward::config::DpopConfig::default());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let req = bearward::auth::dpop::Request {
        method: "GET",
        htu: "https://api.bench/x",
        access_token: token,
        jkt: &jkt,
    };
    c.bench_function(
        "dpop: check one ES256 proof (all of RFC 9449 4.3 but the replay cache)",
        |b| {
            b.iter(|| verifier.check(&proof, &req, now).unwrap());
        },
    );
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    let key = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &point,
    )
    .unwrap();
    c.bench_function(
        "dpop: the ES256 verification alone (aws-lc, key parsed)",
        |b| {
            b.iter(|| key.verify_sig(input.as_bytes(), &sig).unwrap());
        },
    );
    let replay =
        bearward::auth::dpop::ReplayCache::new(std::time::Duration::from_secs(70), 10_000_000);
    let mut n = 0u64;
    c.bench_function("dpop: record one proof id in the replay cache", |b| {
        b.iter(|| {
            n += 1;
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.to_le_bytes());
            replay.insert(id)
        });
    });
}

criterion_group!(benches, bench, bench_dpop);
criterion_main!(benches);
