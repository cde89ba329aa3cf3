//! Logs, traces and metrics.
//!
//! - **Logs**: `tracing` to stderr, human-readable or JSON (`telemetry.log_format`), levels from
//!   `RUST_LOG` (default `warn,agentry=info`: HTTP and MCP libraries log per request, which is
//!   noise in a batch). Header values are marked sensitive where they are built, so even
//!   `RUST_LOG=trace` does not print a key.
//! - **Traces and metrics**: exported over OTLP when an endpoint is set
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, the signal-specific `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//!   `…_METRICS_ENDPOINT` winning, else `telemetry.otlp_endpoint`), over gRPC or HTTP/protobuf
//!   (`OTEL_EXPORTER_OTLP_PROTOCOL`, `grpc` or `http/protobuf`, the spec's default). The SDK
//!   reads `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`;
//!   `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none` turn export off. No
//!   endpoint: nothing is exported and nothing is said about it.
//! - **Shutdown**: [`Telemetry::shutdown`] flushes both signals with a bound, so an unreachable
//!   collector costs a few seconds and one warning at exit, never a hang.
//!
//! Span and metric names are in [`names`]; [`metrics`] holds the instruments.

pub mod metrics;
pub mod names;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the final flush at exit may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed exporters; [`Telemetry::shutdown`] flushes them.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

static INSTALLED: OnceLock<()> = OnceLock::new();
static EXPORTERS: std::sync::Mutex<Option<Telemetry>> = std::sync::Mutex::new(None);

/// Flushes and stops the exporters [`init`] installed (once; later calls do nothing).
pub async fn flush() {
    let installed = EXPORTERS.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(telemetry) = installed {
        telemetry.shutdown().await;
    }
}

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// `grpc` or HTTP/protobuf.
    pub grpc: bool,
    /// Full endpoint (for HTTP including `/v1/traces` or `/v1/metrics`).
    pub endpoint: String,
}

/// Resolves the OTLP target of one signal (`traces`, `metrics`) from `OTEL_*` variables and
/// the configured endpoint, following the OTLP exporter specification.
pub fn otlp_target(signal: &str, configured: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<OtlpTarget> {
    let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let upper = signal.to_uppercase();
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var(&format!("OTEL_{upper}_EXPORTER")).is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    let protocol = var(&format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let grpc = protocol.eq_ignore_ascii_case("grpc");
    if let Some(endpoint) = var(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) {
        return Some(OtlpTarget { grpc, endpoint });
    }
    let base =
        var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| Some(configured.trim().to_owned()).filter(|c| !c.is_empty()))?;
    let endpoint = if grpc { base } else { format!("{}/v1/{signal}", base.trim_end_matches('/')) };
    Some(OtlpTarget { grpc, endpoint })
}

/// Installs logging and, when an endpoint is set, OTLP export. Call once, inside the tokio
/// runtime (the exporters run on it); later calls do nothing. [`flush`] at exit.
pub fn init(settings: &TelemetrySettings) {
    if INSTALLED.set(()).is_err() {
        return;
    }
    let env = |name: &str| std::env::var(name).ok();
    let mut problems = Vec::new();
    let resource = resource();
    let tracer = otlp_target("traces", &settings.otlp_endpoint, &env).and_then(|target| {
        tracer_provider(&target, resource.clone())
            .map_err(|e| problems.push(format!("traces to {}: {e}", target.endpoint)))
            .ok()
    });
    let meter = otlp_target("metrics", &settings.otlp_endpoint, &env).and_then(|target| {
        meter_provider(&target, resource)
            .map_err(|e| problems.push(format!("metrics to {}: {e}", target.endpoint)))
            .ok()
    });
    if let Some(meter) = &meter {
        opentelemetry::global::set_meter_provider(meter.clone());
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // The SDK's own diagnostics go through `tracing`; they are kept out of the default
    // filter, and a failed final flush is reported once by `shutdown`. rmcp logs a dying
    // transport at ERROR; agentry reports the same event itself, with the server's name.
    // Below ERROR, rmcp logs whole JSON-RPC messages (tool results, a server's error message
    // quoting its token): whatever RUST_LOG asks for `rmcp`, it gets errors only.
    let filter = EnvFilter::try_from_default_env()
        .map(|filter| match "rmcp=error".parse() {
            Ok(cap) => filter.add_directive(cap),
            Err(_) => filter,
        })
        .unwrap_or_else(|_| EnvFilter::new("warn,agentry=info,opentelemetry_sdk=off,opentelemetry-otlp=off,rmcp=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_ansi(ansi)
            .fmt_fields(log_fields())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Only agentry's own spans become OpenTelemetry spans: the actor runtime's and the MCP
    // library's internal spans would add a dozen one-span traces per run.
    let otel = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agentry"))
            .with_error_records_to_exceptions(true)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("agentry", tracing::Level::TRACE))
    });
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(otel).try_init();
    for problem in problems {
        tracing::warn!(%problem, "OTLP export not started");
    }
    *EXPORTERS.lock().unwrap_or_else(|p| p.into_inner()) = Some(Telemetry { tracer, meter });
}

/// Text logs show a span's identifying fields (`question.id`, `trace_id`, …) but not the
/// OpenTelemetry attributes that exist for the trace backend (`otel.*`, `gen_ai.*`, …), which
/// would repeat on every line.
fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    const TRACE_ONLY: &[&str] = &["otel.", "gen_ai.", "server.", "mcp.", "network.", "error.type", "agentry.route"];
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let name = field.name();
        if TRACE_ONLY.iter().any(|prefix| name.starts_with(prefix)) {
            return Ok(());
        }
        if name == "message" { write!(writer, "{value:?}") } else { write!(writer, " {name}={value:?}") }
    })
}

fn resource() -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("agentry");
    }
    builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
}

/// Builds an OTLP exporter (spans or metrics: the builders share their shape) for `target`.
macro_rules! otlp_exporter {
    ($builder:expr, $target:expr) => {
        if $target.grpc {
            $builder.with_tonic().with_endpoint(&$target.endpoint).with_timeout(EXPORT_TIMEOUT).build()
        } else {
            $builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&$target.endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
    };
}

fn tracer_provider(
    target: &OtlpTarget,
    resource: Resource,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = otlp_exporter!(opentelemetry_otlp::SpanExporter::builder(), target)?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(exporter, Tokio)
            .build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

fn meter_provider(
    target: &OtlpTarget,
    resource: Resource,
) -> Result<SdkMeterProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = otlp_exporter!(opentelemetry_otlp::MetricExporter::builder(), target)?;
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(exporter, Tokio)
            .with_interval(Duration::from_secs(10))
            .build();
    Ok(SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build())
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Flushes and stops the exporters, bounded by a few seconds; warns once on failure.
    pub async fn shutdown(self) {
        if !self.exporting() {
            return;
        }
        // Shutting down blocks on the export task, which runs on this runtime: from a
        // blocking thread, so the runtime's workers stay free to run it.
        let flush = tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            if let Some(tracer) = self.tracer
                && let Err(error) = tracer.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
            {
                failures.push(format!("traces: {error}"));
            }
            if let Some(meter) = self.meter
                && let Err(error) = meter.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
            {
                failures.push(format!("metrics: {error}"));
            }
            failures
        });
        let failures = match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok(failures)) => failures,
            Ok(Err(error)) => vec![error.to_string()],
            Err(_) => vec![format!("no answer within {SHUTDOWN_TIMEOUT:?}")],
        };
        if !failures.is_empty() {
            tracing::warn!(failures = %failures.join("; "), "telemetry was not fully exported at exit (is the OTLP collector reachable?)");
        }
    }
}

/// The W3C `traceparent` of the current span (`None` when traces are not exported).
pub fn traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// The trace id of a span (`None` when traces are not exported).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Whether prompts, answers and tool arguments may go into spans
/// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`).
pub fn capture_content() -> bool {
    static CAPTURE: OnceLock<bool> = OnceLock::new();
    *CAPTURE.get_or_init(|| {
        std::env::var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn endpoints_follow_the_otlp_exporter_rules() {
        assert_eq!(otlp_target("traces", "", &env(&[])), None, "nothing configured: nothing exported");
        let http = otlp_target("traces", "", &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]));
        assert_eq!(http, Some(OtlpTarget { grpc: false, endpoint: "http://c:4318/v1/traces".into() }));
        let grpc = otlp_target("metrics", "http://cfg:4317", &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]));
        assert_eq!(grpc, Some(OtlpTarget { grpc: true, endpoint: "http://cfg:4317".into() }));
        let specific = otlp_target(
            "traces",
            "",
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
            ]),
        );
        assert_eq!(specific, Some(OtlpTarget { grpc: false, endpoint: "http://t:9/x".into() }));
        assert_eq!(otlp_target("traces", "http://c:4318", &env(&[("OTEL_SDK_DISABLED", "true")])), None);
        assert_eq!(otlp_target("metrics", "http://c:4318", &env(&[("OTEL_METRICS_EXPORTER", "none")])), None);
    }
}
