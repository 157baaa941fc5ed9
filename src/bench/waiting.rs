//! `stepwise bench --waiting N`: what N waiting sagas cost an idle worker (BENCHMARKS.md,
//! "Waits"). A real worker process (`stepwise worker`, started from this executable) idles for
//! a window with nothing waiting, then a fresh one for the same window with N sagas waiting
//! for an event (deadline a day away); each window reports the transactions per second of the
//! benchmark's database (`pg_stat_database`), the rows of `stepwise.sagas` read per second
//! (`pg_stat_user_tables`), and the worker process's resident memory.
//!
//! The N sagas are started and driven to their wait through the engine (workers in this
//! process), so they are exactly what a real wait leaves in the tables. Timings are reported,
//! never asserted.

use super::latency::round3;
use super::{pg, procfs, workload, BenchConfig, BenchError, Progress};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::{Engine, PgStore, SagaStatus, SystemClock};
use tokio::process::{Child, Command};

/// How long a new worker process gets to connect and settle before a window starts.
const SETTLE: Duration = Duration::from_secs(5);

/// One idle window of one worker process.
#[derive(Debug, Clone, Serialize)]
pub struct IdleWindow {
    pub waiting_sagas: i64,
    pub window_s: f64,
    /// Transactions (commits + rollbacks) of the benchmark's database per second: the worker's
    /// statements (each outside an explicit transaction is one), plus about ten of this
    /// process's at the end of the window (publishing its statistics, reading the counters).
    pub transactions_per_s: f64,
    /// Rows of `stepwise.sagas` read per second (sequential + index fetches).
    pub saga_rows_read_per_s: f64,
    /// The worker process's resident memory at the end of the window, and its peak, MiB.
    pub worker_rss_mib: Option<f64>,
    pub worker_peak_rss_mib: Option<f64>,
}

/// What `stepwise bench --waiting N --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingReport {
    pub waiting: usize,
    /// Seconds to start the N sagas and drive them to their wait.
    pub setup_s: f64,
    pub nothing_waiting: IdleWindow,
    pub with_waiting: IdleWindow,
    /// The worker process's command line (after the executable).
    pub worker_args: Vec<String>,
    pub load_average_1m_before: Option<f64>,
    pub load_average_1m_after: Option<f64>,
    pub postgres: pg::ServerInfo,
}

/// Runs the measurement with `worker_exe` (the `stepwise` executable) as the worker process.
pub async fn run(
    config: BenchConfig,
    waiting: usize,
    window: Duration,
    worker_exe: &Path,
    progress: Arc<dyn Progress>,
) -> Result<WaitingReport, BenchError> {
    if waiting == 0 {
        return Err(BenchError::Invalid("--waiting must be at least 1".into()));
    }
    let load_before = procfs::load_average();
    pg::recreate_database(&config.server_url, &config.database).await?;
    let url = pg::with_database(&config.server_url, &config.database);
    let pool = pg::migrated_pool(&url, (config.concurrency + config.workers) as u32).await?;
    let store = PgStore::new(pool.clone());
    let engine = Engine::new(
        store,
        Arc::new(stepwise_skills::registry()?),
        Arc::new(SystemClock),
    );
    let postgres = pg::server_info(&pool).await?;
    let worker_args: Vec<String> = ["worker", "--concurrency", "16", "--worker-id"]
        .iter()
        .map(|s| s.to_string())
        .chain(["bench:waiting".to_string()])
        .collect();

    progress.phase("idle worker, nothing waiting", window.as_secs());
    let nothing_waiting = idle_window(&pool, &url, worker_exe, &worker_args, window, 0).await?;

    let began = Instant::now();
    make_waiting(&engine, &config, waiting, &progress).await?;
    let setup_s = round3(began.elapsed().as_secs_f64());

    progress.phase("idle worker, sagas waiting", window.as_secs());
    let with_waiting = idle_window(
        &pool,
        &url,
        worker_exe,
        &worker_args,
        window,
        waiting as i64,
    )
    .await?;
    pool.close().await;
    Ok(WaitingReport {
        waiting,
        setup_s,
        nothing_waiting,
        with_waiting,
        worker_args,
        load_average_1m_before: load_before,
        load_average_1m_after: procfs::load_average(),
        postgres,
    })
}

/// Starts `n` sagas whose only step waits for an event a day long, and drives them to that
/// wait with the benchmark's workers (in this process).
async fn make_waiting(
    engine: &Engine,
    config: &BenchConfig,
    n: usize,
    progress: &Arc<dyn Progress>,
) -> Result<(), BenchError> {
    progress.phase("making sagas wait", n as u64);
    let input = json!({"steps": 1, "wait_at": 1, "wait_timeout_ms": 86_400_000u64});
    let workers = workload::Workers::start(engine, config, "waiting");
    let result = async {
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            workload::start_many(engine, &input, chunk.len(), config.concurrency).await?;
        }
        let mut last_change = Instant::now();
        let mut last = -1;
        loop {
            let now_waiting = count_waiting(engine).await?;
            progress.set(now_waiting.max(0) as u64);
            if now_waiting >= n as i64 {
                return Ok(());
            }
            if now_waiting != last {
                last = now_waiting;
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(120) {
                return Err(BenchError::Stalled {
                    unfinished: n as i64 - now_waiting,
                    seconds: 120,
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    .await;
    workers.stop().await;
    result?;
    // As autovacuum's ANALYZE would after that many inserts, so the worker's statements are
    // planned on statistics that know the sagas (this server may run with autovacuum off).
    engine.store().vacuum_analyze().await?;
    Ok(())
}

async fn count_waiting(engine: &Engine) -> Result<i64, BenchError> {
    Ok(engine
        .store()
        .counts_by_status()
        .await?
        .into_iter()
        .filter(|(status, _)| *status == SagaStatus::Waiting)
        .map(|(_, n)| n)
        .sum())
}

/// Starts a worker process on the benchmark's database, lets it settle, measures one window,
/// stops it.
async fn idle_window(
    pool: &PgPool,
    url: &str,
    exe: &Path,
    args: &[String],
    window: Duration,
    waiting: i64,
) -> Result<IdleWindow, BenchError> {
    let mut child = Command::new(exe)
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("STEPWISE_LISTEN_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let measured = async {
        tokio::time::sleep(SETTLE).await;
        if let Some(status) = child.try_wait()? {
            return Err(BenchError::Internal(format!(
                "the worker process exited early ({status})"
            )));
        }
        let before = sample(pool).await?;
        let began = Instant::now();
        tokio::time::sleep(window).await;
        let after = sample(pool).await?;
        let secs = began.elapsed().as_secs_f64();
        let rss = child.id().and_then(procfs::rss_of);
        Ok(IdleWindow {
            waiting_sagas: waiting,
            window_s: round3(secs),
            transactions_per_s: round3((after.0 - before.0) as f64 / secs),
            saga_rows_read_per_s: round3((after.1 - before.1) as f64 / secs),
            worker_rss_mib: rss.map(|(now, _)| (now * 10.0).round() / 10.0),
            worker_peak_rss_mib: rss.map(|(_, peak)| (peak * 10.0).round() / 10.0),
        })
    }
    .await;
    stop(&mut child).await;
    measured
}

/// Transactions of this database and rows of `stepwise.sagas` read, so far.
async fn sample(pool: &PgPool) -> Result<(i64, i64), BenchError> {
    // What this process did before (making the sagas wait, VACUUM) must not land in a window.
    pg::flush_stats(pool).await?;
    let mut conn = pool.acquire().await?;
    // Statistics are cached per transaction; clear them to read fresh numbers.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    let (xacts, rows): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database
                 WHERE datname = current_database()),
                (SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables
                 WHERE schemaname = 'stepwise' AND relname = 'sagas')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((xacts.unwrap_or(0), rows.unwrap_or(0)))
}

/// Asks the worker process to stop (SIGTERM, as a deployment would), then kills it if it has
/// not within its grace.
async fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
