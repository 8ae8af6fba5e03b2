//! Per-route rate limits, end to end with real tokens: 3x the limit sent, what the upstream
//! received counted (within the GCRA's tolerance), 429 with Retry-After and the IETF
//! RateLimit header fields, one bucket per subject, per IP on open routes; and the key table
//! bounded under a million distinct keys.

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

[[routes]]
prefix = "/api"
rate_limit = {{ key = "subject", rate = "10/s", burst = 10 }}
upstream = "app"

[[routes]]
prefix = "/by-client"
rate_limit = {{ key = "client", rate = "600/m", burst = 5 }}
upstream = "app"

[[routes]]
prefix = "/by-tenant"
rate_limit = {{ key = 'claim:org\.example.tenant', rate = "600/m", burst = 3 }}
upstream = "app"

[[routes]]
prefix = "/open"
auth = "none"
rate_limit = {{ key = "ip", rate = "5/s" }}
upstream = "app"
"#,
        idp.issuer(),
        up.url()
    )
}

#[tokio::test]
async fn three_times_the_limit_gets_the_limit_through_and_429_with_the_headers() {
    let key = Key::rsa1();
    let idp = Idp::start(&[&key]).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &idp)).await;
    wait_ready(&gw).await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let token = |sub: &str| {
        mint.token_claims(&key, |cl| {
            cl.insert("sub".into(), json!(sub));
        })
    };
    let (alice, bob) = (token("alice"), token("bob"));

    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..30 {
        let a = get(
            &c,
            &gw.url("/api/x"),
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await;
        match a.status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(a.headers["ratelimit-policy"], "\"/api*\";q=10;w=1");
                if ok == 1 {
                    // Nine left, full again within the second (100 ms a request).
                    assert_eq!(a.headers["ratelimit"], "\"/api*\";r=9;t=1");
                }
            }
            StatusCode::TOO_MANY_REQUESTS => limited = Some(a),
            other => panic!("{other}"),
        }
    }
    // The GCRA lets 10 through at once and one more every 100 ms.
    let tolerance = 1 + (started.elapsed().as_millis() / 100) as usize;
    assert!(
        (10..=10 + tolerance).contains(&ok),
        "{ok} passed, tolerance {tolerance}"
    );
    assert_eq!(up.count(), ok, "the upstream received exactly what passed");
    let a = limited.expect("some were limited");
    let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(a.headers["ratelimit-policy"], "\"/api*\";q=10;w=1");
    // Reset: the wait for one request, then nine more refills (under a second).
    let rl = a.headers["ratelimit"].to_str().unwrap();
    assert_eq!(rl, format!("\"/api*\";r=0;t={}", retry_after + 1));

    // Bob has his own bucket.
    let before = up.count();
    for _ in 0..10 {
        let a = get(
            &c,
            &gw.url("/api/x"),
            &[("authorization", &format!("Bearer {bob}"))],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "bob shares alice's bucket");
    }
    assert_eq!(up.count(), before + 10);

    // By client: two subjects of one client share it.
    let client_token = |sub: &str| {
        mint.token_claims(&key, |cl| {
            cl.insert("sub".into(), json!(sub));
            cl.insert("azp".into(), json!("batch-job"));
        })
    };
    let mut passed = 0;
    for i in 0..10 {
        let t = client_token(&format!("worker-{i}"));
        if get(
            &c,
            &gw.url("/by-client/x"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await
        .status
            == StatusCode::OK
        {
            passed += 1;
        }
    }
    assert!((5..=6).contains(&passed), "{passed}");

    // By a dotted claim path whose first key holds a dot: subjects of one tenant share a
    // bucket, another tenant has its own, a token without the claim counts under `-`.
    let tenant_token = |sub: &str, tenant: Option<&str>| {
        mint.token_claims(&key, |cl| {
            cl.insert("sub".into(), json!(sub));
            if let Some(t) = tenant {
                cl.insert("org.example".into(), json!({ "tenant": t }));
            }
        })
    };
    let by_tenant = |t: String| {
        let (c, url) = (c.clone(), gw.url("/by-tenant/x"));
        async move {
            get(&c, &url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .status
        }
    };
    let mut passed = 0;
    for i in 0..8 {
        if by_tenant(tenant_token(&format!("t1-{i}"), Some("acme"))).await == StatusCode::OK {
            passed += 1;
        }
    }
    assert!((3..=4).contains(&passed), "{passed} of tenant acme's 8");
    for i in 0..3 {
        let s = by_tenant(tenant_token(&format!("t2-{i}"), Some("globex"))).await;
        assert_eq!(s, StatusCode::OK, "globex shares acme's bucket");
    }
    let mut passed = 0;
    for i in 0..6 {
        if by_tenant(tenant_token(&format!("none-{i}"), None)).await == StatusCode::OK {
            passed += 1;
        }
    }
    assert!((3..=4).contains(&passed), "{passed} without the claim");

    // By IP on an open route.
    let mut passed = 0;
    for _ in 0..15 {
        if get(&c, &gw.url("/open/x"), &[]).await.status == StatusCode::OK {
            passed += 1;
        }
    }
    assert!((5..=7).contains(&passed), "{passed}");

    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert!(
        metric(&m, "bearward_requests_total{route=\"/api*\",status=\"429\",decision=\"deny\",reason=\"rate_limited\"}") >= 18.0,
        "{m}"
    );
    // The keys each table holds: alice and bob; one client; acme, globex and `-`; one address.
    for (route, keys) in [
        ("/api*", 2.0),
        ("/by-client*", 1.0),
        ("/by-tenant*", 3.0),
        ("/open*", 1.0),
    ] {
        let series = format!("bearward_rate_limit_keys{{route=\"{route}\"}}");
        assert_eq!(metric(&m, &series), keys, "{series}");
    }
}

#[test]
fn a_million_distinct_keys_stay_bounded() {
    let cfg = bearward::config::Config::from_toml_str(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nauth = \"none\"\nrate_limit = { key = \"ip\", rate = \"1/h\" }\nupstream = \"a\"\n",
        "t.toml",
    )
    .unwrap();
    let limiter = bearward::gateway::limit::Limiter::new(&cfg.routes.routes()[0]).unwrap();
    let check = |key: &str| {
        futures_util::FutureExt::now_or_never(limiter.check(key))
            .expect("a local check never waits")
    };
    let before = rss_kib();
    // A client that keeps sending through the flood keeps its bucket: never allowed again.
    assert!(check("steady").allowed);
    for i in 0..1_000_000u32 {
        assert!(check(&format!("subject-{i}")).allowed);
        if i % 1000 == 0 {
            assert!(!check("steady").allowed, "reset after {i} other keys");
        }
    }
    let keys = limiter.keys();
    let grown = rss_kib().saturating_sub(before);
    assert!(
        keys <= bearward::gateway::limit::MAX_KEYS,
        "{keys} keys held"
    );
    // 100,000 buckets of a few hundred bytes each; a million would be several times this.
    eprintln!("{keys} keys held, RSS grew {grown} KiB");
    assert!(grown < 120 * 1024, "RSS grew {grown} KiB");
    // The most recent key is still counted: its second request in the hour is refused.
    assert!(!check("subject-999999").allowed);
}

fn open_config(up: &Upstream, trusted: &str, ipv6_prefix: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
trusted_proxies = [{trusted}]

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/open"
auth = "none"
rate_limit = {{ key = "ip", rate = "60/m", burst = 3{ipv6_prefix} }}
upstream = "app"
"#,
        up.url()
    )
}

/// How many of `n` requests with this `X-Forwarded-For` passed.
async fn passed(c: &HttpClient, gw: &Gateway, xff: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let header = [("x-forwarded-for", xff)];
        let a = get(
            c,
            &gw.url("/open/x"),
            if xff.is_empty() { &[] } else { &header },
        )
        .await;
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{xff}: {other}"),
        }
    }
    ok
}

/// `key = "ip"` behind a load balancer: the client named by the trusted proxies'
/// X-Forwarded-For, not the balancer (which would put every client in one bucket), and never an
/// address the client wrote itself; IPv6 clients by their /64; an untrusted peer's header is
/// not read.
#[tokio::test]
async fn the_ip_key_is_the_client_a_trusted_proxy_names() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&open_config(&up, "\"127.0.0.1\", \"10.0.0.0/8\"", "")).await;
    wait_ready(&gw).await;
    let c = client();
    // burst 3, one more a second: 3 pass at once, 4 at most within the test's first second.
    let started = std::time::Instant::now();
    assert_eq!(passed(&c, &gw, "203.0.113.9", 5).await, 3);
    assert_eq!(
        passed(&c, &gw, "198.51.100.7", 3).await,
        3,
        "a second client has its own bucket"
    );
    // The client writing its own entries to the left changes nothing: the balancer appended
    // the address it saw, and a chain of trusted hops (10/8) is walked past.
    assert_eq!(passed(&c, &gw, "1.2.3.4, 203.0.113.9", 1).await, 0);
    assert_eq!(
        passed(&c, &gw, "5.6.7.8, 203.0.113.9, 10.1.2.3", 1).await,
        0
    );
    assert_eq!(
        passed(&c, &gw, "::ffff:203.0.113.9", 1).await,
        0,
        "the same IPv4 client, mapped"
    );
    assert_eq!(
        passed(&c, &gw, "203.0.113.9:55123", 1).await,
        0,
        "the same client with a port"
    );
    // IPv6: one /64 is one client, whatever address of it each request comes from.
    let mut v6 = 0;
    for addr in [
        "2001:db8:1:2::a",
        "2001:db8:1:2::b",
        "[2001:db8:1:2::c]:443",
        "2001:db8:1:2:1:2:3:4",
        "2001:db8:1:2:ffff::",
    ] {
        v6 += passed(&c, &gw, addr, 1).await;
    }
    assert_eq!(v6, 3, "one /64 took more than its burst");
    assert_eq!(
        passed(&c, &gw, "2001:db8:1:3::a", 1).await,
        1,
        "another /64 has its own"
    );
    // The balancer's own requests (no header) count under its address.
    assert_eq!(passed(&c, &gw, "", 3).await, 3);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(900),
        "a refill would blur the counts"
    );
    assert_eq!(
        up.count(),
        3 + 3 + 3 + 1 + 3,
        "the upstream got what passed, no more"
    );

    // Without trusted proxies, the header is the client's word: all of it counts as the peer.
    let up = Upstream::start().await;
    let gw = Gateway::start(&open_config(&up, "", ", ipv6_prefix = 128")).await;
    wait_ready(&gw).await;
    let mut ok = 0;
    for i in 0..6 {
        ok += passed(&c, &gw, &format!("192.0.2.{i}"), 1).await;
    }
    assert_eq!(ok, 3, "a forged X-Forwarded-For bought fresh buckets");
    assert_eq!(up.count(), 3);
}

/// A limit on an audit-mode route is counted and noted, never answered: every request reaches
/// the upstream, those over the limit with a would-deny note, none of them a 429 or RateLimit
/// fields the client was not held to.
#[tokio::test]
async fn audit_mode_notes_the_limit_and_forwards() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [[routes]]\nprefix = \"/trial\"\nauth = \"none\"\nmode = \"audit\"\n\
         rate_limit = {{ key = \"ip\", rate = \"6/m\", burst = 2 }}\nupstream = \"app\"\n",
        up.url()
    ))
    .await;
    wait_ready(&gw).await;
    let c = client();
    for i in 0..5 {
        let a = get(&c, &gw.url("/trial/x"), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(
            a.headers.contains_key("ratelimit"),
            i < 2,
            "request {i}: RateLimit only while within the limit"
        );
    }
    let notes: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.headers["x-bearward-audit"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        notes,
        [
            "allow",
            "allow",
            "would-deny; reason=rate_limited; status=429",
            "would-deny; reason=rate_limited; status=429",
            "would-deny; reason=rate_limited; status=429",
        ]
    );
    let m = get(&c, &format!("http://{}/metrics", gw.admin.unwrap()), &[])
        .await
        .body;
    assert_eq!(
        metric(&m, "bearward_requests_total{route=\"/trial*\",status=\"200\",decision=\"audit_deny\",reason=\"rate_limited\"}"),
        3.0,
        "{m}"
    );
}

/// Tiers: `rate_by` names the claim that says a caller's plan, `rates` each plan's rate. A
/// gold client gets gold's burst and headers naming its tier, with a bucket of its own; a
/// client of an unlisted plan, or none, the route's `rate`. Each its own bucket by `key`.
#[tokio::test]
async fn a_tier_claim_picks_the_rate_and_the_bucket() {
    let (key, idp, up, gw) = serve_routes(
        r#"[[routes]]
prefix = "/plans"
name = "plans"
rate_limit = { key = "client", rate = "2/m", rate_by = "claim:plan", rates = { gold = "5/m", silver = "3/m" } }
upstream = "app"
"#,
    )
    .await;
    let c = client();
    let mint = idp.minter("https://api.test");
    let token = |client: &str, plan: Option<&str>| {
        mint.token_claims(&key, |m| {
            m.insert("client_id".into(), json!(client));
            if let Some(p) = plan {
                m.insert("plan".into(), json!(p));
            }
        })
    };
    // Requests allowed of 8 in a row, and the last answer's RateLimit-Policy.
    let run = |t: String| {
        let (c, url) = (c.clone(), gw.url("/plans/x"));
        async move {
            let mut allowed = 0;
            let mut policy = String::new();
            for _ in 0..8 {
                let a = get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await;
                match a.status {
                    StatusCode::OK => allowed += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    s => panic!("{s}: {}", a.body),
                }
                policy = a.headers["ratelimit-policy"].to_str().unwrap().to_owned();
            }
            (allowed, policy)
        }
    };
    assert_eq!(
        run(token("a", Some("gold"))).await,
        (5, "\"plans.gold\";q=5;w=60".to_owned())
    );
    assert_eq!(
        run(token("b", Some("silver"))).await,
        (3, "\"plans.silver\";q=3;w=60".to_owned())
    );
    assert_eq!(
        run(token("c", Some("platinum"))).await,
        (2, "\"plans\";q=2;w=60".to_owned())
    );
    assert_eq!(
        run(token("d", None)).await,
        (2, "\"plans\";q=2;w=60".to_owned())
    );
    // Client a, out of gold's burst, counted afresh as another plan: each tier its own buckets.
    assert_eq!(run(token("a", Some("silver"))).await.0, 3);
    assert_eq!(up.count(), 5 + 3 + 2 + 2 + 3);

    let refused = |limit: &str| {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"https://i\"\njwks_file = \"tests/fixtures/jwks-rsa1.json\"\naudiences = [\"a\"]\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n{limit}\n");
        bearward::config::Config::from_toml_str(&text, "t.toml")
            .expect_err(limit)
            .to_string()
    };
    for (limit, needle) in [
        ("rate_limit = { key = \"client\", rate = \"2/m\", rate_by = \"claim:plan\" }", "give rate_by and rates together"),
        ("rate_limit = { key = \"client\", rate = \"2/m\", rates = { gold = \"5/m\" } }", "give rate_by and rates together"),
        ("rate_limit = { key = \"client\", rate = \"2/m\", rate_by = \"plan\", rates = { gold = \"5/m\" } }", "routes[0].rate_limit.rate_by"),
        ("rate_limit = { key = \"client\", rate = \"2/m\", rate_by = \"claim:plan\", rates = { gold = \"5/d\" } }", "routes[0].rate_limit.rates.\"gold\""),
        ("rate_limit = { key = \"client\", rate = \"2/m\", rate_by = \"claim:plan\", rates = {} }", "routes[0].rate_limit.rates: give 1 to 32"),
        ("auth = \"none\"\nrate_limit = { key = \"ip\", rate = \"2/m\", rate_by = \"claim:plan\", rates = { gold = \"5/m\" } }", "routes[0].rate_limit.rate_by: only applies to auth = \"bearer\""),
    ] {
        let e = refused(limit);
        assert!(e.contains(needle), "{limit}: {e}");
    }
}
