//! Writes to the CRM/PMS that several skills make: contacts, opportunity stages and room
//! statuses, each with what its undo needs recorded in the step's output.

use crate::hotel::records::{ContactType, Room, CONTACT, OPPORTUNITY, ROOM};
use crate::hotel::{ext, recorded, Hotel};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{StepContext, StepError};

/// Creates (or finds again, on a re-run) the contact keyed by its email: the CRM's unique
/// external id `Unique_Email__c` makes the create idempotent. Returns `(id, created)`.
pub(crate) async fn create_contact(
    hotel: &Hotel,
    email: &str,
    first_name: &str,
    last_name: &str,
    contact_type: ContactType,
    phone: Option<&str>,
) -> Result<(String, bool), StepError> {
    let email = email.to_lowercase();
    let mut fields = json!({
        "FirstName": first_name,
        "LastName": last_name,
        "Email": email,
        "Contact_Type__c": contact_type.as_str(),
    });
    if let (Some(phone), Some(map)) = (phone, fields.as_object_mut()) {
        map.insert("Phone".into(), phone.into());
    }
    let upserted = hotel
        .connectors
        .crm
        .upsert(CONTACT, "Unique_Email__c", &email, &fields)
        .await
        .map_err(ext)?;
    Ok((upserted.id, upserted.created))
}

/// An opportunity's stage change, as recorded by the step that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageChange {
    pub opportunity_id: Option<String>,
    pub previous_stage: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Opportunity {
    #[serde(rename = "StageName", default)]
    stage: Option<String>,
}

/// The opportunity's current stage, read by a saga's first step.
pub(crate) async fn stage_of(
    hotel: &Hotel,
    opportunity: Option<&str>,
) -> Result<Option<String>, StepError> {
    let Some(id) = opportunity else {
        return Ok(None);
    };
    let current: Opportunity = hotel
        .connectors
        .crm
        .get(OPPORTUNITY, id)
        .await
        .map_err(ext)?;
    Ok(current.stage)
}

/// Moves an opportunity to `stage`. The previous stage comes from the first step's recorded
/// output, never re-read here: a re-run would read the stage it set itself.
pub(crate) async fn set_stage(
    hotel: &Hotel,
    opportunity: Option<&str>,
    stage: &str,
    previous: Option<String>,
) -> Result<StageChange, StepError> {
    let Some(id) = opportunity else {
        return Ok(StageChange {
            opportunity_id: None,
            previous_stage: None,
        });
    };
    hotel
        .connectors
        .crm
        .update(OPPORTUNITY, id, &json!({"StageName": stage}))
        .await
        .map_err(ext)?;
    Ok(StageChange {
        opportunity_id: Some(id.to_string()),
        previous_stage: previous,
    })
}

/// Undoes [`set_stage`]: the opportunity goes back to its recorded stage. `planned` gives the
/// change from the saga's earlier outputs (the opportunity and the stage read before it): what
/// is written back when the step is possibly done and recorded nothing.
pub(crate) fn restore_opportunity(
    planned: fn(&StepContext) -> Result<StageChange, StepError>,
) -> impl Fn(Arc<Hotel>, StepContext, Value) -> BoxFuture<'static, Result<Value, StepError>>
       + Send
       + Sync
       + 'static {
    move |hotel, ctx, output| {
        let change = if ctx.possibly_done {
            planned(&ctx)
        } else {
            recorded(output)
        };
        Box::pin(async move { restore_stage(&hotel, change?).await })
    }
}

async fn restore_stage(hotel: &Hotel, change: StageChange) -> Result<Value, StepError> {
    if let (Some(id), Some(stage)) = (&change.opportunity_id, &change.previous_stage) {
        hotel
            .connectors
            .crm
            .update(OPPORTUNITY, id, &json!({"StageName": stage}))
            .await
            .map_err(ext)?;
    }
    Ok(json!({"opportunity_id": change.opportunity_id, "stage": change.previous_stage}))
}

/// A room's status change, as recorded by the step that made it (`previous` equals `status`
/// when the step left the room as it was).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusChange {
    pub room_id: String,
    pub previous: String,
    pub status: String,
}

impl StatusChange {
    /// No write: the room keeps its status.
    pub fn unchanged(room: Room) -> Self {
        Self {
            room_id: room.id,
            previous: room.status.clone(),
            status: room.status,
        }
    }
}

/// Sets a room's status; `room` is the record as the saga's first step read it.
pub(crate) async fn set_room_status(
    hotel: &Hotel,
    room: Room,
    status: &str,
) -> Result<StatusChange, StepError> {
    hotel
        .connectors
        .crm
        .update(ROOM, &room.id, &json!({"Status__c": status}))
        .await
        .map_err(ext)?;
    Ok(StatusChange {
        room_id: room.id,
        previous: room.status,
        status: status.into(),
    })
}

/// Undoes [`set_room_status`]: the room goes back to its recorded status. `room_step` names the
/// step that read the room first: when the step is possibly done (no recorded output), the
/// room goes back to the status that step read.
pub(crate) fn restore_room_status(
    room_step: &'static str,
) -> impl Fn(Arc<Hotel>, StepContext, Value) -> BoxFuture<'static, Result<Value, StepError>>
       + Send
       + Sync
       + 'static {
    move |hotel, ctx, output| Box::pin(restore_room(hotel, ctx, output, room_step))
}

async fn restore_room(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
    room_step: &'static str,
) -> Result<Value, StepError> {
    let change: StatusChange = if ctx.possibly_done {
        let room: Room = ctx.output(room_step)?;
        StatusChange {
            room_id: room.id,
            previous: room.status,
            status: String::new(),
        }
    } else {
        recorded(output)?
    };
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
