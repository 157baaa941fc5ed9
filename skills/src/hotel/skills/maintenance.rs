//! Requests and room operations: `submit_guest_service_request`, `submit_maintenance_request`,
//! `update_room_status`.

use super::records::{self, booking_status, room_status, Room, ROOM};
use super::stay::{close_case, open_case, text_guest};
use super::{exposure, ext, input, recorded, step, undo, Hotel};
use crate::connectors::crm::soql;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    Low,
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "Low",
            Priority::Medium => "Medium",
            Priority::High => "High",
            Priority::Urgent => "Urgent",
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// submit_guest_service_request

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
            .with_action("Service requests are for the room the guest is staying in")
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

/// A case subject: the first line of the description, at most 255 characters.
fn subject(description: &str) -> String {
    description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(255)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// submit_maintenance_request

/// The trade a maintenance request needs (matched to vendors' specialties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MaintenanceType {
    Plumbing,
    Electrical,
    #[serde(rename = "HVAC")]
    Hvac,
    Appliance,
    Furniture,
    General,
}

impl MaintenanceType {
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceType::Plumbing => "Plumbing",
            MaintenanceType::Electrical => "Electrical",
            MaintenanceType::Hvac => "HVAC",
            MaintenanceType::Appliance => "Appliance",
            MaintenanceType::Furniture => "Furniture",
            MaintenanceType::General => "General",
        }
    }
}

/// Input of `submit_maintenance_request`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequestInput {
    pub room_number: String,
    #[serde(rename = "type")]
    pub maintenance_type: MaintenanceType,
    /// Urgent requests take the room out of use and text a vendor at once.
    pub priority: Priority,
    pub description: String,
    /// Who reports it (the MCP facade fills it with the caller's identity).
    #[serde(default)]
    pub reported_by: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for MaintenanceRequestInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::room_number("room_number", &self.room_number),
            input::text("description", &self.description, 2000),
            self.reported_by
                .as_deref()
                .map_or(Ok(()), |e| input::email("reported_by", e)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

pub fn submit_maintenance_request(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<MaintenanceRequestInput>(
        "submit_maintenance_request",
        1,
        "Opens a maintenance case for a room; an urgent one also puts the room in Maintenance and \
         texts a vendor of the right trade; on failure the room status is restored and the case \
         closed.",
    )
    .exposure(exposure::staff_manager().caller_field("reported_by"))
    .step(step(hotel, "find_room", find_room))
    .step(undo(
        step(hotel, "open_case", open_maintenance_case),
        hotel,
        close_case,
    ))
    .step(undo(
        step(hotel, "set_room_maintenance", set_room_maintenance),
        hotel,
        restore_room_status,
    ))
    .step(step(hotel, "dispatch_vendor", dispatch_vendor))
    .finish(|input, outputs| {
        let case = outputs.get("open_case").cloned().unwrap_or_default();
        let room = outputs
            .get("set_room_maintenance")
            .cloned()
            .unwrap_or_default();
        json!({
            "case_id": case.get("case_id"),
            "case_number": case.get("case_number"),
            "room_number": input.get("room_number"),
            "priority": input.get("priority"),
            "room_status": room.get("status"),
            "vendor": outputs.get("dispatch_vendor"),
        })
    })
    .build()
}

async fn find_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Room, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    records::room(&hotel.connectors.crm, &input.room_number).await
}

async fn open_maintenance_case(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    let room: Room = ctx.output("find_room")?;
    let description = match &input.reported_by {
        Some(by) => format!("{}\n\nReported by {by}.", input.description),
        None => input.description.clone(),
    };
    open_case(
        &hotel,
        &ctx,
        json!({
            "Subject": subject(&input.description),
            "Description": description,
            "Type": format!("Maintenance - {}", input.maintenance_type.as_str()),
            "Priority": input.priority.as_str(),
            "Status": if input.priority == Priority::Urgent { "Escalated" } else { "New" },
            "Origin": "Internal",
            "Room__c": room.id,
        }),
    )
    .await
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatusChange {
    room_id: String,
    previous: String,
    status: String,
}

async fn set_room_maintenance(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<StatusChange, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    let room: Room = ctx.output("find_room")?;
    if input.priority != Priority::Urgent || room.status == room_status::MAINTENANCE {
        return Ok(StatusChange {
            room_id: room.id,
            previous: room.status.clone(),
            status: room.status,
        });
    }
    hotel
        .connectors
        .crm
        .update(
            ROOM,
            &room.id,
            &json!({"Status__c": room_status::MAINTENANCE}),
        )
        .await
        .map_err(ext)?;
    Ok(StatusChange {
        room_id: room.id,
        previous: room.status,
        status: room_status::MAINTENANCE.into(),
    })
}

async fn restore_room_status(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let change: StatusChange = recorded(output)?;
    if change.previous != change.status {
        hotel
            .connectors
            .crm
            .update(
                ROOM,
                &change.room_id,
                &json!({"Status__c": change.previous}),
            )
            .await
            .map_err(ext)?;
    }
    Ok(json!({"room_id": change.room_id, "status": change.previous}))
}

#[derive(Debug, Deserialize)]
struct Vendor {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "FirstName", default)]
    first_name: Option<String>,
    #[serde(rename = "LastName", default)]
    last_name: Option<String>,
    #[serde(rename = "Phone", default)]
    phone: Option<String>,
}

/// Urgent requests: text the first vendor of the trade (any vendor when none has it).
async fn dispatch_vendor(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    if input.priority != Priority::Urgent {
        return Ok(
            json!({"dispatched": false, "reason": "not urgent: the maintenance team picks it up"}),
        );
    }
    let crm = &hotel.connectors.crm;
    let case = ctx.output_value("open_case").cloned().unwrap_or_default();
    let fields = "Id, FirstName, LastName, Phone";
    let by_trade = format!(
        "SELECT {fields} FROM Contact WHERE Contact_Type__c = 'Vendor' AND Vendor_Specialty__c = {} ORDER BY LastName LIMIT 1",
        soql::string(input.maintenance_type.as_str())
    );
    let mut vendors: Vec<Vendor> = crm.query(&by_trade).await.map_err(ext)?;
    if vendors.is_empty() {
        let any = format!("SELECT {fields} FROM Contact WHERE Contact_Type__c = 'Vendor' ORDER BY LastName LIMIT 1");
        vendors = crm.query(&any).await.map_err(ext)?;
    }
    let Some(vendor) = vendors.into_iter().next() else {
        return Ok(json!({"dispatched": false, "reason": "no vendor on file"}));
    };
    let name = [vendor.first_name.as_deref(), vendor.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(case_id) = case.get("case_id").and_then(Value::as_str) {
        crm.update(records::CASE, case_id, &json!({"Vendor__c": vendor.id}))
            .await
            .map_err(ext)?;
    }
    let Some(phone) = vendor.phone.as_deref() else {
        return Ok(
            json!({"dispatched": false, "vendor": name, "reason": "the vendor has no phone number"}),
        );
    };
    let body = format!(
        "Dewy Resort URGENT {} job, room {}: {} (case {}).",
        input.maintenance_type.as_str(),
        input.room_number,
        subject(&input.description),
        case.get("case_number")
            .and_then(Value::as_str)
            .unwrap_or("-")
    );
    let sent = text_guest(&hotel, &ctx, phone, &body, None).await?;
    Ok(json!({"dispatched": true, "vendor": name, "vendor_id": vendor.id, "sms": sent}))
}

// ---------------------------------------------------------------------------------------------
// update_room_status

/// A room status (the CRM picklist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RoomStatus {
    Vacant,
    Occupied,
    Cleaning,
    Maintenance,
    #[serde(rename = "Out of Service")]
    OutOfService,
}

impl RoomStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomStatus::Vacant => room_status::VACANT,
            RoomStatus::Occupied => room_status::OCCUPIED,
            RoomStatus::Cleaning => room_status::CLEANING,
            RoomStatus::Maintenance => room_status::MAINTENANCE,
            RoomStatus::OutOfService => room_status::OUT_OF_SERVICE,
        }
    }
}

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
        restore_room_status,
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
    hotel
        .connectors
        .crm
        .update(ROOM, &room.id, &json!({"Status__c": input.status.as_str()}))
        .await
        .map_err(ext)?;
    Ok(StatusChange {
        room_id: room.id,
        previous: room.status,
        status: input.status.as_str().into(),
    })
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
