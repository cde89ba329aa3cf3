//! Logs, traces and metrics.
//!
//! - **Logs**: `tracing` to stderr, human-readable or JSON (`telemetry.log_format`), levels from
//!   `RUST_LOG` when it is set, else from `-q`/`-v` ([`Verbosity`]; default `warn,agentry=info`:
//!   HTTP and MCP libraries log per request, which is noise in a batch). Colour only on a
//!   terminal and without `NO_COLOR`. Header values are marked sensitive where they are built,
//!   so even `RUST_LOG=trace` does not print a key.
//! - **Log levels govern only the logs**: the level filter is the log layer's own; the
//!   OpenTelemetry layer has a fixed one (agentry's spans and events at INFO and above), so the
//!   spans exported are the same at every log level, `RUST_LOG=error` and `-q` included.
//! - **Traces and metrics**: exported over OTLP when an endpoint is set
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, the signal-specific `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//!   `…_METRICS_ENDPOINT` winning, else `telemetry.otlp_endpoint`), over gRPC or HTTP/protobuf
//!   (`OTEL_EXPORTER_OTLP_PROTOCOL`, `grpc` or `http/protobuf`, the spec's default). The SDK
//!   reads `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`;
//!   `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none` turn export off. No
//!   endpoint: nothing is exported and nothing is said about it.
//!   One export may take `OTEL_EXPORTER_OTLP_TIMEOUT` (or the signal's own variable), else 3 s.
//! - **The export queue** ([`queue`]): the standard `OTEL_BSP_*` variables size it; spans
//!   dropped because it was full (a collector that cannot keep up) are counted in
//!   `otel.sdk.processor.span.processed{error.type="queue_full"}` and said at exit.
//! - **Shutdown**: [`Telemetry::shutdown`] flushes both signals with a bound, so an unreachable
//!   collector costs a few seconds and one warning at exit, never a hang.
//!
//! Span and metric names are in [`names`]; [`metrics`] holds the instruments.

pub mod metrics;
pub mod names;
pub mod queue;

use std::sync::atomic::{AtomicI8, Ordering};
use std::sync::{Arc, OnceLock};
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
use queue::{CountedExporter, CountedProcessor, QueueSettings, SpanCounts, SpanTally};

/// How long one export may take before it is abandoned, unless `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (or the signal's own `…_TRACES_TIMEOUT` / `…_METRICS_TIMEOUT`) says otherwise.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the final flush at exit may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed exporters; [`Telemetry::shutdown`] flushes them.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<Traces>,
    meter: Option<SdkMeterProvider>,
}

/// The trace pipeline and what its queue counted.
struct Traces {
    provider: SdkTracerProvider,
    counts: Arc<SpanCounts>,
    queue: QueueSettings,
    endpoint: String,
}

/// How much the logs say, from `-q` / `-v` (`RUST_LOG`, when set, wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    /// agentry's progress (`info`), other libraries' warnings.
    #[default]
    Normal,
    /// `-v`: agentry's `debug` too.
    Verbose,
    /// `-vv` (or more): agentry's `trace`, other libraries' `info`.
    Debug,
}

impl Verbosity {
    /// From the count of `-q` and `-v` flags.
    pub fn from_flags(quiet: bool, verbose: u8) -> Self {
        match (quiet, verbose) {
            (true, _) => Self::Quiet,
            (false, 0) => Self::Normal,
            (false, 1) => Self::Verbose,
            (false, _) => Self::Debug,
        }
    }

    /// The log filter this stands for. The SDK's own diagnostics and rmcp (which logs whole
    /// JSON-RPC messages below ERROR) stay off.
    pub fn directives(self) -> &'static str {
        match self {
            Self::Quiet => "error,opentelemetry_sdk=off,opentelemetry-otlp=off,rmcp=off",
            Self::Normal => "warn,agentry=info,opentelemetry_sdk=off,opentelemetry-otlp=off,rmcp=off",
            Self::Verbose => "warn,agentry=debug,opentelemetry_sdk=off,opentelemetry-otlp=off,rmcp=off",
            Self::Debug => "info,agentry=trace,opentelemetry_sdk=off,opentelemetry-otlp=off,rmcp=off",
        }
    }
}

/// The verbosity [`init`] installs, set once from the command line before it runs.
static VERBOSITY: AtomicI8 = AtomicI8::new(0);

/// Sets the log verbosity for [`init`] (from `-q` / `-v`; call before it).
pub fn set_verbosity(verbosity: Verbosity) {
    let level = match verbosity {
        Verbosity::Quiet => -1,
        Verbosity::Normal => 0,
        Verbosity::Verbose => 1,
        Verbosity::Debug => 2,
    };
    VERBOSITY.store(level, Ordering::Relaxed);
}

/// Whether `-q` asked for errors only (for output beside the logs, such as progress lines).
pub fn quiet() -> bool {
    verbosity() == Verbosity::Quiet
}

fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        i8::MIN..=-1 => Verbosity::Quiet,
        0 => Verbosity::Normal,
        1 => Verbosity::Verbose,
        _ => Verbosity::Debug,
    }
}

/// Whether logs may be coloured: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
pub fn colour_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
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
    let (queue, queue_problems) = QueueSettings::from_env(&env);
    let tracer = otlp_target("traces", &settings.otlp_endpoint, &env).and_then(|target| {
        tracer_provider(&target, resource.clone(), queue, &env)
            .map_err(|e| problems.push(format!("traces to {}: {e}", target.endpoint)))
            .ok()
    });
    let meter = otlp_target("metrics", &settings.otlp_endpoint, &env).and_then(|target| {
        meter_provider(&target, resource, &env)
            .map_err(|e| problems.push(format!("metrics to {}: {e}", target.endpoint)))
            .ok()
    });
    if let Some(meter) = &meter {
        opentelemetry::global::set_meter_provider(meter.clone());
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // The log filter is the log layer's alone (a per-layer filter): a quieter terminal never
    // means fewer spans. RUST_LOG (unless empty) wins over -q/-v; whatever it asks for `rmcp`, rmcp gets
    // errors only (below ERROR it logs whole JSON-RPC messages: tool results, a server's error
    // message quoting its token). The SDK's own diagnostics are kept out of the default filter;
    // a failed final flush is reported once by `shutdown`.
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let log_filter = rust_log
        .ok_or(())
        .and_then(|directives| EnvFilter::try_new(directives).map_err(drop))
        .map(|filter| match "rmcp=error".parse() {
            Ok(cap) => filter.add_directive(cap),
            Err(_) => filter,
        })
        .unwrap_or_else(|_| EnvFilter::new(verbosity().directives()));
    let ansi =
        colour_allowed(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR").as_deref());
    let logs = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_ansi(ansi)
            .fmt_fields(log_fields())
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(log_filter);
    // The OpenTelemetry layer's filter is fixed: agentry's own spans (and their events) at INFO
    // and above, at every log level. The actor runtime's and the MCP library's internal spans
    // would add a dozen one-span traces per run.
    let otel = tracer.as_ref().map(|traces| {
        tracing_opentelemetry::layer()
            .with_tracer(traces.provider.tracer("agentry"))
            .with_error_records_to_exceptions(true)
            .with_filter(otel_filter())
    });
    let _ = tracing_subscriber::registry().with(logs).with(otel).try_init();
    for problem in problems {
        tracing::warn!(%problem, "OTLP export not started");
    }
    if tracer.is_some() {
        for problem in queue_problems {
            tracing::warn!(%problem, "span export queue setting ignored");
        }
    }
    *EXPORTERS.lock().unwrap_or_else(|p| p.into_inner()) = Some(Telemetry { tracer, meter });
}

/// What reaches the OpenTelemetry layer, whatever the log level: agentry's spans and events at
/// INFO and above (what was exported at the default log level).
fn otel_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("agentry", tracing::Level::INFO)
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

/// Builds an OTLP exporter (spans or metrics: the builders share their shape) for `target`;
/// `timeout` is `None` when an `OTEL_EXPORTER_OTLP_*TIMEOUT` variable sets it (the exporter
/// reads those itself).
macro_rules! otlp_exporter {
    ($builder:expr, $target:expr, $timeout:expr) => {{
        if $target.grpc {
            let builder = $builder.with_tonic().with_endpoint(&$target.endpoint);
            match $timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
        } else {
            let builder = $builder.with_http().with_protocol(Protocol::HttpBinary).with_endpoint(&$target.endpoint);
            match $timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
        }
    }};
}

/// agentry's export timeout, unless the standard variables set one for `signal`.
fn export_timeout(signal: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Duration> {
    let set = |name: &str| env(name).is_some_and(|v| v.trim().parse::<u64>().is_ok());
    let specific = format!("OTEL_EXPORTER_OTLP_{}_TIMEOUT", signal.to_uppercase());
    (!set(&specific) && !set("OTEL_EXPORTER_OTLP_TIMEOUT")).then_some(EXPORT_TIMEOUT)
}

fn tracer_provider(
    target: &OtlpTarget,
    resource: Resource,
    queue: QueueSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Traces, opentelemetry_otlp::ExporterBuildError> {
    let exporter = otlp_exporter!(opentelemetry_otlp::SpanExporter::builder(), target, export_timeout("traces", env))?;
    let counts = Arc::new(SpanCounts::default());
    let exporter = CountedExporter::new(exporter, counts.clone());
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(queue.batch_config())
            .build();
    let processor = CountedProcessor::new(processor, queue.max_queue_size, counts.clone());
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    Ok(Traces { provider, counts, queue, endpoint: target.endpoint.clone() })
}

fn meter_provider(
    target: &OtlpTarget,
    resource: Resource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SdkMeterProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter =
        otlp_exporter!(opentelemetry_otlp::MetricExporter::builder(), target, export_timeout("metrics", env))?;
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
        // Traces first: the count of dropped spans is final then, and goes out with the metrics.
        let traces = self.tracer.as_ref().map(|t| (t.counts.clone(), t.queue, t.endpoint.clone()));
        let flush = tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            if let Some(tracer) = self.tracer
                && let Err(error) = tracer.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
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
        if let Some((counts, queue, endpoint)) = traces
            && let Some(lost) = lost_spans(counts.tally(), queue.max_queue_size)
        {
            tracing::warn!(collector = %endpoint, "{lost}");
        }
        if !failures.is_empty() {
            tracing::warn!(failures = %failures.join("; "), "telemetry was not fully exported at exit (is the OTLP collector reachable?)");
        }
    }
}

/// What to say at exit about spans that never reached the collector, when the queue lost some
/// (`None` otherwise: export failures alone are the flush's warning).
fn lost_spans(tally: SpanTally, max_queue_size: usize) -> Option<String> {
    if tally.dropped == 0 && tally.queued == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if tally.dropped > 0 {
        parts.push(format!(
            "{} span(s) dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE={max_queue_size}); \
             the collector did not keep up. Raise OTEL_BSP_MAX_QUEUE_SIZE or give the collector more room",
            tally.dropped
        ));
    }
    if tally.queued > 0 {
        parts.push(format!("{} span(s) still queued at exit", tally.queued));
    }
    let unacknowledged = tally.exported.saturating_sub(tally.delivered);
    if unacknowledged > 0 {
        parts.push(format!("{unacknowledged} span(s) sent but not acknowledged"));
    }
    let total = tally.dropped + tally.queued + tally.exported;
    let lost = tally.dropped + tally.queued + unacknowledged;
    Some(format!("telemetry: {lost} of {total} spans lost: {}", parts.join("; ")))
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
    fn lost_spans_are_said_with_their_causes_only_when_the_queue_lost_some() {
        let none = SpanTally::default();
        assert_eq!(lost_spans(none, 2048), None);
        let failed_export = SpanTally { exported: 5, ..none };
        assert_eq!(lost_spans(failed_export, 2048), None, "the flush's own warning says that");
        let slow = SpanTally { dropped: 27, queued: 4, exported: 4, delivered: 0 };
        let said = lost_spans(slow, 4).expect("said");
        assert!(said.starts_with("telemetry: 35 of 35 spans lost: 27 span(s) dropped"), "{said}");
        assert!(said.contains("(OTEL_BSP_MAX_QUEUE_SIZE=4)"), "{said}");
        assert!(said.ends_with("4 span(s) still queued at exit; 4 span(s) sent but not acknowledged"), "{said}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset (no-color.org)");
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn verbosity_maps_the_flags_onto_filters() {
        assert_eq!(Verbosity::from_flags(false, 0), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(true, 0), Verbosity::Quiet);
        assert_eq!(Verbosity::from_flags(false, 1), Verbosity::Verbose);
        assert_eq!(Verbosity::from_flags(false, 5), Verbosity::Debug);
        for verbosity in [Verbosity::Quiet, Verbosity::Normal, Verbosity::Verbose, Verbosity::Debug] {
            assert!(EnvFilter::try_new(verbosity.directives()).is_ok(), "{verbosity:?}");
            assert!(verbosity.directives().contains("rmcp=off"), "rmcp logs whole messages below ERROR");
        }
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
