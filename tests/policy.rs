//! `allow_if` (issue 39 part 1): CEL conditions per route over the token and the request, with
//! `{name}` path parameters, on the proxy and decision listeners, in audit mode and in
//! `explain`; bad expressions refused when the config loads.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;

fn config(up: &Upstream, dport: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[decision]
listen = "127.0.0.1:{dport}"
trusted_proxies = ["127.0.0.1/32"]
ingress = "nginx"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["api"]

[upstreams.app]
url = "{}"

[[routes]]
name = "tenants"
prefix = "/tenants/{{tenant}}/"
scopes = ["read"]
allow_if = "claims.tenant == request.params.tenant && 'admin' in claims.roles"
upstream = "app"

[[routes]]
name = "by-header"
prefix = "/h"
allow_if = ["request.headers['x-tenant'] == claims.tenant", "request.method in ['GET', 'HEAD']"]
upstream = "app"

[[routes]]
name = "audited"
prefix = "/audit/{{org}}"
mode = "audit"
allow_if = "request.params.org == claims.tenant"
upstream = "app"

[[routes]]
name = "open"
prefix = "/open"
auth = "none"
allow_if = "!('x-debug' in request.headers) && connection.client_ip == '127.0.0.1'"
upstream = "app"
"#,
        up.url()
    )
}

fn token(claims: serde_json::Value) -> String {
    Minter {
        issuer: "https://idp.test".into(),
        audience: "api".into(),
    }
    .token_claims(&Key::rsa1(), |cl| {
        cl.insert("scope".into(), json!("read"));
        if let serde_json::Value::Object(m) = &claims {
            for (k, v) in m {
                cl.insert(k.clone(), v.clone());
            }
        }
    })
}

#[tokio::test]
async fn conditions_compare_the_token_with_the_request() {
    let up = Upstream::start().await;
    let (dport, gw) = Gateway::start_on_free_port(|p| config(&up, p)).await;
    let c = client();
    let acme_admin = token(json!({"tenant": "acme", "roles": ["admin"]}));
    let acme_user = token(json!({"tenant": "acme", "roles": ["user"]}));
    let no_tenant = token(json!({"roles": ["admin"]}));
    let numeric = token(json!({"tenant": 7, "roles": ["admin"]}));
    let call = |path: &str, t: &str, extra: &[(&str, &str)]| {
        let c = c.clone();
        let url = gw.url(path);
        let mut headers = vec![("authorization".to_owned(), format!("Bearer {t}"))];
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            get(&c, &url, &h).await
        }
    };

    let ok = call("/tenants/acme/items/1", &acme_admin, &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/tenants/acme/items/1");
    // Percent-encoded, the parameter is compared decoded.
    assert_eq!(
        call("/tenants/ac%6De/x", &acme_admin, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call("/h/x", &acme_user, &[("x-tenant", "acme")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(call("/open/x", "", &[]).await.status, StatusCode::OK);
    let seen = up.count();

    // False: 403 policy_denied, without a challenge and without the expression.
    for (path, t, extra) in [
        ("/tenants/other/x", &acme_admin, &[][..]),
        ("/tenants/acme/x", &acme_user, &[][..]),
        ("/h/x", &acme_user, &[("x-tenant", "other")][..]),
        ("/open/x", &acme_user, &[("x-debug", "1")][..]),
    ] {
        let a = call(path, t, extra).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            a.headers.get("www-authenticate").is_none(),
            "{path}: {:?}",
            a.headers
        );
        assert!(a.body.contains("policy_denied"), "{path}: {}", a.body);
        assert!(!a.body.contains("claims"), "{}", a.body);
    }
    // An error at run time (a missing claim, a claim of another type) refuses too.
    for t in [&no_tenant, &numeric] {
        let a = call("/h/x", t, &[("x-tenant", "acme")]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(
            a.body.contains("policy_error") || a.body.contains("policy_denied"),
            "{}",
            a.body
        );
    }
    let a = call("/tenants/acme/x", &no_tenant, &[]).await;
    assert!(a.body.contains("policy_error"), "{}", a.body);
    // A scope short of the route's is still insufficient_scope, before any condition.
    let unscoped = Minter {
        issuer: "https://idp.test".into(),
        audience: "api".into(),
    }
    .token_claims(&Key::rsa1(), |cl| {
        cl.insert("scope".into(), json!("write"));
        cl.insert("tenant".into(), json!("acme"));
        cl.insert("roles".into(), json!(["admin"]));
    });
    let a = call("/tenants/acme/x", &unscoped, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(up.count(), seen, "nothing refused reached the upstream");

    // Audit mode: forwarded, with the refusal as a note.
    let a = call("/audit/other", &acme_admin, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let note = up.last().headers["x-bearward-audit"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(note.contains("policy_denied"), "{note}");

    // The decision listener decides the same way.
    let decide = |uri: &str, t: &str| {
        let c = c.clone();
        let url = format!("http://127.0.0.1:{dport}/auth");
        let (uri, auth) = (uri.to_owned(), format!("Bearer {t}"));
        async move {
            get(
                &c,
                &url,
                &[
                    ("x-original-uri", &uri),
                    ("x-original-method", "GET"),
                    ("authorization", &auth),
                ],
            )
            .await
            .status
        }
    };
    assert_eq!(decide("/tenants/acme/x", &acme_admin).await, StatusCode::OK);
    assert_eq!(
        decide("/tenants/other/x", &acme_admin).await,
        StatusCode::FORBIDDEN
    );

    let m = metrics_after_close(&gw).await;
    assert!(m.contains("reason=\"policy_denied\""), "{m}");
    assert!(m.contains("reason=\"policy_error\""), "{m}");
}

#[test]
fn bad_expressions_are_config_errors_with_their_column() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"api\"]\n\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nprefix = \"/t/{tenant}/\"\nupstream = \"app\"\n";
    let refused = |extra: &str| {
        bearward::config::Config::from_toml_str(&format!("{base}{extra}\n"), "bearward.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = refused("allow_if = \"claims.tenant == request.params.tenant &&\"");
    assert!(e.contains("bearward.toml:15"), "{e}");
    assert!(e.contains("routes[0].allow_if"), "{e}");
    assert!(
        e.contains("column 42 of the expression: Syntax error"),
        "{e}"
    );
    let e = refused("allow_if = [\"true\", \"claims.t == request.params.org\"]");
    assert!(e.contains("routes[0].allow_if[1]"), "{e}");
    assert!(
        e.contains("column 27 of the expression: no path parameter `org` (this route's: tenant)"),
        "{e}"
    );
    let e = refused("allow_if = \"request.method + 1 == 2\"");
    assert!(e.contains("`+` between a string and an int"), "{e}");
    let e = refused("allow_if = \"tenant == 'a'\"");
    assert!(e.contains("unknown variable `tenant`"), "{e}");
    let e = refused("allow_if = \"request.path\"");
    assert!(
        e.contains("gives a string, where a condition must give a bool"),
        "{e}"
    );
    assert_eq!(
        refused("allow_if = \"request.params.tenant == claims.tenant\""),
        ""
    );
    let bad_template = bearward::config::Config::from_toml_str(
        &base.replace("/t/{tenant}/", "/t/{te-nant}/"),
        "bearward.toml",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(bad_template.contains("routes[0].prefix"), "{bad_template}");
}

#[tokio::test]
async fn explain_prints_each_condition_and_its_parts() {
    let up = Upstream::start().await;
    let config =
        bearward::config::Config::from_toml_str(&config(&up, free_port()), "bearward.toml")
            .unwrap();
    let t = token(json!({"tenant": "acme", "roles": ["user"]}));
    let get = http::Method::GET;
    let e = bearward::explain::explain_request(&config, &get, "/tenants/acme/x", Some(&t)).await;
    assert!(
        e.text.contains(
            "allow_if[0]  claims.tenant == request.params.tenant && 'admin' in claims.roles"
        ),
        "{}",
        e.text
    );
    assert!(
        e.text
            .contains("pass  claims.tenant == request.params.tenant"),
        "{}",
        e.text
    );
    assert!(
        e.text.contains("FAIL  'admin' in claims.roles"),
        "{}",
        e.text
    );
    assert!(e.text.contains("policy_denied"), "{}", e.text);
}
