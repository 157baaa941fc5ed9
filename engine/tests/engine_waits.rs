//! Durable waits against real PostgreSQL: events delivered before and after the wait,
//! idempotent and refused deliveries, deadlines, cancel, sleeps, and workers that stop.
#![allow(clippy::unwrap_used)]

mod common;

use common::{detail, engine_with, history, migrate, start, worker};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{DeliverError, Engine, ManualClock, SagaStatus, StepStatus};
use uuid::Uuid;

/// The input of the small skills defined here: none.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Empty {}
impl stepwise_engine::SkillInput for Empty {}

async fn deliver(
    engine: &Engine,
    id: Uuid,
    payload: Value,
    key: &str,
) -> stepwise_engine::Delivery {
    engine
        .deliver(id, "go", payload, key, "test:guest")
        .await
        .expect("delivered")
}

async fn deliveries(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stepwise.deliveries WHERE saga_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_step_waits_for_its_event_then_goes_on_with_the_payload(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 3, "wait_at": 2}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Waiting);
    assert_eq!(saga.lease_owner, None);
    let waiting = saga.waiting_for.clone().expect("waiting_for is shown");
    assert_eq!(waiting["event"], "go");
    assert_eq!(waiting["schema"], json!({"type": "object"}));
    assert!(waiting["prompt"].as_str().unwrap().contains("step_2"));
    assert_eq!(saga.steps[1].status, StepStatus::Running);
    assert!(history(&saga).contains(&"wait_started:step_2".to_string()));

    let delivery = deliver(&engine, id, json!({"ok": true}), "k1").await;
    assert!(!delivery.duplicate);
    assert_eq!(delivery.status, SagaStatus::Waiting);
    w.run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.waiting_for, None);
    assert_eq!(
        saga.steps[1].output.as_ref().unwrap()["received"],
        json!({"ok": true})
    );
    assert_eq!(saga.steps[1].attempts, 1, "the wait cost no attempt");
    let kinds = history(&saga);
    assert!(kinds.contains(&"event_received".to_string()), "{kinds:?}");
    let received = saga
        .events
        .iter()
        .find(|e| e.kind.as_str() == "event_received")
        .unwrap();
    assert_eq!(received.actor, "test:guest");
    assert_eq!(received.detail.as_ref().unwrap()["key"], "k1");
}

#[sqlx::test(migrations = false)]
async fn an_event_delivered_before_the_wait_is_kept_and_consumed_without_waiting(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 3, "wait_at": 3}),
        None,
    )
    .await;
    deliver(&engine, id, json!({"n": 1}), "first").await;
    deliver(&engine, id, json!({"n": 2}), "second").await;
    worker(&engine, "w1").run_until_idle().await.unwrap();

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        saga.steps[2].output.as_ref().unwrap()["received"],
        json!({"n": 1}),
        "oldest first"
    );
    assert!(!history(&saga).contains(&"wait_started:step_3".to_string()));
    let consumed: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT delivery_key, consumed_by FROM stepwise.deliveries WHERE saga_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        consumed,
        vec![
            ("first".to_string(), Some("step_3".to_string())),
            ("second".to_string(), None)
        ],
        "one delivery per wait"
    );
}

#[sqlx::test(migrations = false)]
async fn a_duplicate_delivery_has_no_second_effect_and_another_payload_conflicts(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 2, "wait_at": 1}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();

    assert!(
        !deliver(&engine, id, json!({"a": 1}), "same")
            .await
            .duplicate
    );
    assert!(
        deliver(&engine, id, json!({"a": 1}), "same")
            .await
            .duplicate
    );
    let conflict = engine
        .deliver(id, "go", json!({"a": 2}), "same", "test:guest")
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, DeliverError::Conflict { .. }),
        "{conflict}"
    );
    assert_eq!(deliveries(&pool, id).await, 1);
    // One idle run after the delivery: the duplicate and the conflict above must not leave the
    // saga's row locked (an early-returning delivery once kept its transaction open until the
    // connection was reused, and the claim skipped the locked row).
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    let received = history(&saga)
        .iter()
        .filter(|k| *k == "event_received")
        .count();
    assert_eq!(received, 1);
    // After the end, the same delivery again is still a duplicate, not a refusal.
    assert!(
        deliver(&engine, id, json!({"a": 1}), "same")
            .await
            .duplicate
    );
}

#[sqlx::test(migrations = false)]
async fn an_invalid_payload_is_refused_with_its_field_and_nothing_written(pool: PgPool) {
    migrate(&pool).await;
    let mut registry = stepwise_engine::Registry::new();
    let skill = stepwise_engine::Skill::builder::<Empty>("approval", 1, "waits")
        .step(
            stepwise_engine::Step::new("ask", |ctx| async move {
                ctx.await_event(
                    "approval",
                    stepwise_engine::Wait::within(Duration::from_secs(60)),
                )
            })
            .awaits(
                "approval",
                json!({"type": "object", "required": ["approved"],
                       "properties": {"approved": {"type": "boolean"}}}),
            ),
        )
        .build()
        .unwrap();
    registry.register(skill).unwrap();
    let engine = Engine::new(
        stepwise_engine::PgStore::new(pool.clone()),
        std::sync::Arc::new(registry),
        std::sync::Arc::new(ManualClock::starting_now()),
    );
    let id = start(&engine, "approval", json!({}), None).await;

    let wrong_type = engine
        .deliver(
            id,
            "approval",
            json!({"approved": "yes"}),
            "k",
            "manager:ann",
        )
        .await
        .unwrap_err();
    match wrong_type {
        DeliverError::Invalid { field, .. } => assert_eq!(field, "/approved"),
        other => panic!("expected Invalid, got {other}"),
    }
    let missing = engine
        .deliver(id, "approval", json!({}), "k", "manager:ann")
        .await
        .unwrap_err();
    match missing {
        DeliverError::Invalid { field, .. } => assert_eq!(field, "/approved"),
        other => panic!("expected Invalid, got {other}"),
    }
    assert_eq!(deliveries(&pool, id).await, 0);
    assert!(!history(&detail(&engine, id).await).contains(&"event_received".to_string()));
    // The same key is still free for a valid payload.
    engine
        .deliver(
            id,
            "approval",
            json!({"approved": true}),
            "k",
            "manager:ann",
        )
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_unknown_event_an_unknown_saga_and_a_terminal_saga_are_refused(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(&engine, "synthetic_chain", json!({"steps": 1}), None).await;
    let unknown = engine
        .deliver(id, "stop", json!({}), "k", "test")
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, DeliverError::UnknownEvent { .. }),
        "{unknown}"
    );
    let missing = engine
        .deliver(Uuid::now_v7(), "go", json!({}), "k", "test")
        .await
        .unwrap_err();
    assert!(matches!(missing, DeliverError::NotFound(_)), "{missing}");

    worker(&engine, "w1").run_until_idle().await.unwrap();
    let terminal = engine
        .deliver(id, "go", json!({}), "k", "test")
        .await
        .unwrap_err();
    assert!(
        matches!(
            terminal,
            DeliverError::Terminal {
                status: SagaStatus::Completed,
                ..
            }
        ),
        "{terminal}"
    );
    assert_eq!(deliveries(&pool, id).await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_deadline_without_its_event_fails_the_step_and_compensates(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 3, "wait_at": 2, "wait_timeout_ms": 5000}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();
    let until = detail(&engine, id).await.waiting_for.unwrap()["until"].clone();

    // Woken early (as if by a stray wake): the step runs again and the deadline does not move.
    clock.advance(Duration::from_secs(3));
    sqlx::query("UPDATE stepwise.sagas SET wake_at = $2 WHERE id = $1")
        .bind(id)
        .bind(stepwise_engine::Clock::now(&clock))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        w.run_until_idle().await.unwrap(),
        1,
        "the saga was claimed again"
    );
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Waiting);
    assert_eq!(saga.waiting_for.unwrap()["until"], until);

    clock.advance(Duration::from_secs(3));
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "wait_timed_out");
    assert_eq!(saga.steps[1].status, StepStatus::Failed);
    assert_eq!(saga.steps[1].attempts, 1);
    assert_eq!(saga.steps[0].compensation.status.as_str(), "compensated");
    assert!(history(&saga).contains(&"wait_timed_out:step_2".to_string()));
}

#[sqlx::test(migrations = false)]
async fn a_wait_with_a_default_payload_goes_on_at_its_deadline(pool: PgPool) {
    migrate(&pool).await;
    let mut registry = stepwise_engine::Registry::new();
    let skill = stepwise_engine::Skill::builder::<Empty>("optional", 1, "waits")
        .step(
            stepwise_engine::Step::new("ask", |ctx| async move {
                ctx.await_event(
                    "note",
                    stepwise_engine::Wait::within(Duration::from_secs(10))
                        .prompt("anything to add?")
                        .default_payload(Some(json!({"note": null}))),
                )
            })
            .awaits("note", json!({"type": "object"})),
        )
        .build()
        .unwrap();
    registry.register(skill).unwrap();
    let clock = ManualClock::starting_now();
    let engine = Engine::new(
        stepwise_engine::PgStore::new(pool),
        std::sync::Arc::new(registry),
        std::sync::Arc::new(clock.clone()),
    );
    let id = start(&engine, "optional", json!({}), None).await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();
    assert_eq!(
        detail(&engine, id).await.waiting_for.unwrap()["prompt"],
        "anything to add?"
    );
    clock.advance(Duration::from_secs(11));
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.steps[0].output, Some(json!({"note": null})));
    let timed_out = saga
        .events
        .iter()
        .find(|e| e.kind.as_str() == "wait_timed_out")
        .unwrap();
    assert_eq!(timed_out.detail.as_ref().unwrap()["default_used"], true);
}

/// A skill whose one step waits for `approval` (or goes on at its deadline with a default)
/// and records who answered, as an approval step records its approver.
fn recording_skill() -> stepwise_engine::Skill {
    stepwise_engine::Skill::builder::<Empty>("recorded", 1, "waits")
        .step(
            stepwise_engine::Step::new("ask", |ctx| async move {
                let received = ctx.await_delivery(
                    "approval",
                    stepwise_engine::Wait::within(Duration::from_secs(10))
                        .answered_by(["manager"])
                        .default_payload(Some(json!({"approved": false}))),
                )?;
                Ok::<_, stepwise_engine::StepError>(json!({
                    "payload": received.payload,
                    "actor": received.actor,
                    "key": received.key,
                }))
            })
            .awaits("approval", json!({"type": "object"})),
        )
        .build()
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_step_sees_who_delivered_its_event_and_nobody_for_a_default_payload(pool: PgPool) {
    migrate(&pool).await;
    let mut registry = stepwise_engine::Registry::new();
    registry.register(recording_skill()).unwrap();
    let clock = ManualClock::starting_now();
    let engine = Engine::new(
        stepwise_engine::PgStore::new(pool),
        std::sync::Arc::new(registry),
        std::sync::Arc::new(clock.clone()),
    );
    let answered = start(&engine, "recorded", json!({}), Some("answered")).await;
    let unanswered = start(&engine, "recorded", json!({}), Some("unanswered")).await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();
    engine
        .deliver(
            answered,
            "approval",
            json!({"approved": true}),
            "k-ann",
            "manager:ann",
        )
        .await
        .unwrap();
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, answered).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        saga.steps[0].output,
        Some(json!({"payload": {"approved": true}, "actor": "manager:ann", "key": "k-ann"}))
    );

    clock.advance(Duration::from_secs(11));
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, unanswered).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        saga.steps[0].output,
        Some(json!({"payload": {"approved": false}, "actor": null, "key": null}))
    );
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_waiting_saga_compensates_at_once(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 3, "wait_at": 2}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();
    assert!(engine
        .cancel(id, "operator:ann", Some("guest left"))
        .await
        .unwrap());
    // No time passes: the cancel alone makes the saga due.
    w.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.error.as_ref().unwrap()["code"], "cancelled");
    assert_eq!(saga.steps[0].compensation.status.as_str(), "compensated");
    assert_eq!(saga.steps[1].status, StepStatus::Failed);
    assert_eq!(saga.waiting_for, None);
}

#[sqlx::test(migrations = false)]
async fn another_worker_finishes_a_saga_whose_worker_stopped_while_it_waited(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 3, "wait_at": 2}),
        None,
    )
    .await;
    let first = worker(&engine, "w1");
    first.run_until_idle().await.unwrap();
    drop(first);
    // The event comes through another process's view of the database.
    let other = engine_with(pool, clock.clone());
    deliver(&other, id, json!({"from": "elsewhere"}), "k").await;
    worker(&other, "w2").run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        saga.steps[1].output.as_ref().unwrap()["received"],
        json!({"from": "elsewhere"})
    );
    assert!(saga.events.iter().any(|e| e.actor == "w2"));
}

#[sqlx::test(migrations = false)]
async fn a_durable_sleep_survives_a_worker_restart_and_ends_on_time(pool: PgPool) {
    migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 2, "sleep_at": 2, "sleep_ms": 10000}),
        None,
    )
    .await;
    worker(&engine, "w1").run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Waiting);
    assert_eq!(saga.waiting_for.as_ref().unwrap()["event"], Value::Null);
    assert!(history(&saga).contains(&"sleep_started:step_2".to_string()));

    // A new worker, before the end: nothing is due.
    let second = worker(&engine, "w2");
    clock.advance(Duration::from_secs(5));
    assert_eq!(second.run_until_idle().await.unwrap(), 0);
    assert_eq!(detail(&engine, id).await.status, SagaStatus::Waiting);

    clock.advance(Duration::from_secs(6));
    second.run_until_idle().await.unwrap();
    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert!(history(&saga).contains(&"sleep_ended:step_2".to_string()));
    assert_eq!(saga.steps[1].attempts, 1);
}

#[sqlx::test(migrations = false)]
async fn waiting_sagas_are_listed_and_counted(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool, ManualClock::starting_now());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 2, "wait_at": 1}),
        None,
    )
    .await;
    worker(&engine, "w1").run_until_idle().await.unwrap();
    let listed = engine
        .list(&stepwise_engine::SagaFilter {
            status: Some(SagaStatus::Waiting),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![id]);
    let counts = engine.store().counts_by_status().await.unwrap();
    assert!(counts.contains(&(SagaStatus::Waiting, 1)), "{counts:?}");
}
