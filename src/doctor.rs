//! `agentry doctor` (and `agentry config check --probe`): whether the services the settings name
//! answer, checked the way a run would use them, in parallel, each with a short timeout.
//!
//! - [`model`]: each model route in use: `GET {base_url}/models` (is the configured model
//!   listed, is the key accepted), then one small completion through the product's
//!   [`ChatClient`](crate::llm::client::ChatClient) with the product's system prompt and its
//!   `save_research` tool, to see whether the model calls tools at all.
//! - [`mcp`]: each MCP server through [`crate::mcp::connect`]: the handshake (protocol version,
//!   server name and version), `tools/list`, and every allowlisted tool offered.
//! - [`host`]: every secret (source, fingerprint, header-safe), the output directory (writable,
//!   free space, a batch's lock held) and the OTLP endpoint (TCP, and an empty export over HTTP).
//!
//! Each check is one [`Check`]: a status, what was checked, the evidence, and at most one hint.
//! [`Findings::render`] prints one line per check (`✓`, `⚠`, `✗`, `-`); [`Findings::to_json`]
//! is the `--json` document, schema [`SCHEMA`]:
//!
//! ```json
//! {"schema": "agentry.doctor/v1", "ok": true,
//!  "counts": {"pass": 5, "warn": 1, "fail": 0, "skip": 1},
//!  "checks": [{"check": "model.local.tools", "target": "http://…/v1/", "status": "warn",
//!              "evidence": "…", "hint": "…"}]}
//! ```
//! `ok` is false exactly when a check failed (the exit code is then 1); `hint` is absent when
//! there is none. New checks may be added; fields are never renamed.

pub mod host;
pub mod mcp;
pub mod model;

use std::time::Duration;

use serde::Serialize;

use crate::actors::secret_keeper::EnvLookup;
use crate::config::Settings;

/// The `schema` field of the `--json` document.
pub const SCHEMA: &str = "agentry.doctor/v1";

/// How long one network step (a connect, a listing, a handshake) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It works.
    Pass,
    /// It works, but a run will not go as it should (a model that never calls tools, say).
    Warn,
    /// It does not work: a run would fail.
    Fail,
    /// Not checked: the settings do not use it.
    Skip,
}

impl Status {
    /// The mark printed before the line.
    pub fn mark(self) -> &'static str {
        match self {
            Self::Pass => "✓",
            Self::Warn => "⚠",
            Self::Fail => "✗",
            Self::Skip => "-",
        }
    }
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `model.local`, `model.local.tools`, `mcp.gateway`, `secret.openai_api_key`,
    /// `output_dir`, `otlp.traces`, …
    pub check: String,
    /// Where: a URL, a program, a path.
    pub target: String,
    /// The outcome.
    pub status: Status,
    /// What was seen (never a secret value).
    pub evidence: String,
    /// What to do, when something is wrong and agentry can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// A check with `status`.
    pub fn new(
        check: impl Into<String>,
        target: impl Into<String>,
        status: Status,
        evidence: impl Into<String>,
    ) -> Self {
        Self { check: check.into(), target: target.into(), status, evidence: evidence.into(), hint: None }
    }

    /// The same with a hint (none when `hint` is `None`).
    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// Every check, in a stable order: secrets, model routes, MCP servers, output directory, OTLP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Findings {
    /// Whether no check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// One line per check (`✓ check  target: evidence`), a `hint:` line under it when there is
    /// one, then a summary line.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let width = self.checks.iter().map(|c| c.check.chars().count()).max().unwrap_or(0);
        for check in &self.checks {
            let target = if check.target.is_empty() { String::new() } else { format!("{}: ", check.target) };
            let _ =
                writeln!(out, "{} {:<width$}  {target}{}", check.status.mark(), check.check, one_line(&check.evidence));
            if let Some(hint) = &check.hint {
                let _ = writeln!(out, "  {:<width$}  hint: {}", "", one_line(hint));
            }
        }
        let _ = writeln!(
            out,
            "{} passed, {} warned, {} failed, {} skipped",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip)
        );
        out
    }

    /// The `--json` document (see the module doc).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "schema": SCHEMA,
            "ok": self.ok(),
            "counts": {
                "pass": self.count(Status::Pass),
                "warn": self.count(Status::Warn),
                "fail": self.count(Status::Fail),
                "skip": self.count(Status::Skip),
            },
            "checks": self.checks,
        })
    }
}

/// Server text on one line: a line break or control character cannot forge a line of its own.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Runs every check the settings call for, at once; `timeout` bounds each network step (the
/// completion probe gets [`model::COMPLETION_TIMEOUT_FACTOR`] times it); `env` is where secrets'
/// and OTLP's variables are read.
pub async fn examine(settings: &Settings, env: EnvLookup, timeout: Duration) -> Findings {
    let secrets = host::secrets(settings, &env);
    let (routes, servers, output, otlp) = tokio::join!(
        model::routes(settings, &env, timeout),
        mcp::servers(settings, &env, timeout),
        host::output_dir(&settings.batch.output_dir),
        host::otlp(settings, &env, timeout),
    );
    let checks = secrets.into_iter().chain(routes).chain(servers).chain(output).chain(otlp).collect();
    Findings { checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_fails_the_whole_and_hints_get_their_own_line() {
        let findings = Findings {
            checks: vec![
                Check::new("secret.k", "$K", Status::Pass, "present"),
                Check::new("model.local", "http://m/v1/", Status::Fail, "cannot reach\nit")
                    .with_hint(Some("start it".into())),
            ],
        };
        assert!(!findings.ok());
        let text = findings.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("✗ model.local") && lines[1].ends_with("cannot reach it"), "{text}");
        assert!(lines[2].trim_start().starts_with("hint: start it"), "{text}");
        let json = findings.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["counts"]["fail"], 1);
        assert!(json["checks"][0].get("hint").is_none(), "no hint, no key: {json}");
    }
}
