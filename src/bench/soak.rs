//! Soak: high load for a number of minutes. A starter keeps a backlog of due sagas twice the
//! sagas in flight, so the workers never wait for work; each minute records the steps done
//! (sagas finished that minute x steps per saga) and the dead tuples of the hot tables.
//!
//! Autovacuum: as the server has it, or (`soak_autovacuum`) turned on at PostgreSQL's defaults
//! for the soak with `ALTER SYSTEM` and put back afterwards, also when the soak fails or is
//! interrupted (Ctrl-C, SIGTERM). Only when autovacuum stays off does the soak vacuum the hot
//! tables itself each minute, as autovacuum would have.

use super::pg::{self, Setting};
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
    /// Size on disk of each hot table with its indexes, MiB.
    pub table_mib: Vec<(String, f64)>,
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
    /// Whether the soak turned autovacuum on itself (`ALTER SYSTEM`, put back afterwards).
    pub autovacuum_turned_on: bool,
    /// `autovacuum*` settings that are not PostgreSQL's defaults during the soak.
    pub autovacuum_non_default: Vec<Setting>,
}

pub async fn run(
    engine: &Engine,
    config: &BenchConfig,
    input: &Value,
    minutes: u64,
    progress: &Arc<dyn Progress>,
) -> Result<SoakReport, BenchError> {
    let guard = if config.soak_autovacuum {
        Some(pg::autovacuum_on(&config.server_url).await?)
    } else {
        None
    };
    let turned_on = guard.as_ref().is_some_and(|g| g.changed());
    let result = tokio::select! {
        report = measure(engine, config, input, minutes, progress, turned_on) => report,
        why = interrupted() => Err(BenchError::Internal(format!("soak interrupted by {why}"))),
    };
    // Put the configuration back whatever happened.
    let restored = match guard {
        Some(guard) => guard.restore().await,
        None => Ok(()),
    };
    match (result, restored) {
        (Ok(report), Ok(())) => Ok(report),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(e)) => Err(BenchError::Internal(format!(
            "could not restore the autovacuum setting: {e}"
        ))),
        (Err(e), Err(restore)) => Err(BenchError::Internal(format!(
            "{e}; and could not restore the autovacuum setting: {restore}"
        ))),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM), with the signal's name.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

async fn measure(
    engine: &Engine,
    config: &BenchConfig,
    input: &Value,
    minutes: u64,
    progress: &Arc<dyn Progress>,
    turned_on: bool,
) -> Result<SoakReport, BenchError> {
    let interval = Duration::from_secs(config.soak_interval_secs.max(1));
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(engine.store().pool())
        .await?;
    let manual_vacuum = autovacuum != "on" && !turned_on;
    let autovacuum_non_default = pg::autovacuum_settings(engine.store().pool().raw()).await?;
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
                let table_mib = pg::table_bytes(engine.store().pool().raw())
                    .await?
                    .into_iter()
                    .map(|(t, b)| (t, (b as f64 / 1048576.0 * 10.0).round() / 10.0))
                    .collect();
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
                    table_mib,
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
        autovacuum_turned_on: turned_on,
        autovacuum_non_default,
    })
}

/// Sagas that reached a terminal state so far.
async fn finished(engine: &Engine) -> Result<i64, BenchError> {
    Ok(engine.store().finished_count().await?)
}
