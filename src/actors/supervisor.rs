//! A supervisor: starts its children in order, restarts the ones that fail, stops them in
//! reverse order.
//!
//! - **Owns**: one [`ChildSpec`] per child (how to start it, its restart policy, the slot its
//!   handles read), and each child's restart history.
//! - **Accepts**: supervision events from ractor; `Start(child)` (a scheduled restart);
//!   `Shutdown`.
//! - **Concurrency**: restarts are never awaited in a sleep: a delayed restart is a message
//!   sent after the delay, so the supervisor keeps answering. Starting a child awaits only its
//!   `pre_start`, which does no network I/O (connections are made by tasks the child spawns).
//! - **Policy**: [`RestartPolicy::Immediate`] restarts at once (state is re-read from the
//!   sources). [`RestartPolicy::Backoff`] is for children whose failures come from outside (an
//!   MCP server): see [`BackoffPolicy`].
//! - **Shutdown**: `Shutdown` stops the children in reverse start order, each waited for.
//!
//! The same actor runs as `RootSupervisor` and as `McpSupervisor`; only the specs differ.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tokio::time::Instant;

use super::{NotRunning, ReadyMark};

/// How a child is restarted after a failure.
#[derive(Debug, Clone)]
pub(crate) enum RestartPolicy {
    /// Restart at once, every time.
    Immediate,
    /// Exponential backoff with jitter, a limit within a window, then down for a while.
    Backoff(BackoffPolicy),
}

/// Backoff settings for a child whose failures come from outside (a server going away).
///
/// A failure is counted until the child has been *ready* (an MCP session: connected and
/// listed, see [`ChildSpec::ready_since`]) for longer than `max`: only then do the backoff and
/// the count start afresh. How fast a failure comes does not matter: a server whose connects
/// time out after 20 s counts like one that refuses at once. The child is marked down (its
/// handles fail fast with the last cause) after `max_restarts` restarts in a row, or more than
/// `max_restarts` failures within `window` (a server that flaps). After `cool_down` it gets
/// exactly one attempt: if that fails before the child is ready, it is down again at once.
///
/// ```text
/// max_restarts = 3
/// fail  ─ 200ms ─ start  fail ─ 400ms ─ start  fail ─ 800ms ─ start  fail ─┐
///   (attempt 1)          (attempt 2)           (attempt 3)               down (handles fail fast)
///                                                                           │ cool_down
/// start (one attempt) ── fails before ready ── down again at once ──────────┘
///                     └─ ready for > max, then fails: a fresh count, 200ms backoff
/// ```
#[derive(Debug, Clone)]
pub(crate) struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Restarts in a row (or failures within `window`) before the child is marked down.
    pub max_restarts: usize,
    /// The window for failures of a child that flaps (is ready only briefly between them).
    pub window: Duration,
    /// How long a down child stays down before its one next attempt.
    pub cool_down: Duration,
}

impl BackoffPolicy {
    /// The delay before restart number `attempt` (0-based): doubling, capped, with "equal
    /// jitter" (between half and all of the step) so many clients do not restart in lockstep.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let step = self.initial.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(self.max);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        step.mul_f64(jitter)
    }
}

/// One child: how to start it, and how its handles and its metrics learn what happened.
pub(crate) trait ChildSpec: Send + Sync + 'static {
    /// Name for logs and the report (`mcp-session:gateway`).
    fn name(&self) -> &str;
    /// Restart policy.
    fn policy(&self) -> RestartPolicy;
    /// Spawns the child linked to `supervisor` and publishes it to its handles.
    fn start(&self, supervisor: ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>>;
    /// Tells the child's handles what happened to it (never `Running`: [`Self::start`] says that).
    fn mark(&self, state: NotRunning);
    /// Counts a restart (and records it wherever the spec says restarts are counted).
    fn restarted(&self);
    /// Since when the running incarnation has been ready to serve, if it is; `started` is when
    /// it was started (ready at once, for a child with no readiness of its own).
    fn ready_since(&self, started: Instant) -> Option<Instant> {
        Some(started)
    }
    /// Restarts so far.
    fn restarts(&self) -> u64;
    /// Stops the running child and waits for it (a nested supervisor stops its own first).
    fn shutdown(&self, cell: ActorCell) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            cell.stop_and_wait(Some("shutdown".into()), Some(SHUTDOWN_WAIT)).await.ok();
        })
    }
}

/// How long one child may take to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

struct Supervisor;

/// Start-up arguments.
pub(crate) struct SupervisorArgs {
    /// Name for logs.
    pub name: String,
    /// Children, in start order.
    pub children: Vec<Arc<dyn ChildSpec>>,
}

pub(crate) enum SupervisorMsg {
    /// Start (or restart) child `index`.
    Start(usize),
    /// Stop all children in reverse order, then reply.
    Shutdown(RpcReplyPort<()>),
}

/// Per-child bookkeeping.
struct Child {
    spec: Arc<dyn ChildSpec>,
    running: Option<ActorId>,
    started_at: Instant,
    failures: VecDeque<Instant>,
    attempt: u32,
    down: bool,
}

struct SupervisorState {
    name: String,
    children: Vec<Child>,
    stopping: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: args.name,
            children: args
                .children
                .into_iter()
                .map(|spec| Child {
                    spec,
                    running: None,
                    started_at: Instant::now(),
                    failures: VecDeque::new(),
                    attempt: 0,
                    down: false,
                })
                .collect(),
            stopping: false,
        };
        for index in 0..state.children.len() {
            let child = &mut state.children[index];
            match child.spec.start(myself.get_cell()).await {
                Ok(cell) => {
                    child.running = Some(cell.get_id());
                    child.started_at = Instant::now();
                }
                Err(error) => match child.spec.policy() {
                    // A child that cannot even start at boot is a configuration problem.
                    RestartPolicy::Immediate => {
                        return Err(format!("{} did not start: {error}", child.spec.name()).into());
                    }
                    RestartPolicy::Backoff(_) => {
                        let cause: Arc<str> = error.to_string().into();
                        state.schedule_restart(&myself, index, cause);
                    }
                },
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start(index) => {
                if state.stopping || state.children.get(index).is_none_or(|c| c.running.is_some()) {
                    return Ok(());
                }
                let child = &mut state.children[index];
                match child.spec.start(myself.get_cell()).await {
                    Ok(cell) => {
                        child.running = Some(cell.get_id());
                        child.started_at = Instant::now();
                    }
                    Err(error) => state.schedule_restart(&myself, index, error.to_string().into()),
                }
            }
            SupervisorMsg::Shutdown(reply) => {
                state.stopping = true;
                for child in state.children.iter_mut().rev() {
                    let cells = myself.get_children();
                    if let Some(cell) = child.running.take().and_then(|id| cells.into_iter().find(|c| c.get_id() == id))
                    {
                        child.spec.shutdown(cell).await;
                    }
                    child.spec.mark(NotRunning::Stopped);
                }
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, cause): (ActorCell, Arc<str>) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string().into()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()).into())
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let Some(index) = state.children.iter().position(|c| c.running == Some(cell.get_id())) else {
            return Ok(());
        };
        state.children[index].running = None;
        state.schedule_restart(&myself, index, cause);
        Ok(())
    }
}

impl SupervisorState {
    /// Decides when child `index` starts again and tells its handles.
    fn schedule_restart(&mut self, myself: &ActorRef<SupervisorMsg>, index: usize, cause: Arc<str>) {
        let child = &mut self.children[index];
        child.spec.restarted();
        let delay = match child.spec.policy() {
            RestartPolicy::Immediate => {
                tracing::warn!(supervisor = %self.name, child = child.spec.name(), %cause, "child failed; restarting now");
                child.spec.mark(NotRunning::Restarting);
                Duration::ZERO
            }
            RestartPolicy::Backoff(policy) => {
                let now = Instant::now();
                let ready_for =
                    child.spec.ready_since(child.started_at).map(|since| now.saturating_duration_since(since));
                if ready_for.is_some() && std::mem::take(&mut child.down) {
                    tracing::info!(supervisor = %self.name, child = child.spec.name(), "child had come back after being down");
                }
                // Ready for longer than the longest backoff: a fresh count.
                if ready_for.is_some_and(|ready_for| ready_for > policy.max) {
                    child.attempt = 0;
                }
                child.failures.push_back(now);
                while child.failures.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
                    child.failures.pop_front();
                }
                let too_many =
                    child.attempt as usize >= policy.max_restarts || child.failures.len() > policy.max_restarts;
                if child.down {
                    // The one attempt after the cool-down failed before the child was ready.
                    tracing::error!(supervisor = %self.name, child = child.spec.name(), %cause, cool_down = ?policy.cool_down,
                        "the attempt after the cool-down failed: down again");
                    child.spec.mark(NotRunning::Down(cause));
                    policy.cool_down
                } else if too_many {
                    child.failures.clear();
                    child.attempt = 0;
                    child.down = true;
                    tracing::error!(supervisor = %self.name, child = child.spec.name(), %cause, cool_down = ?policy.cool_down,
                        "too many restarts: marked down");
                    child.spec.mark(NotRunning::Down(cause));
                    policy.cool_down
                } else {
                    let delay = policy.delay(child.attempt);
                    // The first failure of a run of failures is news; the retries that follow are not.
                    if child.attempt == 0 {
                        tracing::warn!(supervisor = %self.name, child = child.spec.name(), %cause, ?delay, "child failed; restarting with backoff");
                    } else {
                        tracing::debug!(supervisor = %self.name, child = child.spec.name(), %cause, ?delay, attempt = child.attempt, "restart failed; backing off");
                    }
                    child.attempt = child.attempt.saturating_add(1);
                    if !child.down {
                        child.spec.mark(NotRunning::Restarting);
                    }
                    delay
                }
            }
        };
        if delay.is_zero() {
            let _ = myself.cast(SupervisorMsg::Start(index));
        } else {
            myself.send_after(delay, move || SupervisorMsg::Start(index));
        }
    }
}

/// A handle to a running supervisor.
#[derive(Clone)]
pub(crate) struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl SupervisorHandle {
    /// Spawns a supervisor (unlinked: the root) with its children.
    pub(crate) async fn spawn(args: SupervisorArgs) -> Result<(Self, tokio::task::JoinHandle<()>), SpawnErr> {
        let (actor, join) = Actor::spawn(None, Supervisor, args).await?;
        Ok((Self { actor }, join))
    }

    /// Stops the children in reverse order and then the supervisor.
    pub(crate) async fn shutdown(&self) {
        let _ = self.actor.call(SupervisorMsg::Shutdown, Some(Duration::from_secs(30))).await;
    }
}

/// A supervisor nested under another (the `McpSupervisor`): a child spec whose child is a
/// supervisor of its own children.
pub(crate) struct NestedSupervisor {
    name: String,
    children: Vec<Arc<dyn ChildSpec>>,
    restarts: AtomicU64,
    current: Arc<std::sync::Mutex<Option<ActorRef<SupervisorMsg>>>>,
}

impl NestedSupervisor {
    /// A nested supervisor over `children`.
    pub(crate) fn new(name: &str, children: Vec<Arc<dyn ChildSpec>>) -> Self {
        Self { name: name.to_owned(), children, restarts: AtomicU64::new(0), current: Default::default() }
    }
}

impl ChildSpec for NestedSupervisor {
    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> RestartPolicy {
        RestartPolicy::Immediate
    }

    fn start(&self, supervisor: ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = SupervisorArgs { name: self.name.clone(), children: self.children.clone() };
        let current = self.current.clone();
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, Supervisor, args, supervisor).await?;
            let cell = actor.get_cell();
            *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor);
            Ok(cell)
        })
    }

    fn shutdown(&self, cell: ActorCell) -> BoxFuture<'static, ()> {
        let actor = self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            if let Some(actor) = actor {
                let _ = actor.call(SupervisorMsg::Shutdown, Some(SHUTDOWN_WAIT * 2)).await;
            }
            cell.stop_and_wait(Some("shutdown".into()), Some(SHUTDOWN_WAIT)).await.ok();
        })
    }

    fn mark(&self, state: NotRunning) {
        if let NotRunning::Stopped = state {
            for child in &self.children {
                child.mark(NotRunning::Stopped);
            }
        }
    }

    fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;

/// The spec of an ordinary actor: spawn `A` with a clone of its arguments, publish it in its
/// slot. Everything an actor needs after a restart is in its arguments.
pub(crate) struct Leaf<A: Actor> {
    name: String,
    actor: fn() -> A,
    args: A::Arguments,
    slot: super::Slot<A::Msg>,
    policy: RestartPolicy,
    restarts: AtomicU64,
    on_restart: Option<Box<dyn Fn() + Send + Sync>>,
    ready: Option<Arc<ReadyMark>>,
}

impl<A> Leaf<A>
where
    A: Actor,
    A::Arguments: Clone + Sync,
{
    /// A spec; `actor` builds the (stateless) actor value.
    pub(crate) fn new(
        name: impl Into<String>,
        actor: fn() -> A,
        args: A::Arguments,
        slot: super::Slot<A::Msg>,
        policy: RestartPolicy,
    ) -> Self {
        Self {
            name: name.into(),
            actor,
            args,
            slot,
            policy,
            restarts: AtomicU64::new(0),
            on_restart: None,
            ready: None,
        }
    }

    /// Readiness is `mark`, which the child sets when it can serve (cleared at each start);
    /// without one, a child is ready once started.
    pub(crate) fn ready_when(mut self, mark: Arc<ReadyMark>) -> Self {
        self.ready = Some(mark);
        self
    }

    /// Also calls `count` on every restart (a metric of the child's own kind).
    pub(crate) fn on_restart(mut self, count: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_restart = Some(Box::new(count));
        self
    }
}

impl<A> ChildSpec for Leaf<A>
where
    A: Actor,
    A::Arguments: Clone + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> RestartPolicy {
        self.policy.clone()
    }

    fn start(&self, supervisor: ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let actor = (self.actor)();
        let args = self.args.clone();
        let slot = self.slot.clone();
        if let Some(ready) = &self.ready {
            ready.clear();
        }
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, actor, args, supervisor).await?;
            let cell = actor.get_cell();
            slot.publish(actor);
            Ok(cell)
        })
    }

    fn mark(&self, state: NotRunning) {
        self.slot.set(state);
    }

    fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = &self.on_restart {
            count();
        }
    }

    fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn ready_since(&self, started: Instant) -> Option<Instant> {
        match &self.ready {
            Some(mark) => mark.since(),
            None => Some(started),
        }
    }
}
