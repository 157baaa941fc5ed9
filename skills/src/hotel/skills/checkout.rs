//! The stay itself: `check_in_guest`, `process_guest_checkout`, `compensate_checkout`, and the
//! payment and text-message helpers other skills share.

use super::records::{
    self, booking_status, room_status, Booking, Contact, Room, CASE, OPPORTUNITY,
    PAYMENT_TRANSACTION, SMS_NOTIFICATION,
};
use super::reversible::{reversible, Change};
use super::{exposure, ext, input, record_key, recorded, step, today, undo, Hotel};
use crate::connectors::payments::{PaymentIntent, PaymentRequest};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Finds or creates the payment customer and creates and confirms a payment under the step's
/// idempotency key. A declined card is a permanent `card_declined`; a card that needs 3-D
/// Secure is a permanent `payment_requires_action` telling what the guest must do.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn charge(
    hotel: &Hotel,
    ctx: &StepContext,
    email: &str,
    name: &str,
    payment_method: &str,
    amount: i64,
    description: &str,
    booking_number: &str,
) -> Result<PaymentIntent, StepError> {
    let payments = &hotel.connectors.payments;
    let customer = payments
        .find_or_create_customer(email, name, &format!("{}/customer", ctx.idempotency_key))
        .await
        .map_err(ext)?;
    let metadata = [
        ("booking_number", booking_number.to_string()),
        ("saga_id", ctx.saga_id.to_string()),
    ];
    let request = PaymentRequest {
        amount,
        currency: "usd",
        customer: &customer.id,
        payment_method,
        description,
        metadata: &metadata,
    };
    let intent = payments
        .create_and_confirm(&request, &ctx.idempotency_key)
        .await
        .map_err(|error| {
            let declined = error.code() == Some("card_declined");
            let step_error: StepError = error.into();
            if declined {
                step_error.with_action(
                    "The card was declined: ask the guest for another payment method and call again with a new idempotency_key",
                )
            } else {
                step_error
            }
        })?;
    match intent.status.as_str() {
        "succeeded" => Ok(intent),
        "requires_action" => Err(StepError::permanent(
            "payment_requires_action",
            format!(
                "payment {} needs the guest to authenticate the card (3-D Secure)",
                intent.id
            ),
        )
        .with_action(format!(
            "Ask the guest to complete the card authentication for payment {} in their banking app, \
             or to use another card; then call again with a new idempotency_key",
            intent.id
        ))),
        other => Err(StepError::permanent(
            "payment_failed",
            format!("payment {} ended in status {other}", intent.id),
        )
        .with_action("Ask the guest for another payment method")),
    }
}

/// Records a payment (or refund) in the CRM, keyed by the step's idempotency key.
pub(crate) async fn record_payment(
    hotel: &Hotel,
    ctx: &StepContext,
    booking_id: &str,
    stripe_id: &str,
    amount: i64,
    kind: &str,
) -> Result<String, StepError> {
    let upserted = hotel
        .connectors
        .crm
        .upsert(
            PAYMENT_TRANSACTION,
            "External_ID__c",
            &record_key(ctx),
            &json!({
                "Booking__c": booking_id,
                "Stripe_Transaction_ID__c": stripe_id,
                "Amount__c": records::cents_to_dollars(amount),
                "Type__c": kind,
                "Status__c": "Completed",
            }),
        )
        .await
        .map_err(ext)?;
    Ok(upserted.id)
}

/// Attempts a text message gets before it is given up (reported, not failed).
const NOTIFY_ATTEMPTS: u32 = 3;

/// Texts a guest and records the message in the CRM. The SMS service refusing the number is
/// reported in the output (the business operation stands); outages are retried.
pub(crate) async fn text_guest(
    hotel: &Hotel,
    ctx: &StepContext,
    phone: &str,
    body: &str,
    booking_id: Option<&str>,
) -> Result<Value, StepError> {
    let sent = hotel
        .connectors
        .sms
        .send(phone, body, &ctx.idempotency_key)
        .await;
    let message = match sent {
        Ok(message) => message,
        // A notification is best effort: a number the service refuses, or an outage that
        // outlasts a few attempts, is reported in the output; it never undoes the business
        // operation the text was about.
        Err(error) if !error.is_retryable() || ctx.attempt >= NOTIFY_ATTEMPTS => {
            return Ok(json!({"sent": false, "to": phone, "error": error.to_string()}));
        }
        Err(error) => return Err(error.into()),
    };
    let mut fields = json!({
        "To__c": phone,
        "Body__c": body,
        "Twilio_Message_SID__c": message.sid,
        "Status__c": "Sent",
    });
    if let (Some(id), Some(map)) = (booking_id, fields.as_object_mut()) {
        map.insert("Booking__c".into(), id.into());
    }
    hotel
        .connectors
        .crm
        .upsert(
            SMS_NOTIFICATION,
            "External_ID__c",
            &record_key(ctx),
            &fields,
        )
        .await
        .map_err(ext)?;
    Ok(json!({"sent": true, "to": phone, "message_sid": message.sid}))
}

// ---------------------------------------------------------------------------------------------
// check_in_guest

/// Input of `check_in_guest`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInInput {
    pub guest_email: String,
    /// The arrival date of the reservation, YYYY-MM-DD (default: today).
    #[serde(default)]
    pub check_in_date: Option<NaiveDate>,
    /// Picks one reservation when the guest has several that day.
    #[serde(default)]
    pub booking_number: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for CheckInInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            self.booking_number
                .as_deref()
                .map_or(Ok(()), |b| input::booking_number("booking_number", b)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    guest: Contact,
    booking: Booking,
    room: Room,
    check_in_date: NaiveDate,
    #[serde(default)]
    opportunity_stage: Option<String>,
}

pub fn check_in_guest(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CheckInInput>(
        "check_in_guest",
        1,
        "Checks a guest into the vacant room of their reservation for the day (booking Checked \
         In, room Occupied); on failure it puts the booking and room back as they were.",
    )
    .exposure(exposure::staff_manager())
    .step(step(hotel, "find_reservation", find_reservation))
    .step(reversible(hotel, "check_in_booking", check_in_booking))
    .step(reversible(hotel, "occupy_room", occupy_room))
    .step(undo(
        step(hotel, "update_opportunity", mark_opportunity_checked_in),
        hotel,
        restore_opportunity,
    ))
    .finish(|input, outputs| {
        let r = outputs.get("find_reservation").cloned().unwrap_or_default();
        let booking = r.get("booking").cloned().unwrap_or_default();
        let room = r.get("room").cloned().unwrap_or_default();
        json!({
            "booking_number": booking.get("Name"),
            "room_number": room.get("Name"),
            "room_type": room.get("Room_Type__c"),
            "floor": room.get("Floor__c").and_then(Value::as_f64).map(|f| f.round() as i64),
            "check_in_date": booking.get("Check_In_Date__c"),
            "check_out_date": booking.get("Check_Out_Date__c"),
            "guest_email": input.get("guest_email"),
            "status": booking_status::CHECKED_IN,
            "room_status": room_status::OCCUPIED,
        })
    })
    .build()
}

async fn find_reservation(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Reservation, StepError> {
    let input: CheckInInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let date = input.check_in_date.unwrap_or_else(today);
    let guest = records::guest(crm, &input.guest_email).await?;
    let reserved =
        records::guest_bookings_in_status(crm, &guest.id, booking_status::RESERVED).await?;
    let candidates: Vec<Booking> = reserved
        .into_iter()
        .filter(|b| b.check_in == date)
        .filter(|b| {
            input
                .booking_number
                .as_deref()
                .is_none_or(|n| n == b.number)
        })
        .collect();
    let booking = match candidates.as_slice() {
        [] => {
            return Err(StepError::permanent(
                "reservation_not_found",
                format!(
                    "{} has no reservation arriving on {date}",
                    input.guest_email
                ),
            )
            .with_action("Check the arrival date, or book with create_booking"))
        }
        [one] => one.clone(),
        several => {
            let numbers: Vec<&str> = several.iter().map(|b| b.number.as_str()).collect();
            return Err(StepError::permanent(
                "multiple_reservations",
                format!(
                    "{} has {} reservations arriving on {date}: {}",
                    input.guest_email,
                    several.len(),
                    numbers.join(", ")
                ),
            )
            .with_action("Call again with booking_number set to one of them"));
        }
    };
    let room = records::room_by_id(crm, &booking.room).await?;
    if room.status != room_status::VACANT {
        return Err(StepError::permanent(
            "room_not_vacant",
            format!("room {} is {}, not Vacant", room.number, room.status),
        )
        .with_action("Have housekeeping finish the room (update_room_status to Vacant), or upgrade_room to another room"));
    }
    let opportunity_stage = stage_of(&hotel, booking.opportunity.as_deref()).await?;
    Ok(Reservation {
        guest,
        booking,
        room,
        check_in_date: date,
        opportunity_stage,
    })
}

fn check_in_booking(ctx: &StepContext) -> Result<Change, StepError> {
    let r: Reservation = ctx.output("find_reservation")?;
    Ok(Change::booking_status(
        &r.booking,
        booking_status::CHECKED_IN,
        &r.booking.status,
    ))
}

fn occupy_room(ctx: &StepContext) -> Result<Change, StepError> {
    let r: Reservation = ctx.output("find_reservation")?;
    Ok(Change::room(
        &r.room,
        room_status::OCCUPIED,
        Some(&r.guest.id),
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageChange {
    opportunity_id: Option<String>,
    previous_stage: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Opportunity {
    #[serde(rename = "StageName", default)]
    stage: Option<String>,
}

/// Moves an opportunity to `stage`. The previous stage comes from the first step's recorded
/// output, never re-read here: a re-run would read the stage it set itself.
async fn set_stage(
    hotel: &Hotel,
    opportunity: Option<&str>,
    stage: &str,
    previous: Option<String>,
) -> Result<StageChange, StepError> {
    let Some(id) = opportunity else {
        return Ok(StageChange {
            opportunity_id: None,
            previous_stage: None,
        });
    };
    hotel
        .connectors
        .crm
        .update(OPPORTUNITY, id, &json!({"StageName": stage}))
        .await
        .map_err(ext)?;
    Ok(StageChange {
        opportunity_id: Some(id.to_string()),
        previous_stage: previous,
    })
}

/// The opportunity's current stage, read by a saga's first step.
async fn stage_of(hotel: &Hotel, opportunity: Option<&str>) -> Result<Option<String>, StepError> {
    let Some(id) = opportunity else {
        return Ok(None);
    };
    let current: Opportunity = hotel
        .connectors
        .crm
        .get(OPPORTUNITY, id)
        .await
        .map_err(ext)?;
    Ok(current.stage)
}

async fn mark_opportunity_checked_in(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<StageChange, StepError> {
    let r: Reservation = ctx.output("find_reservation")?;
    set_stage(
        &hotel,
        r.booking.opportunity.as_deref(),
        "Checked In",
        r.opportunity_stage,
    )
    .await
}

async fn restore_opportunity(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let change: StageChange = recorded(output)?;
    if let (Some(id), Some(stage)) = (&change.opportunity_id, &change.previous_stage) {
        hotel
            .connectors
            .crm
            .update(OPPORTUNITY, id, &json!({"StageName": stage}))
            .await
            .map_err(ext)?;
    }
    Ok(json!({"opportunity_id": change.opportunity_id, "stage": change.previous_stage}))
}

// ---------------------------------------------------------------------------------------------
// process_guest_checkout

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
    let refund = hotel
        .connectors
        .payments
        .refund(
            &payment_intent_id,
            None,
            "requested_by_customer",
            &ctx.idempotency_key,
        )
        .await
        .map_err(ext)?;
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

pub(crate) async fn mark_payment_refunded(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let Some(id) = output.get("payment_transaction_id").and_then(Value::as_str) else {
        return Ok(json!({"payment_transaction_id": null, "reason": "nothing was recorded"}));
    };
    hotel
        .connectors
        .crm
        .update(PAYMENT_TRANSACTION, id, &json!({"Status__c": "Refunded"}))
        .await
        .map_err(ext)?;
    Ok(json!({"payment_transaction_id": id, "status": "Refunded"}))
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

/// Opens (or finds again, on a re-run) a case keyed by the step's idempotency key.
pub(crate) async fn open_case(
    hotel: &Hotel,
    ctx: &StepContext,
    fields: Value,
) -> Result<Value, StepError> {
    let crm = &hotel.connectors.crm;
    let upserted = crm
        .upsert(CASE, "External_ID__c", &record_key(ctx), &fields)
        .await
        .map_err(ext)?;
    let case: records::Case = crm.get(CASE, &upserted.id).await.map_err(ext)?;
    Ok(json!({"case_id": case.id, "case_number": case.number, "status": case.status}))
}

pub(crate) async fn close_case(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let id = output
        .get("case_id")
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::permanent("invalid_step_output", "no case_id"))?;
    hotel
        .connectors
        .crm
        .update(CASE, id, &json!({"Status": "Closed", "Description": "Closed automatically: the operation that opened it was undone."}))
        .await
        .map_err(ext)?;
    Ok(json!({"case_id": id, "status": "Closed"}))
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

// ---------------------------------------------------------------------------------------------
// compensate_checkout

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
        hotel
            .connectors
            .crm
            .update(PAYMENT_TRANSACTION, id, &json!({"Status__c": status}))
            .await
            .map_err(ext)?;
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
    let refund = hotel
        .connectors
        .payments
        .refund(
            payment_intent_id,
            None,
            "requested_by_customer",
            &ctx.idempotency_key,
        )
        .await
        .map_err(ext)?;
    Ok(json!({"refund_id": refund.id, "amount": refund.amount, "status": refund.status}))
}
