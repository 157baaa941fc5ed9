//! Running the synthetic workload: starting sagas, running workers, waiting for the queue to
//! drain.

use super::{BenchConfig, BenchError, Progress};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{Engine, JitterSource, StartRequest, WorkerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The input of every benchmark saga: K no-op steps, failing at K/2 when asked.
pub fn saga_input(config: &BenchConfig) -> Value {
    if config.fail_at_half {
        json!({"steps": config.steps, "fail_at": (config.steps / 2).max(1)})
    } else {
        json!({"steps": config.steps})
    }
}

/// Starts one saga; returns its id.
pub async fn start_one(engine: &Engine, input: Value) -> Result<Uuid, BenchError> {
    Ok(engine
        .start(StartRequest {
            skill: stepwise_skills::synthetic::NAME.to_string(),
            input,
            idempotency_key: None,
            started_by: "bench".to_string(),
        })
        .await?
        .saga
        .id)
}

/// Starts `n` sagas, `parallel` at a time.
pub async fn start_many(
    engine: &Engine,
    input: &Value,
    n: usize,
    parallel: usize,
) -> Result<Vec<Uuid>, BenchError> {
    stream::iter(0..n)
        .map(|_| start_one(engine, input.clone()))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await
}

/// W workers sharing the engine's pool, `in_flight` sagas between them.
pub struct Workers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn start(engine: &Engine, config: &BenchConfig, phase: &str) -> Self {
        let stop = CancellationToken::new();
        let workers = config.workers.max(1);
        let per_worker = config.in_flight.div_ceil(workers).max(1);
        let tasks = (0..workers)
            .map(|i| {
                let worker = engine.worker(WorkerConfig {
                    worker_id: format!("bench:{phase}:{i}"),
                    concurrency: per_worker,
                    claim_batch: per_worker.min(64),
                    poll_interval: Duration::from_millis(100),
                    shutdown_grace: Duration::from_secs(30),
                    jitter: JitterSource::Random,
                    commit_batch: config.commit_batch(),
                    committers: config.committers,
                    ..WorkerConfig::default()
                });
                let token = stop.clone();
                tokio::spawn(async move {
                    if let Err(error) = worker.run(token).await {
                        tracing::error!(%error, "bench worker stopped");
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the workers and waits for them (in-flight steps finish and are released).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// How many sagas are not terminal yet (see `PgStore::unfinished_count`).
pub async fn unfinished(engine: &Engine) -> Result<i64, BenchError> {
    Ok(engine.store().unfinished_count().await?)
}

/// Waits until no saga is left unfinished, reporting progress over `total`. Fails if nothing
/// moves for `stall` (a stuck benchmark must not hang CI).
pub async fn drain(
    engine: &Engine,
    total: u64,
    progress: &Arc<dyn Progress>,
    stall: Duration,
) -> Result<(), BenchError> {
    let mut last = i64::MAX;
    let mut last_change = tokio::time::Instant::now();
    loop {
        let left = unfinished(engine).await?;
        progress.set(total.saturating_sub(left.max(0) as u64));
        if left == 0 {
            return Ok(());
        }
        if left != last {
            last = left;
            last_change = tokio::time::Instant::now();
        } else if last_change.elapsed() > stall {
            return Err(BenchError::Stalled {
                unfinished: left,
                seconds: stall.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Steps actually executed for `ids`: every attempt of an action or a compensation.
pub async fn steps_executed(engine: &Engine, ids: &[Uuid]) -> Result<i64, BenchError> {
    Ok(engine.store().attempts_executed(ids).await?)
}

/// When the last of `ids` reached its terminal state (engine clock).
pub async fn last_done(
    engine: &Engine,
    ids: &[Uuid],
) -> Result<Option<chrono::DateTime<chrono::Utc>>, BenchError> {
    Ok(engine.store().last_updated(ids).await?)
}
