//! The admin listener: `/healthz`, `/readyz`, `/metrics` (in the format the scraper asks for:
//! [`exposition`]), `/status` (what runs: the config's digest and reloads, each issuer's keys,
//! each upstream's endpoints), `/logging` (levels changed at runtime), `/.well-known/jwks.json`
//! (the identity assertions' public keys).

use super::exposition::{self, Format};
use super::reload::Live;
use crate::body::{self, Body};
use crate::gateway::Gateway;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Admin connections open at once: enough for probes and scrapers, and a bound so that a
/// flood on the admin port cannot take the file descriptors the proxy needs.
const MAX_ADMIN_CONNECTIONS: usize = 64;

pub(super) async fn admin_loop(listener: TcpListener, live: Arc<Live>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let live = live.clone();
        // The admin port gets the same slowloris bound as the main one. Its traffic is light, so
        // hyper's own per-request timer is fine here.
        let header_read_timeout = live.current().config.server.listening.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = live.current();
                let live = live.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&live, &gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(live: &Live, gateway: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let draining = live.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut content_type = "text/plain; charset=utf-8";
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        // Shutting down: out of the endpoints first, while requests still in the load
        // balancers' pipes are served (server.shutdown_delay).
        "/readyz" if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        ),
        "/readyz" if live.held_out.load(std::sync::atomic::Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "held out of rotation (POST /healthcheck/ok to return)\n".to_owned(),
        ),
        "/healthcheck/fail" | "/healthcheck/ok" => hold_out(live, req),
        "/readyz" => {
            // A failing decision point is named, not a reason to leave the load balancer (its
            // kept answers serve; every replica shares it).
            let pdps: String = gateway.pdps.iter().map(|p| p.health() + "\n").collect();
            match gateway.auth.readiness() {
                Ok(detail) => (StatusCode::OK, detail + &pdps),
                Err(detail) => (StatusCode::SERVICE_UNAVAILABLE, detail + &pdps),
            }
        }
        "/metrics" => {
            gateway.auth.export_gauges();
            gateway.export_gauges();
            let format = Format::negotiate(
                req.headers()
                    .get(http::header::ACCEPT)
                    .map(http::HeaderValue::as_bytes),
            );
            content_type = format.content_type();
            let openmetrics = gateway.metrics.render();
            let body = match format {
                Format::OpenMetrics => openmetrics,
                Format::Text => exposition::to_text(&openmetrics),
            };
            (StatusCode::OK, body)
        }
        "/status" => {
            content_type = "application/json";
            (
                StatusCode::OK,
                status(live, gateway, draining).to_string() + "\n",
            )
        }
        "/logging" => logging(req),
        // RFC 7517 5: the keys identity assertions are signed with.
        crate::assertion::JWKS_PATH if !gateway.assertion_keys.is_empty() => {
            return crate::assertion::jwks_response(&gateway.assertion_keys);
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, POST"),
        );
    }
    resp
}

/// `GET /status`: what this process runs, as Envoy's `/server_info` and `/clusters` and
/// Caddy's `/config/` tell: version and uptime, the config file and the SHA-256 of the text in
/// force (compare it with `sha256sum` of the file to see whether an edit took), when it was
/// loaded and what the last reload did (its error when it was refused), each issuer's keys
/// and each upstream's endpoints. Key ids and addresses only: no secret, no key material.
fn status(live: &Live, gateway: &Gateway, draining: bool) -> serde_json::Value {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let reloads = live.reload_record();
    let last = reloads.last.as_ref().map(|(at, outcome)| {
        serde_json::json!({
            "at": unix(*at),
            "outcome": if outcome.is_ok() { "ok" } else { "error" },
            "error": outcome.as_ref().err(),
        })
    });
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("BEARWARD_COMMIT"),
        "uptime_seconds": live.started.elapsed().as_secs(),
        "draining": draining,
        "held_out": live.held_out.load(std::sync::atomic::Ordering::Relaxed),
        "config": {
            "file": gateway.config.source,
            "sha256": crate::jose::hex(&gateway.config.digest),
            "loaded_at": unix(reloads.loaded),
            "last_reload": last,
            "routes": gateway.config.routes.routes().len(),
        },
        "issuers": gateway.auth.status(),
        "upstreams": gateway.upstreams.status(),
    })
}

/// `POST /healthcheck/fail` and `POST /healthcheck/ok` (Envoy's): `/readyz` fails, or answers
/// again as the keys and the rest say, while requests are served all along (`GET`: which). To
/// take one replica out of its load balancer to look at it, or before work on its node, without
/// a restart.
fn hold_out(live: &Live, req: &Request<Incoming>) -> (StatusCode, String) {
    let held = live.held_out.load(std::sync::atomic::Ordering::Relaxed);
    match *req.method() {
        http::Method::POST => {}
        http::Method::GET => {
            let state = if held { "held out\n" } else { "in rotation\n" };
            return (StatusCode::OK, state.to_owned());
        }
        _ => return (StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n".to_owned()),
    }
    let out = req.uri().path() == "/healthcheck/fail";
    let was = live
        .held_out
        .swap(out, std::sync::atomic::Ordering::Relaxed);
    if was != out {
        tracing::warn!(
            held_out = out,
            "readiness {} by the admin endpoint",
            if out { "failed" } else { "restored" }
        );
    }
    let said = if out {
        "held out: /readyz answers 503 until POST /healthcheck/ok\n"
    } else {
        "back: /readyz answers as the keys and upstreams say\n"
    };
    (StatusCode::OK, said.to_owned())
}

/// `GET /logging`: the filter in force; `POST /logging?level=debug` (or `?bearward::auth=trace`,
/// or `?reset`): change bearward's levels without a restart ([`telemetry::set_log_levels`]).
fn logging(req: &Request<Incoming>) -> (StatusCode, String) {
    match *req.method() {
        http::Method::GET => match crate::telemetry::log_levels() {
            Some(levels) => (StatusCode::OK, format!("{levels}\n")),
            None => (StatusCode::NOT_FOUND, "logging is not set up\n".to_owned()),
        },
        http::Method::POST => {
            match crate::telemetry::set_log_levels(req.uri().query().unwrap_or("")) {
                Ok(levels) => (StatusCode::OK, format!("{levels}\n")),
                Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
            }
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n".to_owned()),
    }
}
