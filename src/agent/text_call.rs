//! A tool call a model wrote as text instead of in `tool_calls`: small local models do (Gemma
//! and others without tool-call support in their chat template). The whole answer is then one
//! JSON object naming an offered tool, `{"name": …, "arguments": {…}}` (or `parameters`, or
//! OpenAI's `{"function": {…}}` shape), maybe in a code fence or `<tool_call>` tags.

use serde_json::Value;

use crate::llm::wire::{FunctionCall, ToolCall, ToolDefinition};

/// The keys such an object may have: anything else makes it an answer, not a call.
const CALL_KEYS: [&str; 6] = ["name", "arguments", "parameters", "type", "id", "function"];

/// The tool call `text` is, if it is nothing but one call of a tool in `offered`.
pub(crate) fn tool_call_in(text: &str, offered: &[ToolDefinition], turn: u32) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(unwrapped(text.trim())).ok()?;
    let object = value.as_object()?;
    if !object.keys().all(|key| CALL_KEYS.contains(&key.as_str())) {
        return None;
    }
    let call = match object.get("function") {
        Some(Value::Object(function)) => function,
        _ => object,
    };
    let name = call.get("name")?.as_str()?;
    if !offered.iter().any(|tool| tool.function.name == name) {
        return None;
    }
    let arguments = match call.get("arguments").or_else(|| call.get("parameters")) {
        None => "{}".to_owned(),
        Some(Value::String(arguments)) => arguments.clone(),
        Some(arguments @ Value::Object(_)) => arguments.to_string(),
        Some(_) => return None,
    };
    let function = FunctionCall { name: name.to_owned(), arguments };
    Some(ToolCall { id: format!("call_text_{turn}"), kind: "function".to_owned(), function })
}

/// `text` without `<tool_call>` tags or a code fence around it.
fn unwrapped(text: &str) -> &str {
    let text = text.strip_prefix("<tool_call>").and_then(|t| t.strip_suffix("</tool_call>")).map_or(text, str::trim);
    let fenced = text.strip_prefix("```").and_then(|rest| rest.strip_suffix("```"));
    fenced.map_or(text, |inner| inner.strip_prefix("json").unwrap_or(inner).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> Vec<ToolDefinition> {
        vec![ToolDefinition::function("search", "Search.", serde_json::json!({"type": "object"}))]
    }

    fn call(text: &str) -> Option<(String, String)> {
        tool_call_in(text, &offered(), 1).map(|call| (call.function.name, call.function.arguments))
    }

    #[test]
    fn a_call_written_as_text_is_read_in_the_shapes_models_write_it() {
        let search = Some(("search".to_owned(), r#"{"query":"rust"}"#.to_owned()));
        assert_eq!(call(r#"{"name": "search", "arguments": {"query": "rust"}}"#), search);
        assert_eq!(call("```json\n{\"name\": \"search\", \"parameters\": {\"query\": \"rust\"}}\n```"), search);
        assert_eq!(
            call("<tool_call>\n{\"name\": \"search\", \"arguments\": \"{\\\"query\\\":\\\"rust\\\"}\"}\n</tool_call>"),
            search
        );
        let openai = r#"{"type": "function", "function": {"name": "search", "arguments": "{\"query\":\"rust\"}"}}"#;
        assert_eq!(call(openai), search);
        assert_eq!(tool_call_in(r#"{"name": "search"}"#, &offered(), 3).map(|c| c.id), Some("call_text_3".to_owned()));
    }

    #[test]
    fn an_answer_is_not_taken_for_a_call() {
        assert_eq!(call("Rust is a language."), None);
        assert_eq!(call(r#"{"name": "fetch", "arguments": {}}"#), None, "not an offered tool");
        assert_eq!(call(r#"{"name": "search", "description": "a JSON answer"}"#), None, "other keys");
        assert_eq!(call("Here it is: {\"name\": \"search\", \"arguments\": {}}"), None, "text around it");
        assert_eq!(call(r#"{"name": "search", "arguments": [1]}"#), None);
    }
}
