//! Helpers shared by the integration tests: an engine over a per-test database, with the
//! built-in skills and a manual clock.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Engine, JitterSource, ManualClock, PgStore, SagaDetail, StartRequest, Worker, WorkerConfig,
};
use uuid::Uuid;

pub fn engine_with(pool: PgPool, clock: ManualClock) -> Engine {
    let registry = stepwise_skills::registry().expect("built-in skills register");
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

/// The URL of the per-test database behind `pool`, for child processes.
pub async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let (without_query, query) = match base.split_once('?') {
        Some((u, q)) => (u.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let server = match without_query.rsplit_once('/') {
        Some((server, _db)) if server.contains("://") && !server.ends_with('/') => server,
        _ => without_query.trim_end_matches('/'),
    };
    format!("{server}/{name}{query}")
}
