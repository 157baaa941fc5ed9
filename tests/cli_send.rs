//! `stepwise sagas send`: delivering an event from the command line, its JSON shape and its
//! exit codes; `sagas show` and `sagas list` on a waiting saga.
#![allow(clippy::unwrap_used)]

mod common;

use common::{database_url, engine_with, json_of, start, stepwise, worker};
use serde_json::json;
use sqlx::PgPool;
use stepwise_engine::{ManualClock, SagaStatus};

#[sqlx::test(migrations = false)]
async fn send_delivers_once_and_exits_2_3_4_on_refusals(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let clock = ManualClock::starting_now();
    let engine = engine_with(pool.clone(), clock.clone());
    let id = start(
        &engine,
        "synthetic_chain",
        json!({"steps": 2, "wait_at": 2}),
        None,
    )
    .await;
    let w = worker(&engine, "w1");
    w.run_until_idle().await.unwrap();
    let id_text = id.to_string();

    let show = stepwise(&url, &["sagas", "show", &id_text, "--json"]);
    assert_eq!(show.status.code(), Some(0));
    let shown = json_of(&show);
    assert_eq!(shown["status"], "waiting");
    assert_eq!(shown["waiting_for"]["event"], "go");
    assert_eq!(shown["waiting_for"]["schema"], json!({"type": "object"}));
    assert!(shown["waiting_for"]["until"].is_string());
    let text = stepwise(&url, &["sagas", "show", &id_text]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("waiting for event `go`"));
    let listed = stepwise(&url, &["sagas", "list", "--status", "waiting", "--json"]);
    assert_eq!(listed.status.code(), Some(0));
    let listed = json_of(&listed);
    assert_eq!(listed["sagas"][0]["id"], id_text);
    assert_eq!(listed["counts"]["waiting"], 1);

    let not_json = stepwise(&url, &["sagas", "send", &id_text, "go", "--data", "{nope"]);
    assert_eq!(not_json.status.code(), Some(2));
    let invalid = stepwise(&url, &["sagas", "send", &id_text, "go", "--data", "[1]"]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("payload"));
    let unknown_event = stepwise(&url, &["sagas", "send", &id_text, "stop"]);
    assert_eq!(unknown_event.status.code(), Some(2));
    let unknown_saga = stepwise(
        &url,
        &[
            "sagas",
            "send",
            "0190f6c4-1111-7000-8000-000000000000",
            "go",
        ],
    );
    assert_eq!(unknown_saga.status.code(), Some(3));

    let args = |data: &'static str| {
        vec![
            "sagas",
            "send",
            &id_text,
            "go",
            "--data",
            data,
            "--key",
            "k-1",
            "--actor",
            "guest:ann",
            "--json",
        ]
    };
    let sent = stepwise(&url, &args(r#"{"ok":true}"#));
    assert_eq!(
        sent.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let sent = json_of(&sent);
    assert_eq!(
        sent,
        json!({"saga_id": id_text, "event": "go", "key": "k-1", "duplicate": false,
               "status": "waiting"})
    );
    let again = stepwise(&url, &args(r#"{"ok":true}"#));
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(json_of(&again)["duplicate"], true);
    let conflict = stepwise(&url, &args(r#"{"ok":false}"#));
    assert_eq!(conflict.status.code(), Some(4));

    // The binary stamped the delivery with the wall clock, later than this test's clock.
    clock.advance(std::time::Duration::from_secs(5));
    w.run_until_idle().await.unwrap();
    let saga = engine.detail(id).await.unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        saga.steps[1].output.as_ref().unwrap()["received"],
        json!({"ok": true})
    );
    let received = saga
        .events
        .iter()
        .find(|e| e.kind.as_str() == "event_received")
        .unwrap();
    assert_eq!(received.actor, "guest:ann");

    // A fresh key (the default) for a saga that is over: refused with 4.
    let late = stepwise(&url, &["sagas", "send", &id_text, "go"]);
    assert_eq!(late.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&late.stderr).contains("completed"));
}
