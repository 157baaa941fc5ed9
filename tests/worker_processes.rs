//! Real `stepwise worker` processes coordinating through PostgreSQL, one of them killed with
//! SIGKILL mid-run.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_engine::ManualClock;

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

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&pool, "SELECT count(*) FROM stepwise.events WHERE kind = 'step_succeeded' AND actor = 'worker-doomed'").await < 10 {
        assert!(Instant::now() < deadline, "the doomed worker never made progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap(); // SIGKILL: no cleanup, leases left behind
    doomed.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = count(
            &pool,
            "SELECT count(*) FROM stepwise.sagas WHERE status NOT IN ('completed', 'compensated', 'failed')",
        )
        .await;
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} sagas never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    survivor.kill().unwrap();
    survivor.wait().unwrap();

    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM stepwise.sagas WHERE status = 'completed'"
        )
        .await,
        90
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM stepwise.sagas WHERE status = 'compensated'"
        )
        .await,
        10
    );
    let doubled = count(
        &pool,
        "SELECT count(*) FROM (SELECT saga_id, step FROM stepwise.events
           WHERE kind = 'step_succeeded' GROUP BY saga_id, step HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "a step's success was recorded twice");
    let undone_twice = count(
        &pool,
        "SELECT count(*) FROM (SELECT saga_id, step FROM stepwise.events
           WHERE kind = 'compensation_succeeded' GROUP BY saga_id, step HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(undone_twice, 0);
    // The survivor took over sagas the killed worker held, and said so in their history.
    let takeovers = count(
        &pool,
        "SELECT count(*) FROM stepwise.events WHERE kind = 'lease_expired'
           AND actor = 'worker-survivor' AND detail->>'previous_owner' = 'worker-doomed'",
    )
    .await;
    assert!(
        takeovers >= 1,
        "no saga was taken over from the killed worker"
    );
}
