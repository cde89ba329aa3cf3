//! The client that the MCP conformance suite (`@modelcontextprotocol/conformance`) drives.
//!
//! ```text
//! cargo run --example conformance_client -- <server-url>
//! ```
//!
//! The suite starts a scenario's server, then runs this program with the server's URL as the
//! last argument and the scenario's name in `MCP_CONFORMANCE_SCENARIO` (some scenarios add a
//! JSON object in `MCP_CONFORMANCE_CONTEXT`). It is agentry itself, not a second client: the
//! settings come from `config::load` (embedded defaults, `AGENTRY__*` variables) with
//! `mcp.servers` replaced by the one server under test (transport `auto`: a URL ending in
//! `/sse` is legacy HTTP+SSE, anything else Streamable HTTP), and `app::Runtime::start` runs
//! the whole supervision tree, so the session is the `McpSession` actor under McpSupervisor.
//! Everything it does goes through that session's `McpSessionHandle`: `settled` (initialize
//! and `tools/list`), `tools`, `call_tool`.
//!
//! Per scenario, the tool calls are:
//! - `initialize`, `json-schema-ref-no-deref`: none (connecting lists the tools);
//! - `tools_call`: `add_numbers {a: 5, b: 3}`;
//! - `sse-retry`: `test_reconnection {}`, half a second after connecting (see `drive`);
//! - `json-schema-2020-12-preservation`: `json_schema_echo {schema: <json_schema_2020_12_tool's
//!   inputSchema as agentry holds it>}`;
//! - a context with `toolCalls` (e.g. `http-custom-headers`): those calls, in order;
//! - any other scenario: every tool the session exposes, once, with arguments made up from the
//!   required properties of its input schema.
//!
//! Exit code: 0 when the session connected and every call got a result; 1 otherwise (the suite
//! prints our stderr then); 2 for a usage error. Logs go to stderr (`RUST_LOG` sets levels).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentry::actors::mcp_session::{McpSessionHandle, ServerTools};
use agentry::actors::secret_keeper::EnvLookup;
use agentry::app::Runtime;
use agentry::config::{self, McpEndpoint, McpServerSettings, Overrides, Sources};
use rmcp::model::{JsonObject, Tool};
use serde_json::{Value, json};

/// Deadlines used unless `AGENTRY__MCP__CONNECT_TIMEOUT` / `AGENTRY__MCP__CALL_TIMEOUT` say
/// otherwise: well inside the suite's 30 s per scenario, so a hang fails here with a message.
const DEFAULT_TIMEOUTS: [(&str, &str); 2] =
    [("AGENTRY__MCP__CONNECT_TIMEOUT", "10s"), ("AGENTRY__MCP__CALL_TIMEOUT", "10s")];

/// How long `sse-retry` waits after connecting before its call (see `drive`).
const SSE_STREAM_SETTLE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("conformance_client: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run());
    runtime.shutdown_timeout(Duration::from_secs(2));
    ExitCode::from(code)
}

async fn run() -> u8 {
    let Some(url) = std::env::args().skip(1).last() else {
        eprintln!("usage: conformance_client <server-url>   (scenario in MCP_CONFORMANCE_SCENARIO)");
        return 2;
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or(Value::Null);

    // Research files are never written here, but ResearchWriter creates its directory.
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("conformance_client: cannot create a scratch directory: {error}");
            return 1;
        }
    };
    // Only agentry's own variables: the legacy ones (MCP_SERVER_URL, ...) must not move the
    // server under test.
    let mut env: BTreeMap<String, String> =
        std::env::vars().filter(|(name, _)| name.starts_with("AGENTRY__")).collect();
    for (name, value) in DEFAULT_TIMEOUTS {
        env.entry(name.to_owned()).or_insert_with(|| value.to_owned());
    }
    let sources = Sources {
        file: None,
        env,
        overrides: Overrides { output_dir: Some(scratch.path().to_path_buf()), ..Overrides::default() },
    };
    let mut settings = match config::load(&sources) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("conformance_client: {error}");
            return 2;
        }
    };
    let endpoint = match McpEndpoint::http(&url) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("conformance_client: {error}");
            return 2;
        }
    };
    settings.mcp.servers = vec![McpServerSettings::new("conformance", endpoint)];
    agentry::telemetry::init(&settings.telemetry);
    let connect_timeout = settings.mcp.connect_timeout;

    // No secrets: the model is never called, and the server under test needs no token.
    let no_env: EnvLookup = Arc::new(|_: &str| None);
    let runtime = match Runtime::start(settings, no_env).await {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("conformance_client: {error}");
            return 2;
        }
    };
    eprintln!("conformance_client: scenario {scenario:?}, server {url}");
    let outcome = match runtime.servers.first() {
        Some(session) => drive(session, &scenario, &context, connect_timeout).await,
        None => Err("no MCP session was started".to_owned()),
    };
    runtime.shutdown().await;
    drop(scratch);
    match outcome {
        Ok(()) => {
            println!("conformance_client: scenario {scenario:?} done");
            0
        }
        Err(message) => {
            eprintln!("conformance_client: scenario {scenario:?} failed: {message}");
            1
        }
    }
}

/// Connects (through the session), then makes the scenario's calls.
async fn drive(
    session: &McpSessionHandle,
    scenario: &str,
    context: &Value,
    connect_timeout: Duration,
) -> Result<(), String> {
    // The first attempt settles within the connect timeout; the margin covers tools/list.
    let tools = match session.settled(connect_timeout * 2).await {
        ServerTools::Ready(tools) => tools,
        ServerTools::Failed { cause, .. } => return Err(format!("connect failed: {cause}")),
        ServerTools::Connecting => {
            return Err(format!("not connected within {:?}", connect_timeout * 2));
        }
    };
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    println!("tools: {names:?}");

    if scenario == "sse-retry" {
        // rmcp opens the standalone GET stream in the background after `initialized`. If it
        // reaches the scenario's server after the tools/call POST, the server answers the call
        // on that stream, no reconnection happens and the retry checks cannot be measured (seen
        // under load: two WARNINGs). Let it open first, as the scenario assumes.
        tokio::time::sleep(SSE_STREAM_SETTLE).await;
    }
    for (tool, arguments) in plan(scenario, context, &tools)? {
        let shown = Value::Object(arguments.clone().unwrap_or_default());
        match session.call_tool(&tool, arguments).await {
            Ok(result) => {
                let text = agentry::mcp::result_text(&result);
                let error = if result.is_error == Some(true) { " (isError)" } else { "" };
                println!("call {tool} {shown} -> {text}{error}");
            }
            Err(error) => return Err(format!("call {tool} {shown}: {error}")),
        }
    }
    Ok(())
}

type Call = (String, Option<JsonObject>);

/// The tool calls a scenario expects.
fn plan(scenario: &str, context: &Value, tools: &[Tool]) -> Result<Vec<Call>, String> {
    if let Some(calls) = context.get("toolCalls").and_then(Value::as_array) {
        return calls
            .iter()
            .map(|call| {
                let name = call.get("name").and_then(Value::as_str).ok_or("a toolCalls entry has no name")?;
                let arguments = call.get("arguments").and_then(Value::as_object).cloned();
                Ok((name.to_owned(), Some(arguments.unwrap_or_default())))
            })
            .collect();
    }
    let object = |value: Value| match value {
        Value::Object(map) => Some(map),
        _ => None,
    };
    Ok(match scenario {
        "initialize" | "json-schema-ref-no-deref" => Vec::new(),
        "tools_call" => vec![("add_numbers".into(), object(json!({"a": 5, "b": 3})))],
        "sse-retry" => vec![("test_reconnection".into(), Some(JsonObject::new()))],
        "json-schema-2020-12-preservation" => {
            let focal = tools
                .iter()
                .find(|t| t.name == "json_schema_2020_12_tool")
                .ok_or("the server did not list json_schema_2020_12_tool")?;
            let schema = Value::Object((*focal.input_schema).clone());
            vec![("json_schema_echo".into(), object(json!({ "schema": schema })))]
        }
        _ => tools.iter().map(|tool| (tool.name.to_string(), Some(sample_arguments(tool)))).collect(),
    })
}

/// Arguments for a tool nobody told us about: a plain value for each required property.
fn sample_arguments(tool: &Tool) -> JsonObject {
    let schema = &tool.input_schema;
    let properties = schema.get("properties").and_then(Value::as_object);
    let required = schema.get("required").and_then(Value::as_array);
    let mut arguments = JsonObject::new();
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        let kind = properties
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let value = match kind {
            "integer" => json!(1),
            "number" => json!(1.5),
            "boolean" => json!(true),
            "object" => json!({}),
            "array" => json!([]),
            "null" => Value::Null,
            _ => json!("conformance"),
        };
        arguments.insert(name.to_owned(), value);
    }
    arguments
}
