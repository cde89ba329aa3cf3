//! A real run's traces and metrics, received over OTLP (gRPC, HTTP/protobuf, and through the
//! rotel collector) and checked against the GenAI and MCP conventions.

use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry::telemetry::names;
use agentry_testkit::model_server::ModelServer;

use crate::harness::Agentry;
use crate::otlp::{OtlpReceiver, ReceivedSpan, Rotel, children_of, spans_named};
use crate::peers::PythonMcpServer;

const CANARY: &str = "sk-canary-telemetry-5c4b3a2d1e0f9a8b";

/// Runs the seed flow on the cloud route (key = canary) with OTLP export to `endpoint`.
async fn traced_run(
    endpoint: &str,
    protocol: &str,
    extra_env: &[(&str, &str)],
) -> (Agentry, ModelServer, crate::harness::Run) {
    let (agentry, model, run, _) = traced_run_over("streamable-http", endpoint, protocol, extra_env).await;
    (agentry, model, run)
}

/// [`traced_run`] with the MCP peer on `transport`; also returns what the peer logged.
async fn traced_run_over(
    transport: &str,
    endpoint: &str,
    protocol: &str,
    extra_env: &[(&str, &str)],
) -> (Agentry, ModelServer, crate::harness::Run, String) {
    let mcp = PythonMcpServer::start_with_args(transport, &["--log-headers"]).await;
    let model =
        ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model").require_key(Some(CANARY.into()));
    let mut agentry = Agentry::new()
        .env("OPENAI_BASE_URL", model.base_url())
        .env("OPENAI_MODEL_NAME", "gpt-test")
        .env("MCP_SERVER_URL", mcp.url())
        .env("QUESTION", "Define Machine Learning")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("RUST_LOG", "debug");
    agentry.file("secrets/openai_api_key", CANARY);
    for (name, value) in extra_env {
        agentry = agentry.env(name, *value);
    }
    let run = agentry.run(&["run"]).await;
    run.expect_code(0);
    let logged = mcp.stderr();
    (agentry, model, run, logged)
}

/// The span tree, attributes, propagation and metrics of one question.
fn check_export(receiver: &OtlpReceiver, agentry: &Agentry, model: &ModelServer) {
    let spans = receiver.spans();
    let tree = receiver.span_tree();
    // Exported at exit without waiting: the flush on exit delivered them.
    let roots = spans_named(&spans, "invoke_agent research-assistant");
    assert_eq!(roots.len(), 1, "one trace per question:\n{tree}");
    let root = roots[0];
    assert!(root.is_root() && root.kind == "internal", "{tree}");
    assert_eq!(root.attr_str("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(root.resource_str("service.name"), Some("agentry"));
    assert!(spans.iter().all(|s| s.trace_id == root.trace_id), "only the question's trace is exported:\n{tree}");

    let children = children_of(&spans, root);
    let chats: Vec<&&ReceivedSpan> = children.iter().filter(|s| s.name == "chat gpt-test").collect();
    assert_eq!(chats.len(), 3, "search, save, answer:\n{tree}");
    for chat in &chats {
        assert_eq!(chat.kind, "client");
        assert_eq!(chat.attr_str("gen_ai.operation.name"), Some("chat"));
        assert_eq!(chat.attr_str("gen_ai.provider.name"), Some("openai"));
        assert_eq!(chat.attr_str("gen_ai.request.model"), Some("gpt-test"));
        assert_eq!(chat.attr_str("gen_ai.response.model"), Some("gpt-test"));
        assert_eq!(chat.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(chat.attr_str("agentry.route"), Some("cloud"));
        assert!(chat.attr("gen_ai.response.finish_reasons").is_some_and(|v| v.is_array()), "{tree}");
        assert_eq!(chat.attr("gen_ai.request.temperature").and_then(|v| v.as_f64()), Some(0.1));
        // Streamed: when the first chunk came, as an attribute and an event.
        let first = chat.attr("gen_ai.response.time_to_first_chunk").and_then(|v| v.as_f64());
        assert!(first.is_some_and(|s| s >= 0.0), "{chat:?}");
        assert_eq!(chat.events.iter().filter(|e| e.name == "gen_ai.first_chunk").count(), 1, "{chat:?}");
    }
    let tokens = |key: &str| chats.iter().filter_map(|c| c.attr_i64(key)).sum::<i64>();

    let report = agentry.report("definitions/report.json");
    let row = &report["questions"][0];
    assert_eq!(tokens("gen_ai.usage.input_tokens"), row["input_tokens"].as_i64().expect("tokens"), "{tree}");
    assert_eq!(tokens("gen_ai.usage.output_tokens"), row["output_tokens"].as_i64().expect("tokens"));
    assert_eq!(row["trace_id"].as_str(), Some(root.trace_id.as_str()), "the report names the trace");
    let file = std::fs::read_to_string(agentry.research_files("definitions")[0].clone()).expect("file");
    assert!(file.contains(&format!("trace_id: \"{}\"", root.trace_id)), "the research file names the trace");

    let search = children.iter().find(|s| s.name == "execute_tool search").unwrap_or_else(|| panic!("{tree}"));
    assert_eq!(search.kind, "internal");
    assert_eq!(search.attr_str("gen_ai.tool.name"), Some("search"));
    assert!(search.attr_str("gen_ai.tool.call.id").is_some_and(|id| id.starts_with("call_")));
    assert!(children.iter().any(|s| s.name == "execute_tool save_research"), "{tree}");
    let call = children_of(&spans, search)
        .into_iter()
        .find(|s| s.name == "tools/call search")
        .unwrap_or_else(|| panic!("{tree}"));
    assert_eq!(call.kind, "client");
    assert_eq!(call.attr_str("mcp.method.name"), Some("tools/call"));
    assert_eq!(call.attr_str("network.transport"), Some("tcp"));
    assert!(call.attr_str("mcp.protocol.version").is_some_and(|v| v.starts_with("20")), "{tree}");

    // W3C trace context reached the model server, pointing into this trace.
    for request in model.requests() {
        let traceparent = request.traceparent.expect("traceparent header");
        assert!(traceparent.starts_with(&format!("00-{}-", root.trace_id)), "{traceparent}");
    }
    // No span carries the key.
    let everything = format!("{spans:?}");
    assert!(!everything.contains(CANARY) && !everything.contains(&CANARY[10..24]), "the key leaked into a span");

    // Metrics, with the conventions' units and buckets; recorded once per call.
    let usage = receiver
        .metric(names::TOKEN_USAGE)
        .unwrap_or_else(|| panic!("{}", crate::otlp::metrics_summary(&receiver.metrics())));
    assert_eq!(usage.unit, "{token}");
    let input =
        usage.point(&[("gen_ai.token.type", "input")]).and_then(|p| p.histogram().cloned()).expect("input tokens");
    assert_eq!(input.explicit_bounds, names::TOKEN_BUCKETS);
    assert_eq!(input.count, 3, "one point per model call");
    assert_eq!(input.sum, Some(row["input_tokens"].as_f64().expect("tokens")));
    let duration = receiver.metric(names::OPERATION_DURATION).expect("operation duration");
    assert_eq!(duration.unit, "s");
    assert_eq!(duration.total_count(), 3);
    let first_chunk = receiver.metric(names::TIME_TO_FIRST_CHUNK).expect("time to first chunk");
    assert_eq!(first_chunk.unit, "s");
    assert_eq!(first_chunk.total_count(), 3, "one per streamed call");
    let point = first_chunk.point(&[("gen_ai.request.model", "gpt-test"), ("agentry.route", "cloud")]);
    let buckets = point.and_then(|p| p.histogram()).map(|h| h.explicit_bounds.clone());
    assert_eq!(buckets.as_deref(), Some(names::GENAI_DURATION_BUCKETS));
    let mcp = receiver.metric(names::MCP_OPERATION_DURATION).expect("mcp duration");
    assert_eq!(mcp.unit, "s");
    assert_eq!(mcp.points[0].histogram().expect("histogram").explicit_bounds, names::MCP_DURATION_BUCKETS);
    let questions = receiver.metric(names::QUESTIONS).expect("questions");
    assert_eq!(questions.point(&[("agentry.question.status", "ok")]).and_then(|p| p.as_i64()), Some(1));
    let tools = receiver.metric(names::TOOL_CALLS).expect("tool calls");
    assert_eq!(
        tools.point(&[("gen_ai.tool.name", "search"), ("agentry.tool.outcome", "ok")]).and_then(|p| p.as_i64()),
        Some(1)
    );
    let route = receiver.metric(names::ROUTE).expect("route");
    assert_eq!(route.point(&[("agentry.route", "cloud")]).and_then(|p| p.as_i64()), Some(1));
    // Pacing: every request's wait for the route's limits (0 when sent at once), the cap in force.
    let waits = receiver.metric(names::RATE_LIMIT_WAIT).expect("rate limit waits");
    assert_eq!(waits.unit, "s");
    assert_eq!(waits.total_count(), 3, "one per model request");
    assert!(waits.point(&[("agentry.route", "cloud")]).is_some());
    let allowed = receiver.metric(names::RATE_LIMIT_IN_FLIGHT).expect("in-flight limit");
    assert!(allowed.point(&[("agentry.route", "cloud")]).and_then(|p| p.as_i64()).is_some_and(|n| n >= 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_exports_its_trace_and_metrics_over_grpc() {
    let receiver = OtlpReceiver::start().await;
    let (agentry, model, _) = traced_run(&receiver.grpc_endpoint(), "grpc", &[]).await;
    check_export(&receiver, &agentry, &model);
    assert!(receiver.export_counts().grpc() > 0 && receiver.export_counts().http() == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_exports_its_trace_and_metrics_over_http_protobuf() {
    let receiver = OtlpReceiver::start().await;
    let (agentry, model, _) = traced_run(&receiver.http_endpoint(), "http/protobuf", &[]).await;
    check_export(&receiver, &agentry, &model);
    assert!(receiver.export_counts().http() > 0 && receiver.export_counts().grpc() == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_exports_through_a_real_collector() {
    let receiver = OtlpReceiver::start().await;
    let rotel = Rotel::start(&receiver.grpc_endpoint()).await;
    let (agentry, model, _) = traced_run(&rotel.grpc_endpoint(), "grpc", &[]).await;
    // The collector forwards in batches: wait for them, then check the same things.
    receiver.wait_for_metric(names::ROUTE, Duration::from_secs(30)).await;
    receiver
        .wait_for_spans(|spans| spans.iter().any(|s| s.name.starts_with("invoke_agent")), Duration::from_secs(30))
        .await;
    check_export(&receiver, &agentry, &model);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_content_goes_into_spans_only_when_asked() {
    let receiver = OtlpReceiver::start().await;
    traced_run(&receiver.grpc_endpoint(), "grpc", &[]).await;
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.attr("gen_ai.input.messages").is_none() && s.attr("gen_ai.tool.call.arguments").is_none())
    );

    let receiver = OtlpReceiver::start().await;
    traced_run(&receiver.grpc_endpoint(), "grpc", &[("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")])
        .await;
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.attr_str("gen_ai.input.messages").is_some_and(|m| m.contains("Define Machine Learning")))
    );
    assert!(spans.iter().any(|s| s.attr("gen_ai.tool.call.arguments").is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_costs_one_warning_and_no_hang() {
    // Nothing listens on port 9: every export fails.
    let (_, _, run) = traced_run("http://127.0.0.1:9", "grpc", &[("RUST_LOG", "warn")]).await;
    let warnings = run.stderr.lines().filter(|l| l.contains("telemetry was not fully exported")).count();
    assert_eq!(warnings, 1, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_exported_or_said() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new().env("MODEL_RUNNER_URL", model.base_url());
    let path = agentry.file("c.toml", "[mcp]\nservers = []\n");
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(!run.stderr.to_lowercase().contains("otlp") && !run.stderr.contains("telemetry"), "{}", run.stderr);
    assert!(model.requests().iter().all(|r| r.traceparent.is_none()), "no trace context without traces");
    assert_eq!(agentry.report("definitions/report.json")["questions"][0]["trace_id"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_reaches_the_mcp_server_in_meta_and_headers() {
    let receiver = OtlpReceiver::start().await;
    let (_, _, _, logged) = traced_run_over("sse", &receiver.grpc_endpoint(), "grpc", &[]).await;
    let root = receiver.wait_for_span("invoke_agent research-assistant", Duration::from_secs(10)).await;
    let expected = format!("00-{}-", root.trace_id);
    assert!(logged.contains(&format!("meta.traceparent={expected}")), "params._meta.traceparent:\n{logged}");
    assert!(logged.contains(&format!("traceparent={expected}")), "the POST's traceparent header:\n{logged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_flushed_after_sigterm() {
    use agentry_testkit::model_server::{FnBehaviour, Reply};

    let receiver = OtlpReceiver::start().await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| {
        Reply::text("An answer.").delayed(Duration::from_millis(1500))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let extra = "[batch]\nconcurrency = 2\nquestions = [\"Q1\", \"Q2\", \"Q3\", \"Q4\"]\n";
    let path = agentry.file("c.toml", &crate::harness::config(&model.base_url(), None, extra));
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    while model.in_flight() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    Agentry::finish(child).await.expect_code(1);
    // Everything arrived by the time the process exited: no waiting here.
    let spans = receiver.spans();
    assert_eq!(spans_named(&spans, "invoke_agent research-assistant").len(), 2, "{}", receiver.span_tree());
    let questions = receiver.metric(names::QUESTIONS).expect("questions counter flushed at exit");
    assert_eq!(questions.point(&[("agentry.question.status", "ok")]).and_then(|p| p.as_i64()), Some(2));
    assert_eq!(questions.point(&[("agentry.question.status", "interrupted")]).and_then(|p| p.as_i64()), Some(2));
}

/// The seed flow's peers, and agentry set up to run it with OTLP/gRPC export to `endpoint` and
/// RUST_LOG unset (keep the peers alive while it runs).
async fn seed_flow_exporting_to(endpoint: &str) -> (Agentry, PythonMcpServer, ModelServer) {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model =
        ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model").require_key(Some(CANARY.into()));
    let agentry = Agentry::new()
        .env("OPENAI_BASE_URL", model.base_url())
        .env("OPENAI_MODEL_NAME", "gpt-test")
        .env("MCP_SERVER_URL", mcp.url())
        .env("QUESTION", "Define Machine Learning")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("RUST_LOG", "");
    agentry.file("secrets/openai_api_key", CANARY);
    (agentry, mcp, model)
}

/// Runs the seed flow exporting to `endpoint`, with `RUST_LOG` set to `rust_log` (`""`: unset)
/// and `flags` before `run`; returns the finished run.
async fn batch_at_log_level(endpoint: &str, rust_log: &str, flags: &[&str]) -> crate::harness::Run {
    let (agentry, _mcp, _model) = seed_flow_exporting_to(endpoint).await;
    let args: Vec<&str> = flags.iter().copied().chain(["run"]).collect();
    let run = agentry.env("RUST_LOG", rust_log).run(&args).await;
    run.expect_code(0);
    run
}

/// The exported spans as `parent name > name` lines, sorted: the trace's shape without ids.
fn shape(spans: &[ReceivedSpan]) -> Vec<String> {
    let name_of = |id: &str| spans.iter().find(|s| s.span_id == id).map_or("(root)", |s| s.name.as_str());
    let parent = |s: &ReceivedSpan| if s.parent_span_id.is_empty() { "(root)" } else { name_of(&s.parent_span_id) };
    let mut lines: Vec<String> = spans.iter().map(|s| format!("{} > {}", parent(s), s.name)).collect();
    lines.sort();
    lines
}

fn metric_names(receiver: &OtlpReceiver) -> std::collections::BTreeSet<String> {
    receiver.metrics().into_iter().map(|m| m.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn quieter_logs_export_the_same_spans_and_metrics() {
    let default = OtlpReceiver::start().await;
    batch_at_log_level(&default.grpc_endpoint(), "", &[]).await;
    let expected = shape(&default.spans());
    assert!(expected.iter().any(|l| l.ends_with("> chat gpt-test")), "{}", default.span_tree());

    for (rust_log, flags) in [("error", &[][..]), ("warn", &[][..]), ("", &["-q"][..]), ("off", &[][..])] {
        let quiet = OtlpReceiver::start().await;
        let run = batch_at_log_level(&quiet.grpc_endpoint(), rust_log, flags).await;
        assert_eq!(
            shape(&quiet.spans()),
            expected,
            "RUST_LOG={rust_log:?} {flags:?}: the same spans as at the default level\n{}",
            quiet.span_tree()
        );
        assert_eq!(metric_names(&quiet), metric_names(&default), "RUST_LOG={rust_log:?} {flags:?}");
        assert!(!run.stderr.contains(" INFO "), "the logs are quieter: {}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_does_not_keep_up_costs_counted_spans_and_a_warning() {
    // How many spans the batch exports when the collector keeps up.
    let fast = OtlpReceiver::start().await;
    batch_at_log_level(&fast.grpc_endpoint(), "", &[]).await;
    let all = fast.spans().len() as i64;
    assert!(all > 3, "{}", fast.span_tree());

    // A queue of one span and exports of one: the first export waits for the collector, one
    // span waits in the queue, every later one is dropped. No timing: the collector answers
    // nothing until the batch has printed its report, and the export timeouts are far away.
    let slow = OtlpReceiver::start().await;
    slow.hold_traces();
    let (agentry, _mcp, _model) = seed_flow_exporting_to(&slow.grpc_endpoint()).await;
    let agentry = agentry
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "1")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
        .env("OTEL_BSP_EXPORT_TIMEOUT", "600000")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "600000");
    let mut child = agentry.spawn(&["run"]);
    let stdout = crate::harness::OutputWatch::stdout(&mut child);
    stdout.wait_for("Report:").await;
    slow.release_traces();
    let run = Agentry::finish(child).await;
    run.expect_code(0);

    let received = slow.spans().len() as i64;
    let processed = slow
        .metric(names::SPANS_PROCESSED)
        .unwrap_or_else(|| panic!("no {}:\n{}", names::SPANS_PROCESSED, crate::otlp::metrics_summary(&slow.metrics())));
    let count = |error: Option<&str>| {
        processed
            .points
            .iter()
            .filter(|p| p.attributes.get("error.type").and_then(|v| v.as_str()) == error)
            .filter_map(|p| p.as_i64())
            .sum::<i64>()
    };
    let dropped = count(Some("queue_full"));
    assert!(dropped >= 1, "{}", crate::otlp::metrics_summary(&slow.metrics()));
    assert_eq!(received + dropped, all, "every span either arrived or was counted as dropped:\n{}", slow.span_tree());
    assert_eq!(count(None), received, "the spans handed to the exporter are the ones that arrived");
    let warning = format!("{dropped} span(s) dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE=1)");
    assert!(run.stderr.contains(&warning), "{warning:?} in:\n{}", run.stderr);
    assert!(run.stderr.contains(&format!("telemetry: {dropped} of {all} spans lost")), "{}", run.stderr);

    // The same batch with room enough: nothing lost, nothing said.
    let roomy = OtlpReceiver::start().await;
    let run = batch_at_log_level(&roomy.grpc_endpoint(), "", &[]).await;
    assert!(!run.stderr.contains("dropped") && !run.stderr.contains("spans lost"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_queue_setting_is_named_and_the_default_used() {
    let receiver = OtlpReceiver::start().await;
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new()
        .env("MODEL_RUNNER_URL", model.base_url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "0");
    let path = agentry.file("c.toml", "[mcp]\nservers = []\n");
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(
        run.stderr.contains("OTEL_BSP_MAX_QUEUE_SIZE=\"0\" is not a positive whole number; using 2048"),
        "{}",
        run.stderr
    );
    assert_eq!(spans_named(&receiver.spans(), "invoke_agent research-assistant").len(), 1, "{}", receiver.span_tree());
}
