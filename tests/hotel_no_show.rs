//! No-shows (docs/skills.md, "No-shows"): every booking starts a durable timer that marks it
//! No Show at the hotel's cutoff on the arrival day unless a check-in or cancellation disarms
//! it first. Real PostgreSQL, the sandbox over HTTP, the engine's clock a manual one moved by
//! the test across the cutoff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hotel_support;

use chrono::{DateTime, NaiveDate, Utc};
use hotel_support::{booking, booking_input, objects, World};
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise_engine::{SagaDetail, SagaStatus};
use stepwise_skills::hotel::no_show;
use uuid::Uuid;

const TZ: &str = "America/Los_Angeles";

fn date(offset: i64) -> NaiveDate {
    hotel_support::today() + chrono::Duration::days(offset)
}

/// A hotel in Los Angeles whose clock reads noon UTC (early morning there) the day before
/// `arrival`.
async fn world(pool: PgPool, arrival: NaiveDate) -> World {
    let noon = (arrival - chrono::Duration::days(1))
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    World::in_time_zone(pool, TZ, noon).await
}

fn cutoff(arrival: NaiveDate) -> DateTime<Utc> {
    no_show::cutoff_instant(TZ.parse().unwrap(), no_show::DEFAULT_CUTOFF, arrival)
}

async fn detail(w: &World, id: Uuid) -> SagaDetail {
    w.engine.detail(id).await.unwrap().unwrap()
}

fn output_of(detail: &SagaDetail, step: &str) -> Value {
    detail
        .steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.output.clone())
        .unwrap_or_default()
}

/// Books `room` for three nights from `offset`, with a one-night deposit; returns the booking
/// number and its timer's saga.
async fn book(w: &World, key: &str, email: &str, room: &str, offset: i64) -> (String, Uuid) {
    let mut input = booking_input(key, email, room, offset, offset + 3);
    input["payment_method_id"] = json!("pm_card_visa");
    let booked = w.run("create_booking", input).await;
    assert_eq!(booked.status, SagaStatus::Completed, "{:?}", booked.error);
    let armed = output_of(&booked, "arm_no_show");
    assert_eq!(armed["armed"], true, "{armed}");
    let timer: Uuid = armed["no_show_saga_id"].as_str().unwrap().parse().unwrap();
    let number = booked.output.unwrap()["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    (number, timer)
}

#[sqlx::test(migrations = false)]
async fn a_reservation_not_checked_in_by_the_cutoff_is_a_no_show_keeping_the_first_night(
    pool: PgPool,
) {
    stepwise::app::migrate(&pool).await.unwrap();
    let arrival = date(2);
    let w = world(pool, arrival).await;
    let email = "nora.noshow@example.com";
    let (number, timer) = book(&w, "ns-book", email, "103", 2).await;
    // Upgraded before arrival: the difference for three nights is paid too.
    let upgraded = w
        .run(
            "upgrade_room",
            json!({"idempotency_key": "ns-up", "guest_email": email, "booking_number": number,
                   "new_room_number": "204", "payment_method_id": "pm_card_visa"}),
        )
        .await;
    assert_eq!(
        upgraded.status,
        SagaStatus::Completed,
        "{:?}",
        upgraded.error
    );

    // The timer waits, durably, until 18:00 in Los Angeles on the arrival day.
    w.worker.run_until_idle().await.unwrap();
    let waiting = detail(&w, timer).await;
    assert_eq!(waiting.status, SagaStatus::Waiting);
    assert_eq!(waiting.started_by, no_show::TIMER_ACTOR);
    let until: DateTime<Utc> =
        serde_json::from_value(waiting.waiting_for.clone().unwrap()["until"].clone()).unwrap();
    assert_eq!(until, cutoff(arrival));
    let local =
        until.with_timezone(&stepwise_skills::hotel::calendar::parse_time_zone(TZ).unwrap());
    assert_eq!(local.date_naive(), arrival);
    assert_eq!(local.time(), no_show::DEFAULT_CUTOFF);

    // A minute before the cutoff nothing happens.
    w.clock.set(cutoff(arrival) - chrono::Duration::minutes(1));
    w.worker.run_until_idle().await.unwrap();
    assert_eq!(detail(&w, timer).await.status, SagaStatus::Waiting);
    assert_eq!(booking(&w.ledger().await, &number)["Status__c"], "Reserved");

    // At the cutoff: No Show, the room released, the first night kept, the rest refunded.
    w.clock.set(cutoff(arrival) + chrono::Duration::seconds(1));
    let done = w.settle(&[timer]).await.remove(0);
    assert_eq!(done.status, SagaStatus::Completed, "{:?}", done.error);
    let output = done.output.clone().unwrap();
    assert_eq!(output["no_show"], true, "{output}");
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "No Show");
    // Paid: the deposit (one night of room 103, $129.00) and the upgrade ($60.00 x 3). Kept:
    // the first night at room 204's rate ($189.00), the deposit first; refunded: the rest.
    assert_eq!(output["kept"], 18_900);
    assert_eq!(output["refund_amount"], 12_900 + 18_000 - 18_900);
    let refunds = objects(&ledger, "refund");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["amount"], 12_000);
    let texted = objects(&ledger, "message")
        .into_iter()
        .any(|m| m["body"].as_str().unwrap_or("").contains("no-show"));
    assert!(texted);
    // The room is free again for those nights.
    let rooms = w
        .query(
            "search_rooms",
            json!({"check_in_date": date(2), "check_out_date": date(5), "limit": 100}),
        )
        .await;
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_number"] == "204"),
        "{rooms}"
    );
    let holds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hotel.room_holds WHERE room_number = '204' AND released_at IS NULL",
    )
    .fetch_one(w.engine.store().pool())
    .await
    .unwrap();
    assert_eq!(holds, 0);
}

#[sqlx::test(migrations = false)]
async fn a_check_in_or_a_cancellation_before_the_cutoff_disarms_the_timer(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let arrival = date(2);
    let w = world(pool, arrival).await;
    let (arriving, arriving_timer) = book(&w, "ds-a", "ann.arrives@example.com", "103", 2).await;
    let (cancelled, cancelled_timer) = book(&w, "ds-c", "carl.cancels@example.com", "201", 2).await;
    w.worker.run_until_idle().await.unwrap();
    assert_eq!(detail(&w, arriving_timer).await.status, SagaStatus::Waiting);

    let cancel = w
        .run(
            "cancel_booking",
            json!({"idempotency_key": "ds-cancel", "guest_email": "carl.cancels@example.com",
                   "booking_number": cancelled}),
        )
        .await;
    assert_eq!(cancel.status, SagaStatus::Completed, "{:?}", cancel.error);
    assert_eq!(output_of(&cancel, "disarm_no_show")["disarmed"], true);
    // The morning of the arrival (Los Angeles): the guest checks in.
    w.clock.set(cutoff(arrival) - chrono::Duration::hours(8));
    let checked_in = w
        .run(
            "check_in_guest",
            json!({"idempotency_key": "ds-in", "guest_email": "ann.arrives@example.com",
                   "booking_number": arriving}),
        )
        .await;
    assert_eq!(
        checked_in.status,
        SagaStatus::Completed,
        "{:?}",
        checked_in.error
    );
    assert_eq!(output_of(&checked_in, "disarm_no_show")["disarmed"], true);

    // Both timers end at once, before the cutoff, having changed nothing.
    for timer in [arriving_timer, cancelled_timer] {
        let done = w.settle(&[timer]).await.remove(0);
        assert_eq!(done.status, SagaStatus::Completed, "{:?}", done.error);
        assert_eq!(done.output.clone().unwrap()["no_show"], false);
        assert!(done.updated_at < cutoff(arrival));
        assert!(done
            .events
            .iter()
            .any(|e| e.kind.to_string() == "event_received"));
    }
    w.clock.set(cutoff(arrival) + chrono::Duration::hours(1));
    w.worker.run_until_idle().await.unwrap();
    let ledger = w.ledger().await;
    assert_eq!(booking(&ledger, &arriving)["Status__c"], "Checked In");
    assert_eq!(booking(&ledger, &cancelled)["Status__c"], "Cancelled");
}
