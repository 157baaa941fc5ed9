//! Helpers shared by the integration tests: an engine over a per-test database, with the
//! built-in skills and a manual clock.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use sqlx::PgPool;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Engine, JitterSource, ManualClock, PgStore, SagaDetail, SagaFilter, StartRequest, Worker,
    WorkerConfig,
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

/// How many sagas exist, read through the engine's store (its counts by status).
pub async fn saga_count(pool: &PgPool) -> i64 {
    PgStore::new(pool.clone())
        .counts_by_status()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Every saga's detail, history included, read through the engine.
pub async fn every_saga(engine: &Engine) -> Vec<SagaDetail> {
    let filter = SagaFilter {
        limit: 100_000,
        ..SagaFilter::default()
    };
    let mut details = Vec::new();
    for summary in engine.list(&filter).await.unwrap() {
        details.push(detail(engine, summary.id).await);
    }
    details
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

/// Runs the `stepwise` binary on the database at `url` and waits for it (logs at warn only,
/// so stderr holds the errors a failed assertion shows).
pub fn stepwise(url: &str, args: &[&str]) -> Output {
    stepwise_command(url, args).output().unwrap()
}

/// The same as `user`: operator commands record `operator:{USER}@{host}` as their actor.
pub fn stepwise_as(user: &str, url: &str, args: &[&str]) -> Output {
    stepwise_command(url, args)
        .env("USER", user)
        .output()
        .unwrap()
}

fn stepwise_command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn");
    command
}

/// The one JSON document a `--json` command printed on stdout.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
