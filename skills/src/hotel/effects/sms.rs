//! Text messages to guests and vendors, recorded in the CRM (`SMS_Notification__c`).

use crate::hotel::records::SMS_NOTIFICATION;
use crate::hotel::{ext, record_key, Hotel};
use serde_json::{json, Value};
use stepwise_engine::{StepContext, StepError};

/// Attempts a text message gets before it is given up (reported, not failed).
const NOTIFY_ATTEMPTS: u32 = 3;

/// Texts a guest and records the message in the CRM. The SMS service refusing the number is
/// reported in the output (the business operation stands); outages are retried.
pub(crate) async fn text_guest(
    hotel: &Hotel,
    ctx: &StepContext,
    phone: &str,
    body: &str,
    booking_id: Option<&str>,
) -> Result<Value, StepError> {
    let sent = hotel
        .connectors
        .sms
        .send(phone, body, &ctx.idempotency_key)
        .await;
    let message = match sent {
        Ok(message) => message,
        // A notification is best effort: a number the service refuses, or an outage that
        // outlasts a few attempts, is reported in the output; it never undoes the business
        // operation the text was about.
        Err(error) if !error.is_retryable() || ctx.attempt >= NOTIFY_ATTEMPTS => {
            return Ok(json!({"sent": false, "to": phone, "error": error.to_string()}));
        }
        Err(error) => return Err(error.into()),
    };
    let mut fields = json!({
        "To__c": phone,
        "Body__c": body,
        "Twilio_Message_SID__c": message.sid,
        "Status__c": "Sent",
    });
    if let (Some(id), Some(map)) = (booking_id, fields.as_object_mut()) {
        map.insert("Booking__c".into(), id.into());
    }
    hotel
        .connectors
        .crm
        .upsert(
            SMS_NOTIFICATION,
            "External_ID__c",
            &record_key(ctx),
            &fields,
        )
        .await
        .map_err(ext)?;
    Ok(json!({"sent": true, "to": phone, "message_sid": message.sid}))
}
