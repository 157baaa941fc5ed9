//! `mark_no_show`: a booking's no-show timer (see [`crate::hotel::no_show`]). Started by
//! `create_booking`, never by an agent (it is not an MCP tool): its first step waits, durably,
//! until the cutoff on the arrival day; a check-in or cancellation first disarms it (event
//! `disarm`) and it ends having changed nothing. At the cutoff a reservation still not checked
//! in becomes No Show, its room is released and the policy applied: the first night is kept
//! from what was paid (the deposit first), the rest refunded; without a payment nothing is
//! charged. The refunds come last, as in `cancel_booking`, whose steps it shares.

use super::cancel::{
    mark_payments_completed, mark_payments_refunded, refund_payments, release_booking_holds,
    restore_booking_holds, restore_record, PlannedRefund,
};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::no_show::{self, DISARM};
use crate::hotel::records::{self, booking_status, LiveBooking, BOOKING, OPPORTUNITY};
use crate::hotel::{ext, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{
    InputError, Skill, SkillError, SkillInput, Step, StepContext, StepError, Wait,
};

/// The status a reservation never checked in ends in.
pub const NO_SHOW: &str = booking_status::NO_SHOW;

/// Input of `mark_no_show` (given by `create_booking`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoShowInput {
    pub booking_number: String,
    pub guest_email: String,
    /// The booking's external reference (its `External_ID__c`): the timer finds the booking by
    /// it, so a booking number reused by another CRM (a fresh sandbox) is never touched.
    pub booking_ref: String,
}

impl SkillInput for NoShowInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::booking_number("booking_number", &self.booking_number),
            input::email("guest_email", &self.guest_email),
            input::text("booking_ref", &self.booking_ref, 255),
        ])
    }
}

/// The payload of [`DISARM`]: why (checked in, cancelled).
pub fn disarm_schema() -> Value {
    json!({"type": "object", "properties": {"reason": {"type": "string"}}})
}

pub fn mark_no_show(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<NoShowInput>(
        "mark_no_show",
        1,
        "A booking's no-show timer, started by create_booking: at the cutoff on the arrival day \
         a reservation not checked in becomes No Show, its room is released, the first night \
         is kept from the deposit and the rest refunded; a check-in or cancellation first \
         disarms it.",
    )
    .step(await_cutoff(hotel))
    .step(step(hotel, "load_booking", load_no_show))
    .step(undo(
        step(hotel, "mark_no_show", mark_record),
        hotel,
        restore_record,
    ))
    .step(undo(
        step(hotel, "release_room", release_if_due),
        hotel,
        restore_booking_holds,
    ))
    .step(undo(
        step(hotel, "mark_payments_refunded", mark_payments_refunded),
        hotel,
        mark_payments_completed,
    ))
    .step(step(hotel, "refund_payments", refund_payments))
    .step(step(hotel, "notify_guest", notify_no_show))
    .finish(|input, outputs| {
        let waited = outputs.get("await_cutoff").cloned().unwrap_or_default();
        let loaded = outputs.get("load_booking").cloned().unwrap_or_default();
        let refunds = outputs.get("refund_payments").cloned().unwrap_or_default();
        let no_show = loaded
            .get("no_show")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        json!({
            "booking_number": input.get("booking_number"),
            "no_show": no_show,
            "status": if no_show { Some(NO_SHOW) } else { None },
            "reason": loaded.get("reason").or(waited.get("reason")),
            "cutoff": waited.get("cutoff"),
            "kept": loaded.get("kept"),
            "refund_amount": refunds.get("total"),
            "policy": loaded.get("policy"),
        })
    })
    .build()
}

/// `await_cutoff`: waits for the cutoff (or a [`DISARM`]); see the module documentation.
fn await_cutoff(hotel: &Arc<Hotel>) -> Step {
    step(hotel, "await_cutoff", wait_for_cutoff).awaits(DISARM, disarm_schema())
}

async fn wait_for_cutoff(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: NoShowInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let (tz, cutoff) = (hotel.time_zone(), hotel.no_show_cutoff());
    // Each pass waits once; a wait that ends at its deadline is looked at again, since the
    // arrival may have moved later meanwhile (manage_booking): then the next pass waits for the
    // new day's cutoff. A wait's deadline is fixed the first time it is reached, so running
    // the step again after a wake goes through the same passes.
    loop {
        let (_, booking) =
            records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
        if booking.status != booking_status::RESERVED {
            return Ok(
                json!({"due": false, "reason": format!("booking {} is {}", booking.number, booking.status)}),
            );
        }
        let deadline = no_show::deadline(tz, cutoff, booking.check_in, ctx.now);
        let wait = Wait::until(deadline)
            .prompt(format!(
                "Booking {} becomes a no-show at {} UTC unless the guest checks in (or it is \
                 cancelled) first.",
                booking.number,
                deadline.format("%Y-%m-%d %H:%M")
            ))
            .default_payload(Some(json!({"cutoff": true})));
        let received = ctx.await_delivery(DISARM, wait)?;
        if let Some(actor) = received.actor {
            return Ok(
                json!({"due": false, "disarmed_by": actor, "reason": format!(
                    "disarmed: {}",
                    received.payload.get("reason").and_then(Value::as_str).unwrap_or("no reason given")
                )}),
            );
        }
        let (_, now) =
            records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
        if now.status != booking_status::RESERVED {
            return Ok(
                json!({"due": false, "reason": format!("booking {} is {}", now.number, now.status)}),
            );
        }
        if ctx.now < no_show::cutoff_instant(tz, cutoff, now.check_in) {
            continue;
        }
        return Ok(json!({"due": true, "arrival": now.check_in,
                         "cutoff": no_show::cutoff_instant(tz, cutoff, now.check_in)}));
    }
}

fn due(ctx: &StepContext) -> bool {
    ctx.output_value("load_booking")
        .and_then(|v| v.get("no_show"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The booking, and what the policy keeps and refunds, decided once so re-runs and the
/// following steps agree (the shape `cancel_booking`'s `load_booking` records).
async fn load_no_show(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let waited = ctx
        .output_value("await_cutoff")
        .cloned()
        .unwrap_or_default();
    if waited.get("due").and_then(Value::as_bool) != Some(true) {
        return Ok(json!({"no_show": false, "reason": waited.get("reason")}));
    }
    let input: NoShowInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let booking = match records::booking_by_ref(crm, &input.booking_ref).await? {
        Some(b) if b.status == booking_status::RESERVED => b,
        Some(b) => {
            return Ok(
                json!({"no_show": false, "reason": format!("booking {} is {}", b.number, b.status)}),
            )
        }
        None => {
            return Ok(
                json!({"no_show": false, "reason": format!("booking {} is not in the CRM", input.booking_number)}),
            )
        }
    };
    let current = LiveBooking {
        guest: records::contact_by_id(crm, &booking.guest).await?,
        room: records::room_by_id(crm, &booking.room).await?,
        booking,
    };
    let first_night = current.room.rate_cents();
    let (refunds, kept) = policy(&hotel, &current, first_night).await?;
    let policy = if kept > 0 {
        format!(
            "no-show: the first night ({}) kept from the deposit, the rest refunded",
            records::money(kept)
        )
    } else {
        "no-show: no deposit was taken, nothing charged".to_string()
    };
    let mut value = serde_json::to_value(&current)
        .map_err(|e| StepError::permanent("unserializable_output", e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("no_show".into(), json!(true));
        map.insert("refunds".into(), json!(refunds));
        map.insert("kept".into(), json!(kept));
        map.insert("policy".into(), json!(policy));
    }
    Ok(value)
}

/// The first night is kept from what was paid (the deposit first); everything else is
/// refunded. Returns the refunds and the amount kept.
async fn policy(
    hotel: &Hotel,
    current: &LiveBooking,
    first_night: i64,
) -> Result<(Vec<PlannedRefund>, i64), StepError> {
    let mut payments =
        records::completed_payments(&hotel.connectors.crm, &current.booking.id).await?;
    payments.sort_by_key(|p| {
        !p.external_id
            .as_deref()
            .is_some_and(|id| id.ends_with(":record_deposit"))
    });
    let mut to_keep = first_night;
    let mut kept = 0;
    let mut refunds = Vec::new();
    for payment in payments {
        let Some(intent) = payment.stripe_id.clone() else {
            continue;
        };
        let paid = records::dollars_to_cents(payment.amount.unwrap_or(0.0));
        let keep = paid.min(to_keep);
        to_keep -= keep;
        kept += keep;
        if paid - keep > 0 {
            refunds.push(PlannedRefund {
                payment_transaction_id: payment.id,
                payment_intent_id: intent,
                amount: paid - keep,
            });
        }
    }
    Ok((refunds, kept))
}

/// The booking becomes No Show, its opportunity Closed Lost (undone by `cancel_booking`'s
/// `restore_record`: Reserved, Booking Confirmed).
async fn mark_record(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    if !due(&ctx) {
        return Ok(json!({"skipped": true}));
    }
    let current: LiveBooking = ctx.output("load_booking")?;
    let crm = &hotel.connectors.crm;
    crm.update(BOOKING, &current.booking.id, &json!({"Status__c": NO_SHOW}))
        .await
        .map_err(ext)?;
    if let Some(opportunity) = &current.booking.opportunity {
        crm.update(
            OPPORTUNITY,
            opportunity,
            &json!({"StageName": "Closed Lost"}),
        )
        .await
        .map_err(ext)?;
    }
    Ok(json!({"booking_id": current.booking.id, "status": NO_SHOW}))
}

async fn release_if_due(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    if !due(&ctx) {
        return Ok(json!({"skipped": true}));
    }
    release_booking_holds(hotel, ctx).await
}

async fn notify_no_show(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    if !due(&ctx) {
        return Ok(json!({"skipped": true}));
    }
    let current: LiveBooking = ctx.output("load_booking")?;
    let Some(phone) = current.guest.phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number on file"}));
    };
    let loaded = ctx
        .output_value("load_booking")
        .cloned()
        .unwrap_or_default();
    let kept = loaded.get("kept").and_then(Value::as_i64).unwrap_or(0);
    let refunded: i64 = loaded
        .get("refunds")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|p| p.get("amount").and_then(Value::as_i64))
                .sum()
        })
        .unwrap_or(0);
    let body = format!(
        "Dewy Resort: you did not arrive for booking {} on {}, so it is now a no-show and the \
         room is released. {}{}",
        current.booking.number,
        current.booking.check_in,
        if kept > 0 {
            format!(
                "The first night ({}) is kept from your deposit",
                records::money(kept)
            )
        } else {
            "Nothing is charged".to_string()
        },
        if refunded > 0 {
            format!("; {} is refunded.", records::money(refunded))
        } else {
            ".".to_string()
        }
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&current.booking.id)).await
}
