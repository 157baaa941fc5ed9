//! `submit_guest_service_request`: a service case (housekeeping, room service, amenities...)
//! for the room a guest is staying in.

use crate::hotel::effects::cases::{close_case, open_case, subject};
use crate::hotel::records::{self, booking_status, Priority, Room};
use crate::hotel::{exposure, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// What a guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    Housekeeping,
    #[serde(rename = "Room Service")]
    RoomService,
    Amenities,
    Maintenance,
    Concierge,
    Other,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Housekeeping => "Housekeeping",
            ServiceType::RoomService => "Room Service",
            ServiceType::Amenities => "Amenities",
            ServiceType::Maintenance => "Maintenance",
            ServiceType::Concierge => "Concierge",
            ServiceType::Other => "Other",
        }
    }
}

/// Input of `submit_guest_service_request`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequestInput {
    /// The staying guest.
    pub guest_email: String,
    /// The guest's room.
    pub room_number: String,
    #[serde(rename = "type")]
    pub request_type: ServiceType,
    pub priority: Priority,
    pub description: String,
    pub idempotency_key: String,
}

impl SkillInput for ServiceRequestInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::room_number("room_number", &self.room_number),
            input::text("description", &self.description, 2000),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestInRoom {
    contact_id: String,
    room: Room,
    booking_id: String,
}

pub fn submit_guest_service_request(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<ServiceRequestInput>(
        "submit_guest_service_request",
        1,
        "Opens a service case (housekeeping, room service, amenities...) for a guest staying in \
         the room; on failure nothing is left open.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .step(step(hotel, "verify_guest_room", verify_guest_room))
    .step(undo(
        step(hotel, "open_case", open_service_case),
        hotel,
        close_case,
    ))
    .finish(|input, outputs| {
        let case = outputs.get("open_case").cloned().unwrap_or_default();
        json!({
            "case_id": case.get("case_id"),
            "case_number": case.get("case_number"),
            "status": case.get("status"),
            "room_number": input.get("room_number"),
            "type": input.get("type"),
            "priority": input.get("priority"),
        })
    })
    .build()
}

/// The guest must be checked in to the room they ask about.
async fn verify_guest_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<GuestInRoom, StepError> {
    let input: ServiceRequestInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let guest = records::guest(crm, &input.guest_email).await?;
    let room = records::room(crm, &input.room_number).await?;
    let stays =
        records::guest_bookings_in_status(crm, &guest.id, booking_status::CHECKED_IN).await?;
    let booking = stays
        .into_iter()
        .find(|b| b.room == room.id)
        .ok_or_else(|| {
            StepError::permanent(
                "not_staying_in_room",
                format!(
                    "{} is not checked in to room {}",
                    input.guest_email, input.room_number
                ),
            )
            .with_action("Service requests are for the room the guest is staying in (list_bookings shows it)")
        })?;
    Ok(GuestInRoom {
        contact_id: guest.id,
        room,
        booking_id: booking.id,
    })
}

async fn open_service_case(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: ServiceRequestInput = ctx.input()?;
    let found: GuestInRoom = ctx.output("verify_guest_room")?;
    open_case(
        &hotel,
        &ctx,
        json!({
            "Subject": subject(&input.description),
            "Description": input.description,
            "Type": input.request_type.as_str(),
            "Priority": input.priority.as_str(),
            "Status": "New",
            "Origin": "Web",
            "ContactId": found.contact_id,
            "Room__c": found.room.id,
            "Booking__c": found.booking_id,
        }),
    )
    .await
}
