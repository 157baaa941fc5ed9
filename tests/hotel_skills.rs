//! The Dewy Resort skills end to end: real PostgreSQL, real HTTP to a sandbox started by each
//! test. Every saga skill's success path, and failure paths showing the compensations that ran
//! and the state of the external systems afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use hotel_support::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise_engine::SagaStatus;

#[sqlx::test(migrations = false)]
async fn a_booking_lives_through_changes_upgrade_and_cancellation(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let rooms = free_vacant_rooms(&ledger, 40, 50);
    let (cheap, dear) = (rooms[0].clone(), rooms.last().unwrap().clone());

    // Book with a deposit.
    let mut input = booking_input("bk-1", "new.guest@example.com", &cheap, 40, 43);
    input["payment_method_id"] = json!("pm_card_visa");
    let saga = w.run("create_booking", input).await;
    assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
    let out = saga.output.clone().unwrap();
    let number = out["booking_number"].as_str().unwrap().to_string();
    assert_eq!(out["total_nights"], 3);
    assert_eq!(out["room_number"], cheap.as_str());
    let ledger = w.ledger().await;
    let record = booking(&ledger, &number);
    assert_eq!(record["Status__c"], "Reserved");
    let guest = find(&ledger, "Contact", "Email", "new.guest@example.com");
    assert_eq!(guest["LastName"], "O'Hara");
    let deposit = find(
        &ledger,
        "payment_intent",
        "id",
        out["deposit_payment_intent_id"].as_str().unwrap(),
    );
    assert_eq!(deposit["status"], "succeeded");
    assert_eq!(
        objects(&ledger, "message").len(),
        1,
        "one confirmation text"
    );

    // Read it back.
    let view = w
        .query(
            "get_booking",
            json!({"guest_email": "new.guest@example.com", "booking_number": number}),
        )
        .await;
    assert_eq!(view["status"], "Reserved");
    assert_eq!(view["total_nights"], 3);

    // Change the party size and the dates.
    let managed = w
        .run(
            "manage_booking",
            json!({"idempotency_key": "mg-1", "guest_email": "new.guest@example.com",
                   "booking_number": number, "number_of_guests": 3,
                   "check_in_date": day(41), "check_out_date": day(44)}),
        )
        .await;
    assert_eq!(
        status(&managed),
        SagaStatus::Completed,
        "{:?}",
        managed.error
    );
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Check_In_Date__c"], day(41));
    assert_eq!(
        booking(&ledger, &number)["Status__c"],
        "Reserved",
        "status is not reset"
    );
    let holds = w.hotel.holds.live(&cheap).await.unwrap();
    assert_eq!(holds.len(), 1, "only the new dates are held: {holds:?}");

    // Extend by two nights.
    let extended = w
        .run(
            "extend_stay",
            json!({"idempotency_key": "ex-1", "guest_email": "new.guest@example.com",
                   "booking_number": number, "new_check_out_date": day(46)}),
        )
        .await;
    assert_eq!(
        status(&extended),
        SagaStatus::Completed,
        "{:?}",
        extended.error
    );
    assert_eq!(extended.output.as_ref().unwrap()["additional_nights"], 2);
    assert_eq!(
        booking(&w.ledger().await, &number)["Check_Out_Date__c"],
        day(46)
    );

    // Upgrade to the dearest free room, paying the difference.
    let upgraded = w
        .run(
            "upgrade_room",
            json!({"idempotency_key": "up-1", "guest_email": "new.guest@example.com",
                   "booking_number": number, "new_room_number": dear, "payment_method_id": "pm_card_visa"}),
        )
        .await;
    assert_eq!(
        status(&upgraded),
        SagaStatus::Completed,
        "{:?}",
        upgraded.error
    );
    let ledger = w.ledger().await;
    let new_room = room(&ledger, &dear);
    assert_eq!(booking(&ledger, &number)["Hotel_Room__c"], new_room["Id"]);
    assert!(
        w.hotel.holds.live(&cheap).await.unwrap().is_empty(),
        "old room released"
    );
    assert_eq!(w.hotel.holds.live(&dear).await.unwrap().len(), 1);
    assert!(
        upgraded.output.as_ref().unwrap()["amount"]
            .as_i64()
            .unwrap()
            > 0
    );

    // Cancel well ahead of arrival: the deposit comes back in full.
    let cancelled = w
        .run(
            "cancel_booking",
            json!({"idempotency_key": "cx-1", "guest_email": "new.guest@example.com",
                   "booking_number": number, "reason": "plans changed"}),
        )
        .await;
    assert_eq!(
        status(&cancelled),
        SagaStatus::Completed,
        "{:?}",
        cancelled.error
    );
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Cancelled");
    let refunds: Vec<Value> = objects(&ledger, "refund")
        .into_iter()
        .filter(|r| r["payment_intent"] == deposit["id"])
        .collect();
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        refunds[0]["amount"], deposit["amount"],
        "full refund per policy"
    );
    assert!(
        w.hotel.holds.live(&dear).await.unwrap().is_empty(),
        "room freed"
    );
}

#[sqlx::test(migrations = false)]
async fn a_stay_from_check_in_to_checkout_and_its_reversal(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let room_number = free_vacant_rooms(&ledger, 0, 2)[0].clone();
    let booked = w
        .run(
            "create_booking",
            booking_input("bk-stay", "stay.guest@example.com", &room_number, 0, 2),
        )
        .await;
    assert_eq!(status(&booked), SagaStatus::Completed, "{:?}", booked.error);
    let number = booked.output.as_ref().unwrap()["booking_number"]
        .as_str()
        .unwrap()
        .to_string();

    let checked_in = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "ci-1", "guest_email": "stay.guest@example.com"}),
        )
        .await;
    assert_eq!(
        status(&checked_in),
        SagaStatus::Completed,
        "{:?}",
        checked_in.error
    );
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked In");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Occupied");

    let request = w
        .run(
            "submit_guest_service_request",
            json!({"idempotency_key": "sr-1", "guest_email": "stay.guest@example.com",
                   "room_number": room_number, "type": "Housekeeping", "priority": "Medium",
                   "description": "Two extra towels, please"}),
        )
        .await;
    assert_eq!(
        status(&request),
        SagaStatus::Completed,
        "{:?}",
        request.error
    );
    let cases = w
        .query(
            "search_cases",
            json!({"guest_email": "stay.guest@example.com"}),
        )
        .await;
    assert_eq!(cases["cases"][0]["subject"], "Two extra towels, please");

    let checkout = w
        .run(
            "process_guest_checkout",
            checkout_input("co-1", "stay.guest@example.com", "pm_card_visa"),
        )
        .await;
    assert_eq!(
        status(&checkout),
        SagaStatus::Completed,
        "{:?}",
        checkout.error
    );
    let out = checkout.output.clone().unwrap();
    let ledger = w.ledger().await;
    let rate = (room(&ledger, &room_number)["Nightly_Rate__c"]
        .as_f64()
        .unwrap()
        * 100.0)
        .round() as i64;
    assert_eq!(
        out["amount"].as_i64().unwrap(),
        2 * rate,
        "amount computed from the stay"
    );
    let payment = find(
        &ledger,
        "payment_intent",
        "id",
        out["payment_intent_id"].as_str().unwrap(),
    );
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked Out");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Cleaning");
    assert!(objects(&ledger, "Case")
        .iter()
        .any(|c| c["Type"] == "Housekeeping"
            && c["Subject"].as_str().unwrap_or("").contains(&room_number)));
    assert!(objects(&ledger, "message")
        .iter()
        .any(|m| m["body"].as_str().unwrap_or("").contains("receipt")));
    assert!(objects(&ledger, "Payment_Transaction__c")
        .iter()
        .any(|t| t["Stripe_Transaction_ID__c"] == payment["id"]));

    // A manager reverses it: refund, booking and room restored.
    let reversed = w
        .run(
            "compensate_checkout",
            json!({"idempotency_key": "cc-1", "guest_email": "stay.guest@example.com",
                   "booking_number": number, "reason": "guest charged in error"}),
        )
        .await;
    assert_eq!(
        status(&reversed),
        SagaStatus::Completed,
        "{:?}",
        reversed.error
    );
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked In");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Occupied");
    let refund = find(
        &ledger,
        "refund",
        "payment_intent",
        payment["id"].as_str().unwrap(),
    );
    assert_eq!(refund["amount"], payment["amount"]);
}

#[sqlx::test(migrations = false)]
async fn a_declined_card_at_checkout_changes_nothing_and_says_why(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let (email, number, room_number) = checked_in_stays(&ledger)[0].clone();
    let saga = w
        .run(
            "process_guest_checkout",
            checkout_input("co-declined", &email, "pm_card_chargeDeclined"),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Compensated);
    assert_eq!(error_code(&saga), "card_declined");
    assert!(saga
        .error
        .as_ref()
        .unwrap()
        .to_string()
        .contains("another payment method"));
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked In");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Occupied");
    assert!(objects(&ledger, "refund").is_empty());
    assert!(objects(&ledger, "payment_intent")
        .iter()
        .all(|p| p["status"] != "succeeded"));
}

#[sqlx::test(migrations = false)]
async fn a_failure_after_the_charge_refunds_it_and_restores_booking_and_room(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let (email, number, room_number) = checked_in_stays(&ledger)[0].clone();
    // The CRM answers 500 to the next 5 room updates: release_room exhausts its retries after
    // the charge. A 500 may have been applied, so release_room is possibly done and is undone
    // too, first (README, "Concepts").
    w.faults(
        json!({"error_rate": 1.0, "services": ["salesforce"], "method": "PATCH", "max_faults": 5,
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Hotel_Room__c"}),
    )
    .await;
    let saga = w
        .run(
            "process_guest_checkout",
            checkout_input("co-crm-down", &email, "pm_card_visa"),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Compensated, "{:?}", saga.error);
    assert_eq!(
        compensated_steps(&saga),
        [
            "release_room",
            "check_out_booking",
            "record_payment",
            "charge_payment"
        ],
        "undone in reverse order, the possibly done step first"
    );
    let ledger = w.ledger().await;
    let charge = objects(&ledger, "payment_intent")
        .into_iter()
        .find(|p| p["status"] == "succeeded")
        .unwrap();
    let refund = find(
        &ledger,
        "refund",
        "payment_intent",
        charge["id"].as_str().unwrap(),
    );
    assert_eq!(
        refund["amount"], charge["amount"],
        "the charge is refunded in full"
    );
    assert_eq!(
        booking(&ledger, &number)["Status__c"],
        "Checked In",
        "booking restored"
    );
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Occupied");
}

#[sqlx::test(migrations = false)]
async fn a_declined_deposit_cancels_the_booking_and_frees_the_room(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let room_number = free_vacant_rooms(&w.ledger().await, 30, 32)[0].clone();
    let mut input = booking_input("bk-declined", "decl@example.com", &room_number, 30, 32);
    input["payment_method_id"] = json!("pm_card_chargeDeclined");
    let saga = w.run("create_booking", input).await;
    assert_eq!(status(&saga), SagaStatus::Compensated);
    assert_eq!(error_code(&saga), "card_declined");
    assert_eq!(
        compensated_steps(&saga),
        ["create_booking_record", "create_opportunity", "hold_room"]
    );
    let ledger = w.ledger().await;
    let contact = find(&ledger, "Contact", "Email", "decl@example.com");
    let record = objects(&ledger, "Booking__c")
        .into_iter()
        .find(|b| b["Guest__c"] == contact["Id"])
        .unwrap();
    assert_eq!(record["Status__c"], "Cancelled");
    let opportunity = find(
        &ledger,
        "Opportunity",
        "Id",
        record["Opportunity__c"].as_str().unwrap(),
    );
    assert_eq!(opportunity["StageName"], "Closed Lost");
    assert!(w.hotel.holds.live(&room_number).await.unwrap().is_empty());
    // The room can be booked again for those nights.
    let again = w
        .run(
            "create_booking",
            booking_input("bk-again", "decl@example.com", &room_number, 30, 32),
        )
        .await;
    assert_eq!(status(&again), SagaStatus::Completed, "{:?}", again.error);
}

#[sqlx::test(migrations = false)]
async fn a_declined_upgrade_payment_moves_the_guest_back(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let rooms = free_vacant_rooms(&ledger, 20, 22);
    let booked = w
        .run(
            "create_booking",
            booking_input("bk-up", "up@example.com", &rooms[0], 20, 22),
        )
        .await;
    let number = booked.output.as_ref().unwrap()["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let saga = w
        .run(
            "upgrade_room",
            json!({"idempotency_key": "up-declined", "guest_email": "up@example.com", "booking_number": number,
                   "new_room_number": rooms.last().unwrap(), "payment_method_id": "pm_card_chargeDeclined"}),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Compensated);
    assert_eq!(compensated_steps(&saga), ["move_booking", "hold_new_room"]);
    let ledger = w.ledger().await;
    assert_eq!(
        booking(&ledger, &number)["Hotel_Room__c"],
        room(&ledger, &rooms[0])["Id"],
        "moved back"
    );
    assert!(w
        .hotel
        .holds
        .live(rooms.last().unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        w.hotel.holds.live(&rooms[0]).await.unwrap().len(),
        1,
        "original room still held"
    );
}

#[sqlx::test(migrations = false)]
async fn failures_midway_undo_extensions_changes_check_ins_and_cancellations(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let room_number = free_vacant_rooms(&ledger, 0, 12)[0].clone();
    let mut input = booking_input("bk-f", "mid@example.com", &room_number, 0, 3);
    input["payment_method_id"] = json!("pm_card_visa");
    let booked = w.run("create_booking", input).await;
    let number = booked.output.as_ref().unwrap()["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let bookings_path = "/salesforce/services/data/v60.0/sobjects/Booking__c";

    // extend_stay: the booking update fails (500, 5 times: every attempt); the update is
    // possibly done, so it is written back, and the extra nights' hold is released.
    let booking_updates_fail = json!({"error_rate": 1.0, "services": ["salesforce"],
                                      "method": "PATCH", "max_faults": 5,
                                      "path_prefix": bookings_path});
    w.faults(booking_updates_fail.clone()).await;
    let extend = w
        .run(
            "extend_stay",
            json!({"idempotency_key": "ex-f", "guest_email": "mid@example.com",
                                    "booking_number": number, "new_check_out_date": day(5)}),
        )
        .await;
    assert_eq!(status(&extend), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&extend),
        ["update_check_out", "hold_extra_nights"]
    );
    assert_eq!(
        w.hotel.holds.live(&room_number).await.unwrap().len(),
        1,
        "only the stay itself"
    );

    // manage_booking: same fault; the old dates are held again.
    w.faults(booking_updates_fail).await;
    let manage = w
        .run("manage_booking", json!({"idempotency_key": "mg-f", "guest_email": "mid@example.com",
                                       "booking_number": number, "check_in_date": day(1), "check_out_date": day(4)}))
        .await;
    assert_eq!(
        status(&manage),
        SagaStatus::Compensated,
        "{:?}",
        manage.error
    );
    assert_eq!(
        compensated_steps(&manage),
        ["update_booking", "hold_new_dates"]
    );
    let holds = w.hotel.holds.live(&room_number).await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].1, today(), "the original nights are held again");

    // cancel_booking: the payments API is down for refunds; the booking is restored.
    w.faults(
        json!({"error_rate": 1.0, "services": ["stripe"], "path_prefix": "/stripe/v1/refunds"}),
    )
    .await;
    let cancel = w
        .run("cancel_booking", json!({"idempotency_key": "cx-f", "guest_email": "mid@example.com", "booking_number": number}))
        .await;
    assert_eq!(status(&cancel), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&cancel),
        [
            "mark_payments_refunded",
            "release_room",
            "cancel_booking_record"
        ]
    );
    assert_eq!(
        w.hotel.holds.live(&room_number).await.unwrap().len(),
        1,
        "the room is held again"
    );
    assert_eq!(booking(&w.ledger().await, &number)["Status__c"], "Reserved");

    // check_in_guest: the room cannot be updated (5 times 500); the room update is possibly
    // done and written back, and the booking goes back to Reserved.
    w.faults(
        json!({"error_rate": 1.0, "services": ["salesforce"], "method": "PATCH", "max_faults": 5,
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Hotel_Room__c"}),
    )
    .await;
    let check_in = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "ci-f", "guest_email": "mid@example.com"}),
        )
        .await;
    assert_eq!(status(&check_in), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&check_in),
        ["occupy_room", "check_in_booking"]
    );
    w.clear_faults().await;
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Reserved");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Vacant");
}

#[sqlx::test(migrations = false)]
async fn check_in_refuses_unknown_guests_missing_reservations_and_busy_rooms(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let unknown = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "ci-u", "guest_email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(error_code(&unknown), "guest_not_found");
    let (email, _, _) = checked_in_stays(&w.ledger().await)[0].clone();
    let none = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "ci-n", "guest_email": email, "check_in_date": day(90)}),
        )
        .await;
    assert_eq!(error_code(&none), "reservation_not_found");
    assert_eq!(status(&none), SagaStatus::Compensated);
}

#[sqlx::test(migrations = false)]
async fn urgent_maintenance_takes_the_room_out_and_texts_a_vendor(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let room_number = rooms_in(&w.ledger().await, "Vacant")[0].clone();
    let saga = w
        .run(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-1", "room_number": room_number, "type": "Plumbing",
                   "priority": "Urgent", "description": "Water leaking under the sink",
                   "reported_by": "manager@dewy.example"}),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Completed, "{:?}", saga.error);
    let ledger = w.ledger().await;
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Maintenance");
    let vendor_id = saga.output.as_ref().unwrap()["vendor"]["vendor_id"]
        .as_str()
        .unwrap()
        .to_string();
    let vendor = find(&ledger, "Contact", "Id", &vendor_id);
    assert!(
        objects(&ledger, "message")
            .iter()
            .any(|m| m["to"] == vendor["Phone"]
                && m["body"].as_str().unwrap_or("").contains("URGENT"))
    );

    // The SMS service is down: a leaking room stays out of use and its case open; the
    // output says the vendor could not be texted.
    let other = rooms_in(&ledger, "Vacant")[0].clone();
    w.faults(json!({"error_rate": 1.0, "services": ["twilio"]}))
        .await;
    let unsent = w
        .run(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-2", "room_number": other, "type": "Electrical",
                   "priority": "Urgent", "description": "Sparks from the outlet"}),
        )
        .await;
    assert_eq!(status(&unsent), SagaStatus::Completed, "{:?}", unsent.error);
    assert_eq!(
        unsent.output.as_ref().unwrap()["vendor"]["sms"]["sent"],
        false
    );
    assert_eq!(room(&w.ledger().await, &other)["Status__c"], "Maintenance");

    // The CRM answers 500 to room updates (every attempt): the room update is possibly done,
    // so the room is set back to the status read first, and the case opened for it is closed.
    let third = rooms_in(&w.ledger().await, "Vacant")[0].clone();
    w.faults(
        json!({"error_rate": 1.0, "services": ["salesforce"], "method": "PATCH", "max_faults": 5,
                    "path_prefix": "/salesforce/services/data/v60.0/sobjects/Hotel_Room__c"}),
    )
    .await;
    let failed = w
        .run(
            "submit_maintenance_request",
            json!({"idempotency_key": "mt-3", "room_number": third, "type": "HVAC",
                   "priority": "Urgent", "description": "No heating"}),
        )
        .await;
    assert_eq!(status(&failed), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&failed),
        ["set_room_maintenance", "create_repair_task", "open_case"]
    );
    w.clear_faults().await;
    let ledger = w.ledger().await;
    assert_eq!(room(&ledger, &third)["Status__c"], "Vacant");
    let case_id = failed.steps[1].output.as_ref().unwrap()["case_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(find(&ledger, "Case", "Id", &case_id)["Status"], "Closed");
}

#[sqlx::test(migrations = false)]
async fn room_status_moves_only_along_legal_transitions(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let cleaning = rooms_in(&ledger, "Cleaning")[0].clone();
    let ok = w
        .run(
            "update_room_status",
            json!({"idempotency_key": "rs-1", "room_number": cleaning, "status": "Vacant"}),
        )
        .await;
    assert_eq!(status(&ok), SagaStatus::Completed, "{:?}", ok.error);
    assert_eq!(room(&w.ledger().await, &cleaning)["Status__c"], "Vacant");

    let occupied = rooms_in(&ledger, "Occupied")[0].clone();
    let refused = w
        .run(
            "update_room_status",
            json!({"idempotency_key": "rs-2", "room_number": occupied, "status": "Vacant"}),
        )
        .await;
    assert_eq!(error_code(&refused), "illegal_transition");
    assert!(refused
        .error
        .as_ref()
        .unwrap()
        .to_string()
        .contains("process_guest_checkout"));
    assert_eq!(room(&w.ledger().await, &occupied)["Status__c"], "Occupied");
}

#[sqlx::test(migrations = false)]
async fn contacts_are_found_by_email_or_created_once(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let input = json!({"idempotency_key": "uc-1", "email": "Vendor.New@Example.com", "first_name": "Vera",
                       "last_name": "Nguyen", "contact_type": "Vendor", "phone": "+15550109999"});
    let created = w.run("upsert_contact", input).await;
    assert_eq!(created.output.as_ref().unwrap()["created"], true);
    let found = w
        .run(
            "upsert_contact",
            json!({"idempotency_key": "uc-2", "email": "vendor.new@example.com",
                                       "first_name": "Vera", "last_name": "Nguyen"}),
        )
        .await;
    assert_eq!(found.output.as_ref().unwrap()["created"], false);
    assert_eq!(
        found.output.as_ref().unwrap()["contact_id"],
        created.output.as_ref().unwrap()["contact_id"]
    );
    let ledger = w.ledger().await;
    assert_eq!(
        objects(&ledger, "Contact")
            .iter()
            .filter(|c| c["Email"] == "vendor.new@example.com")
            .count(),
        1
    );
}

#[sqlx::test(migrations = false)]
async fn search_rooms_filters_by_status_and_floor(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let all = w.query("search_rooms", json!({"limit": 100})).await;
    assert_eq!(all["rooms"].as_array().unwrap().len(), 22);
    let vacant = w.query("search_rooms", json!({"status": "Vacant"})).await;
    let rooms = vacant["rooms"].as_array().unwrap();
    assert!(!rooms.is_empty());
    assert!(rooms
        .iter()
        .all(|r| r["status"] == "Vacant" && r["nightly_rate"].as_i64().unwrap() > 0));
    let floor = w
        .query("search_rooms", json!({"floor": 2, "limit": 100}))
        .await;
    assert!(floor["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["floor"] == 2));
}

#[sqlx::test(migrations = false)]
async fn a_checkout_reversal_whose_refund_fails_leaves_the_stay_checked_out(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let (email, number, room_number) = checked_in_stays(&w.ledger().await)[0].clone();
    let checkout = w
        .run(
            "process_guest_checkout",
            checkout_input("co-r", &email, "pm_card_visa"),
        )
        .await;
    assert_eq!(
        status(&checkout),
        SagaStatus::Completed,
        "{:?}",
        checkout.error
    );
    w.faults(
        json!({"error_rate": 1.0, "services": ["stripe"], "path_prefix": "/stripe/v1/refunds"}),
    )
    .await;
    let reversal = w
        .run(
            "compensate_checkout",
            json!({"idempotency_key": "cc-r", "guest_email": email, "booking_number": number,
                   "reason": "disputed minibar"}),
        )
        .await;
    assert_eq!(status(&reversal), SagaStatus::Compensated);
    assert_eq!(
        compensated_steps(&reversal),
        ["mark_payment_refunded", "reoccupy_room", "reopen_booking"]
    );
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked Out");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Cleaning");
    assert!(objects(&ledger, "refund").is_empty());
}

#[sqlx::test(migrations = false)]
async fn service_requests_are_only_for_the_guests_own_room(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let stays = checked_in_stays(&ledger);
    let (email, _, _) = stays[0].clone();
    let (_, _, someone_elses_room) = stays[1].clone();
    let cases_before = objects(&ledger, "Case").len();
    let saga = w
        .run(
            "submit_guest_service_request",
            json!({"idempotency_key": "sr-x", "guest_email": email, "room_number": someone_elses_room,
                   "type": "Room Service", "priority": "Low", "description": "Breakfast for two"}),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Compensated);
    assert_eq!(error_code(&saga), "not_staying_in_room");
    assert_eq!(
        objects(&w.ledger().await, "Case").len(),
        cases_before,
        "no case opened"
    );
}

#[sqlx::test(migrations = false)]
async fn a_contact_upsert_during_a_crm_outage_retries_then_reports_the_outage(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let w = World::new(pool).await;
    w.faults(json!({"error_rate": 1.0, "services": ["salesforce"]}))
        .await;
    let saga = w
        .run(
            "upsert_contact",
            json!({"idempotency_key": "uc-down", "email": "down@example.com", "first_name": "Dee",
                   "last_name": "Down"}),
        )
        .await;
    assert_eq!(status(&saga), SagaStatus::Compensated);
    assert_eq!(error_code(&saga), "crm_unavailable");
    assert_eq!(
        saga.steps[0].attempts, 5,
        "retried with backoff before giving up"
    );
    w.clear_faults().await;
    let ledger = w.ledger().await;
    assert!(objects(&ledger, "Contact")
        .iter()
        .all(|c| c["Email"] != "down@example.com"));
}

/// The output a saga's step recorded.
fn step_output(detail: &stepwise_engine::SagaDetail, step: &str) -> Value {
    detail
        .steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.output.clone())
        .unwrap_or_else(|| panic!("step {step} recorded an output"))
}

/// Books `room` from `from` to `to` (days from the UTC date) with a deposit, cancels it, and
/// answers the cancellation and the deposit's refunds.
async fn book_with_deposit_and_cancel(
    w: &World,
    key: &str,
    room: &str,
    from: i64,
    to: i64,
) -> (stepwise_engine::SagaDetail, i64, Vec<i64>) {
    let email = format!("{key}@example.com");
    let mut input = booking_input(&format!("{key}-book"), &email, room, from, to);
    input["payment_method_id"] = json!("pm_card_visa");
    let booked = w.run("create_booking", input).await;
    assert_eq!(status(&booked), SagaStatus::Completed, "{:?}", booked.error);
    let out = booked.output.unwrap();
    let deposit = out["deposit_amount"].as_i64().unwrap();
    let intent = out["deposit_payment_intent_id"].clone();
    let cancelled = w
        .run(
            "cancel_booking",
            json!({"idempotency_key": format!("{key}-cancel"), "guest_email": email,
                   "booking_number": out["booking_number"]}),
        )
        .await;
    assert_eq!(
        status(&cancelled),
        SagaStatus::Completed,
        "{:?}",
        cancelled.error
    );
    let refunds = objects(&w.ledger().await, "refund")
        .into_iter()
        .filter(|r| r["payment_intent"] == intent)
        .map(|r| r["amount"].as_i64().unwrap())
        .collect();
    (cancelled, deposit, refunds)
}

// The hotel's "today" is the date on its own wall, from the engine's clock: at 03:00 UTC a hotel
// in Los Angeles (STEPWISE_HOTEL_TZ=America/Los_Angeles) is still on the evening before.
#[sqlx::test(migrations = false)]
async fn check_in_and_cancellation_policy_use_the_hotels_local_date(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let utc_date = today();
    let three_am_utc = utc_date.and_hms_opt(3, 0, 0).unwrap().and_utc();
    let local_date = utc_date.pred_opt().unwrap();
    let w = World::in_time_zone(pool, "America/Los_Angeles", three_am_utc).await;
    let ledger = w.ledger().await;
    let rooms = free_vacant_rooms(&ledger, -1, 6);
    assert!(rooms.len() >= 3, "free rooms: {rooms:?}");

    // A reservation arriving on the local date checks in without a date given: UTC's date
    // would find no reservation arriving "today".
    let booked = w
        .run(
            "create_booking",
            booking_input("tz-stay", "tz.stay@example.com", &rooms[0], -1, 1),
        )
        .await;
    assert_eq!(status(&booked), SagaStatus::Completed, "{:?}", booked.error);
    let checked_in = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "tz-ci", "guest_email": "tz.stay@example.com"}),
        )
        .await;
    assert_eq!(
        status(&checked_in),
        SagaStatus::Completed,
        "{:?}",
        checked_in.error
    );
    assert_eq!(
        step_output(&checked_in, "find_reservation")["check_in_date"],
        local_date.to_string(),
        "the default date is recorded"
    );
    assert_eq!(
        checked_in.output.unwrap()["check_in_date"],
        local_date.to_string()
    );

    // Arrival on UTC's tomorrow is two local days away: the deposit comes back in full.
    let (cancelled, deposit, refunds) =
        book_with_deposit_and_cancel(&w, "tz-early", &rooms[1], 1, 3).await;
    let loaded = step_output(&cancelled, "load_booking");
    assert_eq!(loaded["today"], local_date.to_string());
    assert!(
        loaded["policy"].as_str().unwrap().contains("in full"),
        "{loaded}"
    );
    assert_eq!(refunds, vec![deposit]);

    // Nine hours later Los Angeles has reached UTC's date: the same arrival is one day away,
    // and half the deposit comes back.
    w.clock
        .set(utc_date.and_hms_opt(12, 0, 0).unwrap().and_utc());
    let (cancelled, deposit, refunds) =
        book_with_deposit_and_cancel(&w, "tz-late", &rooms[2], 1, 3).await;
    assert_eq!(
        step_output(&cancelled, "load_booking")["today"],
        utc_date.to_string()
    );
    assert_eq!(refunds, vec![deposit / 2]);
}
