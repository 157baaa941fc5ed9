//! The engine's behaviour on real PostgreSQL: ordering, retries, compensation, leases,
//! idempotency and cancellation.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use stepwise_engine::store::{KnownSkills, StepChange, Transition};
use stepwise_engine::{
    Clock, CompensationStatus, EventKind, ManualClock, SagaStatus, StartError, StartRequest,
    StepStatus, StoreError,
};

const SYN: &str = "synthetic_chain";

#[sqlx::test(migrations = false)]
async fn happy_path_runs_steps_in_order_and_persists_outputs_and_history(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(&engine, SYN, json!({"steps": 4}), Some("happy")).await;
    assert_eq!(detail(&engine, id).await.status, SagaStatus::Pending);

    worker(&engine, "w1").run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.steps.len(), 4);
    for (i, step) in saga.steps.iter().enumerate() {
        assert_eq!(step.name, format!("step_{}", i + 1));
        assert_eq!(step.status, StepStatus::Succeeded);
        assert_eq!(step.attempts, 1);
        assert_eq!(step.output, Some(json!({"index": i + 1, "attempt": 1})));
        assert_eq!(step.compensation.status, CompensationStatus::NotNeeded);
    }
    assert_eq!(saga.output.as_ref().unwrap()["step_3"]["index"], json!(3));
    assert_eq!(
        history(&saga),
        vec![
            "saga_started",
            "step_started:step_1",
            "step_succeeded:step_1",
            "step_started:step_2",
            "step_succeeded:step_2",
            "step_started:step_3",
            "step_succeeded:step_3",
            "step_started:step_4",
            "step_succeeded:step_4",
            "saga_completed",
        ]
    );
    assert_eq!(saga.events[0].actor, "test:runner");
    assert_eq!(saga.events[1].actor, "w1");
    assert!(saga.events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[sqlx::test(migrations = false)]
async fn transient_failures_are_retried_at_the_persisted_time_then_succeed(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let input = json!({"steps": 3, "fail_at": 2, "fail_kind": "transient",
                       "transient_failures": 2, "max_attempts": 5});
    let id = start(&engine, SYN, input, None).await;
    let w = worker(&engine, "w1");

    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Pending, "waits for its retry time");
    assert_eq!(saga.steps[1].attempts, 1);
    let retry = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::RetryScheduled)
        .unwrap();
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(retry.detail.as_ref().unwrap()["at"].clone()).unwrap();
    // synthetic policy: 10 ms initial delay, full jitter fixed at 1.0 -> exactly 10 ms
    assert_eq!(at - clock.now(), chrono::Duration::milliseconds(10));

    // Not due yet: nothing runs until the clock reaches the persisted time.
    clock.advance(Duration::from_millis(9));
    assert_eq!(w.run_until_idle().await.unwrap(), 0);
    clock.advance(Duration::from_millis(1));
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.steps[1].attempts, 2);
    assert_eq!(saga.status, SagaStatus::Pending);

    // second retry backs off exponentially: 20 ms
    clock.advance(Duration::from_millis(19));
    assert_eq!(w.run_until_idle().await.unwrap(), 0);
    clock.advance(Duration::from_millis(1));
    w.run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.steps[1].attempts, 3);
    assert_eq!(
        saga.steps[1].output,
        Some(json!({"index": 2, "attempt": 3}))
    );
    let kinds = history(&saga);
    assert_eq!(
        kinds.iter().filter(|k| *k == "step_failed:step_2").count(),
        2
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "retry_scheduled:step_2")
            .count(),
        2
    );
}

#[sqlx::test(migrations = false)]
async fn exhausted_retries_start_compensation(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let input = json!({"steps": 3, "fail_at": 3, "fail_kind": "transient",
                       "transient_failures": 10, "max_attempts": 2});
    let id = start(&engine, SYN, input, None).await;
    drive_with_retries(&clock, &worker(&engine, "w1"), 4).await;

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.steps[2].status, StepStatus::Failed);
    assert_eq!(saga.steps[2].attempts, 2);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "synthetic_transient");
}

#[sqlx::test(migrations = false)]
async fn permanent_failure_compensates_succeeded_steps_in_reverse_order(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(&engine, SYN, json!({"steps": 5, "fail_at": 4}), None).await;
    worker(&engine, "w1").run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    let error = saga.error.as_ref().unwrap();
    assert_eq!(error["code"], "synthetic_failure");
    assert_eq!(error["step"], "step_4");
    let statuses: Vec<_> = saga.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        vec![
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped
        ]
    );
    for step in &saga.steps[..3] {
        assert_eq!(step.compensation.status, CompensationStatus::Compensated);
        assert_eq!(
            step.compensation.output.as_ref().unwrap()["undid"],
            json!(step.name)
        );
    }
    let undo_order: Vec<_> = saga
        .events
        .iter()
        .filter(|e| e.kind == EventKind::CompensationSucceeded)
        .map(|e| e.step.clone().unwrap())
        .collect();
    assert_eq!(undo_order, vec!["step_3", "step_2", "step_1"]);
    assert_eq!(history(&saga).last().unwrap(), "saga_compensated");
}

#[sqlx::test(migrations = false)]
async fn compensation_that_keeps_failing_leaves_the_saga_failed_with_its_story(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let input = json!({"steps": 3, "fail_at": 3, "compensation_failures": 10, "max_attempts": 2});
    let id = start(&engine, SYN, input, None).await;
    drive_with_retries(&clock, &worker(&engine, "w1"), 4).await;

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    let error = saga.error.as_ref().unwrap();
    assert_eq!(error["code"], "compensation_failed");
    assert_eq!(error["step"], "step_2");
    // step_2's undo failed twice; step_1 was never undone and still waits for an operator
    assert_eq!(
        saga.steps[1].compensation.status,
        CompensationStatus::Failed
    );
    assert_eq!(saga.steps[1].compensation.attempts, 2);
    assert_eq!(
        saga.steps[0].compensation.status,
        CompensationStatus::Pending
    );
    assert_eq!(saga.steps[0].status, StepStatus::Succeeded);
    let kinds = history(&saga);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "compensation_failed:step_2")
            .count(),
        2
    );
    assert!(kinds.contains(&"retry_scheduled:step_2".to_string()));
    assert_eq!(kinds.last().unwrap(), "saga_failed");
    assert!(saga
        .events
        .iter()
        .filter(|e| e.kind == EventKind::CompensationFailed)
        .all(|e| e.detail.as_ref().unwrap()["code"] == "synthetic_compensation_failure"));
}

#[sqlx::test(migrations = false)]
async fn expired_lease_is_taken_over_and_the_stale_worker_is_fenced_off(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(&engine, SYN, json!({"steps": 2}), None).await;

    // Worker A claims the saga (the claim starts step_1's first attempt), then goes silent
    // (paused, partitioned, killed).
    let a: std::sync::Arc<str> = "worker-a".into();
    let now = clock.now();
    let known = KnownSkills::of(engine.registry());
    let claimed = engine
        .store()
        .claim(&a, now, now + chrono::Duration::seconds(30), 1, &known)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].begun);
    assert_eq!(claimed[0].steps[0].attempts, 1);
    let stale = claimed[0].lease.clone();

    // Its lease is still valid: nobody else may take the saga.
    let b = worker(&engine, "worker-b");
    assert_eq!(b.run_until_idle().await.unwrap(), 0);

    clock.advance(Duration::from_secs(31));
    assert_eq!(b.run_until_idle().await.unwrap(), 1);
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    let expired = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::LeaseExpired)
        .unwrap();
    assert_eq!(expired.actor, "worker-b");
    assert_eq!(
        expired.detail.as_ref().unwrap()["previous_owner"],
        "worker-a"
    );
    // A's interrupted attempt counts: B ran attempt 2.
    assert_eq!(saga.steps[0].attempts, 2);
    assert_eq!(saga.steps[0].output.as_ref().unwrap()["attempt"], 2);

    // A wakes up and tries to record its result: the fencing token refuses it.
    let mut late = Transition::new();
    late.steps.push(StepChange::Succeeded {
        attempt: claimed[0].in_flight.unwrap(),
        output: json!({"from": "a"}),
    });
    let err = engine
        .store()
        .commit(&stale, clock.now(), &std::sync::Arc::new(late))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LostLease { .. }));
    let after = detail(&engine, id).await;
    assert_eq!(after.steps[0].output, saga.steps[0].output);
    assert_eq!(after.events.len(), saga.events.len());
}

#[sqlx::test(migrations = false)]
async fn two_hundred_concurrent_starts_with_one_key_make_one_saga(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let input = json!({"steps": 2});
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let engine = engine.clone();
            let input = input.clone();
            tokio::spawn(async move {
                engine
                    .start(StartRequest {
                        skill: SYN.into(),
                        input,
                        idempotency_key: Some("one-key".into()),
                        started_by: "test:runner".into(),
                    })
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        ids.insert(outcome.saga.id);
        created += usize::from(outcome.created);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // Same key, other input: a conflict naming the existing saga, and nothing written.
    let err = engine
        .start(StartRequest {
            skill: SYN.into(),
            input: json!({"steps": 3}),
            idempotency_key: Some("one-key".into()),
            started_by: "test:runner".into(),
        })
        .await
        .unwrap_err();
    match err {
        StartError::IdempotencyConflict { existing, .. } => {
            assert_eq!(Some(&existing), ids.iter().next())
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[sqlx::test(migrations = false)]
async fn same_key_with_reordered_but_equal_input_returns_the_same_saga(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let first = start(&engine, SYN, json!({"steps": 2, "fail_at": 1}), Some("k")).await;
    let again = start(&engine, SYN, json!({"fail_at": 1, "steps": 2}), Some("k")).await;
    assert_eq!(first, again);
}

#[sqlx::test(migrations = false)]
async fn invalid_input_is_rejected_before_anything_is_written(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    for input in [
        json!({"steps": 0}),
        json!({"steps": 3, "fail_at": 4}),
        json!({"steps": "three"}),
        json!({"steps": 2, "surprise": true}),
    ] {
        let err = engine
            .start(StartRequest {
                skill: SYN.into(),
                input: input.clone(),
                idempotency_key: None,
                started_by: "test".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, StartError::InvalidInput { .. }),
            "{input}: {err}"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_running_saga_compensates_after_the_running_step(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(
        &engine,
        SYN,
        json!({"steps": 6, "step_sleep_ms": 150}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    let running = tokio::spawn(async move { w.run_until_idle().await });

    // Let a couple of steps finish, then cancel mid-flight.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(engine
        .cancel(id, "operator:alice", Some("guest changed plans"))
        .await
        .unwrap());
    running.await.unwrap().unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "cancelled");
    let done: Vec<_> = saga
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .collect();
    assert!(
        (2..6).contains(&done.len()),
        "the running step finished, later ones never ran: {done:?}"
    );
    assert!(done
        .iter()
        .all(|s| s.compensation.status == CompensationStatus::Compensated));
    assert!(saga.steps.iter().any(|s| s.status == StepStatus::Skipped));
    let cancel = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::CancelRequested)
        .unwrap();
    assert_eq!(cancel.actor, "operator:alice");
    // A terminal saga cannot be cancelled again.
    assert!(!engine.cancel(id, "operator:alice", None).await.unwrap());
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_pending_saga_compensates_without_running_anything(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(&engine, SYN, json!({"steps": 3}), None).await;
    assert!(engine.cancel(id, "staff:desk", None).await.unwrap());
    worker(&engine, "w1").run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert!(saga.steps.iter().all(|s| s.status == StepStatus::Skipped));
}

#[sqlx::test(migrations = false)]
async fn a_worker_never_claims_a_saga_whose_skill_version_it_lacks(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let id = start(&engine, SYN, json!({"steps": 2}), None).await;

    // An older deployment's worker, without this skill: it leaves the saga untouched (no
    // attempt counted, no history), instead of claiming and bouncing it.
    let without = stepwise_engine::Engine::new(
        stepwise_engine::PgStore::new(pool),
        std::sync::Arc::new(stepwise_engine::registry::Registry::new()),
        std::sync::Arc::new(clock.clone()),
    );
    assert_eq!(worker(&without, "old").run_until_idle().await.unwrap(), 0);
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Pending);
    assert_eq!(history(&saga), vec!["saga_started"]);
    assert!(saga.steps.iter().all(|s| s.attempts == 0));

    assert_eq!(worker(&engine, "new").run_until_idle().await.unwrap(), 1);
    assert_eq!(detail(&engine, id).await.status, SagaStatus::Completed);
}
