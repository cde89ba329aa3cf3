use super::*;
use crate::actors::{ReadyMark, Slot, SlotState, Unreachable};

/// A child that answers `Ping` with its generation and fails on `Crash`.
struct Probe;

enum ProbeMsg {
    Ping(RpcReplyPort<u64>),
    Crash,
}

#[derive(Clone)]
struct ProbeArgs {
    starts: Arc<AtomicU64>,
}

impl Actor for Probe {
    type Msg = ProbeMsg;
    type State = u64;
    type Arguments = ProbeArgs;

    async fn pre_start(&self, _: ActorRef<ProbeMsg>, args: ProbeArgs) -> Result<u64, ActorProcessingErr> {
        Ok(args.starts.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn handle(
        &self,
        _: ActorRef<ProbeMsg>,
        message: ProbeMsg,
        generation: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProbeMsg::Ping(reply) => {
                let _ = reply.send(*generation);
                Ok(())
            }
            ProbeMsg::Crash => Err("probe crashed on purpose".into()),
        }
    }
}

async fn ping(slot: &Slot<ProbeMsg>) -> Result<u64, Unreachable> {
    slot.call("probe", Duration::from_secs(30), Duration::from_secs(5), ProbeMsg::Ping).await
}

fn crash(slot: &Slot<ProbeMsg>) {
    if let SlotState::Running(actor) = slot.state() {
        let _ = actor.cast(ProbeMsg::Crash);
    }
}

async fn start(policy: RestartPolicy) -> (SupervisorHandle, Slot<ProbeMsg>, Arc<AtomicU64>, Arc<dyn ChildSpec>) {
    start_with(policy, None).await
}

/// [`start`], the child's readiness being `ready` (set by the test) when given.
async fn start_with(
    policy: RestartPolicy,
    ready: Option<Arc<ReadyMark>>,
) -> (SupervisorHandle, Slot<ProbeMsg>, Arc<AtomicU64>, Arc<dyn ChildSpec>) {
    let starts = Arc::new(AtomicU64::new(0));
    let slot = Slot::default();
    let leaf = Leaf::new("probe", || Probe, ProbeArgs { starts: starts.clone() }, slot.clone(), policy);
    let leaf: Arc<dyn ChildSpec> = Arc::new(match ready {
        Some(mark) => leaf.ready_when(mark),
        None => leaf,
    });
    let (supervisor, _) = SupervisorHandle::spawn(SupervisorArgs { name: "test".into(), children: vec![leaf.clone()] })
        .await
        .expect("supervisor starts");
    (supervisor, slot, starts, leaf)
}

#[tokio::test]
async fn a_failed_child_is_restarted_and_the_same_slot_reaches_it() {
    let (supervisor, slot, starts, restarts) = start(RestartPolicy::Immediate).await;
    assert_eq!(ping(&slot).await.expect("first generation"), 1);
    crash(&slot);
    // The handle waits through the restart and reaches the new actor.
    // A ping that races the crash is dropped with the old actor; later ones reach the new one.
    let generation = loop {
        match ping(&slot).await {
            Ok(generation) if generation > 1 => break generation,
            Ok(_) | Err(Unreachable::Dropped { .. }) => tokio::task::yield_now().await,
            Err(error) => panic!("unreachable: {error}"),
        }
    };
    assert_eq!(generation, 2);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert_eq!(restarts.restarts(), 1);
    supervisor.shutdown().await;
    assert!(matches!(ping(&slot).await, Err(Unreachable::Stopped { .. })));
}

#[tokio::test(start_paused = true)]
async fn backoff_restarts_are_spaced_and_end_in_down_then_recover_after_the_cool_down() {
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(10),
        max_restarts: 3,
        window: Duration::from_secs(600),
        cool_down: Duration::from_secs(30),
    };
    let (supervisor, slot, starts, _) = start(RestartPolicy::Backoff(policy.clone())).await;
    let mut last_restart = tokio::time::Instant::now();
    for attempt in 0..3u32 {
        ping(&slot).await.expect("running");
        crash(&slot);
        let generation = loop {
            match ping(&slot).await {
                Ok(generation) if generation as u32 == attempt + 2 => break generation,
                Ok(_) | Err(Unreachable::Dropped { .. }) => tokio::task::yield_now().await,
                Err(error) => panic!("unreachable: {error}"),
            }
        };
        let waited = last_restart.elapsed();
        let step = policy.initial * 2u32.pow(attempt);
        assert!(waited >= step / 2, "restart {generation} after {waited:?}, backoff step {step:?}");
        last_restart = tokio::time::Instant::now();
    }
    // The fourth failure within the window marks it down: callers fail fast with the cause.
    crash(&slot);
    let down = loop {
        match ping(&slot).await {
            Err(error @ Unreachable::Down { .. }) => break error,
            _ => tokio::task::yield_now().await,
        }
    };
    assert!(down.to_string().contains("probe crashed on purpose"), "{down}");
    assert_eq!(starts.load(Ordering::SeqCst), 4);
    // After the cool-down it is tried again.
    tokio::time::sleep(policy.cool_down + Duration::from_secs(1)).await;
    assert_eq!(ping(&slot).await.expect("back after the cool-down"), 5);
    supervisor.shutdown().await;
}

#[test]
fn backoff_delays_double_up_to_the_cap_with_jitter() {
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(10),
        max_restarts: 5,
        window: Duration::from_secs(60),
        cool_down: Duration::from_secs(30),
    };
    for attempt in 0..12 {
        let step = (Duration::from_millis(200) * 2u32.pow(attempt)).min(Duration::from_secs(10));
        let delay = policy.delay(attempt);
        assert!(delay >= step / 2 && delay <= step, "attempt {attempt}: {delay:?} vs {step:?}");
    }
}

/// How long (in virtual time) a test waits for what the policy promises.
const VIRTUAL_PATIENCE: Duration = Duration::from_secs(4 * 3600);

/// Waits (in virtual time) until the probe runs incarnation `generation`.
async fn running(slot: &Slot<ProbeMsg>, generation: u64) {
    let started = async {
        loop {
            match ping(slot).await {
                Ok(current) if current == generation => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    };
    tokio::time::timeout(VIRTUAL_PATIENCE, started)
        .await
        .unwrap_or_else(|_| panic!("incarnation {generation} never ran"));
}

/// Waits (in virtual time) until the probe's handles say it is down.
async fn down(slot: &Slot<ProbeMsg>) {
    let marked = async {
        while !matches!(ping(slot).await, Err(Unreachable::Down { .. })) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(VIRTUAL_PATIENCE, marked).await.expect("the child is marked down");
}

/// A child that never gets ready (a server whose connects fail).
fn never_ready() -> Option<Arc<ReadyMark>> {
    Some(Arc::new(ReadyMark::default()))
}

#[tokio::test(start_paused = true)]
async fn after_the_cool_down_one_attempt_and_down_again_at_once_if_it_fails() {
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
        max_restarts: 1,
        window: Duration::from_secs(600),
        cool_down: Duration::from_secs(30),
    };
    let (supervisor, slot, starts, _) = start_with(RestartPolicy::Backoff(policy.clone()), never_ready()).await;
    running(&slot, 1).await;
    crash(&slot);
    running(&slot, 2).await;
    crash(&slot);
    down(&slot).await;
    tokio::time::sleep(policy.cool_down).await;
    running(&slot, 3).await;
    // The one attempt fails before the child is ready: down again, no new cycle of restarts.
    crash(&slot);
    down(&slot).await;
    tokio::time::sleep(policy.cool_down / 2).await;
    assert_eq!(starts.load(Ordering::SeqCst), 3, "no restart before the next cool-down");
    assert!(matches!(ping(&slot).await, Err(Unreachable::Down { .. })));
    supervisor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failures_that_come_slowly_count_like_fast_ones() {
    // Each incarnation fails 30 s after it started (a connect timing out), longer than the
    // longest backoff, and never more than two failures fall within the window.
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
        max_restarts: 3,
        window: Duration::from_secs(60),
        cool_down: Duration::from_secs(3600),
    };
    let (supervisor, slot, starts, _) = start_with(RestartPolicy::Backoff(policy), never_ready()).await;
    for generation in 1..=4 {
        running(&slot, generation).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        crash(&slot);
    }
    down(&slot).await;
    assert_eq!(starts.load(Ordering::SeqCst), 4, "three restarts, the fourth failure marks it down");
    supervisor.shutdown().await;
}
