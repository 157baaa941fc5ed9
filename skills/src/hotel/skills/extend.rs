//! `extend_stay`: a later departure day for a reservation or a current stay, if the room is
//! free those nights.

use crate::hotel::effects::room_holds::{release, HoldTaken};
use crate::hotel::holds::NewHold;
use crate::hotel::records::{self, LiveBooking};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, input, step, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

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
    let current = records::live_booking(
        &hotel.connectors.crm,
        &input.guest_email,
        &input.booking_number,
    )
    .await?;
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
    let current: LiveBooking = ctx.output("check_extension")?;
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
    let current: LiveBooking = ctx.output("check_extension")?;
    Ok(Change::check_out_date(
        &current.booking,
        input.new_check_out_date,
    ))
}
