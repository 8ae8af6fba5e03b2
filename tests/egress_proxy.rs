//! IdP calls through the company's egress proxy: Debian's `tinyproxy` on loopback in front of
//! an HTTPS JWKS endpoint (the test CA's certificate, trusted through `SSL_CERT_FILE`). Keys
//! come through the proxy (`HTTPS_PROXY`, or the issuer's `proxy`); `NO_PROXY` goes around it;
//! a proxy that is down counts like an IdP that is down.

mod common;

use common::redis::Replica;
use common::*;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");

struct Tinyproxy {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Tinyproxy {
    fn start() -> Tinyproxy {
        Tinyproxy::start_with("")
    }

    /// With `extra` lines in its config (`BasicAuth user password`).
    fn start_with(extra: &str) -> Tinyproxy {
        let dir = |port: u16| {
            std::env::temp_dir().join(format!("bearward-tinyproxy-{port}-{}", std::process::id()))
        };
        let (child, [port]) = spawn_holding_tidy(
            "tinyproxy (apt-get install tinyproxy; .ci/run does)",
            |[port]| {
                let dir = dir(port);
                std::fs::create_dir_all(&dir).unwrap();
                let conf = dir.join("tinyproxy.conf");
                // No ConnectPort line: CONNECT to any port (the JWKS endpoint's is ephemeral).
                std::fs::write(
                    &conf,
                    format!(
                        "Port {port}\nListen 127.0.0.1\nTimeout 10\nMaxClients 50\n\
                         Allow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\n{extra}\n",
                        dir.join("tinyproxy.log").display()
                    ),
                )
                .unwrap();
                Tinyproxy::command(&conf)
            },
            |[port]| {
                let _ = std::fs::remove_dir_all(dir(port));
            },
        );
        Tinyproxy {
            child,
            port,
            dir: dir(port),
        }
    }

    /// tinyproxy in the foreground on config file `conf`.
    fn command(conf: &std::path::Path) -> Command {
        let mut cmd = Command::new("tinyproxy");
        cmd.arg("-d")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The CONNECT requests it has logged for `authority`.
    fn connects(&self, authority: &str) -> usize {
        std::fs::read_to_string(self.dir.join("tinyproxy.log"))
            .unwrap_or_default()
            .matches(&format!("CONNECT {authority} "))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        stop_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTPS endpoint serving the rsa1 JWKS for any path; counts the requests it answered.
async fn https_jwks() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let tls = tls_acceptor(false);
    let body = std::fs::read_to_string("tests/fixtures/jwks-rsa1.json").unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tls, body, counted) = (tls.clone(), body.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, hits)
}

/// A replica whose issuer's keys are at `https://localhost:{jwks}/jwks`.
fn replica(up: &Upstream, jwks: u16, issuer_extra: &str, env: &[(&str, &str)]) -> Replica {
    let mut env = env.to_vec();
    env.push(("SSL_CERT_FILE", CA));
    Replica::spawn(
        |port, admin| {
            format!(
                r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[[issuers]]
issuer = "https://idp.test"
jwks_uri = "https://localhost:{jwks}/jwks"
audiences = ["https://api.test"]
{issuer_extra}

[upstreams.app]
url = "{}"

[[routes]]
prefix = "/api"
upstream = "app"
"#,
                up.url()
            )
        },
        &env,
        true,
    )
}

fn token() -> String {
    common::idp::Minter {
        issuer: "https://idp.test".into(),
        audience: "https://api.test".into(),
    }
    .token(&common::idp::Key::rsa1(), "read")
}

/// `/readyz` of a replica, once it listens: 200 when its keys have loaded, within 5 s.
async fn ready(r: &Replica, c: &HttpClient) -> StatusCode {
    let url = format!("http://127.0.0.1:{}/readyz", r.admin);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = get(c, &url, &[]).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

#[tokio::test]
async fn keys_come_through_the_proxy_the_environment_or_the_issuer_names() {
    let proxy = Tinyproxy::start();
    let (jwks, hits) = https_jwks().await;
    let up = Upstream::start().await;
    let c = client();
    let authority = format!("localhost:{jwks}");

    let through_env = replica(&up, jwks, "", &[("HTTPS_PROXY", &proxy.url())]);
    assert_eq!(
        ready(&through_env, &c).await,
        StatusCode::OK,
        "{}",
        through_env.logged()
    );
    assert_eq!(through_env.call(&c, &token()).await, StatusCode::OK);
    assert_eq!(
        proxy.connects(&authority),
        1,
        "the JWKS came through the proxy"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // NO_PROXY names the IdP: straight to it, the proxy not asked.
    let around = replica(
        &up,
        jwks,
        "",
        &[("HTTPS_PROXY", &proxy.url()), ("NO_PROXY", "localhost")],
    );
    assert_eq!(
        ready(&around, &c).await,
        StatusCode::OK,
        "{}",
        around.logged()
    );
    assert_eq!(around.call(&c, &token()).await, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        proxy.connects(&authority),
        1,
        "NO_PROXY went around the proxy"
    );

    // The issuer's own proxy, with nothing in the environment (and over a NO_PROXY: the
    // issuer's setting is explicit).
    let named = replica(
        &up,
        jwks,
        &format!("proxy = \"{}\"", proxy.url()),
        &[("NO_PROXY", "localhost")],
    );
    assert_eq!(
        ready(&named, &c).await,
        StatusCode::OK,
        "{}",
        named.logged()
    );
    assert_eq!(named.call(&c, &token()).await, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.connects(&authority), 2);
}

#[tokio::test]
async fn a_proxy_that_is_down_counts_like_the_idp_down() {
    let (jwks, hits) = https_jwks().await;
    let up = Upstream::start().await;
    let c = client();
    let closed = ClosedPort::new();
    let r = replica(&up, jwks, "", &[("HTTPS_PROXY", &closed.url())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readyz = get(&c, &format!("http://127.0.0.1:{}/readyz", r.admin), &[]).await;
    assert_eq!(
        readyz.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        readyz.body
    );
    let answer = get(
        &c,
        &format!("http://127.0.0.1:{}/api/x", r.port),
        &[("authorization", &format!("Bearer {}", token()))],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no keys: never open"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing went around the proxy"
    );
    let m = r.metrics(&c).await;
    assert!(
        metric(
            &m,
            "bearward_jwks_fetches_total{issuer=\"https://idp.test\",outcome=\"error\"}"
        ) >= 1.0,
        "{m}"
    );
    let log = r.logged();
    let named = format!("CONNECT through proxy 127.0.0.1:{}", closed.port);
    assert!(log.contains(&named), "the log names the proxy: {log}");
}

#[tokio::test]
async fn a_proxy_that_asks_for_credentials_gets_those_of_its_url() {
    let proxy = Tinyproxy::start_with("BasicAuth bearward s3cret-proxy-pass");
    let (jwks, hits) = https_jwks().await;
    let up = Upstream::start().await;
    let c = client();
    let with = format!("http://bearward:s3cret-proxy-pass@127.0.0.1:{}", proxy.port);
    let r = replica(&up, jwks, &format!("proxy = \"{with}\""), &[]);
    assert_eq!(ready(&r, &c).await, StatusCode::OK, "{}", r.logged());
    assert_eq!(r.call(&c, &token()).await, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(!r.logged().contains("s3cret-proxy-pass"));

    // Without them the proxy answers 407: the keys never come, and the password is not shown.
    let without = replica(&up, jwks, "", &[("HTTPS_PROXY", &proxy.url())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        without.call(&c, &token()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(
        without.logged().contains("CONNECT through proxy"),
        "{}",
        without.logged()
    );
}

/// The harness itself: a port taken between the pick and the bind (here on purpose, by a
/// listener of the test's own, which a connect would mistake for tinyproxy) costs a try, not
/// the test.
#[test]
fn a_proxy_whose_port_was_taken_starts_on_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut tries = Vec::new();
    let (mut child, [port]) = spawn_holding("tinyproxy", |[port]| {
        let port = if tries.is_empty() { taken_port } else { port };
        tries.push(port);
        let conf = std::env::temp_dir().join(format!(
            "bearward-tinyproxy-taken-{port}-{}.conf",
            std::process::id()
        ));
        std::fs::write(&conf, format!("Port {port}\nListen 127.0.0.1\n")).unwrap();
        Tinyproxy::command(&conf)
    });
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_ne!(port, taken_port);
    assert!(holds(child.id(), &[port]));
    assert!(!holds(child.id(), &[taken_port]), "the test's own listener");
    stop_group(&mut child);
    for p in tries {
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
            "bearward-tinyproxy-taken-{p}-{}.conf",
            std::process::id()
        )));
    }
}
