//! Operators' replays on real sagas: retry, restart, fork, cancel, the version guard, and
//! pruning without orphans. (Bulk replays through the CLI are tested in the root package.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Clock, CompensationStatus, Engine, EventKind, ManualClock, OperatorError, OperatorRequest,
    PgStore, Registry, SagaStatus, Skill, SkillInput, Step, StepError, StepStatus,
};
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

fn operator() -> OperatorRequest {
    OperatorRequest::new("operator:test").reason("the refund API is back")
}

/// A two-step saga whose second step fails for good and whose first compensation fails
/// `comp_failures` times in total, with two attempts per round: it ends `failed`.
fn failing_compensation(comp_failures: u32) -> Value {
    json!({"steps": 2, "fail_at": 2, "compensation_failures": comp_failures, "max_attempts": 2})
}

async fn run_to_rest(clock: &ManualClock, engine: &Engine) {
    drive_with_retries(clock, &worker(engine, "w1"), 6).await;
}

#[sqlx::test(migrations = false)]
async fn retry_resumes_a_failed_compensation_with_a_fresh_round_and_ends_compensated(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(&engine, SYN, failing_compensation(3), Some("retry-1")).await;
    run_to_rest(&clock, &engine).await;

    let failed = detail(&engine, id).await;
    assert_eq!(failed.status, SagaStatus::Failed);
    assert_eq!(
        failed.steps[0].compensation.status,
        CompensationStatus::Failed
    );
    assert_eq!(failed.steps[0].compensation.attempts, 2);

    let summary = engine.retry(id, &operator()).await.unwrap();
    assert_eq!(summary.id, id);
    assert_eq!(summary.status, SagaStatus::Compensating);
    run_to_rest(&clock, &engine).await;

    let saga = detail(&engine, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    // Round two: attempt 3 failed (the third failure asked for), attempt 4 succeeded.
    assert_eq!(saga.steps[0].compensation.attempts, 4);
    assert_eq!(
        saga.steps[0].compensation.status,
        CompensationStatus::Compensated
    );
    assert_eq!(
        saga.steps[0].compensation.output.as_ref().unwrap()["attempt"],
        4
    );
    let retry = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::OperatorRetry)
        .expect("the retry is in the history");
    assert_eq!(retry.actor, "operator:test");
    assert_eq!(
        retry.detail.as_ref().unwrap()["reason"],
        "the refund API is back"
    );
    let after_retry: Vec<String> = history(&saga)
        .into_iter()
        .skip_while(|k| k != "operator_retry")
        .collect();
    assert_eq!(
        after_retry,
        vec![
            "operator_retry",
            "compensation_started:step_1",
            "compensation_failed:step_1",
            "retry_scheduled:step_1",
            "compensation_started:step_1",
            "compensation_succeeded:step_1",
            "saga_compensated",
        ]
    );

    // Now compensated: it cannot resume in place, and the refusal points to restart.
    let refused = engine.retry(id, &operator()).await.unwrap_err();
    assert!(refused.is_conflict(), "{refused}");
    assert!(refused.to_string().contains("restart"), "{refused}");
}

#[sqlx::test(migrations = false)]
async fn retry_refuses_sagas_that_are_not_failed_and_unknown_ids(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let pending = start(&engine, SYN, json!({"steps": 2}), None).await;
    let err = engine.retry(pending, &operator()).await.unwrap_err();
    assert!(
        err.is_conflict() && err.to_string().contains("pending"),
        "{err}"
    );
    let err = engine.retry(Uuid::now_v7(), &operator()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // Nothing was written.
    assert!(!history(&detail(&engine, pending).await).contains(&"operator_retry".to_string()));
}

#[sqlx::test(migrations = false)]
async fn restart_creates_a_linked_saga_with_its_own_idempotency_scope(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let input = json!({"steps": 3, "fail_at": 2});
    let original = start(&engine, SYN, input.clone(), Some("checkout-7")).await;
    run_to_rest(&clock, &engine).await;
    assert_eq!(
        detail(&engine, original).await.status,
        SagaStatus::Compensated
    );

    let first = engine.restart(original, &operator()).await.unwrap();
    assert_ne!(first.id, original);
    assert_eq!(first.status, SagaStatus::Pending);
    assert_eq!(
        first.idempotency_key.as_deref(),
        Some("checkout-7/restart/1")
    );
    // While that replay is not over (or if it completed), a second restart would repeat its
    // effects: refused, naming the replay.
    let refused = engine.restart(original, &operator()).await.unwrap_err();
    assert!(refused.is_conflict(), "{refused}");
    assert!(
        refused.to_string().contains(&first.id.to_string()),
        "{refused}"
    );

    let replay = detail(&engine, first.id).await;
    assert_eq!(replay.replay_of, Some(original));
    assert_eq!(replay.input, input);
    assert_eq!(replay.started_by, "test:runner");
    assert_eq!(history(&replay), vec!["saga_started", "operator_restart"]);
    assert_eq!(replay.events[1].actor, "operator:test");
    let link = detail(&engine, original)
        .await
        .events
        .into_iter()
        .filter(|e| e.kind == EventKind::OperatorRestart)
        .map(|e| e.detail.unwrap()["restarted_as"].clone())
        .collect::<Vec<_>>();
    assert_eq!(link, vec![json!(first.id.to_string())]);

    // The replay runs like any saga (this input fails at step 2 again, and is undone again).
    run_to_rest(&clock, &engine).await;
    let replay = detail(&engine, first.id).await;
    assert_eq!(replay.status, SagaStatus::Compensated);
    assert_eq!(replay.steps[0].attempts, 1);
    // Undone again: it may be restarted once more, in its own idempotency scope.
    let second = engine.restart(original, &operator()).await.unwrap();
    assert_eq!(
        second.idempotency_key.as_deref(),
        Some("checkout-7/restart/2")
    );

    // A saga still in flight cannot be restarted; a completed one would repeat its effects.
    let running = start(&engine, SYN, json!({"steps": 1}), None).await;
    assert!(engine
        .restart(running, &operator())
        .await
        .unwrap_err()
        .is_conflict());
}

#[sqlx::test(migrations = false)]
async fn fork_reuses_outputs_before_the_step_and_runs_only_from_it(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let original = start(&engine, SYN, json!({"steps": 4}), Some("fork-me")).await;
    run_to_rest(&clock, &engine).await;
    let before = detail(&engine, original).await;
    assert_eq!(before.status, SagaStatus::Completed);

    let fork = engine.fork(original, "step_3", &operator()).await.unwrap();
    assert_eq!(fork.idempotency_key.as_deref(), Some("fork-me/fork/1"));
    let fresh = detail(&engine, fork.id).await;
    assert_eq!(fresh.replay_of, Some(original));
    assert_eq!(fresh.steps[0].status, StepStatus::Succeeded);
    assert_eq!(fresh.steps[2].status, StepStatus::Pending);

    run_to_rest(&clock, &engine).await;
    let forked = detail(&engine, fork.id).await;
    assert_eq!(forked.status, SagaStatus::Completed);
    // Steps 1-2 were taken over: never attempted in the fork, outputs copied.
    for i in 0..2 {
        assert_eq!(forked.steps[i].attempts, 0, "{}", forked.steps[i].name);
        assert_eq!(forked.steps[i].output, before.steps[i].output);
    }
    // Steps 3-4 ran in the fork.
    for i in 2..4 {
        assert_eq!(forked.steps[i].attempts, 1);
        assert_eq!(forked.steps[i].status, StepStatus::Succeeded);
    }
    assert_eq!(
        forked.output.as_ref().unwrap()["step_1"],
        before.steps[0].output.clone().unwrap()
    );
    assert_eq!(
        history(&forked),
        vec![
            "saga_started",
            "operator_fork:step_3",
            "step_succeeded:step_1",
            "step_succeeded:step_2",
            "step_started:step_3",
            "step_succeeded:step_3",
            "step_started:step_4",
            "step_succeeded:step_4",
            "saga_completed",
        ]
    );
    assert_eq!(
        forked.events[2].detail.as_ref().unwrap()["reused_from"],
        json!(original.to_string())
    );

    // Unknown step: not found.
    let err = engine
        .fork(original, "step_9", &operator())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[sqlx::test(migrations = false)]
async fn fork_refuses_when_earlier_steps_were_compensated(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let original = start(&engine, SYN, json!({"steps": 3, "fail_at": 3}), None).await;
    run_to_rest(&clock, &engine).await;
    assert_eq!(
        detail(&engine, original).await.status,
        SagaStatus::Compensated
    );
    let err = engine
        .fork(original, "step_3", &operator())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("step_1"), "{err}");
    assert!(err.to_string().contains("undone"), "{err}");
    // Nothing was created.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas")
        .fetch_one(engine.store().pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
}

// ---- version guard ------------------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
struct GuardInput {
    #[allow(dead_code)]
    n: u32,
}
impl SkillInput for GuardInput {}

const GUARDED: &str = "guarded";

/// A step that succeeds with its name and the saga it ran in, with no compensation.
fn plain(name: &'static str) -> Step {
    Step::new(name, move |ctx| async move {
        Ok(json!({"step": name, "ran_in": ctx.saga_id}))
    })
}

fn failing(name: &'static str) -> Step {
    Step::new(name, move |_ctx| async move {
        Err::<Value, _>(StepError::permanent("nope", format!("{name} always fails")))
    })
}

fn guarded(version: u32, steps: Vec<Step>) -> Skill {
    let mut b = Skill::builder::<GuardInput>(GUARDED, version, "version guard test");
    for s in steps {
        b = b.step(s);
    }
    b.build().unwrap()
}

fn engine_over(pool: &PgPool, clock: &ManualClock, skills: Vec<Skill>) -> Engine {
    let mut registry = Registry::new();
    for s in skills {
        registry.register(s).unwrap();
    }
    Engine::new(
        PgStore::new(pool.clone()),
        Arc::new(registry),
        Arc::new(clock.clone()),
    )
}

#[sqlx::test(migrations = false)]
async fn replays_refuse_a_changed_definition_unless_told_which_version(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    // v1 as the saga ran it: `reserve` then `charge`, which fails.
    let then = engine_over(
        &pool,
        &clock,
        vec![guarded(1, vec![plain("reserve"), failing("charge")])],
    );
    let id = start(&then, GUARDED, json!({"n": 1}), Some("g-1")).await;
    // A twin to fork (one saga is replayed once at a time: a restart and a fork of the same
    // saga would both repeat its effects).
    let twin = start(&then, GUARDED, json!({"n": 1}), Some("g-2")).await;
    run_to_rest(&clock, &then).await;
    let saga = detail(&then, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(
        saga.steps[0].compensation.status,
        CompensationStatus::NotNeeded
    );

    // Later the definition of v1 was changed in place (`charge` renamed) and v2 added.
    let now = engine_over(
        &pool,
        &clock,
        vec![
            guarded(1, vec![plain("reserve"), plain("charge_card")]),
            guarded(
                2,
                vec![plain("reserve"), plain("authorize"), plain("capture")],
            ),
            guarded(3, vec![plain("hold"), plain("authorize")]),
        ],
    );
    let err = now.restart(id, &operator()).await.unwrap_err();
    assert!(matches!(err, OperatorError::VersionMismatch(_)), "{err}");
    assert!(err.to_string().contains("charge"), "{err}");
    assert!(err.to_string().contains("--to-version"), "{err}");
    let err = now.fork(id, "charge", &operator()).await.unwrap_err();
    assert!(matches!(err, OperatorError::VersionMismatch(_)), "{err}");

    // Told which version: a restart runs on v2 from the start.
    let restarted = now.restart(id, &operator().to_version(2)).await.unwrap();
    assert_eq!(restarted.skill_version, 2);
    // A fork onto v2 from `authorize` maps `reserve` by name and reuses its output.
    let forked = now
        .fork(twin, "authorize", &operator().to_version(2))
        .await
        .unwrap();
    assert_eq!(forked.skill_version, 2);
    run_to_rest(&clock, &now).await;
    let forked = detail(&now, forked.id).await;
    assert_eq!(forked.status, SagaStatus::Completed);
    assert_eq!(forked.steps[0].attempts, 0);
    assert_eq!(
        forked.steps[0].output.as_ref().unwrap()["ran_in"],
        json!(twin.to_string())
    );
    assert_eq!(
        forked
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["reserve", "authorize", "capture"]
    );
    assert_eq!(
        detail(&now, restarted.id).await.status,
        SagaStatus::Completed
    );

    // v3 lacks `reserve`, which a fork from `authorize` needs; v9 does not exist.
    let err = now
        .fork(id, "authorize", &operator().to_version(3))
        .await
        .unwrap_err();
    assert!(matches!(err, OperatorError::VersionMismatch(_)), "{err}");
    assert!(err.to_string().contains("hold"), "{err}");
    let err = now
        .restart(id, &operator().to_version(9))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // A process that no longer has v1 at all refuses too.
    let later = engine_over(
        &pool,
        &clock,
        vec![guarded(
            2,
            vec![plain("reserve"), plain("authorize"), plain("capture")],
        )],
    );
    let err = later.restart(id, &operator()).await.unwrap_err();
    assert!(err.to_string().contains("no longer registered"), "{err}");
}

// ---- cancel ---------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn cancel_stops_a_running_saga_after_its_step_and_compensates_it(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool, clock.clone());
    let id = start(
        &engine,
        SYN,
        json!({"steps": 4, "step_sleep_ms": 500}),
        None,
    )
    .await;
    let runner = worker(&engine, "w1");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { runner.run(shutdown).await }
    });
    // Wait until the saga is running its first step.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saga = detail(&engine, id).await;
        if saga.status == SagaStatus::Running && saga.steps[0].status == StepStatus::Running {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "saga never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = engine
        .cancel_saga(
            id,
            &OperatorRequest::new("operator:bob").reason("guest left"),
        )
        .await
        .unwrap();
    assert_eq!(summary.id, id);
    let done = engine.wait(id, Duration::from_secs(20)).await.unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(done.status, SagaStatus::Compensated);
    let saga = detail(&engine, id).await;
    assert_eq!(saga.error.as_ref().unwrap()["code"], "cancelled");
    assert_eq!(saga.steps[0].status, StepStatus::Succeeded);
    assert_eq!(
        saga.steps[0].compensation.status,
        CompensationStatus::Compensated
    );
    assert!(saga.steps[2..]
        .iter()
        .all(|s| s.status == StepStatus::Skipped && s.attempts == 0));
    let cancel = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::CancelRequested)
        .unwrap();
    assert_eq!(cancel.actor, "operator:bob");
    assert_eq!(cancel.detail.as_ref().unwrap()["reason"], "guest left");
    // Over now: a second cancel is refused.
    assert!(engine
        .cancel_saga(id, &operator())
        .await
        .unwrap_err()
        .is_conflict());
}

// ---- prune ----------------------------------------------------------------------------------

async fn rows_for(pool: &PgPool, ids: &[Uuid]) -> (i64, i64, i64) {
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap();
    let steps: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stepwise.steps WHERE saga_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stepwise.events WHERE saga_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .unwrap();
    (sagas, steps, events)
}

async fn orphans(pool: &PgPool) -> (i64, i64) {
    let steps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.steps st
         WHERE NOT EXISTS (SELECT 1 FROM stepwise.sagas s WHERE s.id = st.saga_id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.events e
         WHERE NOT EXISTS (SELECT 1 FROM stepwise.sagas s WHERE s.id = e.saga_id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (steps, events)
}

#[sqlx::test(migrations = false)]
async fn prune_deletes_old_terminal_sagas_whole_and_leaves_no_orphans(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let completed = start(&engine, SYN, json!({"steps": 3}), None).await;
    let compensated = start(&engine, SYN, json!({"steps": 3, "fail_at": 2}), None).await;
    let failed = start(&engine, SYN, failing_compensation(5), None).await;
    run_to_rest(&clock, &engine).await;
    assert_eq!(detail(&engine, failed).await.status, SagaStatus::Failed);
    let restart = engine.restart(compensated, &operator()).await.unwrap().id;
    // Not terminal: never driven.
    let pending = start(&engine, SYN, json!({"steps": 2}), None).await;
    let old = [completed, compensated];
    let (_, steps_before, events_before) = rows_for(&pool, &old).await;
    // Each saga's start and end at least (a step's success is on its row, docs/storage.md).
    assert!(steps_before == 6 && events_before >= 4);
    // A `failed` saga waits for an operator: never pruned, however old.
    let kept = [pending, restart, failed];
    let kept_before = rows_for(&pool, &kept).await;

    // A day later, prune what finished more than an hour ago.
    clock.advance(Duration::from_secs(24 * 3600));
    let cutoff = clock.now() - chrono::Duration::hours(1);
    let dry = engine.prune(cutoff, true, |_| {}).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.sagas, 2);
    assert_eq!(
        rows_for(&pool, &old).await.0,
        2,
        "a dry run deletes nothing"
    );

    let mut seen = Vec::new();
    let report = engine
        .prune(cutoff, false, |p| seen.push((p.done, p.total)))
        .await
        .unwrap();
    assert_eq!(report.sagas, 2);
    assert_eq!(report.events_deleted as i64, events_before);
    assert_eq!(seen.last(), Some(&(2, 2)));
    assert_eq!(rows_for(&pool, &old).await, (0, 0, 0));
    assert_eq!(orphans(&pool).await, (0, 0));
    // The unfinished and failed sagas are untouched; the restart lost only its link to the
    // pruned saga.
    assert_eq!(rows_for(&pool, &kept).await, kept_before);
    assert_eq!(detail(&engine, restart).await.replay_of, None);
    assert_eq!(detail(&engine, pending).await.status, SagaStatus::Pending);
    // Nothing left to prune.
    assert_eq!(engine.prune(cutoff, false, |_| {}).await.unwrap().sagas, 0);
}

#[sqlx::test(migrations = false)]
async fn prune_drops_a_whole_history_partition_once_its_month_is_over(pool: PgPool) {
    common::migrate(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let a = start(&engine, SYN, json!({"steps": 2}), None).await;
    let b = start(&engine, SYN, json!({"steps": 2, "fail_at": 1}), None).await;
    let blocker = start(&engine, SYN, json!({"steps": 1}), None).await;
    run_to_rest(&clock, &engine).await;
    let month: String =
        sqlx::query_scalar("SELECT 'events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
            .fetch_one(&pool)
            .await
            .unwrap();
    let partition_rows = |pool: PgPool, name: String| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM stepwise.{name}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(
        partition_rows(pool.clone(), month.clone()).await > 0,
        "history lands in {month}"
    );

    // Two months on (this month's sagas all finished long ago) — but one saga of the month is
    // still pending: the partition must stay, and the others go row by row.
    let unfinished = start(&engine, SYN, json!({"steps": 1}), None).await;
    clock.advance(Duration::from_secs(70 * 24 * 3600));
    let cutoff = clock.now();
    let report = engine.prune(cutoff, false, |_| {}).await.unwrap();
    // (Empty partitions of months before the cutoff may go; this month's must stay.)
    assert!(!report.partitions_dropped.contains(&month), "{report:?}");
    assert_eq!(report.sagas, 3);
    assert_eq!(rows_for(&pool, &[a, b, blocker]).await, (0, 0, 0));
    assert_eq!(rows_for(&pool, &[unfinished]).await.0, 1);

    // Once it is finished and old too, the month goes whole: its partition is dropped.
    run_to_rest(&clock, &engine).await;
    clock.advance(Duration::from_secs(24 * 3600));
    let dry = engine.prune(clock.now(), true, |_| {}).await.unwrap();
    assert!(dry.partitions_dropped.contains(&month), "{dry:?}");
    let report = engine.prune(clock.now(), false, |_| {}).await.unwrap();
    assert!(report.partitions_dropped.contains(&month), "{report:?}");
    assert_eq!(report.sagas, 1);
    assert_eq!(report.events_deleted, 0, "no row-by-row deletes");
    assert_eq!(rows_for(&pool, &[unfinished]).await, (0, 0, 0));
    assert_eq!(orphans(&pool).await, (0, 0));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("stepwise.{month}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!exists);
    // History keeps working: new sagas' events go to the default partition.
    let next = start(&engine, SYN, json!({"steps": 1}), None).await;
    run_to_rest(&clock, &engine).await;
    assert_eq!(detail(&engine, next).await.status, SagaStatus::Completed);
}

// ---- bulk through the CLI ---------------------------------------------------------------------
