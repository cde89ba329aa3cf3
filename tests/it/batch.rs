//! Batches from a config file: concurrency, one file per question, reruns.

use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};
use serde_json::json;

use crate::harness::{Agentry, config};
use crate::peers::PythonMcpServer;

#[tokio::test(flavor = "multi_thread")]
async fn twenty_questions_five_at_a_time_give_twenty_files() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    // The latency keeps each request in flight long enough for the peak to be reached.
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new()))
        .await
        .expect("model")
        .with_latency(Duration::from_millis(150));
    let agentry = Agentry::new();
    let questions: Vec<String> = (1..=20).map(|n| format!("Define topic number {n}")).collect();
    agentry.file("questions.txt", &format!("# twenty questions\n\n{}\n", questions[5..].join("\n")));
    let extra = format!(
        "[batch]\nconcurrency = 5\nquestions = {:?}\nquestions_file = \"questions.txt\"\noutput_dir = \"out\"\n",
        &questions[..5]
    );
    let path = agentry.file("batch.toml", &config(&model.base_url(), Some(&mcp.url()), &extra));
    let run = agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);

    assert_eq!(model.peak_in_flight(), 5, "concurrency 5 means exactly 5 model calls in flight at the peak");
    assert_eq!(agentry.research_files("out").len(), 20);
    let report = agentry.report("out/report.json");
    assert_eq!(report["totals"]["ok"], 20);
    assert_eq!(report["questions"].as_array().expect("rows").len(), 20);
    assert_eq!(report["questions"][7]["question"], "Define topic number 8", "rows keep the order given");
    assert!(run.stdout.contains("20 questions: 20 ok"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_skips_answered_questions_unless_forced() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nquestions = [\"Define Rust\", \"Define Go\", \"Define Zig\"]\n";
    let path = agentry.file("batch.toml", &config(&model.base_url(), None, extra));
    let path = path.to_str().expect("utf-8");
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    let after_first = model.request_count();
    assert_eq!(agentry.research_files("definitions").len(), 3);

    // One file lost (as after a crash): only that question is answered again.
    std::fs::remove_file(&agentry.research_files("definitions")[0]).expect("remove");
    let run = agentry.run(&["run", "-c", path]).await;
    run.expect_code(0);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["skipped"], 2, "{report}");
    assert_eq!(report["totals"]["ok"], 1, "{report}");
    assert!(model.request_count() > after_first);
    assert_eq!(agentry.research_files("definitions").len(), 3);

    let before_force = model.request_count();
    agentry.run(&["run", "-c", path, "--force"]).await.expect_code(0);
    assert_eq!(agentry.report("definitions/report.json")["totals"]["ok"], 3);
    assert!(model.request_count() >= before_force + 3);
    assert_eq!(agentry.research_files("definitions").len(), 3, "answering again replaces files, never adds");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_config_key_exits_2_naming_key_and_file() {
    let agentry = Agentry::new();
    let path = agentry.file("bad.toml", "[batch]\nconcurency = 3\n");
    let run = agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("concurency"), "{}", run.stderr);
    assert!(run.stderr.contains("bad.toml"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_questions_file_exits_2_naming_it() {
    let agentry = Agentry::new();
    let path = agentry.file("q.toml", "[batch]\nquestions_file = \"nowhere.txt\"\n");
    let run = agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("nowhere.txt"), "{}", run.stderr);
}

/// Issue 12, case 5 (timeout): a question whose time runs out after its research was saved
/// (its model never answers the turn after the save) is answered by the saved file: `ok` with
/// a warning, with the file, turns, tool calls and tokens in its row; a rerun agrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_question_that_times_out_after_its_save_is_answered_by_the_file() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("Too late.").delayed(Duration::from_secs(60))
        } else {
            Reply::tool_call("save_research", &json!({"topic": "Deadlines", "research_content": "Saved in time."}))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra =
        "[agent]\nquestion_timeout = \"3s\"\n[batch]\nquestions = [\"Define deadlines\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let path = path.to_str().expect("utf-8");
    let run = agentry.run(&["run", "-c", path]).await;
    let files = agentry.research_files("out");
    assert_eq!(files.len(), 1, "the save reached the disk:\n{}", run.output());
    let report = agentry.report("out/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["status"], "ok", "{row}\n{}", run.output());
    assert!(row["warning"].is_string(), "{row}");
    assert_eq!(agentry.dir().join(row["file"].as_str().unwrap_or("no file")), files[0], "{row}");
    assert_eq!((row["turns"].as_u64(), row["tool_calls"].as_u64()), (Some(2), Some(1)), "{row}");
    assert!(row["input_tokens"].as_u64().is_some_and(|t| t > 0), "{row}");
    run.expect_code(0);
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    assert_eq!(agentry.report("out/report.json")["totals"]["skipped"], 1, "a rerun agrees: answered");
}
