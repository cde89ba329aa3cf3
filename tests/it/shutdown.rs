//! SIGTERM in the middle of a batch: no new questions, in-flight ones finish, report written.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply, ScriptedToolCall};
use serde_json::json;

use crate::harness::{Agentry, config};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_questions_and_marks_the_rest_interrupted() {
    // Every answer takes a while, so the signal lands while two questions are in flight.
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| {
        Reply::text("An answer.").delayed(Duration::from_millis(1500))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nconcurrency = 2\nshutdown_grace = \"30s\"\nquestions = [\"Q1\", \"Q2\", \"Q3\", \"Q4\", \"Q5\", \"Q6\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    tokio::time::timeout(Duration::from_secs(60), async {
        while model.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two questions in flight");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let run = Agentry::finish(child).await;
    run.expect_code(1);
    assert!(run.stderr.contains("shutting down"), "{}", run.stderr);

    let report = agentry.report("definitions/report.json");
    let statuses: Vec<&str> =
        report["questions"].as_array().expect("rows").iter().map(|r| r["status"].as_str().expect("status")).collect();
    assert_eq!(statuses.len(), 6);
    assert_eq!(statuses.iter().filter(|s| **s == "ok").count(), 2, "the two in flight finished: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "interrupted").count(), 4, "the rest never started: {statuses:?}");
    assert_eq!(model.request_count(), 2, "no question started after the signal");
    assert_eq!(agentry.research_files("definitions").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_answers_one_question_and_prints_it() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        Reply::text(format!("You asked: {}", request.last_user_text().unwrap_or_default()))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &config(&model.base_url(), None, ""));
    let run = agentry.run(&["ask", "What is an actor?", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(run.stdout.starts_with("You asked: What is an actor?"), "{}", run.stdout);
    assert_eq!(agentry.research_files("definitions").len(), 1);
}

/// Issue 12, case 4: a stdio server started through a wrapper that leaves a process of its own
/// running (here `sh -c 'sleep … & exec server'`) leaves nothing behind when agentry exits: the
/// server leads a process group of its own, and the group is ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_server_started_through_a_wrapper_leaves_no_process_behind() {
    const LEFTOVER: &str = "sleep 27183";
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered.")))).await.expect("model");
    let server: Vec<String> =
        crate::peers::search_server_stdio_command().iter().map(|arg| format!("'{arg}'")).collect();
    let command = ["sh".to_owned(), "-c".to_owned(), format!("{LEFTOVER} & exec {}", server.join(" "))];
    let agentry = Agentry::new();
    let extra = format!(
        "[batch]\nquestions = [\"Define process groups\"]\n[[mcp.servers]]\nname = \"wrapped\"\ntransport = \"stdio\"\n\
         command = {}\ntools = []\n[model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        serde_json::to_string(&command).expect("json"),
        model.base_url()
    );
    let path = agentry.file("c.toml", &extra);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    // A process sent SIGKILL as agentry exits may take a moment to be gone.
    let mut left = crate::harness::live_pids(LEFTOVER, None);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = crate::harness::live_pids(LEFTOVER, None);
    }
    for pid in &left {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    run.expect_code(0);
    assert!(left.is_empty(), "processes the wrapper started outlived agentry: {left:?}");
}

/// The rows of a report, as `(question, status)`.
fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    let rows = report["questions"].as_array().expect("rows");
    rows.iter()
        .map(|r| (r["question"].as_str().unwrap_or("").to_owned(), r["status"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// A `[[mcp.servers]]` table for a stdio server run by `sh -c script`.
fn stdio_server(name: &str, script: &str) -> String {
    let command = serde_json::to_string(&["sh", "-c", script]).expect("json");
    format!("[[mcp.servers]]\nname = \"{name}\"\ntransport = \"stdio\"\ncommand = {command}\ntools = []\n")
}

/// The Python search server over stdio, started through `sh -c` with `before` run first (in
/// the server's process group) and `after` run once it exits.
fn wrapped_search_server(before: &str, after: &str) -> String {
    let server: Vec<String> =
        crate::peers::search_server_stdio_command().iter().map(|arg| format!("'{arg}'")).collect();
    format!("{before} {}; {after}", server.join(" "))
}

/// Issue 12, case 3 (start-up): SIGTERM while an MCP server is still connecting (a stdio
/// command that never answers `initialize`) stops the start: every question is `interrupted` in
/// the report, the model is never asked, the exit code is 1, and the server's process is gone.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_servers_connect_writes_the_report_and_leaves_no_process() {
    // Unique to this run: a process another run left behind is not this one's.
    let mute = format!("sleep 31416{}", std::process::id());
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered.")))).await.expect("model");
    let agentry = Agentry::new();
    let text = format!(
        "[batch]\nquestions = [\"Q1\", \"Q2\"]\nshutdown_grace = \"30s\"\n[mcp]\nconnect_timeout = \"100s\"\n{}\
         [model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        stdio_server("mute", &mute),
        model.base_url()
    );
    let path = agentry.file("c.toml", &text);
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    tokio::time::timeout(Duration::from_secs(60), async {
        while crate::harness::live_pids(&mute, None).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stdio server started");
    crate::harness::signal(pid, "TERM");
    let run = Agentry::finish(child).await;
    let left = crate::harness::gone(&mute).await;
    run.expect_code(1);
    assert!(left.is_empty(), "the connecting server outlived agentry: {left:?}");
    let report = agentry.report("definitions/report.json");
    let rows = statuses(&report);
    assert_eq!(rows.len(), 2, "{report}");
    assert!(rows.iter().all(|(_, status)| status == "interrupted"), "{rows:?}");
    assert_eq!(model.request_count(), 0, "no question started after the signal");
}

/// Issue 12, case 3 (batch): the first SIGTERM stops starting questions; a second SIGTERM ends
/// at once (exit 143, not after the grace), still writing the report with what is known (the
/// question answered before, the rest `interrupted`) and leaving no stdio server's process.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_with_the_report_and_no_process_left() {
    // Unique to this run: a process another run left behind is not this one's.
    let leftover = format!("sleep 27184{}", std::process::id());
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.last_user_text().is_some_and(|q| q.contains("quick")) {
            Reply::text("Quickly answered.")
        } else {
            Reply::text("Too late.").delayed(Duration::from_secs(300))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let text = format!(
        "[batch]\nconcurrency = 2\nshutdown_grace = \"60s\"\n\
         questions = [\"The quick one\", \"Slow one\", \"Slow two\", \"Never started\"]\n{}\
         [model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        stdio_server("wrapped", &wrapped_search_server(&format!("{leftover} & exec"), "")),
        model.base_url()
    );
    let path = agentry.file("c.toml", &text);
    let mut child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    let stderr = crate::harness::OutputWatch::stderr(&mut child);
    tokio::time::timeout(Duration::from_secs(60), async {
        while model.request_count() < 3 || model.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the quick question answered, two slow ones in flight");
    crate::harness::signal(pid, "TERM");
    stderr.wait_for("shutting down").await;
    crate::harness::signal(pid, "TERM");
    let run = Agentry::finish(child).await;
    let left = crate::harness::gone(&leftover).await;
    assert_eq!(run.code, 143, "a second SIGTERM ends at once:\n{}", stderr.text());
    assert!(left.is_empty(), "the stdio server's group outlived agentry: {left:?}");
    let report = agentry.report("definitions/report.json");
    let rows = statuses(&report);
    let expected = [
        ("The quick one", "ok"),
        ("Slow one", "interrupted"),
        ("Slow two", "interrupted"),
        ("Never started", "interrupted"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(q, s)| ((*q).to_owned(), (*s).to_owned())).collect();
    assert_eq!(rows, expected, "{report}");
    assert_eq!(report["questions"][1]["turns"], 1, "an interrupted row keeps what it did: {report}");
    assert_eq!(report["totals"]["interrupted"], 3, "{report}");
}

/// Issue 12, case 3 (after the batch): while the actors shut down (a stdio server that ignores
/// SIGTERM keeps that going for seconds) the first Ctrl-C is answered, and a second one ends at
/// once (exit 130), killing the server's process group; the report written before stands.
#[tokio::test(flavor = "multi_thread")]
async fn signals_during_the_shutdown_are_answered_and_a_second_one_exits_at_once() {
    // Unique to this run: a process another run left behind is not this one's.
    let stubborn = format!("sleep 27185{}", std::process::id());
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered.")))).await.expect("model");
    let agentry = Agentry::new();
    let text = format!(
        "[batch]\nquestions = [\"Q1\", \"Q2\"]\n{}[model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        stdio_server("stubborn", &wrapped_search_server("trap '' TERM;", &stubborn)),
        model.base_url()
    );
    let path = agentry.file("c.toml", &text);
    let mut child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    let stderr = crate::harness::OutputWatch::stderr(&mut child);
    let report = agentry.dir().join("definitions/report.json");
    tokio::time::timeout(Duration::from_secs(60), async {
        while !report.exists() || crate::harness::live_pids(&stubborn, None).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the report written while the stdio server is being stopped");
    crate::harness::signal(pid, "INT");
    stderr.wait_for("shutting down").await;
    crate::harness::signal(pid, "INT");
    let run = Agentry::finish(child).await;
    let left = crate::harness::gone(&stubborn).await;
    assert_eq!(run.code, 130, "a second Ctrl-C ends at once:\n{}", stderr.text());
    assert!(left.is_empty(), "the stdio server's group outlived agentry: {left:?}");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["ok"], 2, "{report}");
}

/// Issue 12, case 5 (shutdown): a question interrupted by the shutdown after its research was
/// saved (in a turn whose other tool call never answers) is answered by that file: its row is
/// `ok` with a warning and carries the file, turns, tool calls and tokens; a rerun agrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_question_interrupted_after_its_save_is_answered_by_the_file() {
    let search =
        agentry_testkit::search::SlowSearchServer::start_on(([127, 0, 0, 1], 0).into(), Duration::from_secs(600))
            .await
            .expect("search");
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("Done.")
        } else {
            Reply::tool_calls(vec![
                ScriptedToolCall::new(
                    "save_research",
                    &json!({"topic": "Interruptions", "research_content": "Saved first."}),
                ),
                ScriptedToolCall::new("search", &json!({"query": "interruptions"})),
            ])
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nquestions = [\"Define interruptions\"]\noutput_dir = \"out\"\nshutdown_grace = \"1s\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), Some(&search.url()), extra));
    let path = path.to_str().expect("utf-8");
    let mut child = agentry.spawn(&["run", "-c", path]);
    let pid = child.id().expect("pid");
    let stderr = crate::harness::OutputWatch::stderr(&mut child);
    tokio::time::timeout(Duration::from_secs(60), async {
        while agentry.research_files("out").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the research saved while the search is in flight");
    crate::harness::signal(pid, "TERM");
    let run = Agentry::finish(child).await;
    let files = agentry.research_files("out");
    let report = agentry.report("out/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["status"], "ok", "{row}\n{}", stderr.text());
    assert!(row["warning"].as_str().is_some_and(|w| w.contains("interrupted")), "{row}");
    assert_eq!(agentry.dir().join(row["file"].as_str().unwrap_or("no file")), files[0], "{row}");
    assert_eq!((row["turns"].as_u64(), row["tool_calls"].as_u64()), (Some(1), Some(2)), "{row}");
    assert!(row["input_tokens"].as_u64().is_some_and(|t| t > 0), "{row}");
    assert_eq!(run.code, 0, "every question is answered:\n{}", stderr.text());
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    assert_eq!(agentry.report("out/report.json")["totals"]["skipped"], 1, "a rerun agrees: answered");
}
