//! Active health checks of an upstream's endpoints (`health_check`): what HAProxy's
//! `option httpchk`, Envoy's `health_checks` and Traefik's `healthCheck` do. One task per
//! checked upstream asks every endpoint `GET path` each `interval`, over a connection of its
//! own (TLS as for requests) that is closed after the answer's head: a 2xx or 3xx head within
//! `timeout` passes. `unhealthy_threshold` failures in a row take the endpoint out of the
//! pool's rotation, `healthy_threshold` passes in a row bring it back; the rotation's rule for
//! "every endpoint out" (all are tried) is the pool's.
//!
//! The task holds the pool weakly: when a reload replaces the upstreams and the last request
//! on the old ones ends, the pool goes and the task with it at its next tick.

use super::pool::Pool;
use super::wire;
use crate::config::HealthCheck;
use bytes::BytesMut;
use http::Method;
use std::sync::{Arc, Weak};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of an answer read for its head.
const MAX_READ: usize = 64 * 1024;

/// Starts checking `pool`'s endpoints; the task ends once the pool is gone.
pub(super) fn spawn(pool: &Arc<Pool>, check: HealthCheck) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(pool);
    runtime.spawn(run(weak, check));
}

/// One endpoint's run of passes or failures.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    unhealthy: bool,
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result; `Some(new state)` when it changes the endpoint's.
    fn note(&mut self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.unhealthy && self.passes >= check.healthy_threshold {
                self.unhealthy = false;
                return Some(false);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if !self.unhealthy && self.failures >= check.unhealthy_threshold {
                self.unhealthy = true;
                return Some(true);
            }
        }
        None
    }
}

async fn run(weak: Weak<Pool>, check: HealthCheck) {
    let mut streaks = match weak.upgrade() {
        Some(pool) => {
            for (i, _) in pool.endpoint_addrs().enumerate() {
                pool.set_unhealthy(i, false);
            }
            vec![Streak::default(); pool.endpoint_addrs().count()]
        }
        None => return,
    };
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = weak.upgrade() else { return };
        let probes = (0..streaks.len()).map(|i| probe(&pool, i, &check));
        let results = futures_util::future::join_all(probes).await;
        for ((i, streak), result) in streaks.iter_mut().enumerate().zip(results) {
            let endpoint = pool.endpoint_addrs().nth(i).unwrap_or("-");
            if let Err(reason) = result {
                pool.metrics()
                    .health_check_failure(pool.name(), endpoint, reason);
                tracing::debug!(upstream = %pool.name(), endpoint, reason, "health check failed");
            }
            match streak.note(result.is_ok(), &check) {
                Some(true) => {
                    let reason = result.err().unwrap_or("-");
                    tracing::warn!(upstream = %pool.name(), endpoint, reason, failures = streak.failures, path = %check.path, "upstream endpoint failed its health checks; out of the rotation");
                    pool.set_unhealthy(i, true);
                }
                Some(false) => {
                    tracing::info!(upstream = %pool.name(), endpoint, passes = streak.passes, "upstream endpoint passes its health checks again; back in the rotation");
                    pool.set_unhealthy(i, false);
                }
                None => {}
            }
        }
    }
}

/// One check of one endpoint: `Err` says why it failed.
async fn probe(pool: &Pool, endpoint: usize, check: &HealthCheck) -> Result<(), &'static str> {
    let ask = async {
        let mut stream = pool
            .open(endpoint)
            .await
            .map_err(super::ProxyError::reason)?;
        stream
            .write_all(&check.request)
            .await
            .map_err(|_| "write_failed")?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match wire::parse_head(&mut buf, &Method::GET) {
                Ok(Some(head)) if head.is_interim() => continue,
                Ok(Some(head)) => {
                    let status = head.status.as_u16();
                    return match status {
                        200..=399 => Ok(()),
                        500..=599 => Err("status_5xx"),
                        _ => Err("status_4xx"),
                    };
                }
                Ok(None) if buf.len() < MAX_READ => {}
                Ok(None) | Err(_) => return Err("bad_response"),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("closed"),
                Ok(_) => {}
                Err(_) => return Err("read_failed"),
            }
        }
    };
    tokio::time::timeout(check.timeout, ask)
        .await
        .unwrap_or(Err("timeout"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thresholds_take_an_endpoint_out_and_bring_it_back() {
        let check = HealthCheck {
            request: Vec::new(),
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 3,
        };
        let mut s = Streak::default();
        let mut run = |results: &[bool]| -> Vec<Option<bool>> {
            results.iter().map(|&r| s.note(r, &check)).collect()
        };
        // One failure between passes does not take it out.
        assert_eq!(run(&[true, false, true, false]), [None; 4]);
        assert_eq!(run(&[false]), [Some(true)]);
        assert_eq!(run(&[false, true, true, false]), [None; 4]);
        assert_eq!(
            run(&[true, true, true, true]),
            [None, None, Some(false), None]
        );
    }
}
