//! A model-based property test of the saga state machine (issue 13, item 6), on the real engine
//! and real PostgreSQL, through the engine's public API only (so it stays valid across a
//! rewrite of the executor's core).
//!
//! Each generated [`Script`] defines a skill whose steps follow it: for every step and attempt
//! an outcome (success, retryable, permanent or unknown error), optionally a wait for an event first
//! (delivered before the wait, delivered while waiting, or timed out), and compensations with
//! their own scripted outcomes. Faults and operator actions are part of the script: a worker
//! that crashes mid-step (its future is dropped and the lease expires on the manual clock), a
//! worker that loses its lease mid-step (the clock passes the lease, a second worker takes the
//! saga over, then the first one finishes its attempt and must be fenced off), a cancel while a
//! step runs or at a pause, operator retries of a failed saga and a restart of a compensated
//! one. The harness drives the saga with `Worker::run_until_idle` to a terminal state, then
//! checks it against a small reference model ([`expect`]) and against invariants that need no
//! model: terminal states are final, compensations run in reverse order exactly once for the
//! steps that succeeded, a completed saga ran every step to success once, the attempts recorded
//! are the attempts the actions were called with and stay within their budgets, and the history
//! agrees with the final step states.
//!
//! A second property runs two to four scripted sagas side by side under the same workers
//! (claims of several sagas, group commit), without the faults that stop a whole worker.
//!
//! `STEPWISE_MODEL_CASES` (default 48; the side-by-side property runs half as many) sets the
//! number of cases, `STEPWISE_MODEL_SEED` fixes the random seed. docs/reliability.md explains
//! what the model checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use futures::future::BoxFuture;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stepwise_engine::{
    CompensationStatus, Engine, EventKind, Jitter, JitterSource, ManualClock, OperatorRequest,
    PgStore, Registry, RetryPolicy, SagaDetail, SagaStatus, Skill, SkillInput, StartRequest, Step,
    StepContext, StepError, StepStatus, Wait, WorkerConfig,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------------

/// What an attempt returns once any fault is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basic {
    Ok,
    Retryable,
    Permanent,
    /// The attempt may have taken effect (`StepError::unknown`): retried like a retryable
    /// error; a step that gives up after one is possibly done and compensated too.
    Unknown,
}

/// What one attempt of an action or a compensation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Retryable,
    Permanent,
    Unknown,
    /// The worker dies mid-attempt: its future is dropped, and the lease expires later.
    Crash,
    /// The worker stalls mid-attempt past its lease; another worker takes the saga over and
    /// drives it until idle; then this attempt returns the given result, which must be fenced
    /// off.
    LeaseLost(Basic),
    /// The saga is cancelled while this attempt runs, which then returns the given result.
    CancelDuring(Basic),
}

/// How a step's wait for its event ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitPlan {
    /// The event is delivered right after the saga starts, before the step reaches the wait.
    DeliveredEarly,
    /// The event is delivered while the saga waits.
    Delivered,
    /// Nobody answers: the deadline passes and the step fails with `wait_timed_out`.
    TimedOut,
    /// Nobody answers, and the wait has a default payload: the step goes on with it.
    TimedOutToDefault,
    /// Not an event: a durable sleep (`StepContext::sleep`), over when the clock passes it.
    Sleep,
}

#[derive(Debug, Clone)]
struct StepScript {
    compensable: bool,
    wait: Option<WaitPlan>,
    /// Outcome of attempt 1, 2, ...; later attempts succeed.
    attempts: Vec<Outcome>,
    /// Outcome of compensation attempt 1, 2, ...; later ones succeed.
    compensations: Vec<Outcome>,
}

#[derive(Debug, Clone)]
struct Script {
    steps: Vec<StepScript>,
    /// Attempts allowed for every action.
    max_attempts: u32,
    /// Attempts allowed for every compensation in one round (an operator retry starts another).
    compensation_max_attempts: u32,
    /// The harness cancels the saga at its n-th pause (1-based): a worker went idle while the
    /// saga was not terminal (a retry is scheduled, it waits, or its worker crashed).
    cancel_at_pause: Option<u32>,
    /// How many times an operator retries the saga if it ends `failed`.
    operator_retries: u32,
    /// Whether an operator restarts the saga if it ends `compensated`.
    restart_if_compensated: bool,
    /// The workers' `commit_batch` (1: the single-saga path; more: group commit).
    commit_batch: usize,
}

impl Script {
    fn outcome(&self, position: usize, attempt: u32, compensation: bool) -> Outcome {
        let step = &self.steps[position];
        let list = if compensation {
            &step.compensations
        } else {
            &step.attempts
        };
        list.get(attempt as usize - 1)
            .copied()
            .unwrap_or(Outcome::Ok)
    }
}

fn basic() -> impl Strategy<Value = Basic> {
    prop_oneof![
        Just(Basic::Ok),
        Just(Basic::Retryable),
        Just(Basic::Permanent),
        Just(Basic::Unknown)
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Ok),
        3 => Just(Outcome::Retryable),
        1 => Just(Outcome::Permanent),
        2 => Just(Outcome::Unknown),
        1 => Just(Outcome::Crash),
        1 => basic().prop_map(Outcome::LeaseLost),
        1 => basic().prop_map(Outcome::CancelDuring),
    ]
}

/// Compensations fail for good more often than actions, so operator retries come up.
fn compensation_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Ok),
        3 => Just(Outcome::Retryable),
        2 => Just(Outcome::Permanent),
        1 => Just(Outcome::Unknown),
        1 => Just(Outcome::Crash),
        1 => basic().prop_map(Outcome::LeaseLost),
        1 => basic().prop_map(Outcome::CancelDuring),
    ]
}

fn wait_plan() -> impl Strategy<Value = Option<WaitPlan>> {
    prop_oneof![
        8 => Just(None),
        1 => Just(Some(WaitPlan::DeliveredEarly)),
        2 => Just(Some(WaitPlan::Delivered)),
        1 => Just(Some(WaitPlan::TimedOut)),
        1 => Just(Some(WaitPlan::TimedOutToDefault)),
        1 => Just(Some(WaitPlan::Sleep)),
    ]
}

fn step_script() -> impl Strategy<Value = StepScript> {
    (
        prop::bool::weighted(0.8),
        wait_plan(),
        prop::collection::vec(outcome(), 0..4),
        prop::collection::vec(compensation_outcome(), 0..3),
    )
        .prop_map(|(compensable, wait, attempts, compensations)| StepScript {
            compensable,
            wait,
            attempts,
            compensations,
        })
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(step_script(), 1..=4),
        1u32..=3,
        1u32..=3,
        prop::option::weighted(0.3, 1u32..=5),
        0u32..=2,
        prop::bool::ANY,
        prop_oneof![Just(1usize), Just(4usize)],
    )
        .prop_map(
            |(
                steps,
                max_attempts,
                compensation_max_attempts,
                cancel_at_pause,
                operator_retries,
                restart_if_compensated,
                commit_batch,
            )| Script {
                steps,
                max_attempts,
                compensation_max_attempts,
                cancel_at_pause,
                operator_retries,
                restart_if_compensated,
                commit_batch,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct ModelStep {
    status: StepStatus,
    attempts: u32,
    compensation: CompensationStatus,
    compensation_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Expected {
    status: SagaStatus,
    /// The saga's error code (None when it completed).
    error: Option<String>,
    steps: Vec<ModelStep>,
    operator_retries: u32,
}

/// Steps whose outcome is unknown when the saga gives up ("possibly done", issue 13 item 1):
/// a step that did not succeed although one of its attempts (whose result was committed, so
/// not one fenced off after a lost lease) ended in an unknown error. They are compensated too,
/// first, in reverse order.
fn possibly_done(unknown: &[bool], steps: &[ModelStep]) -> BTreeSet<usize> {
    (0..steps.len())
        .filter(|&k| unknown[k] && steps[k].status != StepStatus::Succeeded)
        .collect()
}

/// What the engine should do with `script` under the harness of [`Harness::drive_to_terminal`].
// `k` indexes the script and the model's steps alike, as positions do in the engine.
#[allow(clippy::needless_range_loop)]
fn expect(script: &Script) -> Expected {
    let n = script.steps.len();
    let mut steps = vec![
        ModelStep {
            status: StepStatus::Pending,
            attempts: 0,
            compensation: CompensationStatus::NotNeeded,
            compensation_attempts: 0,
        };
        n
    ];
    let mut pauses = 0u32;
    let mut cancel = false;
    let mut pause = |cancel: &mut bool| {
        pauses += 1;
        if script.cancel_at_pause == Some(pauses) {
            *cancel = true;
        }
    };
    let mut error: Option<String> = None;
    // Whether an attempt of the step ended in an unknown error.
    let mut unknown = vec![false; n];

    // Forward.
    'forward: for k in 0..n {
        let mut waited = false;
        loop {
            // A worker claims the saga at this step: a cancel wins, then the budget.
            if cancel {
                error = Some("cancelled".into());
                break 'forward;
            }
            if steps[k].status == StepStatus::Running && steps[k].attempts >= script.max_attempts {
                // The worker died during the last attempt: it may have taken effect.
                unknown[k] = true;
                error = Some("attempt_interrupted".into());
                break 'forward;
            }
            steps[k].attempts += 1;
            steps[k].status = StepStatus::Running;
            let attempt = steps[k].attempts;
            if let Some(plan) = script.steps[k].wait {
                if plan != WaitPlan::DeliveredEarly && !waited {
                    waited = true;
                    pause(&mut cancel);
                    if cancel {
                        error = Some("cancelled".into());
                        break 'forward;
                    }
                    if plan == WaitPlan::TimedOut {
                        error = Some("wait_timed_out".into());
                        break 'forward;
                    }
                }
            }
            let result = match script.outcome(k, attempt, false) {
                Outcome::Ok => Basic::Ok,
                Outcome::Retryable => Basic::Retryable,
                Outcome::Permanent => Basic::Permanent,
                Outcome::Unknown => Basic::Unknown,
                Outcome::Crash => {
                    pause(&mut cancel);
                    continue;
                }
                // Another worker takes over at once; this attempt's result is fenced off.
                Outcome::LeaseLost(_) => continue,
                Outcome::CancelDuring(then) => {
                    cancel = true;
                    then
                }
            };
            match result {
                Basic::Ok => {
                    steps[k].status = StepStatus::Succeeded;
                    continue 'forward;
                }
                Basic::Retryable | Basic::Unknown if attempt < script.max_attempts => {
                    unknown[k] |= result == Basic::Unknown;
                    steps[k].status = StepStatus::Failed;
                    pause(&mut cancel);
                }
                Basic::Retryable => {
                    error = Some("model_retryable".into());
                    break 'forward;
                }
                Basic::Unknown => {
                    unknown[k] = true;
                    error = Some("model_unknown".into());
                    break 'forward;
                }
                Basic::Permanent => {
                    error = Some("model_permanent".into());
                    break 'forward;
                }
            }
        }
    }
    let Some(first_error) = error else {
        return Expected {
            status: SagaStatus::Completed,
            error: None,
            steps,
            operator_retries: 0,
        };
    };

    // Compensation: the succeeded (and possibly done) compensable steps, last first.
    let mut to_undo: BTreeSet<usize> = (0..n)
        .filter(|&k| steps[k].status == StepStatus::Succeeded && script.steps[k].compensable)
        .collect();
    to_undo.extend(
        possibly_done(&unknown, &steps)
            .into_iter()
            .filter(|&k| script.steps[k].compensable),
    );
    for &k in &to_undo {
        steps[k].compensation = CompensationStatus::Pending;
    }
    let mut bases = vec![0u32; n];
    let mut operator_retries = 0;
    let mut failed = false;
    let mut order: Vec<usize> = to_undo.iter().rev().copied().collect();
    while let Some(&k) = order.first() {
        let in_round = steps[k].compensation_attempts - bases[k];
        let gave_up = if steps[k].compensation == CompensationStatus::Running
            && in_round >= script.compensation_max_attempts
        {
            true // the last allowed attempt was interrupted
        } else {
            steps[k].compensation_attempts += 1;
            steps[k].compensation = CompensationStatus::Running;
            let attempt = steps[k].compensation_attempts;
            let result = match script.outcome(k, attempt, true) {
                Outcome::Ok => Some(Basic::Ok),
                Outcome::Retryable => Some(Basic::Retryable),
                Outcome::Permanent => Some(Basic::Permanent),
                // A compensation's unknown error is retried like a retryable one.
                Outcome::Unknown => Some(Basic::Unknown),
                Outcome::Crash => {
                    pause(&mut cancel);
                    None
                }
                Outcome::LeaseLost(_) => None,
                // A cancel during compensation changes nothing.
                Outcome::CancelDuring(then) => Some(then),
            };
            match result {
                None => false,
                Some(Basic::Ok) => {
                    steps[k].compensation = CompensationStatus::Compensated;
                    order.remove(0);
                    false
                }
                Some(Basic::Retryable | Basic::Unknown)
                    if attempt - bases[k] < script.compensation_max_attempts =>
                {
                    steps[k].compensation = CompensationStatus::Pending;
                    pause(&mut cancel);
                    false
                }
                Some(_) => true,
            }
        };
        if gave_up {
            steps[k].compensation = CompensationStatus::Failed;
            if operator_retries < script.operator_retries {
                operator_retries += 1;
                bases[k] = steps[k].compensation_attempts;
                steps[k].compensation = CompensationStatus::Pending;
            } else {
                failed = true;
                break;
            }
        }
    }
    for step in &mut steps {
        if step.status != StepStatus::Succeeded {
            step.status = if step.attempts == 0 {
                StepStatus::Skipped
            } else {
                StepStatus::Failed
            };
        }
    }
    let (status, error) = if failed {
        (SagaStatus::Failed, Some("compensation_failed".to_string()))
    } else if operator_retries > 0 {
        // The error a resumed compensation leaves is not part of the model.
        (SagaStatus::Compensated, None)
    } else {
        (SagaStatus::Compensated, Some(first_error))
    };
    Expected {
        status,
        error,
        steps,
        operator_retries,
    }
}

// ---------------------------------------------------------------------------------------------
// The skill and the harness
// ---------------------------------------------------------------------------------------------

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Empty {}
impl SkillInput for Empty {}

const LEASE: Duration = Duration::from_secs(30);
const WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
const SLEEP: Duration = Duration::from_secs(600);
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Rounds of "drive until idle, then act" before a saga counts as stuck.
const MAX_ROUNDS: usize = 200;
const OPERATOR: &str = "operator:model";

/// One call of an action or a compensation.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    saga: Uuid,
    position: usize,
    compensation: bool,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Crash,
    LeaseLost,
    CancelDuring,
}

/// An action tells the harness that a fault happens now.
struct Signal {
    fault: Fault,
    saga: Uuid,
    /// Lets a stalled attempt go on.
    resume: Option<oneshot::Sender<()>>,
}

/// What the skill's steps share with the harness.
struct Shared {
    script: Script,
    /// The saga that follows the script; any other saga (a restart) succeeds everywhere.
    scripted: Mutex<Option<Uuid>>,
    calls: Mutex<Vec<Call>>,
    signals: mpsc::UnboundedSender<Signal>,
    /// The faults the scripted saga met, for the coverage summary.
    met: Mutex<BTreeSet<&'static str>>,
}

impl Shared {
    fn record(&self, ctx: &StepContext, compensation: bool) -> Outcome {
        self.calls.lock().unwrap().push(Call {
            saga: ctx.saga_id,
            position: ctx.position,
            compensation,
            attempt: ctx.attempt,
        });
        if *self.scripted.lock().unwrap() == Some(ctx.saga_id) {
            let outcome = self.script.outcome(ctx.position, ctx.attempt, compensation);
            let fault = match (outcome, compensation) {
                (Outcome::Crash, false) => Some("crash"),
                (Outcome::Crash, true) => Some("crash_in_compensation"),
                (Outcome::LeaseLost(_), false) => Some("lease_lost"),
                (Outcome::LeaseLost(_), true) => Some("lease_lost_in_compensation"),
                (Outcome::CancelDuring(_), false) => Some("cancel_during_step"),
                _ => None,
            };
            if let Some(fault) = fault {
                self.met.lock().unwrap().insert(fault);
            }
            outcome
        } else {
            Outcome::Ok
        }
    }

    async fn act(&self, saga: Uuid, outcome: Outcome, output: Value) -> Result<Value, StepError> {
        let then = match outcome {
            Outcome::Ok => Basic::Ok,
            Outcome::Retryable => Basic::Retryable,
            Outcome::Permanent => Basic::Permanent,
            Outcome::Unknown => Basic::Unknown,
            Outcome::Crash => {
                let _ = self.signals.send(Signal {
                    fault: Fault::Crash,
                    saga,
                    resume: None,
                });
                // The harness drops the worker's future with this one in it.
                return std::future::pending().await;
            }
            Outcome::LeaseLost(then) | Outcome::CancelDuring(then) => {
                let fault = if matches!(outcome, Outcome::LeaseLost(_)) {
                    Fault::LeaseLost
                } else {
                    Fault::CancelDuring
                };
                let (resume, resumed) = oneshot::channel();
                let _ = self.signals.send(Signal {
                    fault,
                    saga,
                    resume: Some(resume),
                });
                let _ = resumed.await;
                then
            }
        };
        match then {
            Basic::Ok => Ok(output),
            Basic::Retryable => Err(StepError::retryable("model_retryable", "scripted")),
            Basic::Permanent => Err(StepError::permanent("model_permanent", "scripted")),
            Basic::Unknown => Err(StepError::unknown("model_unknown", "scripted")),
        }
    }
}

fn step_name(position: usize) -> String {
    format!("s{position}")
}

fn event_name(position: usize) -> String {
    format!("ev{position}")
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_delay: RETRY_DELAY,
        multiplier: 1.0,
        max_delay: RETRY_DELAY,
        jitter: Jitter::None,
    }
}

fn model_skill(name: &str, shared: &Arc<Shared>) -> Skill {
    let mut builder = Skill::builder::<Empty>(name, 1, "Follows a generated script.");
    for (position, plan) in shared.script.steps.iter().enumerate() {
        let on_action = shared.clone();
        let wait = plan.wait;
        let waits = wait.is_some_and(|w| w != WaitPlan::Sleep);
        let mut step = Step::new(step_name(position), move |ctx: StepContext| {
            let shared = on_action.clone();
            async move {
                let outcome = shared.record(&ctx, false);
                match wait {
                    Some(WaitPlan::Sleep) => ctx.sleep(SLEEP)?,
                    Some(plan) => {
                        let default =
                            (plan == WaitPlan::TimedOutToDefault).then(|| json!({"default": true}));
                        let wait = Wait::within(WAIT_TIMEOUT).default_payload(default);
                        ctx.await_event(&event_name(position), wait)?;
                    }
                    None => {}
                }
                let output = json!({"position": position, "attempt": ctx.attempt});
                shared.act(ctx.saga_id, outcome, output).await
            }
        })
        .retry(policy(shared.script.max_attempts))
        .compensation_retry(policy(shared.script.compensation_max_attempts));
        if waits {
            step = step.awaits(event_name(position), json!({"type": "object"}));
        }
        if plan.compensable {
            let on_undo = shared.clone();
            step = step.compensate(move |ctx: StepContext, _output: Value| {
                let shared = on_undo.clone();
                async move {
                    let outcome = shared.record(&ctx, true);
                    let output = json!({"undid": position, "attempt": ctx.attempt});
                    shared.act(ctx.saga_id, outcome, output).await
                }
            });
        }
        builder = builder.step(step);
    }
    builder.build().expect("the model skill builds")
}

/// One engine and clock for a case: a skill per script, the workers' settings, the faults
/// signalled by the steps.
struct Harness {
    engine: Engine,
    clock: ManualClock,
    /// One per script, with its skill's name.
    skills: Vec<(Arc<Shared>, String)>,
    signals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Signal>>,
    commit_batch: usize,
    workers: AtomicUsize,
}

/// What a round asks of the clock, least first: retries and expired leases are due after the
/// lease, a sleep after its end, an unanswered wait after its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Advance {
    None,
    Lease,
    Sleep,
    Deadline,
}

/// Skill names are unique per case, so a case's workers never touch another case's sagas.
static CASES: AtomicUsize = AtomicUsize::new(0);

impl Harness {
    fn new(pool: PgPool, scripts: Vec<Script>, commit_batch: usize) -> Self {
        let case = CASES.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut registry = Registry::new();
        let mut skills = Vec::new();
        for (i, script) in scripts.into_iter().enumerate() {
            let shared = Arc::new(Shared {
                script,
                scripted: Mutex::new(None),
                calls: Mutex::new(Vec::new()),
                signals: tx.clone(),
                met: Mutex::new(BTreeSet::new()),
            });
            let skill = format!("model_{case}_{i}");
            registry.register(model_skill(&skill, &shared)).unwrap();
            skills.push((shared, skill));
        }
        let clock = ManualClock::starting_now();
        let engine = Engine::new(
            PgStore::new(pool),
            Arc::new(registry),
            Arc::new(clock.clone()),
        );
        Self {
            engine,
            clock,
            skills,
            signals: tokio::sync::Mutex::new(rx),
            commit_batch,
            workers: AtomicUsize::new(0),
        }
    }

    fn calls(&self, saga: Uuid) -> Vec<Call> {
        let mut found = Vec::new();
        for (shared, _) in &self.skills {
            let calls = shared.calls.lock().unwrap();
            found.extend(calls.iter().filter(|c| c.saga == saga).cloned());
        }
        found
    }

    fn all_calls(&self) -> usize {
        self.skills
            .iter()
            .map(|(shared, _)| shared.calls.lock().unwrap().len())
            .sum()
    }

    /// Starts the saga of script `i` (with its early deliveries), twice with one idempotency
    /// key: the second start returns the first saga.
    async fn start(&self, i: usize) -> Result<Uuid, TestCaseError> {
        let shared = &self.skills[i].0;
        let request = self.start_request(i);
        let started = self.engine.start(request.clone()).await.unwrap();
        let id = started.saga.id;
        let again = self.engine.start(request).await.unwrap();
        prop_assert!(started.created && !again.created && again.saga.id == id);
        *shared.scripted.lock().unwrap() = Some(id);
        for (position, step) in shared.script.steps.iter().enumerate() {
            if step.wait == Some(WaitPlan::DeliveredEarly) {
                self.deliver(id, position).await;
            }
        }
        Ok(id)
    }

    fn start_request(&self, i: usize) -> StartRequest {
        StartRequest {
            skill: self.skills[i].1.clone(),
            input: json!({}),
            idempotency_key: Some("model".into()),
            started_by: "test:model".into(),
        }
    }

    /// Runs a new worker until it is idle, acting on the faults its steps signal. A crash
    /// drops the worker; a lost lease moves the clock past the lease and runs another worker
    /// (this same function) before the stalled attempt goes on.
    fn drive_once(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let n = self.workers.fetch_add(1, Ordering::Relaxed);
            let worker = self.engine.worker(WorkerConfig {
                worker_id: format!("w{n}"),
                concurrency: 4,
                lease: LEASE,
                jitter: JitterSource::Fixed(1.0),
                commit_batch: self.commit_batch,
                ..WorkerConfig::default()
            });
            let run = worker.run_until_idle();
            tokio::pin!(run);
            loop {
                let signal = async { self.signals.lock().await.recv().await };
                tokio::select! {
                    result = &mut run => {
                        result.expect("the worker meets no store error");
                        return;
                    }
                    Some(signal) = signal => match signal.fault {
                        Fault::Crash => return,
                        Fault::LeaseLost => {
                            self.clock.advance(LEASE + Duration::from_secs(1));
                            self.drive_once().await;
                            if let Some(resume) = signal.resume {
                                let _ = resume.send(());
                            }
                        }
                        Fault::CancelDuring => {
                            self.engine
                                .cancel(signal.saga, OPERATOR, Some("cancelled mid-step"))
                                .await
                                .unwrap();
                            if let Some(resume) = signal.resume {
                                let _ = resume.send(());
                            }
                        }
                    }
                }
            }
        })
    }

    async fn detail(&self, id: Uuid) -> SagaDetail {
        self.engine.detail(id).await.unwrap().expect("saga exists")
    }

    /// Drives saga `id` to a terminal state; see [`Harness::drive_all`].
    async fn drive_to_terminal(
        &self,
        id: Uuid,
        script: Option<&Script>,
    ) -> Result<(SagaDetail, u32), TestCaseError> {
        let mut done = self.drive_all(&[(id, script)]).await?;
        Ok(done.remove(0))
    }

    /// Drives sagas to terminal states, side by side. Between rounds (each saga's pauses in the
    /// model: a round ended and it is not terminal) it cancels a saga when its script says so,
    /// answers or lets time out a wait, or moves the clock past retry delays and expired
    /// leases; at a terminal state it applies the operator actions of the script. A saga
    /// without a script gets its events and runs to its end. Returns each saga, in order, with
    /// the operator retries made.
    async fn drive_all(
        &self,
        sagas: &[(Uuid, Option<&Script>)],
    ) -> Result<Vec<(SagaDetail, u32)>, TestCaseError> {
        let mut pauses = vec![0u32; sagas.len()];
        let mut retries = vec![0u32; sagas.len()];
        let mut done: Vec<Option<SagaDetail>> = vec![None; sagas.len()];
        for _ in 0..MAX_ROUNDS {
            self.drive_once().await;
            let mut advance = Advance::None;
            for (i, &(id, script)) in sagas.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let saga = self.detail(id).await;
                if saga.status.is_terminal() {
                    match script {
                        Some(script)
                            if saga.status == SagaStatus::Failed
                                && retries[i] < script.operator_retries =>
                        {
                            retries[i] += 1;
                            self.engine
                                .retry(id, &OperatorRequest::new(OPERATOR).reason("scripted"))
                                .await
                                .map_err(|e| TestCaseError::fail(format!("operator retry: {e}")))?;
                        }
                        _ => done[i] = Some(saga),
                    }
                    continue;
                }
                pauses[i] += 1;
                let cancel = script.and_then(|s| s.cancel_at_pause) == Some(pauses[i]);
                if cancel {
                    self.engine
                        .cancel(id, OPERATOR, Some("cancelled at a pause"))
                        .await
                        .unwrap();
                }
                let needs = match (saga.status, &saga.waiting_for) {
                    // A cancel makes a waiting saga due at once.
                    (SagaStatus::Waiting, _) if cancel => Advance::None,
                    (SagaStatus::Waiting, Some(waiting)) if waiting["event"].is_null() => {
                        Advance::Sleep
                    }
                    (SagaStatus::Waiting, Some(waiting)) => {
                        let name = waiting["step"].as_str().unwrap_or_default();
                        let position: usize = name.trim_start_matches('s').parse().unwrap();
                        let plan = script.and_then(|s| s.steps[position].wait);
                        if matches!(plan, Some(WaitPlan::TimedOut | WaitPlan::TimedOutToDefault)) {
                            Advance::Deadline
                        } else {
                            self.deliver(id, position).await;
                            Advance::None
                        }
                    }
                    _ => Advance::Lease,
                };
                advance = advance.max(needs);
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().zip(retries).collect());
            }
            self.clock.advance(match advance {
                Advance::None => Duration::ZERO,
                Advance::Lease => LEASE + Duration::from_secs(1),
                Advance::Sleep => SLEEP + Duration::from_secs(1),
                Advance::Deadline => WAIT_TIMEOUT * 2,
            });
        }
        let mut stuck = Vec::new();
        for &(id, _) in sagas {
            let saga = self.detail(id).await;
            if !saga.status.is_terminal() {
                stuck.push(format!(
                    "{id} {:?}: {:#?}",
                    saga.status,
                    common::history(&saga)
                ));
            }
        }
        Err(TestCaseError::fail(format!(
            "sagas not terminal after {MAX_ROUNDS} rounds: {}",
            stuck.join("\n")
        )))
    }

    /// Delivers step `position`'s event, twice: the second delivery is a duplicate.
    async fn deliver(&self, id: Uuid, position: usize) {
        for duplicate in [false, true] {
            let delivery = self
                .engine
                .deliver(
                    id,
                    &event_name(position),
                    json!({}),
                    &format!("d{position}"),
                    "test:model",
                )
                .await
                .unwrap();
            assert_eq!(delivery.duplicate, duplicate, "delivery to step {position}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------------------------

fn position_of(step: &Option<String>) -> usize {
    step.as_deref()
        .unwrap_or_default()
        .trim_start_matches('s')
        .parse()
        .expect("a model step name")
}

fn events_of(saga: &SagaDetail, kind: EventKind) -> Vec<(usize, i32)> {
    saga.events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| (position_of(&e.step), e.attempt.unwrap_or(0)))
        .collect()
}

fn one_to(n: i32) -> BTreeSet<i32> {
    (1..=n).collect()
}

/// Invariants that need no model, for any saga of a model skill.
fn check_invariants(
    saga: &SagaDetail,
    calls: &[Call],
    compensable: &[bool],
    max_attempts: u32,
    compensation_budget: u32,
) -> Result<(), TestCaseError> {
    let story = || format!("history: {:#?}", common::history(saga));
    prop_assert!(saga.status.is_terminal(), "not terminal: {:?}", saga.status);
    // Possibly done, from the history alone: steps that did not succeed although an attempt
    // failed with an unknown outcome.
    let possibly_done: BTreeSet<usize> = saga
        .steps
        .iter()
        .filter(|s| s.status != StepStatus::Succeeded)
        .filter(|s| {
            saga.events.iter().any(|e| {
                e.kind == EventKind::StepFailed
                    && e.step.as_deref() == Some(s.name.as_str())
                    && e.detail.as_ref().is_some_and(|d| d["outcome"] == "unknown")
            })
        })
        .map(|s| s.position as usize)
        .collect();

    // Terminal states are final: after saga_completed/compensated/failed only operator actions
    // follow; an operator retry (of a failed saga) reopens it.
    let mut ended = false;
    for event in &saga.events {
        let reopen = event.kind == EventKind::OperatorRetry;
        let annotation = matches!(
            event.kind,
            EventKind::OperatorRestart | EventKind::OperatorFork
        );
        if ended && !reopen && !annotation {
            return Err(TestCaseError::fail(format!(
                "{:?} after the saga ended; {}",
                event.kind,
                story()
            )));
        }
        if reopen {
            prop_assert!(
                ended,
                "operator retry of a saga that had not ended; {}",
                story()
            );
            ended = false;
        }
        if matches!(
            event.kind,
            EventKind::SagaCompleted | EventKind::SagaCompensated | EventKind::SagaFailed
        ) {
            ended = true;
        }
    }
    prop_assert!(ended, "the history does not end the saga; {}", story());
    let last_end = saga
        .events
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.kind,
                EventKind::SagaCompleted | EventKind::SagaCompensated | EventKind::SagaFailed
            )
        })
        .map(|e| e.kind);
    let expected_end = match saga.status {
        SagaStatus::Completed => EventKind::SagaCompleted,
        SagaStatus::Compensated => EventKind::SagaCompensated,
        _ => EventKind::SagaFailed,
    };
    prop_assert_eq!(last_end, Some(expected_end), "{}", story());

    let succeeded = events_of(saga, EventKind::StepSucceeded);
    let started = events_of(saga, EventKind::StepStarted);
    let undone = events_of(saga, EventKind::CompensationSucceeded);
    let undo_started = events_of(saga, EventKind::CompensationStarted);

    for step in &saga.steps {
        let k = step.position as usize;
        // Attempts are never lost: the attempts recorded are exactly those the action was
        // called with (a wait calls the same attempt again), each started once in the history.
        let called: BTreeSet<i32> = calls
            .iter()
            .filter(|c| c.position == k && !c.compensation)
            .map(|c| c.attempt as i32)
            .collect();
        prop_assert_eq!(
            &called,
            &one_to(step.attempts),
            "step {} attempts {} vs calls; {}",
            k,
            step.attempts,
            story()
        );
        let started_here: Vec<i32> = started
            .iter()
            .filter(|(p, _)| *p == k)
            .map(|(_, a)| *a)
            .collect();
        prop_assert_eq!(
            started_here.iter().copied().collect::<BTreeSet<_>>(),
            one_to(step.attempts),
            "step {} step_started attempts; {}",
            k,
            story()
        );
        prop_assert_eq!(
            started_here.len(),
            step.attempts as usize,
            "an attempt of step {} started twice; {}",
            k,
            story()
        );
        prop_assert!(
            step.attempts as u32 <= max_attempts,
            "step {} ran {} attempts, budget {}",
            k,
            step.attempts,
            max_attempts
        );
        let undo_called: BTreeSet<i32> = calls
            .iter()
            .filter(|c| c.position == k && c.compensation)
            .map(|c| c.attempt as i32)
            .collect();
        prop_assert_eq!(
            &undo_called,
            &one_to(step.compensation.attempts),
            "step {} compensation attempts vs calls; {}",
            k,
            story()
        );
        prop_assert!(
            step.compensation.attempts as u32 <= compensation_budget,
            "step {} compensation ran {} attempts, budget {}",
            k,
            step.compensation.attempts,
            compensation_budget
        );

        // The history agrees with the step's final state.
        let successes: Vec<i32> = succeeded
            .iter()
            .filter(|(p, _)| *p == k)
            .map(|(_, a)| *a)
            .collect();
        if step.status == StepStatus::Succeeded {
            prop_assert_eq!(
                &successes,
                &vec![step.attempts],
                "step {} succeeded: one step_succeeded, of its last attempt; {}",
                k,
                story()
            );
            // The output is the last attempt's: a fenced-off worker's result never lands.
            prop_assert_eq!(
                step.output.as_ref().map(|o| o["attempt"].clone()),
                Some(json!(step.attempts)),
                "step {} output",
                k
            );
        } else {
            prop_assert!(
                successes.is_empty(),
                "step {} is {:?} but the history says it succeeded; {}",
                k,
                step.status,
                story()
            );
            prop_assert!(
                undo_called.is_empty() || possibly_done.contains(&k),
                "step {} never succeeded, no attempt's outcome was unknown, yet it was \
                 compensated; {}",
                k,
                story()
            );
            prop_assert_eq!(
                step.possibly_done,
                possibly_done.contains(&k),
                "step {} possibly_done vs its unknown failures; {}",
                k,
                story()
            );
        }
        let undone_here = undone.iter().filter(|(p, _)| *p == k).count();
        prop_assert_eq!(
            undone_here,
            usize::from(step.compensation.status == CompensationStatus::Compensated),
            "step {} compensation {:?} vs compensation_succeeded events; {}",
            k,
            step.compensation.status,
            story()
        );
        if step.compensation.status != CompensationStatus::NotNeeded {
            prop_assert!(
                compensable[k]
                    && (step.status == StepStatus::Succeeded || possibly_done.contains(&k)),
                "step {} is {:?}, compensable {}, yet its compensation is {:?}",
                k,
                step.status,
                compensable[k],
                step.compensation.status
            );
        }
    }

    // Compensations run in reverse order of the steps: the calls and the history never go
    // back up, and each step is undone at most once.
    let call_order: Vec<usize> = calls
        .iter()
        .filter(|c| c.compensation)
        .map(|c| c.position)
        .collect();
    prop_assert!(
        call_order.windows(2).all(|w| w[0] >= w[1]),
        "compensations called out of order: {:?}",
        call_order
    );
    prop_assert!(
        undo_started.windows(2).all(|w| w[0].0 >= w[1].0),
        "compensation_started out of order; {}",
        story()
    );
    prop_assert!(
        undone.windows(2).all(|w| w[0].0 > w[1].0),
        "compensation_succeeded out of order or twice; {}",
        story()
    );

    // Every succeeded or possibly done compensable step owes exactly one compensation.
    let must_undo: BTreeSet<usize> = saga
        .steps
        .iter()
        .filter(|s| {
            (s.status == StepStatus::Succeeded || possibly_done.contains(&(s.position as usize)))
                && compensable[s.position as usize]
        })
        .map(|s| s.position as usize)
        .collect();
    match saga.status {
        SagaStatus::Completed => {
            // Every step ran to success exactly once; nothing was undone.
            prop_assert!(saga.steps.iter().all(|s| s.status == StepStatus::Succeeded));
            prop_assert_eq!(succeeded.len(), saga.steps.len(), "{}", story());
            prop_assert!(call_order.is_empty(), "a completed saga compensated");
            prop_assert!(saga.error.is_none());
        }
        SagaStatus::Compensated => {
            // Exactly the succeeded compensable steps were undone, each once.
            let undone_set: BTreeSet<usize> = undone.iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(&undone_set, &must_undo, "{}", story());
            prop_assert!(
                saga.steps.iter().any(|s| s.status != StepStatus::Succeeded)
                    || saga
                        .error
                        .as_ref()
                        .is_some_and(|e| e["code"] == "cancelled")
            );
        }
        _ => {
            // One compensation gave up; those above it were undone, those below still wait.
            let failed: Vec<usize> = saga
                .steps
                .iter()
                .filter(|s| s.compensation.status == CompensationStatus::Failed)
                .map(|s| s.position as usize)
                .collect();
            prop_assert_eq!(failed.len(), 1, "{}", story());
            for &k in &must_undo {
                let want = match k.cmp(&failed[0]) {
                    std::cmp::Ordering::Greater => CompensationStatus::Compensated,
                    std::cmp::Ordering::Equal => CompensationStatus::Failed,
                    std::cmp::Ordering::Less => CompensationStatus::Pending,
                };
                prop_assert_eq!(saga.steps[k].compensation.status, want, "step {}", k);
            }
        }
    }
    Ok(())
}

/// The engine's final state against the model's.
fn check_model(saga: &SagaDetail, retries: u32, expected: &Expected) -> Result<(), TestCaseError> {
    let actual = Expected {
        status: saga.status,
        error: saga
            .error
            .as_ref()
            .and_then(|e| e["code"].as_str())
            .map(str::to_string)
            // The error a resumed compensation leaves is not part of the model.
            .filter(|_| !(saga.status == SagaStatus::Compensated && retries > 0)),
        steps: saga
            .steps
            .iter()
            .map(|s| ModelStep {
                status: s.status,
                attempts: s.attempts as u32,
                compensation: s.compensation.status,
                compensation_attempts: s.compensation.attempts as u32,
            })
            .collect(),
        operator_retries: retries,
    };
    prop_assert_eq!(
        &actual,
        expected,
        "engine (left) vs model (right); history: {:#?}",
        common::history(saga)
    );
    Ok(())
}

/// Runs `scripts` side by side, a saga each, to their ends; checks each against the model and
/// the invariants, restarts the compensated ones whose script says so, and checks that the
/// ends are final.
async fn run_case(
    pool: PgPool,
    scripts: Vec<Script>,
    commit_batch: usize,
    coverage: &Coverage,
) -> Result<(), TestCaseError> {
    let h = Harness::new(pool, scripts.clone(), commit_batch);
    let mut ids = Vec::new();
    for i in 0..scripts.len() {
        ids.push(h.start(i).await?);
    }
    let plan: Vec<(Uuid, Option<&Script>)> = ids
        .iter()
        .zip(&scripts)
        .map(|(id, s)| (*id, Some(s)))
        .collect();
    let results = h.drive_all(&plan).await?;

    let mut finished = Vec::new();
    let mut replays = Vec::new();
    for (i, (saga, retries)) in results.into_iter().enumerate() {
        let (id, script) = (ids[i], &scripts[i]);
        let compensable: Vec<bool> = script.steps.iter().map(|s| s.compensable).collect();
        check_invariants(
            &saga,
            &h.calls(id),
            &compensable,
            script.max_attempts,
            script.compensation_max_attempts * (1 + retries),
        )?;
        check_model(&saga, retries, &expect(script))?;
        let restart = saga.status == SagaStatus::Compensated && script.restart_if_compensated;
        note_coverage(coverage, &h, i, &saga, retries, restart);
        if restart {
            let replay = h
                .engine
                .restart(id, &OperatorRequest::new(OPERATOR).reason("scripted"))
                .await
                .map_err(|e| TestCaseError::fail(format!("restart: {e}")))?;
            replays.push((i, replay.id));
        }
        finished.push((id, saga));
    }

    // A restart is a new saga, linked to the original, which only gains the record of it.
    let plan: Vec<(Uuid, Option<&Script>)> = replays.iter().map(|(_, id)| (*id, None)).collect();
    let again = h.drive_all(&plan).await?;
    for (&(i, replay), (again, _)) in replays.iter().zip(again) {
        let script = &scripts[i];
        prop_assert_eq!(again.status, SagaStatus::Completed);
        prop_assert_eq!(again.replay_of, Some(ids[i]));
        prop_assert!(again.steps.iter().all(|s| s.attempts == 1));
        let compensable: Vec<bool> = script.steps.iter().map(|s| s.compensable).collect();
        check_invariants(
            &again,
            &h.calls(replay),
            &compensable,
            script.max_attempts,
            script.compensation_max_attempts,
        )?;
        let original = h.detail(ids[i]).await;
        let before = finished[i].1.events.len();
        prop_assert_eq!(original.events.len(), before + 1);
        prop_assert_eq!(original.events[before].kind, EventKind::OperatorRestart);
        prop_assert_eq!(original.status, SagaStatus::Compensated);
        finished[i].1 = original;
        finished.push((replay, again));
    }

    // A terminal saga takes no cancel and no event, and a start with its key returns it.
    for (id, _) in &finished {
        prop_assert!(!h
            .engine
            .cancel(*id, OPERATOR, Some("too late"))
            .await
            .unwrap());
    }
    for (i, script) in scripts.iter().enumerate() {
        if let Some(position) = script
            .steps
            .iter()
            .position(|s| s.wait.is_some_and(|w| w != WaitPlan::Sleep))
        {
            let late = h
                .engine
                .deliver(
                    ids[i],
                    &event_name(position),
                    json!({}),
                    "late",
                    "test:model",
                )
                .await;
            prop_assert!(
                matches!(late, Err(stepwise_engine::DeliverError::Terminal { .. })),
                "{:?}",
                late
            );
        }
        let again = h.engine.start(h.start_request(i)).await.unwrap();
        prop_assert!(!again.created && again.saga.id == ids[i]);
    }

    // Terminal states are final: much later, another worker finds nothing to do.
    let calls_before = h.all_calls();
    h.clock.advance(WAIT_TIMEOUT * 3);
    h.drive_once().await;
    for (id, saga) in &finished {
        let now = h.detail(*id).await;
        prop_assert_eq!(now.status, saga.status);
        prop_assert_eq!(now.events.len(), saga.events.len(), "saga {} moved", id);
    }
    prop_assert_eq!(h.all_calls(), calls_before);
    Ok(())
}

/// How often each final status, fault and operator action came up, over the cases of a run.
type Coverage = Mutex<BTreeMap<String, usize>>;

fn note_coverage(
    coverage: &Coverage,
    h: &Harness,
    i: usize,
    saga: &SagaDetail,
    retries: u32,
    restarted: bool,
) {
    let mut seen: Vec<String> = vec![format!("status_{}", saga.status)];
    seen.extend(
        h.skills[i]
            .0
            .met
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.to_string()),
    );
    for (kind, label) in [
        (EventKind::WaitStarted, "wait_started"),
        (EventKind::WaitTimedOut, "wait_timed_out"),
        (EventKind::SleepStarted, "sleep_started"),
        (EventKind::EventReceived, "event_received"),
        (EventKind::LeaseExpired, "lease_expired"),
        (EventKind::CancelRequested, "cancel_requested"),
    ] {
        if saga.events.iter().any(|e| e.kind == kind) {
            seen.push(label.to_string());
        }
    }
    if saga.steps.iter().any(|s| s.possibly_done) {
        seen.push("possibly_done".into());
        if saga
            .steps
            .iter()
            .any(|s| s.possibly_done && s.compensation.status == CompensationStatus::Compensated)
        {
            seen.push("possibly_done_compensated".into());
        }
    }
    if retries > 0 {
        seen.push("operator_retry".into());
    }
    if restarted {
        seen.push("operator_restart".into());
    }
    let mut coverage = coverage.lock().unwrap();
    for label in seen {
        *coverage.entry(label).or_default() += 1;
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `cases` cases of `strategy` on a runtime of their own (the test's runtime waits
/// meanwhile), in a pool of their own on the test's database.
async fn run_model(
    pool: PgPool,
    name: &str,
    cases: u32,
    strategy: fn() -> BoxedStrategy<Vec<Script>>,
) {
    let coverage = Arc::new(Coverage::default());
    let seen = coverage.clone();
    let options = (*pool.connect_options()).clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pool = runtime
            .block_on(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(options),
            )
            .unwrap();
        let config = Config {
            cases,
            failure_persistence: None,
            rng_seed: env_number("STEPWISE_MODEL_SEED").map_or(RngSeed::Random, RngSeed::Fixed),
            max_shrink_iters: 2_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy(), |scripts| {
            let commit_batch = scripts[0].commit_batch;
            runtime.block_on(run_case(pool.clone(), scripts, commit_batch, &seen))
        });
        runtime.block_on(pool.close());
        result
    })
    .await
    .unwrap();
    eprintln!(
        "{name}, {cases} cases; sagas per final status, fault and action: {:?}",
        coverage.lock().unwrap()
    );
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[sqlx::test(migrations = false)]
async fn sagas_follow_the_model_under_generated_outcomes_faults_and_operator_actions(pool: PgPool) {
    common::migrate(&pool).await;
    let cases = env_number("STEPWISE_MODEL_CASES").unwrap_or(48) as u32;
    run_model(pool, "one saga at a time", cases, || {
        script().prop_map(|script| vec![script]).boxed()
    })
    .await;
}

/// A crash or a lost lease stops every saga its worker holds, which the model of one saga does
/// not know: side by side, those attempts fail or return at once instead.
fn without_worker_faults(outcome: Outcome) -> Outcome {
    let of = |basic| match basic {
        Basic::Ok => Outcome::Ok,
        Basic::Retryable => Outcome::Retryable,
        Basic::Permanent => Outcome::Permanent,
        Basic::Unknown => Outcome::Unknown,
    };
    match outcome {
        Outcome::Crash => Outcome::Retryable,
        Outcome::LeaseLost(then) => of(then),
        other => other,
    }
}

/// Two to four sagas, each with its own script and skill, run by the same workers: claims take
/// several at once and group commit (`commit_batch` 4) puts their steps in one transaction.
#[sqlx::test(migrations = false)]
async fn sagas_side_by_side_each_follow_the_model(pool: PgPool) {
    common::migrate(&pool).await;
    let cases = env_number("STEPWISE_MODEL_CASES").unwrap_or(48) as u32 / 2;
    run_model(pool, "sagas side by side", cases.max(1), || {
        (
            prop::collection::vec(script(), 2..=4),
            prop_oneof![Just(1usize), Just(4usize)],
        )
            .prop_map(|(mut scripts, commit_batch)| {
                for script in &mut scripts {
                    script.commit_batch = commit_batch;
                    for step in &mut script.steps {
                        for outcome in step.attempts.iter_mut().chain(&mut step.compensations) {
                            *outcome = without_worker_faults(*outcome);
                        }
                    }
                }
                scripts
            })
            .boxed()
    })
    .await;
}

/// The scripts are what a reader sees when a case fails: check that the model itself agrees
/// with the engine on a few hand-written ones, so a model bug is not mistaken for an engine bug.
#[test]
fn the_model_predicts_simple_scripts() {
    let step = |attempts: Vec<Outcome>| StepScript {
        compensable: true,
        wait: None,
        attempts,
        compensations: Vec::new(),
    };
    let script = Script {
        steps: vec![
            step(vec![]),
            step(vec![Outcome::Retryable, Outcome::Permanent]),
        ],
        max_attempts: 3,
        compensation_max_attempts: 1,
        cancel_at_pause: None,
        operator_retries: 0,
        restart_if_compensated: false,
        commit_batch: 1,
    };
    let e = expect(&script);
    assert_eq!(e.status, SagaStatus::Compensated);
    assert_eq!(e.error.as_deref(), Some("model_permanent"));
    assert_eq!(e.steps[0].compensation, CompensationStatus::Compensated);
    assert_eq!(e.steps[1].status, StepStatus::Failed);
    assert_eq!(e.steps[1].attempts, 2);

    let mut crash = script.clone();
    crash.steps[1].attempts = vec![Outcome::Crash; 3];
    let e = expect(&crash);
    assert_eq!(e.error.as_deref(), Some("attempt_interrupted"));
    assert_eq!(e.steps[1].attempts, 3);

    let mut cancel = script;
    cancel.steps[1].attempts = vec![Outcome::CancelDuring(Basic::Ok)];
    let e = expect(&cancel);
    assert_eq!(
        e.status,
        SagaStatus::Completed,
        "the last step's success wins"
    );
}

// Hand-picked cases, kept as named regressions: each drives one script through the same
// harness and checks.
fn one_step(attempts: Vec<Outcome>, compensations: Vec<Outcome>) -> StepScript {
    StepScript {
        compensable: true,
        wait: None,
        attempts,
        compensations,
    }
}

async fn run_script(pool: PgPool, script: Script) {
    common::migrate(&pool).await;
    let options = (*pool.connect_options()).clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    let coverage = Coverage::default();
    let result = run_case(
        pool.clone(),
        vec![script.clone()],
        script.commit_batch,
        &coverage,
    )
    .await;
    pool.close().await;
    if let Err(e) = result {
        panic!("{script:#?}\n{e}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_worker_that_loses_its_lease_mid_step_is_fenced_off_and_its_result_dropped(pool: PgPool) {
    let script = Script {
        steps: vec![
            one_step(vec![], vec![]),
            one_step(
                vec![Outcome::LeaseLost(Basic::Ok), Outcome::Retryable],
                vec![],
            ),
            one_step(
                vec![Outcome::Crash],
                vec![Outcome::LeaseLost(Basic::Permanent)],
            ),
        ],
        max_attempts: 3,
        compensation_max_attempts: 2,
        cancel_at_pause: None,
        operator_retries: 0,
        restart_if_compensated: false,
        commit_batch: 1,
    };
    run_script(pool, script).await;
}

#[sqlx::test(migrations = false)]
async fn a_failed_compensation_resumed_by_an_operator_undoes_the_rest_in_reverse_order(
    pool: PgPool,
) {
    let script = Script {
        steps: vec![
            one_step(vec![], vec![Outcome::Retryable]),
            one_step(vec![], vec![Outcome::Permanent, Outcome::Crash]),
            one_step(vec![Outcome::Permanent], vec![]),
        ],
        max_attempts: 2,
        compensation_max_attempts: 2,
        cancel_at_pause: None,
        operator_retries: 1,
        restart_if_compensated: true,
        commit_batch: 4,
    };
    run_script(pool, script).await;
}

/// The invariants bite: a real compensated saga passes them, and each doctored copy (a
/// compensation out of order, an attempt the action never got, history after the end, a step
/// that succeeded twice) is refused.
#[sqlx::test(migrations = false)]
async fn the_invariants_reject_doctored_sagas(pool: PgPool) {
    common::migrate(&pool).await;
    let script = Script {
        steps: vec![
            one_step(vec![Outcome::Retryable], vec![]),
            one_step(vec![], vec![]),
            one_step(vec![Outcome::Permanent], vec![]),
        ],
        max_attempts: 2,
        compensation_max_attempts: 1,
        cancel_at_pause: None,
        operator_retries: 0,
        restart_if_compensated: false,
        commit_batch: 1,
    };
    let h = Harness::new(pool, vec![script.clone()], 1);
    let id = h.start(0).await.unwrap();
    let (saga, _) = h.drive_to_terminal(id, Some(&script)).await.unwrap();
    let calls = h.calls(id);
    let check = |saga: &SagaDetail, calls: &[Call]| {
        check_invariants(saga, calls, &[true, true, true], 2, 1)
    };
    assert_eq!(saga.status, SagaStatus::Compensated);
    check(&saga, &calls).unwrap();
    check_model(&saga, 0, &expect(&script)).unwrap();

    let mut reversed = calls.clone();
    let undo: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].compensation)
        .collect();
    reversed.swap(undo[0], undo[1]);
    assert!(
        check(&saga, &reversed).is_err(),
        "compensations out of order"
    );

    let mut lost = calls.clone();
    let retried = lost
        .iter()
        .position(|c| c.position == 0 && c.attempt == 2)
        .unwrap();
    lost.remove(retried);
    assert!(check(&saga, &lost).is_err(), "an attempt nobody ran");

    let mut late = saga.clone();
    late.events.push(saga.events[1].clone());
    assert!(check(&late, &calls).is_err(), "history after the end");

    let mut twice = saga.clone();
    let success = saga
        .events
        .iter()
        .position(|e| e.kind == EventKind::StepSucceeded)
        .unwrap();
    twice.events.insert(success, saga.events[success].clone());
    assert!(
        check(&twice, &calls).is_err(),
        "a step that succeeded twice"
    );

    let mut wrong = saga.clone();
    wrong.steps[1].attempts = 2;
    assert!(check_model(&wrong, 0, &expect(&script)).is_err());
}

/// A worker that shuts down gracefully after committing a step has already begun the next one
/// (the commit starts step k+1): releasing the saga must give that attempt back, or a step
/// with one attempt is given up ("attempt_interrupted") without ever running.
#[sqlx::test(migrations = false)]
async fn a_graceful_shutdown_gives_back_the_attempt_it_began_but_never_ran(pool: PgPool) {
    common::migrate(&pool).await;
    let calls: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (started, on_started) = oneshot::channel::<()>();
    let started = Arc::new(Mutex::new(Some(started)));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (first_calls, second_calls, undo_calls) = (calls.clone(), calls.clone(), calls.clone());
    let first_gate = gate.clone();
    let skill = Skill::builder::<Empty>("shutdown_model", 1, "Two steps, one attempt each.")
        .step(
            Step::new("first", move |_ctx: StepContext| {
                let (calls, gate, started) =
                    (first_calls.clone(), first_gate.clone(), started.clone());
                async move {
                    calls.lock().unwrap().push("first");
                    if let Some(started) = started.lock().unwrap().take() {
                        let _ = started.send(());
                    }
                    gate.notified().await;
                    Ok(json!({}))
                }
            })
            .retry(policy(1))
            .compensate(move |_ctx: StepContext, _output: Value| {
                let calls = undo_calls.clone();
                async move {
                    calls.lock().unwrap().push("undo first");
                    Ok(json!({}))
                }
            }),
        )
        .step(
            Step::new("second", move |_ctx: StepContext| {
                let calls = second_calls.clone();
                async move {
                    calls.lock().unwrap().push("second");
                    Ok(json!({}))
                }
            })
            .retry(policy(1)),
        )
        .build()
        .unwrap();
    let mut registry = Registry::new();
    registry.register(skill).unwrap();
    let clock = ManualClock::starting_now();
    let engine = Engine::new(
        PgStore::new(pool),
        Arc::new(registry),
        Arc::new(clock.clone()),
    );
    let id = engine
        .start(StartRequest {
            skill: "shutdown_model".into(),
            input: json!({}),
            idempotency_key: None,
            started_by: "test:model".into(),
        })
        .await
        .unwrap()
        .saga
        .id;

    // A worker runs the first step; it is told to shut down while the step runs, and the step
    // then finishes within the grace period.
    let config = WorkerConfig {
        worker_id: "deployed".into(),
        lease: LEASE,
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = engine.worker(config.clone());
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    on_started.await.unwrap();
    shutdown.cancel();
    gate.notify_one();
    running.await.unwrap().unwrap();

    // The next deployment's worker finishes the saga: the second step gets its one attempt.
    let next = engine.worker(WorkerConfig {
        worker_id: "next".into(),
        ..config
    });
    next.run_until_idle().await.unwrap();
    let saga = engine.detail(id).await.unwrap().unwrap();
    assert_eq!(
        (saga.status, calls.lock().unwrap().clone()),
        (SagaStatus::Completed, vec!["first", "second"]),
        "history: {:#?}",
        common::history(&saga)
    );
    assert_eq!(saga.steps[1].attempts, 1);
}

/// Found by the side-by-side model: an event delivered before its wait's deadline belongs to
/// the wait even when the step's next attempt (after a retryable failure that followed the
/// delivery) runs after the deadline. That attempt read no deliveries before deciding the
/// deadline had passed, and failed with `wait_timed_out` ("no event came") and compensated.
#[sqlx::test(migrations = false)]
async fn a_retry_after_the_deadline_still_gets_the_event_delivered_in_time(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = common::engine_with(pool, clock.clone());
    let input = json!({"steps": 1, "wait_at": 1, "wait_timeout_ms": 1000, "fail_at": 1,
                       "fail_kind": "transient", "transient_failures": 1});
    let id = common::start(&engine, "synthetic_chain", input, None).await;
    let worker = common::worker(&engine, "w1");
    worker.run_until_idle().await.unwrap();
    assert_eq!(
        common::detail(&engine, id).await.status,
        SagaStatus::Waiting
    );
    engine
        .deliver(id, "go", json!({"in": "time"}), "k", "test:guest")
        .await
        .unwrap();
    // Attempt 1 takes the event, then fails retryably; its retry comes after the deadline.
    worker.run_until_idle().await.unwrap();
    assert_eq!(
        common::detail(&engine, id).await.status,
        SagaStatus::Pending
    );
    clock.advance(Duration::from_secs(2));
    worker.run_until_idle().await.unwrap();

    let saga = common::detail(&engine, id).await;
    assert_eq!(
        saga.status,
        SagaStatus::Completed,
        "{:#?}",
        common::history(&saga)
    );
    assert_eq!(saga.steps[0].attempts, 2);
    assert_eq!(
        saga.steps[0].output.as_ref().unwrap()["received"],
        json!({"in": "time"})
    );
    assert!(!common::history(&saga).contains(&"wait_timed_out:step_1".to_string()));
}
