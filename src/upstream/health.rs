//! Active health checks of an upstream's endpoints (`health_check`): what HAProxy's
//! `option httpchk`, Envoy's `health_checks` and Traefik's `healthCheck` do. One task per
//! checked upstream asks every endpoint each `interval`, over a connection of its own (TLS as
//! for requests) that is closed after the answer: `GET path` passes on a 2xx or 3xx head within
//! `timeout` (over HTTP/2 for an HTTP/2 upstream), gRPC's `grpc.health.v1.Health/Check` on
//! `SERVING` with `grpc-status` 0. `unhealthy_threshold` failures in a row take the endpoint out of the
//! pool's rotation, `healthy_threshold` passes in a row bring it back; the rotation's rule for
//! "every endpoint out" (all are tried) is the pool's.
//!
//! The task holds the pool weakly: when a reload replaces the upstreams and the last request
//! on the old ones ends, the pool goes and the task with it at its next tick.

use super::pool::Pool;
use super::wire;
use crate::config::{HealthAsk, HealthCheck};
use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Weak};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of an answer read: its head, or a gRPC answer's whole body.
const MAX_READ: usize = 64 * 1024;

/// `grpc.health.v1.HealthCheckRequest` (grpc/grpc `src/proto/grpc/health/v1/health.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`: `status` 1 is `SERVING`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

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
    // Endpoints start in, or as a reload's previous checks left them.
    let mut streaks: Vec<Streak> = match weak.upgrade() {
        Some(pool) => (0..pool.endpoint_count())
            .map(|i| {
                let unhealthy = pool.is_unhealthy(i);
                pool.set_unhealthy(i, unhealthy);
                Streak {
                    unhealthy,
                    ..Streak::default()
                }
            })
            .collect(),
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
            let endpoint = pool.endpoint_addr(i);
            if let Err(reason) = result {
                pool.metrics()
                    .health_check_failure(pool.name(), endpoint, reason);
                tracing::debug!(upstream = %pool.name(), endpoint, reason, "health check failed");
            }
            match streak.note(result.is_ok(), &check) {
                Some(true) => {
                    let reason = result.err().unwrap_or("-");
                    tracing::warn!(upstream = %pool.name(), endpoint, reason, failures = streak.failures, asks = %check.asks, "upstream endpoint failed its health checks; out of the rotation");
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
        let stream = pool
            .open(endpoint, true)
            .await
            .map_err(super::ProxyError::reason)?;
        match (&check.asks, check.h2) {
            (HealthAsk::Path(path), false) => ask_h1(stream, path, check).await,
            (asks, _) => ask_h2(stream, asks, check).await,
        }
    };
    tokio::time::timeout(check.timeout, ask)
        .await
        .unwrap_or(Err("timeout"))
}

/// What a 2xx or 3xx passes and other statuses fail as.
fn by_status(status: http::StatusCode) -> Result<(), &'static str> {
    match status.as_u16() {
        200..=399 => Ok(()),
        500..=599 => Err("status_5xx"),
        _ => Err("status_4xx"),
    }
}

/// `GET path` over HTTP/1.1, read to the answer's head.
async fn ask_h1(
    mut stream: crate::tls::Stream,
    path: &str,
    check: &HealthCheck,
) -> Result<(), &'static str> {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bearward-health-check\r\n\
         Connection: close\r\n\r\n",
        check.authority
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|_| "write_failed")?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match wire::parse_head(&mut buf, &Method::GET) {
            Ok(Some(head)) if head.is_interim() => continue,
            Ok(Some(head)) => return by_status(head.status),
            Ok(None) if buf.len() < MAX_READ => {}
            Ok(None) | Err(_) => return Err("bad_response"),
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("closed"),
            Ok(_) => {}
            Err(_) => return Err("read_failed"),
        }
    }
}

/// `GET path`, or gRPC's `Check`, over HTTP/2 (hyper's client on this one connection).
async fn ask_h2(
    stream: crate::tls::Stream,
    asks: &HealthAsk,
    check: &HealthCheck,
) -> Result<(), &'static str> {
    if check.scheme == http::uri::Scheme::HTTPS && !stream.alpn_h2() {
        return Err("upstream_tls");
    }
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(64 * 1024)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake_failed")?;
    // Ends when the sender is dropped, with this check.
    tokio::spawn(conn);
    let (path, body, grpc) = match asks {
        HealthAsk::Path(p) => (p.as_str(), Bytes::new(), false),
        HealthAsk::Grpc(service) => {
            let msg = prost::Message::encode_to_vec(&HealthCheckRequest {
                service: service.clone(),
            });
            // A gRPC message: uncompressed, its length, the message (gRPC over HTTP/2).
            let mut framed = Vec::with_capacity(5 + msg.len());
            framed.push(0);
            framed.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
            framed.extend_from_slice(&msg);
            ("/grpc.health.v1.Health/Check", framed.into(), true)
        }
    };
    let uri = http::Uri::builder()
        .scheme(check.scheme.clone())
        .authority(check.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| "bad_request")?;
    let mut req = http::Request::builder()
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(http::header::USER_AGENT, "bearward-health-check");
    req = match grpc {
        true => req
            .method(Method::POST)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers"),
        false => req.method(Method::GET),
    };
    let req = req.body(Full::new(body)).map_err(|_| "bad_request")?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|_| "request_failed")?;
    if !grpc {
        return by_status(resp.status());
    }
    if resp.status() != http::StatusCode::OK {
        return by_status(resp.status()).and(Err("bad_response"));
    }
    let (parts, body) = resp.into_parts();
    let got = Limited::new(body, MAX_READ)
        .collect()
        .await
        .map_err(|_| "bad_response")?;
    // grpc-status is a trailer, or a header of a trailers-only answer.
    let trailers = got.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"));
    if status.is_none_or(|s| s != "0") {
        return Err("grpc_status");
    }
    let mut data = got.to_bytes();
    if data.len() < 5 || data[0] != 0 {
        return Err("bad_response");
    }
    data.advance(1);
    let len = usize::try_from(data.get_u32()).unwrap_or(usize::MAX);
    if data.len() != len {
        return Err("bad_response");
    }
    match <HealthCheckResponse as prost::Message>::decode(data) {
        Ok(r) if r.status == SERVING => Ok(()),
        Ok(_) => Err("grpc_not_serving"),
        Err(_) => Err("bad_response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thresholds_take_an_endpoint_out_and_bring_it_back() {
        let check = HealthCheck {
            asks: HealthAsk::Path("/healthz".into()),
            h2: false,
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("api.internal"),
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
