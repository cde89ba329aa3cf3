//! The per-question tool-calling loop: a task, not an actor.
//!
//! It owns one conversation and orchestrates the actors: ask the model (ModelRouter), run the
//! tool calls it asks for (ToolExecutor, concurrently), repeat until the model answers without
//! tools or `max_turns` is reached. Exactly one research file results from a successful
//! question: the model's `save_research`, or, if it never called it, the runtime saves the
//! final answer itself (`saved_by: runtime`: not researched). A model that writes its tool
//! call as text ([`text_call`]) has that call made.

mod text_call;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::actors::model_router::ModelRouterHandle;
use crate::actors::research_writer::{ResearchWriterHandle, WriterError};
use crate::actors::tool_executor::{SAVE_RESEARCH, ToolExecutorHandle};
use crate::batch::budget::Budget;
use crate::config::AgentSettings;
use crate::deadline::Deadline;
use crate::llm::LlmError;
use crate::llm::client::CallLog;
use crate::llm::stream::Shown;
use crate::llm::wire::{Message, ToolDefinition};
use crate::research::{self, Provenance, ResearchDoc, SavedBy};

/// What a question needs: the actors' handles and the agent settings.
#[derive(Clone)]
pub struct AgentContext {
    /// Model calls.
    pub model: ModelRouterHandle,
    /// Tool calls.
    pub tools: ToolExecutorHandle,
    /// Research files.
    pub writer: ResearchWriterHandle,
    /// Prompt, turns, timeout.
    pub settings: Arc<AgentSettings>,
    /// A suffix for the route in files and the report (`" (demo)"` in the demo).
    pub route_label: &'static str,
}

/// Why a question failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model call failed (after retries).
    #[error(transparent)]
    Model(#[from] LlmError),
    /// The model kept calling tools.
    #[error("the model did not finish within {0} turns")]
    TooManyTurns(u32),
    /// The model answered with nothing.
    #[error("the model gave an empty answer{}", .0.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    EmptyAnswer(Option<String>),
    /// The research file could not be written.
    #[error("cannot save the research: {0}")]
    Save(#[from] WriterError),
    /// The batch's budget could not pay for the next model call (`[batch.budget]`).
    #[error("{why} (stopped before model call {turn})")]
    Budget {
        /// Which model call of the question would have been next (1: the first).
        turn: u32,
        /// The spend, the limit and the estimate.
        why: String,
    },
}

impl AgentError {
    /// What to do about it, when agentry knows (one line; see [`LlmError::hint`]).
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Model(error) => error.hint(),
            _ => None,
        }
    }

    /// The `error.type` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model(error) => error.kind(),
            Self::TooManyTurns(_) => "max_turns",
            Self::EmptyAnswer(_) => "empty_answer",
            Self::Save(_) => "save_failed",
            Self::Budget { .. } => "budget",
        }
    }
}

/// What happened to one question: its part of the report row (flattened into it).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Transcript {
    /// Model calls made.
    pub turns: u32,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Tool calls that returned an error.
    pub tool_errors: u32,
    /// Tools used, in first-use order.
    pub tools_used: Vec<String>,
    /// Input tokens, summed (cached ones included).
    pub input_tokens: u64,
    /// Of the input tokens, those the provider read from its prompt cache.
    pub cached_input_tokens: u64,
    /// Output tokens, summed.
    pub output_tokens: u64,
    /// What the model calls cost at `model.{cloud,local}.price`.
    pub cost: f64,
    /// Route of the last model call.
    pub route: Option<String>,
    /// Model of the last call.
    pub model: Option<String>,
    /// The research file.
    pub file: Option<PathBuf>,
    /// Who saved it: `model` (`save_research`) or `runtime` (the final answer, not researched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_by: Option<SavedBy>,
    /// The final answer (not in the report: the research file has it).
    #[serde(skip)]
    pub answer: Option<String>,
    /// Why the last model call ended (`stop`, `tool_calls`, `length`, `content_filter`).
    pub finish_reason: Option<String>,
    /// Model requests sent again after a transient failure.
    pub retries: u32,
    /// Model requests refused with 429.
    pub rate_limited: u32,
}

/// A question's transcript as the agent writes it, shared with the batch: whoever gives up on
/// the question (its deadline, a shutdown, a second signal) still reads what it did so far.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Transcript>>);

impl Recorder {
    /// What the question did so far.
    pub fn snapshot(&self) -> Transcript {
        self.update(|transcript| transcript.clone())
    }

    fn update<R>(&self, change: impl FnOnce(&mut Transcript) -> R) -> R {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Answers one question within `deadline`, recording what happens in `transcript` as it goes,
/// so whoever gives up on it (the deadline, a shutdown, a second signal) still has the counts
/// and the file. Never panics on bad model output.
///
/// Each model call is first reserved in the batch's `budget` and settled with its usage, which
/// goes into the transcript at the same moment (so the report's spend is the sum of its rows);
/// a call the budget cannot pay for ends the question with [`AgentError::Budget`] before it is
/// sent.
///
/// A question whose model saved its research is answered by that file whatever happens after:
/// the caller turns a later error into a warning (the report, the directory and a rerun then
/// agree).
pub async fn answer(
    context: &AgentContext,
    question: &str,
    deadline: &Deadline,
    transcript: &Recorder,
    log: &Arc<CallLog>,
    budget: &Budget,
) -> Result<(), AgentError> {
    let settings = &context.settings;
    // Everything this question starts ends with it: when this future is dropped (its deadline,
    // a shutdown) or returns, the guard cancels the requests still in flight.
    let _ends_with_the_question = deadline.drop_guard();
    let question_id = research::question_id(question);
    let trace_id = crate::telemetry::trace_id(&tracing::Span::current());
    // What a research file saved this turn records: the question, and how it is being answered.
    let provenance = |model: String, route: String| Provenance {
        question: question.to_owned(),
        question_id: question_id.clone(),
        agent: settings.name.clone(),
        model,
        route,
        tools_used: transcript.update(|t| t.tools_used.clone()),
        trace_id: trace_id.clone(),
    };
    let mut messages = Arc::new(vec![
        Message::System { content: settings.system_prompt.replace("{question}", question) },
        Message::User { content: question.to_owned() },
    ]);
    let tools = context.tools.definitions().await;
    for turn in 1..=settings.max_turns {
        let reservation =
            budget.reserve(|| prompt_chars(&messages, &tools)).await.map_err(|why| AgentError::Budget { turn, why })?;
        transcript.update(|t| t.turns += 1);
        let outcome = context.model.chat(messages.clone(), tools.clone(), deadline, log).await?;
        let route = format!("{}{}", outcome.route, context.route_label);
        let response = outcome.completion.response;
        // Counted once, here, in the batch's spend and the question's row alike.
        let spend = reservation.settle(outcome.route, response.usage.as_ref());
        transcript.update(|t| {
            t.route = Some(route.clone());
            t.model = Some(outcome.model.clone());
            t.input_tokens += spend.input_tokens;
            t.cached_input_tokens += spend.cached_input_tokens;
            t.output_tokens += spend.output_tokens;
            t.cost += spend.cost;
        });
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(AgentError::EmptyAnswer(None));
        };
        let mut calls = choice.message.tool_calls.unwrap_or_default();
        let mut content = choice.message.content;
        if calls.is_empty()
            && let Some(call) = content.as_deref().and_then(|text| text_call::tool_call_in(text, &tools, turn))
        {
            tracing::info!(tool = %call.function.name, "the model wrote a tool call as text: making that call");
            (calls, content) = (vec![call], None);
        }
        log.show(Shown::Answered { calls_tools: !calls.is_empty() });
        transcript.update(|t| t.finish_reason.clone_from(&choice.finish_reason));
        let conversation = Arc::make_mut(&mut messages);
        conversation.push(Message::Assistant { content: content.clone(), tool_calls: calls.clone() });
        if calls.is_empty() {
            let answer = content.filter(|c| !c.trim().is_empty());
            let Some(answer) = answer.or(choice.message.refusal.clone()) else {
                return Err(AgentError::EmptyAnswer(choice.finish_reason));
            };
            let saved = transcript.update(|t| {
                t.answer = Some(answer.clone());
                t.file.is_some()
            });
            if !saved {
                let doc = ResearchDoc {
                    provenance: provenance(outcome.model, route),
                    topic: question.to_owned(),
                    content: answer,
                    truncated: cut_off(choice.finish_reason.as_deref()),
                    saved_by: SavedBy::Runtime,
                };
                let file = context.writer.save(doc).await?;
                transcript.update(|t| (t.file, t.saved_by) = (Some(file), Some(SavedBy::Runtime)));
            }
            return Ok(());
        }
        transcript.update(|t| {
            for call in &calls {
                t.tool_calls += 1;
                if !t.tools_used.contains(&call.function.name) {
                    t.tools_used.push(call.function.name.clone());
                }
            }
        });
        let saves_with = Arc::new(provenance(outcome.model, route));
        for result in context.tools.execute_within(calls, saves_with, deadline).await {
            if result.is_error {
                transcript.update(|t| t.tool_errors += 1);
                tracing::debug!(tool = %result.name, "tool call returned an error to the model");
            }
            if let (Some(path), true) = (result.saved, result.name == SAVE_RESEARCH) {
                transcript.update(|t| (t.file, t.saved_by) = (Some(path), Some(SavedBy::Model)));
            }
            conversation.push(Message::Tool { tool_call_id: result.call_id, content: result.content });
        }
    }
    Err(AgentError::TooManyTurns(settings.max_turns))
}

/// Whether an answer that ended with `finish_reason` was cut off: the model reached
/// `max_tokens` (`length`) or the provider's content filter stopped it (`content_filter`).
pub fn cut_off(finish_reason: Option<&str>) -> bool {
    matches!(finish_reason, Some("length" | "content_filter"))
}

/// A request's prompt in characters, as the budget estimates it: its messages and tool
/// definitions as JSON (the way OpenAI estimates a request against its token limit).
fn prompt_chars(messages: &[Message], tools: &[ToolDefinition]) -> usize {
    let chars = |json: serde_json::Result<String>| json.map_or(0, |json| json.chars().count());
    let tools = if tools.is_empty() { 0 } else { chars(serde_json::to_string(tools)) };
    chars(serde_json::to_string(messages)) + tools
}
