//! `submit_maintenance_request`: a maintenance case for a room (in the CRM) and a repair task
//! (in the legacy maintenance system); an urgent one also takes the room out of use and texts a
//! vendor of the right trade.

use crate::connectors::crm::soql;
use crate::connectors::housekeeping::{codec::TaskKind, NewTask};
use crate::hotel::effects::cases::{close_case, open_case, subject};
use crate::hotel::effects::crm::{restore_room_status, set_room_status, StatusChange};
use crate::hotel::effects::housekeeping::{cancel_task, create_task};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::records::{self, room_status, Priority, Room};
use crate::hotel::{exposure, ext, input, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

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
        2,
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
        step(hotel, "create_repair_task", create_repair_task),
        hotel,
        cancel_task,
    ))
    .step(undo(
        step(hotel, "set_room_maintenance", set_room_maintenance),
        hotel,
        restore_room_status("find_room"),
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
            "task_no": outputs.get("create_repair_task").and_then(|t| t.get("task_no")),
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

/// The repair task in the legacy maintenance system (the case stays in the CRM too).
async fn create_repair_task(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    let case = ctx
        .output_value("open_case")
        .and_then(|c| c.get("case_number"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let remark = format!(
        "{} (case {case}): {}",
        input.maintenance_type.as_str(),
        subject(&input.description)
    );
    create_task(
        &hotel,
        &ctx,
        NewTask {
            room_number: &input.room_number,
            kind: TaskKind::Repair,
            priority: input.priority,
            due_date: hotel.today(&ctx),
            remark: &remark,
        },
    )
    .await
}

async fn set_room_maintenance(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<StatusChange, StepError> {
    let input: MaintenanceRequestInput = ctx.input()?;
    let room: Room = ctx.output("find_room")?;
    if input.priority != Priority::Urgent || room.status == room_status::MAINTENANCE {
        return Ok(StatusChange::unchanged(room));
    }
    set_room_status(&hotel, room, room_status::MAINTENANCE).await
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
