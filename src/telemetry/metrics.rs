//! agentry's metric instruments, created once from [`super::names::INSTRUMENTS`].
//!
//! Recording is cheap and safe without an exporter: the global meter provider is then a
//! no-op.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

use super::names::{self, Instrument, InstrumentKind};

/// The instruments.
pub struct Metrics {
    /// `gen_ai.client.token.usage`
    pub token_usage: Histogram<u64>,
    /// `gen_ai.client.operation.duration`
    pub operation_duration: Histogram<f64>,
    /// `gen_ai.client.operation.time_to_first_chunk`
    pub time_to_first_chunk: Histogram<f64>,
    /// `mcp.client.operation.duration`
    pub mcp_duration: Histogram<f64>,
    /// `agentry.questions`
    pub questions: Counter<u64>,
    /// `agentry.tool.calls`
    pub tool_calls: Counter<u64>,
    /// `agentry.mcp.restarts`
    pub mcp_restarts: Counter<u64>,
    /// `agentry.credential.rotations`
    pub rotations: Counter<u64>,
    /// `agentry.model.route`
    pub route: Gauge<u64>,
    /// `agentry.rate_limit.wait`
    pub rate_limit_wait: Histogram<f64>,
    /// `agentry.rate_limit.refusals`
    pub rate_limit_refusals: Counter<u64>,
    /// `agentry.rate_limit.in_flight_limit`
    pub rate_limit_in_flight: Gauge<u64>,
    /// `otel.sdk.processor.span.processed`
    pub spans_processed: Counter<u64>,
}

fn spec(name: &str) -> &'static Instrument {
    names::INSTRUMENTS.iter().find(|i| i.name == name).unwrap_or(&names::INSTRUMENTS[0])
}

fn histogram_u64(meter: &Meter, name: &'static str) -> Histogram<u64> {
    let spec = spec(name);
    debug_assert_eq!(spec.kind, InstrumentKind::Histogram);
    meter
        .u64_histogram(name)
        .with_unit(spec.unit)
        .with_description(spec.description)
        .with_boundaries(spec.buckets.to_vec())
        .build()
}

fn histogram_f64(meter: &Meter, name: &'static str) -> Histogram<f64> {
    let spec = spec(name);
    meter
        .f64_histogram(name)
        .with_unit(spec.unit)
        .with_description(spec.description)
        .with_boundaries(spec.buckets.to_vec())
        .build()
}

fn counter(meter: &Meter, name: &'static str) -> Counter<u64> {
    let spec = spec(name);
    meter.u64_counter(name).with_unit(spec.unit).with_description(spec.description).build()
}

/// The instruments, registered on first use with the global meter provider.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("agentry");
        let route = spec(names::ROUTE);
        let in_flight = spec(names::RATE_LIMIT_IN_FLIGHT);
        Metrics {
            token_usage: histogram_u64(&meter, names::TOKEN_USAGE),
            operation_duration: histogram_f64(&meter, names::OPERATION_DURATION),
            time_to_first_chunk: histogram_f64(&meter, names::TIME_TO_FIRST_CHUNK),
            mcp_duration: histogram_f64(&meter, names::MCP_OPERATION_DURATION),
            questions: counter(&meter, names::QUESTIONS),
            tool_calls: counter(&meter, names::TOOL_CALLS),
            mcp_restarts: counter(&meter, names::MCP_RESTARTS),
            rotations: counter(&meter, names::CREDENTIAL_ROTATIONS),
            route: meter.u64_gauge(names::ROUTE).with_unit(route.unit).with_description(route.description).build(),
            rate_limit_wait: histogram_f64(&meter, names::RATE_LIMIT_WAIT),
            rate_limit_refusals: counter(&meter, names::RATE_LIMIT_REFUSALS),
            rate_limit_in_flight: meter
                .u64_gauge(names::RATE_LIMIT_IN_FLIGHT)
                .with_unit(in_flight.unit)
                .with_description(in_flight.description)
                .build(),
            spans_processed: counter(&meter, names::SPANS_PROCESSED),
        }
    })
}

/// An attribute.
pub fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}
