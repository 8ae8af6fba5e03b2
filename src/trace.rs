//! OpenTelemetry traces (`[telemetry]`): W3C Trace Context in and out, a server span per
//! request and a client span per upstream exchange, exported over OTLP (gRPC, or HTTP with
//! protobuf bodies) in batches from a bounded queue.
//!
//! - In: a valid `traceparent` from any peer is continued, as Envoy does (a malformed one, or
//!   two, start a new trace; never a 4xx). Sampling is parent-based: a parent's sampled flag
//!   decides; without a parent, `trace_sample_ratio` of trace ids are kept.
//! - Out: the upstream gets a `traceparent` naming bearward's client span (its own `tracestate`
//!   passes as the client sent it); in decision mode the ingress gets the server span's, for its
//!   own upstream request.
//! - Export never holds a request up: a finished span is offered to a queue of
//!   `max_queued_spans` and dropped (and counted) when the queue is full; one task takes batches
//!   of up to [`BATCH`] (or `max_queued_spans`, if fewer) at least once a second and exports
//!   them within `otlp_timeout`: at most twice `max_queued_spans` spans are held. A batch
//!   that fails is dropped and counted, not retried (the collector is down: the next batch
//!   tries again).
//!
//! Without `[telemetry]` none of this exists: the gateway holds no tracer and passes
//! `traceparent` through untouched, at the cost of one `Option` check per request.
//!
//! The span model is the OTLP message itself (`opentelemetry-proto`, the OpenTelemetry
//! project's generated types): a sampled request builds its spans directly, with no SDK
//! pipeline between it and the queue, and an unsampled one builds nothing.

use crate::config::TelemetryConfig;
use crate::telemetry::Metrics;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Spans per export at most (the OpenTelemetry SDK's default batch size).
const BATCH: usize = 512;
/// Longest a span waits in the queue before its batch goes.
const EVERY: Duration = Duration::from_secs(1);

/// A span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// This span as the parent in a `traceparent` (W3C Trace Context, version 00).
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        crate::jose::hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        crate::jose::hex_into(&self.span_id, &mut out[36..52]);
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        HeaderValue::from_bytes(&out).expect("hex digits and dashes")
    }
}

impl std::fmt::Display for SpanContext {
    /// The trace id, as logs write it (32 hex digits).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 32];
        crate::jose::hex_into(&self.trace_id, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The parent a request's one `traceparent` names: (trace id, parent span id, sampled). `None`
/// for none, two, or one that breaks the W3C rules (lower-case hex, version `ff` invalid, all-
/// zero ids invalid; a later version is read by its version-00 prefix).
pub fn parse_traceparent(headers: &HeaderMap) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let value = all.next()?.as_bytes();
    if all.next().is_some() || value.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&value[..2])?[0];
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (version > 0 && value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let parent = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags & 1 == 1))
}

/// Random ids from a per-thread buffer refilled from aws-lc's generator (as request ids are).
fn random<const N: usize>() -> [u8; N] {
    struct Pool {
        bytes: [u8; 512],
        used: usize,
    }
    thread_local! {
        static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; 512], used: 512 }) };
    }
    POOL.with_borrow_mut(|p| {
        if p.used + N > p.bytes.len() {
            let _ = aws_lc_rs::rand::fill(&mut p.bytes);
            p.used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&p.bytes[p.used..p.used + N]);
        p.used += N;
        out
    })
}

fn span_id() -> [u8; 8] {
    loop {
        let id = random::<8>();
        if id != [0; 8] {
            return id;
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A span in progress.
#[derive(Debug)]
pub struct Open {
    pub ctx: SpanContext,
    parent: Option<[u8; 8]>,
    /// Unix nanoseconds; 0 when not sampled (nothing is recorded).
    start: u64,
}

/// What a finished span carries besides its times and ids.
pub struct Finish {
    pub name: String,
    pub kind: span::SpanKind,
    pub attributes: Vec<KeyValue>,
    /// The span's status is Error, with this message.
    pub error: Option<String>,
}

/// A string attribute.
pub fn attr(key: &'static str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// An integer attribute.
pub fn attr_int(key: &'static str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// Starts spans, and takes finished ones to the export queue.
pub struct Tracer {
    /// A root trace is sampled when its id's last 8 bytes, read as a number, fall below this
    /// (the OpenTelemetry `TraceIdRatioBased` rule); `u64::MAX` with ratio 1.
    bound: u64,
    queue: mpsc::Sender<Span>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("bound", &self.bound)
            .finish()
    }
}

impl Tracer {
    /// The tracer for `[telemetry]`, with its export task (spawned on the current runtime).
    pub fn start(
        config: &TelemetryConfig,
        metrics: Arc<Metrics>,
        http_client: HttpClient,
    ) -> Arc<Tracer> {
        let (queue, rx) = mpsc::channel(config.max_queued_spans);
        let bound = if config.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sample_ratio * u64::MAX as f64) as u64
        };
        let batch = BATCH.min(config.max_queued_spans);
        tokio::spawn(export_loop(
            rx,
            Exporter::new(config, http_client),
            resource(config),
            (batch, config.timeout),
            metrics.clone(),
        ));
        Arc::new(Tracer {
            bound,
            queue,
            metrics,
        })
    }

    /// The server span of a request: continuing the trace its `traceparent` names, or a new one.
    pub fn server(&self, headers: &HeaderMap) -> Open {
        let (trace_id, parent, sampled) = match parse_traceparent(headers) {
            Some((t, p, s)) => (t, Some(p), s),
            None => {
                let t = random::<16>();
                let low = u64::from_be_bytes(t[8..].try_into().expect("8 bytes"));
                (t, None, self.bound == u64::MAX || low < self.bound)
            }
        };
        Open {
            ctx: SpanContext {
                trace_id,
                span_id: span_id(),
                sampled,
            },
            parent,
            start: if sampled { now_nanos() } else { 0 },
        }
    }

    /// A child of `parent` (the upstream exchange's client span).
    pub fn child(&self, parent: &SpanContext) -> Open {
        Open {
            ctx: SpanContext {
                span_id: span_id(),
                ..*parent
            },
            parent: Some(parent.span_id),
            start: if parent.sampled { now_nanos() } else { 0 },
        }
    }

    /// Ends a span: when sampled, offers it to the export queue (dropped and counted when full).
    /// `finish` is only called for a sampled span.
    pub fn end(&self, open: Open, finish: impl FnOnce() -> Finish) {
        if !open.ctx.sampled {
            return;
        }
        let f = finish();
        let span = Span {
            trace_id: open.ctx.trace_id.to_vec(),
            span_id: open.ctx.span_id.to_vec(),
            parent_span_id: open.parent.map(|p| p.to_vec()).unwrap_or_default(),
            // W3C flags in the low byte: sampled.
            flags: 0x101,
            name: f.name,
            kind: f.kind as i32,
            start_time_unix_nano: open.start,
            end_time_unix_nano: now_nanos().max(open.start),
            attributes: f.attributes,
            status: Some(match f.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Span::default()
        };
        if self.queue.try_send(span).is_err() {
            self.metrics.trace_spans("queue_full", 1);
        }
    }
}

fn resource(config: &TelemetryConfig) -> Resource {
    Resource {
        attributes: vec![
            attr("service.name", config.service_name.clone()),
            attr("service.version", env!("CARGO_PKG_VERSION")),
            attr("telemetry.sdk.name", "bearward"),
            attr("telemetry.sdk.language", "rust"),
        ],
        ..Resource::default()
    }
}

/// Where batches go.
enum Exporter {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    // Boxed: the HTTP client is several hundred bytes; one exporter exists per process.
    Http(Box<HttpExporter>),
}

struct HttpExporter {
    client: HttpClient,
    url: http::Uri,
}

/// The client OTLP/HTTP exports go through (made as the JWKS fetches' is, given by the caller:
/// this module sits below `auth`); it goes straight to the collector, never through a proxy.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<crate::egress::Egress>,
    http_body_util::Full<Bytes>,
>;

tokio::task_local! {
    /// The span of the request this task is serving, for the calls it makes on the way
    /// (introspection, the shared store, a JWKS fetch) to hang their spans under.
    static CURRENT: (Arc<Tracer>, SpanContext);
}

pin_project_lite::pin_project! {
    /// A request's phases, polled with its span as the current one when there is a span. One
    /// type either way: a future awaited through two different types (with `[telemetry]` and
    /// without) was built aside and copied into place on every request (about 500 instructions,
    /// more when the other was inline).
    pub struct InSpan<F> {
        #[pin]
        work: F,
        parent: Option<(Arc<Tracer>, SpanContext)>,
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        match this.parent {
            None => this.work.poll(cx),
            Some(p) => CURRENT.sync_scope(p.clone(), || this.work.poll(cx)),
        }
    }
}

/// Runs `work` (a request's phases) with `parent`, if any, as the span its calls hang under.
pub fn in_span<F: std::future::Future>(
    parent: Option<(Arc<Tracer>, SpanContext)>,
    work: F,
) -> InSpan<F> {
    InSpan { work, parent }
}

/// The current request's tracer and span, to carry into a task it spawns ([`within`]).
pub fn current() -> Option<(Arc<Tracer>, SpanContext)> {
    CURRENT.try_with(Clone::clone).ok()
}

/// `work` under `parent` (from [`current`]) when there is one: a fetch spawned for the request
/// that asked first hangs its span under that request's.
pub async fn within<F: std::future::Future>(
    parent: Option<(Arc<Tracer>, SpanContext)>,
    work: F,
) -> F::Output {
    match parent {
        Some(p) => CURRENT.scope(p, work).await,
        None => work.await,
    }
}

/// A client span under the current request's, if there is one (`[telemetry]` on and this task
/// serving a request); end it with [`end_call`].
pub fn call_span() -> Option<(Arc<Tracer>, Open)> {
    CURRENT
        .try_with(|(tracer, parent)| (tracer.clone(), tracer.child(parent)))
        .ok()
}

/// Ends a span from [`call_span`]: a client span named `name`, an error with `error`'s text.
pub fn end_call(
    span: Option<(Arc<Tracer>, Open)>,
    name: &str,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    error: Option<String>,
) {
    if let Some((tracer, open)) = span {
        tracer.end(open, || Finish {
            name: name.to_owned(),
            kind: span::SpanKind::Client,
            attributes: attributes(),
            error,
        });
    }
}

impl Exporter {
    fn new(config: &TelemetryConfig, client: HttpClient) -> Exporter {
        if config.http {
            // OTLP/HTTP: a base URL gets the traces path; a path given is used as it is.
            let url = match config.endpoint.path() {
                "" | "/" => format!(
                    "{}://{}/v1/traces",
                    config.endpoint.scheme_str().unwrap_or("http"),
                    config.endpoint.authority().map_or("", |a| a.as_str())
                )
                .parse()
                .unwrap_or_else(|_| config.endpoint.clone()),
                _ => config.endpoint.clone(),
            };
            return Exporter::Http(Box::new(HttpExporter { client, url }));
        }
        let channel = tonic::transport::Endpoint::from(config.endpoint.clone())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .connect_lazy();
        Exporter::Grpc(TraceServiceClient::new(channel))
    }

    async fn export(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Exporter::Grpc(client) => client
                .export(request)
                .await
                .map(drop)
                .map_err(|e| format!("{}: {}", e.code(), e.message())),
            Exporter::Http(h) => {
                let HttpExporter { client, url } = &**h;
                let body = prost::Message::encode_to_vec(&request);
                let req = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status()))
                }
            }
        }
    }
}

async fn export_loop(
    mut rx: mpsc::Receiver<Span>,
    mut exporter: Exporter,
    resource: Resource,
    (most, timeout): (usize, Duration),
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(most);
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        if rx.recv_many(&mut batch, most).await == 0 {
            return;
        }
        // Let a batch fill for up to a second, unless it is full already.
        let deadline = tokio::time::Instant::now() + EVERY;
        while batch.len() < most {
            let room = most - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "bearward".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans: std::mem::replace(&mut batch, Vec::with_capacity(most)),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match tokio::time::timeout(timeout, exporter.export(request)).await {
            Ok(Ok(())) => metrics.trace_spans("exported", n),
            outcome => {
                metrics.trace_spans("export_failed", n);
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {timeout:?}"),
                };
                // Said at most once a minute: a collector that is down fails every batch.
                if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    last_warned = Some(tokio::time::Instant::now());
                    tracing::warn!(spans = n, error = %why, "span export failed; the spans are dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_by_the_w3c_rules() {
        let (t, p, s) = parse_traceparent(&headers(&[GOOD])).unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(p[7], 0xb7);
        assert!(s);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(&headers(&[&unsampled])).unwrap().2);
        // A later version is read by its prefix, and may carry more after a dash.
        let later = GOOD.replacen("00-", "01-", 1) + "-more";
        assert!(parse_traceparent(&headers(&[&later])).is_some());
        for bad in [
            GOOD.replacen("00-", "ff-", 1),
            GOOD.to_uppercase(),
            GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            GOOD[..54].to_owned(),
            GOOD.to_owned() + "-extra",
            GOOD.replace('-', "_"),
        ] {
            assert_eq!(parse_traceparent(&headers(&[&bad])), None, "{bad}");
        }
        assert_eq!(parse_traceparent(&headers(&[GOOD, GOOD])), None, "two");
    }

    #[test]
    fn a_span_context_writes_its_traceparent() {
        let ctx = SpanContext {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            sampled: true,
        };
        let v = ctx.traceparent();
        assert_eq!(v, "00-abababababababababababababababab-0101010101010101-01");
        let (t, p, s) = parse_traceparent(&headers(&[v.to_str().unwrap()])).unwrap();
        assert_eq!((t, p, s), (ctx.trace_id, ctx.span_id, true));
    }
}
