//! McpSession: one MCP server's connection, one actor per server.
//!
//! - **Owns**: the `rmcp` session (its `Peer` and cancellation token), the server's tool list
//!   (published, after the allowlist, in a `watch` channel that outlives restarts), calls that
//!   arrived while connecting.
//! - **Accepts**: `CallTool`; internally `Connected`, `ConnectFailed`, `ConnectionLost`,
//!   `Undelivered` and `Checked` (a request that could not be delivered, and the ping that
//!   follows it), and `ToolsChanged` (the server's `notifications/tools/list_changed`),
//!   coalesced: one re-list in flight, at most one queued, however many notifications arrive.
//! - **Concurrency**: `pre_start` only spawns the connect task, so a restart never blocks the
//!   supervisor. Each call runs in its own task on a clone of the `Peer` (rmcp multiplexes
//!   requests), with its own timeout; the handler never awaits the network.
//! - **Failure**: a failed connect or a dead transport makes the actor fail (`Err` from
//!   `handle`), and McpSupervisor restarts it with backoff and jitter. Calls queued or in
//!   flight get an error reply (never silence); the tool registry sees the new tool list.
//! - **Supervisor**: McpSupervisor. **Shutdown**: `post_stop` closes the session and waits for
//!   it (the connection closed, a stdio server's process group ended). A failure closes it too:
//!   the tasks that own the rmcp service are owned by the state and aborted when it is dropped.
//! - **What fails the actor**: a failed connect, a transport that is really gone (the
//!   session's service loop ended), and a ping that fails. One request that could not be
//!   delivered (a 5xx on a POST, a reset) fails that call only, but it may be the first sign of
//!   a dying server: the session pings it, and calls wait for the answer, so a call sent again
//!   goes to a session that works (this one, or the next).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientRequest, JsonObject, PingRequest, Tool};
use rmcp::service::{Peer, RoleClient, RunningServiceCancellationToken, ServiceError};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::secret_keeper::{Reloaded, SecretKeeperHandle, SecretState};
use super::{Slot, Unreachable};
use crate::deadline::Deadline;
use crate::mcp::{self, ConnectError, McpError, ServerSpec, SessionEnded};

/// A server's tools as the registry sees them.
#[derive(Clone)]
pub enum ServerTools {
    /// Not connected yet (or reconnecting after a failure).
    Connecting,
    /// Connected: the allowed tools.
    Ready(Arc<[Tool]>),
    /// The last attempt failed with this cause; `last` is the tool list from before, if the
    /// server was ever ready (calls to those tools reach the session, which waits for the
    /// restart or says the server is down).
    Failed {
        /// Why.
        cause: Arc<str>,
        /// The tools the server had.
        last: Option<Arc<[Tool]>>,
    },
}

impl ServerTools {
    /// The tools the server has, or had before it failed.
    pub fn known(&self) -> Option<&Arc<[Tool]>> {
        match self {
            Self::Ready(tools) => Some(tools),
            Self::Failed { last, .. } => last.as_ref(),
            Self::Connecting => None,
        }
    }
}

/// Publishes a failure, keeping the tools known so far.
/// Publishes a failure (scrubbed: a server may quote our credentials in its error), keeping the
/// tools known so far, and returns the same text as the actor's failure for its supervisor's log.
fn publish_failure(args: &McpSessionArgs, cause: &McpError) -> ActorProcessingErr {
    let text = args.secrets.redactor().scrub(&cause.to_string());
    let last = args.tools.borrow().known().cloned();
    args.tools.send_replace(ServerTools::Failed { cause: text.clone().into(), last });
    text.into()
}

/// Start-up arguments (cloned on every restart).
#[derive(Clone)]
pub(crate) struct McpSessionArgs {
    /// The server.
    pub server: Arc<ServerSpec>,
    /// Shared HTTP client.
    pub http: reqwest::Client,
    /// The bearer token, if the server needs one.
    pub token: Option<watch::Receiver<SecretState>>,
    /// To re-read the token after a 401.
    pub secrets: SecretKeeperHandle,
    /// Where the tool list is published.
    pub tools: Arc<watch::Sender<ServerTools>>,
    /// Connect and initialise deadline.
    pub connect_timeout: Duration,
    /// Per-call deadline.
    pub call_timeout: Duration,
    /// Set when the session is ready: what the supervisor's restart policy counts from.
    pub ready: Arc<super::ReadyMark>,
}

type CallReply = RpcReplyPort<Result<CallToolResult, McpError>>;

pub(crate) enum McpSessionMsg {
    /// Call a tool (by the server's own name for it).
    CallTool {
        /// Tool name on the server.
        tool: String,
        /// Arguments.
        arguments: Option<JsonObject>,
        /// Where the result goes.
        reply: CallReply,
        /// Cancelled when the question that made the call ends: the call is dropped, which
        /// sends the server `notifications/cancelled`. The call takes at most what is left.
        deadline: Deadline,
    },
    /// The connect task finished.
    Connected {
        /// Which connection attempt.
        generation: u64,
        /// The session's peer.
        peer: Peer<RoleClient>,
        /// Closes the session.
        cancel: RunningServiceCancellationToken,
        /// Completes when the session has ended (its transport closed).
        ended: oneshot::Receiver<()>,
        /// Allowed tools.
        tools: Arc<[Tool]>,
    },
    /// The connect task failed.
    ConnectFailed(u64, McpError),
    /// The session ended.
    ConnectionLost(u64, SessionEnded),
    /// A request on the session could not be delivered, the session said to live on: check it.
    Undelivered(u64),
    /// The ping after an undelivered request: answered, or how the session ended.
    Checked(u64, Result<(), SessionEnded>),
    /// The bearer token changed: reconnect with the new one (no restart).
    TokenRotated(u64),
    /// A call was refused with 401/403: re-read the token (a change then reconnects).
    AuthRejected(u64),
    /// The server sent `notifications/tools/list_changed`.
    ToolsChanged(u64),
    /// A re-list finished: the allowed tools, or `None` when it failed (already logged).
    ToolsListed(u64, Option<Arc<[Tool]>>),
}

enum Phase {
    Connecting {
        pending: Vec<Call>,
    },
    Ready {
        peer: Peer<RoleClient>,
    },
    /// A request could not be delivered: a ping is out, and calls wait for its answer.
    Checking {
        peer: Peer<RoleClient>,
        pending: Vec<Call>,
    },
}

impl Phase {
    /// The session's peer, once connected.
    fn peer(&self) -> Option<&Peer<RoleClient>> {
        match self {
            Self::Connecting { .. } => None,
            Self::Ready { peer } | Self::Checking { peer, .. } => Some(peer),
        }
    }
}

pub(crate) struct McpSessionState {
    args: McpSessionArgs,
    phase: Phase,
    /// The current session; closed when replaced or when the state is dropped.
    session: Option<LiveSession>,
    /// The connect-and-watch tasks, ended with the state: a connect still in progress when the
    /// actor stops (a stdio server that never answers `initialize`) goes with it.
    tasks: Vec<AbortOnDrop>,
    /// The current connection attempt; reports from older ones are ignored.
    generation: u64,
    /// Re-lists after `notifications/tools/list_changed`.
    relist: Relist,
}

/// One re-list in flight (for the generation it was started in), at most one queued.
#[derive(Default)]
struct Relist {
    in_flight: Option<u64>,
    queued: bool,
}

/// Re-lists the tools on the ready session and reports back with `ToolsListed`, whatever
/// happens (so the next queued re-list can start).
fn start_relist(myself: &ActorRef<McpSessionMsg>, state: &mut McpSessionState, generation: u64) {
    let Some(peer) = state.phase.peer() else {
        return;
    };
    state.relist = Relist { in_flight: Some(generation), queued: false };
    let (peer, server, timeout) = (peer.clone(), state.args.server.clone(), state.args.connect_timeout);
    let redactor = state.args.secrets.redactor();
    let myself = myself.clone();
    tokio::spawn(
        async move {
            let listed = match tokio::time::timeout(timeout, peer.list_all_tools()).await {
                Ok(Ok(tools)) => Some(tools.into_iter().filter(|t| server.allows(&t.name)).collect()),
                Ok(Err(error)) => {
                    let error = redactor.scrub(&error.to_string());
                    tracing::warn!(server = %server.name, %error, "re-listing tools failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(server = %server.name, "re-listing tools timed out");
                    None
                }
            };
            let _ = myself.cast(McpSessionMsg::ToolsListed(generation, listed));
        }
        .in_current_span(),
    );
}

/// A live rmcp session, as `post_stop` closes it. Other paths out of the actor (a handler that
/// returns `Err` makes ractor stop it without `post_stop`) drop the state, whose tasks
/// ([`AbortOnDrop`]) own the rmcp service: aborting them drops it, which cancels the session.
struct LiveSession {
    cancel: RunningServiceCancellationToken,
    ended: oneshot::Receiver<()>,
}

/// How long `post_stop` waits for a session to close (a stdio server gets 2 s after its stdin
/// closes and 2 s after SIGTERM).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl LiveSession {
    /// Closes the session and waits (at most [`CLOSE_WAIT`]) until it has.
    async fn close(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ended).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts connecting (attempt `generation`) in a task the state owns.
fn spawn_connect(myself: &ActorRef<McpSessionMsg>, args: &McpSessionArgs, generation: u64) -> AbortOnDrop {
    let task = tokio::spawn(connect_and_watch(myself.clone(), args.clone(), generation).in_current_span());
    AbortOnDrop(task.abort_handle())
}

pub(crate) struct McpSession;

impl Actor for McpSession {
    type Msg = McpSessionMsg;
    type State = McpSessionState;
    type Arguments = McpSessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: McpSessionArgs,
    ) -> Result<McpSessionState, ActorProcessingErr> {
        let connect = spawn_connect(&myself, &args, 0);
        Ok(McpSessionState {
            args,
            phase: Phase::Connecting { pending: Vec::new() },
            session: None,
            tasks: vec![connect],
            generation: 0,
            relist: Relist::default(),
        })
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut McpSessionState) -> Result<(), ActorProcessingErr> {
        if let Some(session) = state.session.take() {
            session.close().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: McpSessionMsg,
        state: &mut McpSessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            McpSessionMsg::CallTool { tool, arguments, reply, deadline } => {
                let call = Call { tool, arguments, reply, deadline };
                match &mut state.phase {
                    Phase::Connecting { pending } | Phase::Checking { pending, .. } => pending.push(call),
                    Phase::Ready { peer } => spawn_call(&myself, &state.args, state.generation, peer.clone(), call),
                }
            }
            McpSessionMsg::Connected { generation, cancel, .. } if generation != state.generation => cancel.cancel(),
            McpSessionMsg::ConnectFailed(generation, _)
            | McpSessionMsg::ConnectionLost(generation, _)
            | McpSessionMsg::Undelivered(generation)
            | McpSessionMsg::Checked(generation, _)
            | McpSessionMsg::TokenRotated(generation)
            | McpSessionMsg::AuthRejected(generation)
            | McpSessionMsg::ToolsChanged(generation)
            | McpSessionMsg::ToolsListed(generation, _)
                if generation != state.generation => {}
            McpSessionMsg::ToolsChanged(generation) => {
                // Coalesced: a server flooding the notification gets one re-list in flight and at
                // most one queued, which then reads the list as it is by then.
                if state.relist.in_flight == Some(generation) {
                    state.relist.queued = true;
                } else {
                    start_relist(&myself, state, generation);
                }
            }
            McpSessionMsg::ToolsListed(generation, listed) => {
                if let Some(tools) = listed {
                    tracing::info!(server = %state.args.server.name, tools = tools.len(), "tool list changed");
                    state.args.tools.send_replace(ServerTools::Ready(tools));
                }
                let again = std::mem::take(&mut state.relist.queued);
                state.relist.in_flight = None;
                if again {
                    start_relist(&myself, state, generation);
                }
            }
            McpSessionMsg::AuthRejected(_) => {
                let server = state.args.server.name.clone();
                match state.args.server.token_secret.clone() {
                    Some(secret) => {
                        let secrets = state.args.secrets.clone();
                        tokio::spawn(async move {
                            // A new value reaches connect_and_watch through the token channel.
                            if let Ok(Reloaded::Unchanged) = secrets.reload(&secret).await {
                                tracing::error!(%server, %secret, "the MCP server refused the bearer token and re-reading it found the same value");
                            }
                        });
                    }
                    None => tracing::error!(%server, "the MCP server requires a bearer token: set token_secret for it"),
                }
            }
            McpSessionMsg::TokenRotated(_) => {
                // Calls keep using the current connection while a new one opens with the new
                // token; the old one is closed once calls on it have had time to finish.
                tracing::info!(server = %state.args.server.name, "bearer token rotated: reconnecting with the new one");
                state.generation += 1;
                state.tasks.retain(|task| !task.0.is_finished());
                state.tasks.push(spawn_connect(&myself, &state.args, state.generation));
            }
            McpSessionMsg::Connected { peer, cancel, ended, tools, .. } => {
                let server = &state.args.server;
                tracing::info!(server = %server.name, transport = server.transport_name(), location = %server.location(),
                    tools = tools.len(), "MCP session ready");
                state.args.tools.send_replace(ServerTools::Ready(tools));
                state.args.ready.set();
                let live = LiveSession { cancel, ended };
                if let Some(retired) = state.session.replace(live) {
                    let grace = state.args.call_timeout;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        retired.close().await;
                    });
                }
                let previous = std::mem::replace(&mut state.phase, Phase::Ready { peer: peer.clone() });
                if let Phase::Connecting { pending } | Phase::Checking { pending, .. } = previous {
                    for call in pending {
                        spawn_call(&myself, &state.args, state.generation, peer.clone(), call);
                    }
                }
            }
            McpSessionMsg::Undelivered(generation) => {
                // One check at a time: calls that failed while a ping is out wait for it too.
                if let Phase::Ready { peer } = &state.phase {
                    tracing::debug!(server = %state.args.server.name, "a request could not be delivered: pinging the server");
                    spawn_check(&myself, &state.args, generation, peer.clone());
                    state.phase = Phase::Checking { peer: peer.clone(), pending: Vec::new() };
                }
            }
            McpSessionMsg::Checked(_, Ok(())) => {
                if let Phase::Checking { peer, pending } = &mut state.phase {
                    tracing::debug!(server = %state.args.server.name, "the server answered the ping: the session goes on");
                    let (peer, pending) = (peer.clone(), std::mem::take(pending));
                    for call in pending {
                        spawn_call(&myself, &state.args, state.generation, peer.clone(), call);
                    }
                    state.phase = Phase::Ready { peer };
                }
            }
            McpSessionMsg::Checked(_, Err(cause)) => {
                // The calls waiting for the ping are dropped with the state: never sent, they go
                // to the next session.
                let error = McpError::ConnectionLost { server: state.args.server.name.clone(), cause };
                return Err(publish_failure(&state.args, &error));
            }
            McpSessionMsg::ConnectFailed(_, error) => {
                error.tell_hint();
                return Err(publish_failure(&state.args, &error));
            }
            McpSessionMsg::ConnectionLost(_, cause) => {
                let error = McpError::ConnectionLost { server: state.args.server.name.clone(), cause };
                return Err(publish_failure(&state.args, &error));
            }
        }
        Ok(())
    }
}

/// Connects, lists tools, reports back, then waits for the session to end (or the token to
/// change) and reports that. Every report carries `generation`.
async fn connect_and_watch(myself: ActorRef<McpSessionMsg>, args: McpSessionArgs, generation: u64) {
    let mut token_rx = args.token.clone();
    let token = token_rx.as_mut().and_then(|t| t.borrow_and_update().credential().cloned());
    let notify = myself.clone();
    let tools_changed: mcp::ToolsChanged = Arc::new(move || {
        let _ = notify.cast(McpSessionMsg::ToolsChanged(generation));
    });
    let session =
        match mcp::connect(&args.server, &args.http, token.as_ref(), args.connect_timeout, Some(tools_changed)).await {
            Ok(session) => session,
            Err(error) => {
                if let (McpError::Auth { .. }, Some(secret)) = (&error, args.server.token_secret.as_deref()) {
                    // A rotated token may be waiting in its file: read it now, the restart uses it.
                    let _ = args.secrets.reload(secret).await;
                }
                let _ = myself.cast(McpSessionMsg::ConnectFailed(generation, error));
                return;
            }
        };
    let peer = session.peer().clone();
    let listed = tokio::time::timeout(args.connect_timeout, peer.list_all_tools()).await;
    let tools = match listed {
        Ok(Ok(tools)) => tools.into_iter().filter(|t| args.server.allows(&t.name)).collect(),
        Ok(Err(error)) => {
            let failed = connect_error(&args.server, ConnectError::ListTools(Box::new(error)));
            let _ = myself.cast(McpSessionMsg::ConnectFailed(generation, failed));
            return;
        }
        Err(_) => {
            let cause = ConnectError::NoAnswer { step: "tools/list", timeout: args.connect_timeout };
            let _ = myself.cast(McpSessionMsg::ConnectFailed(generation, connect_error(&args.server, cause)));
            return;
        }
    };
    let cancel = session.cancellation_token();
    let (_ended, ended) = oneshot::channel();
    if myself.cast(McpSessionMsg::Connected { generation, peer, cancel, ended, tools }).is_err() {
        return;
    }
    let used = token.as_ref().map(|t| t.fingerprint());
    let token_changed = async {
        match token_rx.as_mut() {
            Some(rx) => loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if rx.borrow_and_update().credential().map(|t| t.fingerprint()) != used {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    // The session lives as long as this future: dropping it would close the connection.
    let waiting = session.waiting();
    tokio::pin!(waiting);
    let ended = tokio::select! {
        ended = &mut waiting => ended,
        () = token_changed => {
            let _ = myself.cast(McpSessionMsg::TokenRotated(generation));
            waiting.await
        }
    };
    let cause = match ended {
        Ok(reason) => SessionEnded::from(reason),
        Err(error) => SessionEnded::Task(Arc::new(error)),
    };
    let _ = myself.cast(McpSessionMsg::ConnectionLost(generation, cause));
}

/// Pings the server after a request could not be delivered, and reports with `Checked`. An
/// answer of any kind (even a JSON-RPC error) says the session works; no answer within the
/// connect timeout, or a transport failure, says it does not.
fn spawn_check(myself: &ActorRef<McpSessionMsg>, args: &McpSessionArgs, generation: u64, peer: Peer<RoleClient>) {
    let (myself, timeout) = (myself.clone(), args.connect_timeout);
    tokio::spawn(
        async move {
            let ping = peer.send_request(ClientRequest::PingRequest(PingRequest::default()));
            let outcome = match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(_) | Err(ServiceError::McpError(_) | ServiceError::UnexpectedResponse)) => Ok(()),
                Ok(Err(error)) => Err(SessionEnded::Transport(Arc::new(error))),
                Err(_) => Err(SessionEnded::Unresponsive(timeout)),
            };
            let _ = myself.cast(McpSessionMsg::Checked(generation, outcome));
        }
        .in_current_span(),
    );
}

fn connect_error(server: &ServerSpec, cause: ConnectError) -> McpError {
    McpError::Connect { server: server.name.clone(), location: server.location(), cause }
}

/// A tool call as the session holds it until it runs.
struct Call {
    tool: String,
    arguments: Option<JsonObject>,
    reply: CallReply,
    deadline: Deadline,
}

fn spawn_call(
    myself: &ActorRef<McpSessionMsg>,
    args: &McpSessionArgs,
    generation: u64,
    peer: Peer<RoleClient>,
    call: Call,
) {
    let Call { tool, arguments, reply, deadline } = call;
    let server = args.server.name.clone();
    let location = args.server.location();
    let secret = args.server.token_secret.clone();
    let redactor = args.secrets.redactor();
    let timeout = deadline.cap(args.call_timeout);
    let myself = myself.clone();
    let span = tools_call_span(&args.server, &peer, &tool);
    tokio::spawn(
        async move {
            let started = std::time::Instant::now();
            let mut params = CallToolRequestParams::new(tool.clone());
            params.arguments = arguments;
            // The trace continues on the server: W3C trace context in `params._meta`.
            if let Some(traceparent) = crate::telemetry::traceparent() {
                let mut meta = rmcp::model::MetaObject::new();
                meta.set_traceparent(traceparent);
                params.meta = Some(meta.into());
            }
            let call = tokio::time::timeout(timeout, peer.call_tool(params));
            let answered = tokio::select! {
                answered = call => answered,
                () = deadline.cancelled() => {
                    tracing::debug!(%server, %tool, "the question ended: its tool call is cancelled");
                    return;
                }
            };
            let result = match answered {
                Err(_) => Err(McpError::Timeout { server, tool: tool.clone(), timeout }),
                Ok(Ok(result)) => Ok(result),
                Ok(Err(ServiceError::McpError(error))) => {
                    // Servers paste credentials into error messages: scrubbed before anyone sees it.
                    Err(McpError::Call { server, tool: tool.clone(), message: redactor.scrub(&error.message) })
                }
                Ok(Err(ServiceError::UnexpectedResponse)) => {
                    // Well-formed JSON-RPC but not a `tools/call` result: the server's fault, not the
                    // connection's, and sending it again would get the same.
                    let message = "the server's answer is not a tools/call result".to_owned();
                    Err(McpError::Call { server, tool: tool.clone(), message })
                }
                Ok(Err(error)) if mcp::is_auth_failure(&error) => {
                    let _ = myself.cast(McpSessionMsg::AuthRejected(generation));
                    Err(McpError::Auth { server, location, secret })
                }
                // One failed POST (a 5xx, a reset) fails this call; the session is dead when its
                // transport is closed (the watch task reports that too) or its server is gone.
                Ok(Err(error @ ServiceError::TransportSend(_))) if !mcp::is_session_gone(&error) => {
                    // Told before the caller hears of it: a call it sends again waits for the check.
                    let _ = myself.cast(McpSessionMsg::Undelivered(generation));
                    Err(McpError::Send { server, tool: tool.clone(), cause: Arc::new(error) })
                }
                Ok(Err(error)) => {
                    let dead = matches!(error, ServiceError::TransportClosed | ServiceError::TransportSend(_));
                    let cause = SessionEnded::Transport(Arc::new(error));
                    if dead {
                        let _ = myself.cast(McpSessionMsg::ConnectionLost(generation, cause.clone()));
                    }
                    Err(McpError::ConnectionLost { server, cause })
                }
            };
            record_call(&tracing::Span::current(), &tool, &result, started.elapsed());
            let _ = reply.send(result);
        }
        .instrument(span),
    );
}

/// The `tools/call {tool}` client span (MCP conventions).
fn tools_call_span(server: &ServerSpec, peer: &Peer<RoleClient>, tool: &str) -> tracing::Span {
    let version = peer.peer_info().map(|info| info.protocol_version.to_string()).unwrap_or_default();
    let (transport, address) = match &server.endpoint {
        crate::config::McpEndpoint::LegacySse(url) | crate::config::McpEndpoint::StreamableHttp(url) => {
            ("tcp", url.host_str().unwrap_or_default().to_owned())
        }
        crate::config::McpEndpoint::Stdio { .. } => ("pipe", String::new()),
    };
    tracing::info_span!(
        "tools/call",
        otel.name = %format!("tools/call {tool}"),
        otel.kind = "client",
        mcp.method.name = "tools/call",
        mcp.protocol.version = %version,
        gen_ai.tool.name = %tool,
        gen_ai.operation.name = "execute_tool",
        network.transport = transport,
        server.address = %address,
        agentry.mcp.server = %server.name,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

fn record_call(span: &tracing::Span, tool: &str, result: &Result<CallToolResult, McpError>, elapsed: Duration) {
    use crate::telemetry::metrics::{kv, metrics};
    use crate::telemetry::names::attr;
    let mut attributes = vec![kv(attr::MCP_METHOD, "tools/call"), kv(attr::TOOL_NAME, tool.to_owned())];
    let error = match result {
        Ok(result) if result.is_error == Some(true) => Some("tool_error"),
        Ok(_) => None,
        Err(error) => Some(error.kind()),
    };
    if let Some(error) = error {
        span.record("error.type", error);
        span.record("otel.status_code", "ERROR");
        attributes.push(kv(attr::ERROR_TYPE, error));
    }
    metrics().mcp_duration.record(elapsed.as_secs_f64(), &attributes);
}

/// How one attempt at a call failed.
enum Failure {
    /// The session never sent it: sending it again is always safe.
    NotSent(McpError),
    /// The session died with the call in flight, or its request could not be delivered: it may
    /// have run.
    CutOff(McpError),
    /// Anything else: the answer stands.
    Final(McpError),
}

/// What callers hold: survives restarts of the session.
#[derive(Clone)]
pub struct McpSessionHandle {
    server: Arc<ServerSpec>,
    slot: Slot<McpSessionMsg>,
    tools: watch::Receiver<ServerTools>,
    restart_wait: Duration,
    call_timeout: Duration,
}

impl McpSessionHandle {
    /// A handle, its slot and the tools channel (for the actor's arguments).
    pub(crate) fn new(
        server: Arc<ServerSpec>,
        restart_wait: Duration,
        call_timeout: Duration,
    ) -> (Self, Slot<McpSessionMsg>, Arc<watch::Sender<ServerTools>>) {
        let slot = Slot::default();
        let tools = Arc::new(watch::Sender::new(ServerTools::Connecting));
        let handle = Self { server, slot: slot.clone(), tools: tools.subscribe(), restart_wait, call_timeout };
        (handle, slot, tools)
    }

    /// The server this handle talks to.
    pub fn server(&self) -> &ServerSpec {
        &self.server
    }

    /// The tools now.
    pub fn tools(&self) -> ServerTools {
        self.tools.borrow().clone()
    }

    /// Waits until the first connect attempt settles (ready or failed), at most `wait`.
    pub async fn settled(&self, wait: Duration) -> ServerTools {
        let mut tools = self.tools.clone();
        let _ = tokio::time::timeout(wait, tools.wait_for(|t| !matches!(t, ServerTools::Connecting))).await;
        self.tools()
    }

    /// Calls a tool by the server's name for it.
    ///
    /// While the session restarts, the call waits for it (up to `mcp.restart_wait`). A call that
    /// never reached a live session (it died with the call queued, or the server refused the
    /// connection) is sent on the new session. A call cut off in flight may have run on the
    /// server: it is sent again once only when the tool is marked `readOnlyHint`/`idempotentHint`
    /// or listed in `retry_tools`, and then only to a session that answered a ping since (this
    /// one or the next); otherwise the model gets the error. A server marked down answers at once.
    pub async fn call_tool(&self, tool: &str, arguments: Option<JsonObject>) -> Result<CallToolResult, McpError> {
        self.call_tool_within(tool, arguments, &Deadline::none()).await
    }

    /// [`Self::call_tool`] within the question's `deadline`: the call and the wait for a restart
    /// take at most what is left, and the call is cancelled (on the server too) when the question
    /// ends.
    pub async fn call_tool_within(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
        deadline: &Deadline,
    ) -> Result<CallToolResult, McpError> {
        let retry_safe = self.retry_safe(tool);
        let give_up = tokio::time::Instant::now() + deadline.cap(self.restart_wait);
        let mut cut_off_once = false;
        loop {
            let tried = self.slot.running_id();
            let error = match self.call_once(tool, arguments.clone(), deadline).await {
                Ok(result) => return Ok(result),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::CutOff(error)) if !retry_safe || cut_off_once => return Err(error),
                Err(Failure::CutOff(error)) => {
                    cut_off_once = true;
                    error
                }
                // A call cancelled with its question is not sent again.
                Err(Failure::NotSent(error)) if deadline.is_cancelled() || tokio::time::Instant::now() >= give_up => {
                    return Err(error);
                }
                // The message reached an actor that was already dying: wait for the supervisor
                // to replace it (not a spin), then try the next one.
                Err(Failure::NotSent(error)) => {
                    if let Some(gone) = tried {
                        self.slot.replaced(&gone, give_up.saturating_duration_since(tokio::time::Instant::now())).await;
                    }
                    error
                }
            };
            tracing::info!(server = %self.server.name, tool, %error, "calling again on the restarted session");
        }
    }

    async fn call_once(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
        deadline: &Deadline,
    ) -> Result<CallToolResult, Failure> {
        // The actor answers every call; the extra second covers its own timeout firing first.
        let answer_within = self.call_timeout.min(deadline.left()) + self.restart_wait + Duration::from_secs(1);
        let (tool_name, wait, deadline) = (tool.to_owned(), deadline.cap(self.restart_wait), deadline.child());
        let outcome = self
            .slot
            .call(&self.server.name, wait, answer_within, |reply| McpSessionMsg::CallTool {
                tool: tool_name,
                arguments,
                reply,
                deadline,
            })
            .await;
        let unavailable = |cause: Unreachable| McpError::Unavailable { server: self.server.name.clone(), cause };
        match outcome {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error @ McpError::ConnectionLost { .. })) if error.was_not_delivered() => {
                Err(Failure::NotSent(error))
            }
            Ok(Err(error @ (McpError::ConnectionLost { .. } | McpError::Send { .. }))) => Err(Failure::CutOff(error)),
            Ok(Err(error)) => Err(Failure::Final(error)),
            Err(dropped @ Unreachable::Dropped { .. }) => Err(Failure::NotSent(unavailable(dropped))),
            Err(other) => Err(Failure::Final(unavailable(other))),
        }
    }

    /// Whether a call cut off in flight may be sent again.
    fn retry_safe(&self, tool: &str) -> bool {
        self.server.retry_tools.iter().any(|t| t == tool)
            || matches!(self.tools(), ServerTools::Ready(tools) if tools.iter().any(|t| t.name == tool && mcp::is_retry_safe(t)))
    }
}

/// Arguments for handle-level tests: no secrets, the given timeouts; with the handle and the
/// slot the session is published in.
#[cfg(test)]
pub(crate) fn test_session(
    server: Arc<ServerSpec>,
    restart_wait: Duration,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> (McpSessionHandle, Slot<McpSessionMsg>, McpSessionArgs) {
    let (handle, slot, published) = McpSessionHandle::new(server.clone(), restart_wait, call_timeout);
    let no_secrets = std::env::temp_dir().join("agentry-test-no-secrets");
    let (secrets, _, _) =
        SecretKeeperHandle::new(Vec::new(), no_secrets, Duration::from_secs(3600), Arc::new(|_| None));
    let args = McpSessionArgs {
        server,
        http: reqwest::Client::new(),
        token: None,
        secrets,
        tools: published,
        connect_timeout,
        call_timeout,
        ready: Default::default(),
    };
    (handle, slot, args)
}

#[cfg(test)]
mod tests;
