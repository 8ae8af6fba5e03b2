//! RFC 8707 on routes: one issuer mints tokens for two resources, and a token minted for one
//! is refused on the other's routes (the confused deputy the MCP authorization rules forbid):
//! by a route's `audiences`, or its `resource` with `require_resource_audience`.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.test"
jwks_file = "tests/fixtures/jwks-rsa1.json"
audiences = ["https://a.test", "https://b.test/mcp"]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/a"
audiences = ["https://a.test"]
upstream = "app"

[[routes]]
prefix = "/mcp"
resource = "https://b.test/mcp"
require_resource_audience = true
upstream = "app"

[[routes]]
prefix = "/either"
upstream = "app"
"#,
        up.url()
    )
}

#[tokio::test]
async fn a_token_for_one_resource_is_refused_on_anothers_routes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up)).await;
    let c = client();
    let token = |aud: serde_json::Value| {
        Minter {
            issuer: "https://idp.test".into(),
            audience: "unused".into(),
        }
        .token_claims(&Key::rsa1(), |cl| {
            cl.insert("aud".into(), aud);
        })
    };
    let call = |path: &'static str, t: String| {
        let c = c.clone();
        let url = gw.url(path);
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };
    let for_a = token(json!("https://a.test"));
    let for_b = token(json!("https://b.test/mcp"));
    let for_both = token(json!(["https://a.test", "https://b.test/mcp"]));

    assert_eq!(call("/a/x", for_a.clone()).await.status, StatusCode::OK);
    assert_eq!(call("/mcp", for_b.clone()).await.status, StatusCode::OK);
    assert_eq!(call("/a/x", for_both.clone()).await.status, StatusCode::OK);
    assert_eq!(call("/mcp", for_both).await.status, StatusCode::OK);
    // Both pass the issuer's audiences; a route without its own takes either.
    assert_eq!(call("/either", for_a.clone()).await.status, StatusCode::OK);
    assert_eq!(call("/either", for_b.clone()).await.status, StatusCode::OK);
    let seen = up.count();

    for (path, t) in [("/a/x", for_b), ("/mcp", for_a)] {
        let answer = call(path, t).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    assert_eq!(up.count(), seen, "nothing refused reached the upstream");
    let m = metrics_after_close(&gw).await;
    assert!(m.contains("reason=\"bad_audience\""), "{m}");
}

#[test]
fn route_audiences_are_checked_when_the_config_loads() {
    let up = "http://127.0.0.1:9";
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"https://a.test\"]\n\n[upstreams.app]\nurl = \"{up}\"\n\n[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n"
    );
    let refused = |extra: &str| {
        bearward::config::Config::from_toml_str(&format!("{base}{extra}\n"), "t.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        refused("require_resource_audience = true").contains("routes[0].require_resource_audience")
    );
    assert!(refused("audiences = []").contains("routes[0].audiences"));
    assert!(refused("auth = \"none\"\naudiences = [\"https://a.test\"]")
        .contains("routes[0].audiences"));
    assert_eq!(refused("audiences = [\"https://a.test\"]"), "");
}
