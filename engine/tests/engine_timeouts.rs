//! Per-step timeouts and lease heartbeats, with a skill defined in the test (the engine knows
//! nothing of the built-in skills).
#![allow(clippy::unwrap_used)]

mod common;

use common::history;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Engine, Jitter, JitterSource, ManualClock, PgStore, Registry, RetryPolicy, SagaStatus, Skill,
    SkillInput, StartRequest, Step, SystemClock, WorkerConfig,
};
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, JsonSchema)]
struct SleepInput {
    sleep_ms: u64,
}
impl SkillInput for SleepInput {}

fn sleepy_skill(timeout: Duration) -> Skill {
    let quick_retry = RetryPolicy {
        max_attempts: 2,
        initial_delay: Duration::from_millis(1),
        multiplier: 1.0,
        max_delay: Duration::from_millis(1),
        jitter: Jitter::None,
    };
    Skill::builder::<SleepInput>("sleepy", 1, "Sleeps, then succeeds.")
        .step(
            Step::new("prepare", |_ctx| async { Ok(json!({"ready": true})) })
                .compensate(|_ctx, _out| async { Ok(json!({"undone": true})) }),
        )
        .step(
            Step::new("sleep", |ctx| async move {
                let input: SleepInput = ctx.input()?;
                tokio::time::sleep(Duration::from_millis(input.sleep_ms)).await;
                Ok(json!({"slept_ms": input.sleep_ms}))
            })
            .timeout(timeout)
            .retry(quick_retry)
            // Undoes whatever the cut-off attempts may have done (it never recorded an output).
            .compensate(|ctx, out| async move {
                Ok(json!({"possibly_done": ctx.possibly_done, "output_was_null": out.is_null()}))
            }),
        )
        .build()
        .unwrap()
}

fn engine(pool: PgPool, timeout: Duration, clock: Arc<dyn stepwise_engine::Clock>) -> Engine {
    let mut registry = Registry::new();
    registry.register(sleepy_skill(timeout)).unwrap();
    Engine::new(PgStore::new(pool), Arc::new(registry), clock)
}

async fn start(engine: &Engine, sleep_ms: u64) -> uuid::Uuid {
    engine
        .start(StartRequest {
            skill: "sleepy".into(),
            input: json!({"sleep_ms": sleep_ms}),
            idempotency_key: None,
            started_by: "test".into(),
        })
        .await
        .unwrap()
        .saga
        .id
}

#[sqlx::test(migrations = false)]
async fn a_step_that_outlives_its_timeout_is_retried_then_undone_as_possibly_done(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine(pool, Duration::from_millis(50), Arc::new(clock.clone()));
    let id = start(&engine, 2_000).await;
    let worker = engine.worker(WorkerConfig {
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    worker.run_until_idle().await.unwrap();
    clock.advance(Duration::from_millis(5));
    worker.run_until_idle().await.unwrap();

    let saga = engine.detail(id).await.unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.steps[1].attempts, 2);
    assert_eq!(saga.steps[1].error.as_ref().unwrap()["code"], "timeout");
    assert_eq!(saga.steps[1].error.as_ref().unwrap()["retryable"], true);
    assert_eq!(saga.steps[1].error.as_ref().unwrap()["outcome"], "unknown");
    assert!(saga.steps[1].possibly_done);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "timeout");
    let kinds = history(&saga);
    assert!(kinds.contains(&"retry_scheduled:sleep".to_string()));
    // The cut-off step is undone first, told it may not have run, then the one before it.
    let undos: Vec<_> = kinds
        .iter()
        .filter(|k| k.starts_with("compensation_succeeded:"))
        .cloned()
        .collect();
    assert_eq!(
        undos,
        [
            "compensation_succeeded:sleep",
            "compensation_succeeded:prepare"
        ]
    );
    let sleep = &saga.steps[1];
    assert_eq!(
        sleep.compensation.output.as_ref().unwrap(),
        &json!({"possibly_done": true, "output_was_null": true})
    );
}

#[sqlx::test(migrations = false)]
async fn heartbeats_keep_a_long_step_leased_against_other_workers(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine(pool, Duration::from_secs(10), Arc::new(SystemClock));
    let id = start(&engine, 1_200).await;
    let config = |name: &str| WorkerConfig {
        worker_id: name.into(),
        lease: Duration::from_millis(300),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let stop = CancellationToken::new();
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|name| {
            let worker = engine.worker(config(name));
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await })
        })
        .collect();
    let summary = engine.wait(id, Duration::from_secs(10)).await.unwrap();
    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(summary.status, SagaStatus::Completed);
    let saga = engine.detail(id).await.unwrap().unwrap();
    assert_eq!(
        saga.steps[1].attempts, 1,
        "the step ran once: nobody stole it"
    );
    assert!(!history(&saga).contains(&"lease_expired".to_string()));
}
