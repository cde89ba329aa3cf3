//! The OTLP receiver: gRPC (tonic, `TraceService` and `MetricsService`, gzip accepted) and HTTP
//! (`POST /v1/traces` and `POST /v1/metrics`, `application/x-protobuf`) on 127.0.0.1. Trace
//! exports can be held unanswered ([`OtlpReceiver::hold_traces`]): a collector that does not keep
//! up, made deterministic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;

use super::received::{ExportCounts, ReceivedMetric, ReceivedSpan, Transport, flatten_metrics, flatten_spans};
use super::tree::{metrics_summary, span_tree};

/// Largest export the receiver accepts, on either protocol.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
    counts: ExportCounts,
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped after every export, so waiters wake up.
    generation: watch::Sender<u64>,
    /// Whether trace exports are answered; while `false` they wait (a collector that does not
    /// keep up). See [`OtlpReceiver::hold_traces`].
    traces_open: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, change: impl FnOnce(&mut Store)) {
        change(&mut self.lock());
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Waits while trace exports are held.
    async fn traces_answered(&self) {
        let mut open = self.traces_open.subscribe();
        // The sender lives as long as `self`.
        let _ = open.wait_for(|open| *open).await;
    }

    fn record_traces(&self, request: &ExportTraceServiceRequest, transport: Transport) {
        let spans = flatten_spans(request);
        self.record(|store| {
            store.spans.extend(spans);
            match transport {
                Transport::Grpc => store.counts.grpc_traces += 1,
                Transport::Http => store.counts.http_traces += 1,
            }
        });
    }

    fn record_metrics(&self, request: &ExportMetricsServiceRequest, transport: Transport) {
        let metrics = flatten_metrics(request, transport);
        self.record(|store| {
            store.metrics.extend(metrics);
            match transport {
                Transport::Grpc => store.counts.grpc_metrics += 1,
                Transport::Http => store.counts.http_metrics += 1,
            }
        });
    }
}

/// An OTLP receiver on 127.0.0.1 with a gRPC and an HTTP endpoint. Every export is flattened
/// into [`ReceivedSpan`]s and [`ReceivedMetric`]s. The servers stop when it is dropped.
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds both endpoints on free loopback ports and starts serving; exporters may connect as
    /// soon as this returns.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            generation: watch::Sender::new(0),
            traces_open: watch::Sender::new(true),
        });
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

    /// The OTLP/HTTP base endpoint, `http://127.0.0.1:PORT` (exporters append `/v1/traces` and
    /// `/v1/metrics`, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// From now on trace exports (either protocol) get no answer until [`release_traces`]:
    /// the exporter's first export waits, and agentry's export queue fills behind it. Metrics
    /// are still answered.
    ///
    /// [`release_traces`]: Self::release_traces
    pub fn hold_traces(&self) {
        self.shared.traces_open.send_replace(false);
    }

    /// Answers the held trace exports (recorded in arrival order) and the ones after them.
    pub fn release_traces(&self) {
        self.shared.traces_open.send_replace(true);
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

    pub fn export_counts(&self) -> ExportCounts {
        self.shared.lock().counts
    }

    /// The spans received so far, rendered by [`span_tree`].
    pub fn span_tree(&self) -> String {
        span_tree(&self.spans())
    }

    /// Waits until `predicate` holds for the spans received so far, and returns them.
    ///
    /// # Panics
    /// After `timeout`, with the spans received so far as a tree.
    pub async fn wait_for_spans(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        self.wait_until(|store| predicate(&store.spans).then(|| store.spans.clone()), timeout).await.unwrap_or_else(
            |store| {
                panic!(
                    "OtlpReceiver: the spans did not satisfy the predicate within {timeout:?}; exports {:?}:\n{}",
                    store.counts,
                    span_tree(&store.spans)
                )
            },
        )
    }

    /// Waits for a span named `name` and returns the first one (panics as
    /// [`wait_for_spans`](Self::wait_for_spans)).
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> ReceivedSpan {
        let spans = self.wait_for_spans(|spans| spans.iter().any(|span| span.name == name), timeout).await;
        spans.into_iter().find(|span| span.name == name).expect("the predicate found it")
    }

    /// Waits for a metric named `name` and returns its latest export.
    ///
    /// # Panics
    /// After `timeout`, listing the metrics received so far.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> ReceivedMetric {
        let latest = |store: &Store| store.metrics.iter().rev().find(|metric| metric.name == name).cloned();
        self.wait_until(latest, timeout).await.unwrap_or_else(|store| {
            panic!(
                "OtlpReceiver: no metric {name:?} within {timeout:?}; exports {:?}; received:\n{}",
                store.counts,
                metrics_summary(&store.metrics)
            )
        })
    }

    /// Waits until `check` returns something, checking again after every export; on timeout,
    /// the store as it is then, for the panic message.
    async fn wait_until<T>(
        &self,
        check: impl Fn(&Store) -> Option<T>,
        timeout: Duration,
    ) -> Result<T, MutexGuard<'_, Store>> {
        // Subscribed before the first check, so an export between check and wait is not missed.
        let mut changes = self.shared.generation.subscribe();
        let found = tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                if let Some(found) = check(&self.shared.lock()) {
                    return found;
                }
                // The sender lives as long as `self`.
                let _ = changes.changed().await;
            }
        })
        .await;
        let store = self.shared.lock();
        found.or_else(|_| check(&store).ok_or(store))
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

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces_answered().await;
        self.0.record_traces(request.get_ref(), Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.record_metrics(request.get_ref(), Transport::Grpc);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Decodes an uncompressed OTLP/HTTP protobuf body, or says why not (agentry's HTTP exporter
/// sends no `Content-Encoding`).
fn decode_http<M: prost::Message + Default>(headers: &HeaderMap, body: &[u8]) -> Result<M, (StatusCode, String)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    let content_type = text(header::CONTENT_TYPE);
    if !content_type.starts_with("application/x-protobuf") {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("application/x-protobuf only, not {content_type:?}")));
    }
    let encoding = text(header::CONTENT_ENCODING);
    if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {encoding:?}")));
    }
    M::decode(body).map_err(|err| (StatusCode::BAD_REQUEST, format!("bad protobuf body: {err}")))
}

/// Answers an OTLP/HTTP export: records it and replies with an empty protobuf response, or
/// counts it as rejected and says why.
fn answer_http<M: prost::Message + Default, R: prost::Message + Default>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    record: impl FnOnce(&Shared, &M),
) -> Response {
    match decode_http::<M>(headers, body) {
        Ok(request) => {
            record(shared, &request);
            ([(header::CONTENT_TYPE, "application/x-protobuf")], R::default().encode_to_vec()).into_response()
        }
        Err(refusal) => {
            shared.record(|store| store.counts.rejected += 1);
            refusal.into_response()
        }
    }
}

async fn http_traces(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    shared.traces_answered().await;
    answer_http::<ExportTraceServiceRequest, ExportTraceServiceResponse>(&shared, &headers, &body, |shared, request| {
        shared.record_traces(request, Transport::Http)
    })
}

async fn http_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    answer_http::<ExportMetricsServiceRequest, ExportMetricsServiceResponse>(
        &shared,
        &headers,
        &body,
        |shared, request| shared.record_metrics(request, Transport::Http),
    )
}
