//! What can go wrong with an MCP server, by what the caller does next, with the causes kept.
//!
//! rmcp's transport errors print the transport's Rust type (`Transport [rmcp::transport::…]
//! error: …`); the text here names what failed in words, from the variants, and keeps rmcp's
//! error as the `source`.

use std::sync::Arc;
use std::time::Duration;

use rmcp::service::{ClientInitializeError, QuitReason, ServiceError};

use super::legacy_sse::LegacySseError;
use crate::actors::Unreachable;

/// A failed MCP operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// Could not open or initialise the session: the supervisor retries with backoff.
    #[error("MCP server {server} ({location}): cannot connect: {cause}")]
    Connect {
        /// Server name.
        server: String,
        /// URL or program.
        location: String,
        /// Why.
        #[source]
        cause: ConnectError,
    },
    /// The server refused our bearer token (HTTP 401/403): the token is re-read and the
    /// session restarted with backoff.
    #[error("MCP server {server} ({location}) refused the bearer token{}: rotate it or set token_secret", secret.as_deref().map(|s| format!(" of secret {s}")).unwrap_or_default())]
    Auth {
        /// Server name.
        server: String,
        /// URL.
        location: String,
        /// The token's secret, if one was sent.
        secret: Option<String>,
    },
    /// The session died (transport closed): the supervisor restarts it.
    #[error("MCP server {server}: connection lost: {cause}")]
    ConnectionLost {
        /// Server name.
        server: String,
        /// How it ended.
        #[source]
        cause: SessionEnded,
    },
    /// The request could not be delivered (one failed POST: a 5xx from a proxy, a reset), while
    /// the session lives on. It may have reached the server: sent again only under the
    /// idempotency rule.
    #[error("MCP server {server}: tool {tool}: {}", service_text(cause))]
    Send {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// rmcp's error.
        #[source]
        cause: Arc<ServiceError>,
    },
    /// No result within the call timeout.
    #[error("MCP server {server}: tool {tool} did not answer within {timeout:?}")]
    Timeout {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server answered the call with a JSON-RPC error.
    #[error("MCP server {server}: tool {tool} failed: {message}")]
    Call {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// The server's message.
        message: String,
    },
    /// The server is restarting or marked down.
    #[error("MCP server {server} is unavailable: {cause}")]
    Unavailable {
        /// Server name.
        server: String,
        /// What happened to its session.
        #[source]
        cause: Unreachable,
    },
}

impl McpError {
    /// The `error.type` telemetry label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_error",
            Self::Auth { .. } => "auth_rejected",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::Send { .. } => "send_error",
            Self::Timeout { .. } => "timeout",
            Self::Call { .. } => "tool_error",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

impl McpError {
    /// Whether the call never reached a live session (see [`SessionEnded::was_not_delivered`]).
    pub fn was_not_delivered(&self) -> bool {
        matches!(self, Self::ConnectionLost { cause, .. } if cause.was_not_delivered())
    }

    /// Logs [`Self::hint`] as a warning (`hint: …`), once per process for each hint: a session
    /// that keeps failing to connect says it once.
    pub fn tell_hint(&self) {
        crate::tell_hint_once(self.kind(), self.hint());
    }

    /// What to do about it, in one line, when agentry can tell: a gateway that is not running or
    /// not where the settings say, a gateway refusing the token, a stdio program missing.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect { location, cause: ConnectError::Spawn { program, .. }, .. } => Some(format!(
                "install {program} (or put it on PATH), or correct the server's command in mcp.servers ({location})"
            )),
            Self::Connect { cause: ConnectError::TokenNotHeaderSafe { .. }, .. } => None,
            Self::Connect { location, .. } if location.starts_with("http") => {
                let transport = if location.trim_end_matches('/').ends_with("/sse") { "sse" } else { "streaming" };
                Some(format!(
                    "is the MCP gateway running at {location}? Start it (`docker mcp gateway run --transport \
                     {transport} --port 8811`, or the compose stack's mcp-gateway service), or set MCP_SERVER_URL \
                     to where it listens"
                ))
            }
            Self::Auth { secret: Some(secret), .. } => Some(format!(
                "give agentry the gateway's token: MCP_GATEWAY_AUTH_TOKEN (or ${}_FILE, or the file \
                 <secrets.dir>/{secret}); docker/mcp-gateway >= 0.43.1 prints it at start and requires it over HTTP",
                secret.to_uppercase()
            )),
            Self::Auth { secret: None, .. } => Some(
                "the server wants a bearer token: set token_secret = \"mcp_gateway_auth_token\" for it in \
                 mcp.servers and put the token in MCP_GATEWAY_AUTH_TOKEN"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The MCP handshake (Streamable HTTP, stdio, or legacy SSE after the stream opened) failed.
    #[error("{}", initialize_text(.0))]
    Initialize(#[source] Box<ClientInitializeError>),
    /// The legacy SSE stream did not open.
    #[error("{}", crate::error_chain(.0))]
    LegacySse(#[source] LegacySseError),
    /// The stdio server's program did not start.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bearer token cannot be sent.
    #[error("the token {secret} ({fingerprint}) holds characters that cannot go in an HTTP header")]
    TokenNotHeaderSafe {
        /// Secret name.
        secret: String,
        /// Fingerprint of its value.
        fingerprint: String,
    },
    /// `tools/list` failed after the handshake.
    #[error("tools/list failed: {}", service_text(.0))]
    ListTools(#[source] Box<ServiceError>),
    /// A step got no answer in time.
    #[error("{step} did not answer within {timeout:?}")]
    NoAnswer {
        /// `initialize` or `tools/list`.
        step: &'static str,
        /// The deadline.
        timeout: Duration,
    },
}

/// How a session ended (shared: the actor and every call cut off by it report the same end).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionEnded {
    /// The server closed it (or its process exited).
    #[error("the server closed the session")]
    Closed,
    /// We closed it.
    #[error("the session was cancelled")]
    Cancelled,
    /// The session's task failed.
    #[error("the session task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// A request could not be sent, or the transport is gone.
    #[error("{}", service_text(.0))]
    Transport(#[source] Arc<ServiceError>),
    /// After a request could not be delivered, the server did not answer a ping in time.
    #[error("the server did not answer a ping within {0:?}")]
    Unresponsive(Duration),
}

impl SessionEnded {
    /// Whether the request that found the session ended never reached a live one: the server
    /// could not be reached (connection refused, DNS, connect timeout), no longer knew the session
    /// (HTTP 404 on Streamable HTTP), or the transport had closed before it was sent. Such a call
    /// did not run, and may be sent to the next session whatever the tool.
    pub fn was_not_delivered(&self) -> bool {
        matches!(self, Self::Transport(error) if super::is_session_gone(error))
    }
}

impl From<QuitReason> for SessionEnded {
    fn from(reason: QuitReason) -> Self {
        match reason {
            QuitReason::Cancelled => Self::Cancelled,
            QuitReason::JoinError(error) => Self::Task(Arc::new(error)),
            // `Closed`, and reasons newer rmcp versions may add.
            _ => Self::Closed,
        }
    }
}

/// A request's failure in words: the transport's own error without rmcp's type name.
fn service_text(error: &ServiceError) -> String {
    match error {
        ServiceError::TransportSend(failed) => format!("cannot send: {}", crate::error_chain(&*failed.error)),
        ServiceError::TransportClosed => "the connection is closed".to_owned(),
        other => other.to_string(),
    }
}

/// A handshake failure in words: the transport's own error without rmcp's type name.
fn initialize_text(error: &ClientInitializeError) -> String {
    match error {
        ClientInitializeError::TransportError { error, context } => {
            format!("{context}: {}", crate::error_chain(&*error.error))
        }
        ClientInitializeError::LegacyFallbackFailed { discover, fallback } => {
            format!("{} (and before that: {})", initialize_text(fallback), initialize_text(discover))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_read_without_rust_type_names() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let dynamic = rmcp::transport::DynamicTransportError::from_parts(
            "rmcp::transport::worker::WorkerTransport<rmcp::transport::streamable_http_client::Worker>",
            std::any::TypeId::of::<()>(),
            Box::new(io),
        );
        let text = service_text(&ServiceError::TransportSend(dynamic));
        assert_eq!(text, "cannot send: connection refused");
        let error = McpError::ConnectionLost {
            server: "gateway".into(),
            cause: SessionEnded::Transport(Arc::new(ServiceError::TransportClosed)),
        };
        assert_eq!(error.to_string(), "MCP server gateway: connection lost: the connection is closed");
        assert!(std::error::Error::source(&error).is_some(), "the cause is kept");
    }
}
