//! Secrets: shown as source and fingerprint, never as values.

use crate::harness::Agentry;

const CANARY: &str = "sk-canary-config-check-9a8b7c6d5e";

#[tokio::test(flavor = "multi_thread")]
async fn config_check_shows_source_and_fingerprint_never_the_value() {
    let agentry = Agentry::new();
    let key = agentry.file("keys/openai", &format!("{CANARY}\n"));
    let agentry = agentry.env("OPENAI_API_KEY_FILE", key.display().to_string()).env("RUST_LOG", "trace");
    let run = agentry.run(&["config", "check"]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("openai_api_key = sha256:"), "{}", run.stdout);
    assert!(run.stdout.contains("$OPENAI_API_KEY_FILE"), "{}", run.stdout);
    assert!(run.stdout.contains("cloud: gpt-4o-mini"), "the route: {}", run.stdout);
    assert!(!run.output().contains(CANARY) && !run.output().contains(&CANARY[8..20]), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_fails_on_a_broken_secret_and_names_the_path() {
    let agentry = Agentry::new();
    std::fs::create_dir_all(agentry.dir().join("secrets/openai_api_key"))
        .expect("a directory where the file should be");
    let run = agentry.run(&["config", "check"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("openai_api_key") && run.stderr.contains("is a directory"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_the_config_file_is_refused() {
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &format!("[model.cloud]\napi_key_secret = \"{CANARY}\"\n"));
    let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("secret"), "{}", run.stderr);
    assert!(!run.output().contains(CANARY));
}

/// A key that exists only in this test run.
fn canary(label: &str) -> String {
    format!("sk-canary-{label}-{:032x}", rand::random::<u128>())
}

/// Every place a secret could end up: output, report, research files.
fn everything_written(agentry: &Agentry, run: &crate::harness::Run) -> String {
    let mut text = run.output();
    for entry in walk(agentry.dir()) {
        if entry.components().any(|c| c.as_os_str() == "secrets" || c.as_os_str() == "keys") {
            continue;
        }
        text.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap_or_default()));
    }
    text
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[track_caller]
fn assert_absent(text: &str, secret: &str, what: &str) {
    // The whole value, and any 12-character piece of its random part.
    let random = &secret[secret.len() - 32..];
    assert!(!text.contains(secret), "{what}: the canary leaked");
    for start in (0..=20).step_by(4) {
        assert!(!text.contains(&random[start..start + 12]), "{what}: part of the canary leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_key_and_token_never_leak_through_the_main_flows() {
    use std::sync::Arc;
    use std::time::Duration;

    use agentry::demo::scripted::ScriptedResearcher;
    use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};

    use crate::harness::config;
    use crate::peers::{PythonMcpServer, search_server_stdio_command};

    let api_key = canary("key");
    let token = canary("token");
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", &format!("{api_key}\n"));
    let token_file = agentry.file("keys/gateway-token", &token);
    let agentry = agentry
        .env("RUST_LOG", "trace")
        .env("MCP_GATEWAY_AUTH_TOKEN_FILE", token_file.display().to_string())
        .env("OPENAI_API_KEY", api_key.clone());

    // 1. A batch over legacy SSE and Streamable HTTP, both requiring the token, the cloud route
    //    requiring the key; plus a stdio child offered the key in its allowlist.
    let sse = PythonMcpServer::start_with_args("sse", &["--require-bearer", token_file.to_str().expect("utf-8")]).await;
    let http =
        PythonMcpServer::start_with_args("streamable-http", &["--require-bearer", token_file.to_str().expect("utf-8")])
            .await;
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new()))
        .await
        .expect("model")
        .with_latency(Duration::from_millis(300))
        .require_key(Some(api_key.clone()));
    let stdio = search_server_stdio_command();
    let servers = format!(
        "[[mcp.servers]]\nname = \"sse\"\nurl = \"{}\"\ntools = [\"search\"]\ntoken_secret = \"mcp_gateway_auth_token\"\n\
         [[mcp.servers]]\nname = \"http\"\nurl = \"{}\"\ntools = [\"echo\"]\ntoken_secret = \"mcp_gateway_auth_token\"\n\
         [[mcp.servers]]\nname = \"child\"\ntransport = \"stdio\"\ncommand = {stdio:?}\nenv = [\"PATH\", \"HOME\", \"OPENAI_API_KEY\", \"MCP_GATEWAY_AUTH_TOKEN_FILE\"]\ntools = [\"fail\"]\n",
        sse.url(),
        http.url()
    );
    let text = config(
        "http://127.0.0.1:9/v1",
        None,
        "[batch]\nquestions = [\"Define Machine Learning\", \"What is Rust?\"]\n",
    )
    .replace("[mcp]\nservers = []\n", &servers);
    let path = agentry.file("c.toml", &text);
    let agentry = agentry.env("OPENAI_BASE_URL", model.base_url());
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    // While it runs, read the stdio child's environment from /proc.
    let environ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            for kid in crate::harness::child_pids(pid, "mcp_search_server.py") {
                if let Ok(environ) = std::fs::read(format!("/proc/{kid}/environ")) {
                    return String::from_utf8_lossy(&environ).replace('\0', "\n");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stdio child was seen");
    let run = crate::harness::Agentry::finish(child).await;
    run.expect_code(0);
    assert_absent(&environ, &api_key, "stdio child environment");
    assert_absent(&environ, &token, "stdio child environment");
    let names: Vec<&str> = environ.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    assert!(names.iter().all(|n| ["PATH", "HOME"].contains(n)), "only allowlisted, non-secret variables: {names:?}");
    assert!(
        model.requests().iter().all(|r| r.bearer.as_deref() == Some(api_key.as_str())),
        "the key did reach the model"
    );
    let written = everything_written(&agentry, &run);
    assert!(written.contains("TRACE") || written.contains("DEBUG"), "the run logged at trace level");
    assert_absent(&written, &api_key, "batch output, report and research files");
    assert_absent(&written, &token, "batch output, report and research files");

    // 2. The other commands, and the error paths: a rejected key, a rejected token.
    let rejecting = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("never"))))
        .await
        .expect("model")
        .require_key(Some("sk-another".into()));
    let wrong_token = agentry.file("keys/wrong-token", "sk-not-the-token");
    let agentry = agentry.env("OPENAI_BASE_URL", rejecting.base_url()).env("AGENTRY__MODEL__FALLBACK", "none");
    for args in
        [vec!["config", "check", "-c"], vec!["tools", "-c"], vec!["run", "--force", "-c"], vec!["ask", "Why?", "-c"]]
    {
        let mut args = args.clone();
        args.push(path.to_str().expect("utf-8"));
        let run = agentry.run(&args).await;
        let written = everything_written(&agentry, &run);
        assert_absent(&written, &api_key, &format!("agentry {}", args.join(" ")));
        assert_absent(&written, &token, &format!("agentry {}", args.join(" ")));
    }
    std::fs::write(&token_file, "x").ok();
    let _ = wrong_token;
}

/// A value shaped like no key at all: only its being a loaded secret can get it scrubbed.
fn unshaped_canary(label: &str) -> String {
    format!("{label}-{:032x}", rand::random::<u128>())
}

#[tokio::test(flavor = "multi_thread")]
async fn model_errors_that_quote_the_key_in_400_403_429_and_500_bodies_never_show_it() {
    use std::sync::Arc;

    use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};

    use crate::harness::config;

    for api_key in [canary("key"), unshaped_canary("plain")] {
        let statuses = [400, 403, 429, 500];
        // Question N gets status N, every time (a 429 is tried again until the deadline).
        let model = ModelServer::start(Arc::new(FnBehaviour::new(move |request| {
            let question = request.last_user_text().unwrap_or_default();
            let index = ["One", "Two", "Three", "Four"].iter().position(|q| question == *q).unwrap_or(0);
            Reply::echo_key(statuses[index])
        })))
        .await
        .expect("model");
        let agentry = Agentry::new();
        agentry.file("secrets/openai_api_key", &format!("{api_key}\n"));
        let agentry = agentry
            .env("RUST_LOG", "trace")
            .env("OPENAI_BASE_URL", model.base_url())
            .env("AGENTRY__MODEL__FALLBACK", "none")
            .env("AGENTRY__MODEL__MAX_RETRIES", "0");
        let questions = "[agent]\nquestion_timeout = \"2s\"\n[batch]\nconcurrency = 1\nquestions = [\"One\", \"Two\", \"Three\", \"Four\"]\n";
        let path = agentry.file("c.toml", &config("http://127.0.0.1:9/v1", None, questions));
        let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
        run.expect_code(1);
        let requests = model.requests();
        assert!(requests.iter().all(|r| r.bearer.as_deref() == Some(api_key.as_str())), "the key reached the model");
        let mut seen: Vec<Option<u16>> = requests.iter().map(|r| r.status).collect();
        seen.dedup();
        assert_eq!(seen, statuses.map(Some), "each status, the 429 as often as the deadline allowed");
        assert_absent(&everything_written(&agentry, &run), &api_key, "output, report and files");
        let report = agentry.report("definitions/report.json");
        let errors: Vec<&str> =
            report["questions"].as_array().expect("rows").iter().filter_map(|q| q["error"].as_str()).collect();
        assert_eq!(errors.len(), 4, "{report}");
        for (status, error) in [400, 403, 500].iter().zip([errors[0], errors[1], errors[3]]) {
            assert!(error.contains(&format!("HTTP {status}")), "the error stays readable: {error}");
            assert!(error.contains("[redacted"), "the key is replaced, the rest kept: {error}");
            assert!(error.contains("is not allowed to use this model"), "{error}");
        }
        assert!(errors[2].contains("429"), "{}", errors[2]);
    }
}

/// An MCP server whose every tool call fails with a JSON-RPC error quoting the request's
/// `Authorization` header, the bare token and `echo`: a server that pastes credentials into
/// its error messages.
#[derive(Clone)]
struct EchoingMcpServer {
    echo: std::sync::Arc<str>,
    /// Refuse `tools/list` too, quoting the credentials (the session then never connects).
    refuse_listing: bool,
}

/// The `Authorization` header a request came with.
fn authorization(context: &rmcp::service::RequestContext<rmcp::RoleServer>) -> String {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|value| value.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

impl rmcp::ServerHandler for EchoingMcpServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        agentry::demo::search_server::DemoSearchHandler.get_info()
    }

    async fn list_tools(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        if self.refuse_listing {
            let message =
                format!("cannot list tools for Authorization: {}; key {}", authorization(&context), self.echo);
            return Err(rmcp::ErrorData::internal_error(message, None));
        }
        agentry::demo::search_server::DemoSearchHandler.list_tools(request, context).await
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let authorization = authorization(&context);
        let token = authorization.strip_prefix("Bearer ").unwrap_or_default().to_owned();
        Err(rmcp::ErrorData::internal_error(
            format!(
                "upstream refused {}: Authorization: {authorization} (token {token}); forwarded key {}",
                request.name, self.echo
            ),
            None,
        ))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        agentry::demo::search_server::DemoSearchHandler.get_tool(name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_error_quoting_the_token_and_the_key_never_shows_them() {
    use std::sync::Arc;

    use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};
    use serde_json::json;

    use crate::harness::{config, tool_results};

    let api_key = unshaped_canary("plain-key");
    let token = unshaped_canary("gateway");
    let server = agentry::demo::search_server::serve_mcp(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        EchoingMcpServer { echo: api_key.as_str().into(), refuse_listing: false },
    )
    .await
    .expect("MCP server");
    let url = agentry::demo::search_server::mcp_url(server.addr());
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if tool_results(request.body()).is_empty() {
            Reply::tool_call("search", &json!({ "query": "rust" }))
        } else {
            Reply::text("The search failed; here is what I know.")
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", &format!("{api_key}\n"));
    agentry.file("secrets/mcp_gateway_auth_token", &format!("{token}\n"));
    let agentry = agentry
        .env("RUST_LOG", "trace")
        .env("OPENAI_BASE_URL", model.base_url())
        .env("AGENTRY__MODEL__FALLBACK", "none");
    let servers = format!(
        "[[mcp.servers]]\nname = \"echoing\"\nurl = \"{url}\"\ntools = [\"search\"]\ntoken_secret = \"mcp_gateway_auth_token\"\n"
    );
    let text = config("http://127.0.0.1:9/v1", None, "[batch]\nquestions = [\"What is Rust?\"]\n")
        .replace("[mcp]\nservers = []\n", &servers);
    let path = agentry.file("c.toml", &text);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "a tool call, then the answer");
    let results = tool_results(&requests[1].body);
    assert_eq!(results.len(), 1);
    assert!(results[0].contains("upstream refused search"), "the model still learns what failed: {}", results[0]);
    assert!(results[0].contains("[redacted"), "{}", results[0]);
    let sent_to_model: String = requests.iter().map(|r| r.body.to_string()).collect();
    assert_absent(&sent_to_model, &token, "requests to the model");
    assert_absent(&sent_to_model, &api_key, "requests to the model");
    let written = everything_written(&agentry, &run);
    assert_absent(&written, &token, "output, report and files");
    assert_absent(&written, &api_key, "output, report and files");
    server.shutdown().await;
}

/// A server that refuses to connect with a message quoting the credentials: what `agentry
/// tools` and the logs say about it is scrubbed too.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_server_refusing_to_connect_with_the_token_in_its_message_never_shows_it() {
    let api_key = unshaped_canary("plain-key");
    let token = unshaped_canary("gateway");
    let server = agentry::demo::search_server::serve_mcp(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        EchoingMcpServer { echo: api_key.as_str().into(), refuse_listing: true },
    )
    .await
    .expect("MCP server");
    let url = agentry::demo::search_server::mcp_url(server.addr());
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", &format!("{api_key}\n"));
    agentry.file("secrets/mcp_gateway_auth_token", &format!("{token}\n"));
    let agentry = agentry.env("RUST_LOG", "debug");
    let text = format!(
        "[mcp]\nconnect_timeout = \"5s\"\n[[mcp.servers]]\nname = \"echoing\"\nurl = \"{url}\"\n\
         token_secret = \"mcp_gateway_auth_token\"\n"
    );
    let path = agentry.file("c.toml", &text);
    let run = agentry.run(&["tools", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert!(run.stdout.contains("unavailable"), "{}", run.output());
    assert!(run.stdout.contains("cannot list tools"), "the server's words stay readable: {}", run.output());
    assert_absent(&run.output(), &token, "agentry tools");
    assert_absent(&run.output(), &api_key, "agentry tools");
    server.shutdown().await;
}
