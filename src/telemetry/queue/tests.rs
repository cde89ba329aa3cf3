use std::collections::HashMap;

use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tokio::sync::watch;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_standard_variables_size_the_queue_and_bad_values_are_named() {
    let (settings, problems) = QueueSettings::from_env(&env(&[]));
    assert_eq!(settings, QueueSettings::default());
    assert_eq!(settings.max_queue_size, 2048);
    assert!(problems.is_empty());

    let (settings, problems) = QueueSettings::from_env(&env(&[
        ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "1500"),
    ]));
    let expected = QueueSettings {
        max_queue_size: 64,
        schedule_delay: Duration::from_millis(250),
        // Never more than the queue holds.
        max_export_batch_size: 64,
        export_timeout: Duration::from_millis(1500),
    };
    assert_eq!((settings, problems), (expected, vec![]));

    let (settings, problems) =
        QueueSettings::from_env(&env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0"), ("OTEL_BSP_SCHEDULE_DELAY", "5s")]));
    assert_eq!(settings, QueueSettings::default(), "a queue of 0 would panic the SDK's channel");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("OTEL_BSP_MAX_QUEUE_SIZE=\"0\""), "{problems:?}");
    assert!(problems[1].contains("OTEL_BSP_SCHEDULE_DELAY=\"5s\"") && problems[1].contains("5000"), "{problems:?}");
}

/// An exporter whose exports wait until the gate opens: a collector that does not keep up.
#[derive(Debug)]
struct GatedExporter {
    open: watch::Receiver<bool>,
    received: Arc<AtomicUsize>,
}

impl SpanExporter for GatedExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let mut open = self.open.clone();
        let received = self.received.clone();
        async move {
            let _ = open.wait_for(|open| *open).await;
            received.fetch_add(batch.len(), Ordering::Relaxed);
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_every_span_beyond_it() {
    let (gate, open) = watch::channel(false);
    let received = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(SpanCounts::default());
    let queue = QueueSettings {
        max_queue_size: 1,
        max_export_batch_size: 1,
        schedule_delay: Duration::from_secs(3600),
        export_timeout: Duration::from_secs(3600),
    };
    let exporter = CountedExporter::new(GatedExporter { open, received: received.clone() }, counts.clone());
    let processor = BatchSpanProcessor::builder(exporter, Tokio).with_batch_config(queue.batch_config()).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(CountedProcessor::new(processor, queue.max_queue_size, counts.clone()))
        .build();
    let tracer = provider.tracer("test");

    // The first span goes to the exporter, which waits; the second waits in the queue.
    tracer.in_span("first", |_| ());
    while counts.tally().exported == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..9 {
        tracer.in_span("more", |_| ());
    }
    assert_eq!(counts.tally(), SpanTally { dropped: 8, queued: 1, exported: 1, delivered: 0 });

    gate.send_replace(true);
    tokio::task::spawn_blocking(move || provider.shutdown()).await.expect("join").expect("shutdown");
    assert_eq!(counts.tally(), SpanTally { dropped: 8, queued: 0, exported: 2, delivered: 2 });
    assert_eq!(received.load(Ordering::Relaxed), 2);
    let said = crate::telemetry::lost_spans(counts.tally(), 1).expect("a word about the dropped spans");
    assert!(said.contains("8 of 10 spans lost") && said.contains("8 span(s) dropped"), "{said}");
    assert!(said.contains("OTEL_BSP_MAX_QUEUE_SIZE=1"), "{said}");
}
