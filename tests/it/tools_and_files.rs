//! Tools: bad calls become results the model reads; stdio servers; hostile file names.

use std::sync::Arc;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply, ScriptedToolCall};
use serde_json::json;

use crate::harness::{Agentry, config, tool_results};
use crate::peers::{PythonMcpServer, server_everything_command};

#[tokio::test(flavor = "multi_thread")]
async fn malformed_arguments_unknown_tools_and_tool_errors_reach_the_model_as_errors() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.number() == 0 {
            Reply::tool_calls(vec![
                ScriptedToolCall::raw("search", "{\"query\": \"rust"),
                ScriptedToolCall::raw("no_such_tool", "{}"),
                ScriptedToolCall::new("fail", &json!({"message": "boom"})),
                ScriptedToolCall::raw("search", "[\"rust\"]"),
                ScriptedToolCall::new("search", &json!({"query": "rust"})),
            ])
        } else {
            Reply::text("Done despite the errors.")
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry
        .file("c.toml", &config(&model.base_url(), Some(&mcp.url()), "[batch]\nquestions = [\"Define Rust\"]\n"));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);

    let results = tool_results(&model.requests()[1].body);
    assert_eq!(results.len(), 5, "every call is answered: {results:?}");
    assert!(results[0].starts_with("Error: the arguments of `search` are not a JSON object"), "{}", results[0]);
    assert!(results[1].starts_with("Error: unknown tool `no_such_tool`"), "{}", results[1]);
    assert!(results[1].contains("search"), "the error lists the tools that exist: {}", results[1]);
    assert!(results[2].starts_with("Error:") && results[2].contains("boom"), "{}", results[2]);
    assert_eq!(
        results[3],
        "Error: the arguments of `search` are not a JSON object (got an array). Call it again with a JSON object matching its schema."
    );
    assert!(results[4].contains("Found"), "the valid call still ran: {}", results[4]);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["tool_calls"], 5);
    assert_eq!(report["questions"][0]["tool_errors"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_topics_stay_inside_the_output_directory() {
    let hostile =
        ["../../etc/passwd".to_owned(), format!("{}\0{}", "x".repeat(250), "y".repeat(250)), ".hidden/..".to_owned()];
    let topics = hostile.clone();
    let model = ModelServer::start(Arc::new(FnBehaviour::new(move |request| {
        let question = request.last_user_text().unwrap_or_default();
        let index: usize = question.trim_start_matches("Question ").parse().unwrap_or(0);
        let answered = request.messages().iter().any(|m| m["role"] == "tool");
        if answered {
            Reply::text("Saved.")
        } else {
            Reply::tool_call("save_research", &json!({"topic": topics[index], "research_content": "Content."}))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra =
        "[batch]\nquestions = [\"Question 0\", \"Question 1\", \"Question 2\"]\noutput_dir = \"out/research\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);

    let files = agentry.research_files("out/research");
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        assert_eq!(file.parent(), Some(agentry.dir().join("out/research").as_path()));
        assert!(!name.starts_with('.') && !name.contains(['\0', '/']) && name.len() <= 100, "{name:?}");
    }
    assert!(!agentry.dir().join("etc").exists() && !agentry.dir().join("out/etc").exists());
    // Everything in the directory is accounted for: three files, the report, its journal and
    // the directory's lock (it stays, as a lock file should), no temp files.
    let mut entries: Vec<String> = std::fs::read_dir(agentry.dir().join("out/research"))
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".md"))
        .collect();
    entries.sort();
    assert_eq!(entries, [".agentry.lock", "report.json", "report.jsonl"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_server_gets_a_clean_environment_and_its_tools_work() {
    const CANARY: &str = "sk-canary-stdio-5e4d3c2b1a09";
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.number() == 0 {
            Reply::tool_calls(vec![
                ScriptedToolCall::new("echo", &json!({"message": "hello over stdio"})),
                ScriptedToolCall::new("get-env", &json!({})),
            ])
        } else {
            Reply::text("Echoed.")
        }
    })))
    .await
    .expect("model");
    let command = server_everything_command();
    let server = format!(
        "[[mcp.servers]]\nname = \"everything\"\ntransport = \"stdio\"\ncommand = {command:?}\nenv = [\"PATH\", \"OPENAI_API_KEY\"]\ntools = [\"echo\", \"get-env\"]\n"
    );
    let agentry = Agentry::new().env("OPENAI_API_KEY", CANARY).env("AGENTRY__MODEL__FALLBACK", "local");
    let text = config(&model.base_url(), None, "[batch]\nquestions = [\"Echo something\"]\n")
        .replace("[mcp]\nservers = []\n", &server);
    let path = agentry.file("c.toml", &text);
    let path = path.to_str().expect("utf-8");

    let listed = agentry.run(&["tools", "-c", path]).await;
    listed.expect_code(0);
    assert!(listed.stdout.contains("everything (stdio"), "{}", listed.stdout);
    assert!(listed.stdout.contains("echo") && listed.stdout.contains("get-env"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("get-sum"), "the allowlist hides other tools: {}", listed.stdout);

    // A key is present, so the cloud route would be taken: point the cloud at the test server.
    let agentry = agentry.env("OPENAI_BASE_URL", model.base_url());
    let run = agentry.run(&["run", "-c", path]).await;
    run.expect_code(0);
    let results = tool_results(&model.requests()[1].body);
    assert!(results[0].contains("hello over stdio"), "{results:?}");
    assert!(results[1].contains("PATH"), "get-env shows the child's environment: {}", results[1]);
    assert!(!results[1].contains(CANARY), "the API key must not reach the child: {}", results[1]);
    assert!(!results[1].contains("AGENTRY__"), "only allowlisted variables reach the child: {}", results[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_reports_an_unreachable_server_and_exits_1() {
    let agentry = Agentry::new();
    let path = agentry.file(
        "c.toml",
        "[mcp]\nconnect_timeout = \"5s\"\n[[mcp.servers]]\nname = \"nowhere\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
    );
    let run = agentry.run(&["tools", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert!(run.stdout.contains("nowhere") && run.stdout.contains("unavailable"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn colliding_tool_names_are_prefixed_by_server() {
    use agentry::config::{McpEndpoint, McpServerSettings};

    let one = PythonMcpServer::start("streamable-http").await;
    let two = PythonMcpServer::start("sse").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[batch]\noutput_dir = \"{}\"\n", dir.path().join("out").display())).expect("config");
    let mut settings =
        agentry::config::load(&agentry::config::Sources { file: Some(path), ..Default::default() }).expect("config");
    settings.mcp.servers = vec![
        McpServerSettings::new("alpha", McpEndpoint::http(&one.url()).expect("url")).with_tools(&["search", "echo"]),
        McpServerSettings::new("beta", McpEndpoint::http(&two.url()).expect("url")).with_tools(&["search"]),
    ];
    let runtime = agentry::app::Runtime::start(settings, Arc::new(|_: &str| None)).await.expect("runtime");
    runtime.tools_settled(std::time::Duration::from_secs(30)).await;
    let mut names: Vec<String> = runtime.tools.definitions().await.iter().map(|d| d.function.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["alpha__search", "beta__search", "echo", "save_research"]);
    runtime.shutdown().await;
}

/// What OpenAI accepts as a function name: `^[a-zA-Z0-9_-]{1,64}$`.
fn model_safe(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tool_names_reach_the_model_safe_and_the_server_unchanged() {
    use agentry_testkit::hostile_mcp::HostileNamesServer;

    let mcp = HostileNamesServer::start().await.expect("hostile MCP server");
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.number() == 0 { Reply::tool_call("web_search", &json!({})) } else { Reply::text("Done.") }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry
        .file("c.toml", &config(&model.base_url(), Some(&mcp.url()), "[batch]\nquestions = [\"Define Rust\"]\n"));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);

    let requests = model.requests();
    let offered: Vec<String> = requests[0].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(offered.len(), 7, "every tool and save_research: {offered:?}");
    assert!(offered.iter().all(|n| model_safe(n)), "{offered:?}");
    assert_eq!(tool_results(&requests[1].body), ["ran \"web search\""], "the server got the tool's own name");
    mcp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_prints_no_control_characters_and_ends_quietly_on_a_closed_pipe() {
    use agentry_testkit::hostile_mcp::HostileNamesServer;

    let mcp = HostileNamesServer::start().await.expect("hostile MCP server");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &format!("[[mcp.servers]]\nname = \"hostile\"\nurl = \"{}\"\n", mcp.url()));
    let path = path.to_str().expect("utf-8");

    let run = agentry.run(&["tools", "-c", path]).await;
    run.expect_code(0);
    let raw: Vec<char> = run.stdout.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(raw.is_empty(), "control characters printed raw: {raw:?} in {:?}", run.stdout);
    assert!(run.stdout.contains(r"line\nbreak") && run.stdout.contains(r"nul\0byte"), "{}", run.stdout);
    assert!(run.stdout.contains("web_search"), "the name the model sees is shown: {}", run.stdout);

    // `agentry tools | head -0`: the reader is gone before the first line is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentry"));
    let output = command
        .args(["tools", "-c", path])
        .current_dir(agentry.dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", agentry.dir())
        .env("AGENTRY__SECRETS__DIR", agentry.dir())
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("agentry finished within 120 s")
        .expect("agentry ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    mcp.shutdown().await;
}
