//! `check_in_guest`: the guest's reservation arriving today (or on a given day) into its
//! vacant room.

use crate::hotel::effects::crm::{restore_opportunity, set_stage, stage_of, StageChange};
use crate::hotel::records::{self, booking_status, room_status, Booking, Contact, Room};
use crate::hotel::reversible::{reversible, Change};
use crate::hotel::{exposure, input, step, undo, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

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
        2,
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
        restore_opportunity(|ctx| {
            let r: Reservation = ctx.output("find_reservation")?;
            Ok(StageChange {
                opportunity_id: r.booking.opportunity,
                previous_stage: r.opportunity_stage,
            })
        }),
    ))
    // Last: the guest is in, so the booking's no-show timer has nothing left to do.
    .step(step(hotel, "disarm_no_show", disarm_no_show))
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
    let date = input.check_in_date.unwrap_or_else(|| hotel.today(&ctx));
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

async fn disarm_no_show(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let r: Reservation = ctx.output("find_reservation")?;
    crate::hotel::no_show::disarm(&hotel.sagas, &ctx, &r.booking.hold_ref(), "checked in").await
}
