//! Credentials that rotate mid-batch, and keys the cloud rejects.
//!
//! These run the runtime in-process, so a test can watch SecretKeeper publish the new key and
//! check the requests the model server saw against that moment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentry::app::Runtime;
use agentry::batch::{self, Report, RunOptions};
use agentry::config::{self, Overrides, Settings, Sources};
use agentry::secrets::Fingerprint;
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};
use tokio_util::sync::CancellationToken;

use crate::harness::{Agentry, config};

const OLD_KEY: &str = "sk-rotation-old-1111111111";
const NEW_KEY: &str = "sk-rotation-new-2222222222";
const CONCURRENCY: usize = 4;

fn settings(dir: &Path, cloud_url: &str, local_url: &str, fallback: &str, questions: usize) -> Settings {
    let questions: Vec<String> = (0..questions).map(|n| format!("Question {n}")).collect();
    let text = format!(
        "[batch]\nconcurrency = {CONCURRENCY}\nquestions = {questions:?}\noutput_dir = \"{out}\"\n\
         [secrets]\ndir = \"{secrets}\"\npoll_interval = \"50ms\"\n\
         [model]\nfallback = \"{fallback}\"\n[model.cloud]\nbase_url = \"{cloud_url}\"\n[model.local]\nbase_url = \"{local_url}\"\n\
         [mcp]\nservers = []\n",
        out = dir.join("out").display(),
        secrets = dir.join("secrets").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("config");
    config::load(&Sources { file: Some(path), env: BTreeMap::new(), overrides: Overrides::default() })
        .expect("valid config")
}

async fn run_batch(runtime: &Runtime, settings: &Settings) -> Report {
    let planned = batch::plan(&settings.batch, true, None).expect("questions");
    let options = RunOptions {
        concurrency: settings.batch.concurrency,
        question_timeout: settings.agent.question_timeout,
        shutdown_grace: settings.batch.shutdown_grace,
        progress: false,
        demo: false,
        output_dir: settings.batch.output_dir.clone(),
    };
    batch::run(&runtime.agent_context(""), planned, &options, &CancellationToken::new()).await
}

fn no_env() -> agentry::actors::secret_keeper::EnvLookup {
    Arc::new(|_: &str| None)
}

/// How the secret file is replaced.
#[derive(Clone, Copy, Debug)]
enum Rotation {
    /// Truncate and write the same file (what a Compose `file:` bind mount sees).
    InPlace,
    /// Write a new file and rename it over the old one (what editors do).
    RenameOver,
    /// Kubernetes: the key is `..data/openai_api_key` and `..data` is a symlink swapped atomically.
    KubernetesSwap,
}

fn install(secrets: &Path, how: Rotation, key: &str, generation: u32) {
    let file = secrets.join("openai_api_key");
    match how {
        Rotation::InPlace => std::fs::write(&file, format!("{key}\n")).expect("write in place"),
        Rotation::RenameOver => {
            let temp = secrets.join(".openai_api_key.swp");
            std::fs::write(&temp, key).expect("write temp");
            std::fs::rename(&temp, &file).expect("rename over");
        }
        Rotation::KubernetesSwap => {
            let data = secrets.join(format!("..2026_11_28_{generation}"));
            std::fs::create_dir(&data).expect("data dir");
            std::fs::write(data.join("openai_api_key"), key).expect("write data");
            let link = secrets.join("..data_tmp");
            std::os::unix::fs::symlink(data.file_name().expect("name"), &link).expect("link");
            std::fs::rename(&link, secrets.join("..data")).expect("swap ..data");
            if generation == 0 {
                std::os::unix::fs::symlink("..data/openai_api_key", &file).expect("key link");
            }
        }
    }
}

async fn rotation_mid_batch(how: Rotation) {
    let model = Arc::new(
        ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered."))))
            .await
            .expect("model")
            .with_latency(Duration::from_millis(20))
            .require_key(Some(OLD_KEY.into())),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    install(&secrets, how, OLD_KEY, 0);
    let settings = settings(dir.path(), &model.base_url(), "http://127.0.0.1:9/v1", "none", 48);
    let runtime = Runtime::start(settings.clone(), no_env()).await.expect("runtime");
    let mut key = runtime.secrets.subscribe("openai_api_key").expect("declared");
    let new_fingerprint = Fingerprint::of(NEW_KEY);

    // Rotate once a dozen requests went through. The server goes on accepting the old key until
    // SecretKeeper's poll publishes the new one (so a 401 cannot be what found it), then only
    // the new key.
    let rotator = {
        let model = model.clone();
        let secrets = secrets.clone();
        tokio::spawn(async move {
            while model.request_count() < 12 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            install(&secrets, how, NEW_KEY, 1);
            let published =
                key.wait_for(|state| state.credential().is_some_and(|c| c.fingerprint() == new_fingerprint));
            tokio::time::timeout(Duration::from_secs(30), published)
                .await
                .expect("the poll noticed the rotation")
                .expect("published");
            model.set_accepted_key(Some(NEW_KEY.into()));
            model.request_count()
        })
    };
    let report = run_batch(&runtime, &settings).await;
    let seen_at_detection = rotator.await.expect("rotator");

    assert_eq!(
        report.totals.ok,
        48,
        "{how:?}: every question succeeds: {:?}",
        report.questions.iter().filter_map(|r| r.error.as_ref()).collect::<Vec<_>>()
    );
    let requests = model.requests();
    let late_old_keys: Vec<u64> = requests
        .iter()
        .filter(|r| r.bearer.as_deref() == Some(OLD_KEY) && r.number as usize >= seen_at_detection + CONCURRENCY)
        .map(|r| r.number)
        .collect();
    assert!(
        late_old_keys.is_empty(),
        "{how:?}: the old key was sent after the change was detected: requests {late_old_keys:?}"
    );
    assert!(requests.iter().any(|r| r.bearer.as_deref() == Some(NEW_KEY)), "{how:?}: the new key was used");
    assert_eq!(runtime.secrets.rotations("openai_api_key"), 1, "{how:?}");
    assert!(runtime.restarts().values().all(|n| *n == 0), "{how:?}: no actor restarted: {:?}", runtime.restarts());
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_overwritten_in_place_is_picked_up_mid_batch() {
    rotation_mid_batch(Rotation::InPlace).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_renamed_over_is_picked_up_mid_batch() {
    rotation_mid_batch(Rotation::RenameOver).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_symlink_swap_is_picked_up_mid_batch() {
    rotation_mid_batch(Rotation::KubernetesSwap).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_reloads_the_key_and_retries_once_with_the_new_value() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered."))))
        .await
        .expect("model")
        .require_key(Some(OLD_KEY.into()));
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    install(&secrets, Rotation::RenameOver, OLD_KEY, 0);
    let mut settings = settings(dir.path(), &model.base_url(), "http://127.0.0.1:9/v1", "none", 1);
    // No poll will see the change: only the 401 can.
    settings.secrets.poll_interval = Duration::from_secs(3600);
    let runtime = Runtime::start(settings.clone(), no_env()).await.expect("runtime");
    assert_eq!(run_batch(&runtime, &settings).await.totals.ok, 1);

    install(&secrets, Rotation::RenameOver, NEW_KEY, 1);
    model.set_accepted_key(Some(NEW_KEY.into()));
    let report = run_batch(&runtime, &settings).await;
    assert_eq!(report.totals.ok, 1, "{:?}", report.questions[0].error);
    let bearers: Vec<Option<String>> = model.requests().into_iter().map(|r| r.bearer).collect();
    assert_eq!(
        bearers,
        [Some(OLD_KEY.into()), Some(OLD_KEY.into()), Some(NEW_KEY.into())],
        "answered, then 401 with the old key, then one retry with the reloaded key"
    );
    assert_eq!(runtime.secrets.rotations("openai_api_key"), 1);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_falls_back_to_local_until_it_is_rotated() {
    let cloud = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("From the cloud."))))
        .await
        .expect("cloud")
        .require_key(Some(NEW_KEY.into()));
    let local =
        ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("From the local model.")))).await.expect("local");
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    install(&secrets, Rotation::InPlace, OLD_KEY, 0);
    let mut settings = settings(dir.path(), &cloud.base_url(), &local.base_url(), "local", 3);
    settings.batch.concurrency = 1;
    settings.secrets.poll_interval = Duration::from_secs(3600);
    let runtime = Runtime::start(settings.clone(), no_env()).await.expect("runtime");

    let report = run_batch(&runtime, &settings).await;
    assert_eq!(report.totals.ok, 3);
    assert!(report.questions.iter().all(|r| r.transcript.route.as_deref() == Some("local")), "{:?}", report.questions);
    assert_eq!(cloud.request_count(), 1, "once rejected, the key is not tried again until it changes");

    // Rotating the secret clears the mark: a reload (as after the next poll) finds a new value.
    install(&secrets, Rotation::InPlace, NEW_KEY, 1);
    runtime.secrets.reload("openai_api_key").await.expect("reload");
    let report = run_batch(&runtime, &settings).await;
    assert!(report.questions.iter().all(|r| r.transcript.route.as_deref() == Some("cloud")), "{:?}", report.questions);
    assert_eq!(cloud.requests().last().and_then(|r| r.bearer.clone()).as_deref(), Some(NEW_KEY));
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_without_fallback_fails_each_question_naming_secret_and_fingerprint() {
    const CANARY: &str = "sk-canary-rejected-8f7e6d5c4b3a";
    let cloud = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("never"))))
        .await
        .expect("cloud")
        .require_key(Some("sk-something-else".into()));
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", CANARY);
    let agentry = agentry
        .env("OPENAI_BASE_URL", cloud.base_url())
        .env("AGENTRY__MODEL__FALLBACK", "none")
        .env("RUST_LOG", "trace");
    let path = agentry.file(
        "c.toml",
        &config("http://127.0.0.1:9/v1", None, "[batch]\nconcurrency = 1\nquestions = [\"A\", \"B\"]\n"),
    );
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let report = agentry.report("definitions/report.json");
    let fingerprint = Fingerprint::of(CANARY).to_string();
    for row in report["questions"].as_array().expect("rows") {
        let error = row["error"].as_str().expect("error");
        assert!(error.contains("openai_api_key") && error.contains(&fingerprint), "{error}");
        assert_eq!(row["error_type"], "auth_rejected");
    }
    assert_eq!(report["secrets"][0]["fingerprint"], fingerprint.as_str());
    assert!(run.stderr.contains("the API key was rejected"), "logged: {}", run.stderr);
    let text = format!(
        "{}{}",
        run.output(),
        std::fs::read_to_string(agentry.dir().join("definitions/report.json")).expect("report")
    );
    assert!(!text.contains(CANARY) && !text.contains(&CANARY[10..22]));
}

/// The gateway's bearer token rotates mid-batch over both HTTP transports: the session
/// reconnects with the new token, without an actor restart, and searches work again.
async fn gateway_token_rotation(transport: &str) {
    use agentry_testkit::model_server::ScriptedToolCall;
    use serde_json::json;

    use crate::peers::PythonMcpServer;

    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    let peer_token = dir.path().join("peer-token");
    std::fs::write(&peer_token, "token-one").expect("peer token");
    std::fs::write(secrets.join("mcp_gateway_auth_token"), "token-one\n").expect("our token");
    let mcp =
        PythonMcpServer::start_with_args(transport, &["--require-bearer", peer_token.to_str().expect("utf-8")]).await;
    let model = Arc::new(
        ModelServer::start(Arc::new(FnBehaviour::new(|request| {
            if request.messages().iter().any(|m| m["role"] == "tool") {
                Reply::text("Answered.")
            } else {
                Reply::tool_calls(vec![ScriptedToolCall::new("search", &json!({"query": "rust"}))])
            }
        })))
        .await
        .expect("model")
        .with_latency(Duration::from_millis(10)),
    );
    let mut settings = settings(dir.path(), "http://127.0.0.1:9/v1", &model.base_url(), "local", 40);
    let endpoint = agentry::config::McpEndpoint::http(&mcp.url()).expect("url");
    settings.mcp.servers = vec![agentry::config::McpServerSettings {
        token_secret: "mcp_gateway_auth_token".into(),
        ..agentry::config::McpServerSettings::new("gateway", endpoint).with_tools(&["search"])
    }];
    let runtime = Runtime::start(settings.clone(), no_env()).await.expect("runtime");
    runtime.tools_settled(Duration::from_secs(20)).await;
    let rotator = {
        let model = model.clone();
        let secrets = secrets.clone();
        tokio::spawn(async move {
            while model.request_count() < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The gateway first (as when an operator rotates it), then our copy.
            std::fs::write(&peer_token, "token-two").expect("peer token");
            std::fs::write(secrets.join("mcp_gateway_auth_token"), "token-two\n").expect("our token");
        })
    };
    let report = run_batch(&runtime, &settings).await;
    rotator.await.expect("rotated");
    assert_eq!(report.totals.ok, 40);
    assert_eq!(runtime.secrets.rotations("mcp_gateway_auth_token"), 1);
    assert_eq!(runtime.restarts()["mcp-session:gateway"], 0, "{transport}: reconnected in place, not restarted");
    // After the rotation settled, searches succeed again.
    let last = model.requests().last().map(|r| r.body.clone()).expect("requests");
    let result = last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .expect("tool result")
        .clone();
    assert!(result["content"].as_str().expect("text").contains("Found"), "{transport}: {result}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_gateway_token_reconnects_over_streamable_http() {
    gateway_token_rotation("streamable-http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_gateway_token_reconnects_over_legacy_sse() {
    gateway_token_rotation("sse").await;
}
