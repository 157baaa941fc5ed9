//! `update_room_status`: moves a room along the legal transitions only (e.g. Cleaning to
//! Vacant); Occupied is entered and left by check-in and checkout alone.

use crate::hotel::effects::crm::{restore_room_status, set_room_status, StatusChange};
use crate::hotel::records::{self, room_status, Room, RoomStatus};
use crate::hotel::{exposure, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Whether staff may move a room from `from` to `to` by hand. Occupied is entered and left
/// only by check-in and checkout, which keep the booking in step.
pub fn legal_transition(from: &str, to: &str) -> Result<(), String> {
    use room_status::*;
    let allowed: &[&str] = match from {
        VACANT => &[CLEANING, MAINTENANCE, OUT_OF_SERVICE],
        CLEANING => &[VACANT, MAINTENANCE, OUT_OF_SERVICE],
        MAINTENANCE => &[VACANT, CLEANING, OUT_OF_SERVICE],
        OUT_OF_SERVICE => &[MAINTENANCE, CLEANING, VACANT],
        OCCUPIED => &[],
        _ => &[],
    };
    if allowed.contains(&to) {
        return Ok(());
    }
    let hint = match (from, to) {
        (OCCUPIED, _) => "an occupied room is released by process_guest_checkout".to_string(),
        (_, OCCUPIED) => "a room becomes Occupied by check_in_guest".to_string(),
        _ if from == to => format!("the room is already {from}"),
        _ => format!("from {from} a room may go to {}", allowed.join(", ")),
    };
    Err(format!("a room cannot go from {from} to {to}: {hint}"))
}

/// Input of `update_room_status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomStatusInput {
    pub room_number: String,
    /// The new status; only legal transitions are accepted (e.g. Cleaning -> Vacant).
    pub status: RoomStatus,
    #[serde(default)]
    pub reason: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for UpdateRoomStatusInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::room_number("room_number", &self.room_number),
            self.reason
                .as_deref()
                .map_or(Ok(()), |r| input::text("reason", r, 500)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

pub fn update_room_status(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<UpdateRoomStatusInput>(
        "update_room_status",
        1,
        "Moves a room to a new status when the transition is legal (e.g. Cleaning to Vacant, \
         Vacant to Maintenance); illegal ones are refused; on failure the old status is restored.",
    )
    .exposure(exposure::staff_manager())
    .step(step(hotel, "check_transition", check_transition))
    .step(undo(
        step(hotel, "set_status", set_status),
        hotel,
        restore_room_status("check_transition"),
    ))
    .finish(|input, outputs| {
        let room: Value = outputs.get("check_transition").cloned().unwrap_or_default();
        json!({
            "room_number": input.get("room_number"),
            "previous_status": room.get("Status__c"),
            "status": input.get("status"),
        })
    })
    .build()
}

async fn check_transition(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Room, StepError> {
    let input: UpdateRoomStatusInput = ctx.input()?;
    let room = records::room(&hotel.connectors.crm, &input.room_number).await?;
    legal_transition(&room.status, input.status.as_str())
        .map_err(|message| StepError::permanent("illegal_transition", message))?;
    Ok(room)
}

async fn set_status(hotel: Arc<Hotel>, ctx: StepContext) -> Result<StatusChange, StepError> {
    let input: UpdateRoomStatusInput = ctx.input()?;
    let room: Room = ctx.output("check_transition")?;
    set_room_status(&hotel, room, input.status.as_str()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_rooms_become_vacant_but_occupied_ones_only_through_checkout() {
        assert!(legal_transition("Cleaning", "Vacant").is_ok());
        assert!(legal_transition("Vacant", "Maintenance").is_ok());
        let err = legal_transition("Occupied", "Vacant")
            .err()
            .unwrap_or_default();
        assert!(err.contains("process_guest_checkout"), "{err}");
        let err = legal_transition("Vacant", "Occupied")
            .err()
            .unwrap_or_default();
        assert!(err.contains("check_in_guest"), "{err}");
        assert!(legal_transition("Vacant", "Vacant").is_err());
    }
}
