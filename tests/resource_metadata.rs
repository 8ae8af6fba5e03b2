//! RFC 9728 protected resource metadata, served by bearward, and the Bearer challenges that
//! point to it.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;

/// RFC 9728: `[server] resource` for every route, one route with its own, and a catch-all
/// route that would forward the well-known paths if bearward did not answer them itself.
async fn resource_world() -> (Idp, Upstream, Gateway) {
    let idp = Idp::start(&[&Key::rsa1()]).await;
    let up = Upstream::start().await;
    let mut cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "")
        .replace(
            "admin_listen = \"127.0.0.1:0\"\n",
            "admin_listen = \"127.0.0.1:0\"\nresource = \"https://api.test/api\"\n",
        )
        .replace(
            "prefix = \"/api/admin\"\n",
            "prefix = \"/api/admin\"\nresource = \"https://api.test/api/admin\"\n",
        );
    // An MCP route: its rules' scopes are listed; offline_access (a refresh-token request
    // to the authorization server, no resource's to require) never is.
    cfg.push_str(
        "\n[[routes]]\nprefix = \"/mcp\"\nupstream = \"app\"\nresource = \"https://api.test/mcp\"\n\
         scopes = [\"mcp\", \"offline_access\"]\nmcp = { tools = { delete_repo = [\"repo:admin\"] } }\n",
    );
    cfg.push_str("\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n");
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    (idp, up, gw)
}

#[tokio::test]
async fn protected_resource_metadata_is_served_by_bearward_for_each_resource() {
    let (idp, up, gw) = resource_world().await;
    let c = client();
    let api = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
    )
    .await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);
    assert_eq!(api.headers["content-type"], "application/json");
    assert_eq!(api.headers["access-control-allow-origin"], "*");
    let doc: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://api.test/api",
            "authorization_servers": [idp.issuer()],
            // The routes that inherit the server's resource: read, any, both, query.
            "scopes_supported": ["read", "write"],
            "bearer_methods_supported": ["header", "query"],
            "dpop_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "RS256", "PS256"],
        })
    );
    let admin = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/api/admin"),
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&admin.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": "https://api.test/api/admin",
            "authorization_servers": [idp.issuer()],
            "scopes_supported": ["admin"],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "RS256", "PS256"],
        })
    );
    let mcp = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/mcp"),
        &[],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&mcp.body).unwrap();
    assert_eq!(
        doc["scopes_supported"],
        json!(["mcp", "repo:admin"]),
        "{doc}"
    );
    // Spelled another way, the path still canonicalizes to the document's.
    let dotted = get(
        &c,
        &gw.url("/.well-known/./oauth-protected-resource/api/admin"),
        &[],
    )
    .await;
    assert_eq!(dotted.body, admin.body);

    let head = send(
        &c,
        "HEAD",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
        "",
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let preflight = send(
        &c,
        "OPTIONS",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "mcp-protocol-version"),
        ],
        "",
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers["access-control-allow-headers"],
        "mcp-protocol-version"
    );
    let post = send(
        &c,
        "POST",
        &gw.url("/.well-known/oauth-protected-resource/api"),
        &[],
        "x",
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD, OPTIONS");
    assert_eq!(
        up.count(),
        0,
        "the upstream was asked for bearward's metadata"
    );

    // A well-known path no resource has is the routes' business: the catch-all forwards it.
    let other = get(&c, &gw.url("/.well-known/oauth-protected-resource"), &[]).await;
    assert_eq!(other.body, "upstream ok");
    assert_eq!(up.count(), 1);

    let m = metrics_after_close(&gw).await;
    assert!(
        m.contains(r#"route="-",status="200",decision="allow",reason="resource_metadata"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"status="405",decision="deny",reason="method_not_allowed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn bearer_challenges_name_the_route_resource_metadata_and_its_scopes() {
    let (idp, up, gw) = resource_world().await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let api = "https://api.test/.well-known/oauth-protected-resource/api";
    let admin = "https://api.test/.well-known/oauth-protected-resource/api/admin";

    let none = get(&c, &gw.url("/api/read/x"), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.headers["www-authenticate"],
        format!("Bearer realm=\"bearward\", resource_metadata=\"{api}\", scope=\"read\"").as_str()
    );
    let any = get(&c, &gw.url("/api/any/x"), &[]).await;
    assert_eq!(
        any.headers["www-authenticate"],
        format!("Bearer realm=\"bearward\", resource_metadata=\"{api}\", scope=\"read write\"")
            .as_str()
    );
    let bad = get(
        &c,
        &gw.url("/api/admin/x"),
        &[("authorization", "Bearer a.b.c")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.headers["www-authenticate"],
        format!(
            "Bearer realm=\"bearward\", resource_metadata=\"{admin}\", scope=\"admin\", \
             error=\"invalid_token\", \
             error_description=\"malformed token\""
        )
        .as_str()
    );
    let read = mint.token(&Key::rsa1(), "read");
    let scope = get(
        &c,
        &gw.url("/api/admin/x"),
        &[("authorization", &format!("Bearer {read}"))],
    )
    .await;
    assert_eq!(scope.status, StatusCode::FORBIDDEN);
    assert_eq!(
        scope.headers["www-authenticate"],
        format!(
            "Bearer realm=\"bearward\", resource_metadata=\"{admin}\", \
             error=\"insufficient_scope\", error_description=\"insufficient scope\", scope=\"admin\""
        )
        .as_str()
    );
    assert_eq!(up.count(), 0);
    let ok = get(
        &c,
        &gw.url("/api/read/x"),
        &[("authorization", &format!("Bearer {read}"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// Two hosts' MCP servers on one path, each a resource of its own (routes with `hosts`): each
/// host's request for the metadata gets its own document, and its 401 names it; a host neither
/// names gets neither. A path only one resource has is served on any host, as before.
#[tokio::test]
async fn resources_on_two_hosts_share_a_path_and_each_host_gets_its_own() {
    let idp = Idp::start(&[&Key::rsa1()]).await;
    let up = Upstream::start().await;
    let mut cfg = auth_config(&up.url(), &idp.issuer(), "discovery = true", "");
    for (host, scope) in [("a.test", "a:mcp"), ("b.test", "b:mcp")] {
        cfg.push_str(&format!(
            "\n[[routes]]\nprefix = \"/mcp\"\nhosts = [\"{host}\"]\nupstream = \"app\"\n\
             resource = \"https://{host}/mcp\"\nscopes = [\"{scope}\"]\n"
        ));
    }
    let gw = Gateway::start(&cfg).await;
    wait_ready(&gw).await;
    let c = client();
    for (host, scope) in [("a.test", "a:mcp"), ("B.Test:443", "b:mcp")] {
        let meta = get(
            &c,
            &gw.url("/.well-known/oauth-protected-resource/mcp"),
            &[("host", host)],
        )
        .await;
        assert_eq!(meta.status, StatusCode::OK, "{host}: {}", meta.body);
        let doc: serde_json::Value = serde_json::from_str(&meta.body).unwrap();
        let name = host.split(':').next().unwrap().to_ascii_lowercase();
        assert_eq!(doc["resource"], format!("https://{name}/mcp"), "{host}");
        assert_eq!(doc["scopes_supported"], json!([scope]), "{host}");
        let refused = get(&c, &gw.url("/mcp"), &[("host", host)]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(
            refused.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains(&format!(
                    "resource_metadata=\"https://{name}/.well-known/oauth-protected-resource/mcp\""
                )),
            "{host}: {:?}",
            refused.headers
        );
    }
    let neither = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/mcp"),
        &[("host", "c.test")],
    )
    .await;
    assert_eq!(neither.status, StatusCode::NOT_FOUND);
    assert_eq!(up.count(), 0);
}
