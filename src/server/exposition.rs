//! `/metrics` in the format the scraper asks for: OpenMetrics 1.0.0 or the Prometheus text
//! format 0.0.4, chosen from `Accept` (RFC 9110 section 12.5.1) and named in `Content-Type`.
//! Prometheus 3 refuses a scrape without a `Content-Type` it knows (unless the operator sets a
//! fallback), and a body that does not match the type it names.
//!
//! prometheus-client writes OpenMetrics only; the 0.0.4 text is made from it here. The two
//! differ in little: a counter's `# HELP`/`# TYPE` name carries `_total` in 0.0.4 (as its
//! samples do in both), 0.0.4 has no `# UNIT`, no `# EOF`, no `_created` samples, no exemplars,
//! no `info`/`stateset`/`gaugehistogram`/`unknown` types, and escapes only `\` and newlines in
//! `# HELP`.

use std::collections::HashMap;

/// The content types served.
pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub(super) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format for an `Accept` header: OpenMetrics when it weighs at least as much as the text
    /// format and is named (not only matched by a wildcard), else the text format, which is also
    /// the answer to no `Accept`, to one naming neither, and to `*/*` alone (as the Go client
    /// library answers).
    pub(super) fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Format::Text;
        };
        // (weight, named explicitly) of each format: the most specific range that matches it
        // gives its weight (RFC 9110: `text/plain` over `text/*` over `*/*`).
        let mut om: (f32, u8) = (0.0, 0);
        let mut text: (f32, u8) = (0.0, 0);
        for range in accept.split(',').take(64) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => {
                        q = v
                            .parse()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q))
                            .unwrap_or(0.0);
                    }
                    "version" => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            let (target, specificity) = match media.as_str() {
                "application/openmetrics-text"
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    (&mut om, 3)
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => (&mut text, 3),
                "application/*" => (&mut om, 2),
                "text/*" => (&mut text, 2),
                "*/*" => {
                    for t in [&mut om, &mut text] {
                        if t.1 < 1 {
                            *t = (q, 1);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if specificity > target.1 || (specificity == target.1 && q > target.0) {
                *target = (q, specificity);
            }
        }
        if om.0 > 0.0 && om.1 == 3 && om.0 >= text.0 {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub(super) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => TEXT,
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition.
pub(super) fn to_text(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind.trim());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = text_name(name, types.get(name).copied());
            // OpenMetrics escapes `"` in HELP; 0.0.4 does not.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind.trim() {
                k @ ("counter" | "gauge" | "histogram" | "summary") => k,
                "gaugehistogram" => "histogram",
                "info" | "stateset" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!(
                "# TYPE {} {kind}\n",
                text_name(name, types.get(name).copied())
            ));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let series = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(family) = series.strip_suffix("_created") {
            if matches!(
                types.get(family),
                Some(&("counter" | "histogram" | "summary" | "gaugehistogram"))
            ) {
                continue;
            }
        }
        // An exemplar follows ` # ` after the value (a label value may hold ` # ` too).
        let value_part = labels_end(line);
        match line[value_part..].find(" # ") {
            Some(i) => out.push_str(&line[..value_part + i]),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Where a sample line's label set ends (0 without one): its closing brace outside the quoted
/// values, in which `\\` and `\"` are escapes.
fn labels_end(line: &str) -> usize {
    let Some(open) = line.find('{').filter(|&i| !line[..i].contains(' ')) else {
        return 0;
    };
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in line.bytes().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return i + 1,
            _ => {}
        }
    }
    line.len()
}

/// A family's name in 0.0.4: counters by their samples' name, info metrics likewise.
fn text_name(name: &str, kind: Option<&str>) -> String {
    match kind {
        Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
        Some("info") if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What Prometheus 2.x, Prometheus 3 and the Go client library's scrapers send.
    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROMETHEUS_3_TEXT_FIRST: &str = "text/plain;version=1.0.0;escaping=allow-utf-8,text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.8,*/*;q=0.1";
    const PROMETHEUS_3_ONLY_TEXT: &str = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_the_weights() {
        use Format::*;
        for (accept, want) in [
            (None, Text),
            (Some(PROMETHEUS_2), OpenMetrics),
            (Some(PROMETHEUS_3_TEXT_FIRST), Text),
            (Some(PROMETHEUS_3_ONLY_TEXT), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("*/*"), Text),
            (Some("application/json"), Text),
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            (Some("application/openmetrics-text;q=0, text/plain"), Text),
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.3"),
                OpenMetrics,
            ),
            (
                Some("text/plain;q=0.4, application/openmetrics-text;q=0.3"),
                Text,
            ),
            (
                Some("APPLICATION/OpenMetrics-Text; Version=\"1.0.0\""),
                OpenMetrics,
            ),
        ] {
            assert_eq!(
                Format::negotiate(accept.map(str::as_bytes)),
                want,
                "{accept:?}"
            );
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let om = "# HELP bw_requests Requests by \\\"route\\\".\n# TYPE bw_requests counter\nbw_requests_total{route=\"/a\"} 3\nbw_requests_total{route=\"} # {\\\"\"} 1\nbw_requests_created{route=\"/a\"} 1.7e9\n# HELP bw_latency_seconds Latency.\n# TYPE bw_latency_seconds histogram\n# UNIT bw_latency_seconds seconds\nbw_latency_seconds_bucket{le=\"+Inf\"} 1 # {trace_id=\"a\"} 0.5\nbw_latency_seconds_sum 0.5\nbw_latency_seconds_count 1\n# HELP bw_build Build.\n# TYPE bw_build info\nbw_build_info{version=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP bw_requests_total Requests by \"route\".\n# TYPE bw_requests_total counter\nbw_requests_total{route=\"/a\"} 3\nbw_requests_total{route=\"} # {\\\"\"} 1\n# HELP bw_latency_seconds Latency.\n# TYPE bw_latency_seconds histogram\nbw_latency_seconds_bucket{le=\"+Inf\"} 1\nbw_latency_seconds_sum 0.5\nbw_latency_seconds_count 1\n# HELP bw_build_info Build.\n# TYPE bw_build_info gauge\nbw_build_info{version=\"1\"} 1\n"
        );
    }
}
