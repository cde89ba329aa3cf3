//! Span queries, and renderings of spans and metrics for failure messages.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::received::{PointValue, ReceivedMetric, ReceivedSpan};

/// The spans whose parent is `span`, by start time.
pub fn children_of<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut children: Vec<&ReceivedSpan> =
        spans.iter().filter(|child| child.trace_id == span.trace_id && child.parent_span_id == span.span_id).collect();
    children.sort_by_key(|child| child.start_ns);
    children
}

fn parent_of<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    if span.is_root() {
        return None;
    }
    spans.iter().find(|parent| parent.trace_id == span.trace_id && parent.span_id == span.parent_span_id)
}

pub fn spans_named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// A value on one line, cut at 60 characters.
fn short_value(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.replace('\n', "⏎"),
        other => other.to_string(),
    };
    if text.chars().count() > 60 { format!("{}…", text.chars().take(57).collect::<String>()) } else { text }
}

/// Attributes `tracing-opentelemetry` puts on every span and event; the tree leaves them out.
const TREE_HIDDEN_ATTRIBUTES: &[&str] = &[
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

fn attrs_inline(attributes: &BTreeMap<String, Value>) -> String {
    attributes
        .iter()
        .filter(|(key, _)| !TREE_HIDDEN_ATTRIBUTES.contains(&key.as_str()))
        .map(|(key, value)| format!("{key}={}", short_value(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn braced(attrs: String) -> String {
    if attrs.is_empty() { attrs } else { format!(" {{{attrs}}}") }
}

/// Renders spans as one indented tree per trace, traces in order of their earliest span: a
/// line per span with its name, kind, duration (as recorded), status when set, and attributes;
/// its events follow as `· name {attrs}`. A span whose parent did not arrive is shown as a root
/// marked `(parent … missing)`.
pub fn span_tree(spans: &[ReceivedSpan]) -> String {
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
    let mut seen = HashSet::new();
    for (trace_id, _) in traces {
        let members: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.trace_id == trace_id).collect();
        let service = members[0].resource_str("service.name").map(|name| format!(" service.name={name}"));
        let _ = writeln!(out, "trace {trace_id}{} ({} span(s))", service.unwrap_or_default(), members.len());
        let mut roots: Vec<&ReceivedSpan> =
            members.into_iter().filter(|span| parent_of(spans, span).is_none()).collect();
        roots.sort_by_key(|span| span.start_ns);
        for root in roots {
            write_span(&mut out, spans, root, 1, &mut seen);
        }
    }
    out
}

fn write_span<'a>(
    out: &mut String,
    spans: &'a [ReceivedSpan],
    span: &'a ReceivedSpan,
    depth: usize,
    seen: &mut HashSet<&'a str>,
) {
    // A span id seen twice (a cycle, or a duplicate export) is shown once.
    if !seen.insert(&span.span_id) {
        return;
    }
    let indent = "  ".repeat(depth);
    let _ = write!(out, "{indent}{} [{}] {}", span.name, span.kind, format_duration(span.duration()));
    if span.status_code != 0 {
        let _ = write!(out, " status={}", span.status());
        if !span.status_message.is_empty() {
            let _ = write!(out, "({})", short_value(&Value::String(span.status_message.clone())));
        }
    }
    if !span.is_root() && parent_of(spans, span).is_none() {
        let _ = write!(out, " (parent {} missing)", span.parent_span_id);
    }
    let _ = writeln!(out, "{}", braced(attrs_inline(&span.attributes)));
    for event in &span.events {
        let _ = writeln!(out, "{indent}  · {}{}", event.name, braced(attrs_inline(&event.attributes)));
    }
    for child in children_of(spans, span) {
        write_span(out, spans, child, depth + 1, seen);
    }
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

/// One line per metric export (name, kind, unit, protocol), then one per point.
pub fn metrics_summary(metrics: &[ReceivedMetric]) -> String {
    if metrics.is_empty() {
        return "(no metrics)\n".to_owned();
    }
    let mut out = String::new();
    for metric in metrics {
        let monotonic = if metric.monotonic { ", monotonic" } else { "" };
        let _ = writeln!(
            out,
            "{} [{}{monotonic}, unit={}] via {:?}",
            metric.name, metric.kind, metric.unit, metric.transport
        );
        for point in &metric.points {
            let value = match &point.value {
                PointValue::Int(value) => value.to_string(),
                PointValue::Double(value) => value.to_string(),
                PointValue::Histogram(h) => {
                    format!(
                        "count={} sum={:?} buckets={:?} bounds={:?}",
                        h.count, h.sum, h.bucket_counts, h.explicit_bounds
                    )
                }
                PointValue::CountSum { count, sum } => format!("count={count} sum={sum}"),
                PointValue::Empty => "(empty)".to_owned(),
            };
            let _ = writeln!(out, "  {{{}}} {value}", attrs_inline(&point.attributes));
        }
    }
    out
}
