//! Route policies beyond scopes, end to end with real tokens: claim conditions on nested paths
//! (Keycloak's roles), Entra's roles and groups, tenant and client allow-lists, dotted keys,
//! type mismatches, and claim headers from nested paths. Every refusal leaves the upstream
//! untouched and says nothing of the values required.

mod common;

use common::idp::*;
use common::*;
use http::StatusCode;
use serde_json::json;

fn config(up: &Upstream, idp: &Idp) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{}"
discovery = true
audiences = ["https://api.test"]
algorithms = ["RS256"]

[upstreams.app]
url = "{}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", "realm_access.roles" = "X-Auth-Roles", "org.id" = "X-Auth-Org" }}

[[routes]]
prefix = "/orders/admin"
claims = {{ "realm_access.roles" = ["orders-admin"] }}
upstream = "app"

[[routes]]
prefix = "/billing"
claims = {{ "resource_access.billing\\.api.roles" = "invoice-reader", tid = "4f6c" }}
upstream = "app"

[[routes]]
prefix = "/ops"
claims_any = {{ groups = ["ops", "sre"], roles = "Ops.Admin" }}
upstream = "app"

[[routes]]
prefix = "/internal"
client_ids = ["billing-service"]
upstream = "app"

[[routes]]
prefix = "/namespaced"
claims = {{ "https://api.test/roles" = "editor" }}
upstream = "app"
"#,
        idp.issuer(),
        up.url()
    )
}

struct Setup {
    up: Upstream,
    gw: Gateway,
    c: HttpClient,
    mint: Minter,
    key: Key,
    _idp: Idp,
}

async fn start() -> Setup {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &idp)).await;
    wait_ready(&gw).await;
    Setup {
        mint: idp.minter("https://api.test"),
        up,
        gw,
        c: client(),
        key,
        _idp: idp,
    }
}

impl Setup {
    fn token(&self, extra: serde_json::Value) -> String {
        self.mint.token_claims(&self.key, |c| {
            for (k, v) in extra.as_object().unwrap() {
                c.insert(k.clone(), v.clone());
            }
        })
    }

    async fn call(&self, path: &str, token: &str) -> Answer {
        get(
            &self.c,
            &self.gw.url(path),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    async fn allowed(&self, path: &str, claims: serde_json::Value, why: &str) {
        let a = self.call(path, &self.token(claims)).await;
        assert_eq!(a.status, StatusCode::OK, "{why}: {}", a.body);
    }

    async fn refused(&self, path: &str, claims: serde_json::Value, why: &str) {
        let before = self.up.count();
        let a = self.call(path, &self.token(claims)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{why}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"insufficient_scope\""), "{why}: {www}");
        for secret in [
            "orders-admin",
            "invoice-reader",
            "4f6c",
            "billing-service",
            "Ops.Admin",
            "editor",
        ] {
            assert!(
                !www.contains(secret) && !a.body.contains(secret),
                "{why}: the required value leaks: {www}"
            );
        }
        assert_eq!(self.up.count(), before, "{why}: the upstream got it");
    }
}

#[tokio::test]
async fn nested_roles_tenants_groups_clients_and_dotted_keys() {
    let s = start().await;
    // Keycloak: realm roles nested in realm_access.
    s.allowed(
        "/orders/admin/x",
        json!({"realm_access": {"roles": ["user", "orders-admin"]}}),
        "realm role",
    )
    .await;
    let seen = s.up.last();
    assert_eq!(
        seen.headers["x-auth-roles"], "user,orders-admin",
        "an array header, comma-joined"
    );
    s.refused(
        "/orders/admin/x",
        json!({"realm_access": {"roles": ["user"]}}),
        "role missing",
    )
    .await;
    s.refused(
        "/orders/admin/x",
        json!({"realm_access": ["orders-admin"]}),
        "not an object",
    )
    .await;
    s.refused(
        "/orders/admin/x",
        json!({"roles": ["orders-admin"]}),
        "top-level roles are not realm_access.roles",
    )
    .await;
    s.refused("/orders/admin/x", json!({}), "no claim").await;

    // Keycloak client roles under a client id with a dot in it (escaped in the config), and a
    // tenant: both must hold.
    let billing =
        json!({"resource_access": {"billing.api": {"roles": ["invoice-reader"]}}, "tid": "4f6c"});
    s.allowed("/billing/x", billing.clone(), "client role and tenant")
        .await;
    s.refused(
        "/billing/x",
        json!({"resource_access": {"billing.api": {"roles": ["invoice-reader"]}}, "tid": "other"}),
        "another tenant",
    )
    .await;
    s.refused("/billing/x", json!({"resource_access": {"billing": {"api": {"roles": ["invoice-reader"]}}}, "tid": "4f6c"}), "the dot is not a nesting").await;
    s.refused(
        "/billing/x",
        json!({"resource_access": {"billing.api": {"roles": ["invoice-reader"]}}, "tid": 4}),
        "a number where a string is required",
    )
    .await;

    // Entra: roles or groups, one of them.
    s.allowed("/ops/x", json!({"groups": ["dev", "sre"]}), "one group")
        .await;
    s.allowed("/ops/x", json!({"roles": ["Ops.Admin"]}), "the app role")
        .await;
    s.refused(
        "/ops/x",
        json!({"groups": ["dev"], "roles": ["Reader"]}),
        "neither",
    )
    .await;
    s.refused(
        "/ops/x",
        json!({"groups": "ops sre"}),
        "a space-separated string is one value",
    )
    .await;

    // Client allow-list: azp first, else client_id.
    s.allowed("/internal/x", json!({"azp": "billing-service"}), "azp")
        .await;
    s.allowed(
        "/internal/x",
        json!({"client_id": "billing-service"}),
        "client_id",
    )
    .await;
    s.refused(
        "/internal/x",
        json!({"azp": "web", "client_id": "billing-service"}),
        "azp wins",
    )
    .await;
    s.refused("/internal/x", json!({"client_id": "web"}), "another client")
        .await;

    // An Auth0-style namespaced claim is taken by its exact name.
    s.allowed(
        "/namespaced/x",
        json!({"https://api.test/roles": ["editor"]}),
        "namespaced",
    )
    .await;

    // A claim header from a nested path.
    s.allowed(
        "/ops/x",
        json!({"groups": ["ops"], "org": {"id": "acme"}}),
        "nested header",
    )
    .await;
    assert_eq!(s.up.last().headers["x-auth-org"], "acme");

    let m = get(
        &s.c,
        &format!("http://{}/metrics", s.gw.admin.unwrap()),
        &[],
    )
    .await
    .body;
    assert!(m.contains("reason=\"claim_mismatch\""), "{m}");
}

#[test]
fn check_validates_claim_paths_and_types() {
    let base = |route: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"https://i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n{route}\n")
    };
    let err = |route: &str| {
        bearward::config::Config::from_toml_str(&base(route), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = err("claims = { tid = 4 }");
    assert!(
        e.contains("routes[0].claims") && e.contains("string"),
        "{e}"
    );
    let e = err("claims = { \"a..b\" = \"x\" }");
    assert!(e.contains("empty segments"), "{e}");
    let e = err("claims_any = { groups = [] }");
    assert!(e.contains("routes[0].claims_any"), "{e}");
    let e = err("auth = \"none\"\nclaims = { tid = \"x\" }");
    assert!(e.contains("only applies to auth = \"bearer\""), "{e}");
    bearward::config::Config::from_toml_str(
        &base("claims = { \"realm_access.roles\" = [\"a\", \"b\"] }\nclient_ids = [\"c\"]"),
        "t.toml",
    )
    .expect("valid");
}
