use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn with_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

#[test]
fn the_embedded_defaults_load_and_validate() {
    let settings = load(&Sources::default()).expect("defaults are valid");
    assert_eq!(settings.agent.max_turns, 8);
    assert_eq!(settings.batch.concurrency, 4);
    assert_eq!(settings.batch.questions, ["Define Machine Learning"]);
    assert_eq!(settings.model.temperature, 0.1);
    assert_eq!(settings.model.max_tokens, 1500);
    assert_eq!(settings.model.request_timeout, Duration::from_secs(600));
    assert_eq!(settings.model.client_policy(), crate::llm::client::ClientPolicy::default(), "one set of defaults");
    assert_eq!(settings.batch.report_path(), PathBuf::from("definitions/report.json"));
    let gateway = &settings.mcp.servers[0];
    assert_eq!(gateway.endpoint, McpEndpoint::LegacySse(Url::parse("http://mcp-gateway:8811/sse").expect("url")));
}

#[test]
fn an_unknown_key_names_the_key_and_the_file() {
    let (_dir, path) = with_file("q.toml", "[batch]\nconcurency = 3\n");
    let error = load(&Sources { file: Some(path.clone()), ..Sources::default() }).expect_err("unknown key");
    let text = error.to_string();
    assert!(text.contains("concurency"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_the_file() {
    let (_dir, path) = with_file("q.yaml", "batch:\n  concurrency: many\n");
    let error = load(&Sources { file: Some(path.clone()), ..Sources::default() }).expect_err("bad value");
    let text = error.to_string();
    assert!(text.contains("batch.concurrency"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn a_bad_duration_names_the_variable_that_set_it() {
    let sources = Sources { env: env(&[("AGENTRY__AGENT__QUESTION_TIMEOUT", "soon")]), ..Sources::default() };
    let text = load(&sources).expect_err("bad duration").to_string();
    assert!(text.contains("agent.question_timeout"), "{text}");
    assert!(text.contains("AGENTRY__AGENT__QUESTION_TIMEOUT"), "{text}");
}

#[test]
fn a_syntax_error_names_the_file() {
    let (_dir, path) = with_file("q.toml", "[batch\nconcurrency = 3\n");
    let error = load(&Sources { file: Some(path.clone()), ..Sources::default() }).expect_err("syntax");
    assert!(matches!(error, ConfigError::File { .. }), "{error}");
    assert!(error.to_string().contains(&path.display().to_string()));
}

#[test]
fn layers_apply_in_order() {
    let (_dir, path) = with_file(
        "q.toml",
        "[batch]\nconcurrency = 3\nquestions = [\"A\", \"B\"]\n[model.local]\nmodel = \"from-file\"\n",
    );
    let sources = Sources {
        file: Some(path),
        env: env(&[("AGENTRY__BATCH__CONCURRENCY", "7"), ("MODEL_RUNNER_MODEL", "from-legacy")]),
        overrides: Overrides { output_dir: Some("out".into()), ..Overrides::default() },
    };
    let settings = load(&sources).expect("valid");
    assert_eq!(settings.batch.concurrency, 7);
    assert_eq!(settings.batch.questions, ["A", "B"]);
    assert_eq!(settings.model.local.model, "from-legacy");
    assert_eq!(settings.batch.output_dir, PathBuf::from("out"));
}

#[test]
fn the_python_agents_variables_are_honoured() {
    let sources = Sources {
        env: env(&[
            ("MODEL_RUNNER_URL", "http://model-runner.docker.internal/engines/v1/"),
            ("MODEL_RUNNER_MODEL", "ai/smollm2"),
            ("OPENAI_MODEL_NAME", "gpt-4.1-mini"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("MCP_SERVER_URL", "http://127.0.0.1:8811/mcp"),
            ("QUESTION", "Define Docker"),
        ]),
        ..Sources::default()
    };
    let settings = load(&sources).expect("valid");
    assert_eq!(settings.model.local.base_url.to_string(), "http://model-runner.docker.internal/engines/v1/");
    assert_eq!(settings.model.local.model, "ai/smollm2");
    assert_eq!(settings.model.cloud.model, "gpt-4.1-mini");
    assert_eq!(settings.model.cloud.base_url.to_string(), "http://127.0.0.1:9/v1/");
    assert_eq!(settings.batch.questions, ["Define Docker"], "QUESTION replaces the embedded default");
    assert_eq!(
        settings.mcp.servers[0].endpoint,
        McpEndpoint::StreamableHttp(Url::parse("http://127.0.0.1:8811/mcp").expect("url"))
    );
    assert_eq!(settings.mcp.servers[0].tools, ["search"], "the rest of the server is kept");
}

#[test]
fn question_adds_to_a_users_list() {
    let (_dir, path) = with_file("q.toml", "[batch]\nquestions = [\"A\"]\n");
    let sources = Sources { file: Some(path), env: env(&[("QUESTION", "B")]), ..Sources::default() };
    assert_eq!(load(&sources).expect("valid").batch.questions, ["A", "B"]);
}

#[test]
fn questions_file_is_relative_to_the_config_file() {
    let (dir, path) = with_file("q.toml", "[batch]\nquestions_file = \"list.txt\"\n");
    let settings = load(&Sources { file: Some(path), ..Sources::default() }).expect("valid");
    assert_eq!(settings.batch.questions_file, dir.path().join("list.txt"));
}

#[test]
fn a_secret_value_in_config_is_refused_with_advice() {
    let (_dir, path) = with_file("q.toml", "[model.cloud]\napi_key_secret = \"sk-proj-abcdef\"\n");
    let text = load(&Sources { file: Some(path), ..Sources::default() }).expect_err("refused").to_string();
    assert!(text.contains("model.cloud.api_key_secret"), "{text}");
    assert!(text.contains("secret"), "{text}");
    assert!(!text.contains("sk-proj-abcdef"), "the error must not repeat the value: {text}");
}

#[test]
fn invalid_values_are_named() {
    for (toml, key) in [
        ("[batch]\nconcurrency = 0\n", "batch.concurrency"),
        ("[model]\ntemperature = 3.0\n", "model.temperature"),
        ("[model.local]\nbase_url = \"not a url\"\n", "model.local.base_url"),
        // The endpoint is resolved as the server is read: the key is the server, the message
        // names the field.
        (
            "[[mcp.servers]]\nname = \"x\"\ntransport = \"stdio\"\n",
            "mcp.servers[0]: transport \"stdio\" needs `command",
        ),
        ("[[mcp.servers]]\nname = \"x\"\nurl = \"ftp://h/\"\n", "mcp.servers[0]: url \"ftp://h/\" must be http"),
        (
            "[[mcp.servers]]\nname = \"x\"\nurl = \"http://a/mcp\"\n[[mcp.servers]]\nname = \"x\"\nurl = \"http://b/mcp\"\n",
            "mcp.servers[1].name",
        ),
    ] {
        let (_dir, path) = with_file("q.toml", toml);
        let text = load(&Sources { file: Some(path), ..Sources::default() }).expect_err(toml).to_string();
        assert!(text.contains(key), "{toml}: {text}");
    }
}

/// A password in a URL would be printed wherever the URL is (logs, errors, spans, hints): such
/// URLs are refused, and the refusal does not repeat it.
#[test]
fn urls_carrying_credentials_are_refused_without_repeating_them() {
    for (toml, key) in [
        ("[model.local]\nbase_url = \"http://me:sk-canary-0123456789@runner/v1\"\n", "model.local.base_url"),
        ("[model.cloud]\nbase_url = \"https://sk-canary-0123456789@api.example.com/v1\"\n", "model.cloud.base_url"),
        ("[[mcp.servers]]\nname = \"x\"\nurl = \"http://me:sk-canary-0123456789@gw:8811/mcp\"\n", "mcp.servers[0]"),
    ] {
        let (_dir, path) = with_file("q.toml", toml);
        let text = load(&Sources { file: Some(path), ..Sources::default() }).expect_err(toml).to_string();
        assert!(text.contains(key) && text.contains("user name or password"), "{toml}: {text}");
        assert!(!text.contains("sk-canary"), "the error must not repeat the credentials: {text}");
    }
}

#[test]
fn auto_transport_follows_the_path() {
    let endpoint = |url: &str, transport| McpEndpoint::resolve(transport, url, Vec::new(), Vec::new());
    assert!(matches!(endpoint("http://h:8811/sse", TransportKind::Auto), Ok(McpEndpoint::LegacySse(_))));
    assert!(matches!(endpoint("http://h:8811/sse/", TransportKind::Auto), Ok(McpEndpoint::LegacySse(_))));
    assert!(matches!(endpoint("http://h:8811/mcp", TransportKind::Auto), Ok(McpEndpoint::StreamableHttp(_))));
    assert!(matches!(endpoint("http://h:8811/sse", TransportKind::StreamableHttp), Ok(McpEndpoint::StreamableHttp(_))));
    assert!(matches!(endpoint("http://h/mcp", TransportKind::Stdio), Err(EndpointError::NoCommand)));
}

#[test]
fn a_server_prints_back_as_it_reads() {
    let (_dir, path) = with_file(
        "q.toml",
        "[[mcp.servers]]\nname = \"g\"\nurl = \"http://h:8811/sse\"\ntools = [\"search\"]\n\
         [[mcp.servers]]\nname = \"s\"\ntransport = \"stdio\"\ncommand = [\"srv\", \"--x\"]\nenv = [\"PATH\"]\n",
    );
    let settings = load(&Sources { file: Some(path), ..Sources::default() }).expect("valid");
    let printed = toml::to_string(&settings).expect("serialises");
    let (_dir, again) = with_file("again.toml", &printed);
    let reread =
        load(&Sources { file: Some(again), ..Sources::default() }).expect("what config check prints reads back");
    assert_eq!(reread.mcp.servers, settings.mcp.servers);
}

#[test]
fn a_questions_file_replaces_the_default_question() {
    let (_dir, path) = with_file("q.toml", "[batch]\nquestions_file = \"list.txt\"\n");
    let settings = load(&Sources { file: Some(path), ..Sources::default() }).expect("valid");
    assert!(settings.batch.questions.is_empty(), "{:?}", settings.batch.questions);
    let (_dir, path) = with_file("q.toml", "[batch]\nquestions = [\"A\"]\nquestions_file = \"list.txt\"\n");
    assert_eq!(load(&Sources { file: Some(path), ..Sources::default() }).expect("valid").batch.questions, ["A"]);
}

#[test]
fn a_command_without_a_url_is_a_stdio_server() {
    let (_dir, path) =
        with_file("s.toml", "[[mcp.servers]]\nname = \"time\"\ncommand = [\"uvx\", \"mcp-server-time\"]\n");
    let settings = load(&Sources { file: Some(path), ..Sources::default() }).expect("stdio inferred");
    assert_eq!(
        settings.mcp.servers[0].endpoint,
        McpEndpoint::Stdio { command: vec!["uvx".into(), "mcp-server-time".into()], env: Vec::new() }
    );
    // Neither: the error says what to write, not that "" is not a URL.
    let (_dir, path) = with_file("n.toml", "[[mcp.servers]]\nname = \"x\"\n");
    let text = load(&Sources { file: Some(path), ..Sources::default() }).expect_err("nothing").to_string();
    assert!(text.contains("mcp.servers[0]") && text.contains("url") && text.contains("command"), "{text}");
    assert!(!text.contains("is not a URL"), "{text}");
}
