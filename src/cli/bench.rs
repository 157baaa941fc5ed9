//! `stepwise bench`: the executor benchmark (see BENCHMARKS.md). A progress bar on a terminal;
//! with `--json`, only the report on stdout.

use crate::bench::{self, BenchConfig, BenchReport, Progress};
use crate::exit::CliError;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Sagas in the throughput phase (N).
    #[arg(long, default_value_t = 2000)]
    pub sagas: usize,
    /// No-op steps per saga (K).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Connections to PostgreSQL (C); the ceiling is measured at the same C.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Worker instances (W) sharing the connections.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Sagas in flight over all workers (default: C, or 8 x C with --batch).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Cross-saga batched commits: several sagas' step results in one transaction.
    #[arg(long)]
    pub batch: bool,
    /// With --batch: concurrent group commits of each worker (as `stepwise worker --committers`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub committers: u16,
    /// Step K/2 fails permanently: measures the compensation path.
    #[arg(long)]
    pub fail_at_half: bool,
    /// After the other phases, run at high load for this many minutes.
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<u64>,
    /// Length of a soak "minute" in seconds (only to try the soak out quickly).
    #[arg(long, default_value_t = 60, hide = true)]
    pub soak_interval_secs: u64,
    /// Turn autovacuum on (PostgreSQL's defaults, ALTER SYSTEM + reload; needs a superuser)
    /// for the soak if the server has it off, and put the configuration back afterwards.
    #[arg(long, requires = "soak")]
    pub soak_autovacuum: bool,
    /// Instead of the other phases: an idle worker process with nothing waiting, then with
    /// this many sagas waiting for an event; its transactions/s and RSS.
    #[arg(long, value_name = "SAGAS", conflicts_with_all = ["soak", "fail_at_half"])]
    pub waiting: Option<usize>,
    /// Seconds of each idle window of --waiting.
    #[arg(long, default_value_t = 60)]
    pub waiting_window_secs: u64,
    /// Seconds of each pgbench run of the ceiling (0 skips the ceiling).
    #[arg(long, default_value_t = 5)]
    pub limit_seconds: u64,
    /// pgbench runs per ceiling figure (the median is kept).
    #[arg(long, default_value_t = 3)]
    pub limit_runs: usize,
    /// Sagas started one at a time for the idle latency.
    #[arg(long, default_value_t = 50)]
    pub idle_samples: usize,
    /// Seconds of starts at half the measured rate, for the latency under load.
    #[arg(long, default_value_t = 5.0)]
    pub half_load_seconds: f64,
    /// The database the benchmark drops and recreates for its sagas.
    #[arg(long, default_value = "stepwise_bench")]
    pub database: String,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub fn config(&self, server_url: String) -> BenchConfig {
        BenchConfig {
            sagas: self.sagas,
            steps: self.steps,
            concurrency: self.concurrency,
            workers: self.workers,
            in_flight: self.in_flight.unwrap_or(if self.batch {
                self.concurrency * 8
            } else {
                self.concurrency
            }),
            batch_commits: self.batch,
            committers: usize::from(self.committers),
            fail_at_half: self.fail_at_half,
            idle_samples: self.idle_samples,
            half_load_seconds: self.half_load_seconds,
            ceiling_seconds: self.limit_seconds,
            ceiling_runs: self.limit_runs,
            soak_minutes: self.soak,
            soak_interval_secs: self.soak_interval_secs,
            soak_autovacuum: self.soak_autovacuum,
            server_url,
            database: self.database.clone(),
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let target = crate::embedded_pg::resolve_database().await?;
    let config = args.config(target.url.clone());
    let progress: Arc<dyn Progress> = if !args.json && std::io::stderr().is_terminal() {
        Arc::new(Bar::new())
    } else {
        Arc::new(bench::Silent)
    };
    let result = match args.waiting {
        Some(n) => match std::env::current_exe() {
            Ok(exe) => bench::waiting::run(
                config,
                n,
                Duration::from_secs(args.waiting_window_secs.max(1)),
                &exe,
                progress.clone(),
            )
            .await
            .map(|r| Report::Waiting(Box::new(r))),
            Err(e) => Err(bench::BenchError::Io(e)),
        },
        None => bench::run(config, progress.clone())
            .await
            .map(|r| Report::Run(Box::new(r))),
    };
    progress.phase("done", 0);
    if let Some(embedded) = target.embedded {
        if let Err(e) = embedded.shutdown().await {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL cleanly");
        }
    }
    let report = result.map_err(|e| match e {
        bench::BenchError::Invalid(m) => CliError::usage(m),
        other => CliError::failed(format!("benchmark failed: {other}")),
    })?;
    match (report, args.json) {
        (Report::Run(report), true) => super::print_json(&report),
        (Report::Waiting(report), true) => super::print_json(&report),
        (Report::Run(report), false) => {
            println!("{}", render(&report));
            Ok(())
        }
        (Report::Waiting(report), false) => {
            println!("{}", render_waiting(&report));
            Ok(())
        }
    }
}

enum Report {
    Run(Box<BenchReport>),
    Waiting(Box<bench::waiting::WaitingReport>),
}

/// The human-readable report of `--waiting`.
pub fn render_waiting(r: &bench::waiting::WaitingReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v}"));
    let mut lines = vec![format!(
        "waiting       {} sagas made to wait in {} s; worker: stepwise {}",
        r.waiting,
        r.setup_s,
        r.worker_args.join(" ")
    )];
    for w in [&r.nothing_waiting, &r.with_waiting] {
        lines.push(format!(
            "idle worker   {:>7} waiting: {} transactions/s, {} saga rows read/s, RSS {} MiB (peak {}) over {} s",
            w.waiting_sagas,
            w.transactions_per_s,
            w.saga_rows_read_per_s,
            f(w.worker_rss_mib),
            f(w.worker_peak_rss_mib),
            w.window_s
        ));
    }
    lines.push(format!(
        "machine       load {} -> {}, PostgreSQL {}",
        f(r.load_average_1m_before),
        f(r.load_average_1m_after),
        r.postgres.version
    ));
    lines.join("\n")
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v}"));
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "workload      {} sagas x {} steps{}, C={} connections, W={} workers, {} in flight, {} commits",
        r.sagas,
        r.steps,
        if r.fail_at_half { " (fail at K/2, compensate)" } else { "" },
        r.concurrency,
        r.workers,
        r.in_flight,
        if r.batch_commits { "cross-saga batched" } else { "per-saga" },
    ));
    line(format!(
        "throughput    {} steps/s, {} sagas/s ({} steps in {} s); starts {} sagas/s",
        r.steps_per_s, r.sagas_per_s, r.steps_executed, r.elapsed_s, r.start_sagas_per_s
    ));
    line(format!(
        "ceiling       L1({c}) {} steps/s, L1b({c}) {} steps/s{}",
        f(r.limit.l1_steps_per_s),
        f(r.limit.l1b_steps_per_s),
        r.limit
            .skipped
            .as_ref()
            .map_or(String::new(), |s| format!(" ({s})")),
        c = r.limit.clients,
    ));
    line(format!(
        "efficiency    E = {} (steps/s / {}), synchronous_commit={}",
        f(r.efficiency),
        r.efficiency_basis.to_uppercase(),
        r.synchronous_commit
    ));
    let l = &r.latency_ms;
    line(format!(
        "latency idle  start->first step p50 {} ms p99 {} ms; start->done p50 {} ms p99 {} ms ({} sagas)",
        f(l.idle.first_step_p50),
        f(l.idle.first_step_p99),
        f(l.idle.done_p50),
        f(l.idle.done_p99),
        l.idle.samples
    ));
    line(format!(
        "latency 50%   start->first step p50 {} ms p99 {} ms; start->done p50 {} ms p99 {} ms ({} sagas at {}/s)",
        f(l.half_load.first_step_p50),
        f(l.half_load.first_step_p99),
        f(l.half_load.done_p50),
        f(l.half_load.done_p99),
        l.half_load.samples,
        l.half_load_sagas_per_s
    ));
    let p = &r.per_step;
    line(format!(
        "per step      {} commits, {} WAL bytes, CPU {} us worker + {} us PostgreSQL",
        f(p.commits),
        f(p.wal_bytes),
        f(p.worker_cpu_us),
        f(p.postgres_cpu_us)
    ));
    line(format!(
        "rows written  {} per step ({} inserts, {} updates of which {} HOT; HOT share {})",
        f(p.rows_written),
        f(p.inserts),
        f(p.updates),
        f(p.hot_updates),
        f(p.hot_update_share)
    ));
    for t in &r.table_writes {
        line(format!(
            "  {:<11} {} inserts, {} updates ({} HOT), {} deletes",
            t.table, t.inserts, t.updates, t.hot_updates, t.deletes
        ));
    }
    line(format!(
        "cores busy    worker {}, PostgreSQL {} (CPU s per s over {} s)",
        f(r.cores_busy.worker),
        f(r.cores_busy.postgres),
        r.cores_busy.wall_s
    ));
    line(format!("peak RSS      {} MiB", f(r.peak_rss_mib)));
    for t in &r.tables {
        line(format!(
            "table         {}: {} live, {} dead tuples, HOT {}",
            t.table,
            t.live_tuples,
            t.dead_tuples,
            t.hot_ratio
                .map_or("-".into(), |h| format!("{:.0}%", h * 100.0))
        ));
    }
    if let Some(soak) = &r.soak {
        for m in &soak.minutes {
            let dead: Vec<String> = m
                .tables
                .iter()
                .map(|t| format!("{} {}", t.table, t.dead_tuples))
                .collect();
            line(format!(
                "soak min {:>2}   {} steps/s, dead tuples: {}",
                m.minute,
                m.steps_per_s,
                dead.join(", ")
            ));
        }
        line(format!(
            "soak          last/first = {}; autovacuum={}{}",
            f(soak.last_over_first),
            soak.autovacuum,
            if soak.manual_vacuum {
                " (the soak ran VACUUM (ANALYZE) on sagas and steps each minute)"
            } else if soak.autovacuum_turned_on {
                " (turned on for the soak, put back after)"
            } else {
                ""
            }
        ));
    }
    line(format!(
        "machine       {} CPUs (bench on {}, PostgreSQL on {}), load {} -> {}, PostgreSQL {}",
        r.machine.cpus,
        r.machine.bench_cpus_allowed.as_deref().unwrap_or("-"),
        r.machine.postgres_cpus_allowed.as_deref().unwrap_or("-"),
        f(r.machine.load_average_1m_before),
        f(r.machine.load_average_1m_after),
        r.machine.postgres.version
    ));
    out.trim_end().to_string()
}

/// A progress bar on stderr.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        let style = if total > 0 {
            ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {elapsed}")
        } else {
            ProgressStyle::with_template("{spinner} {msg:28} {elapsed}")
        };
        if let Ok(style) = style {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_message(name.to_string());
        if name == "done" {
            self.bar.finish_and_clear();
        }
    }

    fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn note(&self, text: &str) {
        self.bar.println(text);
    }
}
