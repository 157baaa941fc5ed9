//! The hotel skills with the legacy housekeeping system (SOAP): the checkout and the
//! maintenance request create their task there too, exactly once even when the system times
//! out after creating it, and undoing the saga cancels the task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use hotel_support::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise_engine::SagaStatus;

fn step<'a>(saga: &'a stepwise_engine::SagaDetail, name: &str) -> &'a stepwise_engine::StepView {
    saga.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("step {name}"))
}

#[sqlx::test(migrations = false)]
async fn a_checkout_creates_its_cleaning_task_once_when_the_legacy_system_times_out_after_creating_it(
    pool: PgPool,
) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let (email, number, room_number) = checked_in_stays(&ledger)[0].clone();
    // The legacy system creates the task, then holds the answer past the connector's timeout.
    w.faults(
        json!({"effect_then_timeout_rate": 1.0, "services": ["legacy"], "method": "POST",
                    "max_faults": 1, "timeout_ms": 5000}),
    )
    .await;
    let saga = w
        .run(
            "process_guest_checkout",
            checkout_input("co-legacy", &email, "pm_card_visa"),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
    let task_step = step(&saga, "create_housekeeping_task");
    assert_eq!(task_step.attempts, 2, "the timed-out attempt was retried");
    let ledger = w.ledger().await;
    let tasks = objects(&ledger, "legacy_tasks");
    assert_eq!(tasks.len(), 1, "one task: {tasks:?}");
    let task = &tasks[0];
    assert_eq!(task["RoomNo"], room_number.as_str());
    assert_eq!(task["TaskType"], "CLN");
    assert_eq!(task["Status"], "OPN");
    assert!(task["Remark"].as_str().unwrap().contains(&number), "{task}");
    let output = saga.output.clone().unwrap();
    assert_eq!(output["housekeeping_task_no"], task["TaskNo"]);
    assert!(
        output["housekeeping_case_number"].is_string(),
        "the case stays"
    );
    assert_eq!(
        task_step.output.as_ref().unwrap()["found_again"],
        true,
        "the retry looked the task up by its reference"
    );
}

#[sqlx::test(migrations = false)]
async fn a_maintenance_request_undone_after_its_repair_task_cancels_the_task(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let room_number = rooms_in(&ledger, "Vacant")[0].clone();
    // The next 5 room updates fail: the urgent request cannot take the room out of use (its
    // undo, later, can).
    w.faults(
        json!({"error_rate": 1.0, "services": ["salesforce"], "method": "PATCH", "max_faults": 5,
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Hotel_Room__c"}),
    )
    .await;
    let saga = w
        .run(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-legacy", "room_number": room_number, "type": "Plumbing",
                   "priority": "Urgent", "description": "Burst pipe: water on the floor"}),
        )
        .await;
    w.clear_faults().await;
    assert_eq!(status(&saga), SagaStatus::Compensated, "{:?}", saga.error);
    assert!(compensated_steps(&saga).contains(&"create_repair_task".to_string()));
    let ledger = w.ledger().await;
    let tasks = objects(&ledger, "legacy_tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["TaskType"], "REP");
    assert_eq!(tasks[0]["Priority"], 1, "Urgent is the system's priority 1");
    assert_eq!(tasks[0]["Status"], "CAN", "the undo cancelled it");
    let cases: Vec<Value> = objects(&ledger, "Case")
        .into_iter()
        .filter(|c| {
            c["External_ID__c"]
                .as_str()
                .is_some_and(|k| k.contains(&saga.id.to_string()))
        })
        .collect();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["Status"], "Closed", "the case is closed too");
}

#[sqlx::test(migrations = false)]
async fn a_maintenance_request_creates_a_repair_task_beside_its_case(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let saga = w
        .run(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-legacy-ok", "room_number": "201", "type": "Electrical",
                   "priority": "Low", "description": "Bedside lamp flickers (Glühbirne?)"}),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
    let ledger = w.ledger().await;
    let tasks = objects(&ledger, "legacy_tasks");
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task["RoomNo"], "201");
    assert_eq!(task["Priority"], 4, "Low");
    assert_eq!(
        task["DueDate"],
        today().format("%d.%m.%Y").to_string(),
        "the system's date format"
    );
    assert!(
        task["Remark"].as_str().unwrap().contains("Glühbirne"),
        "ISO-8859-1 kept it"
    );
    assert_eq!(saga.output.unwrap()["task_no"], task["TaskNo"]);
}

#[sqlx::test(migrations = false)]
async fn a_429_with_retry_after_schedules_the_durable_retry_at_that_time(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    // One CRM call every 10 seconds: the request's second call is refused with Retry-After: 10.
    let response = w
        .http
        .post(format!("{}/_sandbox/limits", w.sandbox.base_url()))
        .json(&json!({"salesforce": {"per_second": 0.1}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let id = w
        .start(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-429", "room_number": "201", "type": "General",
                   "priority": "Low", "description": "Squeaky door"}),
        )
        .await
        .unwrap();
    w.worker.run_until_idle().await.unwrap();
    let saga = w.engine.detail(id).await.unwrap().unwrap();
    let retries: Vec<&Value> = saga
        .events
        .iter()
        .filter(|e| e.kind.to_string() == "retry_scheduled")
        .filter_map(|e| e.detail.as_ref())
        .collect();
    assert!(!retries.is_empty(), "a retry was scheduled");
    for detail in retries {
        let delay = detail["delay_ms"].as_u64().unwrap();
        assert!(
            (10_000..=11_000).contains(&delay),
            "the retry waits for Retry-After (10 s, up to 10% more), not the backoff: {detail}"
        );
    }
    let failures: Vec<&Value> = saga
        .events
        .iter()
        .filter(|e| e.kind.to_string() == "step_failed")
        .filter_map(|e| e.detail.as_ref())
        .collect();
    assert_eq!(failures[0]["code"], "rate_limited");
    assert_eq!(failures[0]["retry_after_ms"], 10_000);
    // The limit lifted, the retry (when due) completes the request.
    w.http
        .post(format!("{}/_sandbox/limits", w.sandbox.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let saga = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
}
