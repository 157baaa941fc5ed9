//! `compensate_checkout`: a manager reverses a completed checkout (booking reopened, room
//! given back, payment refunded). A refund above the approval threshold first waits for another
//! manager's answer (event `approval`, see [`crate::hotel::approval`]).

use crate::hotel::approval;
use crate::hotel::effects::payments::{refund, set_payment_status};
use crate::hotel::records::{self, booking_status, room_status, Booking, Contact, Room};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, ext, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError, Wait};

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
    /// What the refund gives back (the payment's amount not yet refunded), in cents. Absent
    /// in outputs recorded before approvals existed.
    #[serde(default)]
    refund_amount: Option<i64>,
    /// The manager's approval, when the refund needed one.
    #[serde(default)]
    approval: Option<Approval>,
}

/// A manager's answer that let the refund go on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approval {
    /// The actor who delivered the `approval` event (`manager:...`).
    approved_by: String,
    note: Option<String>,
    /// The delivery key of the answer.
    key: Option<String>,
}

/// The payload of event `approval` ([`approval::schema`]).
#[derive(Debug, Deserialize)]
struct Answer {
    approved: bool,
    #[serde(default)]
    note: Option<String>,
}

pub fn compensate_checkout(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CompensateCheckoutInput>(
        "compensate_checkout",
        1,
        "Reverses a completed checkout for a manager: reopens the booking, gives the guest the \
         room back and refunds the payment; if the refund fails, booking and room are restored \
         to checked out. A refund above the approval threshold (default $500.00) first waits \
         for another manager to approve it (event `approval`, {\"approved\": bool, \"note\"?}); \
         refused or unanswered by the deadline, nothing is changed or refunded.",
    )
    .exposure(exposure::manager().destructive())
    .step(step(hotel, "find_checkout", find_checkout).awaits(approval::EVENT, approval::schema()))
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
            "approved_by": found.pointer("/approval/approved_by"),
            "booking_status": booking_status::CHECKED_IN,
            "room_status": room_status::OCCUPIED,
        })
    })
    .build()
}

/// Finds the checkout to reverse and, when its refund is above the threshold, waits for a
/// manager's approval before anything changes. Everything here only reads, so when the answer
/// comes and the action runs again from the top, the checks see the stay as it is then (a room
/// given to someone else during the wait still stops the reversal).
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
    let payment_intent_id = payment.as_ref().and_then(|p| p.stripe_id.clone());
    let refund_amount = match &payment_intent_id {
        Some(id) => {
            let intent = hotel.connectors.payments.retrieve(id).await.map_err(ext)?;
            Some(intent.amount - intent.amount_refunded)
        }
        None => None,
    };
    let mut found = CompletedCheckout {
        guest,
        booking,
        room,
        payment_intent_id,
        payment_transaction_id: payment.map(|p| p.id),
        refund_amount,
        approval: None,
    };
    let settings = hotel.refund_approval();
    if let Some(amount) = refund_amount.filter(|cents| settings.needed_for(*cents)) {
        found.approval = Some(approve(&ctx, &input, &found, amount, settings)?);
    }
    Ok(found)
}

/// Waits for a manager's answer to a refund of `amount` cents: approved, the answer is kept
/// with who gave it; refused or unanswered by the deadline, a permanent error (the saga then
/// ends compensated with nothing changed and nothing refunded).
fn approve(
    ctx: &StepContext,
    input: &CompensateCheckoutInput,
    c: &CompletedCheckout,
    amount: i64,
    settings: approval::RefundApproval,
) -> Result<Approval, StepError> {
    let money = records::money(amount);
    let prompt = format!(
        "Approve a refund of {money} to {} ({}) for booking {}, room {}? Reason given: {}",
        c.guest.full_name(),
        input.guest_email,
        c.booking.number,
        c.room.number,
        input.reason
    );
    let wait = Wait::within(settings.timeout)
        .prompt(prompt)
        .answered_by([approval::APPROVER_ROLE]);
    let received = ctx.await_delivery(approval::EVENT, wait).map_err(|error| {
        if error.code == "wait_timed_out" {
            StepError::permanent(
                "refund_approval_expired",
                format!("refund of {money} expired: {}", error.message),
            )
            .with_action(
                "Nothing was refunded: ask a manager, then call again with a new idempotency_key",
            )
        } else {
            error
        }
    })?;
    let answer: Answer = serde_json::from_value(received.payload).map_err(|e| {
        StepError::permanent(
            "invalid_approval",
            format!("the approval does not parse: {e}"),
        )
    })?;
    let approved_by = received.actor.unwrap_or_default();
    if !answer.approved {
        return Err(StepError::permanent(
            "refund_rejected",
            format!(
                "refund of {money} rejected by {approved_by}: {}",
                answer.note.as_deref().unwrap_or("no reason given")
            ),
        )
        .with_action("Nothing was refunded and the checkout stands: tell the guest"));
    }
    Ok(Approval {
        approved_by,
        note: answer.note,
        key: received.key,
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
