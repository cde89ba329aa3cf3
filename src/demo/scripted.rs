//! The demo's scripted "model": a deterministic stand-in for an LLM that
//! plays a plausible research assistant, so `agentry demo` runs the whole
//! pipeline with no API key.
//!
//! [`ScriptedResearcher`] is stateless: each reply is decided from the
//! conversation it is sent (only the current turn, i.e. the messages after
//! the last `user` message, counts):
//!
//! 1. no tool result yet and `search` offered → call `search` with a query
//!    derived from the user's request;
//! 2. a `search` result (or no `search` tool) and `save_research` offered →
//!    call `save_research` with a markdown write-up composed from the result;
//! 3. `save_research` answered → a short final answer naming the saved file.
//!
//! Everything it writes is labelled "(demo model)". There is no randomness.

use serde_json::{Value, json};

use super::model::{last_user_text, message_text, messages, tool_names};
use super::search_server::TOOL_NAME as SEARCH_TOOL;
use crate::actors::tool_executor::SAVE_RESEARCH as SAVE_TOOL;

/// Label included once in everything the scripted model writes.
const LABEL: &str = "(demo model)";

/// Most search hits used in a write-up.
const MAX_POINTS: usize = 5;

/// Phrases stripped from the front of a request to get a search query.
/// Longer phrases come before their prefixes.
const LEAD_INS: &[&str] = &[
    "research the topic of",
    "research the topic",
    "research the concept of",
    "research the question",
    "research about",
    "research on",
    "research into",
    "research",
    "now",
    "next",
    "also",
    "please",
    "can you",
    "could you",
    "would you",
    "kindly",
    "give me an overview of",
    "give an overview of",
    "an overview of",
    "overview of",
    "tell me about",
    "tell me what",
    "find out about",
    "find information on",
    "find information about",
    "look up",
    "look into",
    "write about",
    "write up",
    "summarize",
    "summarise",
    "investigate",
    "define",
    "definition of",
    "the definition of",
    "explain",
    "describe",
    "what is",
    "what are",
    "what's",
    "who is",
    "who are",
    "how does",
    "how do",
    "about",
    "the topic of",
    "the concept of",
    "a",
    "an",
    "the",
];

/// The demo's scripted research model. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptedResearcher;

/// What the researcher says next.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedReply {
    /// A final answer (`finish_reason: "stop"`).
    Answer(String),
    /// One tool call.
    Call {
        /// Tool name, as offered.
        name: String,
        /// Its arguments.
        arguments: Value,
    },
}

impl ScriptedResearcher {
    /// Creates the researcher.
    pub fn new() -> Self {
        ScriptedResearcher
    }

    /// The reply to a Chat Completions request body.
    pub fn respond(&self, request: &Value) -> ScriptedReply {
        let messages = messages(request);
        let question = last_user_text(request).unwrap_or_default();
        let query = derive_query(&question);
        let topic = short_topic(&query);
        let offered = tool_names(request);
        let search_tool = find_tool(&offered, SEARCH_TOOL);
        let save_tool = find_tool(&offered, SAVE_TOOL);

        let results = turn_results(messages);
        let is_search = |r: &&ToolResult| matches_tool(&r.name, SEARCH_TOOL);
        let search = results.iter().rev().find(is_search);
        let saved = results.iter().rev().find(|r| matches_tool(&r.name, SAVE_TOOL));
        let hits = search.map(Hits::from_result).unwrap_or_default();

        if let Some(saved) = saved {
            return ScriptedReply::Answer(final_answer(&topic, &query, &hits, Some(saved)));
        }
        if search.is_none()
            && let Some(tool) = search_tool
        {
            return ScriptedReply::Call { name: tool.to_owned(), arguments: json!({ "query": query }) };
        }
        if let Some(tool) = save_tool {
            let content = write_up(&topic, search.is_some(), &hits);
            return ScriptedReply::Call {
                name: tool.to_owned(),
                arguments: json!({ "topic": topic, "research_content": content }),
            };
        }
        ScriptedReply::Answer(final_answer(&topic, &query, &hits, None))
    }
}

/// A tool result in the current turn, with the name of the tool it answers.
#[derive(Debug, Clone, PartialEq)]
struct ToolResult {
    name: String,
    text: String,
    is_error: bool,
}

/// Tool results after the last user message, in order.
fn turn_results(messages: &[Value]) -> Vec<ToolResult> {
    let start = messages.iter().rposition(|m| role(m) == "user").map_or(0, |i| i + 1);
    let turn = &messages[start.min(messages.len())..];
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut results = Vec::new();
    for message in turn {
        match role(message) {
            "assistant" => {
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
                    names.push((id, name));
                }
            }
            "tool" => {
                let id = message.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = names.iter().rev().find(|(known, _)| *known == id).map_or("", |(_, name)| *name);
                let (text, is_error) = unwrap_tool_content(&message_text(message));
                results.push(ToolResult { name: name.to_owned(), text, is_error });
            }
            _ => {}
        }
    }
    results
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// Tool content may be plain text or the JSON of an MCP tool result
/// (`{"content":[{"type":"text","text":…}],"isError":…}`) or of its content
/// blocks. Returns the text and whether it reports an error.
fn unwrap_tool_content(raw: &str) -> (String, bool) {
    let trimmed = raw.trim();
    let starts_with_error = |s: &str| s.trim_start().get(..5).is_some_and(|p| p.eq_ignore_ascii_case("error"));
    let parsed: Option<Value> =
        if trimmed.starts_with('{') || trimmed.starts_with('[') { serde_json::from_str(trimmed).ok() } else { None };
    let Some(value) = parsed else {
        return (trimmed.to_owned(), starts_with_error(trimmed));
    };
    let flagged = value.get("isError").or_else(|| value.get("is_error")).and_then(Value::as_bool).unwrap_or(false);
    let blocks_text = |blocks: &Vec<Value>| {
        blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
    };
    let text = match &value {
        Value::Array(blocks) => blocks_text(blocks),
        Value::Object(object) => match object.get("content") {
            Some(Value::Array(blocks)) => blocks_text(blocks),
            Some(Value::String(s)) => s.clone(),
            _ => ["text", "error", "message"]
                .iter()
                .find_map(|k| object.get(*k).and_then(Value::as_str))
                .map_or_else(|| trimmed.to_owned(), str::to_owned),
        },
        _ => trimmed.to_owned(),
    };
    let is_error = flagged || starts_with_error(&text);
    (text, is_error)
}

/// The offered tool called `wanted`, or one namespaced as `…_wanted`,
/// `…__wanted`, `…-wanted` or `….wanted`.
fn find_tool<'a>(offered: &[&'a str], wanted: &str) -> Option<&'a str> {
    offered
        .iter()
        .find(|name| **name == wanted)
        .or_else(|| offered.iter().find(|name| matches_tool(name, wanted)))
        .copied()
}

fn matches_tool(name: &str, wanted: &str) -> bool {
    name == wanted || name.strip_suffix(wanted).is_some_and(|prefix| prefix.ends_with(['_', '-', '.', ':']))
}

/// Turns a request such as "Research the topic of Rust actors." into a
/// search query ("Rust actors").
pub fn derive_query(request: &str) -> String {
    let line = request.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut query = line;
    // "Topic: X", "Research question: X" → "X".
    if let Some((head, tail)) = query.split_once(':') {
        let head = head.to_ascii_lowercase();
        let tail = tail.trim();
        if !tail.is_empty() && ["topic", "research", "question", "subject", "query"].iter().any(|w| head.contains(w)) {
            query = tail;
        }
    }
    loop {
        let before = query;
        query = query
            .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '*' | '-' | ',' | ':'));
        for lead in LEAD_INS {
            if let Some(rest) = strip_prefix_ignore_case(query, lead)
                && rest.chars().next().is_none_or(|c| c.is_whitespace() || matches!(c, ':' | ','))
            {
                query = rest;
                break;
            }
        }
        if query == before {
            break;
        }
    }
    let query = query
        .trim_end_matches(|c: char| {
            c.is_whitespace() || matches!(c, '?' | '.' | '!' | '"' | '\'' | '`' | '*' | ':' | ';' | ',')
        })
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let query = if query.is_empty() { line.split_whitespace().collect::<Vec<_>>().join(" ") } else { query };
    let query = truncate_words(&query, 200);
    if query.is_empty() { "general knowledge".to_owned() } else { query }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// At most `max` characters, cut at a word boundary.
fn truncate_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() + word.chars().count() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_empty() { text.chars().take(max).collect() } else { out }
}

/// A short topic (≤ 60 characters) for the write-up's title.
fn short_topic(query: &str) -> String {
    truncate_words(query, 60)
}

/// One search hit parsed from a search tool's text output.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hit {
    title: String,
    url: Option<String>,
    snippet: String,
}

/// Parsed search results.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hits {
    hits: Vec<Hit>,
    /// URLs found anywhere in the text, in order, without duplicates.
    urls: Vec<String>,
    /// Set when the search failed; holds its first line.
    error: Option<String>,
}

impl Hits {
    fn from_result(result: &ToolResult) -> Hits {
        if result.is_error {
            let first = result.text.lines().next().unwrap_or("").trim();
            return Hits {
                error: Some(if first.is_empty() { "unknown error" } else { first }.to_owned()),
                ..Hits::default()
            };
        }
        parse_hits(&result.text)
    }

    fn sources(&self) -> Vec<(String, String)> {
        let mut sources: Vec<(String, String)> =
            self.hits.iter().filter_map(|h| h.url.clone().map(|u| (h.title.clone(), u))).collect();
        for url in &self.urls {
            if !sources.iter().any(|(_, known)| known == url) {
                sources.push((url.clone(), url.clone()));
            }
        }
        sources
    }
}

/// Parses the usual search-tool layout: numbered titles (`1. Title` or
/// `1. [Title](url)`), a `URL:` line or bare link, then snippet lines.
fn parse_hits(text: &str) -> Hits {
    let urls = extract_urls(text);
    let mut hits: Vec<Hit> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(title) = numbered(line) {
            let (title, url) = markdown_link(title);
            hits.push(Hit { title: title.trim_matches('*').trim().to_owned(), url, snippet: String::new() });
            continue;
        }
        let Some(hit) = hits.last_mut() else {
            continue;
        };
        let lower = line.to_ascii_lowercase();
        let url_line = ["url:", "link:", "source:"]
            .iter()
            .find_map(|p| lower.starts_with(p).then(|| line[p.len()..].trim()))
            .or_else(|| (lower.starts_with("http://") || lower.starts_with("https://")).then_some(line));
        match url_line {
            Some(url) if hit.url.is_none() => {
                hit.url = extract_urls(url).into_iter().next();
            }
            Some(_) => {}
            None => {
                let snippet =
                    line.strip_prefix("Snippet:").or_else(|| line.strip_prefix("snippet:")).unwrap_or(line).trim();
                if !hit.snippet.is_empty() {
                    hit.snippet.push(' ');
                }
                hit.snippet.push_str(snippet);
            }
        }
    }
    // Unstructured but non-empty text: keep it as a single hit.
    let lower = text.to_ascii_lowercase();
    if hits.is_empty() && !text.trim().is_empty() && !lower.contains("no results") {
        hits.push(Hit {
            title: "Search result".to_owned(),
            url: urls.first().cloned(),
            snippet: truncate_words(&text.split_whitespace().collect::<Vec<_>>().join(" "), 400),
        });
    }
    Hits { hits, urls, error: None }
}

/// `"3. Title"` / `"3) Title"` → `Some("Title")`.
fn numbered(line: &str) -> Option<&str> {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let rest = &line[digits..];
    let rest = rest.strip_prefix('.').or_else(|| rest.strip_prefix(')'))?;
    rest.starts_with(' ').then(|| rest.trim())
}

/// `"[Title](url)"` → `("Title", Some(url))`; anything else → `(text, None)`.
fn markdown_link(text: &str) -> (&str, Option<String>) {
    if let Some(rest) = text.strip_prefix('[')
        && let Some((title, tail)) = rest.split_once("](")
        && let Some((url, _)) = tail.split_once(')')
    {
        return (title, Some(url.to_owned()));
    }
    (text, None)
}

fn extract_urls(text: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for token in text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | '"')) {
        let Some(start) = token.find("http://").or_else(|| token.find("https://")) else {
            continue;
        };
        let url = token[start..].trim_end_matches(['.', ',', ';', ':', '!', '?', '\'', '`', '*']);
        if url.len() > "https://".len() && !urls.iter().any(|u| u == url) {
            urls.push(url.to_owned());
        }
    }
    urls
}

/// First `n` sentences of `text`.
fn sentences(text: &str, n: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut chars = text.char_indices().peekable();
    let mut start = 0;
    while let Some((i, c)) = chars.next() {
        let at_end = chars.peek().is_none_or(|(_, next)| next.is_whitespace());
        if matches!(c, '.' | '!' | '?') && at_end {
            out.push_str(text[start..=i].trim());
            out.push(' ');
            start = i + c.len_utf8();
            count += 1;
            if count == n {
                return out.trim_end().to_owned();
            }
        }
    }
    out.push_str(text[start..].trim());
    out.trim().to_owned()
}

/// The markdown saved with `save_research`.
fn write_up(topic: &str, searched: bool, hits: &Hits) -> String {
    let mut md = format!(
        "# {}\n\n_{LABEL} Written by agentry's scripted demo model from the built-in demo \
         search corpus; this is not real research._\n\n",
        capitalized(topic)
    );
    if !searched {
        md.push_str(&format!(
            "## Summary\n\nNo search tool was available, so this note only records the \
             question: **{topic}**. Run agentry with a real model and a search server to \
             research it properly.\n\n## Sources\n\n- None: no search was performed.\n"
        ));
        return md;
    }
    if hits.hits.is_empty() {
        let why = match &hits.error {
            Some(error) => format!("the search failed ({error})"),
            None => "the search returned no results".to_owned(),
        };
        md.push_str(&format!(
            "## Summary\n\nNo sources were found for **{topic}**: {why}. Try a broader or \
             differently worded query.\n\n## Sources\n\n- None found.\n"
        ));
        return md;
    }
    let first = &hits.hits[0];
    let definition = if first.snippet.is_empty() {
        format!("{topic} is covered by \"{}\".", first.title)
    } else {
        sentences(&first.snippet, 2)
    };
    md.push_str(&format!("## Definition\n\n{definition}\n\n## Key points\n\n"));
    for hit in hits.hits.iter().take(MAX_POINTS) {
        let point = sentences(&hit.snippet, 1);
        if point.is_empty() {
            md.push_str(&format!("- **{}**\n", hit.title));
        } else {
            md.push_str(&format!("- **{}**: {point}\n", hit.title));
        }
    }
    md.push_str("\n## Sources\n\n");
    let sources = hits.sources();
    if sources.is_empty() {
        md.push_str("- No links were given in the search results.\n");
    }
    for (i, (title, url)) in sources.iter().enumerate() {
        if title == url {
            md.push_str(&format!("{}. <{url}>\n", i + 1));
        } else {
            md.push_str(&format!("{}. [{title}]({url})\n", i + 1));
        }
    }
    md
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The file a `save_research` result names, if any.
fn saved_path(text: &str) -> Option<String> {
    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text.trim()) {
        return ["path", "file", "file_path", "filename", "saved_to", "location"]
            .iter()
            .find_map(|k| object.get(*k).and_then(Value::as_str))
            .map(str::to_owned);
    }
    text.split_whitespace()
        .map(|t| {
            t.trim_matches(|c: char| matches!(c, '`' | '\'' | '"' | '(' | ')' | '[' | ']' | ',' | ';' | ':'))
                .trim_end_matches('.')
        })
        .find(|t| {
            let lower = t.to_ascii_lowercase();
            !lower.contains("://")
                && t.len() > 3
                && ([".md", ".markdown", ".txt", ".json", ".html"].iter().any(|ext| lower.ends_with(ext))
                    || (t.contains('/') && !t.ends_with('/')))
        })
        .map(str::to_owned)
}

/// The closing assistant message (2–4 sentences).
fn final_answer(topic: &str, query: &str, hits: &Hits, saved: Option<&ToolResult>) -> String {
    let definition = hits.hits.first().map(|h| sentences(&h.snippet, 1)).filter(|s| !s.is_empty());
    let mut answer = format!("{LABEL} ");
    if let Some(definition) = &definition {
        answer.push_str(definition);
        answer.push(' ');
    }
    let n = hits.sources().len();
    let found = match (n, &hits.error) {
        (_, Some(_)) => format!("The search for \"{query}\" failed, so I found no sources"),
        (0, None) => format!("I found no sources for \"{query}\" in the demo search corpus"),
        (1, None) => format!("I found 1 source on \"{query}\" in the demo search corpus"),
        (n, None) => format!("I found {n} sources on \"{query}\" in the demo search corpus"),
    };
    match saved {
        Some(result) if result.is_error => {
            let first = result.text.lines().next().unwrap_or("").trim();
            answer.push_str(&format!("{found}, but saving the write-up on {topic} failed: {first}"));
            if !answer.ends_with(['.', '!', '?']) {
                answer.push('.');
            }
        }
        Some(result) => match saved_path(&result.text) {
            Some(path) => answer.push_str(&format!("{found} and saved the write-up on {topic} to `{path}`.")),
            None => answer.push_str(&format!("{found} and saved the write-up on {topic} with {SAVE_TOOL}.")),
        },
        None => answer.push_str(&format!("{found}; nothing was saved.")),
    }
    answer.push_str(" This answer comes from the scripted demo model, not a real LLM.");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH_OUTPUT: &str = "Search results for \"rust actors\" (2 of 2 matches, demo corpus):\n\n\
        1. The actor model\n   URL: https://example.org/demo/actor-model\n   \
        The actor model treats actors as the universal primitives of concurrent computation. \
        Actors communicate only by messages.\n\n\
        2. Ractor: actors for Rust\n   URL: https://example.org/demo/ractor\n   \
        Ractor is an actor framework for Rust on tokio. It supports supervision trees.\n";

    fn tools(names: &[&str]) -> Value {
        Value::Array(
            names
                .iter()
                .map(|n| json!({"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}))
                .collect(),
        )
    }

    fn ask(messages: &Value, offered: &[&str]) -> ScriptedReply {
        let body = json!({"model": "m", "messages": messages, "tools": tools(offered)});
        ScriptedResearcher::new().respond(&body)
    }

    fn call_of(reply: &ScriptedReply) -> (String, Value) {
        match reply {
            ScriptedReply::Call { name, arguments } => (name.clone(), arguments.clone()),
            other => panic!("expected a tool call, got {other:?}"),
        }
    }

    fn text_of(reply: &ScriptedReply) -> String {
        match reply {
            ScriptedReply::Answer(text) => text.clone(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn derives_queries() {
        assert_eq!(derive_query("Define machine learning."), "machine learning");
        assert_eq!(derive_query("What is the actor model?"), "actor model");
        assert_eq!(derive_query("Research the topic of Rust async runtimes"), "Rust async runtimes");
        assert_eq!(derive_query("Topic: OpenTelemetry tracing"), "OpenTelemetry tracing");
        assert_eq!(derive_query("please explain   MCP\nmore text"), "MCP");
        assert_eq!(derive_query("Researchers in AI"), "Researchers in AI");
        assert_eq!(derive_query("What is A/B testing?"), "A/B testing");
        assert_eq!(derive_query("Define: the actor model"), "actor model");
        assert_eq!(derive_query("   "), "general knowledge");
    }

    #[test]
    fn parses_search_output() {
        let hits = parse_hits(SEARCH_OUTPUT);
        assert_eq!(hits.hits.len(), 2);
        assert_eq!(hits.hits[1].title, "Ractor: actors for Rust");
        assert_eq!(hits.hits[1].url.as_deref(), Some("https://example.org/demo/ractor"));
        assert!(hits.hits[0].snippet.starts_with("The actor model treats"));
        assert!(parse_hits("No results found for \"x\".").hits.is_empty());
    }

    #[test]
    fn unwraps_mcp_json_results() {
        let (text, error) = unwrap_tool_content(r#"{"content":[{"type":"text","text":"boom"}],"isError":true}"#);
        assert_eq!((text.as_str(), error), ("boom", true));
        let (_, error) = unwrap_tool_content("Error: search unavailable");
        assert!(error);
        let (text, error) = unwrap_tool_content(r#"[{"type":"text","text":"ok"}]"#);
        assert_eq!((text.as_str(), error), ("ok", false));
    }

    #[test]
    fn finds_saved_paths() {
        assert_eq!(
            saved_path("Saved research to research/rust-actors.md.").as_deref(),
            Some("research/rust-actors.md")
        );
        assert_eq!(saved_path(r#"{"path":"out/x.md"}"#).as_deref(), Some("out/x.md"));
        assert_eq!(saved_path("done"), None);
    }

    #[test]
    fn plays_the_full_conversation() {
        let offered = [SEARCH_TOOL, SAVE_TOOL];
        let mut messages = vec![
            json!({"role": "system", "content": "You are a researcher."}),
            json!({"role": "user", "content": "Research the topic of Rust actors"}),
        ];
        let first = ask(&Value::Array(messages.clone()), &offered);
        assert_eq!(call_of(&first), (SEARCH_TOOL.to_owned(), json!({"query": "Rust actors"})));

        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"query\":\"Rust actors\"}"}}
        ]}));
        messages.push(json!({"role": "tool", "tool_call_id": "call_1", "content": SEARCH_OUTPUT}));
        let second = ask(&Value::Array(messages.clone()), &offered);
        let (name, args) = call_of(&second);
        assert_eq!(name, SAVE_TOOL);
        assert_eq!(args["topic"], "Rust actors");
        let content = args["research_content"].as_str().unwrap_or_default();
        assert!(content.contains("## Definition"), "{content}");
        assert!(content.contains("- **Ractor: actors for Rust**: Ractor is an actor framework for Rust on tokio."));
        assert!(content.contains("[The actor model](https://example.org/demo/actor-model)"));
        assert_eq!(content.matches(LABEL).count(), 1);

        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "save_research", "arguments": "{}"}}
        ]}));
        messages.push(json!({"role": "tool", "tool_call_id": "call_2", "content": "Saved to research/rust_actors.md"}));
        let last = text_of(&ask(&Value::Array(messages), &offered));
        assert!(last.contains("`research/rust_actors.md`"), "{last}");
        assert!(last.contains("2 sources"), "{last}");
        assert_eq!(last.matches(LABEL).count(), 1);
    }

    #[test]
    fn reports_failed_or_missing_search() {
        let messages = json!([
            {"role": "user", "content": "What is quantum gravity?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c", "content": "Error: upstream timed out"}
        ]);
        let (_, args) = call_of(&ask(&messages, &[SEARCH_TOOL, SAVE_TOOL]));
        let content = args["research_content"].as_str().unwrap_or_default();
        assert!(content.contains("No sources were found"), "{content}");
        assert!(content.contains("upstream timed out"), "{content}");

        let only_user = json!([{"role": "user", "content": "Define entropy"}]);
        let (name, args) = call_of(&ask(&only_user, &[SAVE_TOOL]));
        assert_eq!(name, SAVE_TOOL);
        assert!(args["research_content"].as_str().unwrap_or_default().contains("No search tool"));

        let answer = text_of(&ask(&only_user, &[]));
        assert!(answer.starts_with(LABEL));
    }

    #[test]
    fn a_new_user_turn_starts_over() {
        let messages = json!([
            {"role": "user", "content": "Define MCP"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c", "content": SEARCH_OUTPUT},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "Now define Docker"}
        ]);
        let (name, args) = call_of(&ask(&messages, &[SEARCH_TOOL, SAVE_TOOL]));
        assert_eq!((name.as_str(), &args), (SEARCH_TOOL, &json!({"query": "Docker"})));
    }
}
