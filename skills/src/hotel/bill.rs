//! A stay's bill, night by night: each night is charged at the room and rate that held it.
//!
//! A booking's nights are `[check_in, check_out)`. A mid-stay upgrade (or room move) records
//! the nights the booking spent in the room it left as a `Stay_Segment__c` with that room's
//! rate then; every other night is in the booking's current room at its rate. Consecutive
//! nights in one room at one rate make one line, so a 3-night stay upgraded on night 2 has two
//! room lines (1 night in the first room, 2 in the second), then one line per pending extra
//! charge and one (negative) per payment made before checkout (the deposit, an upgrade
//! payment). The amount due is the sum of the lines, never below zero.

use crate::hotel::records::{dollars_to_cents, money, PaymentTransaction, Room, StaySegment};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// One line of a bill; amounts in cents, payments already made negative. (No doc comment: it
// would be repeated in the checkout's output schema, which every agent pays for.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BillLine {
    /// nights, extra or deposit.
    pub kind: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nights: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nightly_rate: Option<i64>,
    pub amount: i64,
}

/// A room with the rate a night in it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedRoom {
    pub id: String,
    pub number: String,
    pub rate: i64,
}

impl From<&Room> for PricedRoom {
    fn from(room: &Room) -> Self {
        Self {
            id: room.id.clone(),
            number: room.number.clone(),
            rate: room.rate_cents(),
        }
    }
}

/// A run of consecutive nights `[from, to)` in one room at one rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightsInRoom {
    pub room: PricedRoom,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl NightsInRoom {
    pub fn nights(&self) -> i64 {
        (self.to - self.from).num_days()
    }
}

/// The nights of `[check_in, check_out)` grouped by the room and rate that held them:
/// `segments` (oldest first, with their rooms resolved; a later one wins where two cover a
/// night) for the nights the booking spent elsewhere, `current` for the rest. A stay of no
/// night is charged one night in the current room, as a checkout always was.
pub fn nights_by_room(
    check_in: NaiveDate,
    check_out: NaiveDate,
    segments: &[(StaySegment, PricedRoom)],
    current: &PricedRoom,
) -> Vec<NightsInRoom> {
    let last = if check_out > check_in {
        check_out
    } else {
        check_in + chrono::Duration::days(1)
    };
    let mut runs: Vec<NightsInRoom> = Vec::new();
    let mut night = check_in;
    while night < last {
        let room = segments
            .iter()
            .rev()
            .find(|(s, _)| s.start <= night && night < s.end)
            .map(|(s, room)| PricedRoom {
                rate: s.rate_cents(),
                ..room.clone()
            })
            .unwrap_or_else(|| current.clone());
        let next = night + chrono::Duration::days(1);
        match runs.last_mut() {
            Some(run) if run.room == room && run.to == night => run.to = next,
            _ => runs.push(NightsInRoom {
                room,
                from: night,
                to: next,
            }),
        }
        night = next;
    }
    runs
}

/// The bill's lines: the room nights, the pending extras, then the payments made before.
pub fn lines(
    runs: &[NightsInRoom],
    extras: &[PaymentTransaction],
    paid: &[PaymentTransaction],
) -> Vec<BillLine> {
    let mut lines: Vec<BillLine> = runs
        .iter()
        .map(|run| BillLine {
            kind: "nights".into(),
            description: format!(
                "{} night{} in room {} ({} to {}) at {}",
                run.nights(),
                if run.nights() == 1 { "" } else { "s" },
                run.room.number,
                run.from,
                run.to,
                money(run.room.rate)
            ),
            room_number: Some(run.room.number.clone()),
            nights: Some(run.nights()),
            nightly_rate: Some(run.room.rate),
            amount: run.nights() * run.room.rate,
        })
        .collect();
    lines.extend(extras.iter().map(|charge| BillLine {
        kind: "extra".into(),
        description: format!(
            "Extra charge {}",
            charge.name.as_deref().unwrap_or(&charge.id)
        ),
        room_number: None,
        nights: None,
        nightly_rate: None,
        amount: dollars_to_cents(charge.amount.unwrap_or(0.0)),
    }));
    lines.extend(paid.iter().map(|payment| BillLine {
        kind: "deposit".into(),
        description: format!(
            "Paid before: {}{}",
            paid_as(payment),
            payment
                .stripe_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default()
        ),
        room_number: None,
        nights: None,
        nightly_rate: None,
        amount: -dollars_to_cents(payment.amount.unwrap_or(0.0)),
    }));
    lines
}

/// What a payment made before checkout was, from the step that recorded it.
fn paid_as(payment: &PaymentTransaction) -> &'static str {
    match payment.external_id.as_deref() {
        Some(id) if id.ends_with(":record_deposit") => "deposit",
        Some(id) if id.ends_with(":record_upgrade_payment") => "upgrade payment",
        _ => "payment",
    }
}

/// The nights' and extras' total (before what was paid), in cents.
pub fn total(lines: &[BillLine]) -> i64 {
    lines
        .iter()
        .filter(|l| l.kind != "deposit")
        .map(|l| l.amount)
        .sum()
}

/// What is still owed: every line, never below zero.
pub fn due(lines: &[BillLine]) -> i64 {
    lines.iter().map(|l| l.amount).sum::<i64>().max(0)
}

/// The receipt's summary of the room lines: "1 night in room 103 at $129.00, 2 nights in
/// room 204 at $189.00".
pub fn nights_summary(lines: &[BillLine]) -> String {
    lines
        .iter()
        .filter(|l| l.kind == "nights")
        .map(|l| {
            let n = l.nights.unwrap_or(0);
            format!(
                "{n} night{} in room {} at {}",
                if n == 1 { "" } else { "s" },
                l.room_number.as_deref().unwrap_or("?"),
                money(l.nightly_rate.unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, n).expect("a date")
    }

    fn room(id: &str, rate: i64) -> PricedRoom {
        PricedRoom {
            id: id.into(),
            number: id.trim_start_matches('r').into(),
            rate,
        }
    }

    fn segment(room: &PricedRoom, start: u32, end: u32, rate: i64) -> (StaySegment, PricedRoom) {
        (
            StaySegment {
                id: format!("s{start}"),
                room: room.id.clone(),
                start: day(start),
                end: day(end),
                nightly_rate: Some(rate as f64 / 100.0),
            },
            room.clone(),
        )
    }

    fn payment(amount: f64, external_id: &str) -> PaymentTransaction {
        PaymentTransaction {
            id: "p".into(),
            name: Some("PT-000001".into()),
            stripe_id: Some("pi_1".into()),
            amount: Some(amount),
            kind: Some("Payment".into()),
            status: Some("Completed".into()),
            external_id: Some(external_id.into()),
        }
    }

    #[test]
    fn a_stay_without_a_move_is_one_line_at_the_current_rooms_rate() {
        let current = room("r103", 12_900);
        let runs = nights_by_room(day(1), day(4), &[], &current);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].nights(), 3);
        let lines = lines(&runs, &[], &[]);
        assert_eq!(total(&lines), 38_700);
    }

    #[test]
    fn an_upgrade_on_night_two_bills_night_one_at_the_old_rate_and_the_rest_at_the_new() {
        let (old, new) = (room("r103", 12_900), room("r204", 18_900));
        let runs = nights_by_room(day(1), day(4), &[segment(&old, 1, 2, 12_900)], &new);
        let nights: Vec<(String, i64, i64)> = runs
            .iter()
            .map(|r| (r.room.number.clone(), r.nights(), r.room.rate))
            .collect();
        assert_eq!(
            nights,
            vec![("103".into(), 1, 12_900), ("204".into(), 2, 18_900)]
        );
        let lines = lines(
            &runs,
            &[payment(45.0, "x")],
            &[
                payment(129.0, "s:record_deposit"),
                payment(120.0, "u:record_upgrade_payment"),
            ],
        );
        assert_eq!(total(&lines), 12_900 + 2 * 18_900 + 4_500);
        assert_eq!(due(&lines), 12_900 + 2 * 18_900 + 4_500 - 12_900 - 12_000);
        assert_eq!(lines[3].description, "Paid before: deposit (pi_1)");
        assert_eq!(lines[4].description, "Paid before: upgrade payment (pi_1)");
        assert_eq!(
            nights_summary(&lines),
            "1 night in room 103 at $129.00, 2 nights in room 204 at $189.00"
        );
    }

    #[test]
    fn the_segment_keeps_the_rate_that_held_then_and_two_moves_make_three_lines() {
        let (a, b, c) = (room("r1", 10_000), room("r2", 20_000), room("r3", 30_000));
        // Room 1's rate went up after the guest left it: the segment's rate counts.
        let segments = [segment(&a, 1, 3, 9_000), segment(&b, 3, 4, 20_000)];
        let runs = nights_by_room(day(1), day(6), &segments, &c);
        let got: Vec<(String, i64, i64)> = runs
            .iter()
            .map(|r| (r.room.number.clone(), r.nights(), r.room.rate))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1".into(), 2, 9_000),
                ("2".into(), 1, 20_000),
                ("3".into(), 2, 30_000)
            ]
        );
    }

    #[test]
    fn payments_above_the_bill_leave_nothing_due_and_a_zero_night_stay_is_one_night() {
        let current = room("r1", 10_000);
        let runs = nights_by_room(day(2), day(2), &[], &current);
        assert_eq!(runs[0].nights(), 1);
        let lines = lines(&runs, &[], &[payment(150.0, "d:record_deposit")]);
        assert_eq!(due(&lines), 0);
        assert_eq!(total(&lines), 10_000);
    }
}
