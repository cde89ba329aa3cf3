//! Issue 16 item 3: answers that were not researched are visible. A model that never calls a
//! tool (a small local model) has its answer saved by agentry, and the row, the front matter,
//! the summary and the end of the run say so; a model that writes its tool call as text has
//! that call made.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};
use agentry_testkit::search::SlowSearchServer;
use serde_json::json;

use crate::harness::{Agentry, config, tool_results};

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_saved_without_any_tool_call_is_marked_in_the_row_the_file_and_the_summary() {
    let model =
        ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Rust is a language.")))).await.expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nquestions = [\"Define Rust\", \"Define Go\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let report = agentry.report("out/report.json");
    for row in report["questions"].as_array().expect("rows") {
        assert_eq!((row["status"].as_str(), row["saved_by"].as_str()), (Some("ok"), Some("runtime")), "{row}");
        assert_eq!(row["tools_used"], json!([]), "{row}");
    }
    assert_eq!(report["totals"]["saved_by_runtime"], 2, "{}", report["totals"]);
    for file in agentry.research_files("out") {
        let text = std::fs::read_to_string(&file).expect("research file");
        assert!(text.contains("\nsaved_by: runtime\n") && text.contains("\ntools_used: []\n"), "{text}");
    }
    assert!(run.stdout.contains("saved by agentry"), "the summary marks the rows:\n{}", run.stdout);
    assert!(
        run.output().contains("2 of 2 answers were saved without research: the model called no tool"),
        "the end of the run says so:\n{}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_written_as_text_is_made_as_that_tool_call() {
    let search = SlowSearchServer::start_on(([127, 0, 0, 1], 0).into(), Duration::ZERO).await.expect("search");
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        let results = tool_results(request.body());
        match results.len() {
            // Gemma's way: the call as a JSON object in a code fence, no `tool_calls`.
            0 => Reply::text("```json\n{\"name\": \"search\", \"arguments\": {\"query\": \"rust language\"}}\n```"),
            1 => Reply::tool_call("save_research", &json!({"topic": "Rust", "research_content": "Found it."})),
            _ => Reply::text("Saved."),
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nquestions = [\"Define Rust\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), Some(&search.url()), extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let row = &agentry.report("out/report.json")["questions"][0];
    assert_eq!(row["tools_used"], json!(["search", "save_research"]), "{row}\n{}", run.output());
    assert_eq!((row["tool_calls"].as_u64(), row["saved_by"].as_str()), (Some(2), Some("model")), "{row}");
    let second = &model.requests()[1].body;
    let results = tool_results(second);
    assert!(results.len() == 1 && !results[0].contains("error"), "the search ran: {results:?}");
    assert!(run.stderr.contains("wrote a tool call as text"), "the log says so:\n{}", run.stderr);
}
