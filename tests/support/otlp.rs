//! Telemetry support for the tests: an OTLP receiver, span and metric renderers, and a rotel
//! collector fixture.
//!
//! - [`OtlpReceiver`] (`otlp/receiver.rs`) is what a real run of agentry exports to: OTLP/gRPC
//!   and OTLP/HTTP (protobuf) on 127.0.0.1, decoded with `opentelemetry-proto`; tests read what
//!   arrived or await it (woken by each export, no polling).
//! - `otlp/received.rs` flattens each export into [`ReceivedSpan`]s and [`ReceivedMetric`]s.
//! - `otlp/tree.rs` finds spans ([`children_of`], [`spans_named`]) and renders them as indented
//!   trees ([`span_tree`]) and metrics as lines ([`metrics_summary`]) for failure messages.
//! - [`Rotel`] (`otlp/rotel.rs`) runs the rotel collector in front of a receiver: `agentry → rotel
//!   → OtlpReceiver` is the shape of a deployment behind a collector.

#[path = "otlp/received.rs"]
mod received;
#[path = "otlp/receiver.rs"]
mod receiver;
#[path = "otlp/rotel.rs"]
mod rotel;
#[path = "otlp/tree.rs"]
mod tree;

pub use received::ReceivedSpan;
pub use receiver::OtlpReceiver;
pub use rotel::Rotel;
pub use tree::{children_of, metrics_summary, spans_named};
