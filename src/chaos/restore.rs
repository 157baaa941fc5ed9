//! `stepwise restore-drill` (scripts/restore-drill, docs/operations.md, "Backups"): a primary
//! with WAL archiving, a base backup, hotel stays and synthetic sagas run by worker processes;
//! then the load stops starting sagas, a restore point is made while sagas are still in flight,
//! and the workers go on past it (effects the restored database will not know about). Then
//! everything stops, and a new cluster is restored from the base backup and the archive to the
//! restore point (point-in-time recovery). Workers on the restored cluster finish the sagas
//! that were in flight, against the same external systems (the sandbox), whose idempotency keys
//! keep the effects already made from happening again. One JSON line: sagas, terminal, lost,
//! duplicated_effects, recovery_s (from the start of the restore to the first saga step
//! committed on the restored cluster) and finish_s (to every saga ended); exit 1 when lost or
//! duplicated_effects is not 0 or a saga is stuck.

use super::{blocking, checks, failed, load, tempfile_dir, workers};
use crate::exit::CliError;
use crate::throwaway_pg::{Cluster, StopMode};
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// How long the load runs before the restore point.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// How long the workers go on after the restore point before everything stops.
    #[arg(long, default_value_t = 3.0)]
    pub after_seconds: f64,
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
    eprintln!("restore-drill: {}", message.as_ref());
}

pub async fn run(args: RestoreArgs) -> Result<(), CliError> {
    if !(args.seconds >= 3.0 && args.seconds <= 3600.0) {
        return Err(CliError::usage("--seconds must be between 3 and 3600"));
    }
    let lease = Duration::from_millis(args.lease_ms.max(500));
    say("a primary with WAL archiving");
    let primary = Arc::new(
        blocking(Cluster::create)
            .await?
            .map_err(failed("cannot create the primary"))?,
    );
    let archive = primary.dir().join("archive");
    let backup = primary.dir().join("base-backup");
    let settings = format!(
        "archive_mode = on\narchive_command = 'mkdir -p {a} && test ! -f {a}/%f && cp %p {a}/%f'",
        a = archive.display()
    );
    let p = primary.clone();
    blocking(move || p.configure_and_restart(&settings))
        .await?
        .map_err(failed("cannot turn WAL archiving on"))?;

    let sandbox = stepwise_sandbox::Sandbox::start(([127, 0, 0, 1], 0).into(), 23)
        .await
        .map_err(|e| CliError::failed(format!("cannot start the sandbox: {e}")))?;
    let sandbox_url = sandbox.base_url();
    std::env::set_var("DATABASE_URL", primary.url());
    std::env::set_var("STEPWISE_SANDBOX_URL", &sandbox_url);
    let app = crate::app::App::open(8).await?;
    let engine = app.engine.clone();
    say(format!("base backup into {}", backup.display()));
    let (p, b) = (primary.clone(), backup.clone());
    blocking(move || p.base_backup(&b))
        .await?
        .map_err(failed("pg_basebackup failed"))?;

    let logs = tempfile_dir()?;
    let http = reqwest::Client::new();
    let mut pool = workers::Pool::new(&logs, lease, args.workers)?;
    let stop_load = CancellationToken::new();
    let load_task = tokio::spawn(
        load::Load::new(engine.clone(), http.clone(), sandbox_url.clone()).run(stop_load.clone()),
    );
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs_f64(args.seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.watch();
    }
    // No new hotel stays; the ones under way go on. A burst of synthetic sagas makes sure
    // plenty are in flight at the restore point.
    stop_load.cancel();
    for i in 0..40 {
        let request = stepwise_engine::StartRequest {
            skill: "synthetic_chain".into(),
            input: json!({"steps": 4, "step_sleep_ms": 300}),
            idempotency_key: Some(format!("burst-{i}")),
            started_by: "restore-drill".into(),
        };
        engine
            .start(request)
            .await
            .map_err(|e| CliError::failed(format!("cannot start a saga: {e}")))?;
    }
    let store = engine.store();
    let at_point = store
        .restore_point("stepwise-drill")
        .await
        .map_err(|e| CliError::failed(format!("cannot make the restore point: {e}")))?;
    let in_flight = checks::unfinished(store.pool()).await.unwrap_or(-1);
    say(format!(
        "restore point made with {} sagas, {in_flight} in flight; the workers go on for {} s",
        at_point, args.after_seconds
    ));
    tokio::time::sleep(Duration::from_secs_f64(args.after_seconds)).await;
    let _ = pool.shutdown().await;
    let _ = load_task.await;
    app.close().await;
    let p = primary.clone();
    blocking(move || p.stop(StopMode::Immediate))
        .await?
        .map_err(failed("cannot stop the primary"))?;

    say("restoring the base backup and the archived WAL to the restore point into a new cluster");
    let restore_began = Instant::now();
    let recovery = format!(
        "restore_command = 'cp {a}/%f %p'\nrecovery_target_name = 'stepwise-drill'\n\
         recovery_target_action = 'promote'\narchive_mode = off",
        a = archive.display()
    );
    let (p, b) = (primary.clone(), backup.clone());
    let restored = blocking(move || p.restore(&b, &recovery))
        .await?
        .map_err(failed("the restore failed"))?;
    std::env::set_var("DATABASE_URL", restored.url());
    let app = open_when_promoted().await?;
    let engine = app.engine.clone();
    let promoted_s = restore_began.elapsed().as_secs_f64();
    let sagas_restored = engine
        .store()
        .counts_by_status()
        .await
        .map_err(|e| CliError::failed(e.to_string()))?
        .iter()
        .map(|(_, n)| n)
        .sum::<i64>();
    let lost = (at_point - sagas_restored).max(0);
    let mut pool = workers::Pool::new(&logs, lease, args.workers)?;
    let first_step = engine.store().latest_event_at().await.ok().flatten();
    let mut recovery_s = None;
    let drain_deadline = Instant::now() + lease * 3 + Duration::from_secs(90);
    while Instant::now() < drain_deadline {
        pool.watch();
        if recovery_s.is_none()
            && engine.store().latest_event_at().await.ok().flatten() != first_step
        {
            recovery_s = Some(restore_began.elapsed().as_secs_f64());
        }
        if checks::unfinished(engine.store().pool()).await.unwrap_or(1) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finish_s = restore_began.elapsed().as_secs_f64();
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
    let duplicated_effects = report.json["steps_succeeded_twice"].as_i64().unwrap_or(0)
        + report.json["money_mismatches"].as_i64().unwrap_or(0);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let line = json!({
        "drill": "restore",
        "sagas": report.json["sagas_started"],
        "terminal": report.json["terminal"],
        "stuck": report.json["stuck"],
        "in_flight_at_restore_point": in_flight,
        "lost": lost,
        "duplicated_effects": duplicated_effects,
        "recovery_s": recovery_s.map(round),
        "promoted_s": round(promoted_s),
        "finish_s": round(finish_s),
        "checks": report.json,
    });
    app.close().await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&logs);
    drop(restored);
    drop(primary);
    if !args.json {
        say(format!(
            "{} sagas, {} terminal, {lost} lost, {duplicated_effects} duplicated effects, recovery {:?} s",
            line["sagas"], line["terminal"], line["recovery_s"]
        ));
    }
    println!("{}", serde_json::to_string(&line).unwrap_or_default());
    let stuck = report.json["stuck"].as_i64().unwrap_or(1);
    if lost == 0 && duplicated_effects == 0 && stuck == 0 {
        Ok(())
    } else {
        Err(CliError::failed(
            "restore-drill: a saga was lost or stuck, or an effect happened twice (see the JSON line)",
        ))
    }
}

/// Opens the app on the restored cluster once recovery has reached the target and promoted it.
async fn open_when_promoted() -> Result<crate::app::App, CliError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = std::env::var("DATABASE_URL").unwrap_or_default();
        if let Ok(store) = stepwise_engine::PgStore::connect(&url, 1).await {
            let standby = store.is_standby().await;
            store.pool().close().await;
            if let Ok(false) = standby {
                return crate::app::App::open(8).await;
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed(
                "the restored cluster was not promoted within 120 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
