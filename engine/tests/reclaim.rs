//! Taking sagas back after a lost connection (`PgStore::reclaim`, docs/reliability.md,
//! "PostgreSQL restarts") is fenced like any claim: only a saga that still names the worker
//! with the token its driver held comes back, with a new token; one that another worker took
//! over after the lease expired, or that ended, stays where it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{detail, engine_with, migrate, start, worker};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::store::KnownSkills;
use stepwise_engine::{Clock, ManualClock, SagaStatus, StoreError};

const SYN: &str = "synthetic_chain";

#[sqlx::test(migrations = false)]
async fn a_worker_takes_back_only_the_sagas_it_still_holds_with_the_same_token(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let store = engine.store();
    let known = KnownSkills::of(engine.registry());
    let a: Arc<str> = "worker-a".into();
    let lease = chrono::Duration::seconds(30);

    let held = start(&engine, SYN, json!({"steps": 2}), None).await;
    let taken_over = start(&engine, SYN, json!({"steps": 2}), None).await;
    let now = clock.now();
    let claimed = store.claim(&a, now, now + lease, 2, &known).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let lease_of = |id| {
        claimed
            .iter()
            .find(|c| c.lease.saga_id == id)
            .unwrap()
            .lease
            .clone()
    };
    let (held_lease, other_lease) = (lease_of(held), lease_of(taken_over));

    // The second saga's lease expires and worker B takes it over and finishes it.
    clock.advance(Duration::from_secs(31));
    store
        .heartbeat(&held_lease, clock.now() + lease)
        .await
        .unwrap();
    assert_eq!(
        worker(&engine, "worker-b").run_until_idle().await.unwrap(),
        1
    );
    assert_eq!(
        detail(&engine, taken_over).await.status,
        SagaStatus::Completed
    );

    // A reconnects: it gets back the saga it still holds, not the one B took.
    let now = clock.now();
    let back = store
        .reclaim(&a, now, now + lease, &[held_lease.clone(), other_lease])
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    let back = &back[0];
    assert_eq!(back.lease.saga_id, held);
    assert_eq!(back.lease.token, held_lease.token + 1);
    assert_eq!(back.status, SagaStatus::Running);
    assert_eq!(back.steps[0].attempts, 1, "the state is read, not changed");

    // The token the lost connection carried is fenced off; a second take-back with it too.
    let err = store.heartbeat(&held_lease, now + lease).await.unwrap_err();
    assert!(matches!(err, StoreError::LostLease { .. }), "{err}");
    let again = store
        .reclaim(&a, now, now + lease, std::slice::from_ref(&held_lease))
        .await
        .unwrap();
    assert!(again.is_empty());
    // Another worker cannot take it back under A's name either.
    let b: Arc<str> = "worker-b".into();
    let by_b = store
        .reclaim(&b, now, now + lease, std::slice::from_ref(&back.lease))
        .await
        .unwrap();
    assert!(by_b.is_empty());
}
