//! The Python agent's flow: its environment variables, one question, search through MCP,
//! save the research, print the answer. Over legacy SSE and over Streamable HTTP.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;

use crate::harness::Agentry;
use crate::peers::PythonMcpServer;

async fn seed_flow(transport: &str) {
    let mcp = PythonMcpServer::start(transport).await;
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model server");
    let agentry = Agentry::new()
        .env("MODEL_RUNNER_URL", model.base_url())
        .env("MODEL_RUNNER_MODEL", "ai/gemma3:1B-Q4_K_M")
        .env("MCP_SERVER_URL", mcp.url())
        .env("QUESTION", "Define Machine Learning")
        // The Python agent's placeholder: means "use the local model", and is never sent.
        .env("OPENAI_API_KEY", "sk-test-dummy-key-for-learning");
    let run = agentry.run(&["run"]).await;
    run.expect_code(0);

    // The answer is printed, and where the research went.
    assert!(run.stdout.contains("(demo model)"), "{}", run.stdout);
    assert!(run.stdout.contains("Research saved to definitions/"), "{}", run.stdout);
    let files = agentry.research_files("definitions");
    assert_eq!(files.len(), 1, "{files:?}");
    let research = std::fs::read_to_string(&files[0]).expect("research file");
    assert!(research.contains("question: \"Define Machine Learning\""), "{research}");
    assert!(research.contains("route: \"local\""), "{research}");
    assert!(research.contains("model: \"ai/gemma3:1B-Q4_K_M\""), "{research}");
    assert!(research.contains("tools_used: [\"search\",\"save_research\"]"), "{research}");
    // The content came from the Python server's corpus, through the search tool.
    assert!(research.contains("https://"), "{research}");

    let requests = model.requests();
    assert_eq!(requests.len(), 3, "search, save_research, answer");
    let first = &requests[0].body;
    assert_eq!(first["temperature"], 0.1);
    assert_eq!(first["max_tokens"], 1500);
    assert_eq!(first["model"], "ai/gemma3:1B-Q4_K_M");
    let offered: BTreeSet<&str> =
        first["tools"].as_array().expect("tools").iter().filter_map(|t| t["function"]["name"].as_str()).collect();
    assert_eq!(offered, BTreeSet::from(["save_research", "search"]), "the gateway allowlist offers only search");
    assert!(requests.iter().all(|r| r.bearer.is_none()), "a placeholder key is never sent");
    let search_result = requests[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the search result went back to the model");
    assert!(search_result["content"].as_str().expect("text").contains("Found"), "{search_result}");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["ok"], 1);
    assert_eq!(report["questions"][0]["tool_calls"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_flow_works_over_legacy_sse() {
    seed_flow("sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_flow_works_over_streamable_http() {
    seed_flow("streamable-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_end_to_end_and_says_it_is_a_demo() {
    let agentry = Agentry::new().env("OPENAI_API_KEY", "sk-must-not-be-used");
    let run = agentry.run(&["demo"]).await;
    run.expect_code(0);
    assert!(run.output().contains("DEMO"), "{}", run.output());
    let files = agentry.research_files("definitions/demo");
    assert_eq!(files.len(), 5, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("file");
        assert!(text.contains("route: \"local (demo)\""), "{text}");
        assert!(text.contains("(demo model)"), "{text}");
    }
    let report = agentry.report("definitions/demo/report.json");
    assert_eq!(report["demo"], true);
    assert_eq!(report["totals"]["ok"], 5);
    assert!(!run.output().contains("sk-must-not-be-used"));
}
