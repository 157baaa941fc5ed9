//! `stepwise demo`: the story end to end on the embedded default. It migrates, runs workers,
//! and shows sagas that complete, retry, compensate, and survive a worker killed with SIGKILL,
//! then prints their timelines.

use crate::app::App;
use crate::exit::CliError;
use crate::render;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepwise_engine::{Engine, SagaStatus, StartRequest, StepStatus, WorkerConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SYN: &str = stepwise_skills::synthetic::NAME;

pub async fn run() -> Result<(), CliError> {
    let app = App::open(12).await?;
    let result = story(&app).await;
    app.close().await;
    result
}

/// An in-process worker running in the background until stopped.
struct Background {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(engine: &Engine, id: &str, lease: Duration) -> Self {
        let worker = engine.worker(WorkerConfig {
            worker_id: id.to_string(),
            concurrency: 8,
            lease,
            poll_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = worker.run(token).await {
                tracing::error!(error = %e, "demo worker failed");
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn start(engine: &Engine, input: Value, label: &str) -> Result<Uuid, CliError> {
    let outcome = engine
        .start(StartRequest {
            skill: SYN.into(),
            input,
            idempotency_key: Some(format!("demo-{label}-{}", Uuid::new_v4().simple())),
            started_by: "demo:stepwise".into(),
        })
        .await?;
    Ok(outcome.saga.id)
}

async fn finish(engine: &Engine, id: Uuid, within: Duration) -> Result<SagaStatus, CliError> {
    let summary = engine.wait(id, within).await?;
    if !summary.status.is_terminal() {
        return Err(CliError::failed(format!(
            "saga {id} did not finish within {} s",
            within.as_secs()
        )));
    }
    Ok(summary.status)
}

async fn show(engine: &Engine, id: Uuid, title: &str) -> Result<(), CliError> {
    let saga = engine
        .detail(id)
        .await?
        .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
    println!("\n━━ {title} ━━");
    print!("{}", render::timeline(&saga));
    Ok(())
}

async fn story(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!(
        "Stepwise demo — database {}",
        crate::cli::redact(&app.database_url)
    );
    println!("Skills: sagas of persisted steps; each step's result is committed before the next.");

    let lease = Duration::from_secs(2);
    let worker = Background::start(engine, "demo-worker-1", lease);
    let ok = start(engine, json!({"steps": 4}), "ok").await?;
    let retried = start(
        engine,
        json!({"steps": 3, "fail_at": 2, "fail_kind": "transient", "transient_failures": 2}),
        "retry",
    )
    .await?;
    let compensated = start(engine, json!({"steps": 5, "fail_at": 4}), "compensate").await?;
    for id in [ok, retried, compensated] {
        finish(engine, id, Duration::from_secs(30)).await?;
    }
    worker.stop().await;

    let survived = survive_killed_worker(app, lease).await?;

    show(engine, ok, "1. A saga that completes").await?;
    show(
        engine,
        retried,
        "2. A step that fails twice with a retryable error, retried at persisted times",
    )
    .await?;
    show(
        engine,
        compensated,
        "3. A permanent failure at step_4: steps 3, 2, 1 undone in reverse order",
    )
    .await?;
    show(
        engine,
        survived,
        "4. A saga whose worker was killed with SIGKILL mid-run, resumed by another worker",
    )
    .await?;

    throughput(engine).await?;
    println!("\nInspect any saga with `stepwise sagas show ID` (add --json for the full record).");
    Ok(())
}

/// Runs a saga on a child `stepwise worker` process, kills it with SIGKILL after two steps,
/// and lets an in-process worker take over once the lease expires.
async fn survive_killed_worker(app: &App, lease: Duration) -> Result<Uuid, CliError> {
    let engine = &app.engine;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the stepwise binary: {e}")))?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "worker",
            "--worker-id",
            "demo-worker-doomed",
            "--concurrency",
            "2",
        ])
        .arg("--lease-ms")
        .arg(lease.as_millis().to_string())
        .env("DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::failed(format!("cannot start a worker process: {e}")))?;
    let id = start(
        engine,
        json!({"steps": 6, "step_sleep_ms": 300}),
        "survivor",
    )
    .await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let saga = engine
            .detail(id)
            .await?
            .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
        let done = saga
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .count();
        if done >= 2 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(CliError::failed("the worker process made no progress"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    child
        .kill()
        .await
        .map_err(|e| CliError::failed(format!("cannot kill the worker process: {e}")))?;
    println!(
        "\nKilled worker process {} (SIGKILL) after two steps of saga {id}; another worker takes over when its {} s lease expires…",
        pid,
        lease.as_secs()
    );
    let rescuer = Background::start(engine, "demo-worker-2", lease);
    let status = finish(engine, id, Duration::from_secs(60)).await;
    rescuer.stop().await;
    status?;
    Ok(id)
}

/// A rough throughput figure: 200 sagas of 10 no-op steps on 8 in-process workers.
async fn throughput(engine: &Engine) -> Result<(), CliError> {
    let (sagas, steps) = (200, 10);
    let began = Instant::now();
    let mut ids = Vec::with_capacity(sagas);
    for _ in 0..sagas {
        ids.push(start(engine, json!({"steps": steps}), "throughput").await?);
    }
    let worker = Background::start(engine, "demo-worker-throughput", Duration::from_secs(30));
    for id in &ids {
        finish(engine, *id, Duration::from_secs(120)).await?;
    }
    worker.stop().await;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "\nThroughput check: {sagas} sagas × {steps} steps in {secs:.2} s ≈ {:.0} durable steps/s (rough; `stepwise bench` measures properly)",
        (sagas * steps) as f64 / secs
    );
    Ok(())
}
