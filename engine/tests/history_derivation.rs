//! What readers see of the v2 storage (docs/storage.md): a saga's history and per-step view
//! derived from `stepwise.events`, the places and actors on its steps' rows and the attempt in
//! flight on its saga row. The rows are written here by SQL, as the worker's statements write
//! them, so these tests are the contract those statements meet.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise_engine::{
    CompensationStatus, EventKind, EventView, ManualClock, PgStore, SagaDetail, StepStatus,
};
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

/// A place in the history, as a worker takes one when an attempt begins or ends.
async fn place(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT nextval('stepwise.events_id_seq')")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Appends a history row; at `id` when given (an attempt's start, written when it fails).
#[allow(clippy::too_many_arguments)]
async fn event(
    pool: &PgPool,
    id: Option<i64>,
    saga: Uuid,
    at: DateTime<Utc>,
    kind: EventKind,
    step: Option<&str>,
    attempt: Option<i32>,
    actor: &str,
    detail: Option<Value>,
) {
    sqlx::query(
        "INSERT INTO stepwise.events (id, saga_id, at, kind, step, attempt, actor, detail)
         OVERRIDING SYSTEM VALUE
         VALUES (COALESCE($1, nextval('stepwise.events_id_seq')), $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(saga)
    .bind(at)
    .bind(kind.as_str())
    .bind(step)
    .bind(attempt)
    .bind(actor)
    .bind(detail)
    .execute(pool)
    .await
    .unwrap();
}

/// The step at `position` succeeded with its attempt `attempt`, begun at `started` (place
/// `started_seq`) and ended at `finished` (place `finished_seq`) by `actor`.
#[allow(clippy::too_many_arguments)]
async fn step_succeeded(
    pool: &PgPool,
    saga: Uuid,
    position: i32,
    attempt: i32,
    (started, started_seq): (DateTime<Utc>, i64),
    (finished, finished_seq): (DateTime<Utc>, i64),
    actor: &str,
    output: Value,
) {
    sqlx::query(
        "UPDATE stepwise.steps
         SET status = 'succeeded', attempts = $3, started_at = $4, started_seq = $5,
             finished_at = $6, finished_seq = $7, actor = $8, output = $9, error = NULL
         WHERE saga_id = $1 AND position = $2",
    )
    .bind(saga)
    .bind(position)
    .bind(attempt)
    .bind(started)
    .bind(started_seq)
    .bind(finished)
    .bind(finished_seq)
    .bind(actor)
    .bind(output)
    .execute(pool)
    .await
    .unwrap();
}

/// The compensation of the step at `position` succeeded, as [`step_succeeded`].
#[allow(clippy::too_many_arguments)]
async fn compensation_succeeded(
    pool: &PgPool,
    saga: Uuid,
    position: i32,
    attempt: i32,
    (started, started_seq): (DateTime<Utc>, i64),
    (finished, finished_seq): (DateTime<Utc>, i64),
    actor: &str,
    output: Value,
) {
    sqlx::query(
        "UPDATE stepwise.steps
         SET compensation_status = 'compensated', compensation_attempts = $3,
             compensation_started_at = $4, compensation_started_seq = $5,
             compensation_finished_at = $6, compensation_finished_seq = $7,
             compensation_actor = $8, compensation_output = $9, compensation_error = NULL
         WHERE saga_id = $1 AND position = $2",
    )
    .bind(saga)
    .bind(position)
    .bind(attempt)
    .bind(started)
    .bind(started_seq)
    .bind(finished)
    .bind(finished_seq)
    .bind(actor)
    .bind(output)
    .execute(pool)
    .await
    .unwrap();
}

/// An attempt in flight, as the saga row holds it.
struct Flight<'a> {
    position: i32,
    compensation: bool,
    attempt: i32,
    at: DateTime<Utc>,
    seq: i64,
    actor: &'a str,
}

/// Puts an attempt in flight on the saga row (`None`: none in flight), with the saga's
/// status and cursor.
async fn in_flight(pool: &PgPool, saga: Uuid, status: &str, cursor: i32, f: Option<Flight<'_>>) {
    sqlx::query(
        "UPDATE stepwise.sagas
         SET status = $2, cursor = $3, attempt_position = $4, attempt_compensation = $5,
             attempt = $6, attempt_started_at = $7, attempt_seq = $8, attempt_actor = $9,
             wake_at = CASE WHEN $2 IN ('completed', 'compensated', 'failed') THEN NULL
                            ELSE wake_at END
         WHERE id = $1",
    )
    .bind(saga)
    .bind(status)
    .bind(cursor)
    .bind(f.as_ref().map(|f| f.position))
    .bind(f.as_ref().map(|f| f.compensation))
    .bind(f.as_ref().map(|f| f.attempt))
    .bind(f.as_ref().map(|f| f.at))
    .bind(f.as_ref().map(|f| f.seq))
    .bind(f.as_ref().map(|f| f.actor))
    .execute(pool)
    .await
    .unwrap();
}

/// The history as (kind:step, attempt, actor, at), in order.
fn story(saga: &SagaDetail) -> Vec<(String, Option<i32>, String, DateTime<Utc>)> {
    saga.events
        .iter()
        .map(|e| {
            let what = match &e.step {
                Some(step) => format!("{}:{step}", e.kind),
                None => e.kind.to_string(),
            };
            (what, e.attempt, e.actor.clone(), e.at)
        })
        .collect()
}

fn ranks_are_dense(events: &[EventView]) -> bool {
    events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1)
}

#[sqlx::test(migrations = false)]
async fn forward_history_interleaves_step_rows_events_and_the_attempt_in_flight(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(&engine, SYN, json!({"steps": 3}), Some("derived")).await;
    let t0 = detail(&engine, id).await.created_at;
    let t = |s: i64| t0 + Duration::seconds(s);

    // step_1: attempt 1 by w1 succeeded. Two rows, no history row.
    let (s1, f1) = (place(&pool).await, place(&pool).await);
    step_succeeded(
        &pool,
        id,
        0,
        1,
        (t(1), s1),
        (t(2), f1),
        "w1",
        json!({"index": 1}),
    )
    .await;
    // step_2: attempt 1 by w1 failed: its start is written at the place it took when it began,
    // then the failure rows.
    let a1 = place(&pool).await;
    event(
        &pool,
        Some(a1),
        id,
        t(3),
        EventKind::StepStarted,
        Some("step_2"),
        Some(1),
        "w1",
        None,
    )
    .await;
    let error = json!({"class": "transient", "message": "busy"});
    event(
        &pool,
        None,
        id,
        t(4),
        EventKind::StepFailed,
        Some("step_2"),
        Some(1),
        "w1",
        Some(error.clone()),
    )
    .await;
    event(
        &pool,
        None,
        id,
        t(4),
        EventKind::RetryScheduled,
        Some("step_2"),
        Some(1),
        "w1",
        Some(json!({"delay_ms": 1000})),
    )
    .await;
    sqlx::query(
        "UPDATE stepwise.steps SET status = 'pending', attempts = 1, error = $2, finished_at = $3
         WHERE saga_id = $1 AND position = 1",
    )
    .bind(id)
    .bind(&error)
    .bind(t(4))
    .execute(&pool)
    .await
    .unwrap();
    // step_2: attempt 2 by w2 began; an event arrived while it ran; it succeeded.
    let s2 = place(&pool).await;
    event(
        &pool,
        None,
        id,
        t(5),
        EventKind::EventReceived,
        None,
        None,
        "guest",
        Some(json!({"event": "go"})),
    )
    .await;
    let f2 = place(&pool).await;
    step_succeeded(
        &pool,
        id,
        1,
        2,
        (t(5), s2),
        (t(6), f2),
        "w2",
        json!({"index": 2}),
    )
    .await;
    // step_3: attempt 1 by w2 in flight.
    let a3 = place(&pool).await;
    in_flight(
        &pool,
        id,
        "running",
        2,
        Some(Flight {
            position: 2,
            compensation: false,
            attempt: 1,
            at: t(7),
            seq: a3,
            actor: "w2",
        }),
    )
    .await;

    let saga = detail(&engine, id).await;
    assert_eq!(
        story(&saga),
        vec![
            ("saga_started".into(), None, "test:runner".into(), t0),
            ("step_started:step_1".into(), Some(1), "w1".into(), t(1)),
            ("step_succeeded:step_1".into(), Some(1), "w1".into(), t(2)),
            ("step_started:step_2".into(), Some(1), "w1".into(), t(3)),
            ("step_failed:step_2".into(), Some(1), "w1".into(), t(4)),
            ("retry_scheduled:step_2".into(), Some(1), "w1".into(), t(4)),
            ("step_started:step_2".into(), Some(2), "w2".into(), t(5)),
            ("event_received".into(), None, "guest".into(), t(5)),
            ("step_succeeded:step_2".into(), Some(2), "w2".into(), t(6)),
            ("step_started:step_3".into(), Some(1), "w2".into(), t(7)),
        ]
    );
    assert!(ranks_are_dense(&saga.events), "seq is the rank: 1, 2, 3...");
    // The derived rows carry no detail; the events keep theirs.
    assert_eq!(saga.events[2].detail, None);
    assert_eq!(saga.events[4].detail, Some(error.clone()));
    assert_eq!(saga.events[7].detail, Some(json!({"event": "go"})));

    // Per step: its row, the step in flight overlaid with its attempt.
    let steps = &saga.steps;
    assert_eq!(steps[0].status, StepStatus::Succeeded);
    assert_eq!(
        (steps[0].attempts, steps[0].started_at, steps[0].finished_at),
        (1, Some(t(1)), Some(t(2)))
    );
    assert_eq!(steps[0].output, Some(json!({"index": 1})));
    assert_eq!(steps[1].status, StepStatus::Succeeded);
    assert_eq!(
        (steps[1].attempts, steps[1].started_at, steps[1].finished_at),
        (2, Some(t(5)), Some(t(6)))
    );
    assert_eq!(steps[1].error, None);
    assert_eq!(steps[2].status, StepStatus::Running);
    assert_eq!(
        (steps[2].attempts, steps[2].started_at, steps[2].finished_at),
        (1, Some(t(7)), None)
    );
    assert!(steps
        .iter()
        .all(|s| s.compensation.status == CompensationStatus::NotNeeded));

    // The counts read the same history.
    let store = engine.store();
    assert_eq!(store.steps_succeeded(None).await.unwrap(), 2);
    assert_eq!(store.steps_succeeded(Some(t(2))).await.unwrap(), 1);
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 0);
    assert_eq!(
        store
            .event_count(EventKind::StepStarted, "w2")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .event_count(EventKind::StepSucceeded, "w1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.attempts_executed(&[id]).await.unwrap(), 1 + 2 + 1);
    assert_eq!(store.latest_event_at().await.unwrap(), Some(t(7)));
    let times = store.saga_times(&[id]).await.unwrap();
    assert_eq!(times[0].first_step_finished_at, Some(t(2)));
    let activity = store
        .console_activity(t0 - Duration::minutes(1), Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(activity.iter().map(|m| m.steps).sum::<i64>(), 2);

    // step_3 succeeds in the commit that clears the attempt: the story goes on from its row.
    let f3 = place(&pool).await;
    step_succeeded(
        &pool,
        id,
        2,
        1,
        (t(7), a3),
        (t(8), f3),
        "w2",
        json!({"index": 3}),
    )
    .await;
    in_flight(&pool, id, "completed", 3, None).await;
    event(
        &pool,
        None,
        id,
        t(8),
        EventKind::SagaCompleted,
        None,
        None,
        "w2",
        None,
    )
    .await;
    let saga = detail(&engine, id).await;
    let tail: Vec<_> = story(&saga).into_iter().skip(9).collect();
    assert_eq!(
        tail,
        vec![
            ("step_started:step_3".into(), Some(1), "w2".into(), t(7)),
            ("step_succeeded:step_3".into(), Some(1), "w2".into(), t(8)),
            ("saga_completed".into(), None, "w2".into(), t(8)),
        ]
    );
    assert!(ranks_are_dense(&saga.events));
    assert_eq!(saga.steps[2].status, StepStatus::Succeeded);
    assert_eq!(saga.steps[2].finished_at, Some(t(8)));
    assert_eq!(store.steps_succeeded(None).await.unwrap(), 3);
}

#[sqlx::test(migrations = false)]
async fn compensation_history_comes_from_the_step_rows_with_possibly_done(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(&engine, SYN, json!({"steps": 3}), Some("undo")).await;
    let t0 = detail(&engine, id).await.created_at;
    let t = |s: i64| t0 + Duration::seconds(s);

    let (s1, f1) = (place(&pool).await, place(&pool).await);
    step_succeeded(
        &pool,
        id,
        0,
        1,
        (t(1), s1),
        (t(2), f1),
        "w1",
        json!({"index": 1}),
    )
    .await;
    // step_2 timed out after sending: possibly done, so it is compensated first.
    let a2 = place(&pool).await;
    event(
        &pool,
        Some(a2),
        id,
        t(3),
        EventKind::StepStarted,
        Some("step_2"),
        Some(1),
        "w1",
        None,
    )
    .await;
    let error = json!({"class": "unknown", "message": "timed out", "possibly_done": true});
    event(
        &pool,
        None,
        id,
        t(4),
        EventKind::StepFailed,
        Some("step_2"),
        Some(1),
        "w1",
        Some(error.clone()),
    )
    .await;
    sqlx::query(
        "UPDATE stepwise.steps
         SET status = 'failed', attempts = 1, error = $2, finished_at = $3, possibly_done = true,
             compensation_status = 'pending'
         WHERE saga_id = $1 AND position = 1",
    )
    .bind(id)
    .bind(&error)
    .bind(t(4))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE stepwise.steps SET compensation_status = 'pending'
         WHERE saga_id = $1 AND position = 0",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let undo2 = json!({"undid": "step_2"});
    let (c2, d2) = (place(&pool).await, place(&pool).await);
    compensation_succeeded(&pool, id, 1, 1, (t(5), c2), (t(6), d2), "w1", undo2.clone()).await;
    // The compensation of step_1 is in flight, its second attempt (the first failed).
    let c1a = place(&pool).await;
    event(
        &pool,
        Some(c1a),
        id,
        t(7),
        EventKind::CompensationStarted,
        Some("step_1"),
        Some(1),
        "w2",
        None,
    )
    .await;
    event(
        &pool,
        None,
        id,
        t(8),
        EventKind::CompensationFailed,
        Some("step_1"),
        Some(1),
        "w2",
        Some(json!({"message": "busy"})),
    )
    .await;
    sqlx::query(
        "UPDATE stepwise.steps SET compensation_attempts = 1, compensation_started_at = $2
         WHERE saga_id = $1 AND position = 0",
    )
    .bind(id)
    .bind(t(7))
    .execute(&pool)
    .await
    .unwrap();
    let c1 = place(&pool).await;
    in_flight(
        &pool,
        id,
        "compensating",
        0,
        Some(Flight {
            position: 0,
            compensation: true,
            attempt: 2,
            at: t(9),
            seq: c1,
            actor: "w2",
        }),
    )
    .await;

    let saga = detail(&engine, id).await;
    assert_eq!(
        story(&saga),
        vec![
            ("saga_started".into(), None, "test:runner".into(), t0),
            ("step_started:step_1".into(), Some(1), "w1".into(), t(1)),
            ("step_succeeded:step_1".into(), Some(1), "w1".into(), t(2)),
            ("step_started:step_2".into(), Some(1), "w1".into(), t(3)),
            ("step_failed:step_2".into(), Some(1), "w1".into(), t(4)),
            (
                "compensation_started:step_2".into(),
                Some(1),
                "w1".into(),
                t(5)
            ),
            (
                "compensation_succeeded:step_2".into(),
                Some(1),
                "w1".into(),
                t(6)
            ),
            (
                "compensation_started:step_1".into(),
                Some(1),
                "w2".into(),
                t(7)
            ),
            (
                "compensation_failed:step_1".into(),
                Some(1),
                "w2".into(),
                t(8)
            ),
            (
                "compensation_started:step_1".into(),
                Some(2),
                "w2".into(),
                t(9)
            ),
        ]
    );
    assert!(ranks_are_dense(&saga.events));
    // Undoing a step that may not have run says what it found, as the worker wrote it.
    assert_eq!(
        saga.events[6].detail,
        Some(json!({"possibly_done": true, "output": undo2}))
    );
    assert_eq!(saga.events[5].detail, None);

    let (step1, step2) = (&saga.steps[0], &saga.steps[1]);
    assert_eq!(step1.status, StepStatus::Succeeded);
    assert_eq!(step1.compensation.status, CompensationStatus::Running);
    assert_eq!(
        (
            step1.compensation.attempts,
            step1.compensation.started_at,
            step1.compensation.finished_at
        ),
        (2, Some(t(9)), None)
    );
    assert_eq!(step2.status, StepStatus::Failed);
    assert!(step2.possibly_done);
    assert_eq!(step2.compensation.status, CompensationStatus::Compensated);
    assert_eq!(
        (
            step2.compensation.attempts,
            step2.compensation.started_at,
            step2.compensation.finished_at
        ),
        (1, Some(t(5)), Some(t(6)))
    );
    assert_eq!(step2.compensation.output, Some(undo2));
    assert_eq!(saga.steps[2].status, StepStatus::Pending);
    assert_eq!(
        engine.store().attempts_executed(&[id]).await.unwrap(),
        1 + 1 + 2 + 1
    );

    // The compensation of step_1 succeeds; the saga is compensated. A succeeded step's undo
    // carries no detail.
    let d1 = place(&pool).await;
    compensation_succeeded(
        &pool,
        id,
        0,
        2,
        (t(9), c1),
        (t(10), d1),
        "w2",
        json!({"undid": "step_1"}),
    )
    .await;
    sqlx::query("UPDATE stepwise.steps SET status = 'skipped' WHERE saga_id = $1 AND position = 2")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    in_flight(&pool, id, "compensated", 0, None).await;
    event(
        &pool,
        None,
        id,
        t(10),
        EventKind::SagaCompensated,
        None,
        None,
        "w2",
        None,
    )
    .await;
    let saga = detail(&engine, id).await;
    let tail: Vec<_> = story(&saga).into_iter().skip(9).collect();
    assert_eq!(
        tail,
        vec![
            (
                "compensation_started:step_1".into(),
                Some(2),
                "w2".into(),
                t(9)
            ),
            (
                "compensation_succeeded:step_1".into(),
                Some(2),
                "w2".into(),
                t(10)
            ),
            ("saga_compensated".into(), None, "w2".into(), t(10)),
        ]
    );
    assert_eq!(saga.events[10].detail, None);
    assert_eq!(
        saga.steps[0].compensation.status,
        CompensationStatus::Compensated
    );
    assert_eq!(saga.steps[0].compensation.finished_at, Some(t(10)));
    assert_eq!(engine.store().steps_succeeded(None).await.unwrap(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_copied_step_derives_nothing_and_a_step_run_again_counts_as_twice(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(&engine, SYN, json!({"steps": 2}), Some("copied")).await;
    let t0 = detail(&engine, id).await.created_at;
    let t = |s: i64| t0 + Duration::seconds(s);
    // A fork copies a step's outcome without places: its history is what the fork wrote.
    sqlx::query(
        "UPDATE stepwise.steps SET status = 'succeeded', output = '{\"index\": 1}'
         WHERE saga_id = $1 AND position = 0",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(history(&saga), vec!["saga_started"]);
    assert_eq!(saga.steps[0].status, StepStatus::Succeeded);
    let store: &PgStore = engine.store();
    assert_eq!(store.steps_succeeded(None).await.unwrap(), 0);

    // step_2 succeeds; then (as only a broken fence could) an attempt of it begins again.
    let (s2, f2) = (place(&pool).await, place(&pool).await);
    step_succeeded(
        &pool,
        id,
        1,
        1,
        (t(1), s2),
        (t(2), f2),
        "w1",
        json!({"index": 2}),
    )
    .await;
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 0);
    let again = place(&pool).await;
    in_flight(
        &pool,
        id,
        "running",
        1,
        Some(Flight {
            position: 1,
            compensation: false,
            attempt: 2,
            at: t(3),
            seq: again,
            actor: "w2",
        }),
    )
    .await;
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 1);
    // A success in both places is twice too.
    in_flight(&pool, id, "completed", 2, None).await;
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 0);
    event(
        &pool,
        None,
        id,
        t(4),
        EventKind::StepSucceeded,
        Some("step_2"),
        Some(1),
        "w1",
        None,
    )
    .await;
    assert_eq!(store.steps_succeeded_twice().await.unwrap(), 1);
    assert_eq!(store.steps_succeeded(None).await.unwrap(), 2);
}
