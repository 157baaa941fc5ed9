//! Soak: high load for a number of minutes. A starter keeps a backlog of due sagas twice the
//! sagas in flight, so the workers never wait for work; each minute records the steps done
//! (sagas finished that minute x steps per saga) and the dead tuples of the hot tables.

use super::workload::{start_many, unfinished, Workers};
use super::{BenchConfig, BenchError, Progress};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::store::TableHealth;
use stepwise_engine::Engine;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct SoakMinute {
    pub minute: u64,
    pub steps_per_s: f64,
    pub sagas_finished: i64,
    pub rss_mib: Option<f64>,
    pub tables: Vec<TableHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub minutes: Vec<SoakMinute>,
    pub interval_s: u64,
    /// steps/s of the last minute ÷ steps/s of the first.
    pub last_over_first: Option<f64>,
    /// The server's `autovacuum` setting; when it is off, the soak vacuums the hot tables
    /// itself at the end of each minute, as autovacuum would have.
    pub autovacuum: String,
    pub manual_vacuum: bool,
}

pub async fn run(
    engine: &Engine,
    config: &BenchConfig,
    input: &Value,
    minutes: u64,
    progress: &Arc<dyn Progress>,
) -> Result<SoakReport, BenchError> {
    let interval = Duration::from_secs(config.soak_interval_secs.max(1));
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(engine.store().pool())
        .await?;
    let manual_vacuum = autovacuum != "on";
    let backlog = (config.in_flight * 2).max(16) as i64;
    let workers = Workers::start(engine, config, "soak");
    progress.phase("soak", minutes * interval.as_secs());
    let begin = Instant::now();
    let mut rows = Vec::new();
    let mut finished_before = finished(engine).await?;
    let mut minute_start = Instant::now();
    let result = async {
        while rows.len() < minutes as usize {
            let left = unfinished(engine).await?;
            if left < backlog {
                let n = (backlog - left) as usize;
                start_many(engine, input, n, (config.concurrency / 2).max(1)).await?;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            progress.set(begin.elapsed().as_secs());
            if minute_start.elapsed() >= interval {
                let seconds = minute_start.elapsed().as_secs_f64();
                minute_start = Instant::now();
                let now_finished = finished(engine).await?;
                let health = engine.store().table_health().await?;
                if manual_vacuum {
                    engine.store().vacuum_analyze().await?;
                }
                let done = now_finished - finished_before;
                finished_before = now_finished;
                rows.push(SoakMinute {
                    minute: rows.len() as u64 + 1,
                    steps_per_s: (done as f64 * config.steps as f64 / seconds).round(),
                    sagas_finished: done,
                    rss_mib: super::procfs::rss_mib().map(|m| (m * 10.0).round() / 10.0),
                    tables: health,
                });
                progress.note(&format!(
                    "soak minute {}: {} steps/s",
                    rows.len(),
                    rows.last().map_or(0.0, |r| r.steps_per_s)
                ));
            }
        }
        Ok::<_, BenchError>(())
    }
    .await;
    workers.stop().await;
    result?;
    let last_over_first = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) if first.steps_per_s > 0.0 => {
            Some(super::latency::round3(last.steps_per_s / first.steps_per_s))
        }
        _ => None,
    };
    Ok(SoakReport {
        minutes: rows,
        interval_s: interval.as_secs(),
        last_over_first,
        autovacuum,
        manual_vacuum,
    })
}

/// Sagas that reached a terminal state so far.
async fn finished(engine: &Engine) -> Result<i64, BenchError> {
    Ok(engine.store().finished_count().await?)
}
