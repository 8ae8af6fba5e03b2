//! `/metrics` as scrapers see it: the format chosen from `Accept` and named in `Content-Type`,
//! each body checked by a real parser (Debian's `promtool check metrics` for the text format
//! 0.0.4, the OpenMetrics parser of the Python client library for OpenMetrics), a real
//! Prometheus scraping bearward, and the shipped dashboard and alert rules naming only metrics
//! bearward exports, their queries accepted by that Prometheus.

mod common;

use common::{basic_config, client, get, Gateway, Upstream};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What Prometheus 2.x sends (Prometheus 3 puts the text format first by default).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn with_traffic() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let c = client();
    for path in ["/public/a", "/api/a", "/internal/a", "/nowhere"] {
        get(&c, &gw.url(path), &[]).await;
    }
    (up, gw)
}

async fn metrics(gw: &Gateway, accept: Option<&str>) -> (String, String) {
    let url = format!("http://{}/metrics", gw.admin.unwrap());
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let answer = get(&client(), &url, &headers).await;
    let content_type = answer.headers["content-type"].to_str().unwrap().to_owned();
    (content_type, answer.body)
}

/// Runs `cmd` with `input` on its stdin; its exit status and what it printed.
fn run_with_input(cmd: &mut Command, input: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the checker runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn the_text_format_by_default_and_passes_promtool() {
    let (_up, gw) = with_traffic().await;
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let (content_type, body) = metrics(&gw, accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE bearward_requests_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("reason=\"missing_token\"") && body.contains("reason=\"route_denied\""),
            "{body}"
        );
        let (ok, out) = run_with_input(Command::new("promtool").args(["check", "metrics"]), &body);
        assert!(ok && out.trim().is_empty(), "promtool: {out}\n{body}");
    }
}

#[tokio::test]
async fn openmetrics_when_asked_and_the_reference_parser_takes_it() {
    let (_up, gw) = with_traffic().await;
    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text; version=1.0.0",
    ] {
        let (content_type, body) = metrics(&gw, Some(accept)).await;
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        // The OpenMetrics parser of prometheus_client (Python): strict about the format
        // (`# EOF`, counter suffixes, histogram buckets); it raises on any fault.
        let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfamilies = list(parse(sys.stdin.read()))\nprint(len(families), 'families')\n";
        let (ok, out) = run_with_input(Command::new("python3").args(["-c", script]), &body);
        assert!(ok && out.contains("families"), "{out}\n{body}");
    }
    // The text format answers what Prometheus 3 asks first.
    let (content_type, _) = metrics(
        &gw,
        Some("text/plain;version=1.0.0;escaping=allow-utf-8,text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.8,*/*;q=0.1"),
    )
    .await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
}

/// A real Prometheus on a loopback port, scraping `target` every second.
struct Prometheus {
    child: std::process::Child,
    api: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = |port: u16| {
            std::env::temp_dir().join(format!("bearward-prometheus-{}-{port}", std::process::id()))
        };
        let what = "prometheus (Debian's prometheus package)";
        let (child, [port]) = common::spawn_holding_tidy(
            what,
            |[port]| {
                let dir = dir(port);
                std::fs::create_dir_all(&dir).unwrap();
                let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bearward\n    static_configs:\n      - targets: [\"{target}\"]\n"
            );
                std::fs::write(dir.join("prometheus.yml"), config).unwrap();
                let mut cmd = Command::new("prometheus");
                cmd.arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
                cmd
            },
            |[port]| {
                let _ = std::fs::remove_dir_all(dir(port));
            },
        );
        let dir = dir(port);
        Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}/api/v1"),
            dir,
        }
    }

    /// An instant query: the API's JSON answer (`status` "error" for a query it refuses).
    async fn query(&self, promql: &str) -> serde_json::Value {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        self.api_get(&format!("query?query={q}")).await
    }

    async fn api_get(&self, path: &str) -> serde_json::Value {
        let url = format!("{}/{path}", self.api);
        for _ in 0..50 {
            let c = client();
            let req = http::Request::get(&url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            // Prometheus answers 503 ("Service Unavailable", not JSON) until its storage is
            // open, which a cold machine (CI's first run) takes longer to do.
            if let Ok(resp) = c.request(req).await {
                if resp.status() != http::StatusCode::SERVICE_UNAVAILABLE {
                    use http_body_util::BodyExt;
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    return serde_json::from_slice(&body).unwrap_or_else(|e| {
                        panic!("JSON from the API: {e}: {}", String::from_utf8_lossy(&body))
                    });
                }
            }
            // Still starting.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Prometheus never answered");
    }

    /// The samples of a query once it has any, at most 30 s.
    async fn wait_for(&self, promql: &str) -> Vec<serde_json::Value> {
        for _ in 0..150 {
            let answer = self.query(promql).await;
            if let Some(result) = answer["data"]["result"].as_array() {
                if !result.is_empty() {
                    return result.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no samples for {promql}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        common::stop_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every `bearward_*` series name bearward can export: the families registered in
/// src/telemetry.rs, with their unit and the suffixes of their samples.
fn exported_series() -> std::collections::BTreeSet<String> {
    let source = include_str!("../src/telemetry.rs");
    let mut out = std::collections::BTreeSet::new();
    for (i, _) in source.match_indices("registry.register") {
        let call = &source[i..];
        let with_unit = call.starts_with("registry.register_with_unit(");
        let name = call.split('"').nth(1).unwrap();
        let end = call.find(");").unwrap();
        let unit = if with_unit {
            assert!(call[..end].contains("Unit::Seconds"), "{}", &call[..end]);
            "_seconds"
        } else {
            ""
        };
        let family = format!("bearward_{name}{unit}");
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            out.insert(format!("{family}{suffix}"));
        }
    }
    assert!(out.contains("bearward_requests_total"), "{out:?}");
    out
}

/// The `bearward_*` names in a text.
fn names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("bearward_") {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// The queries of the shipped dashboard, its variables given values Prometheus takes.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/monitoring/grafana-dashboard.json")).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$instance", ".*"),
            );
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[tokio::test]
async fn the_shipped_dashboard_and_rules_name_only_metrics_bearward_exports() {
    let exported = exported_series();
    let rules = include_str!("../deploy/monitoring/alerts.yaml");
    let dashboard = include_str!("../deploy/monitoring/grafana-dashboard.json");
    for (file, text) in [
        ("alerts.yaml", rules),
        ("grafana-dashboard.json", dashboard),
    ] {
        let names = names_in(text);
        assert!(names.len() >= 10, "{file}: {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics bearward does not export: {unknown:?}"
        );
    }
    // And the check can fail: a misspelt name is caught.
    assert!(!exported.contains("bearward_request_total"));
}

#[tokio::test]
async fn a_real_prometheus_scrapes_bearward_and_takes_the_dashboard_queries() {
    let (_up, gw) = with_traffic().await;
    let prometheus = Prometheus::start(gw.admin.unwrap());
    let up = prometheus.wait_for("up{job=\"bearward\"} == 1").await;
    assert_eq!(up.len(), 1, "{up:?}");
    let refused = prometheus
        .wait_for("bearward_requests_total{reason=\"missing_token\"}")
        .await;
    assert_eq!(refused[0]["metric"]["status"], "401", "{refused:?}");
    assert_eq!(refused[0]["value"][1], "1", "{refused:?}");
    // The scrape reports no error (a body that did not match its Content-Type would).
    let targets = prometheus.api_get("targets").await;
    let active = &targets["data"]["activeTargets"][0];
    assert_eq!(active["health"], "up", "{targets}");
    assert_eq!(active["lastError"], "", "{targets}");
    for q in dashboard_queries() {
        let answer = prometheus.query(&q).await;
        assert_eq!(answer["status"], "success", "{q}: {answer}");
    }
}

/// `POST /healthcheck/fail` takes a replica out of its load balancer (`/readyz` 503) while it
/// serves on; `POST /healthcheck/ok` brings it back; `GET` and `/status` say which.
#[tokio::test]
async fn an_operator_takes_a_replica_out_of_rotation_and_back() {
    use common::send;
    use http::StatusCode;
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstreams.app]\nurl = \"{}\"\n\
         [[routes]]\nprefix = \"/\"\nauth = \"none\"\nupstream = \"app\"\n",
        up.url()
    ))
    .await;
    let c = client();
    let admin = |path: &str| format!("http://{}{path}", gw.admin.unwrap());
    let ready = || async { get(&c, &admin("/readyz"), &[]).await.status };
    assert_eq!(ready().await, StatusCode::OK);
    assert_eq!(
        get(&c, &admin("/healthcheck/fail"), &[]).await.body,
        "in rotation\n"
    );

    let a = send(&c, "POST", &admin("/healthcheck/fail"), &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = get(&c, &admin("/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("held out"), "{}", r.body);
    assert_eq!(
        get(&c, &gw.url("/x"), &[]).await.status,
        StatusCode::OK,
        "still serving"
    );
    let status: serde_json::Value =
        serde_json::from_str(&get(&c, &admin("/status"), &[]).await.body).unwrap();
    assert_eq!(status["held_out"], true);
    assert_eq!(
        get(&c, &admin("/healthcheck/ok"), &[]).await.body,
        "held out\n"
    );
    let put = send(&c, "PUT", &admin("/healthcheck/ok"), &[], "").await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);

    let a = send(&c, "POST", &admin("/healthcheck/ok"), &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(ready().await, StatusCode::OK);
    let status: serde_json::Value =
        serde_json::from_str(&get(&c, &admin("/status"), &[]).await.body).unwrap();
    assert_eq!(status["held_out"], false);
}
