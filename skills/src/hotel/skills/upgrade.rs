//! Changes to a booking: `extend_stay`, `upgrade_room`, `cancel_booking`.

use super::holds::NewHold;
use super::records::{
    self, booking_status, room_status, Booking, Contact, Room, BOOKING, OPPORTUNITY, ROOM,
};
use super::reversible::{reversible, Change};
use super::stay::{charge, record_payment, text_guest};
use super::{exposure, ext, input, recorded, step, today, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Current {
    guest: Contact,
    booking: Booking,
    room: Room,
}

async fn load_live_booking(hotel: &Hotel, email: &str, number: &str) -> Result<Current, StepError> {
    let crm = &hotel.connectors.crm;
    let (guest, booking) = records::guest_booking(crm, email, number).await?;
    if booking.status != booking_status::RESERVED && booking.status != booking_status::CHECKED_IN {
        return Err(StepError::permanent(
            "booking_not_active",
            format!("booking {} is {}", booking.number, booking.status),
        ));
    }
    let room = records::room_by_id(crm, &booking.room).await?;
    Ok(Current {
        guest,
        booking,
        room,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HoldTaken {
    hold_key: String,
}

async fn release(hotel: Arc<Hotel>, _ctx: StepContext, output: Value) -> Result<Value, StepError> {
    let taken: HoldTaken = recorded(output)?;
    let released = hotel.holds.release(&taken.hold_key).await?;
    Ok(json!({"released_hold": taken.hold_key, "released": released}))
}

// ---------------------------------------------------------------------------------------------
// extend_stay

/// Input of `extend_stay`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendStayInput {
    pub guest_email: String,
    pub booking_number: String,
    /// The new departure day, YYYY-MM-DD, after the current one.
    pub new_check_out_date: NaiveDate,
    pub idempotency_key: String,
}

impl SkillInput for ExtendStayInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

pub fn extend_stay(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<ExtendStayInput>(
        "extend_stay",
        1,
        "Extends a reservation or a current stay to a later departure day if the room is free \
         those nights; on failure it releases the extra nights and keeps the original dates.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .step(step(hotel, "check_extension", check_extension))
    .step(undo(
        step(hotel, "hold_extra_nights", hold_extra_nights),
        hotel,
        release,
    ))
    .step(reversible(hotel, "update_check_out", update_check_out))
    .finish(|input, outputs| {
        let c = outputs.get("check_extension").cloned().unwrap_or_default();
        let booking = c.get("booking").cloned().unwrap_or_default();
        let rate = c
            .pointer("/room/Nightly_Rate__c")
            .and_then(Value::as_f64)
            .map_or(0, records::dollars_to_cents);
        let extra = c
            .get("additional_nights")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        json!({
            "booking_number": booking.get("Name"),
            "room_number": c.pointer("/room/Name"),
            "check_in_date": booking.get("Check_In_Date__c"),
            "previous_check_out_date": booking.get("Check_Out_Date__c"),
            "check_out_date": input.get("new_check_out_date"),
            "additional_nights": extra,
            "additional_amount": extra * rate,
        })
    })
    .build()
}

async fn check_extension(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: ExtendStayInput = ctx.input()?;
    let current = load_live_booking(&hotel, &input.guest_email, &input.booking_number).await?;
    let old = current.booking.check_out;
    if input.new_check_out_date <= old {
        return Err(StepError::permanent(
            "invalid_extension",
            format!("the stay already ends on {old}; new_check_out_date must be later"),
        ));
    }
    input::stay(current.booking.check_in, input.new_check_out_date)
        .map_err(|e| StepError::permanent("invalid_extension", e.to_string()))?;
    let others = records::overlapping_bookings(
        &hotel.connectors.crm,
        &current.room.id,
        old,
        input.new_check_out_date,
        Some(&current.booking.id),
    )
    .await?;
    if !others.is_empty() {
        return Err(StepError::permanent(
            "extension_not_available",
            format!(
                "room {} is booked by someone else between {old} and {}",
                current.room.number, input.new_check_out_date
            ),
        )
        .with_action("Offer a shorter extension, or a move with upgrade_room"));
    }
    let additional_nights = (input.new_check_out_date - old).num_days();
    let mut value = serde_json::to_value(&current)
        .map_err(|e| StepError::permanent("unserializable_output", e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("additional_nights".into(), additional_nights.into());
    }
    Ok(value)
}

async fn hold_extra_nights(hotel: Arc<Hotel>, ctx: StepContext) -> Result<HoldTaken, StepError> {
    let input: ExtendStayInput = ctx.input()?;
    let current: Current = ctx.output("check_extension")?;
    hotel
        .take_hold(&NewHold {
            hold_key: &ctx.idempotency_key,
            booking_ref: &current.booking.hold_ref(),
            room_number: &current.room.number,
            from: current.booking.check_out,
            to: input.new_check_out_date,
            saga_id: ctx.saga_id,
        })
        .await
        .map_err(|e| {
            if e.code == "room_unavailable" {
                StepError::permanent("extension_not_available", e.message)
            } else {
                e
            }
        })?;
    Ok(HoldTaken {
        hold_key: ctx.idempotency_key.clone(),
    })
}

fn update_check_out(ctx: &StepContext) -> Result<Change, StepError> {
    let input: ExtendStayInput = ctx.input()?;
    let current: Current = ctx.output("check_extension")?;
    Ok(Change::check_out_date(
        &current.booking,
        input.new_check_out_date,
    ))
}

// ---------------------------------------------------------------------------------------------
// upgrade_room

/// Input of `upgrade_room`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRoomInput {
    pub guest_email: String,
    pub booking_number: String,
    /// The better room to move to (a higher nightly rate).
    pub new_room_number: String,
    /// Pays the rate difference for the remaining nights (pm_... token).
    pub payment_method_id: String,
    pub idempotency_key: String,
}

impl SkillInput for UpgradeRoomInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
            input::room_number("new_room_number", &self.new_room_number),
            input::payment_method("payment_method_id", &self.payment_method_id),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UpgradePlan {
    current: Current,
    new_room: Room,
    /// The nights still to come: `[from, booking.check_out)`.
    from: NaiveDate,
    nights: i64,
    difference: i64,
}

pub fn upgrade_room(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<UpgradeRoomInput>(
        "upgrade_room",
        1,
        "Moves a booking to a better room and charges the rate difference for the remaining \
         nights; if the payment fails after the room moved, it moves the booking back.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .step(step(hotel, "plan_upgrade", plan_upgrade))
    .step(undo(step(hotel, "hold_new_room", hold_new_room), hotel, release))
    .step(undo(step(hotel, "move_booking", move_booking), hotel, move_booking_back))
    .step(undo(step(hotel, "charge_difference", charge_difference), hotel, refund_difference))
    .step(undo(
        step(hotel, "record_upgrade_payment", record_upgrade_payment),
        hotel,
        super::stay::mark_payment_refunded,
    ))
    .step(step(hotel, "release_old_room", release_old_room))
    .finish(|_, outputs| {
        let plan = outputs.get("plan_upgrade").cloned().unwrap_or_default();
        json!({
            "booking_number": plan.pointer("/current/booking/Name"),
            "previous_room_number": plan.pointer("/current/room/Name"),
            "room_number": plan.pointer("/new_room/Name"),
            "room_type": plan.pointer("/new_room/Room_Type__c"),
            "nights_charged": plan.get("nights"),
            "amount": plan.get("difference"),
            "payment_intent_id": outputs.get("charge_difference").and_then(|c| c.get("payment_intent_id")),
        })
    })
    .build()
}

async fn plan_upgrade(hotel: Arc<Hotel>, ctx: StepContext) -> Result<UpgradePlan, StepError> {
    let input: UpgradeRoomInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let current = load_live_booking(&hotel, &input.guest_email, &input.booking_number).await?;
    let new_room = records::room(crm, &input.new_room_number).await?;
    if new_room.id == current.room.id {
        return Err(StepError::permanent(
            "not_an_upgrade",
            "the booking is already in that room",
        ));
    }
    if new_room.rate_cents() <= current.room.rate_cents() {
        return Err(StepError::permanent(
            "not_an_upgrade",
            format!(
                "room {} ({}/night) is not dearer than room {} ({}/night)",
                new_room.number,
                records::money(new_room.rate_cents()),
                current.room.number,
                records::money(current.room.rate_cents())
            ),
        ));
    }
    let checked_in = current.booking.status == booking_status::CHECKED_IN;
    if checked_in && new_room.status != room_status::VACANT {
        return Err(StepError::permanent(
            "room_unavailable",
            format!(
                "room {} is {}, not Vacant",
                new_room.number, new_room.status
            ),
        ));
    }
    if matches!(new_room.status.as_str(), room_status::OUT_OF_SERVICE) {
        return Err(StepError::permanent(
            "room_unavailable",
            format!("room {} is out of service", new_room.number),
        ));
    }
    let from = if checked_in {
        today().max(current.booking.check_in)
    } else {
        current.booking.check_in
    };
    let nights = (current.booking.check_out - from).num_days();
    if nights <= 0 {
        return Err(StepError::permanent(
            "not_an_upgrade",
            "no nights left to upgrade",
        ));
    }
    let others =
        records::overlapping_bookings(crm, &new_room.id, from, current.booking.check_out, None)
            .await?;
    if !others.is_empty() {
        return Err(StepError::permanent(
            "room_unavailable",
            format!(
                "room {} is booked between {from} and {}",
                new_room.number, current.booking.check_out
            ),
        )
        .with_action("Pick another room (search_rooms lists them)"));
    }
    let difference = nights * (new_room.rate_cents() - current.room.rate_cents());
    Ok(UpgradePlan {
        current,
        new_room,
        from,
        nights,
        difference,
    })
}

async fn hold_new_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<HoldTaken, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    hotel
        .take_hold(&NewHold {
            hold_key: &ctx.idempotency_key,
            booking_ref: &plan.current.booking.hold_ref(),
            room_number: &plan.new_room.number,
            from: plan.from,
            to: plan.current.booking.check_out,
            saga_id: ctx.saga_id,
        })
        .await?;
    Ok(HoldTaken {
        hold_key: ctx.idempotency_key.clone(),
    })
}

async fn move_booking(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let crm = &hotel.connectors.crm;
    crm.update(
        BOOKING,
        &plan.current.booking.id,
        &json!({"Hotel_Room__c": plan.new_room.id}),
    )
    .await
    .map_err(ext)?;
    if plan.current.booking.status == booking_status::CHECKED_IN {
        crm.update(
            ROOM,
            &plan.new_room.id,
            &json!({"Status__c": room_status::OCCUPIED, "Current_Guest__c": plan.current.guest.id}),
        )
        .await
        .map_err(ext)?;
        crm.update(
            ROOM,
            &plan.current.room.id,
            &json!({"Status__c": room_status::CLEANING, "Current_Guest__c": null}),
        )
        .await
        .map_err(ext)?;
    }
    Ok(json!({"booking_id": plan.current.booking.id, "room_number": plan.new_room.number}))
}

async fn move_booking_back(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let crm = &hotel.connectors.crm;
    crm.update(
        BOOKING,
        &plan.current.booking.id,
        &json!({"Hotel_Room__c": plan.current.room.id}),
    )
    .await
    .map_err(ext)?;
    if plan.current.booking.status == booking_status::CHECKED_IN {
        crm.update(ROOM, &plan.current.room.id, &json!({"Status__c": plan.current.room.status, "Current_Guest__c": plan.current.room.current_guest}))
            .await
            .map_err(ext)?;
        crm.update(ROOM, &plan.new_room.id, &json!({"Status__c": plan.new_room.status, "Current_Guest__c": plan.new_room.current_guest}))
            .await
            .map_err(ext)?;
    }
    Ok(json!({"booking_id": plan.current.booking.id, "room_number": plan.current.room.number}))
}

async fn charge_difference(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: UpgradeRoomInput = ctx.input()?;
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let intent = charge(
        &hotel,
        &ctx,
        &input.guest_email,
        &plan.current.guest.full_name(),
        &input.payment_method_id,
        plan.difference.max(50),
        &format!(
            "Upgrade to room {} for booking {}",
            plan.new_room.number, plan.current.booking.number
        ),
        &plan.current.booking.number,
    )
    .await?;
    Ok(json!({"payment_intent_id": intent.id, "amount": intent.amount}))
}

/// Records the upgrade payment in the CRM, in its own step so a failure here refunds it.
async fn record_upgrade_payment(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let charged = ctx
        .output_value("charge_difference")
        .cloned()
        .unwrap_or_default();
    let (Some(intent), Some(amount)) = (
        charged.get("payment_intent_id").and_then(Value::as_str),
        charged.get("amount").and_then(Value::as_i64),
    ) else {
        return Err(StepError::permanent(
            "invalid_step_output",
            "charge_difference recorded no payment",
        ));
    };
    let record = record_payment(
        &hotel,
        &ctx,
        &plan.current.booking.id,
        intent,
        amount,
        "Payment",
    )
    .await?;
    Ok(json!({"payment_transaction_id": record}))
}

async fn refund_difference(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let intent = output
        .get("payment_intent_id")
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::permanent("invalid_step_output", "no payment_intent_id"))?;
    let refund = hotel
        .connectors
        .payments
        .refund(intent, None, "requested_by_customer", &ctx.idempotency_key)
        .await
        .map_err(ext)?;
    Ok(json!({"refund_id": refund.id, "amount": refund.amount}))
}

async fn release_old_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let released = hotel
        .holds
        .release_booking(
            &plan.current.booking.hold_ref(),
            Some(&plan.new_room.number),
            None,
        )
        .await?;
    Ok(json!({"released_old_room_holds": released.is_some()}))
}

// ---------------------------------------------------------------------------------------------
// cancel_booking

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
        1,
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
    let current = load_live_booking(&hotel, &input.guest_email, &input.booking_number).await?;
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
    let day = today();
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
struct PlannedRefund {
    payment_transaction_id: String,
    payment_intent_id: String,
    amount: i64,
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
        hotel
            .connectors
            .crm
            .update(
                records::PAYMENT_TRANSACTION,
                &refund.payment_transaction_id,
                &json!({"Status__c": status}),
            )
            .await
            .map_err(ext)?;
    }
    Ok(())
}

async fn mark_payments_refunded(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let refunds = planned_refunds(&ctx)?;
    set_payment_statuses(&hotel, &refunds, "Refunded").await?;
    Ok(json!({"marked": refunds.len()}))
}

async fn mark_payments_completed(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let refunds = planned_refunds(&ctx)?;
    set_payment_statuses(&hotel, &refunds, "Completed").await?;
    Ok(json!({"restored": refunds.len()}))
}

async fn cancel_record(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let current: Current = ctx.output("load_booking")?;
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

async fn restore_record(hotel: Arc<Hotel>, ctx: StepContext, _: Value) -> Result<Value, StepError> {
    let current: Current = ctx.output("load_booking")?;
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

async fn refund_payments(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let mut done = Vec::new();
    let mut total = 0;
    for planned in planned_refunds(&ctx)? {
        let refund = hotel
            .connectors
            .payments
            .refund(
                &planned.payment_intent_id,
                Some(planned.amount),
                "requested_by_customer",
                &format!("{}/{}", ctx.idempotency_key, planned.payment_transaction_id),
            )
            .await
            .map_err(ext)?;
        total += refund.amount;
        done.push(json!({"refund_id": refund.id, "payment_intent_id": planned.payment_intent_id, "amount": refund.amount}));
    }
    Ok(json!({"refunds": done, "total": total}))
}

async fn release_booking_holds(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let current: Current = ctx.output("load_booking")?;
    let released_at = hotel
        .holds
        .release_booking(&current.booking.hold_ref(), None, None)
        .await?;
    Ok(json!({"released_at": released_at}))
}

async fn restore_booking_holds(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let current: Current = ctx.output("load_booking")?;
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
    let current: Current = ctx.output("load_booking")?;
    let Some(phone) = current.guest.phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number on file"}));
    };
    let body = format!(
        "Dewy Resort: booking {} is cancelled.",
        current.booking.number
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&current.booking.id)).await
}
