//! The front desk through the real `stepwise mcp` binary over stdio, against the sandbox:
//! availability by dates, a guest's own bookings, case management and fair bills.
#![allow(clippy::unwrap_used)]

mod common;
mod desk_support;
mod hotel_support;

use common::database_url;
use desk_support::{call, error_of, is_error, structured, Desk};
use hotel_support::{day, objects, room};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use stepwise_skills::hotel::holds::{Holds, NewHold};

async fn desk(pool: PgPool) -> Desk {
    let url = database_url(&pool).await;
    Desk::open(pool, url).await
}

fn room_numbers(rooms: &Value) -> BTreeSet<String> {
    rooms
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_number"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn search_rooms_by_dates_leaves_out_held_booked_and_out_of_order_rooms(pool: PgPool) {
    let desk = desk(pool).await;
    let ledger = desk.ledger().await;
    let guest = desk.client("guest:ada@example.com").await;

    // Nights +14 to +17: room 304 is reserved then (the seed), 102 is held by a booking still
    // being made, 205 and 404 are under maintenance and 305 out of service.
    let night = |n| chrono::NaiveDate::parse_from_str(&day(n), "%Y-%m-%d").unwrap();
    Holds::new(desk.pool.clone())
        .take(&NewHold {
            hold_key: "test/hold",
            booking_ref: "test-booking",
            room_number: "102",
            from: night(15),
            to: night(16),
            saga_id: uuid::Uuid::now_v7(),
        })
        .await
        .unwrap();
    let found = call(
        &guest,
        "search_rooms",
        json!({"check_in_date": day(14), "check_out_date": day(17), "number_of_guests": 2, "limit": 100}),
    )
    .await;
    assert!(!is_error(&found), "{found:?}");
    let s = structured(&found);
    assert_eq!(s["nights"], 3);
    let numbers = room_numbers(&s["rooms"]);
    for absent in ["304", "102", "205", "404", "305"] {
        assert!(!numbers.contains(absent), "{absent} in {numbers:?}");
    }
    // Rooms occupied today but free by then are offered.
    assert!(numbers.contains("104"), "{numbers:?}");
    for offered in s["rooms"].as_array().unwrap() {
        let rate = offered["nightly_rate"].as_i64().unwrap();
        assert_eq!(
            offered["total_price"].as_i64().unwrap(),
            3 * rate,
            "{offered}"
        );
        assert!(offered["max_occupancy"].as_i64().unwrap() >= 2, "{offered}");
        let crm = room(&ledger, offered["room_number"].as_str().unwrap());
        assert_eq!(
            (crm["Nightly_Rate__c"].as_f64().unwrap() * 100.0).round() as i64,
            rate
        );
    }

    // Type and price filters.
    let suites = call(
        &guest,
        "search_rooms",
        json!({"check_in_date": day(14), "check_out_date": day(17), "room_type": "Suite"}),
    )
    .await;
    let suites = structured(&suites);
    assert!(suites["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["room_type"] == "Suite"));
    assert!(!room_numbers(&suites["rooms"]).contains("304"));
    let cheap = call(
        &guest,
        "search_rooms",
        json!({"check_in_date": day(14), "check_out_date": day(17), "max_nightly_rate": 15000}),
    )
    .await;
    let cheap = structured(&cheap);
    assert!(!cheap["rooms"].as_array().unwrap().is_empty());
    assert!(cheap["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["nightly_rate"].as_i64().unwrap() <= 15000));

    // Without dates, today's view as before (no prices).
    let today = structured(&call(&guest, "search_rooms", json!({"status": "Maintenance"})).await);
    assert_eq!(
        room_numbers(&today["rooms"]),
        BTreeSet::from(["205".into(), "404".into()])
    );
    assert!(today["rooms"][0].get("total_price").is_none());

    // Bad dates name the field.
    for (args, field) in [
        (
            json!({"check_in_date": day(-1), "check_out_date": day(2)}),
            "check_in_date",
        ),
        (
            json!({"check_in_date": day(5), "check_out_date": day(3)}),
            "check_out_date",
        ),
        (
            json!({"check_in_date": day(1), "check_out_date": day(32)}),
            "check_out_date",
        ),
        (json!({"check_in_date": day(1)}), "check_out_date"),
    ] {
        let refused = call(&guest, "search_rooms", args.clone()).await;
        let error = error_of(&refused);
        assert_eq!(error["code"], "invalid_input", "{args}: {error}");
        assert_eq!(error["field"], field, "{args}: {error}");
        assert!(error["action"].is_string(), "{error}");
    }
    assert!(objects(&ledger, "Hotel_Room__c").len() >= 20);
    guest.cancel().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_guest_lists_only_her_bookings_and_cannot_read_another_guests(pool: PgPool) {
    let desk = desk(pool).await;
    let ledger = desk.ledger().await;
    let email = "lucas.jackson@example.com";
    let contact = hotel_support::find(&ledger, "Contact", "Email", email);
    let hers: BTreeSet<String> = objects(&ledger, "Booking__c")
        .into_iter()
        .filter(|b| b["Guest__c"] == contact["Id"])
        .map(|b| b["Name"].as_str().unwrap().to_string())
        .collect();
    let other = objects(&ledger, "Booking__c")
        .into_iter()
        .find(|b| b["Guest__c"] != contact["Id"])
        .unwrap();
    let other_number = other["Name"].as_str().unwrap();
    let other_email = hotel_support::email_of(&ledger, other["Guest__c"].as_str().unwrap());

    let guest = desk.client(&format!("guest:{email}")).await;
    let listed = call(&guest, "list_bookings", json!({})).await;
    assert!(!is_error(&listed), "{listed:?}");
    let bookings = structured(&listed)["bookings"].as_array().unwrap().clone();
    let numbers: BTreeSet<String> = bookings
        .iter()
        .map(|b| b["booking_number"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(numbers, hers);
    assert!(bookings.iter().all(|b| b["guest_email"] == email));
    let check_ins: Vec<&str> = bookings
        .iter()
        .map(|b| b["check_in_date"].as_str().unwrap())
        .collect();
    let mut newest_first = check_ins.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(check_ins, newest_first);
    let stays: BTreeSet<&str> = bookings
        .iter()
        .map(|b| b["stay"].as_str().unwrap())
        .collect();
    assert!(
        stays.contains("upcoming") && stays.contains("past"),
        "{stays:?}"
    );
    for b in &bookings {
        let expected = match b["status"].as_str().unwrap() {
            "Reserved" => "upcoming",
            "Checked In" => "in_house",
            _ => "past",
        };
        assert_eq!(b["stay"], expected, "{b}");
    }

    // Another guest's bookings: refused by email, invisible by number.
    let refused = call(&guest, "list_bookings", json!({"guest_email": other_email})).await;
    let error = error_of(&refused);
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["field"], "guest_email");
    let by_number = call(
        &guest,
        "list_bookings",
        json!({"booking_number": other_number}),
    )
    .await;
    assert_eq!(structured(&by_number)["bookings"], json!([]));
    let read = call(
        &guest,
        "get_booking",
        json!({"booking_number": other_number}),
    )
    .await;
    assert_eq!(error_of(&read)["code"], "booking_not_found");
    // Every hotel error says what to do next (skills/src/hotel/errors.rs).
    assert!(
        error_of(&read)["action"]
            .as_str()
            .is_some_and(|a| a.contains("list_bookings")),
        "{read:?}"
    );
    assert!(error_of(&refused)["action"].is_string(), "{refused:?}");
    guest.cancel().await.unwrap();

    // Staff find any guest's by email or booking number, and must give one of them.
    let staff = desk.client("staff:frontdesk@dewy.example").await;
    let found = call(
        &staff,
        "list_bookings",
        json!({"booking_number": other_number}),
    )
    .await;
    let found = structured(&found)["bookings"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["guest_email"], other_email.to_lowercase());
    let by_email = call(&staff, "list_bookings", json!({"guest_email": email})).await;
    assert_eq!(
        structured(&by_email)["bookings"].as_array().unwrap().len(),
        hers.len()
    );
    let neither = call(&staff, "list_bookings", json!({})).await;
    assert_eq!(error_of(&neither)["field"], "guest_email");
    staff.cancel().await.unwrap();
}

async fn set_faults(desk: &Desk, faults: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", desk.sandbox.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

fn case_number_of(ledger: &Value, external_id: &str) -> String {
    hotel_support::find(ledger, "Case", "External_ID__c", external_id)["CaseNumber"]
        .as_str()
        .unwrap()
        .to_string()
}

#[sqlx::test(migrations = false)]
async fn cases_are_worked_through_legal_moves_and_guests_only_add_notes_to_their_own(pool: PgPool) {
    let desk = desk(pool).await;
    let email = "olivia.brown@example.com";
    let guest = desk.client(&format!("guest:{email}")).await;
    let opened = call(
        &guest,
        "submit_guest_service_request",
        json!({"room_number": "203", "type": "Amenities", "priority": "Low",
               "description": "A kettle, please.", "idempotency_key": "case-open-1"}),
    )
    .await;
    let opened = structured(&opened);
    assert_eq!(opened["status"], "completed", "{opened}");
    let number = opened["output"]["case_number"]
        .as_str()
        .unwrap()
        .to_string();

    // The guest adds a note to her case; search_cases shows it.
    let noted = call(
        &guest,
        "manage_case",
        json!({"case_number": number, "note": "Black tea too, if possible.", "idempotency_key": "case-note-1"}),
    )
    .await;
    let noted = structured(&noted);
    assert_eq!(noted["status"], "completed", "{noted}");
    assert!(noted["output"]["note_id"].is_string(), "{noted}");
    let mine = structured(&call(&guest, "search_cases", json!({})).await);
    let case = mine["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case_number"] == number.as_str())
        .unwrap()
        .clone();
    assert_eq!(case["notes"][0]["note"], "Black tea too, if possible.");
    assert_eq!(case["notes"][0]["author"], email);

    // Guests may not change a case, nor touch another's.
    let changed = call(
        &guest,
        "manage_case",
        json!({"case_number": number, "status": "Working", "idempotency_key": "case-g-2"}),
    )
    .await;
    assert_eq!(error_of(&changed)["field"], "guest_email");
    let ledger = desk.ledger().await;
    let leak = case_number_of(&ledger, "seed-case-1");
    let other = call(
        &guest,
        "manage_case",
        json!({"case_number": leak, "note": "hello", "idempotency_key": "case-g-3"}),
    )
    .await;
    assert_eq!(error_of(&other)["code"], "case_not_found");
    guest.cancel().await.unwrap();

    let staff = desk.client("staff:frontdesk@dewy.example").await;
    // An illegal move is refused with the field named, and nothing changes.
    let illegal = call(
        &staff,
        "manage_case",
        json!({"case_number": number, "status": "Closed", "note": "done", "idempotency_key": "case-s-1"}),
    )
    .await;
    let error = error_of(&illegal);
    assert_eq!(error["code"], "illegal_case_status", "{error}");
    assert_eq!(error["field"], "status", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("Working"),
        "{error}"
    );
    assert!(
        error["action"].as_str().unwrap().contains("Working"),
        "{error}"
    );

    // A failure after the note was added removes the note again. The case update gets 500 on
    // every attempt (5): it is possibly done, so the case is written back first.
    set_faults(
        &desk,
        json!({"error_rate": 1.0, "services": ["salesforce"], "method": "PATCH", "max_faults": 5,
               "path_prefix": "/salesforce/services/data/v60.0/sobjects/Case/"}),
    )
    .await;
    let failed = call(
        &staff,
        "manage_case",
        json!({"case_number": number, "status": "Working", "note": "on it", "idempotency_key": "case-s-2"}),
    )
    .await;
    let failed = structured(&failed);
    assert_eq!(failed["status"], "compensated", "{failed}");
    assert!(
        failed["error"]["undone"].to_string().contains("add_note"),
        "{failed}"
    );
    set_faults(&desk, json!({})).await;
    let ledger = desk.ledger().await;
    let notes = objects(&ledger, "Case_Note__c");
    assert_eq!(notes.len(), 1, "only the guest's note stands: {notes:?}");
    let case_id = hotel_support::find(&ledger, "Case", "CaseNumber", &number)["Id"].clone();
    assert_eq!(
        hotel_support::find(&ledger, "Case", "Id", case_id.as_str().unwrap())["Status"],
        "New"
    );

    // New -> Working (with a priority) -> Resolved -> Closed.
    for (i, (args, status)) in [
        (json!({"status": "Working", "priority": "High"}), "Working"),
        (
            json!({"status": "Resolved", "note": "Kettle and tea delivered."}),
            "Resolved",
        ),
        (json!({"status": "Closed"}), "Closed"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = args;
        args["case_number"] = json!(number);
        args["idempotency_key"] = json!(format!("case-move-{i}"));
        let moved = structured(&call(&staff, "manage_case", args).await);
        assert_eq!(moved["status"], "completed", "{moved}");
        assert_eq!(moved["output"]["status"], status, "{moved}");
    }
    let ledger = desk.ledger().await;
    let case = hotel_support::find(&ledger, "Case", "CaseNumber", &number);
    assert_eq!(case["Status"], "Closed");
    assert_eq!(case["Priority"], "High");

    // Escalating a case being worked on texts the manager on duty.
    let escalated = structured(
        &call(
            &staff,
            "manage_case",
            json!({"case_number": leak, "escalate": true, "idempotency_key": "case-esc-1"}),
        )
        .await,
    );
    assert_eq!(escalated["status"], "completed", "{escalated}");
    assert_eq!(escalated["output"]["status"], "Escalated");
    assert_eq!(escalated["output"]["escalated_to"], "manager@dewy.example");
    assert_eq!(escalated["output"]["manager_texted"], true);
    let ledger = desk.ledger().await;
    let texts: Vec<Value> = objects(&ledger, "message")
        .into_iter()
        .filter(|m| m["to"] == "+14155550190")
        .collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0]["body"].as_str().unwrap().contains(&leak));
    staff.cancel().await.unwrap();
}

/// A bill line as (kind, room_number, nights, nightly_rate, amount).
type BillLineShape = (String, Option<String>, Option<i64>, Option<i64>, i64);

/// Writes straight to the sandbox's CRM (the hotel's external system), as the hotel's own
/// staff would in Salesforce: `PATCH` a record, or `POST` a new one when `id` is None.
async fn crm_write(desk: &Desk, sobject: &str, id: Option<&str>, fields: Value) {
    let base = format!(
        "{}/salesforce/services/data/v60.0/sobjects/{sobject}",
        desk.sandbox.base_url()
    );
    let http = reqwest::Client::new();
    let request = match id {
        Some(id) => http.patch(format!("{base}/{id}")),
        None => http.post(base),
    };
    let response = request
        .bearer_auth("test")
        .json(&fields)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

#[sqlx::test(migrations = false)]
async fn a_three_night_stay_upgraded_on_night_two_is_billed_per_segment(pool: PgPool) {
    let desk = desk(pool).await;
    let staff = desk.client("staff:frontdesk@dewy.example").await;
    let email = "ada.bill@example.com";
    // Room 103 (Standard, $129.00) for three nights with a one-night deposit, checked in.
    let booked = call(
        &staff,
        "create_booking",
        json!({"idempotency_key": "bill-book", "guest_email": email, "guest_first_name": "Ada",
               "guest_last_name": "Bill", "guest_phone": "+15550107777", "room_number": "103",
               "check_in_date": day(0), "check_out_date": day(3), "payment_method_id": "pm_card_visa"}),
    )
    .await;
    assert!(!is_error(&booked), "{booked:?}");
    let number = structured(&booked)["output"]["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let checked_in = call(
        &staff,
        "check_in_guest",
        json!({"idempotency_key": "bill-in", "guest_email": email, "booking_number": number}),
    )
    .await;
    assert!(!is_error(&checked_in), "{checked_in:?}");

    // The guest arrived yesterday (the CRM says so): today is night 2 of 3. A minibar charge.
    let ledger = desk.ledger().await;
    let booking = hotel_support::booking(&ledger, &number);
    let booking_id = booking["Id"].as_str().unwrap();
    crm_write(
        &desk,
        "Booking__c",
        Some(booking_id),
        json!({"Check_In_Date__c": day(-1), "Check_Out_Date__c": day(2)}),
    )
    .await;
    crm_write(
        &desk,
        "Payment_Transaction__c",
        None,
        json!({"Booking__c": booking_id, "Amount__c": 45.0, "Type__c": "Charge", "Status__c": "Pending"}),
    )
    .await;

    // Night 2: upgraded to room 204 (Deluxe, $189.00), the difference paid for two nights.
    let upgraded = call(
        &staff,
        "upgrade_room",
        json!({"idempotency_key": "bill-up", "guest_email": email, "booking_number": number,
               "new_room_number": "204", "payment_method_id": "pm_card_visa"}),
    )
    .await;
    assert!(!is_error(&upgraded), "{upgraded:?}");
    assert_eq!(structured(&upgraded)["output"]["amount"], 2 * 6_000);

    let out = call(
        &staff,
        "process_guest_checkout",
        json!({"idempotency_key": "bill-out", "guest_email": email, "payment_method_id": "pm_card_visa"}),
    )
    .await;
    assert!(!is_error(&out), "{out:?}");
    let output = structured(&out)["output"].clone();
    let lines = output["lines"].as_array().unwrap().clone();
    let shape: Vec<BillLineShape> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["room_number"].as_str().map(str::to_string),
                l["nights"].as_i64(),
                l["nightly_rate"].as_i64(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                "nights".into(),
                Some("103".into()),
                Some(1),
                Some(12_900),
                12_900
            ),
            (
                "nights".into(),
                Some("204".into()),
                Some(2),
                Some(18_900),
                37_800
            ),
            ("extra".into(), None, None, None, 4_500),
            ("deposit".into(), None, None, None, -12_900),
            ("deposit".into(), None, None, None, -12_000),
        ],
        "{output}"
    );
    // Every night at the new rate would have been 3 x $189.00; the fair bill is $507.00 of
    // nights plus the extra.
    assert_eq!(output["total"], 12_900 + 37_800 + 4_500);
    assert_eq!(output["amount"], 12_900 + 37_800 + 4_500 - 12_900 - 12_000);
    assert_eq!(output["nights"], 3);
    let ledger = desk.ledger().await;
    let charged = objects(&ledger, "payment_intent")
        .into_iter()
        .find(|p| p["id"] == output["payment_intent_id"])
        .unwrap();
    assert_eq!(charged["amount"], output["amount"]);
    // The receipt says the total and the nights per room.
    let receipt = objects(&ledger, "message")
        .into_iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .find(|b| b.contains("receipt") && b.contains(&number))
        .unwrap();
    assert!(receipt.contains("total $552.00"), "{receipt}");
    assert!(
        receipt.contains("1 night in room 103 at $129.00, 2 nights in room 204 at $189.00"),
        "{receipt}"
    );
    assert!(receipt.contains("Charged now $303.00"), "{receipt}");
    staff.cancel().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_booking_not_checked_in_by_the_cutoff_becomes_a_no_show(pool: PgPool) {
    // The hotel's cutoff a few seconds from now (UTC), so the binary's own clock crosses it.
    let now = chrono::Utc::now();
    // Whole seconds, as the variable gives it.
    let cutoff =
        chrono::DateTime::from_timestamp((now + chrono::Duration::seconds(8)).timestamp(), 0)
            .unwrap();
    if cutoff.date_naive() != now.date_naive() {
        eprintln!("skipped: the cutoff would fall on tomorrow (run again after midnight UTC)");
        return;
    }
    let desk = desk(pool).await;
    let cutoff_text = cutoff.format("%H:%M:%S").to_string();
    let staff = desk
        .client_with(
            "staff:frontdesk@dewy.example",
            &[
                ("STEPWISE_NO_SHOW_CUTOFF", cutoff_text.as_str()),
                ("STEPWISE_HOTEL_TZ", "UTC"),
            ],
        )
        .await;
    let email = "nico.noshow@example.com";
    let booked = call(
        &staff,
        "create_booking",
        json!({"idempotency_key": "ns-book", "guest_email": email, "guest_first_name": "Nico",
               "guest_last_name": "Noshow", "room_number": "103", "check_in_date": day(0),
               "check_out_date": day(2), "payment_method_id": "pm_card_visa"}),
    )
    .await;
    assert!(!is_error(&booked), "{booked:?}");
    let number = structured(&booked)["output"]["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let status = || async {
        hotel_support::booking(&desk.ledger().await, &number)["Status__c"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status().await, "Reserved");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while status().await != "No Show" {
        assert!(
            std::time::Instant::now() < deadline,
            "booking {number} is still {} after the cutoff",
            status().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(chrono::Utc::now() >= cutoff);
    // The guest's list shows it as past; the one-night deposit was kept, nothing refunded.
    let listed = call(&staff, "list_bookings", json!({"guest_email": email})).await;
    let bookings = structured(&listed)["bookings"].as_array().unwrap().clone();
    assert_eq!(bookings[0]["status"], "No Show");
    assert_eq!(bookings[0]["stay"], "past");
    assert!(objects(&desk.ledger().await, "refund").is_empty());
    staff.cancel().await.unwrap();
}
