//! A graceful release never consumes an attempt (issue 13 item 3): a worker that stops gives
//! back the attempt it began but did not run, or that its shutdown interrupted, so a step on
//! its last allowed attempt still runs on the next worker. Real PostgreSQL, `Worker::run` with
//! a short grace period.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{detail, history, migrate, start};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stepwise_engine::{
    Engine, Jitter, JitterSource, ManualClock, PgStore, Registry, RetryPolicy, SagaDetail,
    SagaStatus, Skill, SkillInput, Step, StepContext, StepError, StepStatus, WorkerConfig,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Empty {}
impl SkillInput for Empty {}

/// One attempt allowed: the attempt a shutdown takes is the step's last.
fn once() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        initial_delay: Duration::from_millis(100),
        multiplier: 1.0,
        max_delay: Duration::from_millis(100),
        jitter: Jitter::None,
    }
}

/// The calls of an action (or compensation), by saga and attempt. The first call hangs, as a
/// slow payment call would, until the worker interrupts it; it first tells the test, and may
/// stop the worker itself.
#[derive(Default)]
struct Hang {
    calls: Mutex<Vec<(Uuid, u32)>>,
    started: Mutex<Option<oneshot::Sender<()>>>,
    stop_worker: Mutex<Option<CancellationToken>>,
}

impl Hang {
    async fn call(self: Arc<Self>, ctx: StepContext) -> Result<Value, StepError> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((ctx.saga_id, ctx.attempt));
            calls.len() == 1
        };
        if first {
            if let Some(started) = self.started.lock().unwrap().take() {
                let _ = started.send(());
            }
            if let Some(worker) = self.stop_worker.lock().unwrap().take() {
                worker.cancel();
            }
            std::future::pending::<()>().await;
        }
        Ok(json!({"attempt": ctx.attempt}))
    }

    fn calls(&self) -> Vec<(Uuid, u32)> {
        self.calls.lock().unwrap().clone()
    }
}

/// `charge` (one attempt, hangs first) and `undo` (a step whose one compensation attempt hangs
/// first, then a step that fails for good).
fn engine(pool: PgPool, hang: &Arc<Hang>) -> Engine {
    let action = hang.clone();
    let charge = Skill::builder::<Empty>("charge", 1, "one step, one attempt")
        .step(Step::new("charge", move |ctx| action.clone().call(ctx)).retry(once()))
        .build()
        .unwrap();
    let compensation = hang.clone();
    let undo = Skill::builder::<Empty>("undo", 1, "an undo with one attempt, then a failure")
        .step(
            Step::new("book", |_ctx| async { Ok(json!({"booked": true})) })
                .compensate(move |ctx, _output| compensation.clone().call(ctx))
                .compensation_retry(once()),
        )
        .step(Step::new("fail", |_ctx| async {
            Err::<Value, _>(StepError::permanent("declined", "the card was declined"))
        }))
        .build()
        .unwrap();
    let mut registry = Registry::new();
    registry.register(charge).unwrap();
    registry.register(undo).unwrap();
    Engine::new(
        PgStore::new(pool),
        Arc::new(registry),
        Arc::new(ManualClock::starting_now()),
    )
}

fn config(id: &str) -> WorkerConfig {
    WorkerConfig {
        worker_id: id.to_string(),
        lease: Duration::from_secs(30),
        shutdown_grace: Duration::from_millis(300),
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    }
}

/// Runs a worker until `shutdown` is cancelled and it has stopped; returns how long the stop
/// took after the cancel.
async fn run_worker(
    engine: &Engine,
    shutdown: CancellationToken,
    started: oneshot::Receiver<()>,
) -> Duration {
    let worker = engine.worker(config("deploying"));
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    started.await.unwrap();
    shutdown.cancel();
    let stopping = Instant::now();
    running.await.unwrap().unwrap();
    stopping.elapsed()
}

/// The `attempt_released` events' (step, attempt, reason, compensation).
fn released(saga: &SagaDetail) -> Vec<(String, i32, String, bool)> {
    saga.events
        .iter()
        .filter(|e| e.kind.as_str() == "attempt_released")
        .map(|e| {
            let detail = e.detail.clone().unwrap_or_default();
            (
                e.step.clone().unwrap_or_default(),
                e.attempt.unwrap_or_default(),
                detail["reason"].as_str().unwrap_or_default().to_string(),
                detail["compensation"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_step_interrupted_by_shutdown_on_its_last_attempt_runs_again_and_completes(pool: PgPool) {
    migrate(&pool).await;
    let hang = Arc::new(Hang::default());
    let (tx, started) = oneshot::channel();
    *hang.started.lock().unwrap() = Some(tx);
    let engine = engine(pool, &hang);
    let id = start(&engine, "charge", json!({}), None).await;

    let took = run_worker(&engine, CancellationToken::new(), started).await;
    assert!(
        took < Duration::from_secs(5),
        "the worker stopped after its grace period, not a lease: {took:?}"
    );
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Pending);
    assert_eq!(saga.lease_owner, None);
    assert_eq!(saga.steps[0].status, StepStatus::Pending);
    assert_eq!(
        saga.steps[0].attempts, 0,
        "the interrupted attempt is given back"
    );
    assert_eq!(
        released(&saga),
        [("charge".to_string(), 1, "interrupted".to_string(), false)]
    );

    // The next deployment's worker runs it at once (nothing waits for a lease to expire), with
    // the step's one attempt.
    engine
        .worker(config("next"))
        .run_until_idle()
        .await
        .unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", history(&saga));
    assert_eq!(saga.steps[0].attempts, 1);
    assert_eq!(hang.calls(), [(id, 1), (id, 1)]);
}

#[sqlx::test(migrations = false)]
async fn a_step_begun_but_not_run_when_the_worker_stops_keeps_its_attempt(pool: PgPool) {
    migrate(&pool).await;
    let hang = Arc::new(Hang::default());
    let shutdown = CancellationToken::new();
    // The first action to run stops the worker: the claim had begun both sagas' steps, and the
    // other saga's never runs on this worker.
    *hang.stop_worker.lock().unwrap() = Some(shutdown.clone());
    let (tx, started) = oneshot::channel();
    *hang.started.lock().unwrap() = Some(tx);
    let engine = engine(pool, &hang);
    let a = start(&engine, "charge", json!({}), Some("a")).await;
    let b = start(&engine, "charge", json!({}), Some("b")).await;

    run_worker(&engine, shutdown, started).await;
    let ran = hang.calls()[0].0;
    let not_run = if ran == a { b } else { a };
    assert_eq!(
        hang.calls(),
        [(ran, 1)],
        "one action ran on the stopping worker"
    );
    for (id, reason) in [(ran, "interrupted"), (not_run, "not_run")] {
        let saga = detail(&engine, id).await;
        assert_eq!(saga.status, SagaStatus::Pending);
        assert_eq!(saga.steps[0].attempts, 0);
        assert_eq!(
            released(&saga),
            [("charge".to_string(), 1, reason.to_string(), false)]
        );
    }

    engine
        .worker(config("next"))
        .run_until_idle()
        .await
        .unwrap();
    for id in [a, b] {
        let saga = detail(&engine, id).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{:?}", history(&saga));
        assert_eq!(saga.steps[0].attempts, 1);
    }
}

#[sqlx::test(migrations = false)]
async fn a_compensation_interrupted_by_shutdown_on_its_last_attempt_runs_again(pool: PgPool) {
    migrate(&pool).await;
    let hang = Arc::new(Hang::default());
    let (tx, started) = oneshot::channel();
    *hang.started.lock().unwrap() = Some(tx);
    let engine = engine(pool, &hang);
    let id = start(&engine, "undo", json!({}), None).await;

    run_worker(&engine, CancellationToken::new(), started).await;
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensating);
    assert_eq!(saga.lease_owner, None);
    assert_eq!(saga.steps[0].compensation.status.as_str(), "pending");
    assert_eq!(saga.steps[0].compensation.attempts, 0);
    assert_eq!(
        released(&saga),
        [("book".to_string(), 1, "interrupted".to_string(), true)]
    );

    engine
        .worker(config("next"))
        .run_until_idle()
        .await
        .unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(
        saga.status,
        SagaStatus::Compensated,
        "not failed: the undo had an attempt left; {:?}",
        history(&saga)
    );
    assert_eq!(saga.steps[0].compensation.attempts, 1);
    assert_eq!(hang.calls(), [(id, 1), (id, 1)]);
}
