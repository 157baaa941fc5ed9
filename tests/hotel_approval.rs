//! Refund approval: `compensate_checkout` of a refund above the threshold waits for a
//! manager's `approval` event. Real PostgreSQL, the sandbox over HTTP, a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use hotel_support::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{DeliverError, SagaDetail, SagaStatus, StartRequest};
use stepwise_skills::hotel::approval::RefundApproval;
use stepwise_skills::hotel::records::money;
use uuid::Uuid;

/// A checkout done for a seeded stay whose charge satisfies `fits`.
struct CheckedOut {
    email: String,
    booking: String,
    room: String,
    payment_intent: String,
    amount: i64,
}

/// Checks out seeded stays, in order, until one is charged an amount that `fits`.
async fn checkout_where(w: &World, fits: impl Fn(i64) -> bool) -> CheckedOut {
    for (i, (email, booking, room)) in checked_in_stays(&w.ledger().await).into_iter().enumerate() {
        let saga = w
            .run(
                "process_guest_checkout",
                checkout_input(&format!("co-{i}"), &email, "pm_card_visa"),
            )
            .await;
        assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
        let out = saga.output.unwrap();
        let amount = out["amount"].as_i64().unwrap();
        if fits(amount) {
            return CheckedOut {
                email,
                booking,
                room,
                payment_intent: out["payment_intent_id"].as_str().unwrap().to_string(),
                amount,
            };
        }
    }
    panic!("no seeded stay is charged an amount that fits");
}

/// Starts the reversal of `stay` as a manager at the desk would.
async fn reverse(w: &World, stay: &CheckedOut, key: &str) -> Uuid {
    w.engine
        .start(StartRequest {
            skill: "compensate_checkout".into(),
            input: json!({"idempotency_key": key, "guest_email": stay.email,
                          "booking_number": stay.booking, "reason": "guest charged in error"}),
            idempotency_key: Some(key.into()),
            started_by: "manager:frontdesk@dewy.example".into(),
        })
        .await
        .expect("reversal starts")
        .saga
        .id
}

async fn detail(w: &World, id: Uuid) -> SagaDetail {
    w.engine.detail(id).await.unwrap().expect("saga exists")
}

/// Runs the worker until nothing is due and expects the saga to be waiting for an approval.
async fn until_waiting(w: &World, id: Uuid) -> Value {
    w.worker.run_until_idle().await.unwrap();
    let saga = detail(w, id).await;
    assert_eq!(saga.status, SagaStatus::Waiting, "{:?}", saga.error);
    saga.waiting_for.expect("waiting_for is shown")
}

fn refunds_of(ledger: &Value, payment_intent: &str) -> Vec<Value> {
    objects(ledger, "refund")
        .into_iter()
        .filter(|r| r["payment_intent"] == payment_intent)
        .collect()
}

fn kinds(saga: &SagaDetail) -> Vec<String> {
    saga.events.iter().map(|e| e.kind.to_string()).collect()
}

#[sqlx::test(migrations = false)]
async fn a_large_refund_waits_for_a_manager_and_is_made_once_when_approved(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stay = checkout_where(&w, |amount| amount > 50_000).await;
    let id = reverse(&w, &stay, "cc-approved").await;

    let waiting = until_waiting(&w, id).await;
    assert_eq!(waiting["event"], "approval");
    assert_eq!(waiting["roles"], json!(["manager"]));
    assert_eq!(waiting["schema"]["required"], json!(["approved"]));
    let prompt = waiting["prompt"].as_str().unwrap();
    for part in [money(stay.amount), stay.email.clone(), stay.booking.clone()] {
        assert!(prompt.contains(&part), "{part} in {prompt}");
    }
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(waiting["until"].clone()).unwrap();
    let now = stepwise_engine::Clock::now(&w.clock);
    assert_eq!(
        (until - now).num_hours(),
        24,
        "the default deadline is a day"
    );
    // Nothing changes while the manager has not answered.
    let ledger = w.ledger().await;
    assert!(refunds_of(&ledger, &stay.payment_intent).is_empty());
    assert_eq!(booking(&ledger, &stay.booking)["Status__c"], "Checked Out");

    let answer = json!({"approved": true, "note": "billing error confirmed"});
    let first = w
        .engine
        .deliver(
            id,
            "approval",
            answer.clone(),
            "appr-1",
            "manager:ann@dewy.example",
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = w
        .engine
        .deliver(id, "approval", answer, "appr-1", "manager:ann@dewy.example")
        .await
        .unwrap();
    assert!(again.duplicate);

    let saga = w.settle(&[id]).await.remove(0);
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", saga.error);
    let out = saga.output.clone().unwrap();
    assert_eq!(out["approved_by"], "manager:ann@dewy.example");
    assert_eq!(out["refund_amount"], stay.amount);
    let approval = &saga.steps[0].output.as_ref().unwrap()["approval"];
    assert_eq!(approval["approved_by"], "manager:ann@dewy.example");
    assert_eq!(approval["note"], "billing error confirmed");
    assert_eq!(
        saga.steps[0].attempts, 1,
        "waiting for the manager cost no attempt"
    );
    let ledger = w.ledger().await;
    let refunds = refunds_of(&ledger, &stay.payment_intent);
    assert_eq!(refunds.len(), 1, "refunded once: {refunds:?}");
    assert_eq!(refunds[0]["amount"], stay.amount);
    assert_eq!(booking(&ledger, &stay.booking)["Status__c"], "Checked In");
    assert_eq!(room(&ledger, &stay.room)["Status__c"], "Occupied");
}

#[sqlx::test(migrations = false)]
async fn a_rejected_refund_is_compensated_with_nothing_refunded_or_changed(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stay = checkout_where(&w, |amount| amount > 50_000).await;
    let room_before = room(&w.ledger().await, &stay.room)["Status__c"].clone();
    let id = reverse(&w, &stay, "cc-rejected").await;
    until_waiting(&w, id).await;

    // Only `approved` and `note` are accepted: a misspelt answer is refused, nothing kept.
    let refused = w
        .engine
        .deliver(
            id,
            "approval",
            json!({"approved": false, "reason": "x"}),
            "appr-x",
            "manager:bob@dewy.example",
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, DeliverError::Invalid { .. }), "{refused}");
    w.engine
        .deliver(
            id,
            "approval",
            json!({"approved": false, "note": "the stay was used"}),
            "appr-2",
            "manager:bob@dewy.example",
        )
        .await
        .unwrap();

    let saga = w.settle(&[id]).await.remove(0);
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(error_code(&saga), "refund_rejected");
    let message = saga.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "refund of {} rejected by manager:bob@dewy.example: the stay was used",
            money(stay.amount)
        )
    );
    assert!(compensated_steps(&saga).is_empty(), "nothing had changed");
    let ledger = w.ledger().await;
    assert!(refunds_of(&ledger, &stay.payment_intent).is_empty());
    assert_eq!(booking(&ledger, &stay.booking)["Status__c"], "Checked Out");
    assert_eq!(room(&ledger, &stay.room)["Status__c"], room_before);
}

#[sqlx::test(migrations = false)]
async fn a_refund_up_to_the_threshold_needs_no_approval(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stay = checkout_where(&w, |amount| amount > 0 && amount <= 50_000).await;
    let id = reverse(&w, &stay, "cc-small").await;
    w.worker.run_until_idle().await.unwrap();

    let saga = detail(&w, id).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", saga.error);
    assert!(!kinds(&saga).contains(&"wait_started".to_string()));
    let out = saga.output.unwrap();
    assert_eq!(out["approved_by"], Value::Null);
    let refunds = refunds_of(&w.ledger().await, &stay.payment_intent);
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"], stay.amount);
}

#[sqlx::test(migrations = false)]
async fn an_unanswered_refund_expires_at_its_deadline_with_nothing_refunded(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let settings = RefundApproval::parse(Some("10000"), Some("10m")).unwrap();
    let w = World::with_refund_approval(pool, settings).await;
    let stay = checkout_where(&w, |amount| amount > 10_000).await;
    let id = reverse(&w, &stay, "cc-expired").await;
    let waiting = until_waiting(&w, id).await;
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(waiting["until"].clone()).unwrap();
    assert_eq!(
        (until - stepwise_engine::Clock::now(&w.clock)).num_minutes(),
        10
    );

    // Still waiting just before the deadline; over at it.
    w.clock.advance(Duration::from_secs(9 * 60));
    w.worker.run_until_idle().await.unwrap();
    assert_eq!(detail(&w, id).await.status, SagaStatus::Waiting);
    w.clock.advance(Duration::from_secs(61));
    w.worker.run_until_idle().await.unwrap();

    let saga = detail(&w, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated, "{:?}", saga.error);
    assert_eq!(error_code(&saga), "refund_approval_expired");
    let message = saga.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("refund of {} expired", money(stay.amount))),
        "{message}"
    );
    assert!(kinds(&saga).contains(&"wait_timed_out".to_string()));
    let ledger = w.ledger().await;
    assert!(refunds_of(&ledger, &stay.payment_intent).is_empty());
    assert_eq!(booking(&ledger, &stay.booking)["Status__c"], "Checked Out");
    // The deadline passed: a late answer is refused, not kept.
    let late = w
        .engine
        .deliver(
            id,
            "approval",
            json!({"approved": true}),
            "late",
            "manager:ann@dewy.example",
        )
        .await
        .unwrap_err();
    assert!(matches!(late, DeliverError::Terminal { .. }), "{late}");
}
