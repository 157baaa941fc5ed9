//! Real `stepwise worker` processes coordinating through PostgreSQL, one of them killed with
//! SIGKILL mid-run.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_engine::{EventKind, ManualClock, SagaDetail, SagaStatus};

fn spawn_worker(url: &str, id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "worker",
            "--worker-id",
            id,
            "--concurrency",
            "8",
            "--lease-ms",
            "1500",
        ])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn killed_worker_process_loses_no_saga_and_no_step_succeeds_twice(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    for i in 0..100 {
        // every tenth saga fails and compensates, so both paths cross the crash
        let input = if i % 10 == 0 {
            json!({"steps": 5, "step_sleep_ms": 20, "fail_at": 4})
        } else {
            json!({"steps": 5, "step_sleep_ms": 20})
        };
        start(
            &engine,
            "synthetic_chain",
            input,
            Some(&format!("chaos-{i}")),
        )
        .await;
    }

    let mut doomed = spawn_worker(&url, "worker-doomed");
    let mut survivor = spawn_worker(&url, "worker-survivor");

    // Kill the first worker while it holds work: once some steps have succeeded.
    let store = engine.store().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .event_count(EventKind::StepSucceeded, "worker-doomed")
        .await
        .unwrap()
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "the doomed worker never made progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap(); // SIGKILL: no cleanup, leases left behind
    doomed.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = store.unfinished_count().await.unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} sagas never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    survivor.kill().unwrap();
    survivor.wait().unwrap();

    let sagas = every_saga(&engine).await;
    assert_eq!(sagas.len(), 100);
    let with_status = |status: SagaStatus| sagas.iter().filter(|s| s.status == status).count();
    assert_eq!(with_status(SagaStatus::Completed), 90);
    assert_eq!(with_status(SagaStatus::Compensated), 10);
    for saga in &sagas {
        assert_eq!(
            repeated_steps(saga, EventKind::StepSucceeded),
            Vec::<&str>::new(),
            "a step's success was recorded twice in saga {}",
            saga.id
        );
        assert_eq!(
            repeated_steps(saga, EventKind::CompensationSucceeded),
            Vec::<&str>::new(),
            "a step was undone twice in saga {}",
            saga.id
        );
    }
    // The survivor took over sagas the killed worker held, and said so in their history.
    let takeovers = sagas
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| {
            e.kind == EventKind::LeaseExpired
                && e.actor == "worker-survivor"
                && e.detail.as_ref().and_then(|d| d["previous_owner"].as_str())
                    == Some("worker-doomed")
        })
        .count();
    assert!(
        takeovers >= 1,
        "no saga was taken over from the killed worker"
    );
}

/// The steps with more than one `kind` event in the saga's history.
fn repeated_steps(saga: &SagaDetail, kind: EventKind) -> Vec<&str> {
    let mut seen = HashMap::new();
    for event in saga.events.iter().filter(|e| e.kind == kind) {
        *seen.entry(event.step.as_deref().unwrap_or("")).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(step, _)| step)
        .collect()
}
