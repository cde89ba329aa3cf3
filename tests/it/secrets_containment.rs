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

    use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};
    use agentry::demo::scripted::ScriptedResearcher;

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
