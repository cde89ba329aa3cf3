//! The actors and their supervision tree.
//!
//! ```text
//! RootSupervisor
//! ├── SecretKeeper     restart at once; re-reads the sources
//! ├── ModelRouter      restart at once; re-subscribes to the credential
//! ├── McpSupervisor
//! │   └── McpSession(server)   restart with backoff + jitter; down after N failures, then one try per cool-down
//! ├── ToolExecutor     restart at once
//! └── ResearchWriter   restart at once
//! ```
//!
//! Callers hold handles (`FooHandle`), never a bare `ActorRef`: each handle reads the current
//! actor from a [`Slot`], which the supervisor updates on every restart, so a handle taken
//! before a restart keeps working after it. Message enums and reply ports are private to
//! each actor's module.

pub mod mcp_session;
pub mod model_router;
pub mod research_writer;
pub mod secret_keeper;
pub mod supervisor;
pub mod tool_executor;

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use tokio::sync::watch;

/// Where an actor is in its life, as its handles see it.
pub(crate) enum SlotState<M> {
    /// Running: send here.
    Running(ActorRef<M>),
    /// Not running, and why.
    NotRunning(NotRunning),
}

/// Why an actor is not running: what its supervisor tells its handles.
#[derive(Debug, Clone)]
pub(crate) enum NotRunning {
    /// Between a failure and the restart (or not started yet).
    Restarting,
    /// Given up on after too many restarts; the text is the last cause.
    Down(Arc<str>),
    /// Stopped for good (shutdown).
    Stopped,
}

impl<M> Clone for SlotState<M> {
    fn clone(&self) -> Self {
        match self {
            Self::Running(actor) => Self::Running(actor.clone()),
            Self::NotRunning(why) => Self::NotRunning(why.clone()),
        }
    }
}

/// The current `ActorRef` of one supervised actor, shared by its handles and its supervisor.
pub(crate) struct Slot<M> {
    state: Arc<watch::Sender<SlotState<M>>>,
}

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Self { state: Arc::new(watch::Sender::new(SlotState::NotRunning(NotRunning::Restarting))) }
    }
}

/// When a child became ready to serve (an MCP session: connected and listed), as its supervisor
/// reads it: a child that fails before it was ever ready has not recovered, however long it ran.
#[derive(Debug, Default)]
pub(crate) struct ReadyMark(std::sync::Mutex<Option<tokio::time::Instant>>);

impl ReadyMark {
    /// Not ready (a new incarnation starting).
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Ready from now on, unless already.
    pub(crate) fn set(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert_with(tokio::time::Instant::now);
    }

    /// Since when, if ready.
    pub(crate) fn since(&self) -> Option<tokio::time::Instant> {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a handle could not reach its actor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unreachable {
    /// It did not come back within the wait.
    #[error("{actor} is restarting and did not come back within {waited:?}")]
    Restarting {
        /// Actor name.
        actor: String,
        /// How long we waited.
        waited: Duration,
    },
    /// It is marked down.
    #[error("{actor} is down: {cause}")]
    Down {
        /// Actor name.
        actor: String,
        /// The last failure.
        cause: Arc<str>,
    },
    /// It stopped (shutdown).
    #[error("{actor} has stopped")]
    Stopped {
        /// Actor name.
        actor: String,
    },
    /// The call did not get an answer in time.
    #[error("{actor} did not answer within {waited:?}")]
    Timeout {
        /// Actor name.
        actor: String,
        /// The deadline.
        waited: Duration,
    },
    /// The actor failed while the call was in its mailbox or in flight.
    #[error("{actor} failed before answering")]
    Dropped {
        /// Actor name.
        actor: String,
    },
}

impl<M: Message> Slot<M> {
    /// Publishes a (re)started actor.
    pub(crate) fn publish(&self, actor: ActorRef<M>) {
        self.state.send_replace(SlotState::Running(actor));
    }

    /// Says the actor is not running, and why.
    pub(crate) fn set(&self, why: NotRunning) {
        self.state.send_replace(SlotState::NotRunning(why));
    }

    /// The state now.
    #[cfg(test)]
    pub(crate) fn state(&self) -> SlotState<M> {
        self.state.borrow().clone()
    }

    /// Waits (at most `wait`) until the slot no longer holds the actor `gone`: the supervisor
    /// has seen it die. A caller whose message reached a dying actor waits here instead of
    /// spinning against it.
    pub(crate) async fn replaced(&self, gone: &ractor::ActorId, wait: Duration) {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|state| !matches!(state, SlotState::Running(actor) if actor.get_id() == *gone)),
        )
        .await;
    }

    /// The id of the running actor, if one is running.
    pub(crate) fn running_id(&self) -> Option<ractor::ActorId> {
        match &*self.state.borrow() {
            SlotState::Running(actor) => Some(actor.get_id()),
            _ => None,
        }
    }

    /// The running actor, waiting up to `wait` while it restarts.
    pub(crate) async fn current(&self, name: &str, wait: Duration) -> Result<ActorRef<M>, Unreachable> {
        let mut rx = self.state.subscribe();
        let outcome = tokio::time::timeout(wait, async {
            loop {
                match &*rx.borrow_and_update() {
                    SlotState::Running(actor) => return Ok(actor.clone()),
                    SlotState::NotRunning(NotRunning::Down(cause)) => {
                        return Err(Unreachable::Down { actor: name.to_owned(), cause: cause.clone() });
                    }
                    SlotState::NotRunning(NotRunning::Stopped) => {
                        return Err(Unreachable::Stopped { actor: name.to_owned() });
                    }
                    SlotState::NotRunning(NotRunning::Restarting) => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Unreachable::Stopped { actor: name.to_owned() });
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| Err(Unreachable::Restarting { actor: name.to_owned(), waited: wait }))
    }

    /// Calls the current actor: waits for a restart (bounded), then for the answer (bounded).
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        name: &str,
        restart_wait: Duration,
        deadline: Duration,
        message: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Result<T, Unreachable> {
        let actor = self.current(name, restart_wait).await?;
        match actor.call(message, Some(deadline)).await {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(Unreachable::Timeout { actor: name.to_owned(), waited: deadline }),
            Ok(CallResult::SenderError) | Err(_) => Err(Unreachable::Dropped { actor: name.to_owned() }),
        }
    }
}

/// How long a handle waits for a restarting actor that should come back at once.
pub(crate) const RESTART_WAIT: Duration = Duration::from_secs(5);
