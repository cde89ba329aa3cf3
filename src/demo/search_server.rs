//! The demo's loopback MCP search server.
//!
//! [`SearchServer`] serves one MCP tool, `search(query, max_results?)`, over
//! Streamable HTTP at `http://127.0.0.1:PORT/mcp`. It searches a small
//! corpus embedded in the binary (`corpus.md` next to this file: invented
//! articles on machine learning, LLMs, Rust, actors, Docker, MCP,
//! OpenTelemetry and so on, with placeholder `https://example.org/demo/…`
//! URLs) with simple term scoring, and answers like a web-search tool:
//! numbered results, each with a title, a URL and a snippet.
//!
//! The MCP side is rmcp's [`StreamableHttpService`] driven by a hand-written
//! [`ServerHandler`] ([`DemoSearchHandler`]), mounted in an axum router.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use super::loopback::Loopback;

/// Name the server reports in its MCP `serverInfo`.
pub const SERVER_NAME: &str = "agentry-demo-search";
/// Name of the single tool the server offers.
pub const TOOL_NAME: &str = "search";
/// Results returned when `max_results` is not given.
pub const DEFAULT_MAX_RESULTS: usize = 5;
/// Upper bound on `max_results`.
pub const MAX_RESULTS_LIMIT: usize = 10;

/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 320;

/// The embedded corpus source.
const CORPUS_SOURCE: &str = include_str!("corpus.md");

/// Words ignored when scoring.
const STOPWORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "by",
    "can",
    "do",
    "does",
    "for",
    "from",
    "how",
    "in",
    "is",
    "it",
    "its",
    "of",
    "on",
    "or",
    "that",
    "the",
    "their",
    "this",
    "to",
    "use",
    "used",
    "what",
    "when",
    "which",
    "who",
    "why",
    "with",
    "about",
    "define",
    "definition",
    "explain",
    "overview",
    "tell",
    "me",
    "research",
    "topic",
];

/// One article of the embedded corpus.
#[derive(Debug)]
struct Entry {
    title: String,
    url: String,
    body: String,
    title_terms: Vec<String>,
    body_terms: Vec<String>,
}

static CORPUS: LazyLock<Vec<Entry>> = LazyLock::new(|| parse_corpus(CORPUS_SOURCE));

/// Parses `## Title` / `url: …` / paragraph blocks; HTML comments are skipped.
fn parse_corpus(source: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut current: Option<(String, String, Vec<&str>)> = None;
    let mut in_comment = false;
    let mut finish = |current: Option<(String, String, Vec<&str>)>| {
        if let Some((title, url, lines)) = current {
            let body = lines.join(" ");
            entries.push(Entry { title_terms: terms(&title), body_terms: terms(&body), title, url, body });
        }
    };
    for line in source.lines() {
        let line = line.trim();
        if in_comment {
            in_comment = !line.contains("-->");
            continue;
        }
        if line.starts_with("<!--") {
            in_comment = !line.contains("-->");
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            finish(current.take());
            current = Some((title.trim().to_owned(), String::new(), Vec::new()));
        } else if let Some((_, url, lines)) = current.as_mut() {
            match line.strip_prefix("url:") {
                Some(link) if url.is_empty() => *url = link.trim().to_owned(),
                _ if line.is_empty() => {}
                _ => lines.push(line),
            }
        }
    }
    finish(current);
    entries
}

/// Lower-cased, lightly stemmed terms, without stopwords.
fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| stem(&w.to_lowercase()))
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Crude plural stripping: "actors" → "actor", "llms" → "llm".
fn stem(word: &str) -> String {
    if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        word[..word.len() - 1].to_owned()
    } else {
        word.to_owned()
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// Article title.
    pub title: String,
    /// Placeholder URL of the article.
    pub url: String,
    /// The article text, shortened to a snippet.
    pub snippet: String,
    /// Relevance score (higher is better).
    pub score: u32,
}

/// Searches the embedded corpus; best matches first, at most `max_results`.
///
/// Scoring is a small TF-IDF: each query term counts more in a title than
/// in a body and more when few articles contain it; articles matching every
/// term get a bonus, and weak matches (under a third of the best score) are
/// dropped.
pub fn search(query: &str, max_results: usize) -> Vec<SearchHit> {
    let mut query_terms: Vec<String> = Vec::new();
    for term in terms(query) {
        if !query_terms.contains(&term) {
            query_terms.push(term);
        }
    }
    if query_terms.is_empty() {
        return Vec::new();
    }
    let weights: Vec<f64> = query_terms
        .iter()
        .map(|term| {
            let df = CORPUS.iter().filter(|e| matches(&e.title_terms, term) + matches(&e.body_terms, term) > 0).count();
            1.0 + (CORPUS.len() as f64 / (1.0 + df as f64)).ln().max(0.0)
        })
        .collect();
    let mut scored: Vec<(f64, usize)> = CORPUS
        .iter()
        .enumerate()
        .map(|(i, entry)| (score(entry, &query_terms, &weights), i))
        .filter(|(score, _)| *score > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let best = scored.first().map_or(0.0, |(s, _)| *s);
    scored
        .into_iter()
        .take_while(|(score, _)| *score >= best / 3.0)
        .take(max_results)
        .map(|(score, i)| {
            let entry = &CORPUS[i];
            SearchHit {
                title: entry.title.clone(),
                url: entry.url.clone(),
                snippet: snippet(&entry.body),
                // Scores are small positive numbers; keep one decimal.
                score: (score * 10.0).round().clamp(0.0, f64::from(u32::MAX)) as u32,
            }
        })
        .collect()
}

/// Occurrences of `term` in `doc`: exact matches count double, and words
/// that merely start with a 4+ letter term ("embed" → "embedding") once.
fn matches(doc: &[String], term: &str) -> usize {
    let exact = doc.iter().filter(|t| *t == term).count();
    let prefix = if term.len() >= 4 { doc.iter().filter(|t| *t != term && t.starts_with(term)).count() } else { 0 };
    exact * 2 + prefix
}

fn score(entry: &Entry, query_terms: &[String], weights: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut matched = 0;
    for (term, weight) in query_terms.iter().zip(weights) {
        let in_title = matches(&entry.title_terms, term);
        let in_body = matches(&entry.body_terms, term).min(6);
        if in_title + in_body > 0 {
            matched += 1;
        }
        total += weight * (in_title * 4 + in_body) as f64;
    }
    if matched == query_terms.len() && matched > 1 {
        total *= 1.5;
    }
    total
}

/// The body cut to [`SNIPPET_CHARS`] at a word boundary.
fn snippet(body: &str) -> String {
    if body.chars().count() <= SNIPPET_CHARS {
        return body.to_owned();
    }
    let mut out = String::new();
    for word in body.split_whitespace() {
        if out.chars().count() + word.chars().count() + 1 > SNIPPET_CHARS {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.push('…');
    out
}

/// Formats hits the way a web-search tool does.
pub fn format_results(query: &str, hits: &[SearchHit], total_matches: usize) -> String {
    if hits.is_empty() {
        return format!("No results found for \"{query}\" in the agentry demo corpus.");
    }
    let mut text = format!(
        "Search results for \"{query}\" (showing {} of {total_matches} matches from the agentry \
         demo corpus):\n",
        hits.len()
    );
    for (i, hit) in hits.iter().enumerate() {
        text.push_str(&format!("\n{}. {}\n   URL: {}\n   {}\n", i + 1, hit.title, hit.url, hit.snippet));
    }
    text
}

/// The `search` tool definition (JSON Schema input, read-only annotations).
pub fn search_tool() -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "minLength": 1,
                "description": "What to search for, as a few keywords (e.g. \"actor model supervision\")."
            },
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_RESULTS_LIMIT,
                "default": DEFAULT_MAX_RESULTS,
                "description": "Maximum number of results to return."
            }
        },
        "required": ["query"],
        "additionalProperties": false
    });
    let schema: JsonObject = match schema {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    };
    Tool::new(
        TOOL_NAME,
        "Search the agentry demo corpus, a small built-in set of short articles on machine \
         learning, LLMs, agents, Rust, async, actors, Docker, MCP, OpenTelemetry and related \
         topics. Returns numbered results, each with a title, a URL and a snippet. Demo data: \
         the articles and URLs are placeholders, not real web pages.",
        Arc::new(schema),
    )
    .with_title("Demo search")
    .with_annotations(
        ToolAnnotations::with_title("Demo search")
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false),
    )
}

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// Runs one `search` call from its JSON arguments.
fn run_search(arguments: Option<&JsonObject>) -> CallToolResult {
    let empty = JsonObject::new();
    let arguments = arguments.unwrap_or(&empty);
    let query = match arguments.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.trim(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return tool_error("Error: 'query' is required and must be a non-empty string.");
        }
        Some(_) => return tool_error("Error: 'query' must be a string."),
    };
    let max_results = match arguments.get("max_results") {
        None | Some(Value::Null) => DEFAULT_MAX_RESULTS,
        Some(value) => match value.as_i64() {
            Some(n) => usize::try_from(n.clamp(1, MAX_RESULTS_LIMIT as i64)).unwrap_or(1),
            None => return tool_error("Error: 'max_results' must be an integer."),
        },
    };
    let all = search(query, CORPUS.len());
    let total = all.len();
    let hits: Vec<SearchHit> = all.into_iter().take(max_results).collect();
    CallToolResult::success(vec![ContentBlock::text(format_results(query, &hits, total))])
}

/// The MCP [`ServerHandler`] behind [`SearchServer`]; usable with any rmcp transport too.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoSearchHandler;

impl ServerHandler for DemoSearchHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Demo search server for `agentry demo`: call `search` with a few keywords. \
                 Results come from a small built-in corpus with placeholder URLs.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![search_tool()]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != TOOL_NAME {
            return Err(ErrorData::invalid_params(Cow::Owned(format!("Unknown tool: {}", request.name)), None));
        }
        Ok(run_search(request.arguments.as_ref()).into())
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        (name == TOOL_NAME).then(search_tool)
    }
}

/// Serves `handler` over Streamable HTTP at `/mcp` on `addr` (port 0: any free port). The test
/// kit serves its own handlers (e.g. one that answers slowly) through this too.
pub async fn serve_mcp<H>(addr: SocketAddr, handler: H) -> std::io::Result<Loopback>
where
    H: ServerHandler + Clone + Send + Sync + 'static,
{
    Loopback::start(addr, "demo MCP search server", move |cancel| {
        let config = StreamableHttpServerConfig::default()
            .with_sse_keep_alive(None)
            .with_cancellation_token(cancel.child_token());
        let service: StreamableHttpService<H, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(handler.clone()), Default::default(), config);
        axum::Router::new().route_service("/mcp", service)
    })
    .await
}

/// The running demo MCP search server. Stops on [`shutdown`](Self::shutdown) or when dropped.
#[derive(Debug)]
pub struct SearchServer {
    server: Loopback,
}

impl SearchServer {
    /// Binds `127.0.0.1:0` and serves the MCP endpoint at `/mcp`.
    pub async fn start() -> std::io::Result<SearchServer> {
        let server = serve_mcp(SocketAddr::from(([127, 0, 0, 1], 0)), DemoSearchHandler).await?;
        Ok(Self { server })
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        mcp_url(self.server.addr())
    }

    /// The MCP endpoint as a URL.
    pub fn endpoint(&self) -> url::Url {
        url::Url::parse(&self.url()).expect("an IP address and port make a URL")
    }

    /// Stops the server, closing MCP sessions, and waits briefly for it.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The MCP endpoint of a server from [`serve_mcp`].
pub fn mcp_url(addr: SocketAddr) -> String {
    format!("http://{addr}/mcp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_parses() {
        assert!((15..=25).contains(&CORPUS.len()), "{} entries", CORPUS.len());
        for entry in CORPUS.iter() {
            assert!(entry.url.starts_with("https://example.org/demo/"), "{entry:?}");
            assert!(entry.body.len() > 80, "{entry:?}");
            assert!(!entry.title.is_empty());
        }
    }

    #[test]
    fn finds_relevant_articles() {
        let top = |q: &str| search(q, 1).first().map(|h| h.title.clone()).unwrap_or_default();
        assert_eq!(top("actor model"), "The actor model");
        assert_eq!(top("Rust actors"), "Actors in Rust with ractor");
        assert_eq!(top("Model Context Protocol"), "Model Context Protocol (MCP)");
        assert_eq!(top("OpenTelemetry"), "OpenTelemetry");
        assert_eq!(top("W3C traceparent header"), "OpenTelemetry");
        assert_eq!(top("docker"), "Docker containers");
        assert_eq!(top("LLMs"), "Large language models (LLMs)");
        assert!(search("what is the", 5).is_empty());
        assert!(search("zzzqqq", 5).is_empty());
        assert_eq!(search("learning", 3).len(), 3);
    }

    #[test]
    fn tool_validates_arguments() {
        let args = |v: Value| match v {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        };
        assert_eq!(run_search(None).is_error, Some(true));
        assert_eq!(run_search(Some(&args(json!({"query": "  "})))).is_error, Some(true));
        assert_eq!(run_search(Some(&args(json!({"query": "rust", "max_results": "x"})))).is_error, Some(true));
        let ok = run_search(Some(&args(json!({"query": "rust", "max_results": 2}))));
        assert_eq!(ok.is_error, Some(false));
        let text = match ok.content.first() {
            Some(ContentBlock::Text(t)) => t.text.clone(),
            _ => String::new(),
        };
        assert!(text.starts_with("Search results for \"rust\" (showing 2 of"), "{text}");
        assert!(text.contains("\n1. ") && text.contains("\n2. ") && !text.contains("\n3. "));
        assert!(text.contains("   URL: https://example.org/demo/"));
    }

    #[test]
    fn tool_definition_is_read_only() {
        let tool = serde_json::to_value(search_tool()).unwrap_or_default();
        assert_eq!(tool["annotations"]["readOnlyHint"], true);
        assert_eq!(tool["inputSchema"]["required"], json!(["query"]));
    }
}
