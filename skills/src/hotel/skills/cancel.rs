//! `cancel_booking`: cancels a reservation, frees its room and refunds its payments (the
//! deposit per the cancellation policy, any upgrade payment in full).

use crate::hotel::effects::payments::{refund, set_payment_status};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::records::{self, booking_status, Booking, LiveBooking, BOOKING, OPPORTUNITY};
use crate::hotel::{exposure, ext, input, step, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Days before arrival up to which the deposit is refunded in full; later, half of it.
pub const FREE_CANCELLATION_DAYS: i64 = 2;

/// Input of `cancel_booking`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBookingInput {
    pub guest_email: String,
    pub booking_number: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for CancelBookingInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
            self.reason
                .as_deref()
                .map_or(Ok(()), |r| input::text("reason", r, 500)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

/// The refund the policy grants: the whole deposit up to [`FREE_CANCELLATION_DAYS`] days
/// before arrival, half of it later.
pub fn refund_due(deposit: i64, today: NaiveDate, check_in: NaiveDate) -> i64 {
    if (check_in - today).num_days() >= FREE_CANCELLATION_DAYS {
        deposit
    } else {
        deposit / 2
    }
}

pub fn cancel_booking(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CancelBookingInput>(
        "cancel_booking",
        2,
        "Cancels a reservation, frees the room and refunds its deposit (in full up to 2 days \
         before arrival, half after) and any upgrade payment; if a refund fails, the booking \
         and its room are restored.",
    )
    .exposure(exposure::guest_self_staff_manager().destructive())
    .step(step(hotel, "load_booking", load_cancellable))
    .step(undo(
        step(hotel, "cancel_booking_record", cancel_record),
        hotel,
        restore_record,
    ))
    .step(undo(
        step(hotel, "release_room", release_booking_holds),
        hotel,
        restore_booking_holds,
    ))
    .step(undo(
        step(hotel, "mark_payments_refunded", mark_payments_refunded),
        hotel,
        mark_payments_completed,
    ))
    // The refunds come last: they cannot be undone, so everything that can fail runs first.
    .step(step(hotel, "refund_payments", refund_payments))
    .step(step(hotel, "notify_guest", notify_cancelled))
    .step(step(hotel, "disarm_no_show", disarm_no_show))
    .finish(|_, outputs| {
        let c = outputs.get("load_booking").cloned().unwrap_or_default();
        let refunds = outputs.get("refund_payments").cloned().unwrap_or_default();
        json!({
            "booking_number": c.pointer("/booking/Name"),
            "room_number": c.pointer("/room/Name"),
            "status": booking_status::CANCELLED,
            "refunds": refunds.get("refunds"),
            "refund_amount": refunds.get("total"),
            "policy": c.get("policy"),
        })
    })
    .build()
}

async fn load_cancellable(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: CancelBookingInput = ctx.input()?;
    let current = records::live_booking(
        &hotel.connectors.crm,
        &input.guest_email,
        &input.booking_number,
    )
    .await?;
    if current.booking.status != booking_status::RESERVED {
        return Err(StepError::permanent(
            "booking_not_cancellable",
            format!(
                "booking {} is {}; only reservations can be cancelled",
                current.booking.number, current.booking.status
            ),
        )
        .with_action("A checked-in guest checks out with process_guest_checkout"));
    }
    let mut value = serde_json::to_value(&current)
        .map_err(|e| StepError::permanent("unserializable_output", e.to_string()))?;
    let day = hotel.today(&ctx);
    let (refunds, policy) = refund_plan(&hotel, &current.booking, day).await?;
    if let Some(map) = value.as_object_mut() {
        map.insert("today".into(), json!(day));
        map.insert("refunds".into(), json!(refunds));
        map.insert("policy".into(), json!(policy));
    }
    Ok(value)
}

/// One payment to refund on cancellation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlannedRefund {
    pub payment_transaction_id: String,
    pub payment_intent_id: String,
    pub amount: i64,
}

/// The refunds the policy grants, decided once (in the first step) so re-runs and later steps
/// agree: the deposit per [`refund_due`], every other payment (an upgrade difference) in full.
async fn refund_plan(
    hotel: &Hotel,
    booking: &Booking,
    day: NaiveDate,
) -> Result<(Vec<PlannedRefund>, String), StepError> {
    let payments = records::completed_payments(&hotel.connectors.crm, &booking.id).await?;
    let mut policy = "no deposit was taken".to_string();
    let mut refunds = Vec::new();
    for payment in payments {
        let Some(intent) = payment.stripe_id.clone() else {
            continue;
        };
        let paid = records::dollars_to_cents(payment.amount.unwrap_or(0.0));
        let is_deposit = payment
            .external_id
            .as_deref()
            .is_some_and(|id| id.ends_with(":record_deposit"));
        let amount = if is_deposit {
            let due = refund_due(paid, day, booking.check_in);
            policy = if due == paid {
                format!("deposit refunded in full: cancelled at least {FREE_CANCELLATION_DAYS} days before arrival")
            } else {
                format!("half the deposit refunded: cancelled less than {FREE_CANCELLATION_DAYS} days before arrival")
            };
            due
        } else {
            paid
        };
        if amount > 0 {
            refunds.push(PlannedRefund {
                payment_transaction_id: payment.id,
                payment_intent_id: intent,
                amount,
            });
        }
    }
    Ok((refunds, policy))
}

fn planned_refunds(ctx: &StepContext) -> Result<Vec<PlannedRefund>, StepError> {
    let loaded = ctx
        .output_value("load_booking")
        .cloned()
        .unwrap_or_default();
    serde_json::from_value(loaded.get("refunds").cloned().unwrap_or(json!([])))
        .map_err(|e| StepError::permanent("invalid_step_output", e.to_string()))
}

async fn set_payment_statuses(
    hotel: &Hotel,
    refunds: &[PlannedRefund],
    status: &str,
) -> Result<(), StepError> {
    for refund in refunds {
        set_payment_status(hotel, &refund.payment_transaction_id, status).await?;
    }
    Ok(())
}

pub(crate) async fn mark_payments_refunded(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<Value, StepError> {
    let refunds = planned_refunds(&ctx)?;
    set_payment_statuses(&hotel, &refunds, "Refunded").await?;
    Ok(json!({"marked": refunds.len()}))
}

pub(crate) async fn mark_payments_completed(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let refunds = planned_refunds(&ctx)?;
    set_payment_statuses(&hotel, &refunds, "Completed").await?;
    Ok(json!({"restored": refunds.len()}))
}

async fn cancel_record(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    let crm = &hotel.connectors.crm;
    crm.update(
        BOOKING,
        &current.booking.id,
        &json!({"Status__c": booking_status::CANCELLED}),
    )
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
    Ok(json!({"booking_id": current.booking.id, "status": booking_status::CANCELLED}))
}

pub(crate) async fn restore_record(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    let crm = &hotel.connectors.crm;
    crm.update(
        BOOKING,
        &current.booking.id,
        &json!({"Status__c": current.booking.status}),
    )
    .await
    .map_err(ext)?;
    if let Some(opportunity) = &current.booking.opportunity {
        crm.update(
            OPPORTUNITY,
            opportunity,
            &json!({"StageName": "Booking Confirmed"}),
        )
        .await
        .map_err(ext)?;
    }
    Ok(json!({"booking_id": current.booking.id, "status": current.booking.status}))
}

pub(crate) async fn refund_payments(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<Value, StepError> {
    let mut done = Vec::new();
    let mut total = 0;
    for planned in planned_refunds(&ctx)? {
        let refund = refund(
            &hotel,
            &planned.payment_intent_id,
            Some(planned.amount),
            &format!("{}/{}", ctx.idempotency_key, planned.payment_transaction_id),
        )
        .await?;
        total += refund.amount;
        done.push(json!({"refund_id": refund.id, "payment_intent_id": planned.payment_intent_id, "amount": refund.amount}));
    }
    Ok(json!({"refunds": done, "total": total}))
}

pub(crate) async fn release_booking_holds(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    let released_at = hotel
        .holds
        .release_booking(&current.booking.hold_ref(), None, None)
        .await?;
    Ok(json!({"released_at": released_at}))
}

pub(crate) async fn restore_booking_holds(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    let released_at: Option<chrono::DateTime<chrono::Utc>> = output
        .get("released_at")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let restored = match released_at {
        Some(at) => {
            hotel
                .holds
                .restore_booking(&current.booking.hold_ref(), at)
                .await?
        }
        None => 0,
    };
    Ok(json!({"restored_holds": restored}))
}

async fn notify_cancelled(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    let Some(phone) = current.guest.phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number on file"}));
    };
    let body = format!(
        "Dewy Resort: booking {} is cancelled.",
        current.booking.number
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&current.booking.id)).await
}

/// The booking will never arrive now: its no-show timer has nothing left to do.
async fn disarm_no_show(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let current: LiveBooking = ctx.output("load_booking")?;
    crate::hotel::no_show::disarm(&hotel.sagas, &ctx, &current.booking.hold_ref(), "cancelled")
        .await
}
