//! Local starts: a saga started by an engine whose running worker has a free slot is claimed by
//! that worker in the transaction that starts it and run without a claim of its own; without
//! a free slot (or a running worker) it is started the usual way and claimed. Idempotent starts
//! behave the same either way.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{
    Engine, JitterSource, ManualClock, SagaStatus, StartError, StartRequest, WorkerConfig,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

/// A running worker that looks at the queue only when told (a NOTIFY) or once a minute, so a
/// saga it runs at once was handed to it, not found by a poll.
fn run_worker(
    engine: &Engine,
    id: &str,
    concurrency: usize,
) -> (CancellationToken, JoinHandle<()>) {
    let worker = engine.worker(WorkerConfig {
        worker_id: id.to_string(),
        concurrency,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_secs(60),
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await.unwrap() }
    });
    (stop, task)
}

fn request(input: serde_json::Value, key: Option<&str>) -> StartRequest {
    StartRequest {
        skill: SYN.to_string(),
        input,
        idempotency_key: key.map(str::to_string),
        started_by: "test:runner".to_string(),
    }
}

/// Waits until the worker's loop has registered its offer (it does so before its first look).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn completed(engine: &Engine, id: Uuid) {
    let summary = engine.wait(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(summary.status, SagaStatus::Completed, "saga {id}");
}

#[sqlx::test(migrations = false)]
async fn a_saga_started_beside_a_worker_with_a_free_slot_is_running_when_the_start_returns(
    pool: PgPool,
) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "local", 4);
    settle().await;

    let started = engine
        .start(request(json!({"steps": 3}), None))
        .await
        .unwrap();
    assert!(started.created);
    assert_eq!(started.saga.status, SagaStatus::Running);
    let id = started.saga.id;
    completed(&engine, id).await;

    let saga = detail(&engine, id).await;
    assert_eq!(
        history(&saga),
        [
            "saga_started",
            "step_started:step_1",
            "step_succeeded:step_1",
            "step_started:step_2",
            "step_succeeded:step_2",
            "step_started:step_3",
            "step_succeeded:step_3",
            "saga_completed"
        ]
    );
    assert!(saga
        .events
        .iter()
        .filter(|e| e.kind.as_str() == "step_started")
        .all(|e| e.actor == "local"));
    assert!(saga.steps.iter().all(|s| s.attempts == 1));
    stop.cancel();
    task.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_start_while_every_slot_is_taken_is_pending_and_claimed_later(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "busy", 1);
    settle().await;

    // The first saga holds the worker's only slot for a while.
    let slow = engine
        .start(request(json!({"steps": 1, "step_sleep_ms": 400}), None))
        .await
        .unwrap();
    assert_eq!(slow.saga.status, SagaStatus::Running);
    let queued = engine
        .start(request(json!({"steps": 2}), None))
        .await
        .unwrap();
    assert_eq!(queued.saga.status, SagaStatus::Pending);

    completed(&engine, slow.saga.id).await;
    completed(&engine, queued.saga.id).await;
    stop.cancel();
    task.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_repeated_local_start_returns_the_first_saga_and_runs_it_once(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "local", 4);
    settle().await;

    let input = json!({"steps": 2});
    let first = engine
        .start(request(input.clone(), Some("checkout-7")))
        .await
        .unwrap();
    assert!(first.created);
    let again = engine
        .start(request(input.clone(), Some("checkout-7")))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.saga.id, first.saga.id);
    let conflict = engine
        .start(request(json!({"steps": 3}), Some("checkout-7")))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, StartError::IdempotencyConflict { existing, .. } if existing == first.saga.id),
        "{conflict:?}"
    );

    completed(&engine, first.saga.id).await;
    assert_eq!(engine.store().steps_succeeded(None).await.unwrap(), 2);
    stop.cancel();
    task.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_start_after_the_worker_stopped_is_left_for_a_claim(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "gone", 4);
    settle().await;
    stop.cancel();
    task.await.unwrap();

    let started = engine
        .start(request(json!({"steps": 2}), None))
        .await
        .unwrap();
    assert_eq!(started.saga.status, SagaStatus::Pending);
    let saga = detail(&engine, started.saga.id).await;
    assert_eq!(saga.lease_owner, None);

    // Any worker takes it the usual way.
    let worker = worker(&engine, "next");
    assert_eq!(worker.run_until_idle().await.unwrap(), 1);
    completed(&engine, started.saga.id).await;
}

#[sqlx::test(migrations = false)]
async fn local_starts_racing_a_workers_claims_leave_no_saga_waiting_for_its_lease(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "racing", 4);
    settle().await;

    // Many starters at once against four slots: some starts find a slot free and are handed
    // over, the others are claimed as slots free up, while further starts take those slots.
    let starts = (0..24).map(|i| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for j in 0..8 {
                let input = json!({"steps": 2, "step_sleep_ms": (i + j) % 3});
                ids.push(engine.start(request(input, None)).await.unwrap().saga.id);
            }
            ids
        })
    });
    let mut ids = Vec::new();
    for started in futures::future::join_all(starts).await {
        ids.extend(started.unwrap());
    }
    // Well within the 30 s lease: a saga claimed without a slot would wait for it to expire.
    for id in &ids {
        let summary = engine.wait(*id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(summary.status, SagaStatus::Completed, "saga {id}");
    }
    for id in &ids {
        let saga = detail(&engine, *id).await;
        assert!(
            !history(&saga).iter().any(|e| e == "lease_expired"),
            "saga {id} waited for its lease: {:?}",
            history(&saga)
        );
    }
    stop.cancel();
    task.await.unwrap();
}

/// How many times `stepwise.claim_sagas` ran in this database, every pool connection's
/// statistics published first (an idle backend holds them for up to 10 s otherwise). The
/// engine parks a connection for its next statement and gives it back to the pool once unused
/// for 50 ms, so the count waits well past that for every connection to be in the pool.
async fn claims_so_far(pool: &PgPool) -> i64 {
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut held = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *conn)
            .await
            .unwrap();
        held.push(conn);
    }
    drop(held);
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_user_functions
         WHERE schemaname = 'stepwise' AND funcname = 'claim_sagas'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn sagas_ending_with_nothing_due_leave_the_workers_slots_to_local_starts(pool: PgPool) {
    migrate(&pool).await;
    // Count function calls in this database, on connections opened after the setting.
    sqlx::query(
        "DO $$ BEGIN
           EXECUTE format('ALTER DATABASE %I SET track_functions = ''pl''', current_database());
         END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    let counted = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let engine = engine_with(counted.clone(), ManualClock::starting_now());
    let (stop, task) = run_worker(&engine, "idle", 4);
    settle().await;
    let first = engine
        .start(request(json!({"steps": 2}), None))
        .await
        .unwrap();
    completed(&engine, first.saga.id).await;
    let before = claims_so_far(&counted).await;

    // Each saga ends with nothing else due: the worker's last claim found nothing and no NOTIFY
    // came since, so it does not claim again, and holds no slot a start could need.
    for _ in 0..20 {
        let started = engine
            .start(request(json!({"steps": 2}), None))
            .await
            .unwrap();
        assert_eq!(
            started.saga.status,
            SagaStatus::Running,
            "handed to the worker"
        );
        completed(&engine, started.saga.id).await;
    }
    assert_eq!(
        claims_so_far(&counted).await - before,
        0,
        "claims after sagas ended"
    );

    // A start the usual way (every slot taken, so a NOTIFY) is still claimed as soon as a slot
    // frees.
    let slow: Vec<_> = futures::future::join_all(
        (0..4).map(|_| engine.start(request(json!({"steps": 1, "step_sleep_ms": 300}), None))),
    )
    .await
    .into_iter()
    .map(|s| s.unwrap())
    .collect();
    assert!(slow.iter().all(|s| s.saga.status == SagaStatus::Running));
    let queued = engine
        .start(request(json!({"steps": 1}), None))
        .await
        .unwrap();
    assert_eq!(queued.saga.status, SagaStatus::Pending);
    completed(&engine, queued.saga.id).await;
    stop.cancel();
    task.await.unwrap();
}
