//! A DPoP client key (RFC 9449) for tests: its RFC 7638 thumbprint, computed here from the JWK's
//! members (not by bearward's code), and proofs signed with it.

use super::idp::{now, sign_raw, Key, B64};
use base64::Engine as _;
use serde_json::{json, Value};

pub(crate) fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

pub(crate) struct DpopKey {
    pub key: Key,
    /// The key's thumbprint: what a token bound to it carries as `cnf.jkt`.
    pub jkt: String,
}

impl DpopKey {
    pub(crate) fn new(key: Key) -> DpopKey {
        let j = &key.jwk;
        let s = |n: &str| j[n].as_str().unwrap().to_owned();
        let canonical = match s("kty").as_str() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                s("crv"),
                s("x"),
                s("y")
            ),
            "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
            other => panic!("kty {other}"),
        };
        let jkt = B64.encode(sha256(canonical.as_bytes()));
        DpopKey { key, jkt }
    }

    /// The proof's JOSE header: `typ`, `alg`, and the public JWK.
    pub(crate) fn header(&self) -> Value {
        let mut jwk = self.key.jwk.clone();
        jwk.as_object_mut().unwrap().remove("kid");
        json!({"typ": "dpop+jwt", "alg": format!("{:?}", self.key.alg), "jwk": jwk})
    }

    /// Fresh claims: a random `jti`, `iat` now, and `ath` when a token is given.
    pub(crate) fn claims(method: &str, htu: &str, token: Option<&str>) -> Value {
        let mut b = [0u8; 12];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        let mut c = json!({"jti": B64.encode(b), "htm": method, "htu": htu, "iat": now()});
        if let Some(t) = token {
            c["ath"] = json!(B64.encode(sha256(t.as_bytes())));
        }
        c
    }

    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_raw(
            &header.to_string(),
            &claims.to_string(),
            &self.key.enc,
            self.key.alg,
        )
    }

    /// A fresh proof for `method` on `htu`, bound to `token` (`ath`) when given.
    pub(crate) fn proof(&self, method: &str, htu: &str, token: Option<&str>) -> String {
        self.sign(&self.header(), &DpopKey::claims(method, htu, token))
    }
}
