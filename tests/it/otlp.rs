//! An OTLP receiver for tests, and a rotel collector fixture.
//!
//! [`OtlpReceiver`] is what a real run of agentry exports its telemetry to: it listens on
//! 127.0.0.1 with both an OTLP/gRPC endpoint ([`grpc_endpoint`](OtlpReceiver::grpc_endpoint),
//! tonic, `TraceService` and `MetricsService`) and an OTLP/HTTP endpoint
//! ([`http_endpoint`](OtlpReceiver::http_endpoint), `POST /v1/traces` and `POST /v1/metrics`
//! with `application/x-protobuf` bodies). Both accept gzip. Every export is decoded and
//! flattened into [`ReceivedSpan`]s and [`ReceivedMetric`]s; tests read them with
//! [`spans`](OtlpReceiver::spans)/[`metrics`](OtlpReceiver::metrics) or await them with
//! [`wait_for_spans`](OtlpReceiver::wait_for_spans)/[`wait_for_metrics`](OtlpReceiver::wait_for_metrics),
//! which wake on each export rather than polling. [`span_tree`] renders spans as indented
//! trees for failure messages and for showing a live run.
//!
//! [`Rotel`] runs the rotel OpenTelemetry collector (the `rotel` PyPI package in the peers'
//! venv, which ships the `rotel-agent` binary) on free loopback ports, forwarding everything it
//! receives over OTLP/gRPC to a receiver: `agentry → rotel → OtlpReceiver` is the shape of a
//! real deployment behind a collector.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;

/// Largest export the receiver accepts, on either protocol.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

// ------------------------------------------------------------------------------------------------
// What the receiver stores
// ------------------------------------------------------------------------------------------------

/// The protocol an export arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    Http,
}

/// Export requests received so far, per protocol and signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    pub grpc_traces: usize,
    pub grpc_metrics: usize,
    pub http_traces: usize,
    pub http_metrics: usize,
    /// Requests (of any kind) whose body was gzip-compressed.
    pub gzip: usize,
    /// HTTP requests refused (bad content type, undecodable body).
    pub rejected: usize,
}

impl ExportCounts {
    /// All accepted export requests.
    pub fn total(&self) -> usize {
        self.grpc_traces + self.grpc_metrics + self.http_traces + self.http_metrics
    }
    /// Accepted gRPC export requests.
    pub fn grpc(&self) -> usize {
        self.grpc_traces + self.grpc_metrics
    }
    /// Accepted HTTP export requests.
    pub fn http(&self) -> usize {
        self.http_traces + self.http_metrics
    }
}

/// A span event.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_ns: u64,
    pub attributes: BTreeMap<String, Value>,
}

/// A span link.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, Value>,
}

/// One span, flattened out of its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Lower-case hex, 32 digits.
    pub trace_id: String,
    /// Lower-case hex, 16 digits.
    pub span_id: String,
    /// Lower-case hex; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `"internal"`, `"server"`, `"client"`, `"producer"`, `"consumer"` or `"unspecified"`.
    pub kind: &'static str,
    pub attributes: BTreeMap<String, Value>,
    pub events: Vec<ReceivedEvent>,
    pub links: Vec<ReceivedLink>,
    /// 0 unset, 1 ok, 2 error (see [`status`](Self::status)).
    pub status_code: i32,
    pub status_message: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Resource attributes (`service.name`, ...).
    pub resource: BTreeMap<String, Value>,
    /// Instrumentation scope name.
    pub scope: String,
    pub scope_version: String,
    pub transport: Transport,
}

impl ReceivedSpan {
    /// An attribute.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
    /// An integer attribute.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }
    /// A resource attribute as a string (`span.resource_str("service.name")`).
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(Value::as_str)
    }
    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
    /// `"unset"`, `"ok"` or `"error"`.
    pub fn status(&self) -> &'static str {
        match self.status_code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        }
    }
    /// Whether the span's status is error.
    pub fn is_error(&self) -> bool {
        self.status_code == 2
    }
    /// End minus start.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
    /// The first event with this name.
    pub fn event(&self, name: &str) -> Option<&ReceivedEvent> {
        self.events.iter().find(|event| event.name == name)
    }
}

/// A histogram data point.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    pub count: u64,
    pub sum: Option<f64>,
    /// One more than `explicit_bounds`: bucket `i` counts values in `(bounds[i-1], bounds[i]]`.
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The value of a data point.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    Int(i64),
    Double(f64),
    Histogram(HistogramPoint),
    /// Exponential histograms and summaries, reduced to what tests usually check.
    CountSum {
        count: u64,
        sum: f64,
    },
    /// A number point without a value.
    Empty,
}

/// One data point of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attributes: BTreeMap<String, Value>,
    pub start_ns: u64,
    pub time_ns: u64,
    pub value: PointValue,
}

impl Point {
    /// The value of a gauge or sum point as `f64` (ints converted).
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            PointValue::Int(value) => Some(value as f64),
            PointValue::Double(value) => Some(value),
            _ => None,
        }
    }
    /// The value of an integer gauge or sum point.
    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            PointValue::Int(value) => Some(value),
            _ => None,
        }
    }
    /// The histogram of a histogram point.
    pub fn histogram(&self) -> Option<&HistogramPoint> {
        match &self.value {
            PointValue::Histogram(histogram) => Some(histogram),
            _ => None,
        }
    }
    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
    /// Whether every `(key, value)` pair is among the point's attributes (values compared
    /// as strings for string attributes, else by their JSON rendering).
    pub fn has_attrs(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(key, want)| match self.attributes.get(*key) {
            Some(Value::String(value)) => value == want,
            Some(value) => {
                let rendered = value.to_string();
                rendered == *want
            }
            None => false,
        })
    }
}

/// One metric of one export, flattened out of its resource and scope. A periodic reader
/// exports the same metric again and again: [`OtlpReceiver::metric`] picks the latest.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    pub name: String,
    pub unit: String,
    pub description: String,
    /// `"gauge"`, `"sum"`, `"histogram"`, `"exponential_histogram"`, `"summary"` or `"empty"`.
    pub kind: &'static str,
    /// For sums: whether monotonic (a counter).
    pub monotonic: bool,
    /// `"cumulative"`, `"delta"` or `"unspecified"` (gauges).
    pub temporality: &'static str,
    pub points: Vec<Point>,
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    pub transport: Transport,
}

impl ReceivedMetric {
    /// The first point whose attributes include all of `wanted`.
    pub fn point(&self, wanted: &[(&str, &str)]) -> Option<&Point> {
        self.points.iter().find(|point| point.has_attrs(wanted))
    }
    /// Sum of the values of all gauge/sum points.
    pub fn total(&self) -> f64 {
        self.points.iter().filter_map(Point::as_f64).sum()
    }
    /// Sum of the counts of all histogram points.
    pub fn total_count(&self) -> u64 {
        self.points
            .iter()
            .map(|point| match &point.value {
                PointValue::Histogram(histogram) => histogram.count,
                PointValue::CountSum { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }
}

// ------------------------------------------------------------------------------------------------
// The receiver
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
    trace_requests: Vec<ExportTraceServiceRequest>,
    metrics_requests: Vec<ExportMetricsServiceRequest>,
    counts: ExportCounts,
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped after every export, so waiters wake up.
    generation: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    fn record_traces(&self, request: ExportTraceServiceRequest, transport: Transport, gzip: bool) {
        let spans = flatten_spans(&request, transport);
        {
            let mut store = self.lock();
            store.spans.extend(spans);
            store.trace_requests.push(request);
            match transport {
                Transport::Grpc => store.counts.grpc_traces += 1,
                Transport::Http => store.counts.http_traces += 1,
            }
            store.counts.gzip += usize::from(gzip);
        }
        self.bump();
    }

    fn record_metrics(&self, request: ExportMetricsServiceRequest, transport: Transport, gzip: bool) {
        let metrics = flatten_metrics(&request, transport);
        {
            let mut store = self.lock();
            store.metrics.extend(metrics);
            store.metrics_requests.push(request);
            match transport {
                Transport::Grpc => store.counts.grpc_metrics += 1,
                Transport::Http => store.counts.http_metrics += 1,
            }
            store.counts.gzip += usize::from(gzip);
        }
        self.bump();
    }

    fn record_rejected(&self) {
        self.lock().counts.rejected += 1;
        self.bump();
    }
}

/// An OTLP receiver on 127.0.0.1 with a gRPC and an HTTP endpoint; see the module docs.
/// The servers stop when it is dropped.
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds both endpoints on free loopback ports and starts serving. Returns once both
    /// listening sockets are bound, so exporters may connect at once.
    pub async fn start() -> Self {
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared { store: Mutex::new(Store::default()), generation });

        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/gRPC port");
        let grpc_addr = grpc_listener.local_addr().expect("OTLP/gRPC local address");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/HTTP port");
        let http_addr = http_listener.local_addr().expect("OTLP/HTTP local address");

        let traces = TraceServiceServer::new(GrpcService(Arc::clone(&shared)))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let metrics = MetricsServiceServer::new(GrpcService(Arc::clone(&shared)))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let grpc = tonic::transport::Server::builder()
            .add_service(traces)
            .add_service(metrics)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener));
        let grpc_task = tokio::spawn(async move {
            if let Err(err) = grpc.await {
                eprintln!("OtlpReceiver: the gRPC server stopped: {err}");
            }
        });

        let app = axum::Router::new()
            .route("/v1/traces", post(http_traces))
            .route("/v1/metrics", post(http_metrics))
            .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .with_state(Arc::clone(&shared));
        let http_task = tokio::spawn(async move {
            if let Err(err) = axum::serve(http_listener, app).await {
                eprintln!("OtlpReceiver: the HTTP server stopped: {err}");
            }
        });

        Self { shared, grpc_addr, http_addr, tasks: vec![grpc_task, http_task] }
    }

    /// The OTLP/gRPC endpoint, `http://127.0.0.1:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The OTLP/HTTP base endpoint, `http://127.0.0.1:PORT` (exporters append `/v1/traces`
    /// and `/v1/metrics`, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The full OTLP/HTTP traces URL, `http://127.0.0.1:PORT/v1/traces`.
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// The full OTLP/HTTP metrics URL, `http://127.0.0.1:PORT/v1/metrics`.
    pub fn http_metrics_url(&self) -> String {
        format!("{}/v1/metrics", self.http_endpoint())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Every metric received so far, in arrival order (one entry per metric per export).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.shared.lock().metrics.clone()
    }

    /// The latest export of the metric `name`, if any.
    pub fn metric(&self, name: &str) -> Option<ReceivedMetric> {
        self.shared.lock().metrics.iter().rev().find(|metric| metric.name == name).cloned()
    }

    /// The raw trace export requests, as decoded.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().trace_requests.clone()
    }

    /// The raw metrics export requests, as decoded.
    pub fn metrics_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.lock().metrics_requests.clone()
    }

    /// How many export requests arrived over which protocol.
    pub fn export_counts(&self) -> ExportCounts {
        self.shared.lock().counts
    }

    /// Forgets everything received so far (counts included).
    pub fn clear(&self) {
        *self.shared.lock() = Store::default();
    }

    /// The spans received so far rendered by [`span_tree`].
    pub fn span_tree(&self) -> String {
        span_tree(&self.spans())
    }

    /// Waits until `predicate` holds for the spans received so far, and returns them. Wakes
    /// on every export (no polling).
    ///
    /// # Panics
    /// After `timeout`, with the spans received so far as a tree.
    pub async fn wait_for_spans(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        match self.try_wait_for_spans(predicate, timeout).await {
            Some(spans) => spans,
            None => {
                let store = self.shared.lock();
                panic!(
                    "OtlpReceiver: the spans did not satisfy the predicate within {timeout:?}; \
                     {} span(s) received, exports {:?}:\n{}",
                    store.spans.len(),
                    store.counts,
                    span_tree(&store.spans)
                )
            }
        }
    }

    /// Like [`wait_for_spans`](Self::wait_for_spans), but `None` after `timeout` instead of a
    /// panic; for checking that something does *not* arrive.
    pub async fn try_wait_for_spans(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<ReceivedSpan>> {
        self.wait_until(|store| predicate(&store.spans).then(|| store.spans.clone()), timeout).await
    }

    /// Waits for a span named `name` and returns the first one.
    ///
    /// # Panics
    /// After `timeout`, with the spans received so far as a tree.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> ReceivedSpan {
        let spans = self.wait_for_spans(|spans| spans.iter().any(|span| span.name == name), timeout).await;
        spans.into_iter().find(|span| span.name == name).expect("the predicate found it")
    }

    /// Waits until `predicate` holds for the metrics received so far, and returns them.
    ///
    /// # Panics
    /// After `timeout`, listing the metrics received so far.
    pub async fn wait_for_metrics(
        &self,
        predicate: impl Fn(&[ReceivedMetric]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedMetric> {
        match self.try_wait_for_metrics(predicate, timeout).await {
            Some(metrics) => metrics,
            None => {
                let store = self.shared.lock();
                panic!(
                    "OtlpReceiver: the metrics did not satisfy the predicate within {timeout:?}; \
                     exports {:?}; received:\n{}",
                    store.counts,
                    metrics_summary(&store.metrics)
                )
            }
        }
    }

    /// Like [`wait_for_metrics`](Self::wait_for_metrics), but `None` after `timeout` instead of
    /// a panic.
    pub async fn try_wait_for_metrics(
        &self,
        predicate: impl Fn(&[ReceivedMetric]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<ReceivedMetric>> {
        self.wait_until(|store| predicate(&store.metrics).then(|| store.metrics.clone()), timeout).await
    }

    /// Waits for a metric named `name` and returns its latest export.
    ///
    /// # Panics
    /// After `timeout`, listing the metrics received so far.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> ReceivedMetric {
        let metrics = self.wait_for_metrics(|metrics| metrics.iter().any(|metric| metric.name == name), timeout).await;
        metrics.into_iter().rev().find(|metric| metric.name == name).expect("the predicate found it")
    }

    /// Waits until `check` returns something, re-checking after every export.
    async fn wait_until<T>(&self, mut check: impl FnMut(&Store) -> Option<T>, timeout: Duration) -> Option<T> {
        // Subscribe before the first check, so an export between check and wait is not missed.
        let mut changes = self.shared.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = check(&self.shared.lock()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`; a timeout ends the wait.
                Ok(Err(_)) | Err(_) => return check(&self.shared.lock()),
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The gRPC services; one type serves both.
struct GrpcService(Arc<Shared>);

fn grpc_gzip<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().get("grpc-encoding").is_some_and(|encoding| encoding.as_bytes() == b"gzip")
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let gzip = grpc_gzip(&request);
        self.0.record_traces(request.into_inner(), Transport::Grpc, gzip);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let gzip = grpc_gzip(&request);
        self.0.record_metrics(request.into_inner(), Transport::Grpc, gzip);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Decodes an OTLP/HTTP protobuf body (gzip-compressed or not), or says why not.
fn decode_http<M: prost::Message + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(M, bool), (StatusCode, String)> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !content_type.is_empty() && !content_type.starts_with("application/x-protobuf") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the test receiver takes application/x-protobuf only, not {content_type:?}"),
        ));
    }
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|value| value.to_str().ok()).unwrap_or("");
    let gzip = encoding.eq_ignore_ascii_case("gzip");
    let decompressed;
    let bytes = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|err| (StatusCode::BAD_REQUEST, format!("bad gzip body: {err}")))?;
        decompressed = out;
        &decompressed[..]
    } else if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        body
    } else {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {encoding:?}")));
    };
    let message = M::decode(bytes).map_err(|err| (StatusCode::BAD_REQUEST, format!("bad protobuf body: {err}")))?;
    Ok((message, gzip))
}

fn protobuf_response(message: &impl prost::Message) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], message.encode_to_vec()).into_response()
}

async fn http_traces(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    match decode_http::<ExportTraceServiceRequest>(&headers, &body) {
        Ok((request, gzip)) => {
            shared.record_traces(request, Transport::Http, gzip);
            protobuf_response(&ExportTraceServiceResponse::default())
        }
        Err(refusal) => {
            shared.record_rejected();
            refusal.into_response()
        }
    }
}

async fn http_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    match decode_http::<ExportMetricsServiceRequest>(&headers, &body) {
        Ok((request, gzip)) => {
            shared.record_metrics(request, Transport::Http, gzip);
            protobuf_response(&ExportMetricsServiceResponse::default())
        }
        Err(refusal) => {
            shared.record_rejected();
            refusal.into_response()
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Flattening
// ------------------------------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// An OTLP attribute value as JSON: strings, bools, numbers, arrays and key-value lists map
/// to their JSON counterparts; bytes become a lower-case hex string.
pub fn any_value_to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(value)) => Value::String(value.clone()),
        Some(any_value::Value::BoolValue(value)) => Value::Bool(*value),
        Some(any_value::Value::IntValue(value)) => Value::from(*value),
        Some(any_value::Value::DoubleValue(value)) => {
            serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => Value::Array(array.values.iter().map(any_value_to_json).collect()),
        Some(any_value::Value::KvlistValue(list)) => {
            Value::Object(list.values.iter().map(|kv| (kv.key.clone(), kv_value(kv))).collect())
        }
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

fn kv_value(kv: &KeyValue) -> Value {
    kv.value.as_ref().map_or(Value::Null, any_value_to_json)
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv_value(kv))).collect()
}

fn resource_attributes(resource: Option<&Resource>) -> BTreeMap<String, Value> {
    resource.map(|resource| attributes(&resource.attributes)).unwrap_or_default()
}

fn scope_name_version(scope: Option<&InstrumentationScope>) -> (String, String) {
    scope.map(|scope| (scope.name.clone(), scope.version.clone())).unwrap_or_default()
}

fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn flatten_spans(request: &ExportTraceServiceRequest, transport: Transport) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_attributes(resource_spans.resource.as_ref());
        for scope_spans in &resource_spans.scope_spans {
            let (scope, scope_version) = scope_name_version(scope_spans.scope.as_ref());
            for span in &scope_spans.spans {
                let status = span.status.clone().unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span_kind(span.kind),
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|event| ReceivedEvent {
                            name: event.name.clone(),
                            time_ns: event.time_unix_nano,
                            attributes: attributes(&event.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|link| ReceivedLink {
                            trace_id: hex(&link.trace_id),
                            span_id: hex(&link.span_id),
                            attributes: attributes(&link.attributes),
                        })
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    scope_version: scope_version.clone(),
                    transport,
                });
            }
        }
    }
    out
}

fn temporality(value: i32) -> &'static str {
    match value {
        1 => "delta",
        2 => "cumulative",
        _ => "unspecified",
    }
}

fn flatten_metrics(request: &ExportMetricsServiceRequest, transport: Transport) -> Vec<ReceivedMetric> {
    let mut out = Vec::new();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_attributes(resource_metrics.resource.as_ref());
        for scope_metrics in &resource_metrics.scope_metrics {
            let (scope, _) = scope_name_version(scope_metrics.scope.as_ref());
            for metric in &scope_metrics.metrics {
                let number_points = |points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint]| {
                    points
                        .iter()
                        .map(|point| Point {
                            attributes: attributes(&point.attributes),
                            start_ns: point.start_time_unix_nano,
                            time_ns: point.time_unix_nano,
                            value: match point.value {
                                Some(number_data_point::Value::AsInt(value)) => PointValue::Int(value),
                                Some(number_data_point::Value::AsDouble(value)) => PointValue::Double(value),
                                None => PointValue::Empty,
                            },
                        })
                        .collect::<Vec<_>>()
                };
                let (kind, monotonic, temporality, points) = match &metric.data {
                    None => ("empty", false, "unspecified", Vec::new()),
                    Some(metric::Data::Gauge(gauge)) => {
                        ("gauge", false, "unspecified", number_points(&gauge.data_points))
                    }
                    Some(metric::Data::Sum(sum)) => (
                        "sum",
                        sum.is_monotonic,
                        temporality(sum.aggregation_temporality),
                        number_points(&sum.data_points),
                    ),
                    Some(metric::Data::Histogram(histogram)) => (
                        "histogram",
                        false,
                        temporality(histogram.aggregation_temporality),
                        histogram
                            .data_points
                            .iter()
                            .map(|point| Point {
                                attributes: attributes(&point.attributes),
                                start_ns: point.start_time_unix_nano,
                                time_ns: point.time_unix_nano,
                                value: PointValue::Histogram(HistogramPoint {
                                    count: point.count,
                                    sum: point.sum,
                                    bucket_counts: point.bucket_counts.clone(),
                                    explicit_bounds: point.explicit_bounds.clone(),
                                    min: point.min,
                                    max: point.max,
                                }),
                            })
                            .collect(),
                    ),
                    Some(metric::Data::ExponentialHistogram(histogram)) => (
                        "exponential_histogram",
                        false,
                        temporality(histogram.aggregation_temporality),
                        histogram
                            .data_points
                            .iter()
                            .map(|point| Point {
                                attributes: attributes(&point.attributes),
                                start_ns: point.start_time_unix_nano,
                                time_ns: point.time_unix_nano,
                                value: PointValue::CountSum { count: point.count, sum: point.sum.unwrap_or_default() },
                            })
                            .collect(),
                    ),
                    Some(metric::Data::Summary(summary)) => (
                        "summary",
                        false,
                        "unspecified",
                        summary
                            .data_points
                            .iter()
                            .map(|point| Point {
                                attributes: attributes(&point.attributes),
                                start_ns: point.start_time_unix_nano,
                                time_ns: point.time_unix_nano,
                                value: PointValue::CountSum { count: point.count, sum: point.sum },
                            })
                            .collect(),
                    ),
                };
                out.push(ReceivedMetric {
                    name: metric.name.clone(),
                    unit: metric.unit.clone(),
                    description: metric.description.clone(),
                    kind,
                    monotonic,
                    temporality,
                    points,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    transport,
                });
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Span trees
// ------------------------------------------------------------------------------------------------

/// The spans whose parent is `span`, by start time.
pub fn children_of<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut children: Vec<&ReceivedSpan> =
        spans.iter().filter(|child| child.trace_id == span.trace_id && child.parent_span_id == span.span_id).collect();
    children.sort_by_key(|child| child.start_ns);
    children
}

/// The parent of `span` among `spans`, if it is there.
pub fn parent_of<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    if span.parent_span_id.is_empty() {
        return None;
    }
    spans.iter().find(|parent| parent.trace_id == span.trace_id && parent.span_id == span.parent_span_id)
}

/// The topmost ancestor of `span` among `spans` (`span` itself for a root).
pub fn root_of<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> &'a ReceivedSpan {
    let mut current = span;
    let mut seen = HashSet::new();
    while let Some(parent) = parent_of(spans, current) {
        if !seen.insert(&parent.span_id) {
            break;
        }
        current = parent;
    }
    current
}

/// The root span of the trace `trace_id` (the span without a parent), if it arrived.
pub fn trace_root<'a>(spans: &'a [ReceivedSpan], trace_id: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| span.trace_id == trace_id && span.is_root())
}

/// The spans of the trace `trace_id`.
pub fn trace_of<'a>(spans: &'a [ReceivedSpan], trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.trace_id == trace_id).collect()
}

/// Whether `ancestor` is a (transitive) parent of `span`.
pub fn is_descendant(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut current = span;
    let mut seen = HashSet::new();
    while let Some(parent) = parent_of(spans, current) {
        if parent.span_id == ancestor.span_id && parent.trace_id == ancestor.trace_id {
            return true;
        }
        if !seen.insert(&parent.span_id) {
            return false;
        }
        current = parent;
    }
    false
}

/// The first span named `name`.
///
/// # Panics
/// If there is none, with the spans as a tree.
pub fn find_span<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span named {name:?} among {} span(s):\n{}", spans.len(), span_tree(spans)))
}

/// All spans named `name`.
pub fn spans_named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn short_value(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let text = text.replace('\n', "⏎");
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Attributes that `tracing-opentelemetry` puts on every span and event; [`span_tree`] leaves
/// them out ([`span_tree_full`] shows them).
pub const TREE_HIDDEN_ATTRIBUTES: &[&str] = &[
    "busy_ns",
    "code.file.path",
    "code.filepath",
    "code.line.number",
    "code.lineno",
    "code.module.name",
    "code.namespace",
    "idle_ns",
    "level",
    "target",
    "thread.id",
    "thread.name",
];

fn attrs_inline(attributes: &BTreeMap<String, Value>, full: bool) -> String {
    attributes
        .iter()
        .filter(|(key, _)| full || !TREE_HIDDEN_ATTRIBUTES.contains(&key.as_str()))
        .map(|(key, value)| format!("{key}={}", short_value(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1_000.0)
    } else {
        format!("{:.2}s", micros as f64 / 1_000_000.0)
    }
}

/// Renders spans as one indented tree per trace: each line has the span's name, kind,
/// duration, status (when set) and attributes (less [`TREE_HIDDEN_ATTRIBUTES`], values cut
/// at 60 characters); events follow as `· name {attrs}`. Traces come in order of their
/// earliest span; spans whose parent did not arrive are shown as roots, marked
/// `(parent … missing)`.
pub fn span_tree(spans: &[ReceivedSpan]) -> String {
    render_tree(spans, false)
}

/// [`span_tree`] with every attribute.
pub fn span_tree_full(spans: &[ReceivedSpan]) -> String {
    render_tree(spans, true)
}

fn render_tree(spans: &[ReceivedSpan], full: bool) -> String {
    if spans.is_empty() {
        return "(no spans)\n".to_owned();
    }
    let mut traces: Vec<(&str, u64)> = Vec::new();
    for span in spans {
        match traces.iter_mut().find(|(trace_id, _)| *trace_id == span.trace_id) {
            Some((_, start)) => *start = (*start).min(span.start_ns),
            None => traces.push((&span.trace_id, span.start_ns)),
        }
    }
    traces.sort_by_key(|(_, start)| *start);

    let mut out = String::new();
    for (trace_id, _) in traces {
        let members = trace_of(spans, trace_id);
        let service = members
            .first()
            .and_then(|span| span.resource_str("service.name"))
            .map(|name| format!(" service.name={name}"))
            .unwrap_or_default();
        let _ = writeln!(out, "trace {trace_id}{service} ({} span(s))", members.len());
        let mut roots: Vec<&ReceivedSpan> =
            members.iter().copied().filter(|span| parent_of(spans, span).is_none()).collect();
        roots.sort_by_key(|span| span.start_ns);
        let mut seen = HashSet::new();
        for root in roots {
            write_span(&mut out, spans, root, 1, full, &mut seen);
        }
    }
    out
}

fn write_span<'a>(
    out: &mut String,
    spans: &'a [ReceivedSpan],
    span: &'a ReceivedSpan,
    depth: usize,
    full: bool,
    seen: &mut HashSet<&'a str>,
) {
    if !seen.insert(&span.span_id) {
        return;
    }
    let indent = "  ".repeat(depth);
    let mut line = format!("{indent}{} [{}] {}", span.name, span.kind, format_duration(span.duration()));
    if span.status_code != 0 {
        let _ = write!(line, " status={}", span.status());
        if !span.status_message.is_empty() {
            let _ = write!(line, "({})", short_value(&Value::String(span.status_message.clone())));
        }
    }
    if !span.parent_span_id.is_empty() && parent_of(spans, span).is_none() {
        let _ = write!(line, " (parent {} missing)", span.parent_span_id);
    }
    let attrs = attrs_inline(&span.attributes, full);
    if !attrs.is_empty() {
        let _ = write!(line, " {{{attrs}}}");
    }
    let _ = writeln!(out, "{line}");
    for event in &span.events {
        let attrs = attrs_inline(&event.attributes, full);
        let attrs = if attrs.is_empty() { attrs } else { format!(" {{{attrs}}}") };
        let _ = writeln!(out, "{indent}  · {}{attrs}", event.name);
    }
    for child in children_of(spans, span) {
        write_span(out, spans, child, depth + 1, full, seen);
    }
}

/// One line per metric export: name, kind, unit and points.
pub fn metrics_summary(metrics: &[ReceivedMetric]) -> String {
    if metrics.is_empty() {
        return "(no metrics)\n".to_owned();
    }
    let mut out = String::new();
    for metric in metrics {
        let _ = write!(out, "{} [{}", metric.name, metric.kind);
        if metric.kind == "sum" && metric.monotonic {
            out.push_str(", monotonic");
        }
        if !metric.unit.is_empty() {
            let _ = write!(out, ", unit={}", metric.unit);
        }
        let _ = writeln!(out, "] via {:?}", metric.transport);
        for point in &metric.points {
            let value = match &point.value {
                PointValue::Int(value) => value.to_string(),
                PointValue::Double(value) => value.to_string(),
                PointValue::Histogram(histogram) => format!(
                    "count={} sum={:?} buckets={:?} bounds={:?}",
                    histogram.count, histogram.sum, histogram.bucket_counts, histogram.explicit_bounds
                ),
                PointValue::CountSum { count, sum } => format!("count={count} sum={sum}"),
                PointValue::Empty => "(empty)".to_owned(),
            };
            let _ = writeln!(out, "  {{{}}} {value}", attrs_inline(&point.attributes, true));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// rotel
// ------------------------------------------------------------------------------------------------

/// How long rotel may take to accept connections.
const ROTEL_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// rotel's batch timeout in the fixture (rotel's default is 200 ms): how long it holds what it
/// received before forwarding a batch that has not filled up.
const ROTEL_BATCH_TIMEOUT: &str = "50ms";

/// The `rotel-agent` binary shipped by the `rotel` PyPI package in the peers' venv
/// (`.peers/venv/lib/python3.X/site-packages/rotel/rotel-agent`; the package installs no
/// script in `bin/`).
///
/// # Panics
/// If it is not installed, with a hint.
pub fn rotel_executable() -> PathBuf {
    crate::peers::ensure_installed();
    let venv = crate::peers::repo_root().join(".peers/venv");
    let bin = venv.join("bin/rotel");
    if bin.exists() {
        return bin;
    }
    let lib = venv.join("lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/rotel/rotel-agent");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!(
        "rotel not found in {}: the `rotel` package is pinned in tests/peers/requirements.txt; \
         run `bash tests/peers/install.sh` (or `.ci/run`) to install the test peers",
        venv.display()
    )
}

/// A running rotel collector on free loopback ports, receiving OTLP over gRPC and HTTP and
/// forwarding it over OTLP/gRPC (gzip-compressed, rotel's default) to another endpoint.
/// Killed when dropped.
///
/// rotel batches what it receives: a batch goes out when it reaches its size limit or after
/// the batch timeout, which this fixture sets to 50 ms (rotel's default is 200 ms).
pub struct Rotel {
    child: Child,
    grpc_port: u16,
    http_port: u16,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Starts rotel forwarding to `forward_to_grpc_endpoint` (`http://127.0.0.1:PORT`, e.g.
    /// [`OtlpReceiver::grpc_endpoint`]) and returns once both its receivers accept connections.
    ///
    /// # Panics
    /// If rotel is not installed, exits, or is not ready within 30 s (with its output).
    pub async fn start(forward_to_grpc_endpoint: &str) -> Self {
        Self::start_with_args(forward_to_grpc_endpoint, &[]).await
    }

    /// Like [`start`](Self::start), with extra `rotel start` flags, e.g.
    /// `["--batch-timeout", "1s"]`. A flag the fixture also sets (endpoints, `--exporter`,
    /// `--batch-timeout`, retry backoffs, pid and log files) replaces the fixture's value, since
    /// rotel refuses a flag given twice.
    pub async fn start_with_args(forward_to_grpc_endpoint: &str, extra_args: &[&str]) -> Self {
        let executable = rotel_executable();
        let mut failures = Vec::new();
        // A port picked as free may be taken before rotel binds it; rotel then exits with
        // "Address already in use", and a second pick is tried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory for rotel");
            let (grpc_port, http_port) = free_port_pair();
            let defaults = [
                ("--otlp-grpc-endpoint", format!("127.0.0.1:{grpc_port}")),
                ("--otlp-http-endpoint", format!("127.0.0.1:{http_port}")),
                ("--exporter", "otlp".to_owned()),
                ("--otlp-exporter-endpoint", forward_to_grpc_endpoint.to_owned()),
                ("--otlp-exporter-protocol", "grpc".to_owned()),
                ("--batch-timeout", ROTEL_BATCH_TIMEOUT.to_owned()),
                ("--otlp-exporter-retry-initial-backoff", "100ms".to_owned()),
                ("--otlp-exporter-retry-max-backoff", "1s".to_owned()),
                ("--pid-file", dir.path().join("rotel.pid").display().to_string()),
                ("--log-file", dir.path().join("rotel.log").display().to_string()),
            ];
            let mut command = Command::new(&executable);
            command.arg("start");
            // rotel refuses a flag given twice: the caller's flags replace the fixture's.
            for (flag, value) in &defaults {
                let overridden = extra_args
                    .iter()
                    .any(|arg| *arg == *flag || arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')));
                if !overridden {
                    command.args([flag, value.as_str()]);
                }
            }
            command
                .args(extra_args)
                .env("NO_COLOR", "1")
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child =
                command.spawn().unwrap_or_else(|err| panic!("cannot spawn {}: {err}", executable.display()));
            let log = Arc::new(Mutex::new(String::new()));
            let stdout = tokio::spawn(drain(child.stdout.take().expect("stdout is piped"), Arc::clone(&log)));
            let stderr = tokio::spawn(drain(child.stderr.take().expect("stderr is piped"), Arc::clone(&log)));

            match wait_ready(&mut child, &[grpc_port, http_port]).await {
                Ok(()) => return Self { child, grpc_port, http_port, log, _dir: dir },
                Err(failure) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = stdout.await;
                        let _ = stderr.await;
                    })
                    .await;
                    let output = log.lock().map(|log| log.clone()).unwrap_or_default();
                    let retry = output.contains("Address already in use");
                    failures.push(format!(
                        "rotel (gRPC :{grpc_port}, HTTP :{http_port}) {failure}\n--- its output ---\n{output}"
                    ));
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("rotel did not start:\n{}", failures.join("\n"))
    }

    /// Its OTLP/gRPC receiver, `http://127.0.0.1:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Its OTLP/HTTP receiver base, `http://127.0.0.1:PORT` (append `/v1/traces`, `/v1/metrics`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Everything rotel printed so far.
    pub fn output(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks rotel to stop (SIGTERM), which makes it flush what it has batched, and waits up
    /// to `timeout` for it to exit; kills it after that.
    pub async fn stop(&mut self, timeout: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(timeout, self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Two distinct ports that were free a moment ago (both bound at once, then released).
fn free_port_pair() -> (u16, u16) {
    let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let second = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let ports = (first.local_addr().expect("probe address").port(), second.local_addr().expect("probe address").port());
    drop((first, second));
    ports
}

/// Polls until every port accepts a TCP connection while `child` runs.
async fn wait_ready(child: &mut Child, ports: &[u16]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + ROTEL_READY_TIMEOUT;
    let mut pending: Vec<u16> = ports.to_vec();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before it was ready ({status})"));
        }
        let mut still = Vec::new();
        for port in pending {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                still.push(port);
            }
        }
        pending = still;
        if pending.is_empty() {
            // Both bound; make sure the listener is rotel and not a process that took the port.
            return match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited right after its ports opened ({status})")),
                _ => Ok(()),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("did not accept connections on {pending:?} within {ROTEL_READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drain(pipe: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut log) = log.lock() {
            log.push_str(&line);
            log.push('\n');
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Self-tests: the real OpenTelemetry SDK exporting to the receiver, directly and through rotel
// ------------------------------------------------------------------------------------------------

mod selftests {
    use std::io::Write as _;
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use opentelemetry_sdk::runtime::Tokio;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;
    use serde_json::json;

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    /// Where the SDK exports to.
    enum Via {
        /// An OTLP/gRPC endpoint.
        Grpc(String),
        /// An OTLP/HTTP base endpoint (the signal path is appended here).
        Http(String),
    }

    fn resource(case: &str) -> Resource {
        Resource::builder_empty()
            .with_service_name("otlp-selftest")
            .with_attributes([KeyValue::new("test.case", case.to_owned()), KeyValue::new("deployment.id", 7_i64)])
            .build()
    }

    fn tracer_provider(via: &Via, case: &str) -> SdkTracerProvider {
        let exporter = match via {
            Via::Grpc(endpoint) => {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build()
            }
            Via::Http(base) => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/traces"))
                .build(),
        }
        .expect("build the span exporter");
        // As agentry does: the batch processor runs on the tokio runtime (the plain-thread one
        // has no reactor for async reqwest).
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(exporter, Tokio)
                .build();
        SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource(case)).build()
    }

    fn meter_provider(via: &Via, case: &str) -> SdkMeterProvider {
        let exporter = match via {
            Via::Grpc(endpoint) => {
                opentelemetry_otlp::MetricExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build()
            }
            Via::Http(base) => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/metrics"))
                .build(),
        }
        .expect("build the metric exporter");
        // Exports only when shut down (the interval is far longer than a test).
        let reader =
            opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(exporter, Tokio)
                .with_interval(Duration::from_secs(3600))
                .build();
        SdkMeterProvider::builder().with_reader(reader).with_resource(resource(case)).build()
    }

    /// A three-level trace: `selftest.run` (server) → `selftest.llm` (client, with an event)
    /// → `selftest.tool` (error status). Shut down (flushed) before returning.
    async fn export_trace(via: &Via, case: &str) {
        let provider = tracer_provider(via, case);
        let tracer = provider.tracer("agentry.selftest");
        let root = tracer
            .span_builder("selftest.run")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("run.id", "r-1"), KeyValue::new("run.seed", 42_i64)])
            .start(&tracer);
        let root_cx = opentelemetry::Context::current_with_span(root);
        let mut llm = tracer
            .span_builder("selftest.llm")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gen_ai.request.model", "test-model"),
                KeyValue::new("gen_ai.usage.input_tokens", 120_i64),
                KeyValue::new("temperature", 0.5),
                KeyValue::new("stream", true),
            ])
            .start_with_context(&tracer, &root_cx);
        opentelemetry::trace::Span::add_event(&mut llm, "retry", vec![KeyValue::new("attempt", 1_i64)]);
        let llm_cx = root_cx.with_span(llm);
        let mut tool = tracer
            .span_builder("selftest.tool")
            .with_attributes([KeyValue::new("tool.name", "search")])
            .start_with_context(&tracer, &llm_cx);
        opentelemetry::trace::Span::set_status(&mut tool, Status::error("tool failed"));
        opentelemetry::trace::Span::end(&mut tool);
        llm_cx.span().end();
        root_cx.span().end();
        // Shutting down flushes the batch; it blocks on the export task, which runs on this
        // runtime, so it is called from a blocking thread.
        tokio::task::spawn_blocking(move || provider.shutdown().expect("tracer provider shutdown"))
            .await
            .expect("shutdown task");
    }

    /// A histogram `selftest.latency` (bounds 10, 100, 1000; values 5, 50, 50, 5000) and a
    /// counter `selftest.calls` (3), both with `model=test-model`. Shut down (flushed) before
    /// returning.
    async fn export_metrics(via: &Via, case: &str) {
        let provider = meter_provider(via, case);
        let meter = provider.meter("agentry.selftest");
        let histogram = meter
            .f64_histogram("selftest.latency")
            .with_unit("ms")
            .with_description("test latency")
            .with_boundaries(vec![10.0, 100.0, 1000.0])
            .build();
        let counter = meter.u64_counter("selftest.calls").build();
        let attrs = [KeyValue::new("model", "test-model")];
        for value in [5.0, 50.0, 50.0, 5000.0] {
            histogram.record(value, &attrs);
        }
        counter.add(3, &attrs);
        tokio::task::spawn_blocking(move || provider.shutdown().expect("meter provider shutdown"))
            .await
            .expect("shutdown task");
    }

    /// Waits for the trace of [`export_trace`] and checks names, kinds, attributes, events,
    /// status, parentage and resource.
    async fn assert_trace_arrived(receiver: &OtlpReceiver, case: &str) -> Vec<ReceivedSpan> {
        let spans = receiver
            .wait_for_spans(
                |spans| {
                    ["selftest.run", "selftest.llm", "selftest.tool"]
                        .iter()
                        .all(|name| spans.iter().any(|span| span.name == *name))
                },
                WAIT,
            )
            .await;
        let tree = span_tree(&spans);
        let run = find_span(&spans, "selftest.run");
        let llm = find_span(&spans, "selftest.llm");
        let tool = find_span(&spans, "selftest.tool");

        assert!(run.is_root(), "{tree}");
        assert_eq!(run.kind, "server", "{tree}");
        assert_eq!(run.attr_str("run.id"), Some("r-1"), "{tree}");
        assert_eq!(run.attr_i64("run.seed"), Some(42), "{tree}");
        assert_eq!(run.trace_id.len(), 32);
        assert_eq!(run.span_id.len(), 16);

        assert_eq!(llm.parent_span_id, run.span_id, "{tree}");
        assert_eq!(llm.trace_id, run.trace_id, "{tree}");
        assert_eq!(llm.kind, "client", "{tree}");
        assert_eq!(llm.attr_str("gen_ai.request.model"), Some("test-model"));
        assert_eq!(llm.attr("gen_ai.usage.input_tokens"), Some(&json!(120)));
        assert_eq!(llm.attr("temperature"), Some(&json!(0.5)));
        assert_eq!(llm.attr("stream"), Some(&json!(true)));
        let retry = llm.event("retry").expect("the retry event");
        assert_eq!(retry.attributes.get("attempt"), Some(&json!(1)));

        assert_eq!(tool.parent_span_id, llm.span_id, "{tree}");
        assert_eq!(tool.kind, "internal");
        assert!(tool.is_error(), "{tree}");
        assert_eq!(tool.status_message, "tool failed");
        assert!(tool.start_ns >= llm.start_ns && tool.end_ns <= llm.end_ns && llm.end_ns <= run.end_ns);

        assert_eq!(
            children_of(&spans, run).iter().map(|span| span.name.as_str()).collect::<Vec<_>>(),
            ["selftest.llm"]
        );
        assert_eq!(root_of(&spans, tool).span_id, run.span_id);
        assert_eq!(trace_root(&spans, &tool.trace_id).map(|span| span.name.as_str()), Some("selftest.run"));
        assert!(is_descendant(&spans, tool, run));
        assert!(!is_descendant(&spans, run, tool));

        for span in [run, llm, tool] {
            assert_eq!(span.resource_str("service.name"), Some("otlp-selftest"), "{span:?}");
            assert_eq!(span.resource_str("test.case"), Some(case), "{span:?}");
            assert_eq!(span.resource.get("deployment.id"), Some(&json!(7)), "{span:?}");
            assert_eq!(span.scope, "agentry.selftest");
        }

        // The tree shows nesting by indentation, kinds, statuses and attributes.
        let lines: Vec<&str> = tree.lines().collect();
        assert!(lines[0].starts_with(&format!("trace {} service.name=otlp-selftest", run.trace_id)), "{tree}");
        assert!(lines[1].starts_with("  selftest.run [server]"), "{tree}");
        assert!(lines[1].contains("run.id=r-1"), "{tree}");
        assert!(lines[2].starts_with("    selftest.llm [client]"), "{tree}");
        assert!(lines[3].starts_with("      · retry {attempt=1}"), "{tree}");
        assert!(lines[4].starts_with("      selftest.tool [internal]"), "{tree}");
        assert!(lines[4].contains("status=error(tool failed)"), "{tree}");
        spans
    }

    /// Waits for the metrics of [`export_metrics`] and checks the histogram's buckets and the
    /// counter.
    async fn assert_metrics_arrived(receiver: &OtlpReceiver, case: &str) {
        let latency = receiver.wait_for_metric("selftest.latency", WAIT).await;
        let summary = metrics_summary(&receiver.metrics());
        assert_eq!(latency.kind, "histogram", "{summary}");
        assert_eq!(latency.unit, "ms");
        assert_eq!(latency.description, "test latency");
        assert_eq!(latency.temporality, "cumulative");
        assert_eq!(latency.scope, "agentry.selftest");
        assert_eq!(latency.resource.get("service.name"), Some(&json!("otlp-selftest")));
        assert_eq!(latency.resource.get("test.case"), Some(&json!(case)));
        let point = latency.point(&[("model", "test-model")]).expect("a point for model=test-model");
        let histogram = point.histogram().expect("a histogram point");
        assert_eq!(histogram.explicit_bounds, [10.0, 100.0, 1000.0], "{summary}");
        assert_eq!(histogram.bucket_counts, [1, 2, 0, 1], "{summary}");
        assert_eq!(histogram.count, 4);
        assert_eq!(histogram.sum, Some(5105.0));
        assert_eq!(histogram.min, Some(5.0));
        assert_eq!(histogram.max, Some(5000.0));
        assert_eq!(latency.total_count(), 4);

        let calls = receiver.wait_for_metric("selftest.calls", WAIT).await;
        assert_eq!(calls.kind, "sum", "{summary}");
        assert!(calls.monotonic);
        assert_eq!(calls.point(&[("model", "test-model")]).and_then(Point::as_i64), Some(3), "{summary}");
        assert_eq!(calls.total(), 3.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sdk_exports_over_grpc_arrive() {
        let receiver = OtlpReceiver::start().await;
        let via = Via::Grpc(receiver.grpc_endpoint());
        export_trace(&via, "grpc").await;
        export_metrics(&via, "grpc").await;
        let spans = assert_trace_arrived(&receiver, "grpc").await;
        assert_metrics_arrived(&receiver, "grpc").await;
        assert!(spans.iter().all(|span| span.transport == Transport::Grpc));
        let counts = receiver.export_counts();
        assert!(counts.grpc_traces >= 1 && counts.grpc_metrics >= 1, "{counts:?}");
        assert_eq!(counts.http(), 0, "{counts:?}");
        assert_eq!(receiver.trace_requests().len(), counts.grpc_traces);
        eprintln!("{}", receiver.span_tree());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sdk_exports_over_http_arrive() {
        let receiver = OtlpReceiver::start().await;
        let via = Via::Http(receiver.http_endpoint());
        export_trace(&via, "http").await;
        export_metrics(&via, "http").await;
        let spans = assert_trace_arrived(&receiver, "http").await;
        assert_metrics_arrived(&receiver, "http").await;
        assert!(spans.iter().all(|span| span.transport == Transport::Http));
        let counts = receiver.export_counts();
        assert!(counts.http_traces >= 1 && counts.http_metrics >= 1, "{counts:?}");
        assert_eq!(counts.grpc(), 0, "{counts:?}");
        assert_eq!(counts.rejected, 0, "{counts:?}");
    }

    fn hand_made_request(name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        name: name.to_owned(),
                        kind: 3,
                        attributes: vec![ProtoKeyValue {
                            key: "blob".to_owned(),
                            value: Some(AnyValue { value: Some(any_value::Value::BytesValue(vec![0xde, 0xad])) }),
                            ..ProtoKeyValue::default()
                        }],
                        ..Span::default()
                    }],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    /// The HTTP endpoint decodes gzip bodies, refuses JSON, and waiters time out with the tree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_endpoint_takes_gzip_and_refuses_json() {
        let receiver = OtlpReceiver::start().await;
        let client = reqwest::Client::new();

        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&hand_made_request("hand.made").encode_to_vec()).expect("gzip");
        let response = client
            .post(receiver.http_traces_url())
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "gzip")
            .body(gzip.finish().expect("gzip"))
            .send()
            .await
            .expect("POST /v1/traces");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers().get("content-type").map(|v| v.as_bytes()), Some(&b"application/x-protobuf"[..]));

        let span = receiver.wait_for_span("hand.made", WAIT).await;
        assert_eq!(span.trace_id, "ab".repeat(16));
        assert_eq!(span.span_id, "01".repeat(8));
        assert_eq!(span.parent_span_id, "");
        assert_eq!(span.kind, "client");
        assert_eq!(span.attr_str("blob"), Some("dead"));
        assert_eq!(span.scope, "");

        let response = client
            .post(receiver.http_traces_url())
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("POST /v1/traces");
        assert_eq!(response.status(), 415);
        let counts = receiver.export_counts();
        assert_eq!((counts.http_traces, counts.gzip, counts.rejected), (1, 1, 1), "{counts:?}");

        assert_eq!(
            receiver.try_wait_for_spans(|spans| spans.len() > 1, Duration::from_millis(50)).await,
            None,
            "nothing else was sent"
        );
        let waited = tokio::spawn(async move {
            receiver.wait_for_span("never.sent", Duration::from_millis(100)).await;
        })
        .await;
        let panic = waited.expect_err("the wait times out").into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("hand.made [client]"), "{message}");
    }

    /// rotel in the middle: the SDK exports traces over gRPC and metrics over HTTP to rotel,
    /// which forwards both over gRPC (gzip) to the receiver, keeping resources, parentage and
    /// histogram buckets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotel_forwards_to_the_receiver() {
        let receiver = OtlpReceiver::start().await;
        let mut rotel = Rotel::start(&receiver.grpc_endpoint()).await;
        export_trace(&Via::Grpc(rotel.grpc_endpoint()), "rotel").await;
        export_metrics(&Via::Http(rotel.http_endpoint()), "rotel").await;
        let spans = assert_trace_arrived(&receiver, "rotel").await;
        assert_metrics_arrived(&receiver, "rotel").await;
        assert!(spans.iter().all(|span| span.transport == Transport::Grpc));
        let counts = receiver.export_counts();
        assert_eq!(counts.http(), 0, "rotel forwards over gRPC: {counts:?}");
        assert!(counts.gzip >= 2, "rotel compresses with gzip by default: {counts:?}");
        assert!(rotel.is_running(), "{}", rotel.output());
        eprintln!("{}", receiver.span_tree());
    }

    /// rotel holds a batch until its timeout, and flushes it when stopped with SIGTERM.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotel_flushes_its_batch_on_stop() {
        let receiver = OtlpReceiver::start().await;
        let mut rotel = Rotel::start_with_args(&receiver.grpc_endpoint(), &["--batch-timeout", "60s"]).await;
        export_trace(&Via::Http(rotel.http_endpoint()), "rotel-stop").await;
        assert!(
            receiver.try_wait_for_spans(|spans| !spans.is_empty(), Duration::from_millis(200)).await.is_none(),
            "rotel forwarded before its batch timeout:\n{}",
            receiver.span_tree()
        );
        rotel.stop(Duration::from_secs(10)).await;
        assert_trace_arrived(&receiver, "rotel-stop").await;
        assert_eq!(receiver.export_counts().grpc_traces, 1, "one batch: {:?}", receiver.export_counts());
        assert!(!rotel.is_running());
    }
}
