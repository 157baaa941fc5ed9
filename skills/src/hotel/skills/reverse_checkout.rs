//! `compensate_checkout`: a manager reverses a completed checkout (booking reopened, room
//! given back, payment refunded).

use crate::hotel::effects::payments::{refund, set_payment_status};
use crate::hotel::records::{self, booking_status, room_status, Booking, Contact, Room};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Input of `compensate_checkout`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensateCheckoutInput {
    pub guest_email: String,
    /// The checked-out booking to reverse.
    pub booking_number: String,
    /// Why the checkout is reversed (kept in the payment's refund reason and the history).
    pub reason: String,
    pub idempotency_key: String,
}

impl SkillInput for CompensateCheckoutInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
            input::text("reason", &self.reason, 500),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CompletedCheckout {
    guest: Contact,
    booking: Booking,
    room: Room,
    /// The checkout's own payment; None when the deposit covered the stay.
    payment_transaction_id: Option<String>,
    payment_intent_id: Option<String>,
}

pub fn compensate_checkout(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CompensateCheckoutInput>(
        "compensate_checkout",
        1,
        "Reverses a completed checkout for a manager: reopens the booking, gives the guest the \
         room back and refunds the payment; if the refund fails, booking and room are restored \
         to checked out.",
    )
    .exposure(exposure::manager().destructive())
    .step(step(hotel, "find_checkout", find_checkout))
    .step(reversible(hotel, "reopen_booking", reopen_booking))
    .step(reversible(hotel, "reoccupy_room", give_room_back))
    .step(undo(
        step(
            hotel,
            "mark_payment_refunded",
            mark_checkout_payment_refunded,
        ),
        hotel,
        mark_checkout_payment_completed,
    ))
    .step(step(hotel, "refund_payment", refund_checkout))
    .finish(|_, outputs| {
        let found = outputs.get("find_checkout").cloned().unwrap_or_default();
        let refund = outputs.get("refund_payment").cloned().unwrap_or_default();
        json!({
            "booking_number": found.pointer("/booking/Name"),
            "room_number": found.pointer("/room/Name"),
            "payment_intent_id": found.get("payment_intent_id"),
            "refund_id": refund.get("refund_id"),
            "refund_amount": refund.get("amount"),
            "booking_status": booking_status::CHECKED_IN,
            "room_status": room_status::OCCUPIED,
        })
    })
    .build()
}

async fn find_checkout(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<CompletedCheckout, StepError> {
    let input: CompensateCheckoutInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let (guest, booking) =
        records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
    if booking.status != booking_status::CHECKED_OUT {
        return Err(StepError::permanent(
            "not_checked_out",
            format!(
                "booking {} is {}, not Checked Out",
                booking.number, booking.status
            ),
        ));
    }
    // The checkout's own payment is the one its `record_payment` step recorded; deposits and
    // upgrade payments are not part of the checkout.
    let payment = records::completed_payments(crm, &booking.id)
        .await?
        .into_iter()
        .rfind(|p| {
            p.external_id
                .as_deref()
                .is_some_and(|id| id.ends_with(":record_payment"))
        });
    let room = records::room_by_id(crm, &booking.room).await?;
    if room.status == room_status::OCCUPIED {
        return Err(StepError::permanent(
            "room_reassigned",
            format!("room {} is occupied by another guest now", room.number),
        )
        .with_action(
            "Refund the guest without restoring the stay, or move them with upgrade_room",
        ));
    }
    Ok(CompletedCheckout {
        guest,
        booking,
        room,
        payment_intent_id: payment.as_ref().and_then(|p| p.stripe_id.clone()),
        payment_transaction_id: payment.map(|p| p.id),
    })
}

fn reopen_booking(ctx: &StepContext) -> Result<Change, StepError> {
    let c: CompletedCheckout = ctx.output("find_checkout")?;
    Ok(Change::booking_status(
        &c.booking,
        booking_status::CHECKED_IN,
        booking_status::CHECKED_OUT,
    ))
}

fn give_room_back(ctx: &StepContext) -> Result<Change, StepError> {
    let c: CompletedCheckout = ctx.output("find_checkout")?;
    Ok(Change::room(
        &c.room,
        room_status::OCCUPIED,
        Some(&c.guest.id),
    ))
}

async fn set_checkout_payment(
    hotel: &Hotel,
    c: &CompletedCheckout,
    status: &str,
) -> Result<Value, StepError> {
    if let Some(id) = &c.payment_transaction_id {
        set_payment_status(hotel, id, status).await?;
    }
    Ok(json!({"payment_transaction_id": c.payment_transaction_id, "status": status}))
}

async fn mark_checkout_payment_refunded(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<Value, StepError> {
    let c: CompletedCheckout = ctx.output("find_checkout")?;
    set_checkout_payment(&hotel, &c, "Refunded").await
}

async fn mark_checkout_payment_completed(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let c: CompletedCheckout = ctx.output("find_checkout")?;
    set_checkout_payment(&hotel, &c, "Completed").await
}

/// The refund comes last: it cannot be undone, so everything that could fail runs before it.
async fn refund_checkout(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let c: CompletedCheckout = ctx.output("find_checkout")?;
    let Some(payment_intent_id) = &c.payment_intent_id else {
        return Ok(
            json!({"refunded": false, "reason": "the checkout charged nothing (the deposit covered the stay)"}),
        );
    };
    let refund = refund(&hotel, payment_intent_id, None, &ctx.idempotency_key).await?;
    Ok(json!({"refund_id": refund.id, "amount": refund.amount, "status": refund.status}))
}
