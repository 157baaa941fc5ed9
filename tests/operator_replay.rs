//! Operators' bulk replays and pruning through the CLI, on real sagas. (The engine-level
//! replays are tested in engine/tests/operator_replay.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise_engine::{Clock, Engine, EventKind, ManualClock, SagaStatus};
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

/// A two-step saga whose second step fails for good and whose first compensation fails
/// `comp_failures` times in total, with two attempts per round: it ends `failed`.
fn failing_compensation(comp_failures: u32) -> Value {
    json!({"steps": 2, "fail_at": 2, "compensation_failures": comp_failures, "max_attempts": 2})
}

async fn run_to_rest(clock: &ManualClock, engine: &Engine) {
    drive_with_retries(clock, &worker(engine, "w1"), 6).await;
}

#[sqlx::test(migrations = false)]
async fn bulk_retry_dry_run_lists_matches_and_the_real_run_applies_them(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let failed: Vec<Uuid> = futures::future::join_all(
        (0..3).map(|_| start(&engine, SYN, failing_compensation(3), None)),
    )
    .await;
    let compensated = start(&engine, SYN, json!({"steps": 2, "fail_at": 2}), None).await;
    run_to_rest(&clock, &engine).await;

    let dry = stepwise_as(
        "carol",
        &url,
        &[
            "sagas",
            "retry",
            "--status",
            "failed",
            "--skill",
            SYN,
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry = json_of(&dry);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["matched"], 3);
    assert_eq!(dry["applied"], 0);
    let listed: Vec<Uuid> = dry["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"], "would_retry");
            r["saga"]["id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let mut expected = failed.clone();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected);
    for id in &failed {
        let saga = detail(&engine, *id).await;
        assert_eq!(saga.status, SagaStatus::Failed, "a dry run changes nothing");
        assert!(!history(&saga).contains(&"operator_retry".to_string()));
    }

    let real = stepwise_as(
        "carol",
        &url,
        &[
            "sagas", "retry", "--status", "failed", "--skill", SYN, "--reason", "fixed", "--json",
        ],
    );
    assert_eq!(
        real.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    let real = json_of(&real);
    assert_eq!(real["applied"], 3);
    assert_eq!(real["refused"], 0);
    for id in &failed {
        let saga = detail(&engine, *id).await;
        assert_eq!(saga.status, SagaStatus::Compensating);
        let retry = saga
            .events
            .iter()
            .find(|e| e.kind == EventKind::OperatorRetry)
            .unwrap();
        // The default actor: $USER and this host.
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(retry.actor, format!("operator:carol@{host}"));
        assert_eq!(retry.detail.as_ref().unwrap()["reason"], "fixed");
    }
    // The CLI stamped them due at its (real) time: bring the test clock up to it.
    clock.set(chrono::Utc::now().max(clock.now()));
    run_to_rest(&clock, &engine).await;
    for id in &failed {
        assert_eq!(detail(&engine, *id).await.status, SagaStatus::Compensated);
    }

    // Single-saga commands: a compensated saga refuses retry (exit 4) and restarts (exit 0).
    let c = compensated.to_string();
    let refused = stepwise_as("carol", &url, &["sagas", "retry", &c, "--json"]);
    assert_eq!(refused.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("restart"));
    let would = stepwise_as("carol", &url, &["sagas", "retry", &c, "--dry-run"]);
    assert_eq!(would.status.code(), Some(4));
    let would = stepwise_as(
        "carol",
        &url,
        &["sagas", "restart", &c, "--dry-run", "--json"],
    );
    assert_eq!(would.status.code(), Some(0));
    assert_eq!(json_of(&would)["id"], json!(c));
    assert_eq!(saga_count(&pool).await, 4, "a dry run creates nothing");
    let restarted = stepwise_as(
        "carol",
        &url,
        &["sagas", "restart", &c, "--actor", "operator:dan", "--json"],
    );
    assert_eq!(
        restarted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let summary = json_of(&restarted);
    for field in [
        "id",
        "skill",
        "skill_version",
        "status",
        "idempotency_key",
        "created_at",
        "updated_at",
    ] {
        assert!(summary.get(field).is_some(), "summary lacks {field}");
    }
    assert_ne!(summary["id"], json!(c));
    let missing = stepwise_as(
        "carol",
        &url,
        &["sagas", "fork", &c, "--from-step", "step_7"],
    );
    assert_eq!(missing.status.code(), Some(3));
    let unknown = stepwise_as(
        "carol",
        &url,
        &["sagas", "restart", &Uuid::now_v7().to_string()],
    );
    assert_eq!(unknown.status.code(), Some(3));
    let no_version = stepwise_as(
        "carol",
        &url,
        &["sagas", "restart", &c, "--to-version", "9"],
    );
    assert_eq!(no_version.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&no_version.stderr).contains("v1"));
    // Its steps were undone: a fork from step_2 is refused (exit 4) and says why.
    let undone = stepwise_as(
        "carol",
        &url,
        &["sagas", "fork", &c, "--from-step", "step_2"],
    );
    assert_eq!(undone.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&undone.stderr).contains("step_1"));

    // Bulk restart of the compensated ones: the dry run lists four; the real run makes three,
    // because one of them was restarted above and that replay is not over (exit 4 says so).
    let dry = json_of(&stepwise_as(
        "carol",
        &url,
        &[
            "sagas",
            "restart",
            "--status",
            "compensated",
            "--skill",
            SYN,
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["matched"], 4);
    let before = saga_count(&pool).await;
    let real = stepwise_as(
        "carol",
        &url,
        &[
            "sagas",
            "restart",
            "--status",
            "compensated",
            "--skill",
            SYN,
            "--json",
        ],
    );
    assert_eq!(real.status.code(), Some(4));
    let real = json_of(&real);
    assert_eq!(real["applied"], 3);
    let after = saga_count(&pool).await;
    assert_eq!(after, before + 3);

    // The list shows counts by status, filtered.
    let list = json_of(&stepwise_as(
        "carol",
        &url,
        &["sagas", "list", "--skill", SYN, "--json"],
    ));
    assert_eq!(list["counts"]["compensated"], 4);
    assert_eq!(list["counts"]["pending"], 4);

    // Prune through the CLI: nothing is old enough yet.
    let prune = json_of(&stepwise_as(
        "carol",
        &url,
        &["sagas", "prune", "--older-than", "30d", "--json"],
    ));
    assert_eq!(prune["sagas"], 0);
    let bad = stepwise_as("carol", &url, &["sagas", "prune", "--older-than", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
}
