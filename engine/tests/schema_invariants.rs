//! The schema itself refuses saga and step rows that break the state machine's rules
//! (engine/migrations, `stepwise.check_saga_row` and `stepwise.check_step_row`), whatever
//! statement writes them, and names the rule.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use stepwise_engine::ManualClock;
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

/// Runs `sql` on saga `id` and returns the database error's message and constraint.
async fn refused(pool: &PgPool, sql: &str, id: Uuid) -> (String, Option<String>) {
    let error = sqlx::query(sql).bind(id).execute(pool).await.unwrap_err();
    let db = error.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
    (
        db.message().to_string(),
        db.constraint().map(str::to_string),
    )
}

#[sqlx::test(migrations = false)]
async fn rows_that_break_a_rule_are_refused_with_the_rule_named(pool: PgPool) {
    migrate(&pool).await;
    let engine = engine_with(pool.clone(), ManualClock::starting_now());
    let id = start(&engine, SYN, json!({"steps": 2}), None).await;

    let cases = [
        (
            "UPDATE stepwise.sagas SET status = 'completed' WHERE id = $1",
            "terminal_has_no_wake",
            "sagas_row_invariants",
        ),
        (
            "UPDATE stepwise.sagas SET lease_owner = 'w' WHERE id = $1",
            "only_a_running_saga_has_a_lease",
            "sagas_row_invariants",
        ),
        (
            "UPDATE stepwise.sagas SET cursor = 3 WHERE id = $1",
            "cursor_within_steps",
            "sagas_row_invariants",
        ),
        (
            "UPDATE stepwise.sagas SET attempt = 1, attempt_position = 0 WHERE id = $1",
            "attempt_in_flight_complete",
            "sagas_row_invariants",
        ),
        (
            "UPDATE stepwise.sagas SET attempt_position = 0, attempt_compensation = false,
                 attempt = 1, attempt_started_at = now(), attempt_seq = 1, attempt_actor = 'w'
             WHERE id = $1",
            "attempt_in_flight_valid",
            "sagas_row_invariants",
        ),
        (
            "UPDATE stepwise.steps SET output = '{}' WHERE saga_id = $1 AND position = 0",
            "output_means_success",
            "steps_row_invariants",
        ),
        (
            "UPDATE stepwise.steps SET compensation_status = 'pending'
             WHERE saga_id = $1 AND position = 0",
            "compensation_needs_success",
            "steps_row_invariants",
        ),
        (
            "UPDATE stepwise.steps SET attempts_round_base = 1 WHERE saga_id = $1",
            "attempts_counted",
            "steps_row_invariants",
        ),
    ];
    for (sql, rule, constraint) in cases {
        let (message, named) = refused(&pool, sql, id).await;
        assert!(message.contains(rule), "{sql}: {message}");
        assert_eq!(named.as_deref(), Some(constraint), "{sql}");
    }

    // A row that keeps every rule is written.
    sqlx::query("UPDATE stepwise.sagas SET status = 'running', lease_owner = 'w' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
}
