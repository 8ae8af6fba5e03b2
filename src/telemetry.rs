//! Logging setup and request metrics.

use crate::config::LogFormat;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber (`RUST_LOG` overrides the default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

type Key = (String, u16, &'static str, &'static str);

/// Request counters by route, status, decision and reason. Route names come from the config and
/// reasons from a fixed set, so the label space is bounded.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<Key, u64>>,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(
        &self,
        route: &str,
        status: u16,
        decision: &'static str,
        reason: &'static str,
        _latency: Duration,
        _upstream: Option<Duration>,
    ) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_owned(), status, decision, reason))
            .or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort();
        let mut out = String::new();
        out.push_str(
            "# HELP bearward_requests_total Requests by route, status, decision and reason.\n",
        );
        out.push_str("# TYPE bearward_requests_total counter\n");
        for ((route, status, decision, reason), n) in rows {
            let _ = writeln!(
                out,
                "bearward_requests_total{{route=\"{}\",status=\"{status}\",decision=\"{decision}\",reason=\"{reason}\"}} {n}",
                route.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        out
    }
}
