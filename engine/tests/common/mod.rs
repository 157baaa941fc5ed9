//! Helpers shared by the engine's integration tests: the engine's schema on a per-test
//! database, an engine over the diagnostic skill `synthetic_chain` and a manual clock.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Engine, JitterSource, ManualClock, PgStore, Registry, SagaDetail, StartRequest, Worker,
    WorkerConfig,
};
use uuid::Uuid;

/// Applies the engine's migrations to a test's fresh database (`#[sqlx::test(migrations =
/// false)]`): the history goes to `stepwise._sqlx_migrations`, as in production.
pub async fn migrate(pool: &PgPool) {
    PgStore::new(pool.clone())
        .migrate()
        .await
        .expect("engine migrations apply");
}

pub fn engine_with(pool: PgPool, clock: ManualClock) -> Engine {
    let mut registry = Registry::new();
    registry
        .register(stepwise_engine::synthetic::skill().expect("synthetic_chain builds"))
        .expect("synthetic_chain registers");
    Engine::new(PgStore::new(pool), Arc::new(registry), Arc::new(clock))
}

/// A worker whose retry delays are the full capped delay, so tests know when retries are due.
pub fn worker(engine: &Engine, id: &str) -> Worker {
    engine.worker(WorkerConfig {
        worker_id: id.to_string(),
        concurrency: 8,
        lease: Duration::from_secs(30),
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    })
}

pub async fn start(engine: &Engine, skill: &str, input: Value, key: Option<&str>) -> Uuid {
    engine
        .start(StartRequest {
            skill: skill.to_string(),
            input,
            idempotency_key: key.map(str::to_string),
            started_by: "test:runner".to_string(),
        })
        .await
        .expect("saga starts")
        .saga
        .id
}

pub async fn detail(engine: &Engine, id: Uuid) -> SagaDetail {
    engine.detail(id).await.unwrap().expect("saga exists")
}

/// The history as `kind` or `kind:step` strings, in order.
pub fn history(detail: &SagaDetail) -> Vec<String> {
    detail
        .events
        .iter()
        .map(|e| match &e.step {
            Some(step) => format!("{}:{}", e.kind, step),
            None => e.kind.to_string(),
        })
        .collect()
}

/// Advances the clock past any synthetic retry delay and drives until idle, `rounds` times.
pub async fn drive_with_retries(clock: &ManualClock, worker: &Worker, rounds: usize) {
    for _ in 0..rounds {
        worker.run_until_idle().await.unwrap();
        clock.advance(Duration::from_secs(1));
    }
}
