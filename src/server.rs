//! Listeners, the accept loop, the admin endpoints and graceful shutdown.

use crate::body::{self, Body};
use crate::config::Config;
use crate::h1guard::Guarded;
use crate::service::{ConnInfo, Gateway};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// A bound, not yet running bearward.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    gateway: Arc<Gateway>,
}

impl Server {
    /// Binds the listeners of a gateway's config.
    pub async fn bind(gateway: Arc<Gateway>) -> io::Result<Server> {
        let config = &gateway.config;
        let listener = TcpListener::bind(config.server.listen).await?;
        let admin = match config.server.admin_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        Ok(Server {
            listener,
            admin,
            gateway,
        })
    }

    /// The proxy listener's address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The gateway this server runs.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight requests up to
    /// `server.shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let config: Arc<Config> = self.gateway.config.clone();
        let builder = http_builder(&config);
        let graceful = GracefulShutdown::new();
        let admin_task = self.admin.map(|admin| {
            let gateway = self.gateway.clone();
            tokio::spawn(admin_loop(admin, gateway))
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    serve_connection(&builder, &graceful, stream, peer, self.gateway.clone());
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: no new connections; draining");
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(config.server.shutdown_grace) => {
                tracing::warn!("grace period over; closing remaining connections");
            }
        }
        if let Some(t) = admin_task {
            t.abort();
        }
        Ok(())
    }
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .max_buf_size(config.server.max_header_bytes.max(8192))
        .max_headers(config.server.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.server.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    if config.server.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
) {
    let _ = stream.set_nodelay(true);
    let (guarded, verdict) = Guarded::new(stream, gateway.config.server.max_header_bytes);
    let info = Arc::new(ConnInfo {
        peer,
        framing: Some(verdict),
        requests: Default::default(),
    });
    let service = service_fn(move |req: Request<Incoming>| {
        let gateway = gateway.clone();
        let info = info.clone();
        async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, &info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
        }
    });
}

async fn admin_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(gateway: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match gateway.auth.readiness() {
            Ok(detail) => (StatusCode::OK, detail),
            Err(detail) => (StatusCode::SERVICE_UNAVAILABLE, detail),
        },
        "/metrics" => (StatusCode::OK, gateway.metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp
}
