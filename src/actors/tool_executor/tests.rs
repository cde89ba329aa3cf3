use std::collections::BTreeSet;

use rmcp::model::{CallToolResult, ContentBlock, Tool};
use tokio::sync::mpsc;

use super::*;
use crate::actors::NotRunning;
use crate::actors::mcp_session::{McpSession, McpSessionMsg, ServerTools};
use crate::actors::research_writer::{Outcomes, ResearchWriter, ResearchWriterArgs};
use crate::config::McpEndpoint;
use crate::llm::wire::FunctionCall;
use crate::mcp::{McpError, ServerSpec};

/// How long a session handle waits for a restarting session.
const RESTART_WAIT_TEST: Duration = Duration::from_secs(5);
/// A session's own bound on one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The executor's bound on one turn: longer than any session's, so a session's own timeout is
/// what a slow call meets.
const TURN_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn arguments_must_be_an_object_or_nothing() {
    assert_eq!(parse_arguments(""), Ok(None));
    assert!(parse_arguments("{\"q\": 1}").expect("object").is_some());
    assert!(parse_arguments("{\"q\": ").expect_err("truncated").contains("EOF"));
    assert_eq!(parse_arguments("[1]"), Err("got an array".into()));
}

// ---- a fake McpSession ---------------------------------------------------------------------

/// A call as a fake server received it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    server: String,
    tool: String,
    arguments: Option<String>,
}

/// How a fake server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Says which server ran which tool with what; the tool `fails` returns a tool error and
    /// `broken` a protocol error, as a real session would relay them.
    Answer,
    /// Never answers (the reply ports are kept, so the caller sees no failure either).
    Hang,
}

/// Stands in for McpSession behind a real `McpSessionHandle`: it answers `CallTool` and
/// ignores the messages of the real session's connection life.
struct FakeSession;

struct FakeArgs {
    server: String,
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<Seen>,
    /// Each call's deadline, as the session got it (a real one cancels the call on its
    /// server when it is cancelled).
    deadlines: Arc<std::sync::Mutex<Vec<Deadline>>>,
}

struct FakeState {
    args: FakeArgs,
    hung: Vec<RpcReplyPort<Result<CallToolResult, McpError>>>,
}

impl Actor for FakeSession {
    type Msg = McpSessionMsg;
    type State = FakeState;
    type Arguments = FakeArgs;

    async fn pre_start(&self, _: ActorRef<McpSessionMsg>, args: FakeArgs) -> Result<FakeState, ActorProcessingErr> {
        Ok(FakeState { args, hung: Vec::new() })
    }

    async fn handle(
        &self,
        _: ActorRef<McpSessionMsg>,
        message: McpSessionMsg,
        state: &mut FakeState,
    ) -> Result<(), ActorProcessingErr> {
        let McpSessionMsg::CallTool { tool, arguments, reply, deadline } = message else {
            return Ok(());
        };
        state.args.deadlines.lock().expect("deadlines").push(deadline);
        let server = state.args.server.clone();
        let shown = arguments.as_ref().map(|a| Value::Object(a.clone()).to_string());
        let _ = state.args.seen.send(Seen { server: server.clone(), tool: tool.clone(), arguments: shown.clone() });
        let answer = match (state.args.behaviour, tool.as_str()) {
            (Behaviour::Hang, _) => {
                state.hung.push(reply);
                return Ok(());
            }
            (Behaviour::Answer, "fails") => Ok(CallToolResult::error(vec![ContentBlock::text("no results for that")])),
            (Behaviour::Answer, "leaks") => Ok(CallToolResult::error(vec![ContentBlock::text(
                "upstream refused Authorization: Bearer sk-live-0123456789abcdefghij",
            )])),
            (Behaviour::Answer, "broken") => {
                Err(McpError::Call { server: server.clone(), tool, message: "Internal error".into() })
            }
            (Behaviour::Answer, _) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "{server} ran {tool} with {}",
                shown.as_deref().unwrap_or("nothing")
            ))])),
        };
        let _ = reply.send(answer);
        Ok(())
    }
}

fn spec(name: &str, allow: &[&str], url: &str) -> Arc<ServerSpec> {
    Arc::new(ServerSpec {
        name: name.into(),
        endpoint: McpEndpoint::StreamableHttp(url.parse().expect("url")),
        allow: allow.iter().map(|t| (*t).to_owned()).collect(),
        retry_tools: Vec::new(),
        max_concurrent_calls: 8,
        token_secret: None,
    })
}

fn tool(name: &str) -> Tool {
    let schema = json!({"type": "object", "properties": {"query": {"type": "string"}}});
    Tool::new(
        name.to_owned(),
        format!("{name}, as the server describes it"),
        schema.as_object().expect("object").clone(),
    )
}

/// A real session handle whose slot holds a fake session, with `tools` published as ready.
async fn fake_server(
    name: &str,
    tools: &[&str],
    behaviour: Behaviour,
    seen: &mpsc::UnboundedSender<Seen>,
) -> (McpSessionHandle, Slot<McpSessionMsg>) {
    let (handle, slot, _) = fake_server_with_deadlines(name, tools, behaviour, seen).await;
    (handle, slot)
}

/// [`fake_server`], and the deadlines of the calls it got.
async fn fake_server_with_deadlines(
    name: &str,
    tools: &[&str],
    behaviour: Behaviour,
    seen: &mpsc::UnboundedSender<Seen>,
) -> (McpSessionHandle, Slot<McpSessionMsg>, Arc<std::sync::Mutex<Vec<Deadline>>>) {
    let (handle, slot, published) =
        McpSessionHandle::new(spec(name, &[], "http://127.0.0.1:9/mcp"), RESTART_WAIT_TEST, CALL_TIMEOUT);
    let deadlines = Arc::default();
    let args = FakeArgs { server: name.into(), behaviour, seen: seen.clone(), deadlines: Arc::clone(&deadlines) };
    let (actor, _) = Actor::spawn(None, FakeSession, args).await.expect("the fake session starts");
    slot.publish(actor);
    published.send_replace(ServerTools::Ready(tools.iter().map(|t| tool(t)).collect()));
    (handle, slot, deadlines)
}

async fn writer_over(dir: &std::path::Path) -> ResearchWriterHandle {
    let slot = Slot::default();
    let outcomes = Outcomes::new();
    let args = ResearchWriterArgs { dir: dir.to_path_buf(), outcomes: outcomes.clone() };
    let (actor, _) = Actor::spawn(None, ResearchWriter, args).await.expect("the writer starts");
    slot.publish(actor);
    ResearchWriterHandle::new(slot, outcomes)
}

async fn executor(servers: Vec<McpSessionHandle>, writer: ResearchWriterHandle) -> ToolExecutorHandle {
    let slot = Slot::default();
    let (actor, _) =
        Actor::spawn(None, ToolExecutor, ToolExecutorArgs { servers, writer, redactor: Redactor::default() })
            .await
            .expect("the executor starts");
    slot.publish(actor);
    ToolExecutorHandle::new(slot, TURN_DEADLINE)
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        kind: "function".into(),
        function: FunctionCall { name: name.into(), arguments: arguments.into() },
    }
}

fn context() -> Arc<Provenance> {
    Arc::new(Provenance {
        question: "Define machine learning".into(),
        question_id: crate::research::question_id("Define machine learning"),
        agent: "research-assistant".into(),
        model: "test-model".into(),
        route: "local".into(),
        tools_used: vec!["search".into()],
        trace_id: None,
    })
}

async fn offered(tools: &ToolExecutorHandle) -> Vec<String> {
    let mut names: Vec<String> = tools.definitions().await.iter().map(|d| d.function.name.clone()).collect();
    names.sort();
    names
}

/// Everything the fake servers received so far (every reply is sent after its `Seen`).
fn received(seen: &mut mpsc::UnboundedReceiver<Seen>) -> BTreeSet<Seen> {
    std::iter::from_fn(|| seen.try_recv().ok()).collect()
}

fn seen(server: &str, tool: &str, arguments: Option<&str>) -> Seen {
    Seen { server: server.into(), tool: tool.into(), arguments: arguments.map(str::to_owned) }
}

// ---- the tests -------------------------------------------------------------------------------

#[tokio::test]
async fn a_name_two_servers_share_is_offered_once_per_server_and_each_call_reaches_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (alpha, _) = fake_server("alpha", &["search", "fetch"], Behaviour::Answer, &tx).await;
    let (beta, _) = fake_server("beta", &["search", "translate"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![alpha, beta], writer_over(dir.path()).await).await;

    assert_eq!(offered(&tools).await, ["alpha__search", "beta__search", "fetch", "save_research", "translate"]);
    let outcomes = tools
        .execute(
            vec![
                call("c1", "alpha__search", r#"{"query":"rust"}"#),
                call("c2", "beta__search", r#"{"query":"go"}"#),
                call("c3", "fetch", r#"{"query":"url"}"#),
                call("c4", "translate", ""),
                call("c5", "search", r#"{"query":"which?"}"#),
            ],
            context(),
        )
        .await;

    let ids: Vec<&str> = outcomes.iter().map(|o| o.call_id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c4", "c5"], "one outcome per call, in order");
    assert_eq!(outcomes[0].content, r#"alpha ran search with {"query":"rust"}"#);
    assert_eq!(outcomes[1].content, r#"beta ran search with {"query":"go"}"#);
    assert_eq!(outcomes[2].content, r#"alpha ran fetch with {"query":"url"}"#);
    assert_eq!(outcomes[3].content, "beta ran translate with nothing");
    assert_eq!(outcomes[0].name, "alpha__search", "the outcome keeps the name the model used");
    assert!(outcomes[..4].iter().all(|o| !o.is_error && o.saved.is_none()));
    // The bare name is ambiguous, so it is not offered and not guessed.
    assert!(outcomes[4].is_error && outcomes[4].content.starts_with("Error: unknown tool `search`"));
    let listed = &outcomes[4].content;
    assert!(listed.contains("alpha__search") && listed.contains("beta__search"), "{listed}");

    let expected = BTreeSet::from([
        seen("alpha", "search", Some(r#"{"query":"rust"}"#)),
        seen("beta", "search", Some(r#"{"query":"go"}"#)),
        seen("alpha", "fetch", Some(r#"{"query":"url"}"#)),
        seen("beta", "translate", None),
    ]);
    assert_eq!(received(&mut rx), expected, "each server got its calls by its own tool names");
}

#[tokio::test]
async fn an_mcp_tool_named_save_research_is_prefixed_and_the_local_one_keeps_the_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (alpha, _) = fake_server("alpha", &["save_research", "search"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![alpha], writer_over(dir.path()).await).await;

    assert_eq!(offered(&tools).await, ["alpha__save_research", "save_research", "search"]);
    let definitions = tools.definitions().await;
    let local = definitions.iter().find(|d| d.function.name == SAVE_RESEARCH).expect("offered");
    assert_eq!(local.function.parameters["required"], json!(["topic", "research_content"]), "the local tool");

    let outcomes = tools.execute(vec![call("c1", "alpha__save_research", r#"{"query":"x"}"#)], context()).await;
    assert_eq!(outcomes[0].content, r#"alpha ran save_research with {"query":"x"}"#);
    assert_eq!(outcomes[0].saved, None);
    assert_eq!(received(&mut rx), BTreeSet::from([seen("alpha", "save_research", Some(r#"{"query":"x"}"#))]));
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing went to the writer");
}

/// What OpenAI accepts as a function name: `^[a-zA-Z0-9_-]{1,64}$`.
fn model_safe(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test]
async fn tool_names_the_model_cannot_take_are_offered_under_safe_unique_names_and_called_by_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let long = "x".repeat(300);
    let longer = format!("{long}y");
    let hostile = [
        "web search",
        "web_search",
        "nul\0byte",
        "line\nbreak",
        long.as_str(),
        longer.as_str(),
        "",
        "ünïcødé",
        "ok-name",
    ];
    let (alpha, _) = fake_server("alpha", &hostile, Behaviour::Answer, &tx).await;
    let tools = executor(vec![alpha], writer_over(dir.path()).await).await;

    let names = offered(&tools).await;
    assert_eq!(names.len(), hostile.len() + 1, "every tool is offered, and save_research: {names:?}");
    assert!(names.iter().all(|n| model_safe(n)), "{names:?}");
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len(), "unique: {names:?}");
    assert!(names.contains(&"ok-name".to_owned()) && names.contains(&"web_search".to_owned()), "safe names stay");

    // Each offered name leads to its own tool, which the server gets by its original name.
    let definitions = tools.definitions().await;
    let exposed: Vec<String> =
        definitions.iter().map(|d| d.function.name.clone()).filter(|n| n != SAVE_RESEARCH).collect();
    let calls = exposed.iter().enumerate().map(|(i, name)| call(&format!("c{i}"), name, "")).collect();
    let outcomes = tools.execute(calls, context()).await;
    assert!(outcomes.iter().all(|o| !o.is_error), "{outcomes:?}");
    let got: BTreeSet<String> = received(&mut rx).into_iter().map(|s| s.tool).collect();
    let want: BTreeSet<String> = hostile.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(got, want, "the server got every call under its own name");
}

#[tokio::test]
async fn unknown_tools_bad_arguments_and_failing_tools_come_back_as_error_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (alpha, _) = fake_server("alpha", &["search", "fails", "broken"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![alpha], writer_over(dir.path()).await).await;

    let outcomes = tools
        .execute(
            vec![
                call("c1", "nope", "{}"),
                call("c2", "search", "[1, 2]"),
                call("c3", "search", r#"{"query": "#),
                call("c4", "search", r#""just text""#),
                call("c5", "fails", "{}"),
                call("c6", "broken", "{}"),
                call("c7", "search", "  "),
            ],
            context(),
        )
        .await;
    let texts: Vec<&str> = outcomes.iter().map(|o| o.content.as_str()).collect();

    assert!(texts[0].starts_with("Error: unknown tool `nope`. Available tools: "), "{}", texts[0]);
    assert!(texts[0].contains("save_research") && texts[0].contains("search"), "{}", texts[0]);
    assert!(texts[1].starts_with("Error: the arguments of `search` are not a JSON object (got an array)"));
    assert!(texts[2].starts_with("Error: the arguments of `search` are not a JSON object (EOF"), "{}", texts[2]);
    assert!(texts[3].contains("(got a string)"), "{}", texts[3]);
    assert_eq!(texts[4], "Error: no results for that", "a tool error keeps the server's words");
    assert_eq!(texts[5], "Error: MCP server alpha: tool broken failed: Internal error");
    assert_eq!(texts[6], "alpha ran search with nothing", "blank arguments mean none");
    assert!(outcomes[..6].iter().all(|o| o.is_error) && !outcomes[6].is_error);
    // Calls refused before the server never reach it.
    assert_eq!(
        received(&mut rx),
        BTreeSet::from([
            seen("alpha", "fails", Some("{}")),
            seen("alpha", "broken", Some("{}")),
            seen("alpha", "search", None)
        ])
    );
}

#[tokio::test]
async fn save_research_reaches_the_writer_and_returns_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = writer_over(dir.path()).await;
    let tools = executor(Vec::new(), writer.clone()).await;

    let outcomes = tools
        .execute(
            vec![
                call("c1", SAVE_RESEARCH, r#"{"topic":"Machine Learning","research_content":"Learning from data."}"#),
                call("c2", SAVE_RESEARCH, r#"{"topic":"Machine Learning"}"#),
                call("c3", SAVE_RESEARCH, r#"{"topic":"  ","research_content":"x"}"#),
            ],
            context(),
        )
        .await;

    let path = dir.path().join("machine-learning.md");
    assert!(!outcomes[0].is_error, "{}", outcomes[0].content);
    assert_eq!(outcomes[0].saved.as_deref(), Some(path.as_path()));
    assert_eq!(outcomes[0].content, format!("Research saved to {}", path.display()));
    assert_eq!(outcomes[1].content, "Error: `research_content` is missing");
    assert_eq!(outcomes[2].content, "Error: `topic` must be a non-empty string");
    assert!(outcomes[1].is_error && outcomes[1].saved.is_none() && outcomes[2].is_error);

    let ended = writer.drain(Duration::from_secs(60)).await;
    assert!(ended.failed.is_empty(), "{ended:?}");
    let text = std::fs::read_to_string(&path).expect("the research file");
    assert_eq!(crate::research::read_question_id(&text), Some(context().question_id.clone()));
    assert!(text.contains("question: \"Define machine learning\"") && text.contains("Learning from data."));
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "the refused saves wrote nothing");
}

#[tokio::test(start_paused = true)]
async fn a_slow_session_holds_up_only_its_own_call_and_ends_in_an_error_naming_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (fast, _) = fake_server("fast", &["lookup"], Behaviour::Answer, &tx).await;
    let (slow, _) = fake_server("slow", &["crawl"], Behaviour::Hang, &tx).await;
    let tools = executor(vec![fast, slow], writer_over(dir.path()).await).await;

    let stuck = {
        let tools = tools.clone();
        tokio::spawn(async move { tools.execute(vec![call("c1", "crawl", "{}")], context()).await })
    };
    assert_eq!(rx.recv().await, Some(seen("slow", "crawl", Some("{}"))), "the slow server has the call");
    // The executor answers other turns while that call hangs: its handler never waits for a tool.
    let other = tools.execute(vec![call("c2", "lookup", "{}")], context()).await;
    assert_eq!(other[0].content, "fast ran lookup with {}");
    assert!(offered(&tools).await.contains(&"crawl".to_owned()));
    assert!(!stuck.is_finished(), "the second turn waited behind the hung call");

    let stuck = stuck.await.expect("the turn ends");
    assert!(stuck[0].is_error, "{}", stuck[0].content);
    assert!(stuck[0].content.starts_with("Error: MCP server slow is unavailable: slow did not answer within"));

    // In one turn, the fast call's result survives its slow sibling.
    let mixed = tools.execute(vec![call("c3", "crawl", "{}"), call("c4", "lookup", "{}")], context()).await;
    assert!(mixed[0].is_error && mixed[0].content.contains("slow did not answer"), "{}", mixed[0].content);
    assert_eq!((mixed[1].is_error, mixed[1].content.as_str()), (false, "fast ran lookup with {}"));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_is_down_or_does_not_come_back_answers_with_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (gone, gone_slot) = fake_server("gone", &["archive"], Behaviour::Answer, &tx).await;
    let (later, later_slot) = fake_server("later", &["index"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![gone, later], writer_over(dir.path()).await).await;
    gone_slot.set(NotRunning::Down("connection refused (os error 111)".into()));
    later_slot.set(NotRunning::Restarting);

    // Their last known tools stay offered: the model learns what happened from the result.
    assert_eq!(offered(&tools).await, ["archive", "index", "save_research"]);
    let outcomes = tools.execute(vec![call("c1", "archive", "{}"), call("c2", "index", "{}")], context()).await;
    assert_eq!(
        outcomes[0].content,
        "Error: MCP server gone is unavailable: gone is down: connection refused (os error 111)"
    );
    assert_eq!(
        outcomes[1].content,
        format!(
            "Error: MCP server later is unavailable: later is restarting and did not come back within {RESTART_WAIT_TEST:?}"
        )
    );
    assert!(received(&mut rx).is_empty());
}

// ---- the allowlist, applied where it really is: by McpSession when it lists the tools ------

mod allowlist {
    use std::sync::Mutex;

    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
        ServerConfig,
    };
    use rmcp::service::RequestContext;
    use rmcp::{ErrorData, RoleServer, ServerHandler};

    use super::*;

    /// An MCP server offering a harmless and a harmful tool, recording the calls it gets.
    #[derive(Clone, Default)]
    struct Shop {
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl ServerHandler for Shop {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }

        async fn list_tools(
            &self,
            _: Option<PaginatedRequestParams>,
            _: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, ErrorData> {
            Ok(ListToolsResult::with_all_items(vec![tool("search"), tool("delete_everything")]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, ErrorData> {
            self.calls.lock().expect("calls").push(request.name.to_string());
            Ok(CallToolResult::success(vec![ContentBlock::text(format!("shop ran {}", request.name))]).into())
        }
    }

    #[tokio::test]
    async fn a_tool_outside_the_allowlist_is_neither_offered_nor_callable() {
        let shop = Shop::default();
        let server_on_loopback =
            crate::demo::search_server::serve_mcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), shop.clone())
                .await
                .expect("bind");
        let url = crate::demo::search_server::mcp_url(server_on_loopback.addr());
        let server = spec("shop", &["search"], &url);
        let (session, slot, args) =
            crate::actors::mcp_session::test_session(server, RESTART_WAIT_TEST, Duration::from_secs(10), CALL_TIMEOUT);
        let (actor, _) = Actor::spawn(None, McpSession, args).await.expect("the session starts");
        slot.publish(actor.clone());
        let listed = match session.settled(Duration::from_secs(10)).await {
            ServerTools::Ready(tools) => tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(),
            ServerTools::Failed { cause, .. } => panic!("the session failed: {cause}"),
            ServerTools::Connecting => panic!("the session did not connect"),
        };
        assert_eq!(listed, ["search"], "the session publishes only the allowed tools");

        let dir = tempfile::tempdir().expect("tempdir");
        let tools = executor(vec![session], writer_over(dir.path()).await).await;
        assert_eq!(offered(&tools).await, ["save_research", "search"]);
        let outcomes =
            tools.execute(vec![call("c1", "delete_everything", "{}"), call("c2", "search", "{}")], context()).await;
        assert!(outcomes[0].content.starts_with("Error: unknown tool `delete_everything`"), "{}", outcomes[0].content);
        assert_eq!(outcomes[1].content, "shop ran search");
        assert_eq!(*shop.calls.lock().expect("calls"), ["search"], "the server never saw the refused call");

        actor.stop(None);
        server_on_loopback.shutdown().await;
    }
}

/// A call that outlasts the turn's budget fails alone: the other calls of the turn keep their
/// results (the executor answers before the handle's deadline, each late call with its own
/// error), instead of every outcome of the turn becoming "did not answer".
#[tokio::test(start_paused = true)]
async fn a_call_that_outlasts_the_turn_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let (quick, _) = fake_server("quick", &["search"], Behaviour::Answer, &tx).await;
    let (stuck, _) = fake_server("stuck", &["archive"], Behaviour::Hang, &tx).await;
    let writer = writer_over(dir.path()).await;
    let slot = Slot::default();
    let (actor, _) = Actor::spawn(
        None,
        ToolExecutor,
        ToolExecutorArgs { servers: vec![quick, stuck], writer, redactor: Redactor::default() },
    )
    .await
    .expect("the executor starts");
    slot.publish(actor);
    // A turn's budget shorter than the sessions' own call timeout (30 s).
    let tools = ToolExecutorHandle::new(slot, Duration::from_secs(10));

    let outcomes =
        tools.execute(vec![call("c1", "search", r#"{"query":"rust"}"#), call("c2", "archive", "{}")], context()).await;
    assert_eq!(outcomes[0].content, r#"quick ran search with {"query":"rust"}"#, "the quick call's result stands");
    assert!(!outcomes[0].is_error);
    assert!(outcomes[1].is_error);
    assert!(outcomes[1].content.contains("archive"), "the late call's error names it: {}", outcomes[1].content);
}

/// A call the turn gives up on is cancelled then (its session cancels it on the server), not
/// left running there until the question ends.
#[tokio::test(start_paused = true)]
async fn a_call_the_turn_gives_up_on_is_cancelled_then_not_when_the_question_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let (stuck, _, deadlines) = fake_server_with_deadlines("stuck", &["archive"], Behaviour::Hang, &tx).await;
    let writer = writer_over(dir.path()).await;
    // A turn's budget (9 s) shorter than the session's own call timeout (30 s).
    let tools = ToolExecutorHandle { deadline: Duration::from_secs(10), ..executor(vec![stuck], writer).await };
    let question = Deadline::after(Duration::from_secs(3600));

    let outcomes = tools.execute_within(vec![call("c1", "archive", "{}")], context(), &question).await;
    assert!(outcomes[0].is_error && outcomes[0].content.contains("did not finish within this turn"), "{outcomes:?}");
    let deadlines = deadlines.lock().expect("deadlines").clone();
    assert_eq!(deadlines.len(), 1, "the session got the call");
    assert!(deadlines[0].is_cancelled(), "the call the turn gave up on is cancelled");
    assert!(!question.is_cancelled(), "the question goes on");
}

/// With less left of the question than an answer takes to come back, no call is sent: it could
/// not finish, and would run on its server for nobody.
#[tokio::test(start_paused = true)]
async fn with_no_time_left_in_the_question_no_call_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (quick, _) = fake_server("quick", &["search"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![quick], writer_over(dir.path()).await).await;
    let question = Deadline::after(ANSWER_MARGIN / 2);

    let outcomes = tools.execute_within(vec![call("c1", "search", "{}")], context(), &question).await;
    assert!(outcomes[0].is_error, "{outcomes:?}");
    assert!(outcomes[0].content.contains("agent.question_timeout"), "the error says why: {}", outcomes[0].content);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err(), "no call reached the server");
}

/// Errors never carry secrets: a tool's result that quotes a key reaches the model scrubbed.
#[tokio::test]
async fn a_tool_result_quoting_a_key_reaches_the_model_scrubbed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let (alpha, _) = fake_server("alpha", &["leaks"], Behaviour::Answer, &tx).await;
    let tools = executor(vec![alpha], writer_over(dir.path()).await).await;
    let outcomes = tools.execute(vec![call("c1", "leaks", "{}")], context()).await;
    assert!(outcomes[0].is_error);
    assert!(!outcomes[0].content.contains("sk-live-0123456789abcdefghij"), "{}", outcomes[0].content);
    assert!(outcomes[0].content.contains("upstream refused"), "the rest of the text stays: {}", outcomes[0].content);
}
