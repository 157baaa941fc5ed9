//! `upgrade_room`: moves a booking to a dearer room and charges the rate difference for the
//! nights still to come.

use crate::hotel::effects::payments::{
    charge, mark_payment_refunded, record_payment, refund, undo_possible_charge,
};
use crate::hotel::effects::room_holds::{release, HoldTaken};
use crate::hotel::holds::NewHold;
use crate::hotel::records::{
    self, booking_status, room_status, LiveBooking, Room, BOOKING, ROOM, STAY_SEGMENT,
};
use crate::hotel::{exposure, ext, input, record_key, step, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

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
    current: LiveBooking,
    new_room: Room,
    /// The nights still to come: `[from, booking.check_out)`.
    from: NaiveDate,
    nights: i64,
    difference: i64,
    /// A checked-in guest's nights before `from` in the room being left, when there are any:
    /// they stay billed at its rate (`Stay_Segment__c`, docs/skills.md "Fair bills").
    #[serde(default)]
    left_segment: Option<LeftSegment>,
}

/// The nights `[start, end)` a booking spent in the room it is leaving.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeftSegment {
    start: NaiveDate,
    end: NaiveDate,
    nightly_rate: i64,
}

pub fn upgrade_room(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<UpgradeRoomInput>(
        "upgrade_room",
        2,
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
        mark_payment_refunded,
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
    let current = records::live_booking(
        &hotel.connectors.crm,
        &input.guest_email,
        &input.booking_number,
    )
    .await?;
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
        hotel.today(&ctx).max(current.booking.check_in)
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
    // The nights spent in the current room since the last move (or the arrival) stay billed at
    // its rate.
    let left_segment = if checked_in {
        let start = records::stay_segments(crm, &current.booking.id)
            .await?
            .iter()
            .map(|s| s.end)
            .max()
            .unwrap_or(current.booking.check_in)
            .max(current.booking.check_in);
        (start < from).then(|| LeftSegment {
            start,
            end: from,
            nightly_rate: current.room.rate_cents(),
        })
    } else {
        None
    };
    Ok(UpgradePlan {
        current,
        new_room,
        from,
        nights,
        difference,
        left_segment,
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
    let segment_id = match &plan.left_segment {
        Some(left) => Some(
            crm.upsert(
                STAY_SEGMENT,
                "External_ID__c",
                &record_key(&ctx),
                &json!({
                    "Booking__c": plan.current.booking.id,
                    "Hotel_Room__c": plan.current.room.id,
                    "Start_Date__c": left.start,
                    "End_Date__c": left.end,
                    "Nightly_Rate__c": records::cents_to_dollars(left.nightly_rate),
                }),
            )
            .await
            .map_err(ext)?
            .id,
        ),
        None => None,
    };
    Ok(
        json!({"booking_id": plan.current.booking.id, "room_number": plan.new_room.number,
              "stay_segment_id": segment_id}),
    )
}

async fn move_booking_back(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _: Value,
) -> Result<Value, StepError> {
    let plan: UpgradePlan = ctx.output("plan_upgrade")?;
    let crm = &hotel.connectors.crm;
    // The segment the move recorded, found by its external id (also when the move's answer
    // was lost).
    if plan.left_segment.is_some() {
        let key = crate::connectors::external_id(&ctx.action_idempotency_key());
        if let Some(id) = crm
            .find_by_external_id(STAY_SEGMENT, "External_ID__c", &key)
            .await
            .map_err(ext)?
        {
            crm.delete(STAY_SEGMENT, &id).await.map_err(ext)?;
        }
    }
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
    if ctx.possibly_done {
        return undo_possible_charge(&hotel, &ctx).await;
    }
    let intent = output
        .get("payment_intent_id")
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::permanent("invalid_step_output", "no payment_intent_id"))?;
    let refund = refund(&hotel, intent, None, &ctx.idempotency_key).await?;
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
