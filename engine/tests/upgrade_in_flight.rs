//! A database upgraded while sagas were mid-step: attempts in flight written the earlier way
//! (the step's row `running` and a `step_started` history row) move to the saga row in the
//! storage v2 migration (docs/storage.md), and the workers of the new version finish them with
//! the same story: a waiting saga goes on with its attempt, a saga whose worker died has that
//! attempt counted and recorded, and nothing is started or recorded twice.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use std::borrow::Cow;
use std::time::Duration;
use stepwise_engine::{store, Clock, EventKind, ManualClock, SagaStatus, SchemaMigrations};

/// The last migration before the v2 writers (attempt columns added, still unused).
const BEFORE_V2_WRITERS: i64 = 20261202090000;

const SYN: &str = "synthetic_chain";

async fn migrate_up_to(pool: &PgPool, version: i64) {
    let migrator: &'static Migrator = Box::leak(Box::new(Migrator {
        migrations: Cow::Owned(
            store::MIGRATOR
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }));
    SchemaMigrations::new("stepwise", migrator)
        .apply(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn attempts_in_flight_at_upgrade_are_finished_once_with_their_history(pool: PgPool) {
    migrate_up_to(&pool, BEFORE_V2_WRITERS).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let waiting = start(&engine, SYN, json!({"steps": 2}), Some("waiting")).await;
    let orphaned = start(&engine, SYN, json!({"steps": 2}), Some("orphaned")).await;

    // The earlier claim function began step_1 of both, as a worker of the earlier version did.
    let began: Vec<(uuid::Uuid, Option<i32>)> = sqlx::query_as(
        "SELECT id, begun_attempt FROM stepwise.claim_sagas($1, 10, 'old-worker',
                $1 + interval '30 seconds', ARRAY['synthetic_chain@1'])",
    )
    .bind(clock.now())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(began.len(), 2);
    assert!(began.iter().all(|(_, attempt)| *attempt == Some(1)));
    // One then waited (as its suspension left it); the other's worker died holding it.
    sqlx::query(
        "UPDATE stepwise.sagas
         SET status = 'waiting', lease_owner = NULL, waiting_for = '{\"event\": \"go\"}',
             wake_at = $2 + interval '1 hour'
         WHERE id = $1",
    )
    .bind(waiting)
    .bind(clock.now())
    .execute(&pool)
    .await
    .unwrap();

    migrate(&pool).await;

    // The waiting saga's attempt is on its row now, and its history reads as before.
    let before = detail(&engine, waiting).await;
    let started: Vec<_> = (before.events.iter())
        .filter(|e| e.kind == EventKind::StepStarted)
        .map(|e| (e.step.clone(), e.attempt, e.actor.clone()))
        .collect();
    assert_eq!(
        started,
        [(Some("step_1".into()), Some(1), "old-worker".into())]
    );
    assert_eq!(before.steps[0].attempts, 1);

    // Its wait ends; the dead worker's lease runs out; a new worker finishes both.
    sqlx::query("UPDATE stepwise.sagas SET wake_at = $2 WHERE id = $1")
        .bind(waiting)
        .bind(clock.now())
        .execute(&pool)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(31));
    let worker = worker(&engine, "new-worker");
    worker.run_until_idle().await.unwrap();

    let resumed = detail(&engine, waiting).await;
    assert_eq!(resumed.status, SagaStatus::Completed);
    assert_eq!(
        history(&resumed),
        [
            "saga_started",
            "step_started:step_1",
            "step_succeeded:step_1",
            "step_started:step_2",
            "step_succeeded:step_2",
            "saga_completed"
        ],
        "the attempt in flight went on, once"
    );
    assert_eq!(resumed.steps[0].attempts, 1);

    let taken_over = detail(&engine, orphaned).await;
    assert_eq!(taken_over.status, SagaStatus::Completed);
    assert_eq!(
        history(&taken_over),
        [
            "saga_started",
            "step_started:step_1",
            "lease_expired",
            "step_started:step_1",
            "step_succeeded:step_1",
            "step_started:step_2",
            "step_succeeded:step_2",
            "saga_completed"
        ]
    );
    assert_eq!(
        taken_over.steps[0].attempts, 2,
        "the dead worker's attempt counts"
    );
}
