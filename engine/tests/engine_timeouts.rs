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
            .retry(quick_retry),
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
async fn a_step_that_outlives_its_timeout_fails_retryably_then_compensates(pool: PgPool) {
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
    assert_eq!(saga.error.as_ref().unwrap()["code"], "timeout");
    let kinds = history(&saga);
    assert!(kinds.contains(&"retry_scheduled:sleep".to_string()));
    assert!(kinds.contains(&"compensation_succeeded:prepare".to_string()));
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
