//! `STEPWISE_READ_URL`: read-only work goes to a real streaming replica (docs/operations.md,
//! "Read replicas"), never a read that must see a write the replica has not replayed yet. The
//! test makes its own throwaway primary and a standby of it (`pg_basebackup -R` into a second
//! data directory, on another port), both removed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise::throwaway_pg::Cluster;
use stepwise_engine::{Connections, Engine, PgStore, SagaFilter, StartRequest, SystemClock};

fn stepwise(primary: &str, replica: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .env("DATABASE_URL", primary)
        .env("STEPWISE_READ_URL", replica)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stepwise {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn start(engine: &Engine, key: &str) -> uuid::Uuid {
    engine
        .start(StartRequest {
            skill: "synthetic_chain".into(),
            input: json!({"steps": 2}),
            idempotency_key: Some(key.into()),
            started_by: "test:replica".into(),
        })
        .await
        .unwrap()
        .saga
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_caught_up_streaming_replica_and_a_start_is_always_seen_by_its_status_read() {
    let primary = tokio::task::block_in_place(Cluster::create).expect("a throwaway primary");
    let standby = tokio::task::block_in_place(|| primary.standby()).expect("a streaming standby");
    let migrate = PgStore::connect(&primary.url(), 2).await.unwrap();
    stepwise::app::migrate(migrate.pool().raw()).await.unwrap();

    let connections = Connections {
        read_url: Some(standby.url()),
        read_max_wait: Duration::from_millis(300),
        ..Connections::direct(&primary.url())
    };
    let store = PgStore::connect_with(&connections, 4).await.unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(stepwise_skills::registry().unwrap()),
        Arc::new(SystemClock),
    );

    // A start followed at once by its status: the read waits for the replica to replay the
    // start, then the replica answers.
    for i in 0..20 {
        let id = start(&engine, &format!("seen-{i}")).await;
        assert!(
            engine.detail(id).await.unwrap().is_some(),
            "saga {i} not seen"
        );
    }
    assert!(
        store.reads().await.is_standby().await.unwrap(),
        "a caught-up replica serves the reads"
    );
    assert!(
        !store.is_standby().await.unwrap(),
        "writes go to the primary"
    );

    // Replay paused: the replica cannot catch up, so the read goes back to the primary after
    // the wait and still sees the start.
    let on_standby = PgPoolOptions::new()
        .max_connections(1)
        .connect(&standby.url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&on_standby)
        .await
        .unwrap();
    let id = start(&engine, "during-pause").await;
    let asked = Instant::now();
    assert!(engine.detail(id).await.unwrap().is_some());
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert!(!store.reads().await.is_standby().await.unwrap());
    let on_replica: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM stepwise.sagas WHERE id = $1)")
            .bind(id)
            .fetch_one(&on_standby)
            .await
            .unwrap();
    assert!(!on_replica, "the paused replica has not replayed the start");
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&on_standby)
        .await
        .unwrap();
    let listed = engine
        .list(&SagaFilter {
            limit: 100,
            ..SagaFilter::default()
        })
        .await
        .unwrap();
    assert!(listed.iter().any(|s| s.id == id));
    assert!(store.reads().await.is_standby().await.unwrap());

    // The CLI: a start (primary) followed by `sagas show` and `sagas list` in other processes
    // (replica once caught up), and an operator command that writes (primary).
    let started = stepwise(
        &primary.url(),
        &standby.url(),
        &[
            "start",
            "synthetic_chain",
            "--input",
            r#"{"steps": 1}"#,
            "--json",
        ],
    );
    let id = started["id"].as_str().unwrap().to_owned();
    let shown = stepwise(
        &primary.url(),
        &standby.url(),
        &["sagas", "show", &id, "--json"],
    );
    assert_eq!(shown["id"], id.as_str());
    let listed = stepwise(&primary.url(), &standby.url(), &["sagas", "list", "--json"]);
    assert!(listed["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id.as_str()));
    let cancelled = stepwise(
        &primary.url(),
        &standby.url(),
        &["sagas", "cancel", &id, "--json"],
    );
    assert_eq!(cancelled["id"], id.as_str());
    on_standby.close().await;
    drop(standby);
    drop(primary);
}
