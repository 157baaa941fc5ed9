//! The hotel skills under stress: flaky payments, a crash between the payment call and the
//! commit of its result, racing bookings of one room, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use hotel_support::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use stepwise_engine::{JitterSource, SagaStatus, StartError, WorkerConfig};

#[sqlx::test(migrations = false)]
async fn checkouts_under_flaky_payments_charge_once_and_refund_every_compensated_one(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stays = checked_in_stays(&w.ledger().await);
    assert!(
        stays.len() >= 8,
        "the seed has checked-in guests: {stays:?}"
    );
    w.faults(json!({"error_rate": 0.3, "services": ["stripe"], "seed": 11}))
        .await;
    let mut ids = Vec::new();
    for (i, (email, _, _)) in stays.iter().enumerate() {
        let id = w
            .start(
                "process_guest_checkout",
                checkout_input(&format!("flaky-{i}"), email, "pm_card_visa"),
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let details = w.settle(&ids).await;
    w.clear_faults().await;
    let ledger = w.ledger().await;

    let mut charges_by_saga: HashMap<String, Vec<Value>> = HashMap::new();
    for intent in objects(&ledger, "payment_intent") {
        let saga = intent["metadata"]["saga_id"].as_str().unwrap().to_string();
        charges_by_saga.entry(saga).or_default().push(intent);
    }
    let refunds = objects(&ledger, "refund");
    let mut completed = 0;
    for detail in &details {
        assert!(
            matches!(
                status(detail),
                SagaStatus::Completed | SagaStatus::Compensated
            ),
            "saga {} ended {:?}: {:?}",
            detail.id,
            status(detail),
            detail.error
        );
        let charges = charges_by_saga
            .remove(&detail.id.to_string())
            .unwrap_or_default();
        assert!(
            charges.len() <= 1,
            "never a second charge for one saga: {charges:?}"
        );
        let refunded = charges
            .iter()
            .any(|c| refunds.iter().any(|r| r["payment_intent"] == c["id"]));
        match status(detail) {
            SagaStatus::Completed => {
                completed += 1;
                assert_eq!(charges.len(), 1);
                assert!(!refunded, "a completed checkout keeps its charge");
            }
            _ => {
                if let Some(charge) = charges.iter().find(|c| c["status"] == "succeeded") {
                    assert!(
                        refunded,
                        "compensated saga {} left charge {} unrefunded",
                        detail.id, charge["id"]
                    );
                }
            }
        }
    }
    assert!(
        completed > 0,
        "with 30% errors and retries most checkouts complete"
    );
    let faulted = ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 500)
        .count();
    assert!(faulted > 0, "the sandbox did inject errors");
}

#[sqlx::test(migrations = false)]
async fn a_charge_re_run_after_a_lost_commit_is_replayed_not_repeated(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let (email, number, _) = checked_in_stays(&w.ledger().await)[0].clone();
    // Payment calls take a while, so the first worker is still inside the call when its lease
    // is taken over.
    w.faults(json!({"latency_ms": 1500, "services": ["stripe"], "path_prefix": "/stripe/v1/payment_intents"}))
        .await;
    let id = w
        .start(
            "process_guest_checkout",
            checkout_input("crash-1", &email, "pm_card_visa"),
        )
        .await
        .unwrap();
    let first = w.engine.worker(WorkerConfig {
        worker_id: "doomed".into(),
        lease: Duration::from_secs(30),
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    let doomed = tokio::spawn(async move { first.run_until_idle().await });
    // Wait until the first worker is inside the payment call (the sandbox records a request
    // when it answers), then let its lease expire.
    for _ in 0..200 {
        let detail = w.engine.detail(id).await.unwrap().unwrap();
        let charging = detail
            .steps
            .iter()
            .any(|s| s.name == "charge_payment" && s.status.to_string() == "running");
        if charging {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.clock.advance(Duration::from_secs(31));
    let detail = w.settle(&[id]).await.remove(0);
    let _ = doomed.await;
    assert_eq!(status(&detail), SagaStatus::Completed, "{:?}", detail.error);
    assert!(detail
        .events
        .iter()
        .any(|e| e.kind.to_string() == "lease_expired"));

    let ledger = w.ledger().await;
    let charges: Vec<Value> = objects(&ledger, "payment_intent")
        .into_iter()
        .filter(|p| p["metadata"]["booking_number"] == number.as_str())
        .collect();
    assert_eq!(charges.len(), 1, "one charge, not two: {charges:?}");
    let posts = requests(&ledger, "POST", "/stripe/v1/payment_intents");
    assert_eq!(posts.len(), 2, "the step ran twice: {posts:?}");
    assert_eq!(posts[0]["idempotency_key"], posts[1]["idempotency_key"]);
    assert!(
        posts.iter().any(|p| p["replayed"] == true),
        "the second call was an idempotent replay"
    );
    let charge_step = detail
        .steps
        .iter()
        .find(|s| s.name == "charge_payment")
        .unwrap();
    assert_eq!(charge_step.attempts, 2);
}

#[sqlx::test(migrations = false)]
async fn twenty_racing_bookings_of_one_room_leave_exactly_one(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let before = w.ledger().await;
    let room_number = free_vacant_rooms(&before, 60, 64)[0].clone();
    let mut ids = Vec::new();
    for i in 0..20 {
        // Overlapping, not identical, stays.
        let input = booking_input(
            &format!("race-{i}"),
            &format!("racer{i}@example.com"),
            &room_number,
            60 + i % 3,
            63 + i % 2,
        );
        ids.push(w.start("create_booking", input).await.unwrap());
    }
    let other = w.engine.worker(WorkerConfig {
        worker_id: "second".into(),
        concurrency: 32,
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    let (a, b) = tokio::join!(w.worker.run_until_idle(), other.run_until_idle());
    a.unwrap();
    b.unwrap();
    let details = w.settle(&ids).await;
    let winners: Vec<_> = details
        .iter()
        .filter(|d| status(d) == SagaStatus::Completed)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one booking wins");
    for loser in details
        .iter()
        .filter(|d| status(d) != SagaStatus::Completed)
    {
        assert_eq!(status(loser), SagaStatus::Compensated);
        assert_eq!(error_code(loser), "room_unavailable", "{:?}", loser.error);
    }
    let after = w.ledger().await;
    let new_bookings = objects(&after, "Booking__c").len() - objects(&before, "Booking__c").len();
    let new_opportunities =
        objects(&after, "Opportunity").len() - objects(&before, "Opportunity").len();
    let new_contacts = objects(&after, "Contact").len() - objects(&before, "Contact").len();
    assert_eq!(
        (new_bookings, new_opportunities, new_contacts),
        (1, 1, 1),
        "losers leave nothing behind"
    );
    assert_eq!(w.hotel.holds.live(&room_number).await.unwrap().len(), 1);
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_with_the_field_named_and_nothing_written(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool.clone()).await;
    let room_number = free_vacant_rooms(&w.ledger().await, 70, 72)[0].clone();
    let cases = [
        ("guest_email", {
            let mut i = booking_input("bad-1", "not-an-email", &room_number, 70, 72);
            i["guest_email"] = json!("x' OR Email != '");
            i
        }),
        (
            "check_out_date",
            booking_input("bad-2", "neg@example.com", &room_number, 72, 70),
        ),
        ("guest_first_name", {
            let mut i = booking_input("bad-3", "quote@example.com", &room_number, 70, 72);
            i["guest_first_name"] = json!("Ro\"bert");
            i
        }),
        ("payment_method_id", {
            let mut i = booking_input("bad-4", "card@example.com", &room_number, 70, 72);
            i["payment_method_id"] = json!("4242424242424242");
            i
        }),
    ];
    for (field, input) in cases {
        match w.start("create_booking", input).await {
            Err(StartError::InvalidInput { message, .. }) => {
                assert!(message.contains(field), "`{message}` names {field}")
            }
            other => panic!("expected invalid input for {field}, got {other:?}"),
        }
    }
    let sagas: i64 = w
        .engine
        .store()
        .counts_by_status()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(sagas, 0, "nothing written");

    // An unknown room is a business error found by the first step: no external writes.
    let before = w.ledger().await;
    let unknown = w
        .run(
            "create_booking",
            booking_input("bad-5", "room@example.com", "999", 70, 72),
        )
        .await;
    assert_eq!(error_code(&unknown), "room_not_found");
    let after = w.ledger().await;
    let writes = |l: &Value| {
        l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["method"] != "GET")
            .count()
    };
    assert_eq!(
        writes(&after),
        writes(&before),
        "no write reached the external systems"
    );
}

/// Money the payments service holds for a booking: charges that succeeded minus refunds.
fn net_money(ledger: &Value, booking_number: &str) -> (i64, i64) {
    let charges: Vec<Value> = objects(ledger, "payment_intent")
        .into_iter()
        .filter(|p| p["metadata"]["booking_number"] == booking_number && p["status"] == "succeeded")
        .collect();
    let charged: i64 = charges
        .iter()
        .map(|p| p["amount_received"].as_i64().unwrap())
        .sum();
    let refunded: i64 = objects(ledger, "refund")
        .iter()
        .filter(|r| charges.iter().any(|c| c["id"] == r["payment_intent"]))
        .map(|r| r["amount"].as_i64().unwrap())
        .sum();
    (charged, refunded)
}

/// A checkout whose charge took effect but whose every answer was lost (the sandbox applies the
/// payment, then answers 500, or drops the connection mid-answer) gives up with an unknown
/// outcome: the charge step is possibly done, its undo finds the payment by its idempotency key
/// and refunds it, and the agent is told so (README "Concepts", docs/reliability.md).
#[sqlx::test(migrations = false)]
async fn a_checkout_whose_charge_answers_were_lost_refunds_the_possible_charge(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stays = checked_in_stays(&w.ledger().await);
    for (i, fault) in ["effect_then_error_rate", "reset_rate"].iter().enumerate() {
        let (email, number, _) = stays[i].clone();
        // Every attempt of the charge (5) fails after the payment was applied (the later ones
        // replay it); the search and the refund are not faulted.
        w.faults(
            json!({*fault: 1.0, "services": ["stripe"], "method": "POST",
                        "path_prefix": "/stripe/v1/payment_intents", "max_faults": 5}),
        )
        .await;
        let detail = w
            .run(
                "process_guest_checkout",
                checkout_input(&format!("lost-{i}"), &email, "pm_card_visa"),
            )
            .await;
        w.clear_faults().await;
        assert_eq!(
            status(&detail),
            SagaStatus::Compensated,
            "{fault}: {:?}",
            detail.error
        );
        let charge = detail
            .steps
            .iter()
            .find(|s| s.name == "charge_payment")
            .unwrap();
        assert_eq!(charge.attempts, 5, "{fault}");
        assert!(charge.possibly_done, "{fault}");
        let undone: Vec<String> = detail
            .events
            .iter()
            .filter(|e| e.kind.to_string() == "compensation_succeeded")
            .filter_map(|e| e.step.clone())
            .collect();
        assert_eq!(undone, ["charge_payment"], "{fault}: nothing else had run");

        let ledger = w.ledger().await;
        let (charged, refunded) = net_money(&ledger, &number);
        assert!(
            charged > 0,
            "{fault}: the payment was made although every answer was lost"
        );
        assert_eq!(
            charged - refunded,
            0,
            "{fault}: nothing is kept of a compensated checkout"
        );

        let undo = charge.compensation.output.clone().unwrap();
        let expected = format!(
            "a possible charge of {} was found and refunded",
            stepwise_skills::hotel::records::money(charged)
        );
        assert_eq!(undo["summary"], expected.as_str(), "{undo}");
        let recorded = detail
            .events
            .iter()
            .find(|e| {
                e.kind.to_string() == "compensation_succeeded"
                    && e.step.as_deref() == Some("charge_payment")
            })
            .unwrap();
        assert_eq!(recorded.detail.as_ref().unwrap()["possibly_done"], true);
        assert_eq!(
            recorded.detail.as_ref().unwrap()["output"]["summary"],
            expected.as_str()
        );
        let report = stepwise_mcp::results::saga_report(&detail);
        assert!(report.text.contains(&expected), "{}", report.text);
        assert!(
            !report.text.contains("Nothing had to be undone"),
            "{}",
            report.text
        );
        assert_eq!(
            report.structured["error"]["undo_summaries"][0]["summary"],
            expected.as_str()
        );
    }
}

/// The same lost answers without an effect (500 before the payment is made): the charge step is
/// still possibly done (the client cannot tell), and its undo finds nothing: "nothing had been
/// charged".
#[sqlx::test(migrations = false)]
async fn a_checkout_whose_charge_failed_unseen_says_nothing_had_been_charged(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let (email, number, _) = checked_in_stays(&w.ledger().await)[0].clone();
    w.faults(
        json!({"error_rate": 1.0, "services": ["stripe"], "method": "POST",
                    "path_prefix": "/stripe/v1/payment_intents"}),
    )
    .await;
    let detail = w
        .run(
            "process_guest_checkout",
            checkout_input("unseen-1", &email, "pm_card_visa"),
        )
        .await;
    w.clear_faults().await;
    assert_eq!(
        status(&detail),
        SagaStatus::Compensated,
        "{:?}",
        detail.error
    );
    let charge = detail
        .steps
        .iter()
        .find(|s| s.name == "charge_payment")
        .unwrap();
    assert!(charge.possibly_done);
    let undo = charge.compensation.output.clone().unwrap();
    assert_eq!(undo["summary"], "nothing had been charged", "{undo}");
    assert_eq!(undo["charged"], 0);
    let ledger = w.ledger().await;
    assert_eq!(net_money(&ledger, &number), (0, 0));
    assert!(objects(&ledger, "refund").is_empty(), "nothing to refund");
    let report = stepwise_mcp::results::saga_report(&detail);
    assert!(
        report.text.contains("nothing had been charged"),
        "{}",
        report.text
    );
}

/// The booking record's upsert takes effect but every answer is lost (5 attempts): the step is
/// possibly done, the booking compensates, and the undo finds the booking under its external id
/// and cancels it (and closes the opportunity) instead of failing for want of a recorded output.
#[sqlx::test(migrations = false)]
async fn a_booking_whose_record_answers_were_lost_cancels_the_possible_booking(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let room_number = free_vacant_rooms(&ledger, 60, 62)[0].clone();
    let room_id = room(&ledger, &room_number)["Id"].clone();
    w.faults(
        json!({"effect_then_error_rate": 1.0, "services": ["salesforce"], "method": "PATCH",
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Booking__c",
                    "max_faults": 5}),
    )
    .await;
    let input = booking_input("lost-bk", "lost.answer@example.com", &room_number, 60, 62);
    let saga = w.run("create_booking", input).await;
    w.clear_faults().await;

    assert_eq!(status(&saga), SagaStatus::Compensated, "{:?}", saga.error);
    let record = saga
        .steps
        .iter()
        .find(|s| s.name == "create_booking_record")
        .unwrap();
    assert!(record.possibly_done);
    assert_eq!(record.attempts, 5);
    let undo = record.compensation.output.clone().unwrap();
    assert_eq!(undo["status"], "Cancelled", "{undo}");
    assert!(compensated_steps(&saga).contains(&"create_opportunity".to_string()));

    let ledger = w.ledger().await;
    let bookings: Vec<Value> = objects(&ledger, "Booking__c")
        .into_iter()
        .filter(|b| b["Hotel_Room__c"] == room_id && b["Check_In_Date__c"] == day(60).as_str())
        .collect();
    assert_eq!(bookings.len(), 1, "the lost answers created it once");
    assert_eq!(bookings[0]["Status__c"], "Cancelled");
    assert_eq!(bookings[0]["Name"], undo["booking_number"]);
}
