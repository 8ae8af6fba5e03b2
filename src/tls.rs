//! TLS on both sides: the listener's server settings ([`ListenerTls`]: certificate, ALPN,
//! optional client certificates), and for `https` upstreams the stream an upstream connection
//! runs on and the client settings each upstream's connections are made with.
//!
//! The certificate is always verified, against the upstream's `tls_ca_file` or else the
//! system's roots (Mozilla's when the system has none), for `tls_server_name` or else the URL's
//! host, which is also sent as SNI. An upstream that asks for a client certificate (mTLS) gets
//! `tls_client_cert`, when one is configured. There is no switch to skip verification: a
//! gateway that checks every token must not hand them to whoever answers on the upstream's
//! address. ALPN offers only `http/1.1`, the one protocol bearward speaks upstream.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How an `https` upstream's connections are made.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// Settings for a server known as `server_name`, trusting `roots`, presenting `identity`
    /// when the server asks for a client certificate.
    pub fn new(
        server_name: ServerName<'static>,
        roots: RootCertStore,
        identity: Option<Identity>,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(Identity { chain, key }) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?,
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The rustls settings themselves, for a client that makes its own connections.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The same settings offering only `h2` in ALPN (`protocol = "h2"`).
    pub fn with_h2(&self) -> UpstreamTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        UpstreamTls {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        }
    }

    /// The TLS handshake over a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector.connect(self.server_name.clone(), tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A client certificate chain and its private key, for upstreams that ask for one (mTLS).
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads the PEM certificate chain (the client's own certificate first) and the PEM
    /// private key. Each error says which of the two files it is about.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Identity, IdentityError> {
        let chain = pem_certs(cert_file).map_err(IdentityError::Cert)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| IdentityError::Key(format!("holds no usable PEM private key: {e}")))?;
        Ok(Identity { chain, key })
    }
}

/// Which file of an [`Identity`] is wrong.
pub enum IdentityError {
    Cert(String),
    Key(String),
}

/// The name a certificate must be valid for: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}

/// The CA certificates in the PEM file `ca_file`, or the default roots without one.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    match ca_file {
        Some(file) => roots_from(file),
        None => Ok(default_roots()),
    }
}

/// The certificates in a PEM file: at least one, or an error saying what the file is.
fn pem_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

fn roots_from(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(file)? {
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that cannot be used as a CA: {e}"))?;
    }
    Ok(roots)
}

/// The system's roots, as the JWKS client uses them; Mozilla's where the system has none.
fn default_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The TLS error behind a read or write error on a [`Stream`], if that is what it was.
pub fn session_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

/// An upstream connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An upstream's `unix_socket`.
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// Has the upstream closed (or written to) this idle connection? One non-blocking read of
    /// the socket under it; none at all when tokio already knows it has nothing to read.
    pub fn still_open(&self) -> bool {
        let read = match self {
            Stream::Plain(s) => s.try_read(&mut [0u8; 1]),
            Stream::Tls(s) => s.get_ref().0.try_read(&mut [0u8; 1]),
            Stream::Unix(s) => s.try_read(&mut [0u8; 1]),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Did TLS agree on `h2` in ALPN?
    pub fn alpn_h2(&self) -> bool {
        match self {
            Stream::Plain(_) | Stream::Unix(_) => false,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Has TLS decrypted bytes that no read has taken yet? Bytes behind a response must never
    /// be read as the next request's response, so such a connection is not reused.
    pub fn holds_unread(&mut self) -> bool {
        match self {
            Stream::Plain(_) | Stream::Unix(_) => false,
            Stream::Tls(s) => s
                .get_mut()
                .1
                .process_new_packets()
                .map_or(true, |state| state.plaintext_bytes_to_read() > 0),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// `tls_client_auth`: whether the listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate is asked for.
    None,
    /// Asked for, verified when sent; a client without one still connects.
    Optional,
    /// A client without a certificate that verifies fails the handshake.
    Required,
}

/// The listener's TLS settings, built once per config load: a reload with a renewed
/// certificate serves it to new connections without a restart.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub client_auth: ClientAuth,
}

/// Which listener file a problem is about.
#[derive(Debug)]
pub enum ListenerTlsError {
    Cert(String),
    Key(String),
    ClientCa(String),
    /// The `tls_certificates` entry at this index.
    Extra(usize, String),
}

/// The listener's certificate for a handshake: the first of `tls_certificates` valid for the
/// name the client asks for (SNI), checked as a client checks it; else the default
/// (`tls_cert_file`), as nginx's default server and Envoy's filter chain without a match do.
#[derive(Debug)]
struct BySni {
    default: Arc<rustls::sign::CertifiedKey>,
    others: Vec<Arc<rustls::sign::CertifiedKey>>,
}

impl BySni {
    fn pick(&self, name: Option<&str>) -> &Arc<rustls::sign::CertifiedKey> {
        let name = name.and_then(|n| ServerName::try_from(n).ok());
        let valid_for = |ck: &&Arc<rustls::sign::CertifiedKey>| {
            let (Some(name), Ok(der)) = (&name, ck.end_entity_cert()) else {
                return false;
            };
            webpki::EndEntityCert::try_from(der)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        };
        self.others.iter().find(valid_for).unwrap_or(&self.default)
    }
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// A PEM chain and key made one `CertifiedKey`, the key checked against the certificate.
fn certified(
    cert_file: &Path,
    key_file: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    let chain = pem_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "{} holds no usable PEM private key: {e}",
            key_file.display()
        )
    })?;
    rustls::sign::CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))
}

impl ListenerTls {
    /// TLS 1.2 and 1.3 on aws-lc-rs with the PEM chain and key; ALPN `h2` (when `http2`) and
    /// `http/1.1`; client certificates verified against `client_ca` as `client_auth` says.
    /// `others`: `tls_certificates`, each (certificate, key), served by SNI before the default.
    pub fn new(
        cert_file: &Path,
        key_file: &Path,
        others: &[(&Path, &Path)],
        client_ca: Option<&Path>,
        client_auth: ClientAuth,
        http2: bool,
    ) -> Result<ListenerTls, ListenerTlsError> {
        let chain = pem_certs(cert_file).map_err(ListenerTlsError::Cert)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| ListenerTlsError::Key(format!("holds no usable PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ListenerTlsError::Cert(e.to_string()))?;
        let builder = match (client_auth, client_ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(ListenerTlsError::ClientCa(
                    "client certificates need tls_client_ca_file: the CAs they must chain to"
                        .into(),
                ))
            }
            (auth, Some(ca)) => {
                let roots = roots_from(ca).map_err(ListenerTlsError::ClientCa)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                );
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| ListenerTlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = if others.is_empty() {
            builder.with_single_cert(chain, key).map_err(|e| {
                ListenerTlsError::Key(format!("the certificate and key do not go together: {e}"))
            })?
        } else {
            let default =
                rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                    ListenerTlsError::Key(format!(
                        "the certificate and key do not go together: {e}"
                    ))
                })?;
            let mut loaded = Vec::new();
            for (i, (c, k)) in others.iter().enumerate() {
                let ck = certified(c, k, &provider).map_err(|m| ListenerTlsError::Extra(i, m))?;
                loaded.push(Arc::new(ck));
            }
            builder.with_cert_resolver(Arc::new(BySni {
                default: Arc::new(default),
                others: loaded,
            }))
        };
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(ListenerTls {
            config: Arc::new(config),
            client_auth,
        })
    }
}

/// Why a client's handshake failed, as a fixed metric label.
pub fn handshake_failure(e: &io::Error) -> &'static str {
    use rustls::Error as E;
    match session_error(e) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(_)) => "bad_client_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::InvalidMessage(_)) => "not_tls",
        Some(E::AlertReceived(_)) => "client_alert",
        Some(_) => "protocol_error",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "client_closed",
        None => "io_error",
    }
}

/// The SHA-256 of a DER certificate: RFC 8705 3.1's `x5t#S256` before base64url.
pub fn thumbprint(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The SHA-256 of the client certificate a trusted TLS-terminating proxy passed in a header:
/// Envoy's `X-Forwarded-Client-Cert` (`xfcc`; see [`xfcc_thumbprint`]), or a URL-encoded PEM
/// certificate (nginx's `$ssl_client_escaped_cert`). `None` for anything else.
pub fn header_thumbprint(value: &[u8], xfcc: bool) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(value).ok()?;
    if xfcc {
        xfcc_thumbprint(text)
    } else {
        pem_thumbprint(text)
    }
}

/// The client's certificate in an `X-Forwarded-Client-Cert` value, read by Envoy's grammar:
/// elements separated by unquoted `,`, one per proxy that terminated TLS, the first the
/// client's; key=value pairs by unquoted `;`; a value in `"..."` may hold `,` `;` `=` and the
/// escapes `\"` and `\\`; keys case-insensitive. Its `Hash` (hex SHA-256), else the thumbprint of
/// its `Cert` (URL-encoded PEM). An element with two `Hash` or two `Cert` keys, or a `Hash`
/// that is not its `Cert`'s, is refused: a subject the client chose (`CN=m\",Hash=...`) must
/// never be read as a key of its own.
pub fn xfcc_thumbprint(text: &str) -> Option<[u8; 32]> {
    let first = xfcc_elements(text)?.into_iter().next()?;
    let (mut hash, mut cert) = (None, None);
    for (k, v) in first {
        let slot = if k.eq_ignore_ascii_case("hash") {
            &mut hash
        } else if k.eq_ignore_ascii_case("cert") {
            &mut cert
        } else {
            continue;
        };
        if slot.replace(v).is_some() {
            return None;
        }
    }
    let from_cert = match &cert {
        Some(c) => Some(pem_thumbprint(c)?),
        None => None,
    };
    match (hash.as_deref().map(hex32), from_cert) {
        (Some(h), Some(c)) => (h? == c).then_some(c),
        (Some(h), None) => h,
        (None, c) => c,
    }
}

/// The elements of an XFCC value, each its (key, unquoted value) pairs in order. `None` when the
/// value does not follow the grammar (an unclosed quote, a pair without `=`, a quote inside an
/// unquoted value).
fn xfcc_elements(text: &str) -> Option<Vec<Vec<(String, String)>>> {
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let (mut key, mut value) = (String::new(), String::new());
    let (mut in_value, mut quoted, mut closed) = (false, false, false);
    let mut chars = text.chars();
    // Envoy writes no empty pair or element: `a,,b`, a trailing `;` or a key alone is refused.
    let end_pair = |key: &mut String, value: &mut String, in_value: bool, pairs: &mut Vec<_>| {
        if !in_value {
            return false;
        }
        pairs.push((std::mem::take(key).trim().to_owned(), std::mem::take(value)));
        true
    };
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' => value.push(chars.next()?),
                '"' => (quoted, closed) = (false, true),
                c => value.push(c),
            }
            continue;
        }
        match c {
            ',' | ';' => {
                if !end_pair(&mut key, &mut value, in_value, &mut pairs) {
                    return None;
                }
                (in_value, closed) = (false, false);
                if c == ',' {
                    elements.push(std::mem::take(&mut pairs));
                }
            }
            '=' if !in_value => in_value = true,
            '"' if in_value && value.is_empty() && !closed => quoted = true,
            '"' => return None,
            // Nothing may follow a closing quote but a separator.
            c if closed && !c.is_ascii_whitespace() => return None,
            c if in_value => value.push(c),
            c => key.push(c),
        }
    }
    if quoted || !end_pair(&mut key, &mut value, in_value, &mut pairs) {
        return None;
    }
    elements.push(pairs);
    Some(elements)
}

fn hex32(v: &str) -> Option<[u8; 32]> {
    let b = v.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let d = |c: u8| (c as char).to_digit(16);
        *o = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// SHA-256 of the first certificate in URL-encoded PEM (XFCC `Cert=`, Envoy's ext_authz
/// `source.certificate`).
pub fn pem_thumbprint(url_encoded: &str) -> Option<[u8; 32]> {
    let pem = percent_encoding::percent_decode_str(url_encoded).collect::<Vec<u8>>();
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    Some(thumbprint(der.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";
    const BOB: &str = "9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e";

    fn hex(t: Option<[u8; 32]>) -> Option<String> {
        t.map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The examples of Envoy's documentation (`x-forwarded-client-cert`), and the first
    /// element taken when proxies appended theirs.
    #[test]
    fn envoys_own_examples_read_as_documented() {
        let one = format!(
            "By=http://frontend.lyft.com;Hash={ALICE};Subject=\"/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client\";URI=spiffe://lyft.com/test-team"
        );
        assert_eq!(hex(xfcc_thumbprint(&one)).as_deref(), Some(ALICE));
        let two = format!(
            "By=http://frontend.lyft.com;Hash={ALICE};URI=spiffe://lyft.com/test-team,By=http://backend.lyft.com;Hash={BOB};URI=spiffe://lyft.com/frontend-team"
        );
        assert_eq!(hex(xfcc_thumbprint(&two)).as_deref(), Some(ALICE));
        let dns = format!(
            "By=http://frontend.lyft.com;Hash={ALICE};Subject=\"/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client\";URI=spiffe://lyft.com/test-team;DNS=lyft.com;DNS=www.lyft.com"
        );
        assert_eq!(hex(xfcc_thumbprint(&dns)).as_deref(), Some(ALICE));
        // Keys are case-insensitive; a quoted hash is the same hash.
        assert_eq!(
            hex(xfcc_thumbprint(&format!("hash=\"{ALICE}\""))).as_deref(),
            Some(ALICE)
        );
    }

    /// A subject the client chose, with an escaped quote and an escaped comma (as
    /// `openssl x509 -nameopt RFC2253` prints it and Envoy writes it), or a `;` inside quotes,
    /// never yields a second element or a second key.
    #[test]
    fn a_chosen_subject_cannot_name_another_hash() {
        let escaped = format!("Hash={BOB};Subject=\"CN=mallory,street=x\\\"\\,Hash={ALICE}\"");
        assert_eq!(hex(xfcc_thumbprint(&escaped)).as_deref(), Some(BOB));
        let semi = format!("Hash={BOB};Subject=\"CN=m;Hash={ALICE}\"");
        assert_eq!(hex(xfcc_thumbprint(&semi)).as_deref(), Some(BOB));
        // Without a Hash of its own, the element has none to give.
        let no_hash = format!("By=x;Subject=\"CN=m;Hash={ALICE}\"");
        assert_eq!(xfcc_thumbprint(&no_hash), None);
        let no_hash = format!("By=x;Subject=\"CN=m\\\",Hash={ALICE}\"");
        assert_eq!(xfcc_thumbprint(&no_hash), None);
    }

    #[test]
    fn malformed_or_doubled_elements_are_refused() {
        for bad in [
            format!("Hash={ALICE};Hash={BOB}"),
            format!("Hash={ALICE};hash={ALICE}"),
            format!("Hash={ALICE};Subject=\"open"),
            format!("Hash={ALICE};Subject=\"a\"b"),
            format!("Hash={ALICE};Subject=a\"b\""),
            format!("Hash={ALICE};;By=x"),
            format!(",Hash={ALICE}"),
            format!("Hash={ALICE};Subject"),
            format!("Hash={ALICE}\\"),
            format!("Hash={}", &ALICE[..62]),
            format!("Hash={}zz", &ALICE[..62]),
            String::new(),
        ] {
            assert_eq!(xfcc_thumbprint(&bad), None, "{bad}");
        }
    }

    /// `Cert` alone gives its thumbprint; with a `Hash` the two must agree.
    #[test]
    fn a_hash_must_be_its_certificates() {
        let pem = std::fs::read_to_string("tests/fixtures/tls/client.pem").unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let own = hex(Some(thumbprint(der.as_ref()))).unwrap();
        let escaped =
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC);
        let cert = format!("By=spiffe://x;Cert=\"{escaped}\"");
        assert_eq!(hex(xfcc_thumbprint(&cert)).as_deref(), Some(own.as_str()));
        let agree = format!("Hash={own};Cert=\"{escaped}\"");
        assert_eq!(hex(xfcc_thumbprint(&agree)).as_deref(), Some(own.as_str()));
        let disagree = format!("Hash={ALICE};Cert=\"{escaped}\"");
        assert_eq!(xfcc_thumbprint(&disagree), None);
    }
}
