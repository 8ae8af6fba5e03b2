//! TLS on bearward's own listener: HTTP/1.1 and HTTP/2 by ALPN, client certificates (optional
//! and required), handshake failures counted by reason, and a renewed certificate served to new
//! connections without a restart. Clients are rustls over real loopback sockets; certificates
//! come from tests/fixtures/tls/gen.sh.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIX: &str = "tests/fixtures/tls";

fn tls_config(up: &Upstream, server_extra: &str) -> String {
    basic_config(
        &up.url(),
        &format!("tls_cert_file = \"{FIX}/server.pem\"\ntls_key_file = \"{FIX}/server-key.pem\"\n{server_extra}"),
    )
}

/// A rustls client trusting the test CA, offering `alpn`, presenting `client` (a fixture name).
fn connector(alpn: &[&[u8]], client: Option<&str>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(format!("{FIX}/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(format!("{FIX}/{name}.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(format!("{FIX}/{name}-key.pem")).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, alpn: &[&[u8]], client: Option<&str>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(alpn, client).connect(name, tcp).await
}

/// One GET over a fresh TLS connection, HTTP/1.1 or HTTP/2 as ALPN chose; the certificate the
/// server presented comes back too.
async fn get_tls(
    addr: SocketAddr,
    path: &str,
    alpn: &[&[u8]],
    client: Option<&str>,
) -> std::io::Result<(StatusCode, http::Version, Vec<u8>)> {
    let tls = connect(addr, alpn, client).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let io = TokioIo::new(tls);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let to_io = |e: hyper::Error| std::io::Error::other(e);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(to_io)?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://localhost{path}").parse().unwrap();
        send.send_request(req).await.map_err(to_io)?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(to_io)?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(to_io)?
    };
    let (status, version) = (resp.status(), resp.version());
    let _ = resp.into_body().collect().await;
    Ok((status, version, server_cert))
}

async fn metrics(gw: &Gateway) -> String {
    get(
        &client(),
        &format!("http://{}/metrics", gw.admin.unwrap()),
        &[],
    )
    .await
    .body
}

#[tokio::test]
async fn the_listener_speaks_tls_with_h2_and_http1_by_alpn() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(&up, "")).await;
    let (status, version, _) = get_tls(gw.addr, "/public/a", &[b"h2", b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!((status, version), (StatusCode::OK, http::Version::HTTP_2));
    let (status, version, _) = get_tls(gw.addr, "/public/b", &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!((status, version), (StatusCode::OK, http::Version::HTTP_11));
    let (status, _, _) = get_tls(gw.addr, "/public/c", &[], None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "no ALPN is HTTP/1.1");
    // The upstream is told the client came in over TLS.
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    // A bearer route answers as on plain HTTP.
    let (status, _, _) = get_tls(gw.addr, "/api/x", &[b"h2"], None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.count(), 3);

    // Plain HTTP on the TLS port is a failed handshake, counted; nothing reaches the upstream.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200"));
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "bearward_tls_handshakes_total{outcome=\"ok\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "bearward_tls_handshakes_total{outcome=\"not_tls\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_at_the_handshake_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(&up, "tls_handshake_timeout = \"300ms\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // a record header, then nothing
    let (_, took) = read_to_close(&mut s).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "bearward_tls_handshakes_total{outcome=\"timeout\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn required_client_certificates_are_verified_against_the_client_ca() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(
        &up,
        &format!("tls_client_ca_file = \"{FIX}/ca.pem\"\ntls_client_auth = \"required\""),
    ))
    .await;
    for client in ["client", "client2"] {
        let (status, _, _) = get_tls(gw.addr, "/public/a", &[b"h2"], Some(client))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{client}");
    }
    // TLS 1.3: the server's refusal of a client certificate arrives after the client's
    // handshake is done, so it shows on the first request.
    assert!(get_tls(gw.addr, "/public/a", &[b"http/1.1"], None)
        .await
        .is_err());
    assert!(
        get_tls(gw.addr, "/public/a", &[b"http/1.1"], Some("other-client"))
            .await
            .is_err()
    );
    assert_eq!(up.count(), 2);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "bearward_tls_handshakes_total{outcome=\"no_client_certificate\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "bearward_tls_handshakes_total{outcome=\"bad_client_certificate\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn optional_client_certificates_let_clients_without_one_in() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(
        &up,
        &format!("tls_client_ca_file = \"{FIX}/ca.pem\"\ntls_client_auth = \"optional\""),
    ))
    .await;
    assert_eq!(
        get_tls(gw.addr, "/public/a", &[], None).await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        get_tls(gw.addr, "/public/a", &[], Some("client"))
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
    // A certificate that does not verify is still refused.
    assert!(get_tls(gw.addr, "/public/a", &[], Some("other-client"))
        .await
        .is_err());
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_renewed_listener_certificate_is_served_without_a_restart() {
    let up = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!("bearward-listener-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls-key.pem"));
    std::fs::copy(format!("{FIX}/server.pem"), &cert).unwrap();
    std::fs::copy(format!("{FIX}/server-key.pem"), &key).unwrap();
    let file = dir.join("bearward.toml");
    let cfg = basic_config(
        &up.url(),
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&file, cfg).unwrap();
    let config = bearward::config::Config::load(&file).unwrap();
    let server = bearward::build(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let live = server.live();
    tokio::spawn(server.run(std::future::pending()));
    tokio::spawn(bearward::server::watch_config(
        live,
        file.clone(),
        Duration::from_millis(50),
    ));

    let der = |f: &str| {
        CertificateDer::pem_file_iter(format!("{FIX}/{f}"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let (old, new) = (der("server.pem"), der("server2.pem"));
    assert_ne!(old, new);
    assert_eq!(get_tls(addr, "/public/a", &[], None).await.unwrap().2, old);
    // A connection open across the renewal keeps its session.
    let kept = connect(addr, &[b"http/1.1"], None).await.unwrap();

    // Key first, then certificate: the reload in between sees a pair that does not match and
    // keeps the old one (the config is refused whole), as a renewal tool writing two files does.
    std::fs::copy(format!("{FIX}/server2-key.pem"), &key).unwrap();
    std::fs::copy(format!("{FIX}/server2.pem"), &cert).unwrap();
    let mut served = None;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = get_tls(addr, "/public/a", &[], None).await.unwrap().2;
        if got == new {
            served = Some(got);
            break;
        }
    }
    assert!(
        served.is_some(),
        "the renewed certificate was not served to a new connection"
    );
    assert_eq!(
        kept.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        old
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_names_the_listener_tls_problems() {
    let base = |extra: &str| basic_config("http://127.0.0.1:1", extra);
    let err = |extra: &str| {
        bearward::config::Config::from_toml_str(&base(extra), "t.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = err(&format!("tls_cert_file = \"{FIX}/server.pem\""));
    assert!(e.contains("server.tls_key_file"), "{e}");
    let e = err(&format!(
        "tls_cert_file = \"{FIX}/server.pem\"\ntls_key_file = \"{FIX}/client-key.pem\""
    ));
    assert!(
        e.contains("server.tls_key_file") && e.contains("do not go together"),
        "{e}"
    );
    let e = err(&format!("tls_cert_file = \"{FIX}/server.pem\"\ntls_key_file = \"{FIX}/server-key.pem\"\ntls_client_auth = \"required\""));
    assert!(e.contains("tls_client_ca_file"), "{e}");
    let e = err("tls_client_auth = \"optional\"");
    assert!(
        e.contains("server.tls_client_auth") && e.contains("only with TLS"),
        "{e}"
    );
    let e = err("public_origin = \"https://api.example.com/v1\"");
    assert!(e.contains("server.public_origin"), "{e}");
}

#[tokio::test]
async fn tls_1_2_clients_are_served_too() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(&up, "")).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(format!("{FIX}/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/public/a")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
}

/// `tls_certificates`: a client that names a.test gets that certificate, one that names a name
/// under b.test the wildcard's, and one that names neither (or only an IP address) the default;
/// each handshake verifies for the name asked (a client trusting the SNI CA and the test CA).
/// Host routes then see the host the client named.
#[tokio::test]
async fn the_listener_picks_its_certificate_by_the_name_the_client_asks_for() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&tls_config(
        &up,
        &format!(
            "tls_certificates = [{{ cert_file = \"{FIX}/sni-a.pem\", key_file = \"{FIX}/sni-a-key.pem\" }}, \
             {{ cert_file = \"{FIX}/sni-wild.pem\", key_file = \"{FIX}/sni-wild-key.pem\" }}]"
        ),
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for ca in ["ca", "sni-ca"] {
        for c in CertificateDer::pem_file_iter(format!("{FIX}/{ca}.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let leaf = |file: &str| {
        CertificateDer::pem_file_iter(format!("{FIX}/{file}.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    for (name, served) in [
        ("a.test", "sni-a"),
        ("x.b.test", "sni-wild"),
        ("localhost", "server"),
        ("127.0.0.1", "server"),
    ] {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let s = tls
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert!(got == leaf(served), "{name}: not {served}'s certificate");
    }
    // A name no certificate holds gets the default, which the client then refuses.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let refused = tls
        .connect(ServerName::try_from("c.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "c.test verified");
    // The wildcard is one label deep, as clients read it.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    assert!(tls
        .connect(ServerName::try_from("y.x.b.test").unwrap(), tcp)
        .await
        .is_err());
}
