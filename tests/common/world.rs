//! A running bearward in front of a recording upstream, with a real test IdP and a token
//! minter: the setting of the token and key tests.

use super::idp::*;
use super::*;

pub(crate) struct World {
    pub(crate) idp: Idp,
    pub(crate) up: Upstream,
    pub(crate) gw: Gateway,
    pub(crate) c: HttpClient,
    pub(crate) mint: Minter,
}

impl World {
    pub(crate) async fn start(keys: &[&Key], issuer_extra: &str) -> World {
        World::start_with(keys, "discovery = true", issuer_extra).await
    }

    pub(crate) async fn start_with(keys: &[&Key], source: &str, issuer_extra: &str) -> World {
        let idp = Idp::start(keys).await;
        let up = Upstream::start().await;
        let source = source.replace("JWKS_URI", &idp.jwks_uri());
        let gw = Gateway::start(&auth_config(
            &up.url(),
            &idp.issuer(),
            &source,
            issuer_extra,
        ))
        .await;
        wait_ready(&gw).await;
        let mint = idp.minter("https://api.test");
        World {
            idp,
            up,
            gw,
            c: client(),
            mint,
        }
    }

    pub(crate) async fn call(&self, path: &str, token: &str) -> Answer {
        get(
            &self.c,
            &self.gw.url(path),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// Asserts a 401 invalid_token and that the upstream saw nothing new.
    pub(crate) async fn refused(&self, path: &str, token: &str, why: &str) {
        let before = self.up.count();
        let a = self.call(path, token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(
            www.starts_with("Bearer realm=\"bearward\", error=\"invalid_token\""),
            "{why}: {www}"
        );
        assert!(!www.contains(token), "{why}: the token is echoed");
        assert_eq!(
            self.up.count(),
            before,
            "{why}: the upstream received a refused request"
        );
    }

    pub(crate) async fn accepted(&self, path: &str, token: &str, why: &str) {
        let before = self.up.count();
        let a = self.call(path, token).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{why}: {} {:?}",
            a.body,
            a.headers.get("www-authenticate")
        );
        assert_eq!(self.up.count(), before + 1, "{why}");
    }
}
