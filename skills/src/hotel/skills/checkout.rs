//! `process_guest_checkout`: charges what the stay still owes, checks the booking out, sends
//! the room to Cleaning with a housekeeping case (in the CRM) and a cleaning task (in the
//! legacy housekeeping system), and texts a receipt.
//!
//! A card that needs 3-D Secure: `charge_payment` records the payment in `requires_action`,
//! then `authenticate_payment` waits for event `payment_authenticated` (Stripe's webhook,
//! `POST /webhooks/stripe`, or anyone the wait allows) until the deadline
//! (`STEPWISE_PAYMENT_AUTH_TIMEOUT`, default 15 minutes), showing the authentication URL. The
//! payments service is the truth: after each event the step reads the payment again, so an
//! event only wakes it. Succeeded: the checkout goes on. Failed or deadline passed: the step
//! fails and the saga compensates, which cancels the payment (a payment that never succeeded
//! is cancelled, never refunded). The wait is a step of its own so that cancelling the saga
//! while it waits also cancels the payment (only finished steps are compensated).

use crate::connectors::housekeeping::{codec::TaskKind, NewTask};
use crate::connectors::payments::PaymentIntent;
use crate::hotel::bill::{self, BillLine, PricedRoom};
use crate::hotel::effects::cases::{close_case, open_case};
use crate::hotel::effects::crm::{restore_opportunity, set_stage, stage_of, StageChange};
use crate::hotel::effects::housekeeping::{cancel_task, create_task};
use crate::hotel::effects::payments::{
    authentication_url, cancel_payment, create_payment, mark_payment_refunded, payment_intent,
    record_payment, refund, undo_possible_charge,
};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::records::{self, booking_status, room_status, Booking, Contact, Priority, Room};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, input, recorded, step, undo, Hotel};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{
    InputError, Skill, SkillError, SkillInput, Step, StepContext, StepError, Wait,
};

/// The event a checkout waiting for the guest's card authentication awaits.
pub const PAYMENT_AUTHENTICATED: &str = "payment_authenticated";

/// The payload schema of [`PAYMENT_AUTHENTICATED`]: every field optional, because the step
/// reads the payment itself after the event; what the webhook sends is shown in the history.
pub fn payment_authenticated_schema() -> Value {
    json!({
        "type": "object",
        "description": "The guest completed (or failed) the card authentication. The step \
                        re-reads the payment from the payments service, so the payload only \
                        informs; {} is enough.",
        "properties": {
            "payment_intent_id": {"type": "string"},
            "status": {"type": "string", "enum": ["succeeded", "failed"]},
            "stripe_event_id": {"type": "string"},
            "failure_code": {"type": "string"}
        }
    })
}

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
    /// The bill, night by night (docs/skills.md, "Fair bills").
    #[serde(default)]
    lines: Vec<BillLine>,
    /// Nights and extras, before what was paid.
    #[serde(default)]
    total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charged {
    /// None when nothing was owed (the deposit covered the stay).
    payment_intent_id: Option<String>,
    amount: i64,
    /// The payment's status when created: `succeeded`, or `requires_action` when the guest
    /// must authenticate the card first (3-D Secure).
    #[serde(default = "succeeded")]
    status: String,
    /// Until when the guest may authenticate (with `requires_action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authenticate_by: Option<DateTime<Utc>>,
    /// Where the guest authenticates (with `requires_action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authentication_url: Option<String>,
}

fn succeeded() -> String {
    "succeeded".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CheckoutOutput {
    pub booking_number: String,
    pub room_number: String,
    /// The payment, or null when the deposit already covered the stay.
    pub payment_intent_id: Option<String>,
    /// Cents charged now: the lines' sum.
    pub amount: i64,
    pub currency: String,
    pub nights: i64,
    /// Nights and extras, before what was paid.
    pub total: i64,
    /// Nights per room and rate, extras, payments made before (negative).
    pub lines: Vec<BillLine>,
    pub room_status: String,
    pub housekeeping_case_number: Option<String>,
}

pub fn process_guest_checkout(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CheckoutInput>(
        "process_guest_checkout",
        2,
        "Checks a guest out: charges the stay computed from its nights and charges, checks the \
         booking out, sends the room to Cleaning, opens a housekeeping case and texts a receipt; \
         if anything fails after the charge it refunds it and restores booking and room. A card \
         that needs 3-D Secure makes it wait (status waiting) for the guest to authenticate at \
         the URL it shows; failed or not done in time, the payment is cancelled.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .output::<CheckoutOutput>()
    .step(step(hotel, "find_stay", find_stay))
    .step(undo(step(hotel, "charge_payment", charge_stay), hotel, refund_stay))
    .step(authenticate(hotel))
    .step(undo(step(hotel, "record_payment", record_stay_payment), hotel, mark_payment_refunded))
    .step(reversible(hotel, "check_out_booking", check_out_booking))
    .step(reversible(hotel, "release_room", release_room))
    .step(undo(
        step(hotel, "close_opportunity", close_opportunity),
        hotel,
        restore_opportunity(|ctx| {
            let stay: Stay = ctx.output("find_stay")?;
            Ok(StageChange {
                opportunity_id: stay.booking.opportunity,
                previous_stage: stay.opportunity_stage,
            })
        }),
    ))
    .step(undo(step(hotel, "open_housekeeping_case", open_housekeeping_case), hotel, close_case))
    .step(undo(step(hotel, "create_housekeeping_task", create_housekeeping_task), hotel, cancel_task))
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
            "total": stay.get("total"),
            "lines": stay.get("lines"),
            "room_status": room_status::CLEANING,
            "housekeeping_case_number": outputs.get("open_housekeeping_case").and_then(|c| c.get("case_number")),
            "housekeeping_task_no": outputs.get("create_housekeeping_task").and_then(|t| t.get("task_no")),
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
    let booking =
        match stays.as_slice() {
            [] => return Err(StepError::permanent(
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
            .with_action(
                "Check the guest's email; a guest must be checked in (check_in_guest) to check out",
            )),
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
    // The booked nights are charged (the booking's dates, whatever day the guest leaves), each
    // at the room and rate that held it.
    let segments = records::stay_segments(crm, &booking.id).await?;
    let mut priced: Vec<(records::StaySegment, PricedRoom)> = Vec::new();
    for segment in segments {
        let segment_room = if segment.room == room.id {
            room.clone()
        } else {
            records::room_by_id(crm, &segment.room).await?
        };
        priced.push((segment, PricedRoom::from(&segment_room)));
    }
    let runs = bill::nights_by_room(
        booking.check_in,
        booking.check_out,
        &priced,
        &PricedRoom::from(&room),
    );
    let nights = runs.iter().map(bill::NightsInRoom::nights).sum();
    let room_charges = runs.iter().map(|r| r.nights() * r.room.rate).sum();
    let extras = records::pending_charge_records(crm, &booking.id).await?;
    let paid = records::completed_payments(crm, &booking.id).await?;
    let lines = bill::lines(&runs, &extras, &paid);
    let total = bill::total(&lines);
    let extra_charges = total - room_charges;
    // What is still owed; amounts under the payments API's minimum (50 cents) are waived.
    let amount = bill::due(&lines);
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
        lines,
        total,
    })
}

async fn charge_stay(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Charged, StepError> {
    let input: CheckoutInput = ctx.input()?;
    let stay: Stay = ctx.output("find_stay")?;
    if stay.amount < MINIMUM_CHARGE {
        return Ok(Charged {
            payment_intent_id: None,
            amount: 0,
            status: succeeded(),
            authenticate_by: None,
            authentication_url: None,
        });
    }
    let intent = create_payment(
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
    let waits = intent.status == "requires_action";
    let timeout =
        chrono::Duration::from_std(hotel.payment_auth_timeout()).unwrap_or(chrono::Duration::MAX);
    Ok(Charged {
        authenticate_by: waits.then(|| ctx.now + timeout),
        authentication_url: authentication_url(&intent),
        payment_intent_id: Some(intent.id),
        amount: intent.amount,
        status: intent.status,
    })
}

/// `authenticate_payment`: waits for the guest's card authentication when the payment needs
/// it (see the module documentation); passes at once otherwise.
fn authenticate(hotel: &Arc<Hotel>) -> Step {
    step(hotel, "authenticate_payment", authenticate_payment)
        .awaits(PAYMENT_AUTHENTICATED, payment_authenticated_schema())
}

async fn authenticate_payment(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let charged: Charged = ctx.output("charge_payment")?;
    let Some(id) = charged
        .payment_intent_id
        .as_deref()
        .filter(|_| charged.status == "requires_action")
    else {
        return Ok(json!({"required": false}));
    };
    let stay: Stay = ctx.output("find_stay")?;
    // Fixed when the payment was created, so every wait of this step ends at the same time.
    let deadline = charged.authenticate_by.unwrap_or(ctx.now);
    let authenticated = |intent: &PaymentIntent| json!({"required": true, "payment_intent_id": intent.id, "status": intent.status});
    // Each event only wakes the step: the payment is read again, and a stale or early event
    // (the payment still needs the guest) leads to the next wait, until the same deadline.
    loop {
        let intent = payment_intent(&hotel, id).await?;
        match intent.status.as_str() {
            "succeeded" => return Ok(authenticated(&intent)),
            "requires_action" => {}
            _ => return Err(authentication_failed(&intent)),
        }
        let url = authentication_url(&intent).or_else(|| charged.authentication_url.clone());
        let mut wait = Wait::until(deadline).prompt(format!(
            "The guest must authenticate the card payment of {} for booking {} (3-D Secure){} \
             before {} UTC; the checkout goes on when the payments service confirms it.",
            records::money(charged.amount),
            stay.booking.number,
            url.as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default(),
            deadline.format("%Y-%m-%d %H:%M"),
        ));
        if let Some(url) = url {
            wait = wait.url(url);
        }
        match ctx.await_event(PAYMENT_AUTHENTICATED, wait) {
            Ok(_) => continue,
            Err(error) if error.code == "wait_timed_out" => {
                // A last look, in case the event was lost on its way.
                let intent = payment_intent(&hotel, id).await?;
                if intent.status == "succeeded" {
                    return Ok(authenticated(&intent));
                }
                return Err(StepError::permanent(
                    "wait_timed_out",
                    format!(
                        "the guest did not authenticate payment {id} before {deadline}; it is cancelled"
                    ),
                )
                .with_action(
                    "Nothing was charged. Check out again when the guest can authenticate the \
                     card, or with another card, with a new idempotency_key",
                ));
            }
            Err(suspended_or_failed) => return Err(suspended_or_failed),
        }
    }
}

fn authentication_failed(intent: &PaymentIntent) -> StepError {
    StepError::permanent(
        "payment_authentication_failed",
        format!(
            "the card authentication of payment {} did not succeed (status {})",
            intent.id, intent.status
        ),
    )
    .with_action(
        "Nothing was charged. Ask the guest for another payment method and check out again \
         with a new idempotency_key",
    )
}

async fn refund_stay(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    if ctx.possibly_done {
        // The charge's answer was lost: find out from the payments service what it did.
        return undo_possible_charge(&hotel, &ctx).await;
    }
    let charged: Charged = recorded(output)?;
    let Some(payment_intent_id) = charged.payment_intent_id else {
        return Ok(json!({"refunded": false, "reason": "nothing was charged",
                         "summary": "nothing had been charged"}));
    };
    if charged.status != "succeeded" {
        // It waited for the guest's authentication: a payment that never succeeded is
        // cancelled, not refunded.
        let current = payment_intent(&hotel, &payment_intent_id).await?;
        match current.status.as_str() {
            "succeeded" => {}
            "canceled" => {
                return Ok(json!({"refunded": false, "canceled": true,
                                 "payment_intent_id": payment_intent_id}))
            }
            _ => {
                let key = format!("{}/cancel", ctx.idempotency_key);
                match cancel_payment(&hotel, &payment_intent_id, &key).await {
                    Ok(canceled) => {
                        return Ok(json!({"refunded": false, "canceled": true,
                                         "payment_intent_id": canceled.id}))
                    }
                    // It may have succeeded meanwhile (the guest authenticated at the last
                    // moment): then it is refunded below; otherwise the error stands.
                    Err(error) => {
                        let now = payment_intent(&hotel, &payment_intent_id).await?;
                        if now.status != "succeeded" {
                            return Err(error);
                        }
                    }
                }
            }
        }
    }
    let refund = refund(&hotel, &payment_intent_id, None, &ctx.idempotency_key).await?;
    // The payments API replays a key's first answer, so a failed refund would fail again under
    // the same key: it needs an operator, not a retry.
    if refund.status != "succeeded" && refund.status != "pending" {
        return Err(StepError::permanent(
            "refund_not_succeeded",
            format!("refund {} is {}", refund.id, refund.status),
        ));
    }
    Ok(json!({"refund_id": refund.id, "amount": refund.amount,
              "payment_intent_id": payment_intent_id,
              "summary": format!("the charge of {} was refunded", records::money(refund.amount))}))
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

/// The cleaning task in the legacy housekeeping system (the case stays in the CRM too).
async fn create_housekeeping_task(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    let case = ctx
        .output_value("open_housekeeping_case")
        .and_then(|c| c.get("case_number"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let remark = format!(
        "Clean room {} after checkout of booking {} (case {case}).",
        stay.room.number, stay.booking.number
    );
    create_task(
        &hotel,
        &ctx,
        NewTask {
            room_number: &stay.room.number,
            kind: TaskKind::Clean,
            priority: Priority::Medium,
            due_date: hotel.today(&ctx),
            remark: &remark,
        },
    )
    .await
}

async fn text_receipt(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let stay: Stay = ctx.output("find_stay")?;
    let charged: Charged = ctx.output("charge_payment")?;
    let Some(phone) = stay.guest.phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number on file"}));
    };
    let paid_before: i64 = stay
        .lines
        .iter()
        .filter(|l| l.kind == "deposit")
        .map(|l| -l.amount)
        .sum();
    // A stay found before bills had lines (a saga older than this version) says its total.
    let total = if stay.lines.is_empty() {
        stay.room_charges + stay.extra_charges
    } else {
        stay.total
    };
    let body =
        format!(
        "Dewy Resort receipt for booking {}: total {} ({}{}){}. {}. Thank you for staying with us!",
        stay.booking.number,
        records::money(total),
        bill::nights_summary(&stay.lines),
        if stay.extra_charges > 0 {
            format!(", extras {}", records::money(stay.extra_charges))
        } else {
            String::new()
        },
        if paid_before > 0 {
            format!(", paid before {}", records::money(paid_before))
        } else {
            String::new()
        },
        match charged.payment_intent_id.as_deref() {
            Some(id) => format!("Charged now {} (payment {id})", records::money(charged.amount)),
            None => "Nothing further due".to_string(),
        }
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&stay.booking.id)).await
}
