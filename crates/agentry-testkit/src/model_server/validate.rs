//! Request validation: the mistakes the real API rejects, with its messages.

use std::collections::HashSet;

use serde_json::Value;

use super::ApiError;

/// Roles the real API accepts in `messages[].role`.
const ROLES: [&str; 6] = ["system", "assistant", "user", "function", "tool", "developer"];

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn missing(param: String) -> ApiError {
    ApiError::invalid(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

fn wrong_type(param: String, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        format!("Invalid type for '{param}': expected {expected}, but got {} instead.", type_name(got)),
        Some(param),
        Some("invalid_type"),
    )
}

fn field<'v>(object: &'v Value, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn require_str<'v>(object: &'v Value, key: &str, param: impl Fn() -> String) -> Result<&'v str, ApiError> {
    match field(object, key) {
        None => Err(missing(param())),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(param(), "a string", other)),
    }
}

/// Validates a request body the way the real API does; the first problem
/// found is returned as a 400.
pub(super) fn validate(body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid(
            format!("Invalid type for request body: expected an object, but got {} instead.", type_name(body)),
            None,
            Some("invalid_type"),
        ));
    }
    match field(body, "model") {
        None => {
            return Err(ApiError::invalid("you must provide a model parameter", Some("model".into()), None));
        }
        Some(Value::String(_)) => {}
        Some(other) => return Err(wrong_type("model".into(), "a string", other)),
    }
    let messages = match field(body, "messages") {
        None => return Err(missing("messages".into())),
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(wrong_type("messages".into(), "an array of objects", other)),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
            Some("messages".into()),
            Some("empty_array"),
        ));
    }
    validate_messages(messages)?;
    if let Some(tools) = field(body, "tools") {
        validate_tools(tools)?;
    }
    validate_sampling(body)
}

fn validate_messages(messages: &[Value]) -> Result<(), ApiError> {
    // The assistant message whose tool calls are being answered:
    // (its index, the ids it asked for, the ids answered so far).
    let mut open: Option<(usize, Vec<String>, HashSet<String>)> = None;
    for (i, message) in messages.iter().enumerate() {
        if !message.is_object() {
            return Err(wrong_type(format!("messages[{i}]"), "an object", message));
        }
        let role = require_str(message, "role", || format!("messages[{i}].role"))?;
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', \
                     'user', 'function', 'tool', and 'developer'."
                ),
                Some(format!("messages[{i}].role")),
                Some("invalid_value"),
            ));
        }
        let content = field(message, "content");
        match content {
            None | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(other) => {
                return Err(wrong_type(format!("messages[{i}].content"), "one of a string or array of objects", other));
            }
        }
        if role == "tool" {
            let id = require_str(message, "tool_call_id", || format!("messages[{i}].tool_call_id"))?;
            if content.is_none() {
                return Err(missing(format!("messages[{i}].content")));
            }
            let Some((_, ids, answered)) = open.as_mut() else {
                return Err(ApiError::invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a \
                     preceeding message with 'tool_calls'.",
                    Some(format!("messages.[{i}].role")),
                    None,
                ));
            };
            if !ids.iter().any(|known| known == id) {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' \
                         of previous message."
                    ),
                    Some(format!("messages.[{i}].tool_call_id")),
                    None,
                ));
            }
            answered.insert(id.to_owned());
            continue;
        }
        if let Some(pending) = open.take() {
            unanswered_error(&pending)?;
        }
        match role {
            "assistant" => {
                let ids = validate_tool_calls(message, i)?;
                if ids.is_empty() && content.is_none() && field(message, "function_call").is_none() {
                    return Err(ApiError::invalid(
                        "Invalid value for 'content': expected a string, got null.",
                        Some(format!("messages.[{i}].content")),
                        None,
                    ));
                }
                if !ids.is_empty() {
                    open = Some((i, ids, HashSet::new()));
                }
            }
            "function" => {}
            _ => {
                if content.is_none() {
                    return Err(missing(format!("messages[{i}].content")));
                }
            }
        }
    }
    if let Some(pending) = open {
        unanswered_error(&pending)?;
    }
    Ok(())
}

fn unanswered_error((index, ids, answered): &(usize, Vec<String>, HashSet<String>)) -> Result<(), ApiError> {
    let unanswered: Vec<&str> = ids.iter().filter(|id| !answered.contains(*id)).map(String::as_str).collect();
    if unanswered.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding \
             to each 'tool_call_id'. The following tool_call_ids did not have response messages: \
             {}",
            unanswered.join(", ")
        ),
        Some(format!("messages.[{index}].role")),
        None,
    ))
}

/// Checks an assistant message's `tool_calls` and returns their ids.
fn validate_tool_calls(message: &Value, i: usize) -> Result<Vec<String>, ApiError> {
    let calls = match field(message, "tool_calls") {
        None => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(other) => {
            return Err(wrong_type(format!("messages[{i}].tool_calls"), "an array", other));
        }
    };
    let mut ids = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let p = |suffix: &str| format!("messages[{i}].tool_calls[{j}]{suffix}");
        if !call.is_object() {
            return Err(wrong_type(p(""), "an object", call));
        }
        let id = require_str(call, "id", || p(".id"))?;
        let kind = require_str(call, "type", || p(".type"))?;
        if kind != "function" {
            return Err(ApiError::invalid(
                format!("Invalid value: '{kind}'. Supported values are: 'function'."),
                Some(p(".type")),
                Some("invalid_value"),
            ));
        }
        let function = match field(call, "function") {
            None => return Err(missing(p(".function"))),
            Some(f @ Value::Object(_)) => f,
            Some(other) => return Err(wrong_type(p(".function"), "an object", other)),
        };
        require_str(function, "name", || p(".function.name"))?;
        require_str(function, "arguments", || p(".function.arguments"))?;
        ids.push(id.to_owned());
    }
    Ok(ids)
}

fn valid_function_name(name: &str) -> Result<(), (&'static str, String)> {
    let len = name.chars().count();
    if len == 0 {
        return Err((
            "string_below_min_length",
            "string too short. Expected a string with minimum length 1, but got an empty string \
             instead."
                .to_owned(),
        ));
    }
    if len > 64 {
        return Err((
            "string_above_max_length",
            format!(
                "string too long. Expected a string with maximum length 64, but got a string with \
                 length {len} instead."
            ),
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err((
            "invalid_value",
            "string does not match pattern. Expected a string that matches the pattern \
             '^[a-zA-Z0-9_-]+$'."
                .to_owned(),
        ));
    }
    Ok(())
}

fn validate_tools(tools: &Value) -> Result<(), ApiError> {
    let Value::Array(tools) = tools else {
        return Err(wrong_type("tools".into(), "an array of objects", tools));
    };
    for (i, tool) in tools.iter().enumerate() {
        let p = |suffix: &str| format!("tools[{i}]{suffix}");
        if !tool.is_object() {
            return Err(wrong_type(p(""), "an object", tool));
        }
        let kind = require_str(tool, "type", || p(".type"))?;
        if kind != "function" {
            return Err(ApiError::invalid(
                format!("Invalid value: '{kind}'. Supported values are: 'function'."),
                Some(p(".type")),
                Some("invalid_value"),
            ));
        }
        let function = match field(tool, "function") {
            None => return Err(missing(p(".function"))),
            Some(f @ Value::Object(_)) => f,
            Some(other) => return Err(wrong_type(p(".function"), "an object", other)),
        };
        let name = require_str(function, "name", || p(".function.name"))?;
        if let Err((code, detail)) = valid_function_name(name) {
            let param = p(".function.name");
            return Err(ApiError::invalid(format!("Invalid '{param}': {detail}"), Some(param), Some(code)));
        }
        if let Some(description) = field(function, "description")
            && !description.is_string()
        {
            return Err(wrong_type(p(".function.description"), "a string", description));
        }
        if let Some(parameters) = field(function, "parameters")
            && !parameters.is_object()
        {
            return Err(wrong_type(p(".function.parameters"), "an object", parameters));
        }
    }
    Ok(())
}

fn validate_sampling(body: &Value) -> Result<(), ApiError> {
    if let Some(temperature) = field(body, "temperature") {
        let Some(t) = temperature.as_f64() else {
            return Err(wrong_type("temperature".into(), "a number", temperature));
        };
        if t < 0.0 {
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, \
                     but got {t} instead."
                ),
                Some("temperature".into()),
                Some("decimal_below_min_value"),
            ));
        }
        if t > 2.0 {
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, \
                     but got {t} instead."
                ),
                Some("temperature".into()),
                Some("decimal_above_max_value"),
            ));
        }
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = field(body, key) {
            match value.as_i64() {
                None => return Err(wrong_type(key.into(), "an integer", value)),
                Some(n) if n < 1 => {
                    return Err(ApiError::invalid(
                        format!(
                            "Invalid '{key}': integer below minimum value. Expected a value >= \
                             1, but got {n} instead."
                        ),
                        Some(key.into()),
                        Some("integer_below_min_value"),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    // As the real API: stream_options only with a stream.
    if field(body, "stream_options").is_some_and(|o| !o.is_null())
        && field(body, "stream").and_then(Value::as_bool) != Some(true)
    {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options".into()),
            Some("invalid_value"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body_with(messages: Value) -> Value {
        json!({ "model": "m", "messages": messages })
    }

    fn param_of(body: &Value) -> Option<String> {
        validate(body).err().and_then(|e| e.param)
    }

    #[test]
    fn accepts_a_complete_tool_round_trip() {
        let body = body_with(json!([
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "b", "content": "1"},
            {"role": "tool", "tool_call_id": "a", "content": "2"},
            {"role": "assistant", "content": "done"}
        ]));
        assert_eq!(validate(&body), Ok(()));
    }

    #[test]
    fn rejects_structural_mistakes() {
        assert_eq!(param_of(&json!({"messages": []})).as_deref(), Some("model"));
        assert_eq!(param_of(&json!({"model": "m"})).as_deref(), Some("messages"));
        assert_eq!(param_of(&body_with(json!([]))).as_deref(), Some("messages"));
        assert_eq!(
            param_of(&body_with(json!([{"role": "robot", "content": "x"}]))).as_deref(),
            Some("messages[0].role")
        );
        // A tool message with no preceding tool_calls.
        assert_eq!(
            param_of(&body_with(json!([
                {"role": "user", "content": "u"},
                {"role": "tool", "tool_call_id": "x", "content": "r"}
            ])))
            .as_deref(),
            Some("messages.[1].role")
        );
        // Answering an id that was not asked for.
        let call = json!({"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}});
        assert_eq!(
            param_of(&body_with(json!([
                {"role": "user", "content": "u"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "zzz", "content": "r"}
            ])))
            .as_deref(),
            Some("messages.[2].tool_call_id")
        );
        // Unanswered tool call, at the end and in the middle.
        let unanswered = body_with(json!([
            {"role": "user", "content": "u"},
            {"role": "assistant", "tool_calls": [call]}
        ]));
        assert_eq!(param_of(&unanswered).as_deref(), Some("messages.[1].role"));
        let middle = body_with(json!([
            {"role": "user", "content": "u"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "user", "content": "again"}
        ]));
        let error = validate(&middle).err();
        assert!(error.is_some_and(|e| e.message.contains("did not have response messages: a")));
        // Arguments must be a JSON string, not an object.
        let object_args = body_with(json!([
            {"role": "user", "content": "u"},
            {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}}
            ]},
            {"role": "tool", "tool_call_id": "a", "content": "r"}
        ]));
        assert_eq!(param_of(&object_args).as_deref(), Some("messages[1].tool_calls[0].function.arguments"));
    }

    #[test]
    fn rejects_bad_tools_and_sampling() {
        let with_tools =
            |tools: Value| json!({"model": "m", "messages": [{"role": "user", "content": "u"}], "tools": tools});
        assert_eq!(param_of(&with_tools(json!([{"type": "retrieval"}]))).as_deref(), Some("tools[0].type"));
        assert_eq!(
            param_of(&with_tools(json!([{"type": "function", "function": {"name": "a.b"}}]))).as_deref(),
            Some("tools[0].function.name")
        );
        let long = "x".repeat(65);
        assert_eq!(
            param_of(&with_tools(json!([{"type": "function", "function": {"name": long}}]))).as_deref(),
            Some("tools[0].function.name")
        );
        assert_eq!(
            param_of(&with_tools(json!([
                {"type": "function", "function": {"name": "ok-name_1", "parameters": "{}"}}
            ])))
            .as_deref(),
            Some("tools[0].function.parameters")
        );
        assert_eq!(
            validate(&with_tools(json!([
                {"type": "function", "function": {"name": "ok-name_1", "parameters": {"type": "object"}}}
            ]))),
            Ok(())
        );
        let hot = json!({"model": "m", "messages": [{"role": "user", "content": "u"}], "temperature": 2.5});
        assert_eq!(param_of(&hot).as_deref(), Some("temperature"));
    }
}
