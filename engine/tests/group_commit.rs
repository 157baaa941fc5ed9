//! Cross-saga group commit (`WorkerConfig::commit_batch`): many sagas' step commits share
//! statements and commits, and every saga still runs its steps in order, exactly once, with its
//! whole history; compensation goes through the same path.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{
    CompensationStatus, JitterSource, ManualClock, SagaStatus, StepStatus, WorkerConfig,
};

const SYN: &str = "synthetic_chain";

#[sqlx::test(migrations = false)]
async fn grouped_commits_run_every_saga_in_order_with_its_history(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let mut ids = Vec::new();
    for i in 0..40 {
        let input = if i % 10 == 0 {
            json!({"steps": 6, "fail_at": 4})
        } else {
            json!({"steps": 6})
        };
        ids.push(start(&engine, SYN, input, Some(&format!("group-{i}"))).await);
    }
    let worker = engine.worker(WorkerConfig {
        worker_id: "grouped".into(),
        concurrency: 40,
        claim_batch: 40,
        commit_batch: 16,
        lease: Duration::from_secs(30),
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    worker.run_until_idle().await.unwrap();

    for (i, id) in ids.iter().enumerate() {
        let saga = detail(&engine, *id).await;
        if i % 10 == 0 {
            assert_eq!(saga.status, SagaStatus::Compensated, "saga {i}");
            assert_eq!(saga.steps[3].status, StepStatus::Failed);
            for step in &saga.steps[..3] {
                assert_eq!(step.compensation.status, CompensationStatus::Compensated);
            }
            let h = history(&saga);
            let undo: Vec<&String> = h
                .iter()
                .filter(|e| e.starts_with("compensation_succeeded"))
                .collect();
            assert_eq!(
                undo,
                vec![
                    "compensation_succeeded:step_3",
                    "compensation_succeeded:step_2",
                    "compensation_succeeded:step_1"
                ]
            );
        } else {
            assert_eq!(saga.status, SagaStatus::Completed, "saga {i}");
            let mut expected = vec!["saga_started".to_string()];
            for k in 1..=6 {
                expected.push(format!("step_started:step_{k}"));
                expected.push(format!("step_succeeded:step_{k}"));
            }
            expected.push("saga_completed".into());
            assert_eq!(history(&saga), expected, "saga {i}");
            assert!(saga.steps.iter().all(|s| s.attempts == 1));
        }
    }
    // Exactly once: 36 sagas x 6 steps and 4 sagas x 3 steps succeeded, no duplicate.
    let store = engine.store();
    assert_eq!(store.steps_succeeded(None).await.unwrap(), 36 * 6 + 4 * 3);
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 0);
}
