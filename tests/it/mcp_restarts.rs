//! MCP sessions under supervision: servers that die, come back, never come back, hang, or
//! change their tool list.

use std::sync::Arc;
use std::time::Duration;

use agentry::actors::mcp_session::ServerTools;
use agentry::app::Runtime;
use agentry::config::{self, McpEndpoint, McpServerSettings, Overrides, Settings, Sources};
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply, ScriptedToolCall};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStderr;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::{Agentry, child_pids, config, tool_results};
use crate::peers::{PythonMcpServer, server_everything_command};

/// A model that searches once per question, then answers.
fn searching_model()
-> FnBehaviour<impl Fn(&agentry_testkit::model_server::ChatRequestView<'_>) -> Reply + Send + Sync + 'static> {
    FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("Answered.")
        } else {
            Reply::tool_calls(vec![ScriptedToolCall::new("search", &json!({"query": "rust"}))])
        }
    })
}

pub(crate) const FAST_RESTARTS: &str =
    "[mcp]\nrestart_wait = \"30s\"\n[mcp.restart]\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\n";

async fn server_dies_mid_batch_and_comes_back(transport: &str) {
    let mut mcp = PythonMcpServer::start(transport).await;
    let model =
        ModelServer::start(Arc::new(searching_model())).await.expect("model").with_latency(Duration::from_millis(50));
    // Debug logs: each failed reconnect is logged (the first failure of a run at warn).
    let agentry = Agentry::new().env("RUST_LOG", "info,agentry=debug");
    let text = config(&model.base_url(), Some(&mcp.url()), "[batch]\nconcurrency = 3\nquestions_file = \"q.txt\"\n")
        .replace("[[mcp.servers]]", &format!("{FAST_RESTARTS}[[mcp.servers]]"));
    agentry.file("q.txt", &(1..=30).map(|n| format!("Question {n}\n")).collect::<String>());
    let path = agentry.file("c.toml", &text);
    let mut child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let (mut log, stderr) = follow(child.stderr.take().expect("stderr is piped"));
    while model.request_count() < 15 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mcp.kill().await;
    // A real outage: the server comes back only after agentry failed to reconnect twice.
    let outage = log.wait_for(|text| logged_restarts(text) >= 3);
    tokio::time::timeout(Duration::from_secs(60), outage)
        .await
        .expect("no two failed reconnects logged within 60 s")
        .expect("agentry exited during the outage");
    mcp.restart_same_port().await;
    let run = Agentry::finish(child).await;
    run.expect_code(0);
    let stderr = stderr.await.expect("the stderr reader");

    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["ok"], 30, "{transport}");
    let rows = report["questions"].as_array().expect("rows");
    let with_tool_errors: Vec<&Value> = rows.iter().filter(|r| r["tool_errors"].as_u64().unwrap_or(0) > 0).collect();
    assert!(
        with_tool_errors.is_empty(),
        "{transport}: search is read-only, so calls cut off by the outage waited and ran again: {with_tool_errors:#?}\n{stderr}"
    );
    // The report counts every failure the supervisor handled, once: the death and each failed
    // reconnect (the backoff between them is the supervisor's unit test, on paused time).
    let restarts = report["restarts"]["mcp-session:peer"].as_u64().expect("restart count");
    assert_eq!(restarts, logged_restarts(&stderr), "{transport}: restarts counted vs logged:\n{stderr}");
    assert!(restarts >= 3, "{transport}: {restarts} restarts");
    assert!(stderr.contains("restarting with backoff"), "{transport}: {stderr}");
    assert!(stderr.contains("MCP session ready"), "{transport}");
}

/// agentry's stderr as it is written, so a test can wait for a log line; the task returns all of
/// it once the process has closed it.
fn follow(stderr: ChildStderr) -> (watch::Receiver<String>, JoinHandle<String>) {
    let (sender, receiver) = watch::channel(String::new());
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sender.send_modify(|text| {
                text.push_str(&line);
                text.push('\n');
            });
        }
        sender.borrow().clone()
    });
    (receiver, task)
}

/// The restarts of the session with `peer` that the supervisor logged: the first failure of a
/// run, each failed reconnect after it, or being marked down.
fn logged_restarts(log: &str) -> u64 {
    let restart = ["restarting with backoff", "restart failed; backing off", "marked down"];
    let lines =
        log.lines().filter(|line| line.contains("mcp-session:peer") && restart.iter().any(|r| line.contains(r)));
    lines.count() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamable_http_server_that_restarts_mid_batch_loses_no_question() {
    server_dies_mid_batch_and_comes_back("streamable-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_sse_server_that_restarts_mid_batch_loses_no_question() {
    server_dies_mid_batch_and_comes_back("sse").await;
}

pub(crate) fn in_process_settings(dir: &std::path::Path, servers: Vec<McpServerSettings>, extra: &str) -> Settings {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[secrets]\ndir = \"{}\"\n[batch]\noutput_dir = \"{}\"\n{extra}",
            dir.join("secrets").display(),
            dir.join("out").display()
        ),
    )
    .expect("config");
    let mut settings =
        config::load(&Sources { file: Some(path), env: Default::default(), overrides: Overrides::default() })
            .expect("config");
    settings.mcp.servers = servers;
    settings
}

fn everything_pids() -> Vec<u32> {
    child_pids(std::process::id(), "server-everything")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_child_killed_again_and_again_comes_back_each_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = McpEndpoint::Stdio { command: server_everything_command(), env: vec!["PATH".into()] };
    let server = McpServerSettings::new("everything", endpoint).with_tools(&["echo"]);
    let settings = in_process_settings(dir.path(), vec![server], FAST_RESTARTS);
    let runtime = Runtime::start(settings, Arc::new(|_: &str| None)).await.expect("runtime");
    let session = &runtime.servers[0];
    assert!(matches!(session.settled(Duration::from_secs(30)).await, ServerTools::Ready(_)));
    for round in 1..=3u64 {
        let pids = everything_pids();
        assert_eq!(pids.len(), 1, "one child per session: {pids:?}");
        std::process::Command::new("kill").args(["-KILL", &pids[0].to_string()]).status().expect("kill");
        // The call waits for the restarted session (echo is not read-only, but this call was
        // made after the death, so it is sent only once, on the new session).
        let result = session.call_tool("echo", json!({"message": format!("round {round}")}).as_object().cloned()).await;
        let text = agentry::mcp::result_text(&result.expect("echo on the new session"));
        assert!(text.contains(&format!("round {round}")), "{text}");
        assert_eq!(runtime.restarts()["mcp-session:everything"], round);
        assert_ne!(everything_pids(), pids, "a new child");
    }
    runtime.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !everything_pids().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "shutdown stops the child: {:?}", everything_pids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's process dies in the middle of a read-only call and comes back only after
/// agentry failed to reconnect to it: the call is sent again on the restarted session, not on
/// the dying one (where it failed again at once, the one resend spent).
async fn a_read_only_call_cut_off_by_a_dying_server_runs_on_the_restarted_one(transport: &str) {
    let mut mcp = PythonMcpServer::start(transport).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = McpServerSettings::new("peer", McpEndpoint::http(&mcp.url()).expect("url"));
    let settings = in_process_settings(dir.path(), vec![server], FAST_RESTARTS);
    let runtime = Runtime::start(settings, Arc::new(|_: &str| None)).await.expect("runtime");
    let session = runtime.servers[0].clone();
    assert!(matches!(session.settled(Duration::from_secs(30)).await, ServerTools::Ready(_)));
    let marker = dir.path().join("crashed");
    let arguments = json!({"marker": marker.display().to_string()}).as_object().cloned();
    let call = tokio::spawn(async move { session.call_tool("crash_once", arguments).await });

    let outage = async {
        while runtime.restarts().get("mcp-session:peer").copied().unwrap_or(0) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), outage).await.expect("the death and a failed reconnect within 60 s");
    assert!(!call.is_finished(), "{transport}: the call ended during the outage: {:?}", call.await);
    mcp.restart_same_port().await;

    let result = call.await.expect("the call's task").expect("the call ran again on the restarted session");
    assert_eq!(agentry::mcp::result_text(&result), "survived", "{transport}");
    // The server's log line may reach us just after its answer.
    let logged = async {
        while !mcp.stderr().contains("tool=crash_once survived") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), logged).await.expect("the second call logged");
    let log = mcp.stderr();
    assert_eq!(log.matches("tool=crash_once").count(), 2, "{transport}: once per server process:\n{log}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_call_cut_off_by_a_dying_streamable_http_server_runs_on_the_restarted_one() {
    a_read_only_call_cut_off_by_a_dying_server_runs_on_the_restarted_one("streamable-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_call_cut_off_by_a_dying_legacy_sse_server_runs_on_the_restarted_one() {
    a_read_only_call_cut_off_by_a_dying_server_runs_on_the_restarted_one("sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_comes_back_is_marked_down_and_fails_fast_by_name() {
    let mut mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(searching_model())).await.expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = McpServerSettings::new("doomed", McpEndpoint::http(&mcp.url()).expect("url"));
    let extra = format!(
        "[model]\nfallback = \"local\"\n[model.local]\nbase_url = \"{}\"\n[mcp]\nrestart_wait = \"30s\"\n[mcp.restart]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\nmax_restarts = 3\nwindow = \"60s\"\ncool_down = \"1h\"\n",
        model.base_url()
    );
    let settings = in_process_settings(dir.path(), vec![server], &extra);
    let runtime = Runtime::start(settings.clone(), Arc::new(|_: &str| None)).await.expect("runtime");
    assert!(matches!(runtime.servers[0].settled(Duration::from_secs(30)).await, ServerTools::Ready(_)));
    mcp.kill().await;

    // The first call after the death waits through the restarts until the server is marked down.
    let error =
        runtime.servers[0].call_tool("search", json!({"query": "x"}).as_object().cloned()).await.expect_err("down");
    assert!(error.to_string().contains("doomed") && error.to_string().contains("down"), "{error}");
    assert_eq!(runtime.restarts()["mcp-session:doomed"], 4, "three restarts, the fourth failure marks it down");
    // From then on, a call is answered from the down state: it names the server as down (a call
    // that waited for a restart would end "did not come back within 30s") and starts no restart.
    let error = runtime.servers[0].call_tool("search", None).await.expect_err("down").to_string();
    assert!(error.contains("doomed is down") && !error.contains("did not come back"), "{error}");
    assert_eq!(runtime.restarts()["mcp-session:doomed"], 4, "a call to a server marked down restarts nothing");

    // A batch still ends: the model gets the error as the tool result and answers.
    let planned = agentry::batch::plan(&settings.batch, true, None).expect("questions");
    let options = agentry::batch::RunOptions {
        concurrency: 1,
        question_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        progress: false,
        demo: false,
        output_dir: settings.batch.output_dir.clone(),
    };
    let report = agentry::batch::run(&runtime.agent_context(""), planned, &options, &Default::default()).await;
    assert_eq!(report.totals.ok, 1);
    assert_eq!(report.questions[0].transcript.tool_errors, 1);
    let result = tool_results(&model.requests().last().expect("request").body);
    assert!(result[0].contains("doomed") && result[0].starts_with("Error:"), "{result:?}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_call_times_out_is_cancelled_on_the_server_and_the_model_gets_an_error() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("Gave up on the slow tool.")
        } else {
            Reply::tool_calls(vec![ScriptedToolCall::new("slow", &json!({"seconds": 60}))])
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new().env("AGENTRY__MCP__CALL_TIMEOUT", "1s");
    let path =
        agentry.file("c.toml", &config(&model.base_url(), Some(&mcp.url()), "[batch]\nquestions = [\"Be slow\"]\n"));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
    let results = tool_results(&model.requests()[1].body);
    assert!(results[0].starts_with("Error:") && results[0].contains("did not answer within 1s"), "{results:?}");
    // The server heard about it: notifications/cancelled stopped the tool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !mcp.stderr().contains("CANCELLED slow") {
        assert!(tokio::time::Instant::now() < deadline, "no cancellation reached the server:\n{}", mcp.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_list_change_reaches_the_next_question() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        let first = request.last_user_text().is_some_and(|q| q.contains("first"));
        let answered = request.messages().iter().any(|m| m["role"] == "tool");
        if answered {
            // The notification and the re-listing race this answer; give them room.
            Reply::text("Done.").delayed(Duration::from_secs(2))
        } else if !first {
            Reply::text("Done.")
        } else {
            Reply::tool_calls(vec![ScriptedToolCall::new("add_tool", &json!({"name": "freshly_added"}))])
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nconcurrency = 1\nquestions = [\"the first\", \"the second\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), Some(&mcp.url()), extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let offered = |body: &Value| -> Vec<String> {
        body["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let requests = model.requests();
    assert!(!offered(&requests[0].body).contains(&"freshly_added".to_owned()));
    let second = requests.iter().find(|r| r.body.to_string().contains("the second")).expect("second question");
    assert!(offered(&second.body).contains(&"freshly_added".to_owned()), "{:?}", offered(&second.body));
    assert!(run.stderr.contains("tool list changed"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_streamable_http_answers_fail_their_call_at_once_and_the_session_goes_on() {
    use agentry::mcp::{ServerSpec, connect};
    use agentry_testkit::hostile_mcp::MalformedHttpServer;
    use rmcp::ServiceError;
    use rmcp::model::CallToolRequestParams;

    // Far longer than any answer here: a call that waits for an answer that can no longer come
    // fails the test.
    const BOUND: Duration = Duration::from_secs(60);
    let server = MalformedHttpServer::start().await.expect("the malformed server starts");
    let spec = ServerSpec {
        name: "malformed".into(),
        endpoint: McpEndpoint::http(&server.url()).expect("url"),
        allow: Vec::new(),
        retry_tools: Vec::new(),
        max_concurrent_calls: 4,
        token_secret: None,
    };
    let session = connect(&spec, &reqwest::Client::new(), None, Duration::from_secs(20), None).await.expect("connects");
    let call = |name: &'static str| {
        let peer = session.peer().clone();
        async move {
            tokio::time::timeout(BOUND, peer.call_tool(CallToolRequestParams::new(name)))
                .await
                .unwrap_or_else(|_| panic!("{name}: no answer within {BOUND:?}"))
        }
    };
    let error_text = |name: &str, outcome: Result<rmcp::model::CallToolResult, ServiceError>| match outcome {
        Err(ServiceError::McpError(error)) => error.message.to_string(),
        other => panic!("{name}: expected the call's own error, got {other:?}"),
    };

    assert_eq!(agentry::mcp::result_text(&call("ok").await.expect("ok")), "ok");
    let text = error_text("wrong_id_json", call("wrong_id_json").await);
    assert!(text.contains("with id"), "{text}");
    let text = error_text("wrong_id_sse", call("wrong_id_sse").await);
    assert!(text.contains("with id"), "{text}");
    let text = error_text("no_result_sse", call("no_result_sse").await);
    assert!(text.contains("neither `result` nor `error`"), "{text}");
    let text = error_text("no_id_error", call("no_id_error").await);
    assert!(text.contains("Invalid Request"), "the server's words are kept: {text}");
    // Malformed answers end their calls, not the session.
    assert_eq!(agentry::mcp::result_text(&call("ok").await.expect("ok after them")), "ok");
    let _ = session.cancel().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_of_the_wrong_shape_is_the_calls_error_not_a_lost_connection() {
    use agentry_testkit::hostile_mcp::MalformedHttpServer;

    let mcp = MalformedHttpServer::start().await.expect("the malformed server starts");
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("Answered.")
        } else {
            Reply::tool_calls(vec![ScriptedToolCall::new("wrong_shape", &json!({}))])
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry
        .file("c.toml", &config(&model.base_url(), Some(&mcp.url()), "[batch]\nquestions = [\"Define Rust\"]\n"));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);

    let results = tool_results(&model.requests()[1].body);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].contains("tool wrong_shape failed") && results[0].contains("not a tools/call result"),
        "{}",
        results[0]
    );
    assert!(!results[0].contains("connection lost"), "{}", results[0]);
    mcp.shutdown().await;
}

/// A tool call that hangs past what its question can wait for (here the question's deadline,
/// less the time its answer needs) is cancelled on the server then, not at the session's call
/// timeout nor when the question ends, while the batch goes on; the question's later turns send
/// no call at all (no time is left for one).
#[tokio::test(flavor = "multi_thread")]
async fn a_question_that_ends_cancels_its_tool_call_on_the_server() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.last_user_text().is_some_and(|q| q.contains("slow")) {
            Reply::tool_calls(vec![ScriptedToolCall::new("slow", &json!({"seconds": 120}))])
        } else {
            Reply::text("Waited.").delayed(Duration::from_millis(1000))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new().env("AGENTRY__MCP__CALL_TIMEOUT", "120s");
    let extra = "[agent]\nquestion_timeout = \"2s\"\n[batch]\nconcurrency = 1\n\
                 questions = [\"Be slow\", \"Then wait\", \"And wait again\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), Some(&mcp.url()), extra));
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    // The server hears it while the next questions are still being answered.
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        while !mcp.stderr().contains("CANCELLED slow") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Whether the last question had been answered by then (it is asked after 2 s at the
        // earliest, and answered a second later).
        model.requests().iter().any(|r| r.status.is_some() && r.body.to_string().contains("And wait again"))
    })
    .await;
    let run = Agentry::finish(child).await;
    let last_answered =
        heard.unwrap_or_else(|_| panic!("no cancellation reached the server:\n{}\n{}", mcp.stderr(), run.output()));
    assert!(!last_answered, "heard only when the batch ended:\n{}", run.output());
    assert_eq!(agentry.report("definitions/report.json")["totals"]["ok"], 2, "{}", run.output());
    let log = mcp.stderr();
    assert_eq!(log.matches("tool=slow").count(), 1, "the later turns sent no call:\n{log}");
}

/// Issue 11, case 11, over stdio: a server behind a proxy that mangles some answers. An answer
/// that can be tied to its call (no `result`, the wrong id, an error without an id while it is
/// the only call) fails that call at once, saying what was wrong; a line that is not JSON-RPC
/// is logged as such, once; the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_stdio_answers_fail_their_call_at_once_and_are_named() {
    const MANGLED: [&str; 4] = ["mangle_no_result", "mangle_wrong_id", "mangle_no_id_error", "mangle_garbage"];
    // One mangled call per turn (one call in flight, so a wrong id can be blamed on it), then an
    // answer.
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        let done = request.messages().iter().filter(|m| m["role"] == "tool").count();
        match MANGLED.get(done) {
            Some(tool) => Reply::tool_calls(vec![ScriptedToolCall::new(*tool, &json!({}))]),
            None => Reply::text("Answered."),
        }
    })))
    .await
    .expect("model");
    let mut command = vec![
        crate::peers::python().display().to_string(),
        crate::peers::repo_root().join("tests/peers/mangling_stdio_proxy.py").display().to_string(),
        "--".to_owned(),
    ];
    command.extend(crate::peers::search_server_stdio_command());
    let agentry = Agentry::new();
    // The garbage line leaves its call to the call timeout: short here.
    let extra = format!(
        "[batch]\nquestions = [\"Define mangling\"]\n[mcp]\ncall_timeout = \"5s\"\n\
         [[mcp.servers]]\nname = \"mangler\"\ntransport = \"stdio\"\ncommand = {}\ntools = []\n[model]\nretry_min_delay = \"10ms\"\n[model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        serde_json::to_string(&command).expect("json"),
        model.base_url()
    );
    let path = agentry.file("c.toml", &extra);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let last = model.requests().last().expect("requests").body.clone();
    let results = tool_results(&last);
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0].contains("neither `result` nor `error`"), "{results:?}");
    assert!(results[1].contains("999999"), "{results:?}");
    assert!(results[2].contains("Invalid Request"), "the server's words are kept: {results:?}");
    assert!(results[3].contains("did not answer within 5s"), "garbage names no call: {results:?}");
    assert_eq!(run.stderr.matches("not JSON-RPC").count(), 1, "garbage is named, once:\n{}", run.stderr);
}
