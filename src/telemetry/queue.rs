//! The span export queue: the SDK's batch span processor, with the queue's bound kept and
//! counted here.
//!
//! # Why not the SDK's count
//!
//! opentelemetry_sdk 0.33's async-runtime `BatchSpanProcessor` counts the spans it drops in a
//! private counter and tells it only through an internal log event at shutdown
//! (`BatchSpanProcessor.Shutdown`, behind its `internal-logs` feature, which agentry does not
//! build): no API gives the number. So the queue's bound is enforced one step earlier, by
//! [`CountedProcessor`], which reserves a place for each sampled span before handing it on and
//! drops it, counted, when the queue is full; [`CountedExporter`] frees the places of the spans
//! the processor hands to the exporter. The SDK's own channel gets one place more than the
//! bound (for its shutdown message), so it never drops a span itself.
//!
//! Counted after the OpenTelemetry SDK metrics conventions: `otel.sdk.processor.span.processed`
//! counts a span when the processor hands it to the exporter, and a dropped one with
//! `error.type = queue_full`.
//!
//! # Settings
//!
//! The standard `OTEL_BSP_*` variables: `OTEL_BSP_MAX_QUEUE_SIZE` (spans waiting, 2048),
//! `OTEL_BSP_SCHEDULE_DELAY` (ms between exports, 5000), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
//! (spans per export, 512, at most the queue size), `OTEL_BSP_EXPORT_TIMEOUT` (ms one export
//! may take, 30000). A value that is not a positive whole number is named in a warning and the
//! default used (the SDK alone would ignore it silently, and panic on a queue size of 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_EXPORT_TIMEOUT_DEFAULT,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT, OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_SCHEDULE_DELAY_DEFAULT, Span, SpanData,
    SpanExporter, SpanProcessor,
};

use super::metrics::{kv, metrics};
use super::names::attr;

/// `otel.component.type` of the processor, as the SDK metrics conventions name it.
const COMPONENT_TYPE: &str = "batching_span_processor";

/// The batch span processor's settings, from the `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most spans waiting for export; more are dropped.
    pub max_queue_size: usize,
    /// Time between two exports.
    pub schedule_delay: Duration,
    /// Most spans in one export (at most `max_queue_size`).
    pub max_export_batch_size: usize,
    /// Longest one export may take.
    pub export_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_queue_size: OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            schedule_delay: OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
            max_export_batch_size: OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            export_timeout: OTEL_BSP_EXPORT_TIMEOUT_DEFAULT,
        }
    }
}

impl QueueSettings {
    /// Reads the `OTEL_BSP_*` variables; each one that is set but not a positive whole number
    /// is described in the returned problems, and its default kept.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut read = |name: &str, default: u64| -> u64 {
            let Some(value) = env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
                return default;
            };
            match value.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    problems.push(format!("{name}={value:?} is not a positive whole number; using {default}"));
                    default
                }
            }
        };
        let defaults = Self::default();
        let max_queue_size = read(OTEL_BSP_MAX_QUEUE_SIZE, defaults.max_queue_size as u64);
        let schedule_delay = read(OTEL_BSP_SCHEDULE_DELAY, millis(defaults.schedule_delay));
        let max_export_batch_size = read(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, defaults.max_export_batch_size as u64);
        let export_timeout = read(OTEL_BSP_EXPORT_TIMEOUT, millis(defaults.export_timeout));
        let max_queue_size = usize::try_from(max_queue_size).unwrap_or(usize::MAX / 2);
        let settings = Self {
            max_queue_size,
            schedule_delay: Duration::from_millis(schedule_delay),
            max_export_batch_size: usize::try_from(max_export_batch_size).unwrap_or(usize::MAX).min(max_queue_size),
            export_timeout: Duration::from_millis(export_timeout),
        };
        (settings, problems)
    }

    /// The SDK processor's configuration: one place more than the bound, for its shutdown
    /// message (the spans' bound is [`CountedProcessor`]'s).
    pub(super) fn batch_config(&self) -> BatchConfig {
        BatchConfigBuilder::default()
            .with_max_queue_size(self.max_queue_size.saturating_add(1))
            .with_scheduled_delay(self.schedule_delay)
            .with_max_export_batch_size(self.max_export_batch_size)
            .with_max_export_timeout(self.export_timeout)
            .build()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What happened to the sampled spans that ended.
#[derive(Debug, Default)]
pub struct SpanCounts {
    /// Spans holding a place in the queue (handed to the processor, not yet to the exporter).
    queued: AtomicUsize,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
    /// Spans handed to the exporter.
    exported: AtomicU64,
    /// Of those, spans whose export succeeded (the rest failed, timed out or were in flight).
    delivered: AtomicU64,
}

/// [`SpanCounts`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanTally {
    /// Dropped because the queue was full.
    pub dropped: u64,
    /// Still waiting in the queue (at exit: never exported).
    pub queued: u64,
    /// Handed to the exporter.
    pub exported: u64,
    /// Handed to the exporter and accepted by the collector.
    pub delivered: u64,
}

impl SpanCounts {
    /// The counts now.
    pub fn tally(&self) -> SpanTally {
        SpanTally {
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed) as u64,
            exported: self.exported.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }
}

/// A span processor that keeps the queue's bound in front of `P` (the SDK's batch processor)
/// and counts what it drops.
#[derive(Debug)]
pub struct CountedProcessor<P> {
    inner: P,
    counts: Arc<SpanCounts>,
    capacity: usize,
}

impl<P> CountedProcessor<P> {
    /// Wraps `inner`, letting at most `capacity` spans wait; `counts` is shared with the
    /// [`CountedExporter`] behind `inner`.
    pub fn new(inner: P, capacity: usize, counts: Arc<SpanCounts>) -> Self {
        Self { inner, counts, capacity }
    }
}

impl<P: SpanProcessor> SpanProcessor for CountedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            // The batch processor ignores those: nothing to count.
            return self.inner.on_end(span);
        }
        let capacity = self.capacity;
        let reserved = self
            .counts
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| (queued < capacity).then_some(queued + 1));
        if reserved.is_ok() {
            self.inner.on_end(span);
        } else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            metrics()
                .spans_processed
                .add(1, &[kv(attr::OTEL_COMPONENT_TYPE, COMPONENT_TYPE), kv(attr::ERROR_TYPE, "queue_full")]);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span exporter that frees the queue places of the spans it is handed (see
/// [`CountedProcessor`]) and counts them, and the ones the collector accepted.
#[derive(Debug)]
pub struct CountedExporter<E> {
    inner: E,
    counts: Arc<SpanCounts>,
}

impl<E> CountedExporter<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, counts: Arc<SpanCounts>) -> Self {
        Self { inner, counts }
    }
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let handed = batch.len();
        let sampled = batch.iter().filter(|span| span.span_context.is_sampled()).count();
        // Never below zero, even for spans that did not pass through CountedProcessor.
        let _ = self
            .counts
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| Some(queued.saturating_sub(sampled)));
        self.counts.exported.fetch_add(handed as u64, Ordering::Relaxed);
        metrics().spans_processed.add(handed as u64, &[kv(attr::OTEL_COMPONENT_TYPE, COMPONENT_TYPE)]);
        let export = self.inner.export(batch);
        let counts = self.counts.clone();
        async move {
            let result = export.await;
            if result.is_ok() {
                counts.delivered.fetch_add(handed as u64, Ordering::Relaxed);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests;
