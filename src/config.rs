//! Typed, validated settings, layered with the `config` crate.
//!
//! Layers, later wins (`DESIGN.md` §5):
//! 1. `config/default.toml`, embedded in the binary;
//! 2. the user's file (`--config`, TOML, YAML or JSON);
//! 3. `AGENTRY__SECTION__KEY` environment variables (e.g. `AGENTRY__BATCH__CONCURRENCY=8`);
//! 4. the variables the Python agent read: `MODEL_RUNNER_URL`, `MODEL_RUNNER_MODEL`,
//!    `OPENAI_MODEL_NAME`, `OPENAI_BASE_URL`, `MCP_SERVER_URL`, `QUESTION`;
//! 5. command-line flags ([`Overrides`]).
//!
//! Every error names the key and the layer it came from (file path or variable name). The
//! environment is passed in as a map, never read from the process here, so tests need no
//! `set_var`. Secret *values* never pass through this module: it only names secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::llm::BaseUrl;
use crate::llm::client::ClientPolicy;
use crate::llm::rate_limit::LimitConfig;
use crate::secrets::SecretSpec;

/// The embedded defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of agentry's own environment overrides (`AGENTRY__BATCH__CONCURRENCY`).
const ENV_PREFIX: &str = "AGENTRY";

/// A configuration problem. Each variant says where it is and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The user's file could not be read or parsed.
    #[error("cannot read config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key is unknown or has a value of the wrong type.
    #[error("{key}: {message} (set in {origin})")]
    Key {
        /// Dotted key, e.g. `batch.concurrency`.
        key: String,
        /// What is wrong with it.
        message: String,
        /// The layer that set it: a file path, a variable name, or "the defaults".
        origin: String,
    },
    /// A value parsed but makes no sense.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// All settings, as the layers resolve them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The agent: prompt, turns, timeouts.
    pub agent: AgentSettings,
    /// The batch of questions.
    pub batch: BatchSettings,
    /// Model routes and HTTP behaviour.
    pub model: ModelSettings,
    /// Where secrets live and how often they are re-read.
    pub secrets: SecretSettings,
    /// MCP servers.
    pub mcp: McpSettings,
    /// Logs, traces and metrics.
    pub telemetry: TelemetrySettings,
}

impl Settings {
    /// Every secret the settings name: the API key first, then each MCP server's bearer token.
    pub fn secret_specs(&self) -> Vec<SecretSpec> {
        let api_key = SecretSpec {
            name: self.model.cloud.api_key_secret.clone(),
            placeholders: self.model.cloud.placeholder_keys.clone(),
        };
        let tokens =
            self.mcp.servers.iter().filter(|s| !s.token_secret.is_empty()).map(|s| SecretSpec::new(&s.token_secret));
        std::iter::once(api_key).chain(tokens).collect()
    }
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Agent name, used in files, the report and spans.
    pub name: String,
    /// System prompt with `{question}` substituted.
    pub system_prompt: String,
    /// Most model calls per question.
    pub max_turns: u32,
    /// Deadline for one question.
    #[serde(with = "humantime_serde")]
    pub question_timeout: Duration,
}

/// `[batch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Inline questions.
    pub questions: Vec<String>,
    /// A file of questions, one per line (empty: none).
    pub questions_file: PathBuf,
    /// Questions answered at once.
    pub concurrency: usize,
    /// Directory for research files.
    pub output_dir: PathBuf,
    /// Report path (empty: `<output_dir>/report.json`).
    pub report: PathBuf,
    /// Grace period for in-flight questions after Ctrl-C / SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// What the batch may spend (`[batch.budget]`).
    #[serde(default)]
    pub budget: BudgetSettings,
}

/// `[batch.budget]`: what the whole batch may spend on model calls. 0 means no limit. With
/// `--shard i/n` each shard takes 1/n of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Input plus output tokens (cached input included), 0: no limit.
    pub max_tokens: u64,
    /// Cost, priced by `model.{cloud,local}.price` (same currency as the prices), 0: no limit.
    pub max_cost: f64,
}

impl BudgetSettings {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_tokens > 0 || self.max_cost > 0.0
    }
}

/// `[model.cloud.price]` / `[model.local.price]`: what a route's tokens cost, per million, in
/// whatever currency the budget's `max_cost` uses. 0 means free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Price {
    /// Per million input tokens not read from the provider's cache.
    pub input_per_million: f64,
    /// Per million input tokens read from the provider's cache (`cached_tokens`).
    pub cached_input_per_million: f64,
    /// Per million output tokens.
    pub output_per_million: f64,
}

impl Price {
    /// Whether every token is free.
    pub fn is_free(&self) -> bool {
        self.input_per_million == 0.0 && self.cached_input_per_million == 0.0 && self.output_per_million == 0.0
    }
}

impl BatchSettings {
    /// The report path, defaulting to `<output_dir>/report.json`.
    pub fn report_path(&self) -> PathBuf {
        if self.report.as_os_str().is_empty() { self.output_dir.join("report.json") } else { self.report.clone() }
    }
}

/// Where questions go when the cloud key is absent or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Use the local model.
    Local,
    /// Fail the question.
    None,
}

/// `[model]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Where questions go without a usable cloud key.
    pub fallback: Fallback,
    /// Sampling temperature.
    pub temperature: f32,
    /// Completion token limit.
    pub max_tokens: u32,
    /// Ask for streamed answers.
    pub stream: bool,
    /// How long a streamed answer may take to begin.
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
    /// The longest gap between two pieces of an answer.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deadline for one HTTP request, however long its answer keeps coming.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries after transient failures.
    pub max_retries: u32,
    /// Smallest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    /// Largest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// The OpenAI (or compatible) cloud route.
    pub cloud: CloudModel,
    /// The local (Docker Model Runner) route.
    pub local: LocalModel,
}

impl ModelSettings {
    /// What the HTTP client does: streaming, timeouts, retries.
    pub fn client_policy(&self) -> ClientPolicy {
        ClientPolicy {
            stream: self.stream,
            first_token_timeout: self.first_token_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_retries: self.max_retries,
            min_delay: self.retry_min_delay,
            max_delay: self.retry_max_delay,
        }
    }
}

/// `[model.cloud]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudModel {
    /// OpenAI-compatible base URL.
    pub base_url: BaseUrl,
    /// Model name.
    pub model: String,
    /// Name of the API key secret.
    pub api_key_secret: String,
    /// Values that mean "no key".
    pub placeholder_keys: Vec<String>,
    /// Configured rate limits (headers from the server win).
    #[serde(default)]
    pub rate_limit: LimitConfig,
    /// What its tokens cost (for `[batch.budget]` and the report).
    #[serde(default)]
    pub price: Price,
}

/// `[model.local]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalModel {
    /// OpenAI-compatible base URL.
    pub base_url: BaseUrl,
    /// Model name.
    pub model: String,
    /// Configured rate limits (headers from the server win).
    #[serde(default)]
    pub rate_limit: LimitConfig,
    /// What its tokens cost (for `[batch.budget]` and the report).
    #[serde(default)]
    pub price: Price,
}

/// `[secrets]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    /// Directory of secret files (`/run/secrets`).
    pub dir: PathBuf,
    /// How often sources are re-read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// `[mcp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpSettings {
    /// Deadline for connecting and initialising one server.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for one tool call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How long a tool call waits for a restarting session.
    #[serde(with = "humantime_serde")]
    pub restart_wait: Duration,
    /// Most requests in flight at once on one Streamable HTTP session.
    pub max_concurrent_calls: usize,
    /// How failed sessions are restarted.
    pub restart: RestartSettings,
    /// The servers.
    #[serde(default)]
    pub servers: Vec<McpServerSettings>,
}

/// `[mcp.restart]`: exponential backoff with jitter, a limit within a window, then down.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSettings {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Restarts allowed within `window`; one more marks the server down.
    pub max_restarts: usize,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a down server stays down before the next attempt.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

/// How to reach an MCP server, as written in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// Legacy SSE when the URL path ends in `/sse`, else Streamable HTTP.
    #[default]
    Auto,
    /// Legacy HTTP+SSE (2024-11-05).
    Sse,
    /// Streamable HTTP.
    StreamableHttp,
    /// A child process over stdin/stdout.
    Stdio,
}

/// `[[mcp.servers]]`: one server, its endpoint resolved when the settings are read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "McpServerEntry", into = "McpServerEntry")]
pub struct McpServerSettings {
    /// Unique name (used in logs, the report and tool-name prefixes).
    pub name: String,
    /// Where and how to reach it.
    pub endpoint: McpEndpoint,
    /// Allowed tools (empty: all).
    pub tools: Vec<String>,
    /// Name of a bearer-token secret (empty: none).
    pub token_secret: String,
    /// Tools safe to call again after a session died mid-call, beyond those the server marks
    /// `readOnlyHint` or `idempotentHint`.
    pub retry_tools: Vec<String>,
}

impl McpServerSettings {
    /// A server with no allowlist, token or retry list.
    pub fn new(name: impl Into<String>, endpoint: McpEndpoint) -> Self {
        Self { name: name.into(), endpoint, tools: Vec::new(), token_secret: String::new(), retry_tools: Vec::new() }
    }

    /// Only these tools.
    pub fn with_tools(mut self, tools: &[&str]) -> Self {
        self.tools = tools.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

/// `[[mcp.servers]]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct McpServerEntry {
    name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    transport: TransportKind,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    token_secret: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    retry_tools: Vec<String>,
}

impl TryFrom<McpServerEntry> for McpServerSettings {
    type Error = EndpointError;

    fn try_from(entry: McpServerEntry) -> Result<Self, EndpointError> {
        let endpoint = McpEndpoint::resolve(entry.transport, &entry.url, entry.command, entry.env)?;
        Ok(Self {
            name: entry.name,
            endpoint,
            tools: entry.tools,
            token_secret: entry.token_secret,
            retry_tools: entry.retry_tools,
        })
    }
}

impl From<McpServerSettings> for McpServerEntry {
    fn from(server: McpServerSettings) -> Self {
        let (transport, url, command, env) = match server.endpoint {
            McpEndpoint::LegacySse(url) => (TransportKind::Sse, url.into(), Vec::new(), Vec::new()),
            McpEndpoint::StreamableHttp(url) => (TransportKind::StreamableHttp, url.into(), Vec::new(), Vec::new()),
            McpEndpoint::Stdio { command, env } => (TransportKind::Stdio, String::new(), command, env),
        };
        Self {
            name: server.name,
            url,
            transport,
            tools: server.tools,
            token_secret: server.token_secret,
            command,
            env,
            retry_tools: server.retry_tools,
        }
    }
}

/// The endpoint an MCP server resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpEndpoint {
    /// Legacy HTTP+SSE.
    LegacySse(Url),
    /// Streamable HTTP.
    StreamableHttp(Url),
    /// A child process.
    Stdio {
        /// Program and arguments.
        command: Vec<String>,
        /// Variables passed through.
        env: Vec<String>,
    },
}

/// Why `url` / `transport` / `command` do not make an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A stdio server without a program.
    #[error("transport \"stdio\" needs `command = [\"program\", \"arg\", ...]`")]
    NoCommand,
    /// Neither a URL nor a program.
    #[error(
        "no url and no command: give `url = \"http://host:port/mcp\"` for a server over HTTP, or \
         `command = [\"program\", \"arg\", ...]` for one agentry starts over stdio"
    )]
    Nowhere,
    /// The url does not parse.
    #[error("url {text:?} is not a URL: {source}")]
    NotAUrl {
        /// The text.
        text: String,
        /// What the parser said.
        #[source]
        source: url::ParseError,
    },
    /// Neither http nor https.
    #[error("url {0:?} must be http:// or https://")]
    Scheme(String),
    /// A user name or password in the URL (shown without them).
    #[error(
        "url {0:?} with a user name or password: a URL is printed in logs and errors, so a token \
         goes in its secret (token_secret, sent as a bearer token), never in the URL"
    )]
    Credentials(String),
}

impl McpEndpoint {
    /// The endpoint of a server as written: `auto` is stdio when there is a `command` and no
    /// `url`, legacy SSE when the URL path ends in `/sse`, else Streamable HTTP.
    pub fn resolve(
        transport: TransportKind,
        url: &str,
        command: Vec<String>,
        env: Vec<String>,
    ) -> Result<Self, EndpointError> {
        // `auto` with a program and no URL can only mean stdio.
        let stdio = transport == TransportKind::Stdio
            || (transport == TransportKind::Auto && url.trim().is_empty() && !command.is_empty());
        if stdio {
            if command.is_empty() {
                return Err(EndpointError::NoCommand);
            }
            return Ok(Self::Stdio { command, env });
        }
        if url.trim().is_empty() {
            return Err(EndpointError::Nowhere);
        }
        let parsed = Url::parse(url).map_err(|source| EndpointError::NotAUrl { text: url.to_owned(), source })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EndpointError::Scheme(url.to_owned()));
        }
        if let Some(shown) = crate::secrets::shown_without_credentials(&parsed) {
            return Err(EndpointError::Credentials(shown));
        }
        Ok(match transport {
            TransportKind::Sse => Self::LegacySse(parsed),
            TransportKind::Auto if parsed.path().trim_end_matches('/').ends_with("/sse") => Self::LegacySse(parsed),
            _ => Self::StreamableHttp(parsed),
        })
    }

    /// An HTTP endpoint, by `auto` rules.
    pub fn http(url: &str) -> Result<Self, EndpointError> {
        Self::resolve(TransportKind::Auto, url, Vec::new(), Vec::new())
    }
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// OTLP endpoint (empty: none).
    pub otlp_endpoint: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// For collectors.
    Json,
}

/// Command-line overrides, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--concurrency`
    pub concurrency: Option<usize>,
    /// `--output-dir`
    pub output_dir: Option<PathBuf>,
    /// `--report`
    pub report: Option<PathBuf>,
    /// Questions given on the command line replace all others.
    pub questions: Option<Vec<String>>,
}

/// Everything the loader reads: the user's file, the environment, the flags.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// A snapshot of the process environment.
    pub env: BTreeMap<String, String>,
    /// Command-line flags.
    pub overrides: Overrides,
}

impl Sources {
    /// Sources with the current process environment.
    pub fn from_process(file: Option<PathBuf>, overrides: Overrides) -> Self {
        Self { file, env: std::env::vars().collect(), overrides }
    }
}

/// The Python agent's variables and the keys they set.
const LEGACY_VARIABLES: &[(&str, &str)] = &[
    ("MODEL_RUNNER_URL", "model.local.base_url"),
    ("MODEL_RUNNER_MODEL", "model.local.model"),
    ("OPENAI_MODEL_NAME", "model.cloud.model"),
    ("OPENAI_BASE_URL", "model.cloud.base_url"),
    ("MCP_SERVER_URL", "mcp.servers[0].url"),
];

/// Loads and validates the settings from all layers.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    let layers = Layers::read(sources)?;
    let merged = layers.merged()?;
    let mut settings: Settings = serde_path_to_error::deserialize(merged).map_err(|error| {
        let key = error.path().to_string();
        ConfigError::Key { origin: layers.origin_of(&key), message: error.into_inner().to_string(), key }
    })?;
    // The embedded default question is a placeholder: a questions file given without an inline
    // list replaces it rather than adding to it.
    if layers.user_sets("questions_file") && !layers.user_sets("questions") {
        settings.batch.questions.clear();
    }
    apply_questions(&mut settings, sources, layers.user_sets_questions());
    if let Some(dir) = sources.file.as_deref().and_then(Path::parent) {
        settings.batch.questions_file = relative_to(dir, &settings.batch.questions_file);
    }
    apply_overrides(&mut settings, &sources.overrides);
    validate(&settings)?;
    Ok(settings)
}

/// The layers, kept apart so an error can name the one that set a key.
struct Layers {
    user_file: Option<(PathBuf, FileFormat, String)>,
    agentry_env: BTreeMap<String, String>,
    legacy_env: Vec<(&'static str, &'static str, String)>,
}

impl Layers {
    fn read(sources: &Sources) -> Result<Self, ConfigError> {
        let user_file = match &sources.file {
            None => None,
            Some(path) => {
                let format = match path.extension().and_then(|e| e.to_str()) {
                    Some("toml") => FileFormat::Toml,
                    Some("yaml" | "yml") => FileFormat::Yaml,
                    Some("json") => FileFormat::Json,
                    _ => {
                        return Err(ConfigError::File {
                            path: path.clone(),
                            message: "unknown format: use a .toml, .yaml or .json file".into(),
                        });
                    }
                };
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
                Some((path.clone(), format, text))
            }
        };
        let prefix = format!("{ENV_PREFIX}__");
        let agentry_env =
            sources.env.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let legacy_env = LEGACY_VARIABLES
            .iter()
            .filter_map(|(var, key)| {
                let value = sources.env.get(*var)?.trim();
                (!value.is_empty()).then(|| (*var, *key, value.to_owned()))
            })
            .collect();
        Ok(Self { user_file, agentry_env, legacy_env })
    }

    fn merged(&self) -> Result<Config, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some((path, format, text)) = &self.user_file {
            // Parse the file alone first, so a syntax error names the file.
            Config::builder()
                .add_source(File::from_str(text, *format))
                .build()
                .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
            builder = builder.add_source(File::from_str(text, *format));
        }
        builder = builder.add_source(self.agentry_environment());
        for (var, key, value) in &self.legacy_env {
            builder = builder.set_override(*key, value.as_str()).map_err(|e| ConfigError::Key {
                key: (*key).into(),
                message: e.to_string(),
                origin: format!("${var}"),
            })?;
        }
        builder.build().map_err(|e| ConfigError::Key {
            key: String::new(),
            message: e.to_string(),
            origin: "the merged configuration".into(),
        })
    }

    fn agentry_environment(&self) -> Environment {
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(self.agentry_env.clone().into_iter().collect()))
    }

    /// Names the last layer that sets `key` (later layers win, so that is the one in effect).
    fn origin_of(&self, key: &str) -> String {
        let wanted = key.replace('[', ".").replace(']', "");
        for (var, legacy_key, _) in self.legacy_env.iter().rev() {
            if legacy_key.replace('[', ".").replace(']', "") == wanted {
                return format!("${var}");
            }
        }
        let env_name = format!("{ENV_PREFIX}__{}", wanted.replace('.', "__")).to_uppercase();
        if let Some((name, _)) = self
            .agentry_env
            .iter()
            .find(|(name, _)| name.to_uppercase() == env_name || env_name.starts_with(&name.to_uppercase()))
        {
            return format!("${name}");
        }
        match &self.user_file {
            Some((path, format, text)) if layer_has_key(text, *format, &wanted) => path.display().to_string(),
            _ => "the embedded defaults (config/default.toml)".into(),
        }
    }

    /// Whether a layer above the defaults sets `batch.<key>`.
    fn user_sets(&self, key: &str) -> bool {
        let variable = format!("AGENTRY__BATCH__{}", key.to_uppercase());
        self.user_file.as_ref().is_some_and(|(_, format, text)| layer_has_key(text, *format, &format!("batch.{key}")))
            || self.agentry_env.keys().any(|k| k.to_uppercase() == variable)
    }

    fn user_sets_questions(&self) -> bool {
        self.user_sets("questions") || self.user_sets("questions_file")
    }
}

/// Whether one layer's text sets a dotted key (array indices as `.N`). A missing prefix of
/// the key (an unknown field's parent) counts as set.
fn layer_has_key(text: &str, format: FileFormat, dotted: &str) -> bool {
    let Ok(value) = Config::builder()
        .add_source(File::from_str(text, format))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
    else {
        return false;
    };
    let mut node = &value;
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        let next = match part.parse::<usize>() {
            Ok(index) => node.get(index),
            Err(_) => node.get(part),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// `QUESTION` adds one question; when no other layer gave questions, it replaces the default.
fn apply_questions(settings: &mut Settings, sources: &Sources, user_sets_questions: bool) {
    let Some(question) = sources.env.get("QUESTION").map(|q| q.trim()).filter(|q| !q.is_empty()) else {
        return;
    };
    if !user_sets_questions {
        settings.batch.questions.clear();
    }
    if !settings.batch.questions.iter().any(|q| q == question) {
        settings.batch.questions.push(question.to_owned());
    }
}

fn apply_overrides(settings: &mut Settings, overrides: &Overrides) {
    if let Some(concurrency) = overrides.concurrency {
        settings.batch.concurrency = concurrency;
    }
    if let Some(dir) = &overrides.output_dir {
        settings.batch.output_dir = dir.clone();
    }
    if let Some(report) = &overrides.report {
        settings.batch.report = report.clone();
    }
    if let Some(questions) = &overrides.questions {
        settings.batch.questions = questions.clone();
        settings.batch.questions_file = PathBuf::new();
    }
}

fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() || path.is_absolute() || dir.as_os_str().is_empty() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// The longest duration any setting may have: far beyond any sensible timeout or backoff, and
/// far below what would overflow a clock when added to now.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn validate(settings: &Settings) -> Result<(), ConfigError> {
    let Settings { agent, batch, model, secrets, mcp, .. } = settings;
    let restart = &mcp.restart;
    for (key, duration) in [
        ("agent.question_timeout", agent.question_timeout),
        ("batch.shutdown_grace", batch.shutdown_grace),
        ("model.first_token_timeout", model.first_token_timeout),
        ("model.idle_timeout", model.idle_timeout),
        ("model.request_timeout", model.request_timeout),
        ("model.retry_min_delay", model.retry_min_delay),
        ("model.retry_max_delay", model.retry_max_delay),
        ("secrets.poll_interval", secrets.poll_interval),
        ("mcp.connect_timeout", mcp.connect_timeout),
        ("mcp.call_timeout", mcp.call_timeout),
        ("mcp.restart_wait", mcp.restart_wait),
        ("mcp.restart.initial_backoff", restart.initial_backoff),
        ("mcp.restart.max_backoff", restart.max_backoff),
        ("mcp.restart.window", restart.window),
        ("mcp.restart.cool_down", restart.cool_down),
    ] {
        if duration > MAX_DURATION {
            let given = humantime::format_duration(duration);
            return Err(invalid(key, format!("{given} is longer than the 30 days any duration may be")));
        }
    }
    if agent.max_turns == 0 {
        return Err(invalid("agent.max_turns", "must be at least 1"));
    }
    if agent.question_timeout.is_zero() {
        return Err(invalid("agent.question_timeout", "must be longer than 0s"));
    }
    if batch.concurrency == 0 {
        return Err(invalid("batch.concurrency", "must be at least 1"));
    }
    if batch.output_dir.as_os_str().is_empty() {
        return Err(invalid("batch.output_dir", "must name a directory"));
    }
    if !(0.0..=2.0).contains(&model.temperature) {
        return Err(invalid("model.temperature", "must be between 0 and 2"));
    }
    let prices = [("model.cloud.price", &model.cloud.price), ("model.local.price", &model.local.price)];
    for (key, value) in prices.into_iter().flat_map(|(table, price)| {
        [
            (format!("{table}.input_per_million"), price.input_per_million),
            (format!("{table}.cached_input_per_million"), price.cached_input_per_million),
            (format!("{table}.output_per_million"), price.output_per_million),
        ]
    }) {
        if !value.is_finite() || value < 0.0 {
            return Err(invalid(key, format!("{value} is not a price: give a number of 0 (free) or more")));
        }
    }
    let max_cost = batch.budget.max_cost;
    if !max_cost.is_finite() || max_cost < 0.0 {
        return Err(invalid("batch.budget.max_cost", format!("{max_cost} is not a cost: give 0 (no limit) or more")));
    }
    if max_cost > 0.0 && model.cloud.price.is_free() && model.local.price.is_free() {
        return Err(invalid(
            "batch.budget.max_cost",
            "is set, but every token is free: set [model.cloud.price] or [model.local.price] \
             (input_per_million, cached_input_per_million, output_per_million), or use \
             batch.budget.max_tokens",
        ));
    }
    if model.max_tokens == 0 {
        return Err(invalid("model.max_tokens", "must be at least 1"));
    }
    for (key, timeout) in [
        ("model.first_token_timeout", model.first_token_timeout),
        ("model.idle_timeout", model.idle_timeout),
        ("model.request_timeout", model.request_timeout),
    ] {
        if timeout.is_zero() {
            return Err(invalid(key, "must be longer than 0s"));
        }
    }
    if model.retry_min_delay > model.retry_max_delay {
        return Err(invalid("model.retry_min_delay", "must not exceed model.retry_max_delay"));
    }
    if model.cloud.api_key_secret.trim().is_empty() {
        return Err(invalid("model.cloud.api_key_secret", "must name a secret, e.g. \"openai_api_key\""));
    }
    for (key, name) in [("model.cloud.api_key_secret", &model.cloud.api_key_secret)].into_iter().chain(
        mcp.servers.iter().enumerate().filter(|(_, s)| !s.token_secret.is_empty()).map(|(i, s)| {
            let key: &'static str = if i == 0 { "mcp.servers[0].token_secret" } else { "mcp.servers[].token_secret" };
            (key, &s.token_secret)
        }),
    ) {
        if looks_like_a_secret_value(name) {
            return Err(invalid(
                key,
                "this looks like a key, not a secret's name. Put the value in a file (e.g. \
                 secrets/openai_api_key, mounted at /run/secrets/openai_api_key) and give its \
                 name here; configuration never holds secret values",
            ));
        }
    }
    if secrets.poll_interval.is_zero() {
        return Err(invalid("secrets.poll_interval", "must be longer than 0s"));
    }
    if mcp.connect_timeout.is_zero() || mcp.call_timeout.is_zero() {
        return Err(invalid("mcp", "connect_timeout and call_timeout must be longer than 0s"));
    }
    if mcp.restart.initial_backoff.is_zero() || mcp.restart.initial_backoff > mcp.restart.max_backoff {
        return Err(invalid(
            "mcp.restart.initial_backoff",
            "must be longer than 0s and at most mcp.restart.max_backoff",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, server) in mcp.servers.iter().enumerate() {
        let key = |field: &str| format!("mcp.servers[{i}].{field}");
        if server.name.trim().is_empty()
            || !server.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                key("name"),
                format!("{:?} must be non-empty letters, digits, '-' or '_'", server.name),
            ));
        }
        if !names.insert(server.name.as_str()) {
            return Err(invalid(key("name"), format!("{:?} is used by two servers", server.name)));
        }
    }
    Ok(())
}

/// A secret's name is a short identifier; a value is long, or has the shape of a key.
fn looks_like_a_secret_value(name: &str) -> bool {
    name.starts_with("sk-") || name.len() > 64 || name.chars().any(|c| c.is_whitespace())
}

#[cfg(test)]
mod tests;
