//! The executor benchmark behind `stepwise bench` and `cargo bench` (see BENCHMARKS.md).
//!
//! One run, on one PostgreSQL, in this order:
//! 1. the ceiling: PostgreSQL's own L1(C) and L1b(C) for a minimal durable step, measured with
//!    pgbench and the scripts in `sql/`, at the benchmark's connection count C ([`ceiling`]);
//! 2. idle latency: sagas started one at a time on idle workers;
//! 3. throughput: N sagas of K no-op steps (the `synthetic_chain` skill) are started, then W
//!    workers with M sagas in flight over a pool of C connections drain them; commits and WAL
//!    bytes per step (`pg_stat_database`, `pg_stat_wal`), CPU per step of this process and of
//!    the PostgreSQL processes serving it (`/proc`);
//! 4. latency at 50% load: sagas started at half the measured saga rate while workers run;
//! 5. optionally a soak: steps/s per minute at high load, dead tuples of the hot tables,
//!    with autovacuum as the server has it or turned on for the soak ([`soak`]).
//!
//! Rows written per step (inserts and updates of the engine's tables from
//! `pg_stat_user_tables`, HOT ones counted apart) are read around the throughput phase.
//! `--waiting N` is a run of its own ([`waiting`]): the load and memory of an idle worker
//! process with N waiting sagas against none.
//!
//! Timings are reported, never asserted.

pub mod ceiling;
pub mod latency;
pub mod pg;
pub mod procfs;
pub mod soak;
pub mod waiting;
pub mod workload;

use latency::{round3, LatencySummary};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::{Engine, PgStore, SystemClock, WorkerConfig};
use workload::{start_many, start_one, Workers};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Sagas in the throughput phase (N).
    pub sagas: usize,
    /// Steps per saga (K).
    pub steps: usize,
    /// Connections to PostgreSQL (C): the pool of the workers, and pgbench's clients.
    pub concurrency: usize,
    /// Worker instances (W) sharing the pool.
    pub workers: usize,
    /// Sagas driven at once over all workers (M).
    pub in_flight: usize,
    /// Group several sagas' step commits into one transaction.
    pub batch_commits: bool,
    /// Concurrent group-commit tasks of each worker when commits are batched.
    pub committers: usize,
    /// Make step K/2 fail permanently, so the run measures the compensation path too.
    pub fail_at_half: bool,
    /// Sagas started one at a time on idle workers, for the idle latency.
    pub idle_samples: usize,
    /// How long sagas are started at half the peak rate, for the latency under load.
    pub half_load_seconds: f64,
    /// Seconds of each pgbench run of the ceiling; 0 skips the ceiling.
    pub ceiling_seconds: u64,
    /// pgbench runs per ceiling figure (the median is kept).
    pub ceiling_runs: usize,
    /// Soak for this many minutes (after the other phases), if set.
    pub soak_minutes: Option<u64>,
    /// Length of a soak "minute" in seconds (60; shorter only for trying the soak out).
    pub soak_interval_secs: u64,
    /// Turn autovacuum on (PostgreSQL's defaults) for the soak when the server has it off,
    /// and put the configuration back afterwards.
    pub soak_autovacuum: bool,
    /// Any database URL on the server to use; the benchmark works in its own databases.
    pub server_url: String,
    /// The database the benchmark (re)creates for its sagas.
    pub database: String,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            sagas: 2000,
            steps: 10,
            concurrency: 8,
            workers: 1,
            in_flight: 8,
            batch_commits: false,
            committers: WorkerConfig::default().committers,
            fail_at_half: false,
            idle_samples: 50,
            half_load_seconds: 5.0,
            ceiling_seconds: 5,
            ceiling_runs: 3,
            soak_minutes: None,
            soak_interval_secs: 60,
            soak_autovacuum: false,
            server_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            database: "stepwise_bench".into(),
        }
    }
}

impl BenchConfig {
    /// The most sagas' commits a worker groups into one transaction.
    pub fn commit_batch(&self) -> usize {
        if self.batch_commits {
            64
        } else {
            1
        }
    }
}

/// Where a long run tells how far it is (the CLI draws a progress bar; `cargo bench` nothing).
pub trait Progress: Send + Sync {
    /// A new phase with `total` units of work (0: unknown).
    fn phase(&self, name: &str, total: u64);
    /// Units done so far in this phase.
    fn set(&self, done: u64);
    /// A line of information between phases.
    fn note(&self, text: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _name: &str, _total: u64) {}
    fn set(&self, _done: u64) {}
    fn note(&self, _text: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] stepwise_engine::StoreError),
    #[error(transparent)]
    Start(#[from] stepwise_engine::StartError),
    #[error("could not set up the skills: {0}")]
    Skills(#[from] stepwise_skills::SetupError),
    #[error("ceiling: {0}")]
    Ceiling(String),
    #[error("the benchmark stalled: {unfinished} sagas made no progress for {seconds} s")]
    Stalled { unfinished: i64, seconds: u64 },
    #[error("invalid benchmark settings: {0}")]
    Invalid(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

/// PostgreSQL's ceiling as the contract names it, plus how it was measured.
#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    pub l1_steps_per_s: Option<f64>,
    pub l1b_steps_per_s: Option<f64>,
    pub clients: usize,
    pub seconds: u64,
    pub runs: usize,
    pub l1_runs: Vec<f64>,
    pub l1b_runs: Vec<f64>,
    /// Why there is no ceiling, when there is none.
    pub skipped: Option<String>,
}

/// `latency_ms`: the top-level figures are the idle ones (BENCHMARKS.md, "Reproduce it"), both
/// phases in full.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub first_step_p50: Option<f64>,
    pub first_step_p99: Option<f64>,
    pub done_p50: Option<f64>,
    pub done_p99: Option<f64>,
    pub idle: LatencySummary,
    pub half_load: LatencySummary,
    /// The start rate of the half-load phase: half the measured saga rate.
    pub half_load_sagas_per_s: f64,
}

/// Costs per executed step over the throughput phase.
#[derive(Debug, Clone, Serialize)]
pub struct PerStep {
    pub commits: Option<f64>,
    /// Server-wide WAL (other databases' traffic during the run is included).
    pub wal_bytes: Option<f64>,
    /// CPU of this process (workers + the benchmark's own polling), microseconds.
    pub worker_cpu_us: Option<f64>,
    /// CPU of the PostgreSQL processes serving the benchmark's database and of the server's
    /// background processes, microseconds.
    pub postgres_cpu_us: Option<f64>,
    /// Rows written to the engine's tables (sagas, steps, history): inserts + updates
    /// (HOT or not) + deletes, from `pg_stat_user_tables`.
    pub rows_written: Option<f64>,
    pub inserts: Option<f64>,
    pub updates: Option<f64>,
    pub hot_updates: Option<f64>,
    /// Share of the updates that were HOT (no index entry written), 0..1.
    pub hot_update_share: Option<f64>,
}

/// How busy the two sides were over the throughput phase: CPU seconds per second of wall
/// time (1.0 = one core all the time). With PostgreSQL and the benchmark pinned to a core each
/// (`taskset`), the side near 1.0 is the one that limits.
#[derive(Debug, Clone, Serialize)]
pub struct CoresBusy {
    pub worker: Option<f64>,
    pub postgres: Option<f64>,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineReport {
    pub cpus: usize,
    /// The CPUs this process and a backend of the benchmark's database may run on
    /// (`Cpus_allowed_list`): different when the run was pinned with `taskset`.
    pub bench_cpus_allowed: Option<String>,
    pub postgres_cpus_allowed: Option<String>,
    pub load_average_1m_before: Option<f64>,
    pub load_average_1m_after: Option<f64>,
    pub postgres: pg::ServerInfo,
}

/// Everything `stepwise bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub sagas: usize,
    pub steps: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub in_flight: usize,
    pub batch_commits: bool,
    pub fail_at_half: bool,
    pub elapsed_s: f64,
    pub sagas_per_s: f64,
    pub steps_per_s: f64,
    /// Steps executed in the throughput phase (actions + compensations, every attempt).
    pub steps_executed: i64,
    /// How fast the N sagas were started before the workers ran.
    pub start_sagas_per_s: f64,
    pub latency_ms: LatencyReport,
    pub limit: LimitReport,
    /// steps_per_s ÷ L1(C), or ÷ L1b(C) with batched commits.
    pub efficiency: Option<f64>,
    pub efficiency_basis: &'static str,
    pub synchronous_commit: String,
    pub per_step: PerStep,
    /// Rows written per table over the throughput phase (not per step).
    pub table_writes: Vec<pg::TableWrites>,
    pub cores_busy: CoresBusy,
    pub peak_rss_mib: Option<f64>,
    pub tables: Vec<stepwise_engine::store::TableHealth>,
    pub soak: Option<soak::SoakReport>,
    pub machine: MachineReport,
}

/// Runs the whole benchmark.
pub async fn run(
    config: BenchConfig,
    progress: Arc<dyn Progress>,
) -> Result<BenchReport, BenchError> {
    validate(&config)?;
    let load_before = procfs::load_average();

    // 1. The ceiling, on its own scratch database, before our load warms anything of ours.
    let limit = if config.ceiling_seconds == 0 {
        LimitReport::skipped("not measured (--limit-seconds 0)", &config)
    } else {
        progress.phase("ceiling (pgbench L1, L1b)", 0);
        match ceiling::measure(
            &config.server_url,
            config.concurrency,
            config.ceiling_seconds,
            config.ceiling_runs,
        )
        .await
        {
            Ok(c) => LimitReport {
                l1_steps_per_s: Some(c.l1_steps_per_s.round()),
                l1b_steps_per_s: Some(c.l1b_steps_per_s.round()),
                clients: c.clients,
                seconds: c.seconds,
                runs: c.runs,
                l1_runs: c.l1_runs.iter().map(|x| x.round()).collect(),
                l1b_runs: c.l1b_runs.iter().map(|x| x.round()).collect(),
                skipped: None,
            },
            Err(error) => {
                tracing::warn!(%error, "could not measure the ceiling");
                LimitReport::skipped(&error.to_string(), &config)
            }
        }
    };

    pg::recreate_database(&config.server_url, &config.database).await?;
    let url = pg::with_database(&config.server_url, &config.database);
    // C connections for the work, plus the one each worker keeps for LISTEN.
    let pool_size = (config.concurrency + config.workers) as u32;
    let pool = pg::migrated_pool(&url, pool_size).await?;
    let store = PgStore::new(pool.clone());
    let engine = Engine::new(
        store,
        Arc::new(stepwise_skills::registry()?),
        Arc::new(SystemClock),
    );
    let server = pg::server_info(&pool).await?;
    let input = workload::saga_input(&config);

    // 2. Idle latency: one saga at a time, each waited for.
    progress.phase("idle latency", config.idle_samples as u64);
    let workers = Workers::start(&engine, &config, "idle");
    tokio::time::sleep(Duration::from_millis(200)).await; // let the workers LISTEN
    let mut idle_ids = Vec::with_capacity(config.idle_samples);
    for i in 0..config.idle_samples {
        let id = start_one(&engine, input.clone()).await?;
        engine.wait(id, Duration::from_secs(30)).await?;
        idle_ids.push(id);
        progress.set(i as u64 + 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers.stop().await;
    let idle = latency::of_sagas(engine.store(), &idle_ids).await?;

    // 3. Throughput: start N sagas, then let the workers drain them.
    progress.phase("starting sagas", 0);
    let started_at = Instant::now();
    let ids = start_many(&engine, &input, config.sagas, config.concurrency).await?;
    let start_rate = config.sagas as f64 / started_at.elapsed().as_secs_f64().max(1e-9);

    let before = pg::settled_counters(&pool).await?;
    let pids = pg::server_pids(&pool).await?;
    let backend_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let postgres_cpus_allowed = u32::try_from(backend_pid)
        .ok()
        .and_then(procfs::cpus_allowed);
    let cpu_window = Instant::now();
    let pg_cpu_before = procfs::CpuSnapshot::of(&pids);
    let own_cpu_before = procfs::own_cpu_seconds();
    progress.phase("throughput", config.sagas as u64);
    let t0 = chrono::Utc::now();
    let workers = Workers::start(&engine, &config, "throughput");
    workload::drain(
        &engine,
        config.sagas as u64,
        &progress,
        Duration::from_secs(120),
    )
    .await?;
    let t_end = workload::last_done(&engine, &ids).await?.unwrap_or(t0);
    let own_cpu_after = procfs::own_cpu_seconds();
    let pids_after = pg::server_pids(&pool).await?;
    let pg_cpu = procfs::CpuSnapshot::of(&pids_after).since(&pg_cpu_before);
    let cpu_wall = cpu_window.elapsed().as_secs_f64().max(1e-9);
    let after = pg::settled_counters(&pool).await?;
    let elapsed = ((t_end - t0).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-6);
    let executed = workload::steps_executed(&engine, &ids).await?;
    let steps_per_s = executed as f64 / elapsed;
    let sagas_per_s = config.sagas as f64 / elapsed;
    let per = |x: f64| (executed > 0).then(|| round3(x / executed as f64));
    let own_cpu = own_cpu_after.zip(own_cpu_before).map(|(a, b)| a - b);
    let table_writes = pg::TableWrites::delta(&after.writes, &before.writes);
    let sum = |f: fn(&pg::TableWrites) -> i64| table_writes.iter().map(f).sum::<i64>();
    let (inserts, updates, hot_updates) = (
        sum(|t| t.inserts),
        sum(|t| t.updates),
        sum(|t| t.hot_updates),
    );
    let per_step = PerStep {
        commits: per((after.commits - before.commits) as f64),
        wal_bytes: per((after.wal_bytes - before.wal_bytes) as f64),
        worker_cpu_us: own_cpu.and_then(|s| per(s * 1e6)),
        postgres_cpu_us: pg_cpu.and_then(|s| per(s * 1e6)),
        rows_written: per(sum(pg::TableWrites::rows) as f64),
        inserts: per(inserts as f64),
        updates: per(updates as f64),
        hot_updates: per(hot_updates as f64),
        hot_update_share: (updates > 0).then(|| round3(hot_updates as f64 / updates as f64)),
    };
    let cores_busy = CoresBusy {
        worker: own_cpu.map(|s| round3(s / cpu_wall)),
        postgres: pg_cpu.map(|s| round3(s / cpu_wall)),
        wall_s: round3(cpu_wall),
    };

    // 4. Latency at half the measured saga rate, the throughput workers still running.
    let half_rate = (sagas_per_s / 2.0).max(1.0);
    let half_n = ((half_rate * config.half_load_seconds).round() as usize).max(1);
    progress.phase("latency at 50% load", half_n as u64);
    let half_ids = paced_starts(&engine, &input, half_rate, half_n, &progress).await?;
    let silent: Arc<dyn Progress> = Arc::new(Silent);
    workload::drain(&engine, half_n as u64, &silent, Duration::from_secs(120)).await?;
    workers.stop().await;
    let half_load = latency::of_sagas(engine.store(), &half_ids).await?;

    // 5. Soak.
    let soak = match config.soak_minutes {
        Some(minutes) if minutes > 0 => {
            Some(soak::run(&engine, &config, &input, minutes, &progress).await?)
        }
        _ => None,
    };

    let tables = engine.store().table_health().await?;
    let (efficiency_basis, ceiling) = if config.batch_commits {
        ("l1b", limit.l1b_steps_per_s)
    } else {
        ("l1", limit.l1_steps_per_s)
    };
    let report = BenchReport {
        sagas: config.sagas,
        steps: config.steps,
        concurrency: config.concurrency,
        workers: config.workers,
        in_flight: config.in_flight,
        batch_commits: config.batch_commits,
        fail_at_half: config.fail_at_half,
        elapsed_s: round3(elapsed),
        sagas_per_s: sagas_per_s.round(),
        steps_per_s: steps_per_s.round(),
        steps_executed: executed,
        start_sagas_per_s: start_rate.round(),
        latency_ms: LatencyReport {
            first_step_p50: idle.first_step_p50,
            first_step_p99: idle.first_step_p99,
            done_p50: idle.done_p50,
            done_p99: idle.done_p99,
            idle,
            half_load,
            half_load_sagas_per_s: half_rate.round(),
        },
        efficiency: ceiling
            .filter(|c| *c > 0.0)
            .map(|c| round3(steps_per_s / c)),
        efficiency_basis,
        limit,
        synchronous_commit: server.synchronous_commit.clone(),
        per_step,
        table_writes,
        cores_busy,
        peak_rss_mib: procfs::peak_rss_mib().map(|m| (m * 10.0).round() / 10.0),
        tables,
        soak,
        machine: MachineReport {
            cpus: procfs::cpus(),
            bench_cpus_allowed: procfs::cpus_allowed(std::process::id()),
            postgres_cpus_allowed,
            load_average_1m_before: load_before,
            load_average_1m_after: procfs::load_average(),
            postgres: server,
        },
    };
    pool.close().await;
    Ok(report)
}

impl LimitReport {
    fn skipped(why: &str, config: &BenchConfig) -> Self {
        Self {
            l1_steps_per_s: None,
            l1b_steps_per_s: None,
            clients: config.concurrency,
            seconds: config.ceiling_seconds,
            runs: 0,
            l1_runs: Vec::new(),
            l1b_runs: Vec::new(),
            skipped: Some(why.to_string()),
        }
    }
}

fn validate(config: &BenchConfig) -> Result<(), BenchError> {
    let max_steps = stepwise_skills::synthetic::MAX_STEPS;
    if config.steps == 0 || config.steps > max_steps {
        return Err(BenchError::Invalid(format!(
            "--steps must be between 1 and {max_steps}"
        )));
    }
    if config.sagas == 0 {
        return Err(BenchError::Invalid("--sagas must be at least 1".into()));
    }
    if config.concurrency == 0 || config.workers == 0 || config.in_flight == 0 {
        return Err(BenchError::Invalid(
            "--concurrency, --workers and --in-flight must be at least 1".into(),
        ));
    }
    if config.database.is_empty() || config.database == "postgres" {
        return Err(BenchError::Invalid(
            "the benchmark needs a database of its own (it drops and recreates it)".into(),
        ));
    }
    Ok(())
}

/// Starts `n` sagas at `rate` per second (open loop: a slow start does not delay the next).
async fn paced_starts(
    engine: &Engine,
    input: &serde_json::Value,
    rate: f64,
    n: usize,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<uuid::Uuid>, BenchError> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::with_capacity(n);
    let joined = |joined: Result<Result<uuid::Uuid, BenchError>, tokio::task::JoinError>| {
        joined.map_err(|e| BenchError::Internal(format!("start task: {e}")))?
    };
    for i in 0..n {
        ticker.tick().await;
        let engine = engine.clone();
        let input = input.clone();
        tasks.spawn(async move { start_one(&engine, input).await });
        progress.set(i as u64 + 1);
        // A finished task keeps its memory (sized for the whole start) until it is joined:
        // joined only at the end, thousands of them were most of the process's peak RSS
        // (BENCHMARKS.md, 3 December, late afternoon).
        while let Some(done) = tasks.try_join_next() {
            ids.push(joined(done)?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        ids.push(joined(done)?);
    }
    Ok(ids)
}
