//! The listeners and their bounds: the accept loop with `max_connections` and graceful drain
//! (here), one client connection ([`conn`]), reloads ([`reload`]), the admin endpoints
//! ([`admin`]).

mod admin;
mod conn;
mod exposition;
mod ext_authz;
mod memory;
mod proxy_protocol;
mod reload;
mod workers;

pub use reload::{reload_on_sighup, watch_config, Live};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::request::ledger::InFlight;
use arc_swap::ArcSwap;
use conn::{handshake, serve_connection, Conn, Drain, Protocols};
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use workers::Workers;

/// A bound, not yet running bearward.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    /// `[decision] listen`: the ingresses' forward-auth / ext_authz listener.
    decision: Option<TcpListener>,
    /// `[decision] grpc_listen`: Envoy's ext_authz v3 over gRPC.
    grpc: Option<TcpListener>,
    live: Arc<Live>,
}

impl Server {
    /// Binds the listeners of a gateway's config.
    pub async fn bind(gateway: Arc<Gateway>) -> io::Result<Server> {
        let config = gateway.config.clone();
        let backlog = config.server.listening.listen_backlog;
        let listener = bind(config.server.listening.listen, backlog, "server.listen")?;
        let admin = match config.server.listening.admin_listen {
            Some(a) => Some(bind(a, backlog, "server.admin_listen")?),
            None => None,
        };
        let decision = match &config.decision {
            Some(d) => Some(bind(d.listen, backlog, "decision.listen")?),
            None => None,
        };
        let grpc = match config.decision.as_ref().and_then(|d| d.grpc_listen) {
            Some(a) => Some(bind(a, backlog, "decision.grpc_listen")?),
            None => None,
        };
        let live = Arc::new(Live {
            metrics: gateway.metrics.clone(),
            current: ArcSwap::new(gateway),
            boot: config,
            applied: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            held_out: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            reloads: Default::default(),
        });
        Ok(Server {
            listener,
            admin,
            decision,
            grpc,
            live,
        })
    }

    /// The reload handle.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// The proxy listener's address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The gateway in force now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.current()
    }

    /// The ext_authz gRPC listener's address, if configured.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The decision listener's address, if configured.
    pub fn decision_addr(&self) -> Option<SocketAddr> {
        self.decision.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight requests up to
    /// `server.shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        self.run_until(shutdown, std::future::pending()).await
    }

    /// Serves until `first` completes (the first SIGTERM); then `/readyz` answers 503 while
    /// bearward goes on accepting and serving for `server.shutdown_delay`, or until `second`
    /// completes; then it stops accepting and gives in-flight requests up to
    /// `server.shutdown_grace` to finish.
    pub async fn run_until(
        self,
        first: impl Future<Output = ()>,
        second: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let config: Arc<Config> = self.live.boot.clone();
        let delay = config.server.listening.shutdown_delay;
        let live = self.live.clone();
        let shutdown = async move {
            first.await;
            live.draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutting down: /readyz answers 503; still accepting for server.shutdown_delay"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = second => tracing::info!("a second signal ends server.shutdown_delay"),
                }
            }
        };
        let protocols = Arc::new(Protocols::new(&config));
        let metrics = self.live.metrics.clone();
        let workers = Arc::new(Workers::start(
            crate::worker::count(config.server.listening.worker_threads),
            &metrics,
        )?);
        let (drain_signal, _) = watch::channel(false);
        // Every connection task holds a clone; recv() returns None once all have ended.
        let (alive, mut all_done) = mpsc::channel::<()>(1);
        let admin_task = self
            .admin
            .map(|admin| tokio::spawn(admin::admin_loop(admin, self.live.clone())));
        let max_connections = connection_limit(&config);
        metrics.connections_max.set(max_connections as i64);
        let slots = Arc::new(Semaphore::new(max_connections));
        let in_flight = InFlight::new(
            metrics.requests_in_flight.clone(),
            config.server.listening.max_requests_in_flight,
        );
        let mut last_warned: Option<tokio::time::Instant> = None;
        let trimmer = memory::trimmer(metrics.connections_parked.clone());
        let shared = Shared {
            signal: drain_signal.subscribe(),
            alive: alive.clone(),
            slots: slots.clone(),
            in_flight: in_flight.clone(),
            workers: workers.clone(),
        };
        let decision_task = self.decision.map(|listener| {
            tokio::spawn(decision_loop(
                listener,
                protocols.clone(),
                self.live.clone(),
                shared.clone(),
            ))
        });
        let grpc_task = self.grpc.map(|listener| {
            tokio::spawn(ext_authz::grpc_loop(
                listener,
                protocols.clone(),
                self.live.clone(),
                shared.clone(),
            ))
        });
        drop(shared);
        tokio::pin!(shutdown);
        loop {
            // A slot first, then accept: at the limit the listener is not polled, so new
            // connections wait in the kernel's backlog (nginx's worker_connections, Envoy's
            // downstream connection limit) instead of being accepted and starved.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics.connections_deferred.inc();
                    if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        last_warned = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            max_connections,
                            "max_connections are open; new connections wait in the listen backlog"
                        );
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                        _ = &mut shutdown => break,
                    }
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            metrics.accept_errors.inc();
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let drain = Drain { signal: drain_signal.subscribe(), _alive: alive.clone() };
                    let slot = Held::new(slot, &metrics.connections_open);
                    let conn = Conn { stream, peer, slot, in_flight: in_flight.clone(), decision: false };
                    serve_connection(&workers, protocols.clone(), drain, conn, self.live.clone());
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        for t in decision_task.iter().chain(&grpc_task) {
            t.abort();
        }
        tracing::info!(grace = ?config.server.listening.shutdown_grace, "shutting down: no new connections; draining");
        let _ = drain_signal.send(true);
        drop(alive);
        tokio::select! {
            _ = all_done.recv() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(config.server.listening.shutdown_grace) => {
                tracing::warn!("grace period over; closing remaining connections");
            }
        }
        for t in admin_task.into_iter().chain(trimmer) {
            t.abort();
        }
        Ok(())
    }
}

/// A listening socket with `server.listen_backlog` (tokio's `TcpListener::bind` listens with
/// 128). SO_REUSEADDR as tokio sets it, so a restart binds while old connections sit in
/// TIME_WAIT. An error names the config key and the address ("server.listen 0.0.0.0:8080:
/// Address already in use"), which the operator can act on.
fn bind(addr: SocketAddr, backlog: u32, key: &str) -> io::Result<TcpListener> {
    bind_socket(addr, backlog)
        .map_err(|e| io::Error::new(e.kind(), format!("{key} = \"{addr}\": {e}")))
}

fn bind_socket(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What a side listener's connections (decision, ext_authz gRPC) share with the proxy
/// listener's: the connection slots, the in-flight limit and the drain.
#[derive(Clone)]
struct Shared {
    signal: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    slots: Arc<Semaphore>,
    in_flight: InFlight,
    workers: Arc<Workers>,
}

impl Shared {
    /// The next connection on `listener` once a slot is free, with its drain handle and slot;
    /// `None` once the server stops.
    async fn accept(
        &self,
        listener: &TcpListener,
        metrics: &crate::telemetry::Metrics,
        name: &'static str,
    ) -> Option<(tokio::net::TcpStream, SocketAddr, Drain, Held)> {
        loop {
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let drain = Drain {
                        signal: self.signal.clone(),
                        _alive: self.alive.clone(),
                    };
                    return Some((
                        stream,
                        peer,
                        drain,
                        Held::new(slot, &metrics.connections_open),
                    ));
                }
                Err(e) => {
                    metrics.accept_errors.inc();
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The decision listener's accept loop.
async fn decision_loop(
    listener: TcpListener,
    protocols: Arc<Protocols>,
    live: Arc<Live>,
    shared: Shared,
) {
    let metrics = live.metrics.clone();
    while let Some((stream, peer, drain, slot)) =
        shared.accept(&listener, &metrics, "decision").await
    {
        let conn = Conn {
            stream,
            peer,
            slot,
            in_flight: shared.in_flight.clone(),
            decision: true,
        };
        serve_connection(
            &shared.workers,
            protocols.clone(),
            drain,
            conn,
            live.clone(),
        );
    }
}

/// File descriptors kept for everything but client connections: the admin listener and its
/// connections, JWKS and discovery fetches, the config and TLS files, the log.
const RESERVED_FDS: u64 = 128;

/// The soft `RLIMIT_NOFILE`, read from `/proc` (no libc binding, no unsafe code); `None` where
/// there is no such file.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// `max_connections` when the config sets none: what the file-descriptor limit leaves after
/// [`RESERVED_FDS`], halved, since each client connection may hold an upstream connection too.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        None => 10_000,
        Some(n) => (n.min(20_000_000).saturating_sub(RESERVED_FDS) / 2).max(16) as usize,
    }
}

/// The connection limit in force, with a warning when the configured one cannot be reached
/// before the process runs out of file descriptors (accept then fails with EMFILE first).
fn connection_limit(config: &Config) -> usize {
    let nofile = open_files_limit();
    let fits = default_max_connections(nofile);
    match config.server.listening.max_connections {
        None => fits,
        Some(n) => {
            if n > fits {
                tracing::warn!(
                    max_connections = n,
                    open_files_limit = nofile,
                    "max_connections is above what the file-descriptor limit allows \
                     (about {fits} with their upstream connections); raise LimitNOFILE or \
                     --ulimit nofile"
                );
            }
            n
        }
    }
}

/// A permit counted in a gauge while it is held: a connection slot or a request in flight.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> Held {
        gauge.inc();
        Held {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_room_for_upstream_sockets_and_the_rest() {
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(65536)), 32704);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(Some(u64::MAX)), 9_999_936);
        assert_eq!(default_max_connections(None), 10_000);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
