//! ToolExecutor: the tool registry and the place tool calls run.
//!
//! - **Owns**: the registry: the local `save_research` tool plus every allowed tool of every
//!   MCP server, under the names the model sees, and their OpenAI definitions.
//! - **Accepts**: `Definitions` (what to offer the model) and `Execute(calls)`.
//! - **Concurrency**: the handler resolves names against the registry and spawns one task
//!   per batch; the calls of one model turn run concurrently, each bounded by its session's
//!   timeout and the turn's budget (a call the turn gives up on is cancelled on its server then;
//!   with no budget left, none is sent). The handler never waits for a tool.
//! - **Errors are results**: an unknown tool, arguments that are not a JSON object, a server
//!   that is down or a tool that fails all come back as an error *result* the model reads
//!   (prefixed `Error:`), never as a failure of the question or of this actor.
//! - **Names**: a tool keeps its own name unless two servers offer the same name (or an MCP
//!   tool is called `save_research`): then every tool of that name is offered as
//!   `<server>__<tool>`. Names the model would refuse (outside `^[a-zA-Z0-9_-]{1,64}$`) are
//!   offered under a safe, unique form (`exposed_names`); the server always gets its own name.
//! - **Supervisor**: the root, restart at once (the registry is rebuilt from the sessions).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rmcp::model::JsonObject;
use serde_json::{Value, json};
use tracing::Instrument;

use super::mcp_session::McpSessionHandle;
use super::research_writer::ResearchWriterHandle;
use super::{RESTART_WAIT, Slot};
use crate::deadline::Deadline;
use crate::llm::wire::{ToolCall, ToolDefinition};
use crate::mcp;
use crate::research::{Provenance, ResearchDoc};
use crate::secrets::Redactor;

/// The local tool's name.
pub const SAVE_RESEARCH: &str = "save_research";

/// The result of one tool call, as the model will read it.
#[derive(Debug, Clone)]
pub struct ToolOutcome {
    /// The call answered.
    pub call_id: String,
    /// Tool name as the model called it.
    pub name: String,
    /// Text for the model.
    pub content: String,
    /// Whether it is an error.
    pub is_error: bool,
    /// The research file, when this was a successful `save_research`.
    pub saved: Option<PathBuf>,
}

/// Where a name leads.
#[derive(Clone)]
enum Target {
    SaveResearch,
    Mcp { server: usize, tool: String },
}

/// Start-up arguments.
#[derive(Clone)]
pub(crate) struct ToolExecutorArgs {
    /// One handle per MCP server.
    pub servers: Vec<McpSessionHandle>,
    /// For `save_research`.
    pub writer: ResearchWriterHandle,
    /// Scrubs secrets out of what servers answer before the model reads it.
    pub redactor: Redactor,
}

pub(crate) enum ToolExecutorMsg {
    /// The tools to offer.
    Definitions(RpcReplyPort<Arc<[ToolDefinition]>>),
    /// Run one turn's tool calls.
    /// Run one turn's calls, each within `Duration` (the turn's budget).
    /// The turn's budget, and the question's deadline (its end cancels the calls).
    Execute(Vec<ToolCall>, Arc<Provenance>, Duration, Deadline, RpcReplyPort<Vec<ToolOutcome>>),
}

pub(crate) struct ToolExecutorState {
    args: ToolExecutorArgs,
    /// The tool lists the registry was built from (`Arc` identity tells a change).
    built_from: Vec<Option<Arc<[rmcp::model::Tool]>>>,
    names: HashMap<String, Target>,
    definitions: Arc<[ToolDefinition]>,
}

pub(crate) struct ToolExecutor;

impl ToolExecutorState {
    /// Rebuilds the registry when a server's tool list changed. A server that is restarting
    /// or down keeps its last known tools: a call then reaches its session, which waits for the
    /// restart or answers at once that the server is down, naming it and the cause.
    fn refresh(&mut self) {
        let current: Vec<Option<Arc<[rmcp::model::Tool]>>> =
            self.args.servers.iter().map(|s| s.tools().known().cloned()).collect();
        let same = current.len() == self.built_from.len()
            && current.iter().zip(&self.built_from).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        if same && !self.definitions.is_empty() {
            return;
        }
        let lists: Vec<(&str, &[rmcp::model::Tool])> = current
            .iter()
            .zip(&self.args.servers)
            .map(|(tools, handle)| (handle.server().name.as_str(), tools.as_deref().unwrap_or_default()))
            .collect();
        let mut names = HashMap::from([(SAVE_RESEARCH.to_owned(), Target::SaveResearch)]);
        let mut definitions = vec![save_research_definition()];
        for (server, ((_, tools), exposed)) in lists.iter().zip(exposed_names(&lists)).enumerate() {
            for (tool, exposed) in tools.iter().zip(exposed) {
                definitions.push(mcp::tool_definition(&exposed, tool));
                names.insert(exposed, Target::Mcp { server, tool: tool.name.to_string() });
            }
        }
        self.names = names;
        self.definitions = definitions.into();
        self.built_from = current;
    }
}

/// The longest function name the model accepts (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
const MAX_NAME: usize = 64;

/// The names the model sees for each server's tools, in the lists' order.
///
/// A tool keeps its own name when the model accepts it and no other tool has it; a name several
/// servers share (or an MCP tool called `save_research`) becomes `<server>__<tool>`; a name
/// the model would refuse (spaces, control characters, non-ASCII, over 64 characters, empty)
/// has every other character replaced by `_` and is cut to 64. A name that is then taken gets
/// `_2`, `_3`, …. The same lists always give the same names; the server is always called by
/// the tool's own name.
pub(crate) fn exposed_names(servers: &[(&str, &[rmcp::model::Tool])]) -> Vec<Vec<String>> {
    let mut count: HashMap<&str, usize> = HashMap::from([(SAVE_RESEARCH, 1)]);
    for tool in servers.iter().flat_map(|(_, tools)| tools.iter()) {
        *count.entry(tool.name.as_ref()).or_default() += 1;
    }
    let keeps_own = |name: &str| count[name] == 1 && model_safe(name);
    // Names that are fine as they are are taken first, so a made-up name never displaces one.
    let mut taken: std::collections::HashSet<String> = servers
        .iter()
        .flat_map(|(_, tools)| tools.iter())
        .filter(|tool| keeps_own(&tool.name))
        .map(|tool| tool.name.to_string())
        .chain([SAVE_RESEARCH.to_owned()])
        .collect();
    servers
        .iter()
        .map(|(server, tools)| {
            tools
                .iter()
                .map(|tool| {
                    if keeps_own(&tool.name) {
                        return tool.name.to_string();
                    }
                    let wanted = if count[tool.name.as_ref()] > 1 {
                        format!("{server}__{}", tool.name)
                    } else {
                        tool.name.to_string()
                    };
                    unique_name(model_safe_form(&wanted), &mut taken)
                })
                .collect()
        })
        .collect()
}

/// Whether the model accepts `name` as a function name.
fn model_safe(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `name` with every character the model refuses replaced by `_`, cut to [`MAX_NAME`].
fn model_safe_form(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_NAME)
        .collect();
    if safe.is_empty() { "tool".to_owned() } else { safe }
}

/// `base` if free, else `base` (shortened to fit) with `_2`, `_3`, …; the result is taken.
fn unique_name(base: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut candidate = base.clone();
    let mut number = 1;
    while taken.contains(&candidate) {
        number += 1;
        let suffix = format!("_{number}");
        // `base` is ASCII: any byte index is a character boundary.
        let keep = base.len().min(MAX_NAME - suffix.len());
        candidate = format!("{}{suffix}", &base[..keep]);
    }
    taken.insert(candidate.clone());
    candidate
}

impl Actor for ToolExecutor {
    type Msg = ToolExecutorMsg;
    type State = ToolExecutorState;
    type Arguments = ToolExecutorArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ToolExecutorArgs,
    ) -> Result<ToolExecutorState, ActorProcessingErr> {
        let mut state =
            ToolExecutorState { args, built_from: Vec::new(), names: HashMap::new(), definitions: Arc::new([]) };
        state.refresh();
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: ToolExecutorMsg,
        state: &mut ToolExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        state.refresh();
        match message {
            ToolExecutorMsg::Definitions(reply) => {
                let _ = reply.send(state.definitions.clone());
            }
            ToolExecutorMsg::Execute(calls, context, budget, deadline, reply) => {
                let resolved: Vec<(ToolCall, Option<Target>)> = calls
                    .into_iter()
                    .map(|call| {
                        let target = state.names.get(&call.function.name).cloned();
                        (call, target)
                    })
                    .collect();
                let servers = state.args.servers.clone();
                let writer = state.args.writer.clone();
                let redactor = state.args.redactor.clone();
                let available: Vec<String> = state.definitions.iter().map(|d| d.function.name.clone()).collect();
                tokio::spawn(
                    async move {
                        let dispatch = Dispatch {
                            servers: &servers,
                            writer: &writer,
                            context: &context,
                            available: &available,
                            redactor: &redactor,
                            deadline: &deadline,
                        };
                        // Each call within the turn's budget: one that outlasts it fails alone and
                        // the turn's other results stand.
                        let runs = resolved.into_iter().map(|(call, target)| {
                            let (call_id, name) = (call.id.clone(), call.function.name.clone());
                            let dispatch = &dispatch;
                            async move {
                                // Each call its own token, cancelled as the call ends however it
                                // ends: a call the turn gives up on is cancelled on its server
                                // then, not left running there until the question ends.
                                let own = dispatch.deadline.child();
                                let _ends_with_the_call = own.drop_guard();
                                let dispatch = Dispatch { deadline: &own, ..*dispatch };
                                let run = tokio::time::timeout(budget, run_one(call, target, &dispatch));
                                run.await.unwrap_or_else(|_| ToolOutcome {
                                    call_id,
                                    content: format!(
                                        "Error: `{name}` did not finish within this turn's {}",
                                        humantime::format_duration(budget)
                                    ),
                                    name,
                                    is_error: true,
                                    saved: None,
                                })
                            }
                        });
                        // A question that ended takes its calls with it (nobody waits for them).
                        tokio::select! {
                            outcomes = futures::future::join_all(runs) => {
                                let _ = reply.send(outcomes);
                            }
                            () = deadline.cancelled() => {}
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        Ok(())
    }
}

/// What one turn's calls run against.
struct Dispatch<'a> {
    servers: &'a [McpSessionHandle],
    writer: &'a ResearchWriterHandle,
    context: &'a Provenance,
    available: &'a [String],
    redactor: &'a Redactor,
    deadline: &'a Deadline,
}

/// Runs one call inside its `execute_tool {tool}` span and counts it.
async fn run_one(call: ToolCall, target: Option<Target>, dispatch: &Dispatch<'_>) -> ToolOutcome {
    use crate::telemetry::metrics::{kv, metrics};
    use crate::telemetry::names::attr;

    let name = call.function.name.clone();
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = %format!("execute_tool {name}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %name,
        gen_ai.tool.call.id = %call.id,
        gen_ai.tool.type = if matches!(target, Some(Target::Mcp { .. })) { "extension" } else { "function" },
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if crate::telemetry::capture_content() {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.set_attribute("gen_ai.tool.call.arguments", call.function.arguments.clone());
    }
    let outcome = run_one_inner(call, target, dispatch).instrument(span.clone()).await;
    let result = if outcome.is_error { "error" } else { "ok" };
    if outcome.is_error {
        span.record("error.type", "tool_error");
        span.record("otel.status_code", "ERROR");
    }
    metrics().tool_calls.add(1, &[kv(attr::TOOL_NAME, outcome.name.clone()), kv(attr::TOOL_OUTCOME, result)]);
    outcome
}

async fn run_one_inner(call: ToolCall, target: Option<Target>, dispatch: &Dispatch<'_>) -> ToolOutcome {
    let Dispatch { servers, writer, context, available, redactor, deadline } = *dispatch;
    let name = call.function.name.clone();
    let outcome = |content: String, is_error: bool, saved: Option<PathBuf>| ToolOutcome {
        call_id: call.id.clone(),
        name: name.clone(),
        content,
        is_error,
        saved,
    };
    let Some(target) = target else {
        return outcome(
            format!("Error: unknown tool `{name}`. Available tools: {}.", available.join(", ")),
            true,
            None,
        );
    };
    let arguments = match parse_arguments(&call.function.arguments) {
        Ok(arguments) => arguments,
        Err(problem) => {
            return outcome(
                format!(
                    "Error: the arguments of `{name}` are not a JSON object ({problem}). Call it again with a JSON object matching its schema."
                ),
                true,
                None,
            );
        }
    };
    match target {
        Target::SaveResearch => match save_research(arguments, writer, context).await {
            Ok(path) => outcome(format!("Research saved to {}", path.display()), false, Some(path)),
            Err(message) => outcome(format!("Error: {message}"), true, None),
        },
        Target::Mcp { server, tool } => match servers[server].call_tool_within(&tool, arguments, deadline).await {
            Ok(result) => {
                let text = redactor.scrub(&mcp::result_text(&result));
                if result.is_error == Some(true) {
                    let text = if text.is_empty() { "the tool reported an error".into() } else { text };
                    outcome(format!("Error: {text}"), true, None)
                } else {
                    outcome(text, false, None)
                }
            }
            Err(error) => outcome(format!("Error: {error}"), true, None),
        },
    }
}

/// The model's arguments: empty means none; anything else must be a JSON object.
fn parse_arguments(raw: &str) -> Result<Option<JsonObject>, String> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(object)) => Ok(Some(object)),
        Ok(other) => Err(format!("got {}", json_kind(&other))),
        Err(error) => Err(error.to_string()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn save_research(
    arguments: Option<JsonObject>,
    writer: &ResearchWriterHandle,
    context: &Provenance,
) -> Result<PathBuf, String> {
    let arguments = arguments.unwrap_or_default();
    let text = |field: &str| -> Result<String, String> {
        match arguments.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("`{field}` must be a non-empty string")),
            None => Err(format!("`{field}` is missing")),
        }
    };
    let doc = ResearchDoc {
        provenance: context.clone(),
        topic: text("topic")?,
        content: text("research_content")?,
        truncated: false,
        saved_by: crate::research::SavedBy::Model,
    };
    writer.save(doc).await.map_err(|e| e.to_string())
}

/// The `save_research` tool as the model is offered it (also `agentry doctor`'s probe).
pub(crate) fn save_research_definition() -> ToolDefinition {
    ToolDefinition::function(
        SAVE_RESEARCH,
        "Save the research for the question as a markdown file. Call it once, with the final write-up.",
        json!({
            "type": "object",
            "properties": {
                "topic": {"type": "string", "description": "A short title for the topic researched"},
                "research_content": {"type": "string", "description": "The research in markdown: definition, key points, sources"}
            },
            "required": ["topic", "research_content"],
            "additionalProperties": false
        }),
    )
}

/// What a turn's budget leaves for its answer to reach the caller before the handle's deadline.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// What callers hold.
#[derive(Clone)]
pub struct ToolExecutorHandle {
    slot: Slot<ToolExecutorMsg>,
    deadline: Duration,
}

impl ToolExecutorHandle {
    /// A handle; `deadline` bounds one turn's calls.
    pub(crate) fn new(slot: Slot<ToolExecutorMsg>, deadline: Duration) -> Self {
        Self { slot, deadline }
    }

    /// The tools to offer the model now.
    pub async fn definitions(&self) -> Arc<[ToolDefinition]> {
        self.slot
            .call("tool-executor", RESTART_WAIT, RESTART_WAIT, ToolExecutorMsg::Definitions)
            .await
            .unwrap_or_else(|_| Arc::new([save_research_definition()]))
    }

    /// Runs one turn's calls; every call gets an outcome, in order. Each call has the turn's
    /// budget (this handle's deadline, less the time the answer takes to come back).
    pub async fn execute(&self, calls: Vec<ToolCall>, context: Arc<Provenance>) -> Vec<ToolOutcome> {
        self.execute_within(calls, context, &Deadline::none()).await
    }

    /// [`Self::execute`] within the question's `deadline`: the turn's budget is at most what is
    /// left of it (less the time the answer takes to come back), and the calls are cancelled (on
    /// their servers too) when the question ends.
    pub async fn execute_within(
        &self,
        calls: Vec<ToolCall>,
        context: Arc<Provenance>,
        deadline: &Deadline,
    ) -> Vec<ToolOutcome> {
        let fallback: Vec<(String, String)> = calls.iter().map(|c| (c.id.clone(), c.function.name.clone())).collect();
        let turn = deadline.cap(self.deadline);
        let budget = turn.saturating_sub(ANSWER_MARGIN);
        if budget.is_zero() {
            // No call could finish: none is sent (it would run on its server for nobody).
            let no_time = |(call_id, name): (String, String)| ToolOutcome {
                content: format!(
                    "Error: `{name}` was not called: the question's deadline (agent.question_timeout) leaves no \
                     time for tool calls; answer with what you have"
                ),
                call_id,
                name,
                is_error: true,
                saved: None,
            };
            return fallback.into_iter().map(no_time).collect();
        }
        let deadline = deadline.child();
        match self
            .slot
            .call("tool-executor", turn.min(RESTART_WAIT), turn, |reply| {
                ToolExecutorMsg::Execute(calls, context, budget, deadline, reply)
            })
            .await
        {
            Ok(outcomes) => outcomes,
            Err(error) => fallback
                .into_iter()
                .map(|(call_id, name)| ToolOutcome {
                    call_id,
                    name,
                    content: format!("Error: {error}"),
                    is_error: true,
                    saved: None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
