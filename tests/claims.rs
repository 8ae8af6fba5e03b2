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
        let required = [
            "orders-admin",
            "invoice-reader",
            "4f6c",
            "billing-service",
            "Ops.Admin",
            "editor",
        ];
        forbidden_saying_nothing(&a, why, &required);
        assert_eq!(self.up.count(), before, "{why}: the upstream got it");
    }
}

/// A 403 `insufficient_scope` whose challenge and body name none of `required`: what a route
/// asks of a token is not told to a client that lacks it.
fn forbidden_saying_nothing(a: &Answer, why: &str, required: &[&str]) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{why}: {}", a.body);
    let www = a.headers["www-authenticate"].to_str().unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{why}: {www}");
    for secret in required {
        assert!(
            !www.contains(secret) && !a.body.contains(secret),
            "{why}: the required value leaks: {www} {}",
            a.body
        );
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

/// A multi-tenant issuer (Entra's common endpoint): one entry, one key set, a `{tenantid}`
/// segment in `issuer`. A listed tenant's token passes when its `tid` names the tenant of its
/// `iss`; an unlisted tenant, a `tid` naming another tenant or none, and an `iss` of another
/// shape are foreign issuers (401), and the upstream sees none of them. A tenant with an entry
/// of its own is held to that entry's audience, not the template's.
#[tokio::test]
async fn a_tenant_template_takes_the_listed_tenants_whose_tid_matches() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let base = format!("http://{}", idp.addr);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[issuers]]
issuer = "{base}/{{tenantid}}/v2.0"
jwks_uri = "{jwks}"
tenants = ["4f6c0a2e-0000-4000-8000-000000000001", "contoso.example"]
audiences = ["api://orders"]
algorithms = ["RS256"]

[[issuers]]
issuer = "{base}/special/v2.0"
jwks_uri = "{jwks}"
audiences = ["api://special-only"]
algorithms = ["RS256"]

[upstreams.app]
url = "{up}"

[forward]
claim_headers = {{ iss = "X-Auth-Issuer", tid = "X-Auth-Tenant" }}

[[routes]]
prefix = "/"
upstream = "app"
"#,
        jwks = idp.jwks_uri(),
        up = up.url()
    ))
    .await;
    wait_ready(&gw).await;
    let c = client();
    let token = |iss: &str, tid: Option<&str>, aud: &str| {
        let mint = Minter {
            issuer: iss.to_owned(),
            audience: aud.to_owned(),
        };
        mint.token_claims(&key, |m| {
            m.remove("tid");
            if let Some(t) = tid {
                m.insert("tid".into(), json!(t));
            }
        })
    };
    let call = |t: String| {
        let (c, url) = (c.clone(), gw.url("/orders"));
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };

    let one = "4f6c0a2e-0000-4000-8000-000000000001";
    for tenant in [one, "contoso.example"] {
        let iss = format!("{base}/{tenant}/v2.0");
        let a = call(token(&iss, Some(tenant), "api://orders")).await;
        assert_eq!(a.status, StatusCode::OK, "{tenant}: {}", a.body);
        let seen = up.last();
        assert_eq!(seen.headers["x-auth-issuer"], iss.as_str());
        assert_eq!(seen.headers["x-auth-tenant"], tenant);
    }

    let before = up.count();
    for (iss, tid, why) in [
        (
            format!("{base}/9b1d0000-0000-4000-8000-00000000000f/v2.0"),
            Some("9b1d0000-0000-4000-8000-00000000000f"),
            "an unlisted tenant",
        ),
        (
            format!("{base}/{one}/v2.0"),
            Some("contoso.example"),
            "a tid naming another tenant",
        ),
        (
            format!("{base}/contoso.example/v2.0"),
            Some(one),
            "a tid naming another tenant, the other way",
        ),
        (format!("{base}/{one}/v2.0"), None, "no tid"),
        (
            format!("{base}/{one}/x/v2.0"),
            Some(one),
            "two segments where the tenant goes",
        ),
        (format!("{base}//v2.0"), Some(""), "an empty tenant"),
        (format!("{base}/{one}/v2.0/"), Some(one), "a longer iss"),
        (
            format!("{base}/{{tenantid}}/v2.0"),
            Some("{tenantid}"),
            "the template itself",
        ),
        (
            format!("{base}/special/v2.0"),
            Some("special"),
            "a tenant with its own entry, under the template's audience",
        ),
    ] {
        let a = call(token(&iss, tid, "api://orders")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
        let www = a.headers["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{why}: {www}");
    }
    assert_eq!(up.count(), before, "a refused token reached the upstream");
    let m = gw.metrics().await;
    let refused = |reason: &str| requests(&m, "/*", 401, "deny", reason);
    assert_eq!(refused("bad_issuer"), 8.0, "{m}");
    assert_eq!(refused("bad_audience"), 1.0, "{m}");

    // The tenant with an entry of its own: that entry's audience, whatever its tid says.
    let special = format!("{base}/special/v2.0");
    let a = call(token(&special, None, "api://special-only")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

/// `{tenantid}` must be one whole path segment, with keys that are not discovered and JWTs
/// only; `tenants` needs the template and holds tenant ids; a template with no list is warned
/// of, since any tenant of the IdP, an attacker's own, could then present tokens.
#[test]
fn check_holds_tenant_templates_to_one_segment_and_warns_of_any_tenant() {
    let base = |issuer: &str, extra: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"{issuer}\"\naudiences = [\"a\"]\n{extra}\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n")
    };
    let jwks = "jwks_file = \"tests/fixtures/jwks-rsa1.json\"";
    let err = |issuer: &str, extra: &str| {
        bearward::config::Config::from_toml_str(&base(issuer, extra), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    for issuer in [
        "https://{tenantid}.example.com/v2.0",
        "https://login.example.com/t-{tenantid}/v2.0",
        "https://login.example.com/{tenantid}x/v2.0",
        "{tenantid}/v2.0",
        "https://login.example.com/{tenantid}/{tenantid}",
    ] {
        let e = err(issuer, jwks);
        assert!(
            e.contains("issuers[0].issuer") && e.contains("{tenantid}"),
            "{issuer}: {e}"
        );
    }
    let t = "https://login.example.com/{tenantid}/v2.0";
    let e = err(t, "discovery = true");
    assert!(
        e.contains("issuers[0].discovery") && e.contains("jwks_uri"),
        "{e}"
    );
    let e = err(t, &format!("{jwks}\ntoken_format = \"auto\"\nintrospection_endpoint = \"https://login.example.com/i\"\nintrospection_client_id = \"c\"\nintrospection_client_secret_env = \"HOME\""));
    assert!(e.contains("JWTs only"), "{e}");
    let e = err(
        "https://login.example.com/one/v2.0",
        &format!("{jwks}\ntenants = [\"one\"]"),
    );
    assert!(
        e.contains("issuers[0].tenants") && e.contains("needs an issuer with a {tenantid}"),
        "{e}"
    );
    let e = err(t, &format!("{jwks}\ntenants = [\"ok\", \"a/b\"]"));
    assert!(e.contains("issuers[0].tenants[1]"), "{e}");
    let exchange = base(t, &format!("{jwks}\ntenants = [\"one\"]")).replace(
        "url = \"http://127.0.0.1:1\"",
        &format!("url = \"http://127.0.0.1:1\"\ntoken_exchange = {{ issuer = \"{t}\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\" }}"),
    );
    let e = bearward::config::Config::from_toml_str(&exchange, "t.toml")
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("upstreams.a.token_exchange.issuer") && e.contains("token_endpoint"),
        "{e}"
    );
    let e = err(t, &format!("{jwks}\ntenants = []"));
    assert!(
        e.contains("issuers[0].tenants") && e.contains("empty"),
        "{e}"
    );

    let warned = |extra: &str| {
        let c = bearward::config::Config::from_toml_str(
            &base(t, &format!("{jwks}\n{extra}")),
            "t.toml",
        )
        .expect("valid");
        c.warnings
            .iter()
            .map(ToString::to_string)
            .find(|w| w.contains("every tenant"))
    };
    let w = warned("").expect("warned");
    assert!(
        w.contains("issuers[0].issuer") && w.contains("tenants"),
        "{w}"
    );
    assert_eq!(warned("tenants = [\"one\"]"), None);
    for v1 in [
        "https://sts.windows.net/{tenantid}/",
        "https://login.example.com/{tenantid}",
    ] {
        bearward::config::Config::from_toml_str(&base(v1, jwks), "t.toml").expect(v1);
    }
}

/// RFC 9396 rich authorization requests: a route's `authorization_details` is met only by an
/// object of the token's array with its `type` and every listed action, location and the like
/// (arrays of strings, as the RFC types them); each entry of the route's by an object of its
/// own or a shared one. Every miss is a 403 that does not say what was required, the upstream
/// untouched; the RFC 9728 document names the types.
#[tokio::test]
async fn authorization_details_grant_what_the_route_requires() {
    let (key, idp, up, gw) = serve_routes(
        r#"[[routes]]
prefix = "/payments"
resource = "https://api.test/payments"
authorization_details = [{ type = "payment_initiation", actions = ["initiate"], locations = ["https://api.test/payments"] }]
upstream = "app"

[[routes]]
prefix = "/accounts"
authorization_details = [
  { type = "account_information", actions = ["read_balances", "read_transactions"] },
  { type = "customer_information", identifier = "cust-1" },
]
upstream = "app"
"#,
    )
    .await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let call = |path: &'static str, details: Option<serde_json::Value>| {
        let token = mint.token_claims(&key, |m| {
            if let Some(d) = details {
                m.insert("authorization_details".into(), d);
            }
        });
        let (c, url) = (c.clone(), gw.url(path));
        async move { get(&c, &url, &[("authorization", &format!("Bearer {token}"))]).await }
    };
    let pay = |actions: serde_json::Value, locations: serde_json::Value| {
        json!({"type": "payment_initiation", "actions": actions, "locations": locations,
               "instructedAmount": {"currency": "EUR", "amount": "123.50"}})
    };
    let here = json!(["https://api.test/payments"]);

    let granted = [
        (
            "/payments",
            json!([pay(json!(["initiate", "status"]), here.clone())]),
            "one object, more actions than asked",
        ),
        (
            "/payments",
            json!([{"type": "account_information", "actions": ["initiate"]}, pay(json!(["initiate"]), json!(["https://other.test", "https://api.test/payments"]))]),
            "the second object, among other locations",
        ),
        (
            "/accounts",
            json!([{"type": "account_information", "actions": ["read_transactions", "read_balances"]}, {"type": "customer_information", "identifier": "cust-1"}]),
            "each entry by its own object",
        ),
    ];
    for (path, details, why) in granted {
        let a = call(path, Some(details)).await;
        assert_eq!(a.status, StatusCode::OK, "{why}: {}", a.body);
    }

    let before = up.count();
    let refused = [
        ("/payments", None, "no authorization_details"),
        (
            "/payments",
            Some(json!(pay(json!(["initiate"]), here.clone()))),
            "an object, not an array of them",
        ),
        (
            "/payments",
            Some(json!([pay(json!(["status"]), here.clone())])),
            "without the action",
        ),
        (
            "/payments",
            Some(json!([pay(json!("initiate"), here.clone())])),
            "actions a string, not an array",
        ),
        (
            "/payments",
            Some(json!([{"type": "payment_initiation", "actions": ["initiate"]}])),
            "no locations",
        ),
        (
            "/payments",
            Some(json!([pay(
                json!(["initiate"]),
                json!(["https://other.test"])
            )])),
            "for another resource",
        ),
        (
            "/payments",
            Some(
                json!([{"type": "payment_initiation"}, {"actions": ["initiate"], "locations": ["https://api.test/payments"]}]),
            ),
            "type and actions in two objects",
        ),
        (
            "/accounts",
            Some(
                json!([{"type": "account_information", "actions": ["read_balances", "read_transactions"]}]),
            ),
            "one entry of two",
        ),
        (
            "/accounts",
            Some(
                json!([{"type": "account_information", "actions": ["read_balances"]}, {"type": "customer_information", "identifier": "cust-1"}]),
            ),
            "one action of two",
        ),
        (
            "/accounts",
            Some(
                json!([{"type": "account_information", "actions": ["read_balances", "read_transactions"]}, {"type": "customer_information", "identifier": "cust-2"}]),
            ),
            "another identifier",
        ),
    ];
    for (path, details, why) in &refused {
        let a = call(path, details.clone()).await;
        let required = [
            "payment_initiation",
            "initiate",
            "account_information",
            "cust-1",
        ];
        forbidden_saying_nothing(&a, why, &required);
    }
    assert_eq!(up.count(), before, "a refused request reached the upstream");
    let m = gw.metrics().await;
    let n: f64 = ["/payments*", "/accounts*"]
        .iter()
        .map(|r| requests(&m, r, 403, "deny", "authorization_details_mismatch"))
        .sum();
    assert_eq!(n, refused.len() as f64, "{m}");

    let doc = get(
        &c,
        &gw.url("/.well-known/oauth-protected-resource/payments"),
        &[],
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(
        doc["authorization_details_types_supported"],
        json!(["payment_initiation"]),
        "{doc}"
    );
}

/// `authorization_details` is what a token must hold, so only a route where every request
/// shows one takes it; each entry names a type, and a list it gives holds something.
#[test]
fn check_holds_authorization_details_to_bearer_routes_and_whole_entries() {
    let base = |route: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"https://i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n{route}\n")
    };
    let err = |route: &str| {
        bearward::config::Config::from_toml_str(&base(route), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    for (route, needle) in [
        (
            "auth = \"optional\"\nauthorization_details = [{ type = \"t\" }]",
            "routes[0].authorization_details: only applies to auth = \"bearer\"",
        ),
        (
            "auth = \"none\"\nauthorization_details = [{ type = \"t\" }]",
            "routes[0].authorization_details: only applies to auth = \"bearer\"",
        ),
        (
            "authorization_details = []",
            "routes[0].authorization_details: give 1 to 16",
        ),
        (
            "authorization_details = [{ type = \" \" }]",
            "routes[0].authorization_details[0].type",
        ),
        (
            "authorization_details = [{ type = \"t\", actions = [] }]",
            "routes[0].authorization_details[0].actions",
        ),
        (
            "authorization_details = [{ type = \"t\", action = [\"a\"] }]",
            "unknown field `action`",
        ),
        (
            "authorization_details = [{ actions = [\"a\"] }]",
            "missing field `type`",
        ),
    ] {
        let e = err(route);
        assert!(e.contains(needle), "{route}: {e}");
    }
    bearward::config::Config::from_toml_str(
        &base("authorization_details = [{ type = \"t\", actions = [\"a\"], datatypes = [\"d\"], privileges = [\"p\"], identifier = \"i\" }]"),
        "t.toml",
    )
    .expect("valid");
}
