//! The way out to an IdP: directly, or through the company's egress proxy. JWKS, discovery and
//! introspection calls follow `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (curl's
//! rules, through hyper-util's proxy matcher), or the issuer's own `proxy`, which wins and
//! applies to every call of that issuer. HTTPS goes through an HTTP `CONNECT` tunnel (TLS is
//! end to end with the IdP, verified as without a proxy); plain HTTP (loopback and
//! `allow_insecure_http` only) is sent to the proxy in absolute form.
//!
//! Only `http://` proxies are spoken to: one named `https://` or `socks5://` in the
//! environment fails each call with a message saying so, rather than going around it.

use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which proxy, if any, a client's calls go through.
#[derive(Debug, Clone)]
pub enum Route {
    /// Straight to the destination (the OTLP exporter, tests).
    Direct,
    /// As the environment says: `HTTPS_PROXY` and the others, read once per client.
    Environment,
    /// Every call through this `http://` proxy (an issuer's `proxy`).
    Proxy(http::Uri),
}

/// A connector that opens TCP to the destination or to a proxy, as [`Route`] says.
#[derive(Clone)]
pub struct Egress {
    http: HttpConnector,
    matcher: Option<Arc<Matcher>>,
}

impl Egress {
    pub fn new(route: &Route) -> Egress {
        let mut http = HttpConnector::new();
        // TLS is layered on top by hyper-rustls, which hands `https` URIs down here.
        http.enforce_http(false);
        http.set_nodelay(true);
        let matcher = match route {
            Route::Direct => None,
            Route::Environment => Some(Matcher::from_env()),
            Route::Proxy(uri) => Some(Matcher::builder().all(uri.to_string()).build()),
        };
        Egress {
            http,
            matcher: matcher.map(Arc::new),
        }
    }
}

/// A TCP connection to the destination, or to a proxy that forwards plain HTTP to it.
pub struct EgressStream {
    io: TokioIo<TcpStream>,
    /// Requests on it go in absolute form (plain HTTP through a proxy).
    proxied: bool,
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for EgressStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Service<http::Uri> for Egress {
    type Response = EgressStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.matcher.as_ref().and_then(|m| m.intercept(&dst));
        Box::pin(async move {
            let Some(proxy) = intercept else {
                let io = http.call(dst).await?;
                return Ok(EgressStream { io, proxied: false });
            };
            if proxy.uri().scheme_str() != Some("http") {
                return Err(format!(
                    "proxy {}://{}: only http:// proxies are supported",
                    proxy.uri().scheme_str().unwrap_or(""),
                    proxy.uri().authority().map_or("", |a| a.as_str())
                )
                .into());
            }
            if dst.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst).await.map_err(|e| {
                    format!(
                        "CONNECT through proxy {}: {e}",
                        proxy.uri().authority().map_or("", |a| a.as_str())
                    )
                })?;
                Ok(EgressStream { io, proxied: false })
            } else {
                // Plain HTTP: the proxy gets the request itself, in absolute form. Its
                // credentials would go in Proxy-Authorization on each request, which the
                // legacy client does not add; such a proxy is refused rather than sent
                // requests it will answer 407.
                if proxy.basic_auth().is_some() {
                    return Err(
                        "plain http through a proxy with credentials is not supported; \
                                use https to the IdP"
                            .into(),
                    );
                }
                let io = http.call(proxy.uri().clone()).await?;
                Ok(EgressStream { io, proxied: true })
            }
        })
    }
}

/// An error and its causes, `: `-joined: hyper's client error alone says only "client error
/// (Connect)", where its sources say which proxy or address refused and why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
