//! `stepwise chaos`: the chaos suite of issue 13 (docs/reliability.md, "The chaos suite").
//!
//! One command, on a machine with PostgreSQL's binaries: a throwaway PostgreSQL cluster of its
//! own ([`crate::throwaway_pg`], so it may restart it), an in-process sandbox injecting faults
//! (10% errors, 5% effect-then-error, 2% timeouts, 2% connection resets), worker processes
//! (`stepwise worker`, this same binary) and a load of hotel stays (booking, check-in,
//! checkout, room back to Vacant; and the checkouts of the guests already in house) and
//! synthetic sagas with durable sleeps and event waits. Meanwhile it SIGKILLs a worker and
//! starts a replacement every few seconds, restarts PostgreSQL twice (fast, then immediate),
//! SIGSTOPs a worker past its lease and resumes it, and restarts every worker in turn with
//! SIGTERM (a rolling deploy). Then it stops the load, clears the faults, lets every saga end
//! and checks from outside: sagas started / terminal / stuck, steps that succeeded twice, the
//! sandbox ledger's money against every paying saga's outcome, and worker processes that died
//! without being killed. The report is one JSON line; the exit status is 1 when a figure that
//! must be 0 is not.

mod checks;
pub mod failover;
mod load;
pub mod restore;
mod workers;

use crate::exit::CliError;
use crate::throwaway_pg::{Cluster, StopMode};
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How long the load and the faults last (then up to two more minutes to let every saga
    /// end and check).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Print only the report's JSON line on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Worker processes running at once.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Lease of the workers, in milliseconds: a killed worker's sagas resume after it.
    #[arg(long, default_value_t = 4000)]
    pub lease_ms: u64,
    /// Seed of the sandbox data and of its fault draws.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
    /// Keep the run's directory (cluster, worker logs) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// What was done to the system during the run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Disruptions {
    pub workers_killed: u32,
    pub postgres_restarts: u32,
    pub workers_stopped_past_lease: u32,
    pub rolling_restarts: u32,
}

fn say(message: impl AsRef<str>) {
    eprintln!("chaos: {}", message.as_ref());
}

pub async fn run(args: ChaosArgs) -> Result<(), CliError> {
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        return Err(CliError::usage(
            "--minutes must be above 0 and at most 1440",
        ));
    }
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let lease = Duration::from_millis(args.lease_ms.max(500));
    say("creating a throwaway PostgreSQL cluster");
    let cluster = blocking(Cluster::create)
        .await?
        .map_err(failed("cannot create the PostgreSQL cluster"))?;
    let cluster = Arc::new(cluster);
    let sandbox = stepwise_sandbox::Sandbox::start(([127, 0, 0, 1], 0).into(), args.seed)
        .await
        .map_err(|e| CliError::failed(format!("cannot start the sandbox: {e}")))?;
    let sandbox_url = sandbox.base_url();
    // This process and the workers it spawns use the cluster and the sandbox.
    std::env::set_var("DATABASE_URL", cluster.url());
    std::env::set_var("STEPWISE_SANDBOX_URL", &sandbox_url);
    let app = crate::app::App::open(8).await?;
    let engine = app.engine.clone();
    let logs = tempfile_dir()?;
    say(format!(
        "PostgreSQL on port {}, sandbox {sandbox_url}, logs in {}",
        cluster.port(),
        logs.display()
    ));

    let http = reqwest::Client::new();
    load::set_faults(
        &http,
        &sandbox_url,
        json!({
            "error_rate": 0.10,
            "effect_then_error_rate": 0.05,
            "timeout_rate": 0.02,
            "reset_rate": 0.02,
            "timeout_ms": 2500,
            "seed": args.seed,
        }),
    )
    .await?;

    let mut pool = workers::Pool::new(&logs, lease, args.workers)?;
    let stop_load = CancellationToken::new();
    let load = load::Load::new(engine.clone(), http.clone(), sandbox_url.clone());
    let load_task = tokio::spawn(load.run(stop_load.clone()));

    // The timeline, as fractions of the run: kills all along; a fast restart at 25%, an
    // immediate one at 45%, a worker stopped past its lease at 60%, a rolling restart at 75%.
    let began = Instant::now();
    let mut disruptions = Disruptions::default();
    let at = |fraction: f64| total.mul_f64(fraction);
    let kill_every = Duration::from_secs(5);
    let mut next_kill = kill_every;
    let mut done = [false; 4];
    while began.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.watch();
        let now = began.elapsed();
        // No kill just before a PostgreSQL restart: a replacement still connecting when the
        // server goes down would exit (`stepwise worker` does not wait for its database at
        // startup) and count as a death that nobody caused.
        let restart_soon = [(0, 0.25), (1, 0.45)]
            .iter()
            .any(|&(i, f)| !done[i] && now + Duration::from_secs(3) >= at(f));
        if now >= next_kill && !restart_soon {
            next_kill = now + kill_every;
            if pool.kill_one()? {
                disruptions.workers_killed += 1;
            }
        }
        if !done[0] && now >= at(0.25) {
            done[0] = true;
            restart(&cluster, StopMode::Fast).await?;
            disruptions.postgres_restarts += 1;
        }
        if !done[1] && now >= at(0.45) {
            done[1] = true;
            restart(&cluster, StopMode::Immediate).await?;
            disruptions.postgres_restarts += 1;
        }
        if !done[2] && now >= at(0.6) {
            done[2] = true;
            let pause = lease + Duration::from_secs(2);
            say(format!("SIGSTOP of a worker for {} ms", pause.as_millis()));
            pool.stop_one_for(pause).await?;
            disruptions.workers_stopped_past_lease += 1;
        }
        if !done[3] && now >= at(0.75) {
            done[3] = true;
            say("rolling restart: SIGTERM to every worker in turn");
            disruptions.rolling_restarts += pool.rolling_restart().await?;
        }
    }

    say("load stopped; faults cleared; letting every saga end");
    stop_load.cancel();
    let _ = load_task.await;
    load::set_faults(&http, &sandbox_url, json!({})).await?;
    let drain = lease * 3 + Duration::from_secs(60);
    let stuck_deadline = Instant::now() + drain;
    while Instant::now() < stuck_deadline {
        pool.watch();
        if checks::unfinished(engine.store().pool()).await.unwrap_or(1) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unexpected_exits = pool.shutdown().await;
    let report = checks::report(
        engine.store().pool(),
        &http,
        &sandbox_url,
        args.minutes,
        disruptions,
        unexpected_exits,
    )
    .await?;
    app.close().await;
    sandbox.shutdown().await;
    if args.keep {
        say(format!("kept {}", logs.display()));
    } else {
        let _ = std::fs::remove_dir_all(&logs);
    }
    drop(cluster);
    let line = serde_json::to_string(&report.json).unwrap_or_default();
    if !args.json {
        say(format!(
            "{} sagas started, {} terminal, {} stuck, {} steps succeeded twice, {} money mismatches, {} unexpected exits",
            report.json["sagas_started"],
            report.json["terminal"],
            report.json["stuck"],
            report.json["steps_succeeded_twice"],
            report.json["money_mismatches"],
            report.json["unexpected_exits"]
        ));
    }
    println!("{line}");
    if report.ok {
        Ok(())
    } else {
        Err(CliError::failed(
            "chaos: a figure that must be 0 is not (see the JSON line)",
        ))
    }
}

async fn restart(cluster: &Arc<Cluster>, mode: StopMode) -> Result<(), CliError> {
    say(format!("PostgreSQL restart ({})", mode.as_str()));
    let cluster = cluster.clone();
    blocking(move || {
        cluster.stop(mode)?;
        std::thread::sleep(Duration::from_millis(500));
        cluster.start()
    })
    .await?
    .map_err(failed("PostgreSQL restart failed"))
}

/// Maps a throwaway cluster's error to a failure that says what was being done.
fn failed(context: &str) -> impl FnOnce(crate::throwaway_pg::ClusterError) -> CliError + '_ {
    move |e| CliError::failed(format!("{context}: {e}"))
}

/// Runs blocking work (the cluster's `initdb` and `pg_ctl` calls) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::failed(e.to_string()))
}

fn tempfile_dir() -> Result<std::path::PathBuf, CliError> {
    let dir = std::env::temp_dir().join(format!(
        "stepwise-chaos-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}
