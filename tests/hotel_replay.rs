//! Operator replays on hotel sagas: a refund API that was down leaves a saga `failed` and an
//! operator retry finishes its compensation; checkouts compensated during a payments outage are
//! restarted, or forked from the charge, once it is over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use hotel_support::*;
use serde_json::json;
use sqlx::PgPool;
use stepwise_engine::operator::OperatorRequest;
use stepwise_engine::SagaStatus;

#[sqlx::test(migrations = false)]
async fn a_saga_whose_undo_failed_is_finished_by_an_operator_retry(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let room_number = free_vacant_rooms(&w.ledger().await, 80, 82)[0].clone();
    // Opportunity updates by id fail (the create is an upsert by external id, unaffected):
    // the declined deposit's compensation cannot mark the opportunity lost.
    w.faults(json!({"error_rate": 1.0, "services": ["salesforce"],
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Opportunity/006"}))
        .await;
    let mut input = booking_input("rp-1", "retry.me@example.com", &room_number, 80, 82);
    input["payment_method_id"] = json!("pm_card_chargeDeclined");
    let saga = w.run("create_booking", input).await;
    assert_eq!(status(&saga), SagaStatus::Failed, "{:?}", saga.error);
    assert!(
        w.hotel.holds.live(&room_number).await.unwrap().len() == 1,
        "the hold is not released past a failed undo"
    );

    w.clear_faults().await;
    let summary = w
        .engine
        .retry(
            saga.id,
            &OperatorRequest::new("operator:alice").reason("CRM is back"),
        )
        .await
        .unwrap();
    assert_eq!(summary.id, saga.id, "retried in place");
    let after = w.settle(&[saga.id]).await.remove(0);
    assert_eq!(status(&after), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&after),
        ["create_booking_record", "create_opportunity", "hold_room"]
    );
    let retry = after
        .events
        .iter()
        .find(|e| e.kind.to_string() == "operator_retry")
        .unwrap();
    assert_eq!(retry.actor, "operator:alice");
    let ledger = w.ledger().await;
    let contact = find(&ledger, "Contact", "Email", "retry.me@example.com");
    let record = objects(&ledger, "Booking__c")
        .into_iter()
        .find(|b| b["Guest__c"] == contact["Id"])
        .unwrap();
    let opportunity = find(
        &ledger,
        "Opportunity",
        "Id",
        record["Opportunity__c"].as_str().unwrap(),
    );
    assert_eq!(opportunity["StageName"], "Closed Lost");
    assert!(w.hotel.holds.live(&room_number).await.unwrap().is_empty());
}

#[sqlx::test(migrations = false)]
async fn checkouts_compensated_in_a_payments_outage_are_restarted_or_forked_after_it(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let stays = checked_in_stays(&w.ledger().await);
    let (first, second) = (stays[0].clone(), stays[1].clone());
    w.faults(json!({"error_rate": 1.0, "services": ["stripe"]}))
        .await;
    let a = w
        .run(
            "process_guest_checkout",
            checkout_input("outage-a", &first.0, "pm_card_visa"),
        )
        .await;
    let b = w
        .run(
            "process_guest_checkout",
            checkout_input("outage-b", &second.0, "pm_card_visa"),
        )
        .await;
    assert_eq!(
        (status(&a), status(&b)),
        (SagaStatus::Compensated, SagaStatus::Compensated)
    );
    w.clear_faults().await;

    // A compensated saga cannot resume in place.
    assert!(w
        .engine
        .retry(a.id, &OperatorRequest::new("operator:bob"))
        .await
        .unwrap_err()
        .is_conflict());

    let restarted = w
        .engine
        .restart(
            a.id,
            &OperatorRequest::new("operator:bob").reason("outage over"),
        )
        .await
        .unwrap();
    let restarted = w.settle(&[restarted.id]).await.remove(0);
    assert_eq!(
        status(&restarted),
        SagaStatus::Completed,
        "{:?}",
        restarted.error
    );
    assert_eq!(restarted.replay_of, Some(a.id));

    let forked = w
        .engine
        .fork(
            b.id,
            "charge_payment",
            &OperatorRequest::new("operator:bob"),
        )
        .await
        .unwrap();
    let forked = w.settle(&[forked.id]).await.remove(0);
    assert_eq!(status(&forked), SagaStatus::Completed, "{:?}", forked.error);
    let find_stay = forked.steps.iter().find(|s| s.name == "find_stay").unwrap();
    assert_eq!(
        find_stay.attempts, 0,
        "the stay found before the outage is reused, not looked up again"
    );

    let ledger = w.ledger().await;
    for (email, number, room_number) in [first, second] {
        assert_eq!(
            booking(&ledger, &number)["Status__c"],
            "Checked Out",
            "{email}"
        );
        assert_eq!(room(&ledger, &room_number)["Status__c"], "Cleaning");
    }
    assert_eq!(
        objects(&ledger, "payment_intent")
            .iter()
            .filter(|p| p["status"] == "succeeded")
            .count(),
        2
    );
}
