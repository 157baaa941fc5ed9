//! Unknown outcomes (README, "States"; docs/reliability.md): a step that gives up after an
//! attempt that may have taken effect is "possibly done" and its own compensation runs too,
//! first, with no output and `StepContext::possibly_done` set. The flag is persisted with the
//! failed attempt, so a crash before the step gives up does not lose it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stepwise_engine::{
    CompensationStatus, Engine, EventKind, Jitter, JitterSource, ManualClock, PgStore, Registry,
    RetryPolicy, SagaStatus, Skill, SkillInput, StartRequest, Step, StepContext, StepError,
    StepStatus, WorkerConfig,
};
use uuid::Uuid;

/// How the step `charge` fails, attempt by attempt (`u` unknown, `r` retryable, `p` permanent,
/// `h` hangs forever, `o` succeeds); attempts past the list succeed.
#[derive(Deserialize, schemars::JsonSchema)]
struct Plan {
    charge: String,
}
impl SkillInput for Plan {}

/// What the compensations saw: (step, possibly_done, output).
type Undone = Arc<Mutex<Vec<(String, bool, Value)>>>;

const LEASE: Duration = Duration::from_secs(30);

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_delay: Duration::from_millis(100),
        multiplier: 1.0,
        max_delay: Duration::from_millis(100),
        jitter: Jitter::None,
    }
}

fn undo(
    name: &'static str,
    undone: &Undone,
) -> impl Fn(StepContext, Value) -> futures::future::BoxFuture<'static, Result<Value, StepError>>
       + Send
       + Sync
       + 'static {
    let undone = undone.clone();
    move |ctx: StepContext, output: Value| {
        let undone = undone.clone();
        Box::pin(async move {
            undone
                .lock()
                .unwrap()
                .push((name.to_string(), ctx.possibly_done, output));
            Ok(json!({"undid": name, "nothing_found": ctx.possibly_done}))
        })
    }
}

/// `reserve` (succeeds), `charge` (follows the plan, 3 attempts), `notify` (succeeds); the
/// first two have compensations.
fn engine(pool: PgPool, clock: &ManualClock, undone: &Undone) -> Engine {
    let skill = Skill::builder::<Plan>("unknown_outcomes", 1, "Reserve, charge, notify.")
        .step(
            Step::new("reserve", |_ctx: StepContext| async {
                Ok(json!({"held": true}))
            })
            .retry(policy(3))
            .compensate(undo("reserve", undone)),
        )
        .step(
            Step::new("charge", |ctx: StepContext| async move {
                let plan: Plan = ctx.input()?;
                let letter = plan.charge.chars().nth(ctx.attempt as usize - 1);
                match letter {
                    Some('u') => Err(StepError::unknown("timeout", "no answer after sending")),
                    Some('r') => Err(StepError::retryable("rate_limited", "429")),
                    Some('p') => Err(StepError::permanent("card_declined", "declined")),
                    Some('h') => std::future::pending().await,
                    _ => Ok(json!({"charged": 41200})),
                }
            })
            .retry(policy(3))
            .timeout(Duration::from_secs(3600))
            .compensate(undo("charge", undone)),
        )
        .step(Step::new("notify", |_ctx: StepContext| async { Ok(json!({})) }).retry(policy(3)))
        .build()
        .unwrap();
    let mut registry = Registry::new();
    registry.register(skill).unwrap();
    Engine::new(
        PgStore::new(pool),
        Arc::new(registry),
        Arc::new(clock.clone()),
    )
}

fn worker(engine: &Engine, id: &str) -> stepwise_engine::Worker {
    engine.worker(WorkerConfig {
        worker_id: id.to_string(),
        concurrency: 4,
        lease: LEASE,
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    })
}

async fn start(engine: &Engine, plan: &str) -> Uuid {
    engine
        .start(StartRequest {
            skill: "unknown_outcomes".into(),
            input: json!({"charge": plan}),
            idempotency_key: None,
            started_by: "test:unknown".into(),
        })
        .await
        .unwrap()
        .saga
        .id
}

/// Drives until the saga is terminal, moving the clock past retry delays.
async fn settle(engine: &Engine, clock: &ManualClock, id: Uuid) -> stepwise_engine::SagaDetail {
    let w = worker(engine, "w-settle");
    for _ in 0..20 {
        w.run_until_idle().await.unwrap();
        let saga = common::detail(engine, id).await;
        if saga.status.is_terminal() {
            return saga;
        }
        clock.advance(Duration::from_secs(1));
    }
    panic!("saga {id} did not end");
}

fn undone_steps(undone: &Undone) -> Vec<(String, bool, Value)> {
    undone.lock().unwrap().clone()
}

#[sqlx::test(migrations = false)]
async fn a_permanent_error_after_an_unknown_attempt_compensates_the_step_itself_first(
    pool: PgPool,
) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let undone = Undone::default();
    let engine = engine(pool, &clock, &undone);
    let id = start(&engine, "up").await;
    let saga = settle(&engine, &clock, id).await;

    assert_eq!(saga.status, SagaStatus::Compensated, "{:?}", saga.error);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "card_declined");
    // The possibly done step first (it is the highest), with no output, then the one before.
    assert_eq!(
        undone_steps(&undone),
        vec![
            ("charge".to_string(), true, Value::Null),
            ("reserve".to_string(), false, json!({"held": true})),
        ]
    );
    let charge = &saga.steps[1];
    assert_eq!(charge.status, StepStatus::Failed);
    assert!(charge.possibly_done);
    assert_eq!(charge.compensation.status, CompensationStatus::Compensated);
    assert!(!saga.steps[0].possibly_done);
    assert_eq!(saga.steps[2].status, StepStatus::Skipped);

    // The history: the unknown attempt says so, the last failure says the step is possibly
    // done, and the compensation's result is recorded.
    let failures: Vec<&Value> = saga
        .events
        .iter()
        .filter(|e| e.kind == EventKind::StepFailed)
        .map(|e| e.detail.as_ref().unwrap())
        .collect();
    assert_eq!(failures[0]["outcome"], "unknown");
    assert_eq!(failures[0]["retryable"], true);
    assert_eq!(failures[1]["code"], "card_declined");
    assert_eq!(failures[1]["possibly_done"], true);
    let undid = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::CompensationSucceeded && e.step.as_deref() == Some("charge"))
        .unwrap();
    assert_eq!(
        undid.detail,
        Some(json!({"possibly_done": true, "output": {"undid": "charge", "nothing_found": true}}))
    );
    assert_eq!(
        common::history(&saga)
            .into_iter()
            .filter(|e| e.starts_with("compensation_succeeded"))
            .collect::<Vec<_>>(),
        [
            "compensation_succeeded:charge",
            "compensation_succeeded:reserve"
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn retries_exhausted_on_unknown_outcomes_compensate_the_step_but_refusals_do_not(
    pool: PgPool,
) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let undone = Undone::default();
    let engine = engine(pool, &clock, &undone);

    let unknown = start(&engine, "uuu").await;
    let saga = settle(&engine, &clock, unknown).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.steps[1].attempts, 3, "unknown errors are retried");
    assert_eq!(
        saga.steps[1].compensation.status,
        CompensationStatus::Compensated
    );
    let seen: Vec<String> = undone_steps(&undone).into_iter().map(|u| u.0).collect();
    assert_eq!(seen, ["charge", "reserve"]);

    // Refused before any effect (retryable, then permanent): nothing to undo at that step.
    undone.lock().unwrap().clear();
    let refused = start(&engine, "rp").await;
    let saga = settle(&engine, &clock, refused).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert!(!saga.steps[1].possibly_done);
    assert_eq!(
        saga.steps[1].compensation.status,
        CompensationStatus::NotNeeded
    );
    let seen: Vec<String> = undone_steps(&undone).into_iter().map(|u| u.0).collect();
    assert_eq!(seen, ["reserve"]);

    // An unknown attempt followed by a success is an ordinary success: nothing is undone.
    undone.lock().unwrap().clear();
    let recovered = start(&engine, "uo").await;
    let saga = settle(&engine, &clock, recovered).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert!(!saga.steps[1].possibly_done);
    assert!(undone_steps(&undone).is_empty());
}

#[sqlx::test(migrations = false)]
async fn a_cancel_while_a_possibly_done_step_waits_for_its_retry_compensates_it(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let undone = Undone::default();
    let engine = engine(pool, &clock, &undone);
    let id = start(&engine, "uuu").await;
    worker(&engine, "w1").run_until_idle().await.unwrap();
    let saga = common::detail(&engine, id).await;
    assert_eq!(saga.steps[1].attempts, 1, "a retry is scheduled");
    assert_eq!(saga.steps[1].status, StepStatus::Pending);

    assert!(engine.cancel(id, "staff:desk", None).await.unwrap());
    let saga = settle(&engine, &clock, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "cancelled");
    assert_eq!(saga.steps[1].attempts, 1, "the retry never ran");
    assert!(saga.steps[1].possibly_done);
    let seen: Vec<(String, bool)> = undone_steps(&undone)
        .into_iter()
        .map(|u| (u.0, u.1))
        .collect();
    assert_eq!(
        seen,
        [("charge".to_string(), true), ("reserve".to_string(), false)]
    );
}

/// The worker dies during the last allowed attempt, after an earlier attempt's outcome was
/// unknown: the worker that takes the saga over gives the step up and still compensates it,
/// because the flag was committed with the unknown attempt.
#[sqlx::test(migrations = false)]
async fn possibly_done_survives_a_crash_before_the_step_gives_up(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let undone = Undone::default();
    let engine_a = engine(pool.clone(), &clock, &undone);
    let id = start(&engine_a, "urh").await;
    let a = worker(&engine_a, "w-a");
    a.run_until_idle().await.unwrap();
    clock.advance(Duration::from_secs(1));
    a.run_until_idle().await.unwrap();
    clock.advance(Duration::from_secs(1));
    // Attempt 3 hangs; the worker "crashes" (its future is dropped) with the step running.
    let crashed = tokio::time::timeout(Duration::from_millis(500), a.run_until_idle()).await;
    assert!(crashed.is_err(), "attempt 3 hangs");
    drop(a);
    drop(engine_a);
    let saga_mid = {
        let fresh = engine(pool.clone(), &clock, &Undone::default());
        common::detail(&fresh, id).await
    };
    assert_eq!(saga_mid.steps[1].status, StepStatus::Running);
    assert_eq!(saga_mid.steps[1].attempts, 3);

    // A new process: nothing in memory, the lease runs out, it takes over.
    clock.advance(LEASE + Duration::from_secs(1));
    let engine_b = engine(pool, &clock, &undone);
    let saga = settle(&engine_b, &clock, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "attempt_interrupted");
    assert!(saga.steps[1].possibly_done);
    let seen: Vec<(String, bool)> = undone_steps(&undone)
        .into_iter()
        .map(|u| (u.0, u.1))
        .collect();
    assert_eq!(
        seen,
        [("charge".to_string(), true), ("reserve".to_string(), false)]
    );
}
