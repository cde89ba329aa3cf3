//! `agentry doctor` and `agentry config check [--probe] [--json]` against the test peers: the
//! test kit's OpenAI-compatible server (under Docker Model Runner's URL shapes) and the official
//! Python MCP SDK's server.

use std::sync::Arc;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::{ModelServer, TextOnly};
use serde_json::Value;

use crate::harness::{Agentry, Run};
use crate::peers::PythonMcpServer;

/// A config with the local route at `model_url` (model `test-model`) and one MCP server `peer`
/// at `mcp_url` allowing `tools`.
fn config(model_url: &str, mcp_url: &str, tools: &[&str], extra: &str) -> String {
    let tools = tools.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "{extra}\n[model.local]\nbase_url = \"{model_url}\"\nmodel = \"test-model\"\n\n\
         [[mcp.servers]]\nname = \"peer\"\nurl = \"{mcp_url}\"\ntools = [{tools}]\n"
    )
}

async fn doctor(agentry: &Agentry, config: &str, extra: &[&str]) -> Run {
    let path = agentry.file("c.toml", config);
    let mut args = vec!["doctor", "-c", path.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    agentry.run(&args).await
}

/// The line of check `name`.
fn line<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.output()))
}

/// The `hint:` line right under check `name`, if any.
fn hint<'a>(run: &'a Run, name: &str) -> Option<&'a str> {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = lines.iter().position(|l| l.split_whitespace().nth(1) == Some(name))?;
    lines.get(at + 1).map(|l| l.trim()).filter(|l| l.starts_with("hint: "))
}

#[tokio::test(flavor = "multi_thread")]
async fn against_the_test_peers_every_check_passes_under_both_model_runner_url_shapes() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher)).await.expect("model").with_models(&["test-model"]);
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new();
    let text = config(&model.model_runner_url(Some("llama.cpp")), &mcp.url(), &["search"], "");
    let run = doctor(&agentry, &text, &[]).await;
    run.expect_code(0);
    for check in ["model.local", "model.local.model", "model.local.tools", "mcp.peer", "output_dir"] {
        assert!(line(&run, check).starts_with('✓'), "{check}:\n{}", run.output());
    }
    assert!(!run.stdout.contains('✗') && !run.stdout.contains('⚠'), "{}", run.output());
    assert!(line(&run, "model.local.tools").contains("calls tools (save_research)"), "{}", run.stdout);
    assert!(line(&run, "mcp.peer").contains("protocol 20"), "the handshake's version: {}", run.stdout);
    // The probe is a real completion with the product's prompt and tool.
    let probe = &model.requests()[0].body;
    assert_eq!(probe["tools"][0]["function"]["name"], "save_research", "{probe}");
    assert!(probe["messages"][0]["content"].as_str().expect("system").contains("research assistant"), "{probe}");

    // Model Runner's other shape (`…/engines/v1`), given the way the Python agent gave it.
    let agentry = Agentry::new().env("MODEL_RUNNER_URL", model.model_runner_url(None));
    let run = doctor(&agentry, &text, &[]).await;
    run.expect_code(0);
    assert!(line(&run, "model.local").contains("/engines/v1/"), "{}", run.stdout);

    // config check --probe runs the same checks after its own.
    let path = agentry.file("c.toml", &text);
    let run = agentry.run(&["config", "check", "--probe", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(line(&run, "mcp.peer").starts_with('✓'), "{}", run.stdout);
    assert!(run.stdout.contains("configuration OK; every service answered"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_model_server_down_the_route_fails_with_a_hint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://{}/v1", listener.local_addr().expect("addr"));
    drop(listener);
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new();
    let run = doctor(&agentry, &config(&closed, &mcp.url(), &["search"], ""), &[]).await;
    run.expect_code(1);
    let route = line(&run, "model.local");
    assert!(route.starts_with('✗') && route.contains("cannot reach"), "{}", run.output());
    assert!(hint(&run, "model.local").is_some_and(|h| h.contains("MODEL_RUNNER_URL")), "{}", run.stdout);
    assert!(line(&run, "mcp.peer").starts_with('✓'), "the other checks still run: {}", run.stdout);
    assert!(run.stdout.contains("1 failed"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_never_calls_tools_is_a_warning_not_a_failure() {
    let model = ModelServer::start(Arc::new(TextOnly)).await.expect("model");
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new();
    let run = doctor(&agentry, &config(&model.base_url(), &mcp.url(), &[], ""), &[]).await;
    run.expect_code(0);
    let tools = line(&run, "model.local.tools");
    assert!(tools.starts_with('⚠'), "{}", run.stdout);
    assert!(tools.contains("this model does not call tools; answers will be saved as plain text"), "{tools}");
    assert!(hint(&run, "model.local.tools").is_some_and(|h| h.contains("tools")), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowlisted_tool_the_server_does_not_offer_fails_naming_what_it_offers() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher)).await.expect("model");
    let mcp = PythonMcpServer::start("sse").await;
    let agentry = Agentry::new();
    let run = doctor(&agentry, &config(&model.base_url(), &mcp.url(), &["search", "web_fetch"], ""), &[]).await;
    run.expect_code(1);
    let server = line(&run, "mcp.peer");
    assert!(server.starts_with('✗'), "{}", run.stdout);
    assert!(server.contains("allowlisted but not offered: web_fetch"), "{server}");
    assert!(server.contains("the server offers") && server.contains("search") && server.contains("echo"), "{server}");
    assert!(server.contains("agentry-test-search") && server.contains("protocol 20"), "the handshake: {server}");
    assert!(hint(&run, "mcp.peer").is_some_and(|h| h.contains("mcp.servers[].tools")), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_is_named_by_its_source_and_fingerprint_never_its_value() {
    const WRONG: &str = "sk-doctor-canary-5e4d3c2b1a0f9e8d";
    let model = ModelServer::start(Arc::new(ScriptedResearcher))
        .await
        .expect("model")
        .require_key(Some("sk-the-right-one-0000000000".into()));
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new().env("OPENAI_API_KEY", WRONG);
    let extra = format!("[model]\nfallback = \"none\"\n[model.cloud]\nbase_url = \"{}\"\n", model.base_url());
    let run = doctor(&agentry, &config(&model.base_url(), &mcp.url(), &[], &extra), &[]).await;
    run.expect_code(1);
    let cloud = line(&run, "model.cloud");
    let fingerprint = agentry::secrets::Fingerprint::of(WRONG).to_string();
    assert!(cloud.starts_with('✗') && cloud.contains("HTTP 401"), "{}", run.stdout);
    assert!(cloud.contains("$OPENAI_API_KEY") && cloud.contains(&fingerprint), "{cloud}");
    assert!(hint(&run, "model.cloud").is_some(), "{}", run.stdout);
    assert!(line(&run, "secret.openai_api_key").contains(&fingerprint), "{}", run.stdout);
    assert!(!run.output().contains(&WRONG[3..]), "the key itself never shows:\n{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lock_on_the_output_directory_is_reported_with_its_holder() {
    use std::io::Write;
    let model = ModelServer::start(Arc::new(ScriptedResearcher)).await.expect("model");
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new();
    let dir = agentry.dir().join("definitions");
    std::fs::create_dir_all(&dir).expect("output dir");
    // What a running batch holds: an exclusive flock on .agentry.lock, its pid inside.
    let mut lock = std::fs::File::create(dir.join(".agentry.lock")).expect("lock file");
    lock.lock().expect("flock");
    writeln!(lock, "4242").expect("pid");
    let run = doctor(&agentry, &config(&model.base_url(), &mcp.url(), &[], ""), &[]).await;
    run.expect_code(0);
    let output = line(&run, "output_dir");
    assert!(output.starts_with('⚠') && output.contains(".agentry.lock (pid 4242)"), "{}", run.stdout);
    assert!(hint(&run, "output_dir").is_some_and(|h| h.contains("another run")), "{}", run.stdout);

    drop(lock);
    let run = doctor(&agentry, &config(&model.base_url(), &mcp.url(), &[], ""), &[]).await;
    assert!(line(&run, "output_dir").starts_with('✓') && run.stdout.contains("not locked"), "{}", run.stdout);
}

/// The `--json` document's schema, as the README documents it.
fn doctor_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "required": ["schema", "ok", "counts", "checks"],
        "additionalProperties": false,
        "properties": {
            "schema": {"const": "agentry.doctor/v1"},
            "ok": {"type": "boolean"},
            "counts": {
                "type": "object",
                "required": ["pass", "warn", "fail", "skip"],
                "additionalProperties": false,
                "properties": {
                    "pass": {"type": "integer", "minimum": 0},
                    "warn": {"type": "integer", "minimum": 0},
                    "fail": {"type": "integer", "minimum": 0},
                    "skip": {"type": "integer", "minimum": 0}
                }
            },
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["check", "target", "status", "evidence"],
                    "additionalProperties": false,
                    "properties": {
                        "check": {"type": "string", "minLength": 1},
                        "target": {"type": "string"},
                        "status": {"enum": ["pass", "warn", "fail", "skip"]},
                        "evidence": {"type": "string", "minLength": 1},
                        "hint": {"type": "string", "minLength": 1}
                    }
                }
            }
        }
    })
}

fn assert_valid(schema: &Value, document: &Value) {
    let validator = jsonschema::draft7::new(schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(document).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:?}\n{document:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_output_follows_the_documented_schema() {
    let model = ModelServer::start(Arc::new(TextOnly)).await.expect("model");
    let mcp = PythonMcpServer::start("streamable-http").await;
    let agentry = Agentry::new();
    let text = config(&model.base_url(), &mcp.url(), &["search", "missing_tool"], "");
    let run = doctor(&agentry, &text, &["--json"]).await;
    run.expect_code(1);
    let document: Value = serde_json::from_str(&run.stdout).expect("stdout is one JSON document");
    assert_valid(&doctor_schema(), &document);
    assert_eq!(document["ok"], false);
    let checks = document["checks"].as_array().expect("checks");
    let status = |name: &str| checks.iter().find(|c| c["check"] == name).map(|c| c["status"].clone());
    assert_eq!(status("model.local.tools"), Some("warn".into()));
    assert_eq!(status("mcp.peer"), Some("fail".into()));
    assert_eq!(document["counts"]["fail"], 1);

    // config check --json: its own document, with doctor's under "doctor" when probing.
    let path = agentry.file("c.toml", &text);
    let run = agentry.run(&["config", "check", "--json", "--probe", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let document: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    let schema = serde_json::json!({
        "type": "object",
        "required": ["schema", "ok", "config_file", "settings", "secrets", "route", "mcp_servers", "questions",
                     "problems", "doctor"],
        "additionalProperties": false,
        "properties": {
            "schema": {"const": "agentry.config-check/v1"},
            "ok": {"type": "boolean"},
            "config_file": {"type": ["string", "null"]},
            "settings": {"type": "object", "required": ["agent", "batch", "model", "secrets", "mcp", "telemetry"]},
            "secrets": {"type": "array", "items": {
                "type": "object", "required": ["name", "state"], "additionalProperties": false,
                "properties": {
                    "name": {"type": "string"}, "state": {"enum": ["present", "absent", "unusable"]},
                    "source": {"type": "string"}, "fingerprint": {"type": "string", "pattern": "^sha256:[0-9a-f]{8}$"}
                }}},
            "route": {"type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
                "kind": {"enum": ["cloud", "local", "none"]}, "model": {"type": "string"}, "base_url": {"type": "string"}
            }},
            "mcp_servers": {"type": "array", "items": {
                "type": "object", "required": ["name", "transport", "location", "tools"], "additionalProperties": false,
                "properties": {"name": {"type": "string"}, "transport": {"enum": ["sse", "streamable-http", "stdio"]},
                               "location": {"type": "string"}, "tools": {"type": "array", "items": {"type": "string"}}}
            }},
            "questions": {"type": "object", "required": ["count", "answered_before", "duplicates"]},
            "problems": {"type": "array", "items": {"type": "string"}},
            "doctor": {"oneOf": [{"type": "null"}, doctor_schema()]}
        }
    });
    assert_valid(&schema, &document);
    assert_eq!(document["ok"], false, "a failed probe");
    assert_eq!(document["route"]["kind"], "local");
    assert_eq!(document["doctor"]["counts"]["fail"], 1);
    let run = agentry.run(&["config", "check", "--json", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let document: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_valid(&schema, &document);
    assert_eq!(document["doctor"], Value::Null, "nothing contacted without --probe");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_refuses_a_key_no_header_can_carry_and_a_key_file_into_proc() {
    let agentry = Agentry::new().env("OPENAI_API_KEY", "sk-first-line\nsecond-line");
    let path = agentry.file("c.toml", "[mcp]\nservers = []\n");
    let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(!run.stdout.contains("configuration OK"), "{}", run.output());
    assert!(run.stderr.contains("$OPENAI_API_KEY") && run.stderr.contains("HTTP header"), "{}", run.stderr);
    assert!(!run.output().contains("second-line"), "{}", run.output());

    let agentry = Agentry::new();
    let link = agentry.dir().join("key");
    std::os::unix::fs::symlink("/proc/self/environ", &link).expect("symlink");
    let agentry = agentry.env("OPENAI_API_KEY_FILE", link.display().to_string());
    let path = agentry.file("c.toml", "[mcp]\nservers = []\n");
    let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(!run.stdout.contains("configuration OK"), "{}", run.output());
    assert!(run.stderr.contains(&link.display().to_string()) && run.stderr.contains("under /proc"), "{}", run.stderr);
    assert!(!run.output().contains("PATH="), "nothing of the environment shows: {}", run.output());
}
