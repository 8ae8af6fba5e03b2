//! Reload: the gateway snapshot in force, swapped whole by a reload from the config file (on
//! SIGHUP, or when the file or the TLS files it names change).

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The gateway in force. A reload builds a whole new [`Gateway`] from a validated config and
/// swaps it in at once; each request loads the snapshot once, so requests in flight finish on
/// the snapshot they started with, and keep-alive connections pick up the new one on their next
/// request.
pub struct Live {
    pub(super) current: ArcSwap<Gateway>,
    /// Shared by every snapshot, so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// The config the listeners were built from.
    pub(super) boot: Arc<Config>,
    /// The digest ([`Live::digest`]) of the file content last applied or refused, by whichever
    /// noticed it first (SIGHUP, the file watch, an explicit reload): one change, one reload.
    pub(super) applied: Mutex<Option<[u8; 32]>>,
    /// Set on the first SIGTERM: `/readyz` answers 503 from then on.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// `POST /healthcheck/fail` (until `POST /healthcheck/ok`): `/readyz` answers 503 while the
    /// process serves on, so an operator can take one replica out of its load balancer.
    pub(super) held_out: std::sync::atomic::AtomicBool,
    /// When the process started serving, and what its reloads did, for `/status`.
    pub(super) started: std::time::Instant,
    pub(super) reloads: Mutex<Reloads>,
}

/// When the config in force was loaded, and the last reload's time and outcome (the error's
/// text when it was refused): what an operator asks first when a change did not take.
#[derive(Debug)]
pub(super) struct Reloads {
    pub(super) loaded: std::time::SystemTime,
    pub(super) last: Option<(std::time::SystemTime, Result<(), String>)>,
}

impl Default for Reloads {
    fn default() -> Reloads {
        Reloads {
            loaded: std::time::SystemTime::now(),
            last: None,
        }
    }
}

impl Live {
    /// The snapshot to use for one request.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Swaps in a new, already validated config. Issuers whose config did not change keep their
    /// keys and refresher.
    pub fn apply(&self, config: Config) {
        for key in self.boot.server.listening.changed(&config.server.listening) {
            tracing::warn!(
                key,
                "changed in the config file; takes effect after a restart"
            );
        }
        let old = self.current();
        let auth = Authenticator::rebuild(&config, Some(&old.auth), self.metrics.clone());
        let routes = config.routes.routes().len();
        if config.telemetry != old.config.telemetry {
            tracing::warn!(
                key = "telemetry",
                "changed in the config file; takes effect after a restart"
            );
        }
        // The tracer (its queue and export task) lives as long as the process.
        let next = Gateway::new(Arc::new(config), auth, self.metrics.clone())
            .with_tracer(old.tracer.clone())
            .with_keys_of(&old)
            .with_health_of(&old);
        next.start_background();
        self.current.store(Arc::new(next));
        tracing::info!(routes, "config reloaded");
    }

    /// The record of the reloads, for `/status`.
    pub(super) fn reload_record(&self) -> std::sync::MutexGuard<'_, Reloads> {
        self.reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record of what was applied last.
    fn applied(&self) -> std::sync::MutexGuard<'_, Option<[u8; 32]>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The config file's content and that of the TLS files the running config names, hashed:
    /// what a reload reads. `None` when the file cannot be read.
    fn digest(&self, path: &Path) -> Option<[u8; 32]> {
        let mut all = std::fs::read(path).ok()?;
        for f in self.current().config.watched_files() {
            all.extend_from_slice(f.as_os_str().as_encoded_bytes());
            all.extend(std::fs::read(f).unwrap_or_default());
        }
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &all);
        d.as_ref().try_into().ok()
    }

    /// Reads, validates and applies a config file. An invalid file changes nothing; each of
    /// its problems is logged. Either way the content is recorded as seen, so the file watch
    /// does not take it up a second time.
    pub fn reload_file(&self, path: &Path) -> Result<(), ConfigError> {
        // Read around the load: a write landing in between leaves nothing recorded, so the
        // watch sees a change and applies the newer content too; it is never lost.
        let before = std::fs::read(path).ok();
        let result = self.load_and_apply(path);
        let unchanged = before.is_some() && std::fs::read(path).ok() == before;
        // The digest holds the TLS files the config now in force names.
        *self.applied() = if unchanged { self.digest(path) } else { None };
        result
    }

    fn load_and_apply(&self, path: &Path) -> Result<(), ConfigError> {
        match Config::load(path) {
            Ok(config) => {
                for w in &config.warnings {
                    tracing::warn!("{w}");
                }
                self.apply(config);
                self.metrics.reload(true);
                let now = std::time::SystemTime::now();
                *self.reload_record() = Reloads {
                    loaded: now,
                    last: Some((now, Ok(()))),
                };
                Ok(())
            }
            Err(e) => {
                match &e {
                    ConfigError::Read { .. } => {
                        tracing::error!("reload failed, keeping the running config: {e}");
                    }
                    ConfigError::Invalid(problems) => {
                        for p in problems {
                            tracing::error!("reload failed, keeping the running config: {p}");
                        }
                    }
                }
                self.metrics.reload(false);
                // Bounded: a file with many problems is in the log whole.
                let full = e.to_string();
                let mut text = crate::gateway::cut(&full, 4096);
                if text.len() < full.len() {
                    text.push_str("...");
                }
                self.reload_record().last = Some((std::time::SystemTime::now(), Err(text)));
                Err(e)
            }
        }
    }
}

/// Reloads when the file's content changes: polled every `every`, applied once the new content
/// has been the same for two polls in a row (editors and ConfigMap updates write in steps).
/// Polling the content, not inotify, also follows the symlink swaps Kubernetes uses. The TLS
/// files the running config names count as part of it: a renewed client certificate or CA
/// bundle (cert-manager, a mounted Secret) takes effect the same way, without a restart.
pub async fn watch_config(live: Arc<Live>, path: PathBuf, every: Duration) {
    {
        let mut applied = live.applied();
        if applied.is_none() {
            *applied = live.digest(&path);
        }
    }
    let mut pending: Option<[u8; 32]> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = live.digest(&path);
        // A SIGHUP may have applied this content since the last poll: it is not a change then.
        match (now, pending) {
            (Some(d), Some(p)) if d == p => {
                pending = None;
                if Some(d) != *live.applied() {
                    tracing::info!(file = %path.display(), "config file or its TLS files changed; reloading");
                    reload_off_the_workers(&live, &path).await;
                }
            }
            (Some(d), _) if Some(d) != *live.applied() => pending = Some(d),
            _ => pending = None,
        }
    }
}

/// Reads, validates and builds the new config on the blocking pool: a large file (100,000
/// routes) takes seconds, and on a runtime with one worker thread that would stall every
/// request on the old config meanwhile.
async fn reload_off_the_workers(live: &Arc<Live>, path: &Path) {
    let (live, path) = (live.clone(), path.to_path_buf());
    if let Err(e) = tokio::task::spawn_blocking(move || live.reload_file(&path)).await {
        tracing::error!(error = %e, "reload task failed; keeping the running config");
    }
}

/// Reloads on every SIGHUP.
pub async fn reload_on_sighup(live: Arc<Live>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by editing the file instead");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received; reloading");
        reload_off_the_workers(&live, &path).await;
    }
}
