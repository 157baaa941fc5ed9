//! `process_guest_checkout`: charges what the stay still owes, checks the booking out, sends
//! the room to Cleaning with a housekeeping case, and texts a receipt.

use crate::hotel::effects::cases::{close_case, open_case};
use crate::hotel::effects::crm::{restore_opportunity, set_stage, stage_of, StageChange};
use crate::hotel::effects::payments::{charge, mark_payment_refunded, record_payment, refund};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::records::{self, booking_status, room_status, Booking, Contact, Room};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, input, recorded, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Input of `process_guest_checkout`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    pub guest_email: String,
    /// A payment method token (pm_...); never a card number.
    pub payment_method_id: String,
    /// Picks one stay when the guest has several rooms checked in.
    #[serde(default)]
    pub booking_number: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for CheckoutInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::payment_method("payment_method_id", &self.payment_method_id),
            self.booking_number
                .as_deref()
                .map_or(Ok(()), |b| input::booking_number("booking_number", b)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

/// The smallest amount the payments API charges, in cents.
const MINIMUM_CHARGE: i64 = 50;

/// The stay being checked out and what it costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stay {
    guest: Contact,
    booking: Booking,
    room: Room,
    #[serde(default)]
    opportunity_stage: Option<String>,
    nights: i64,
    room_charges: i64,
    extra_charges: i64,
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charged {
    /// None when nothing was owed (the deposit covered the stay).
    payment_intent_id: Option<String>,
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CheckoutOutput {
    pub booking_number: String,
    pub room_number: String,
    /// The payment, or null when the deposit already covered the stay.
    pub payment_intent_id: Option<String>,
    /// Cents charged: booked nights x nightly rate + pending extra charges - deposits paid.
    pub amount: i64,
    pub currency: String,
    pub nights: i64,
    pub room_status: String,
    pub housekeeping_case_number: Option<String>,
}

pub fn process_guest_checkout(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CheckoutInput>(
        "process_guest_checkout",
        1,
        "Checks a guest out: charges the stay computed from its nights and charges, checks the \
         booking out, sends the room to Cleaning, opens a housekeeping case and texts a receipt; \
         if anything fails after the charge it refunds it and restores booking and room.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .output::<CheckoutOutput>()
    .step(step(hotel, "find_stay", find_stay))
    .step(undo(step(hotel, "charge_payment", charge_stay), hotel, refund_stay))
    .step(undo(step(hotel, "record_payment", record_stay_payment), hotel, mark_payment_refunded))
    .step(reversible(hotel, "check_out_booking", check_out_booking))
    .step(reversible(hotel, "release_room", release_room))
    .step(undo(step(hotel, "close_opportunity", close_opportunity), hotel, restore_opportunity))
    .step(undo(step(hotel, "open_housekeeping_case", open_housekeeping_case), hotel, close_case))
    .step(step(hotel, "text_receipt", text_receipt))
    .finish(|_, outputs| {
        let stay = outputs.get("find_stay").cloned().unwrap_or_default();
        let charged = outputs.get("charge_payment").cloned().unwrap_or_default();
        json!({
            "booking_number": stay.pointer("/booking/Name"),
            "room_number": stay.pointer("/room/Name"),
            "payment_intent_id": charged.get("payment_intent_id"),
            "amount": charged.get("amount"),
            "currency": "usd",
            "nights": stay.get("nights"),
            "room_status": room_status::CLEANING,
            "housekeeping_case_number": outputs.get("open_housekeeping_case").and_then(|c| c.get("case_number")),
            "receipt": outputs.get("text_receipt"),
        })
    })
    .build()
}

/// The guest's checked-in stay, found by status and dates (not by "checked in today"), and
/// its amount computed from the stay: nights x rate + pending charges.
async fn find_stay(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Stay, StepError> {
    let input: CheckoutInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let guest = records::guest(crm, &input.guest_email).await?;
    let stays: Vec<Booking> =
        records::guest_bookings_in_status(crm, &guest.id, booking_status::CHECKED_IN)
            .await?
            .into_iter()
            .filter(|b| {
                input
                    .booking_number
                    .as_deref()
                    .is_none_or(|n| n == b.number)
            })
            .collect();
    let booking = match stays.as_slice() {
        [] => {
            return Err(StepError::permanent(
                "no_checked_in_stay",
                format!(
                    "{} has no checked-in stay{}",
                    input.guest_email,
                    input
                        .booking_number
                        .as_deref()
                        .map(|n| format!(" with booking {n}"))
                        .unwrap_or_default()
                ),
            )
            .with_action("Check the guest's email; a guest must be checked in to check out"))
        }
        [one] => one.clone(),
        several => {
            let numbers: Vec<&str> = several.iter().map(|b| b.number.as_str()).collect();
            return Err(StepError::permanent(
                "multiple_stays",
                format!(
                    "{} has {} checked-in stays: {}",
                    input.guest_email,
                    several.len(),
                    numbers.join(", ")
                ),
            )
            .with_action("Call again with booking_number set to one of them"));
        }
    };
    let room = records::room_by_id(crm, &booking.room).await?;
    // The booked nights are charged (the booking's dates, whatever day the guest leaves).
    let nights = booking.nights().max(1);
    let room_charges = nights * room.rate_cents();
    let extra_charges = records::pending_charges(crm, &booking.id).await?;
    let already_paid: i64 = records::completed_payments(crm, &booking.id)
        .await?
        .iter()
        .map(|p| records::dollars_to_cents(p.amount.unwrap_or(0.0)))
        .sum();
    // What is still owed; amounts under the payments API's minimum (50 cents) are waived.
    let amount = (room_charges + extra_charges - already_paid).max(0);
    let opportunity_stage = stage_of(&hotel, booking.opportunity.as_deref()).await?;
    Ok(Stay {
        guest,
        booking,
        room,
        opportunity_stage,
        nights,
        room_charges,
        extra_charges,
        amount,
    })
}

async fn charge_stay(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Charged, StepError> {
    let input: CheckoutInput = ctx.input()?;
    let stay: Stay = ctx.output("find_stay")?;
    if stay.amount < MINIMUM_CHARGE {
        return Ok(Charged {
            payment_intent_id: None,
            amount: 0,
        });
    }
    let intent = charge(
        &hotel,
        &ctx,
        &input.guest_email,
        &stay.guest.full_name(),
        &input.payment_method_id,
        stay.amount,
        &format!(
            "Stay in room {}, booking {}",
            stay.room.number, stay.booking.number
        ),
        &stay.booking.number,
    )
    .await?;
    Ok(Charged {
        payment_intent_id: Some(intent.id),
        amount: intent.amount,
    })
}

async fn refund_stay(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let charged: Charged = recorded(output)?;
    let Some(payment_intent_id) = charged.payment_intent_id else {
        return Ok(json!({"refunded": false, "reason": "nothing was charged"}));
    };
    let refund = refund(&hotel, &payment_intent_id, None, &ctx.idempotency_key).await?;
    // The payments API replays a key's first answer, so a failed refund would fail again under
    // the same key: it needs an operator, not a retry.
    if refund.status != "succeeded" && refund.status != "pending" {
        return Err(StepError::permanent(
            "refund_not_succeeded",
            format!("refund {} is {}", refund.id, refund.status),
        ));
    }
    Ok(
        json!({"refund_id": refund.id, "amount": refund.amount, "payment_intent_id": payment_intent_id}),
    )
}

async fn record_stay_payment(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    let charged: Charged = ctx.output("charge_payment")?;
    let Some(payment_intent_id) = charged.payment_intent_id else {
        return Ok(json!({"payment_transaction_id": null, "reason": "nothing was charged"}));
    };
    let id = record_payment(
        &hotel,
        &ctx,
        &stay.booking.id,
        &payment_intent_id,
        charged.amount,
        "Payment",
    )
    .await?;
    Ok(json!({"payment_transaction_id": id}))
}

fn check_out_booking(ctx: &StepContext) -> Result<Change, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    Ok(Change::booking_status(
        &stay.booking,
        booking_status::CHECKED_OUT,
        booking_status::CHECKED_IN,
    ))
}

fn release_room(ctx: &StepContext) -> Result<Change, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    Ok(Change::room(&stay.room, room_status::CLEANING, None))
}

async fn close_opportunity(hotel: Arc<Hotel>, ctx: StepContext) -> Result<StageChange, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    set_stage(
        &hotel,
        stay.booking.opportunity.as_deref(),
        "Closed Won",
        stay.opportunity_stage,
    )
    .await
}

async fn open_housekeeping_case(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    open_case(
        &hotel,
        &ctx,
        json!({
            "Subject": format!("Clean room {} after checkout", stay.room.number),
            "Description": format!("Guest checked out of booking {}.", stay.booking.number),
            "Type": "Housekeeping",
            "Priority": "Medium",
            "Status": "New",
            "Origin": "Internal",
            "Room__c": stay.room.id,
            "Booking__c": stay.booking.id,
            "ContactId": stay.guest.id,
        }),
    )
    .await
}

async fn text_receipt(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    let charged: Charged = ctx.output("charge_payment")?;
    let Some(phone) = stay.guest.phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number on file"}));
    };
    let body = format!(
        "Dewy Resort receipt: {} for booking {} ({} nights, room {}). Payment {}. Thank you for staying with us!",
        if charged.amount > 0 {
            format!("{} charged", records::money(charged.amount))
        } else {
            "nothing further due".to_string()
        },
        stay.booking.number,
        stay.nights,
        stay.room.number,
        charged.payment_intent_id.as_deref().unwrap_or("covered by the deposit")
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&stay.booking.id)).await
}
