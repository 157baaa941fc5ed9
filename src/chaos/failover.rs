//! `stepwise failover-drill` (scripts/failover-drill, docs/operations.md, "Failover"): a primary
//! and a streaming standby of it (synchronous by default), hotel stays and synthetic sagas
//! running through worker processes whose `DATABASE_URL` names both hosts with
//! `target_session_attrs=read-write`; then the primary is killed (`pg_ctl stop -m immediate`:
//! no shutdown checkpoint, connections cut), the standby promoted, and the run goes on until
//! every saga ends. The checks: sagas whose start was acknowledged and that the new primary
//! does not have (lost), effects made twice (steps that succeeded twice, and the sandbox
//! ledger's money against every paying saga), and the time from the kill to the first start
//! acknowledged by the new primary (downtime_s). One JSON line; exit 1 when lost or
//! duplicated_effects is not 0.

use super::{blocking, checks, failed, load, tempfile_dir, workers};
use crate::exit::CliError;
use crate::throwaway_pg::{Cluster, StopMode};
use clap::Args;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stepwise_engine::StartRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// How long the load runs; the primary is killed at 40% of it.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// An asynchronous standby instead of a synchronous one (what it can lose:
    /// docs/operations.md).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Lease of the workers, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    pub lease_ms: u64,
    /// Print only the JSON line on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

fn say(message: impl AsRef<str>) {
    eprintln!("failover-drill: {}", message.as_ref());
}

pub async fn run(args: FailoverArgs) -> Result<(), CliError> {
    if !(args.seconds >= 5.0 && args.seconds <= 3600.0) {
        return Err(CliError::usage("--seconds must be between 5 and 3600"));
    }
    let total = Duration::from_secs_f64(args.seconds);
    let lease = Duration::from_millis(args.lease_ms.max(500));
    let mode = if args.asynchronous { "async" } else { "sync" };
    say(format!("a primary and a {mode} standby (pg_basebackup -R)"));
    let primary = blocking(Cluster::create)
        .await?
        .map_err(failed("cannot create the primary"))?;
    let primary = Arc::new(primary);
    let p = primary.clone();
    let standby = blocking(move || p.standby())
        .await?
        .map_err(failed("cannot make the standby"))?;
    let standby = Arc::new(standby);
    if !args.asynchronous {
        // Set after the base backup: the standby must not inherit it, or once promoted it
        // would wait for a standby of its own.
        primary
            .configure("synchronous_standby_names = '*'")
            .map_err(failed("cannot make the standby synchronous"))?;
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let sandbox = stepwise_sandbox::Sandbox::start(([127, 0, 0, 1], 0).into(), 19)
        .await
        .map_err(|e| CliError::failed(format!("cannot start the sandbox: {e}")))?;
    let sandbox_url = sandbox.base_url();
    // This process and the workers it spawns use both hosts and the sandbox.
    std::env::set_var("DATABASE_URL", &url);
    std::env::set_var("STEPWISE_SANDBOX_URL", &sandbox_url);
    let app = crate::app::App::open(8).await?;
    let engine = app.engine.clone();
    let sync_state = replication_state(&engine).await?;
    let logs = tempfile_dir()?;
    say(format!(
        "primary on port {}, standby on {} ({sync_state}); DATABASE_URL={url}",
        primary.port(),
        standby.port()
    ));

    let http = reqwest::Client::new();
    let mut pool = workers::Pool::new(&logs, lease, args.workers)?;
    let stop_load = CancellationToken::new();
    let load_task = tokio::spawn(
        load::Load::new(engine.clone(), http.clone(), sandbox_url.clone()).run(stop_load.clone()),
    );
    // A probe: a one-step saga started every 50 ms, each acknowledged start noted.
    let acked: Arc<Mutex<Vec<(Uuid, Instant)>>> = Arc::default();
    let probe_task = tokio::spawn(probe(engine.clone(), acked.clone(), stop_load.clone()));

    let began = Instant::now();
    while began.elapsed() < total.mul_f64(0.4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.watch();
    }
    say("killing the primary (pg_ctl stop -m immediate)");
    let p = primary.clone();
    blocking(move || p.stop(StopMode::Immediate))
        .await?
        .map_err(failed("cannot kill the primary"))?;
    let killed = Instant::now();
    let s = standby.clone();
    blocking(move || s.promote())
        .await?
        .map_err(failed("cannot promote the standby"))?;
    let promote_s = killed.elapsed().as_secs_f64();
    say(format!("standby promoted {promote_s:.2} s after the kill"));

    while began.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.watch();
    }
    say("load stopped; letting every saga end");
    stop_load.cancel();
    let _ = load_task.await;
    let _ = probe_task.await;
    let drain_deadline = Instant::now() + lease * 3 + Duration::from_secs(60);
    while Instant::now() < drain_deadline {
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
        args.seconds / 60.0,
        super::Disruptions::default(),
        unexpected_exits,
    )
    .await?;

    // Acknowledged starts the new primary does not have.
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let ids: Vec<Uuid> = acked.iter().map(|(id, _)| *id).collect();
    let present = engine
        .saga_statuses(&ids)
        .await
        .map_err(|e| CliError::failed(format!("reading the probe's sagas: {e}")))?;
    let lost = ids.iter().filter(|id| !present.contains_key(id)).count();
    // Downtime: from the kill to the first start the new primary acknowledged.
    let downtime_s = acked
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > killed)
        .min()
        .map(|at| (at - killed).as_secs_f64());
    let duplicated_effects = report.json["steps_succeeded_twice"].as_i64().unwrap_or(0)
        + report.json["money_mismatches"].as_i64().unwrap_or(0);
    let line = json!({
        "drill": "failover",
        "standby": mode,
        "seconds": args.seconds,
        "sagas": report.json["sagas_started"],
        "terminal": report.json["terminal"],
        "stuck": report.json["stuck"],
        "lost": lost,
        "duplicated_effects": duplicated_effects,
        "downtime_s": downtime_s.map(|d| (d * 100.0).round() / 100.0),
        "promote_s": (promote_s * 100.0).round() / 100.0,
        "probe_starts_acknowledged": ids.len(),
        "unexpected_exits": unexpected_exits,
        "checks": report.json,
    });
    app.close().await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&logs);
    drop(standby);
    drop(primary);
    if !args.json {
        say(format!(
            "{} sagas, {} terminal, {lost} lost, {duplicated_effects} duplicated effects, downtime {:?} s",
            line["sagas"], line["terminal"], line["downtime_s"]
        ));
    }
    println!("{}", serde_json::to_string(&line).unwrap_or_default());
    let stuck = report.json["stuck"].as_i64().unwrap_or(1);
    if lost == 0 && duplicated_effects == 0 && stuck == 0 && downtime_s.is_some() {
        Ok(())
    } else {
        Err(CliError::failed(
            "failover-drill: a saga was lost or stuck, or an effect happened twice (see the JSON line)",
        ))
    }
}

/// Starts a one-step synthetic saga every 50 ms until `stop`, noting each acknowledged start.
async fn probe(
    engine: stepwise_engine::Engine,
    acked: Arc<Mutex<Vec<(Uuid, Instant)>>>,
    stop: CancellationToken,
) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let request = StartRequest {
            skill: "synthetic_chain".into(),
            input: json!({"steps": 1}),
            idempotency_key: Some(format!("probe-{n}")),
            started_by: "failover-drill".into(),
        };
        let started = tokio::time::timeout(Duration::from_secs(5), engine.start(request)).await;
        if let Ok(Ok(outcome)) = started {
            if let Ok(mut acked) = acked.lock() {
                acked.push((outcome.saga.id, Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The standby's replication state as the primary sees it (`sync` or `async`), once it
/// streams.
async fn replication_state(engine: &stepwise_engine::Engine) -> Result<String, CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(state)) = engine.store().replication_state().await {
            return Ok(state);
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed("the standby never started streaming"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
