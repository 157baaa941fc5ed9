//! `manage_booking`: changes a reservation's party size, special requests or dates, holding
//! the room for new dates first.

use crate::hotel::effects::room_holds::{release_hold, Held};
use crate::hotel::holds::NewHold;
use crate::hotel::records::{self, booking_status, Booking, Room, BOOKING};
use crate::hotel::{exposure, ext, input, step, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Input of `manage_booking`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageBookingInput {
    /// The guest the booking belongs to.
    pub guest_email: String,
    pub booking_number: String,
    #[serde(default)]
    pub number_of_guests: Option<u32>,
    #[serde(default)]
    pub special_requests: Option<String>,
    /// New first night (reserved bookings only).
    #[serde(default)]
    pub check_in_date: Option<NaiveDate>,
    /// New departure day (reserved bookings only).
    #[serde(default)]
    pub check_out_date: Option<NaiveDate>,
    pub idempotency_key: String,
}

impl SkillInput for ManageBookingInput {
    fn validate(&self) -> Result<(), InputError> {
        let dates = match (self.check_in_date, self.check_out_date) {
            (Some(from), Some(to)) => input::stay(from, to).map(|_| ()),
            _ => Ok(()),
        };
        let anything = self.number_of_guests.is_some()
            || self.special_requests.is_some()
            || self.check_in_date.is_some()
            || self.check_out_date.is_some();
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
            dates,
            self.special_requests
                .as_deref()
                .map_or(Ok(()), |t| input::text("special_requests", t, 1000)),
            match self.number_of_guests {
                Some(0) | Some(11..) => {
                    Err(InputError::field("number_of_guests", "must be 1 to 10"))
                }
                _ => Ok(()),
            },
            if anything {
                Ok(())
            } else {
                Err(InputError::field(
                    "number_of_guests",
                    "nothing to change: give number_of_guests, special_requests or dates",
                ))
            },
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Loaded {
    booking: Booking,
    room: Room,
    check_in: NaiveDate,
    check_out: NaiveDate,
}

pub fn manage_booking(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<ManageBookingInput>(
        "manage_booking",
        1,
        "Changes a reservation's number of guests, special requests or dates (re-checking the \
         room is free); on failure it restores the booking and the room's hold.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .step(step(hotel, "load_booking", load_for_change))
    .step(undo(
        step(hotel, "hold_new_dates", hold_new_dates),
        hotel,
        release_hold_if_any,
    ))
    .step(undo(
        step(hotel, "update_booking", update_booking),
        hotel,
        restore_booking,
    ))
    .finish(|_, outputs| outputs.get("update_booking").cloned().unwrap_or_default())
    .build()
}

async fn load_for_change(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Loaded, StepError> {
    let input: ManageBookingInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let (_, booking) =
        records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
    let changes_dates = input.check_in_date.is_some() || input.check_out_date.is_some();
    let editable = booking.status == booking_status::RESERVED
        || (booking.status == booking_status::CHECKED_IN && !changes_dates);
    if !editable {
        return Err(StepError::permanent(
            "booking_not_editable",
            format!(
                "booking {} is {} and cannot be changed this way",
                booking.number, booking.status
            ),
        )
        .with_action(
            "Only reserved bookings can change dates; use extend_stay for a checked-in stay",
        ));
    }
    let check_in = input.check_in_date.unwrap_or(booking.check_in);
    let check_out = input.check_out_date.unwrap_or(booking.check_out);
    input::stay(check_in, check_out)
        .map_err(|e| StepError::permanent("invalid_dates", e.to_string()))?;
    let room = records::room_by_id(crm, &booking.room).await?;
    if changes_dates {
        let others =
            records::overlapping_bookings(crm, &room.id, check_in, check_out, Some(&booking.id))
                .await?;
        if !others.is_empty() {
            return Err(StepError::permanent(
                "room_unavailable",
                format!(
                    "room {} is not free from {check_in} to {check_out}",
                    room.number
                ),
            ));
        }
    }
    Ok(Loaded {
        booking,
        room,
        check_in,
        check_out,
    })
}

async fn hold_new_dates(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Option<Held>, StepError> {
    let loaded: Loaded = ctx.output("load_booking")?;
    if loaded.check_in == loaded.booking.check_in && loaded.check_out == loaded.booking.check_out {
        return Ok(None);
    }
    let booking_ref = loaded.booking.hold_ref();
    // The booking's own holds must not block its new dates: release them first, and put them
    // back if the new nights cannot be held.
    // A re-run keeps its own hold (taken under this step's key) and finds the earlier ones
    // already released.
    let released_at = hotel
        .holds
        .release_booking(&booking_ref, None, Some(&ctx.idempotency_key))
        .await?;
    let taken = hotel
        .take_hold(&NewHold {
            hold_key: &ctx.idempotency_key,
            booking_ref: &booking_ref,
            room_number: &loaded.room.number,
            from: loaded.check_in,
            to: loaded.check_out,
            saga_id: ctx.saga_id,
        })
        .await;
    if let Err(error) = taken {
        if let Some(at) = released_at {
            hotel.holds.restore_booking(&booking_ref, at).await?;
        }
        return Err(error);
    }
    Ok(Some(Held {
        hold_key: ctx.idempotency_key.clone(),
        booking_ref,
        released_earlier_at: released_at,
    }))
}

async fn release_hold_if_any(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    if output.is_null() {
        return Ok(json!({"released": 0}));
    }
    release_hold(hotel, ctx, output).await
}

async fn update_booking(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: ManageBookingInput = ctx.input()?;
    let loaded: Loaded = ctx.output("load_booking")?;
    let mut fields = serde_json::Map::new();
    if let Some(n) = input.number_of_guests {
        fields.insert("Number_of_Guests__c".into(), n.into());
    }
    if let Some(text) = &input.special_requests {
        fields.insert("Special_Requests__c".into(), text.clone().into());
    }
    fields.insert("Check_In_Date__c".into(), json!(loaded.check_in));
    fields.insert("Check_Out_Date__c".into(), json!(loaded.check_out));
    hotel
        .connectors
        .crm
        .update(BOOKING, &loaded.booking.id, &Value::Object(fields))
        .await
        .map_err(ext)?;
    Ok(json!({
        "booking_number": loaded.booking.number,
        "room_number": loaded.room.number,
        "status": loaded.booking.status,
        "check_in_date": loaded.check_in,
        "check_out_date": loaded.check_out,
        "total_nights": (loaded.check_out - loaded.check_in).num_days(),
        "number_of_guests": input.number_of_guests.map(f64::from).or(loaded.booking.number_of_guests),
        "special_requests": input.special_requests.or(loaded.booking.special_requests),
    }))
}

async fn restore_booking(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    _output: Value,
) -> Result<Value, StepError> {
    let loaded: Loaded = ctx.output("load_booking")?;
    let b = &loaded.booking;
    hotel
        .connectors
        .crm
        .update(
            BOOKING,
            &b.id,
            &json!({
                "Check_In_Date__c": b.check_in,
                "Check_Out_Date__c": b.check_out,
                "Number_of_Guests__c": b.number_of_guests,
                "Special_Requests__c": b.special_requests,
            }),
        )
        .await
        .map_err(ext)?;
    Ok(json!({"restored": b.number}))
}
