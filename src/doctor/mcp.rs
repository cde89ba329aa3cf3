//! The MCP servers: connect and initialise through [`crate::mcp::connect`] (the sessions'
//! own path, token and all), list the tools, and hold the allowlist against the list.

use std::time::Duration;

use super::{Check, Status};
use crate::actors::secret_keeper::EnvLookup;
use crate::config::{McpServerSettings, Settings};
use crate::mcp::{self, McpError, ServerSpec};
use crate::secrets::{self, SecretSpec};

/// One check per configured server.
pub async fn servers(settings: &Settings, env: &EnvLookup, timeout: Duration) -> Vec<Check> {
    if settings.mcp.servers.is_empty() {
        return vec![Check::new("mcp", "", Status::Skip, "no MCP servers configured (mcp.servers)")];
    }
    let http = match reqwest::Client::builder().user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION"))).build() {
        Ok(http) => http,
        Err(error) => return vec![Check::new("mcp", "", Status::Fail, crate::error_chain(&error))],
    };
    let checks = settings.mcp.servers.iter().map(|server| check_server(settings, server, env, &http, timeout));
    futures::future::join_all(checks).await
}

async fn check_server(
    settings: &Settings,
    server: &McpServerSettings,
    env: &EnvLookup,
    http: &reqwest::Client,
    timeout: Duration,
) -> Check {
    let spec = ServerSpec::of(server, &settings.mcp);
    let name = format!("mcp.{}", server.name);
    let target = format!("{} {}", spec.transport_name(), spec.location());
    let lookup = |variable: &str| env(variable);
    let token = match &spec.token_secret {
        Some(secret) => match secrets::load(&SecretSpec::new(secret), &settings.secrets.dir, &lookup) {
            Ok(token) => token,
            Err(error) => return Check::new(name, target, Status::Fail, error.to_string()),
        },
        None => None,
    };
    let session = match mcp::connect(&spec, http, token.as_ref(), timeout, None).await {
        Ok(session) => session,
        Err(error) => {
            let hint = error.hint();
            return Check::new(name, target, Status::Fail, error.to_string()).with_hint(hint);
        }
    };
    let peer = session.peer().clone();
    let handshake = match peer.peer_info() {
        Some(info) => {
            let server = info
                .server_info
                .as_ref()
                .map(|s| format!("{} {}", s.name, s.version))
                .unwrap_or_else(|| "a server that gave no name".to_owned());
            format!("{server}, protocol {}", info.protocol_version)
        }
        None => "no handshake information".to_owned(),
    };
    let listed = tokio::time::timeout(timeout, peer.list_all_tools()).await;
    let _ = session.cancel().await;
    let tools: Vec<String> = match listed {
        Ok(Ok(tools)) => tools.into_iter().map(|t| t.name.into_owned()).collect(),
        Ok(Err(error)) => {
            let error = McpError::Connect {
                server: spec.name.clone(),
                location: spec.location(),
                cause: mcp::ConnectError::ListTools(Box::new(error)),
            };
            return Check::new(name, target, Status::Fail, format!("{handshake}; {error}"));
        }
        Err(_) => {
            return Check::new(
                name,
                target,
                Status::Fail,
                format!("{handshake}; tools/list: no answer within {timeout:?}"),
            );
        }
    };
    let missing: Vec<&str> =
        spec.allow.iter().map(String::as_str).filter(|wanted| !tools.iter().any(|t| t == wanted)).collect();
    if !missing.is_empty() {
        let offered = if tools.is_empty() { "no tools".to_owned() } else { tools.join(", ") };
        return Check::new(
            name,
            target,
            Status::Fail,
            format!("{handshake}; allowlisted but not offered: {}; the server offers {offered}", missing.join(", ")),
        )
        .with_hint(Some(format!(
            "correct mcp.servers[].tools for {} (or leave it empty for all tools), or enable the tool on the server",
            spec.name
        )));
    }
    let allowed = tools.iter().filter(|t| spec.allows(t)).count();
    let evidence = match spec.allow.is_empty() {
        true => format!("{handshake}; {}, all allowed", tools_count(tools.len())),
        false => format!("{handshake}; {}, {allowed} allowed ({})", tools_count(tools.len()), spec.allow.join(", ")),
    };
    Check::new(name, target, Status::Pass, evidence)
}

/// `1 tool`, `3 tools`.
fn tools_count(n: usize) -> String {
    format!("{n} tool{}", if n == 1 { "" } else { "s" })
}
