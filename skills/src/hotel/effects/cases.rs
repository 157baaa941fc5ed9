//! Cases (service, housekeeping and maintenance requests) in the CRM.

use crate::hotel::records::{self, CASE};
use crate::hotel::{ext, possibly_created, record_key, Hotel};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{StepContext, StepError};

/// Opens (or finds again, on a re-run) a case keyed by the step's idempotency key.
pub(crate) async fn open_case(
    hotel: &Hotel,
    ctx: &StepContext,
    fields: Value,
) -> Result<Value, StepError> {
    let crm = &hotel.connectors.crm;
    let upserted = crm
        .upsert(CASE, "External_ID__c", &record_key(ctx), &fields)
        .await
        .map_err(ext)?;
    let case: records::Case = crm.get(CASE, &upserted.id).await.map_err(ext)?;
    Ok(json!({"case_id": case.id, "case_number": case.number, "status": case.status}))
}

/// Undoes [`open_case`]: closes the case its step recorded (or, when the step is possibly done,
/// the case found under its key, if any).
pub(crate) async fn close_case(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let found;
    let id = if ctx.possibly_done {
        found = possibly_created(&hotel, &ctx, CASE).await?;
        match found.as_deref() {
            Some(id) => id,
            None => {
                return Ok(json!({"case_id": null, "possibly_done": true,
                                 "summary": "no case had been opened"}))
            }
        }
    } else {
        output
            .get("case_id")
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::permanent("invalid_step_output", "no case_id"))?
    };
    hotel
        .connectors
        .crm
        .update(CASE, id, &json!({"Status": "Closed", "Description": "Closed automatically: the operation that opened it was undone."}))
        .await
        .map_err(ext)?;
    Ok(json!({"case_id": id, "status": "Closed"}))
}

/// A case subject: the first line of the description, at most 255 characters.
pub(crate) fn subject(description: &str) -> String {
    description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(255)
        .collect()
}
