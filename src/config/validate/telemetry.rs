//! `[telemetry]`: where spans go, how many are kept, which requests are traced.

use super::*;

pub(super) fn telemetry(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::TelemetryFile>>,
) -> Option<TelemetryConfig> {
    let f = f?.get_ref();
    let http = match f.otlp_protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("grpc") => false,
        Some("http") => true,
        Some(other) => {
            let p = f.otlp_protocol.as_ref().expect("matched Some");
            cx.err(
                p.span(),
                "telemetry.otlp_protocol",
                format!("{other:?}: \"grpc\" or \"http\""),
            );
            false
        }
    };
    let endpoint = match f.otlp_endpoint.get_ref().parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty()) =>
        {
            Some(u)
        }
        _ => {
            cx.err(
                f.otlp_endpoint.span(),
                "telemetry.otlp_endpoint",
                format!(
                    "{:?} is not an http:// or https:// URL (e.g. \"http://127.0.0.1:4317\")",
                    f.otlp_endpoint.get_ref()
                ),
            );
            None
        }
    };
    let sample_ratio = match &f.trace_sample_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
        Some(r) => {
            cx.err(r.span(), "telemetry.trace_sample_ratio", "from 0 to 1");
            1.0
        }
    };
    let service_name = match &f.service_name {
        None => "bearward".to_owned(),
        Some(n) if !n.get_ref().is_empty() && n.get_ref().len() <= 256 => n.get_ref().clone(),
        Some(n) => {
            cx.err(n.span(), "telemetry.service_name", "1 to 256 characters");
            "bearward".to_owned()
        }
    };
    let timeout = cx.duration(
        &f.otlp_timeout,
        "telemetry.otlp_timeout",
        Duration::from_secs(10),
        (Duration::from_millis(100), Duration::from_secs(300)),
    );
    let max_queued_spans = match &f.max_queued_spans {
        None => 2048,
        Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            cx.err(n.span(), "telemetry.max_queued_spans", "from 1 to 1000000");
            2048
        }
    };
    Some(TelemetryConfig {
        endpoint: endpoint?,
        http,
        sample_ratio,
        service_name,
        timeout,
        max_queued_spans,
    })
}
