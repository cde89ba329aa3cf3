//! ModelRouter through its handle, against a fake OpenAI server on loopback and a real
//! SecretKeeper over a temporary secrets directory.
//!
//! The fake speaks HTTP because the behaviour under test crosses the wire: the key goes out in
//! a header (marked sensitive), a 401 is classified from its status while its body (which
//! quotes the key) is dropped, and the local route must never see the key at all.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;
use crate::actors::secret_keeper::{Reloaded, SecretKeeper};
use crate::llm::client::ClientPolicy;
use crate::secrets::SecretSpec;

const SECRET: &str = "openai_api_key";
/// The key the secrets directory holds at start: it must never show up in an error, a `Debug`
/// or a log line.
const CANARY: &str = "sk-canary-4b8e2f6d0a9c1e37";
const ROTATED: &str = "sk-rotated-0d3f7a1b5c9e2468";
const CLOUD_MODEL: &str = "gpt-4o-mini";
const LOCAL_MODEL: &str = "ai/gemma3:1B-Q4_K_M";
/// No poll tick during the test: only a reload (after a 401) reads the secret again.
const NO_POLL: Duration = Duration::from_secs(3600);
/// A bound on waiting for an event that normally comes at once; never what a test measures.
const EVENTUALLY: Duration = Duration::from_secs(30);

// ---- a fake OpenAI-compatible server ---------------------------------------------------------

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    route: String,
    model: String,
    key: Option<String>,
}

fn seen(route: &str, key: Option<&str>) -> Seen {
    let model = if route == "cloud" { CLOUD_MODEL } else { LOCAL_MODEL };
    Seen { route: route.into(), model: model.into(), key: key.map(str::to_owned) }
}

/// Serves `/{cloud,local}/v1/chat/completions`. The cloud route wants one of the accepted
/// keys and answers anything else as OpenAI does (401, `invalid_api_key` error JSON that
/// quotes the key: OpenAI masks its middle, the fake does not, so a leak cannot hide).
#[derive(Default)]
struct FakeOpenAi {
    accepted: Mutex<HashSet<String>>,
    seen: Mutex<Vec<Seen>>,
}

impl FakeOpenAi {
    fn accept(&self, key: &str) {
        self.accepted.lock().expect("accepted").insert(key.to_owned());
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn completions(
    State(fake): State<Arc<FakeOpenAi>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    fake.seen.lock().expect("seen").push(Seen { route: route.clone(), model: model.clone(), key: key.clone() });
    let accepted = key.as_ref().is_some_and(|key| fake.accepted.lock().expect("accepted").contains(key));
    if route == "cloud" && !accepted {
        let error = json!({"error": {
            "message": format!("Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.", key.unwrap_or_default()),
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key",
        }});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{route}"),
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": format!("answered on the {route} route"), "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }))
    .into_response()
}

/// Binds `127.0.0.1:0`; returns the cloud and local base URLs.
async fn serve(fake: Arc<FakeOpenAi>) -> (Url, Url) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app =
        axum::Router::new().route("/{route}/v1/chat/completions", axum::routing::post(completions)).with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = |route: &str| Url::parse(&format!("http://{addr}/{route}/v1/")).expect("url");
    (base("cloud"), base("local"))
}

// ---- log capture: the canary must not reach logs either ----------------------------------------

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

/// Every event on this thread (the test runtime's only one), at every level, into `Logs`.
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

// ---- the router and its SecretKeeper -------------------------------------------------------------

struct Fixture {
    router: ModelRouterHandle,
    secrets: SecretKeeperHandle,
    fake: Arc<FakeOpenAi>,
    secrets_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(fallback: Fallback, key: &str, poll_interval: Duration) -> Self {
        let fake = Arc::new(FakeOpenAi::default());
        let (cloud, local) = serve(fake.clone()).await;
        let secrets_dir = tempfile::tempdir().expect("tempdir");
        write_secret(secrets_dir.path(), key);

        // No environment: the secret comes from its file only.
        let spec = SecretSpec { name: SECRET.into(), placeholders: vec!["sk-insecure".into()] };
        let (secrets, keeper_args, keeper_slot) =
            SecretKeeperHandle::new(vec![spec], secrets_dir.path().into(), poll_interval, Arc::new(|_| None));
        let (keeper, _) = Actor::spawn(None, SecretKeeper, keeper_args).await.expect("the keeper starts");
        keeper_slot.publish(keeper);

        let policy = ClientPolicy {
            request_timeout: EVENTUALLY,
            max_retries: 0,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..ClientPolicy::default()
        };
        let args = ModelRouterArgs {
            client: ChatClient::new(policy).expect("client"),
            cloud: RouteTarget { base_url: cloud, model: CLOUD_MODEL.into(), limiter: unlimited() },
            local: RouteTarget { base_url: local, model: LOCAL_MODEL.into(), limiter: unlimited() },
            fallback,
            secret_name: SECRET.into(),
            credential: secrets.subscribe(SECRET).expect("declared"),
            secrets: secrets.clone(),
            temperature: 0.1,
            max_tokens: 100,
        };
        let slot = Slot::default();
        let (router, _) = Actor::spawn(None, ModelRouter, args).await.expect("the router starts");
        slot.publish(router);
        Self { router: ModelRouterHandle::new(slot, EVENTUALLY), secrets, fake, secrets_dir }
    }

    async fn chat(&self) -> Result<ChatOutcome, LlmError> {
        let messages = Arc::new(vec![Message::User { content: "Define machine learning".into() }]);
        self.router
            .chat(
                messages,
                Arc::from(Vec::<ToolDefinition>::new()),
                &crate::deadline::Deadline::none(),
                &Arc::default(),
            )
            .await
    }

    /// Replaces the secret file (rename over it, as a secret manager does).
    fn rotate(&self, key: &str) {
        write_secret(self.secrets_dir.path(), key);
    }

    /// Waits until SecretKeeper publishes `key`.
    async fn published(&self, key: &str) {
        let mut state = self.secrets.subscribe(SECRET).expect("declared");
        let wanted = Fingerprint::of(key);
        tokio::time::timeout(
            EVENTUALLY,
            state.wait_for(|s| s.credential().map(Credential::fingerprint) == Some(wanted)),
        )
        .await
        .expect("the new key is published")
        .expect("the keeper is alive");
    }
}

fn write_secret(dir: &std::path::Path, key: &str) {
    let staged = dir.join(".staged");
    std::fs::write(&staged, format!("{key}\n")).expect("write the secret");
    std::fs::rename(&staged, dir.join(SECRET)).expect("install the secret");
}

fn assert_no_canary(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "the key's value is in {what}: {text}");
    assert!(!text.contains(&CANARY[10..]), "part of the key's value is in {what}: {text}");
}

fn answer(outcome: &ChatOutcome) -> &str {
    outcome.completion.response.choices[0].message.content.as_deref().unwrap_or_default()
}

// ---- the tests ------------------------------------------------------------------------------

#[tokio::test]
async fn a_401_reloads_the_secret_and_the_request_is_retried_with_the_new_key() {
    let (logs, _guard) = capture_logs();
    let fixture = Fixture::start(Fallback::None, CANARY, NO_POLL).await;
    fixture.fake.accept(ROTATED);
    // The file changed, but nothing has read it yet: the router still holds the old key.
    fixture.rotate(ROTATED);

    let outcome = fixture.chat().await.expect("the retry with the new key succeeds");
    assert_eq!((outcome.route, answer(&outcome)), (Route::Cloud, "answered on the cloud route"));
    assert_eq!(fixture.fake.seen(), [seen("cloud", Some(CANARY)), seen("cloud", Some(ROTATED))]);
    assert_eq!(fixture.secrets.rotations(SECRET), 1, "the reload published the new key");

    // The next request starts with the new key.
    fixture.chat().await.expect("second request");
    assert_eq!(fixture.fake.seen().last(), Some(&seen("cloud", Some(ROTATED))));
    assert_eq!(fixture.fake.seen().len(), 3);
    assert_no_canary("the outcome", &format!("{outcome:?}"));
    assert_no_canary("the logs", &logs.text());
}

#[tokio::test]
async fn a_key_refused_again_after_reload_sends_requests_to_the_local_route_until_the_secret_changes() {
    let (logs, _guard) = capture_logs();
    // Polled: the change at the end is picked up the way a rotation is in production.
    let fixture = Fixture::start(Fallback::Local, CANARY, Duration::from_millis(20)).await;

    let first = fixture.chat().await.expect("the fallback answers");
    assert_eq!((first.route, first.model.as_str()), (Route::Local, LOCAL_MODEL));
    assert_eq!(answer(&first), "answered on the local route");
    assert_eq!(fixture.fake.seen(), [seen("cloud", Some(CANARY)), seen("local", None)]);

    // The rejected key is not tried again while the secret holds it.
    let second = fixture.chat().await.expect("the fallback answers");
    assert_eq!(second.route, Route::Local);
    assert_eq!(fixture.fake.seen(), [seen("cloud", Some(CANARY)), seen("local", None), seen("local", None)]);

    fixture.fake.accept(ROTATED);
    fixture.rotate(ROTATED);
    fixture.published(ROTATED).await;
    let third = fixture.chat().await.expect("the cloud answers the new key");
    assert_eq!((third.route, third.model.as_str()), (Route::Cloud, CLOUD_MODEL));
    assert_eq!(fixture.fake.seen().last(), Some(&seen("cloud", Some(ROTATED))));

    assert!(fixture.fake.seen().iter().filter(|s| s.route == "local").all(|s| s.key.is_none()), "no key to local");
    let logs = logs.text();
    assert!(logs.contains(&Fingerprint::of(CANARY).to_string()), "the rejection is logged by fingerprint");
    assert_no_canary("the logs", &logs);
    assert_no_canary("the outcomes", &format!("{first:?} {second:?} {third:?}"));
}

#[tokio::test]
async fn without_a_fallback_a_key_refused_again_fails_naming_the_secret_and_its_fingerprint_never_the_value() {
    let (logs, _guard) = capture_logs();
    let fixture = Fixture::start(Fallback::None, CANARY, NO_POLL).await;
    let fingerprint = Fingerprint::of(CANARY).to_string();

    let error = fixture.chat().await.expect_err("no route is left");
    match &error {
        LlmError::KeyRejected { secret, fingerprint: shown } => {
            assert_eq!((secret.as_str(), shown.as_str()), (SECRET, fingerprint.as_str()));
        }
        other => panic!("expected KeyRejected, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(SECRET) && text.contains(&fingerprint), "{text}");
    assert_no_canary("the error", &format!("{text} {error:?}"));

    // Later requests fail the same way without sending the rejected key again.
    let again = fixture.chat().await.expect_err("still rejected");
    assert_no_canary("the second error", &format!("{again} {again:?}"));
    assert!(matches!(&again, LlmError::KeyRejected { fingerprint: f, .. } if *f == fingerprint), "{again:?}");
    assert_eq!(fixture.fake.seen(), [seen("cloud", Some(CANARY))], "one try, and never the local route");

    // Until the secret changes.
    fixture.fake.accept(ROTATED);
    fixture.rotate(ROTATED);
    assert_eq!(fixture.secrets.reload(SECRET).await.expect("the keeper answers"), Reloaded::Changed);
    let outcome = fixture.chat().await.expect("the new key works");
    assert_eq!(outcome.route, Route::Cloud);
    assert_eq!(fixture.fake.seen().last(), Some(&seen("cloud", Some(ROTATED))));
    assert_no_canary("the logs", &logs.text());
}

#[tokio::test]
async fn a_rotated_key_is_used_by_the_next_request() {
    let (logs, _guard) = capture_logs();
    let fixture = Fixture::start(Fallback::None, CANARY, Duration::from_millis(20)).await;
    fixture.fake.accept(CANARY);
    fixture.fake.accept(ROTATED);

    assert_eq!(fixture.chat().await.expect("first key").route, Route::Cloud);
    fixture.rotate(ROTATED);
    fixture.published(ROTATED).await;
    assert_eq!(fixture.chat().await.expect("rotated key").route, Route::Cloud);

    assert_eq!(fixture.fake.seen(), [seen("cloud", Some(CANARY)), seen("cloud", Some(ROTATED))], "no 401, no retry");
    assert_eq!(fixture.secrets.rotations(SECRET), 1);
    assert_no_canary("the logs", &logs.text());
}

/// Issue 12, case 6: a key rotated away from and back to a value the cloud rejected is tried
/// again (it may have been re-enabled), not blocked until the router restarts.
#[tokio::test]
async fn a_key_rotated_back_to_a_rejected_value_is_tried_again() {
    let fixture = Fixture::start(Fallback::Local, CANARY, Duration::from_millis(20)).await;
    assert_eq!(fixture.chat().await.expect("the fallback answers").route, Route::Local);
    fixture.fake.accept(ROTATED);
    fixture.rotate(ROTATED);
    fixture.published(ROTATED).await;
    assert_eq!(fixture.chat().await.expect("the cloud answers").route, Route::Cloud);
    // The first key is re-enabled and put back.
    fixture.fake.accept(CANARY);
    fixture.rotate(CANARY);
    fixture.published(CANARY).await;
    let outcome = fixture.chat().await.expect("the cloud answers");
    assert_eq!(outcome.route, Route::Cloud);
    assert_eq!(fixture.fake.seen().last(), Some(&seen("cloud", Some(CANARY))));
}

/// A limiter that knows no limits.
fn unlimited() -> crate::llm::rate_limit::Limiter {
    crate::llm::rate_limit::Limiter::new(Default::default(), 64)
}
