//! Cross-saga group commit (`WorkerConfig::commit_batch`): many sagas' step commits share
//! statements and commits, and every saga still runs its steps in order, exactly once, with its
//! whole history; compensation goes through the same path.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::store::KnownSkills;
use stepwise_engine::{
    Clock, CompensationStatus, JitterSource, ManualClock, SagaStatus, StepStatus, WorkerConfig,
};
use uuid::Uuid;

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

/// One call of `stepwise.commit_steps` for three claimed sagas, step 1 of each succeeding and
/// step 2 beginning, after another worker took the middle one over (its token moved on).
#[sqlx::test(migrations = false)]
async fn a_group_commit_leaves_out_only_the_saga_whose_lease_was_lost(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let mut ids = Vec::new();
    for i in 0..3 {
        let key = format!("lost-{i}");
        ids.push(start(&engine, SYN, json!({"steps": 3}), Some(&key)).await);
    }
    let now = clock.now();
    let known = KnownSkills::of(engine.registry());
    let worker: std::sync::Arc<str> = "grouped".into();
    let claimed = (engine.store())
        .claim(&worker, now, now + chrono::Duration::seconds(30), 3, &known)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // The call lists the sagas in another order than they were started.
    let call = [ids[2], ids[1], ids[0]];
    let (tokens, seqs): (Vec<i64>, Vec<i64>) = {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT s.fencing_token, s.attempt_seq
             FROM UNNEST($1::uuid[]) WITH ORDINALITY AS c(id, ord)
             JOIN stepwise.sagas s ON s.id = c.id ORDER BY c.ord",
        )
        .bind(&call[..])
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.into_iter().unzip()
    };
    sqlx::query("UPDATE stepwise.sagas SET fencing_token = fencing_token + 1 WHERE id = $1")
        .bind(ids[1])
        .execute(&pool)
        .await
        .unwrap();
    let before_lost: (i32, i64) =
        sqlx::query_as("SELECT cursor, attempt_seq FROM stepwise.sagas WHERE id = $1")
            .bind(ids[1])
            .fetch_one(&pool)
            .await
            .unwrap();

    let committed: Vec<(Uuid, bool, Option<i64>)> = sqlx::query_as(
        "SELECT saga_id, cancel_requested, begun_seq FROM stepwise.commit_steps(
             $1, $2, array_fill(now(), ARRAY[3]), array_fill('grouped'::text, ARRAY[3]),
             array_fill(NULL::text, ARRAY[3]), ARRAY[1, 1, 1], ARRAY[false, false, false],
             array_fill(NULL::timestamptz, ARRAY[3]), ARRAY[false, false, false],
             array_fill(NULL::jsonb, ARRAY[3]), array_fill(NULL::jsonb, ARRAY[3]),
             array_fill(NULL::jsonb, ARRAY[3]), ARRAY[true, true, true], ARRAY[0, 0, 0],
             ARRAY[false, false, false], ARRAY[1, 1, 1], array_fill(now(), ARRAY[3]), $3,
             array_fill('{\"done\": true}'::jsonb, ARRAY[3]), ARRAY[1, 1, 1],
             ARRAY[false, false, false], ARRAY[1, 1, 1], ARRAY[true, true, true],
             '{}', '{}', '{}', '{}', '{}')",
    )
    .bind(&call[..])
    .bind(&tokens)
    .bind(&seqs)
    .fetch_all(&pool)
    .await
    .unwrap();

    // The answer: the committed sagas, in the order of the call, each with the attempt it began.
    let answered: Vec<Uuid> = committed.iter().map(|c| c.0).collect();
    assert_eq!(answered, vec![ids[2], ids[0]]);
    for (id, cancel, begun) in &committed {
        assert!(!cancel);
        let (status, finished_seq, cursor, attempt_seq) = first_step_and_saga(&pool, *id).await;
        assert_eq!(status, "succeeded");
        assert_eq!(cursor, 1);
        assert_eq!(*begun, Some(attempt_seq));
        // The end of step 1 comes before the start of step 2 in the saga's history.
        let finished_seq = finished_seq.unwrap();
        assert!(finished_seq < attempt_seq, "{finished_seq} < {attempt_seq}");
    }
    // The saga whose lease was lost: nothing of it changed.
    let (status, finished_seq, cursor, attempt_seq) = first_step_and_saga(&pool, ids[1]).await;
    assert_eq!(status, "pending");
    assert_eq!(finished_seq, None);
    assert_eq!((cursor, attempt_seq), before_lost);
}

/// The first step's status and history place of its end, and the saga's cursor and attempt in
/// flight, as stored.
async fn first_step_and_saga(pool: &PgPool, id: Uuid) -> (String, Option<i64>, i32, i64) {
    sqlx::query_as(
        "SELECT st.status, st.finished_seq, s.cursor, s.attempt_seq
         FROM stepwise.steps st JOIN stepwise.sagas s ON s.id = st.saga_id
         WHERE st.saga_id = $1 AND st.position = 0",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Live views learn of every status change a worker makes exactly once, in order, whether the
/// worker commits each saga alone or in groups: the worker announces them after its commit
/// and the trigger on `stepwise.sagas` stays quiet for them (docs/console.md, "Live updates").
#[sqlx::test(migrations = false)]
async fn a_workers_status_changes_are_announced_once_each_in_order(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen(stepwise_engine::store::SAGA_CHANGED_CHANNEL)
        .await
        .unwrap();

    let mut expected = std::collections::HashMap::new();
    for commit_batch in [1, 8] {
        let mut ids = Vec::new();
        for i in 0..6 {
            let (input, statuses) = match i % 3 {
                0 => (json!({"steps": 3}), vec!["completed"]),
                1 => (
                    json!({"steps": 4, "fail_at": 3}),
                    vec!["compensating", "compensated"],
                ),
                // Given back for its retry, then claimed again (the claim's `running` is not
                // news) and completed.
                _ => (
                    json!({"steps": 3, "fail_at": 2, "fail_kind": "transient",
                           "transient_failures": 1, "max_attempts": 3}),
                    vec!["pending", "completed"],
                ),
            };
            let id = start(
                &engine,
                SYN,
                input,
                Some(&format!("announce-{commit_batch}-{i}")),
            )
            .await;
            expected.insert(id, statuses);
            ids.push(id);
        }
        let worker = engine.worker(WorkerConfig {
            worker_id: format!("announcer-{commit_batch}"),
            concurrency: 6,
            claim_batch: 6,
            commit_batch,
            jitter: JitterSource::Fixed(1.0),
            ..WorkerConfig::default()
        });
        drive_with_retries(&clock, &worker, 20).await;
        for id in ids {
            assert!(detail(&engine, id).await.status.is_terminal());
        }
    }

    let mut announced: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(700), listener.recv()).await
    {
        let (id, status) = notification.payload().split_once(' ').unwrap();
        announced
            .entry(Uuid::parse_str(id).unwrap())
            .or_default()
            .push(status.to_string());
    }
    assert_eq!(announced.len(), expected.len(), "{announced:?}");
    for (id, statuses) in expected {
        assert_eq!(announced[&id], statuses, "saga {id}");
    }
}
