//! OpenAI Chat Completions request and response types (the subset agentry uses).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions.
    System {
        /// Text.
        content: String,
    },
    /// The question.
    User {
        /// Text.
        content: String,
    },
    /// The model's turn: text, tool calls, or both.
    Assistant {
        /// Text (null when the model only calls tools).
        content: Option<String>,
        /// Tool calls requested.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// A tool's result.
    Tool {
        /// The call it answers.
        tool_call_id: String,
        /// The result as text.
        content: String,
    },
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed in the tool message.
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Which function, with what arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// Function name and raw arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function (tool) name.
    pub name: String,
    /// Arguments as a JSON *string*, exactly as the model produced it (it may be invalid).
    #[serde(default)]
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
}

/// A function's name, description and JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: Value,
}

impl ToolDefinition {
    /// A function tool.
    pub fn function(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            kind: function_kind(),
            function: FunctionDefinition { name: name.into(), description: description.into(), parameters },
        }
    }
}

/// The request body.
///
/// Fields are sent in this order, the same for every question: what never changes within a
/// batch (model, sampling, the tool definitions in the registry's order) comes before the
/// conversation, so two questions' requests are byte-identical up to the first place the
/// question appears and a provider (or a caching proxy) can reuse that prefix.
#[derive(Debug, Serialize)]
pub struct ChatRequest<'a> {
    /// Model name.
    pub model: &'a str,
    /// Sampling temperature.
    pub temperature: f32,
    /// Completion limit.
    pub max_tokens: u32,
    /// Tools offered (omitted when empty).
    #[serde(skip_serializing_if = "<[ToolDefinition]>::is_empty")]
    pub tools: &'a [ToolDefinition],
    /// The conversation.
    pub messages: &'a [Message],
}

/// The response body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Choices (agentry asks for one).
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One choice.
#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    /// The assistant message.
    pub message: ResponseMessage,
    /// `stop`, `tool_calls`, `length`, `content_filter`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant message in a response.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseMessage {
    /// Text.
    #[serde(default)]
    pub content: Option<String>,
    /// Tool calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A refusal, if the model refused.
    #[serde(default)]
    pub refusal: Option<String>,
}

/// Token usage of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens (cached ones included).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// What the input tokens were made of, when the server says (OpenAI, llama.cpp's server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// Input tokens the provider read from its prompt cache (a prefix it had seen before),
    /// at most `prompt_tokens`; 0 when the server does not say.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |details| details.cached_tokens.min(self.prompt_tokens))
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Input tokens served from the provider's prompt cache (billed at the cached rate).
    #[serde(default)]
    pub cached_tokens: u64,
}

/// The error body of the OpenAI API.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Detail of an API error.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// `invalid_request_error`, `server_error`, …
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `invalid_api_key`, `rate_limit_exceeded`, …
    #[serde(default)]
    pub code: Option<Value>,
}
