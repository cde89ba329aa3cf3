//! What the receiver keeps of an export: spans and metrics flattened out of their resource and
//! scope, attribute values as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric, number_data_point};
use serde_json::Value;

/// The protocol an export arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
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
    /// HTTP requests refused (bad content type or encoding, undecodable body).
    pub rejected: usize,
}

impl ExportCounts {
    pub fn grpc(&self) -> usize {
        self.grpc_traces + self.grpc_metrics
    }
    pub fn http(&self) -> usize {
        self.http_traces + self.http_metrics
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
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
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Resource attributes (`service.name`, ...).
    pub resource: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(Value::as_str)
    }
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
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    pub count: u64,
    pub sum: Option<f64>,
    /// One more than `explicit_bounds`: bucket `i` counts values in `(bounds[i-1], bounds[i]]`.
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    Int(i64),
    Double(f64),
    Histogram(HistogramPoint),
    /// Exponential histograms and summaries, reduced to their count and sum.
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
    pub value: PointValue,
}

impl Point {
    /// The value of an integer gauge or sum point.
    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            PointValue::Int(value) => Some(value),
            _ => None,
        }
    }
    pub fn histogram(&self) -> Option<&HistogramPoint> {
        match &self.value {
            PointValue::Histogram(histogram) => Some(histogram),
            _ => None,
        }
    }
    /// Whether every `(key, value)` pair is among the point's string attributes.
    pub fn has_attrs(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(key, want)| self.attributes.get(*key).and_then(Value::as_str) == Some(*want))
    }
}

/// One metric of one export. A periodic reader exports the same metric again and again:
/// [`OtlpReceiver::metric`](super::OtlpReceiver::metric) picks the latest.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    pub name: String,
    pub unit: String,
    /// `"gauge"`, `"sum"`, `"histogram"`, `"exponential_histogram"`, `"summary"` or `"empty"`.
    pub kind: &'static str,
    /// For sums: whether monotonic (a counter).
    pub monotonic: bool,
    pub points: Vec<Point>,
    pub transport: Transport,
}

impl ReceivedMetric {
    /// The first point whose attributes include all of `wanted`.
    pub fn point(&self, wanted: &[(&str, &str)]) -> Option<&Point> {
        self.points.iter().find(|point| point.has_attrs(wanted))
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// An OTLP attribute value as JSON; bytes become a lower-case hex string.
fn to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(value)) => Value::String(value.clone()),
        Some(any_value::Value::BoolValue(value)) => Value::Bool(*value),
        Some(any_value::Value::IntValue(value)) => Value::from(*value),
        Some(any_value::Value::DoubleValue(value)) => {
            serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => Value::Array(array.values.iter().map(to_json).collect()),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes(&list.values).into_iter().collect()),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, to_json))).collect()
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

pub(super) fn flatten_spans(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
        for span in resource_spans.scope_spans.iter().flat_map(|scope| &scope.spans) {
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
                    .map(|event| ReceivedEvent { name: event.name.clone(), attributes: attributes(&event.attributes) })
                    .collect(),
                status_code: status.code,
                status_message: status.message,
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                resource: resource.clone(),
            });
        }
    }
    out
}

fn number_points(points: &[NumberDataPoint]) -> Vec<Point> {
    points
        .iter()
        .map(|point| Point {
            attributes: attributes(&point.attributes),
            value: match point.value {
                Some(number_data_point::Value::AsInt(value)) => PointValue::Int(value),
                Some(number_data_point::Value::AsDouble(value)) => PointValue::Double(value),
                None => PointValue::Empty,
            },
        })
        .collect()
}

pub(super) fn flatten_metrics(request: &ExportMetricsServiceRequest, transport: Transport) -> Vec<ReceivedMetric> {
    let metrics = request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics);
    metrics
        .map(|metric| {
            let (kind, monotonic, points) = match &metric.data {
                None => ("empty", false, Vec::new()),
                Some(metric::Data::Gauge(gauge)) => ("gauge", false, number_points(&gauge.data_points)),
                Some(metric::Data::Sum(sum)) => ("sum", sum.is_monotonic, number_points(&sum.data_points)),
                Some(metric::Data::Histogram(histogram)) => {
                    let points = histogram.data_points.iter().map(|point| Point {
                        attributes: attributes(&point.attributes),
                        value: PointValue::Histogram(HistogramPoint {
                            count: point.count,
                            sum: point.sum,
                            bucket_counts: point.bucket_counts.clone(),
                            explicit_bounds: point.explicit_bounds.clone(),
                        }),
                    });
                    ("histogram", false, points.collect())
                }
                Some(metric::Data::ExponentialHistogram(histogram)) => {
                    let points = histogram.data_points.iter().map(|point| Point {
                        attributes: attributes(&point.attributes),
                        value: PointValue::CountSum { count: point.count, sum: point.sum.unwrap_or_default() },
                    });
                    ("exponential_histogram", false, points.collect())
                }
                Some(metric::Data::Summary(summary)) => {
                    let points = summary.data_points.iter().map(|point| Point {
                        attributes: attributes(&point.attributes),
                        value: PointValue::CountSum { count: point.count, sum: point.sum },
                    });
                    ("summary", false, points.collect())
                }
            };
            ReceivedMetric { name: metric.name.clone(), unit: metric.unit.clone(), kind, monotonic, points, transport }
        })
        .collect()
}
