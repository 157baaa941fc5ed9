//! Twilio-style SMS under `/twilio/2010-04-01/Accounts/{AccountSid}/Messages.json`.
//!
//! Basic auth `AccountSid:AuthToken` (the SID must match the path), form-encoded bodies,
//! Twilio error JSON `{"code","message","more_info","status"}`. Twilio's magic test numbers
//! for `To` behave like Twilio's test credentials: `+15005550001` invalid (21211),
//! `+15005550002` cannot route (21612), `+15005550003` no international permission (21408),
//! `+15005550004` opted out (21610), `+15005550009` not SMS-capable (21614).

use super::server::{Reply, Req};
use super::state::{IdMaker, SandboxState};
use axum::http::Method;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The sent messages.
#[derive(Debug, Clone)]
pub struct TwilioState {
    pub messages: BTreeMap<String, Value>,
    ids: IdMaker,
}

impl TwilioState {
    pub fn new(seed: u64) -> Self {
        Self {
            messages: BTreeMap::new(),
            ids: IdMaker::new(seed, 5),
        }
    }

    pub fn messages_json(&self) -> Vec<Value> {
        self.messages.values().cloned().collect()
    }
}

/// A Twilio error document.
pub fn error_body(code: u32, message: &str, status: u16) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

fn error(code: u32, message: impl Into<String>, status: u16) -> Reply {
    Reply::json(status, &error_body(code, &message.into(), status))
}

/// The account SID in the path, if the path is under `/2010-04-01/Accounts/{sid}`.
fn path_account(segments: &[String]) -> Option<&str> {
    match segments {
        [version, accounts, sid, ..] if version == "2010-04-01" && accounts == "Accounts" => {
            Some(sid.as_str())
        }
        _ => None,
    }
}

/// Basic auth whose user is the account SID of the path and whose password is not empty.
pub fn authenticate(req: &Req<'_>) -> Result<(), Reply> {
    let segments = req.segments();
    let ok = match (req.basic(), path_account(&segments)) {
        (Some((user, token)), Some(sid)) => {
            user == sid && user.starts_with("AC") && !token.is_empty()
        }
        (Some((user, token)), None) => user.starts_with("AC") && !token.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(error(20003, "Authenticate", 401))
    }
}

/// The 400 for an `I-Twilio-Idempotency-Token` reused with other parameters (sandbox extension).
pub fn idempotency_conflict(token: &str) -> Reply {
    error(
        20001,
        format!(
            "I-Twilio-Idempotency-Token '{token}' was already used with different parameters \
             (sandbox extension)"
        ),
        400,
    )
}

/// E.164: `+`, a non-zero digit, up to 15 digits in all.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

fn twilio_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// Handles one authenticated Twilio request (the path is below `/twilio`).
pub fn handle(state: &mut SandboxState, req: &Req<'_>) -> Reply {
    let segments = req.segments();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method, parts.as_slice()) {
        (&Method::POST, ["2010-04-01", "Accounts", sid, "Messages.json"]) => {
            let sid = sid.to_string();
            send(state, req, &sid)
        }
        (&Method::GET, ["2010-04-01", "Accounts", _, "Messages", file]) => {
            let message = file
                .strip_suffix(".json")
                .and_then(|sid| state.twilio.messages.get(sid));
            match message {
                Some(message) => Reply::json(200, message),
                None => not_found(req),
            }
        }
        _ => not_found(req),
    }
}

fn not_found(req: &Req<'_>) -> Reply {
    error(
        20404,
        format!("The requested resource {} was not found", req.path),
        404,
    )
}

fn send(state: &mut SandboxState, req: &Req<'_>, account_sid: &str) -> Reply {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.form() {
        params.insert(name, value);
    }
    let known = [
        "To",
        "From",
        "MessagingServiceSid",
        "Body",
        "StatusCallback",
        "MediaUrl",
        "ValidityPeriod",
    ];
    if let Some(name) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return error(20001, format!("Unknown parameter: {name}"), 400);
    }
    let get = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let Some(to) = get("To") else {
        return error(21604, "A 'To' phone number is required.", 400);
    };
    let from = get("From");
    let service = get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return error(21603, "A 'From' phone number is required.", 400);
    }
    if let Some(from) = &from {
        if !is_e164(from) {
            return error(
                21212,
                format!("The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."),
                400,
            );
        }
    }
    if let Some(service) = &service {
        if !service.starts_with("MG") {
            return error(
                21701,
                format!("The Messaging Service Sid {service} is invalid."),
                400,
            );
        }
    }
    let Some(body) = get("Body") else {
        return error(21602, "Message body is required.", 400);
    };
    if body.chars().count() > 1600 {
        return error(
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
            400,
        );
    }
    let magic = match to.as_str() {
        "+15005550001" => Some((21211, format!("The 'To' number {to} is not a valid phone number."))),
        "+15005550002" => Some((21612, format!("The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."))),
        "+15005550003" => Some((21408, format!("Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."))),
        "+15005550004" => Some((21610, "Attempt to send to unsubscribed recipient".to_string())),
        "+15005550009" => Some((21614, format!("'To' number {to} is not a valid mobile number"))),
        _ => None,
    };
    if let Some((code, message)) = magic {
        return error(code, message, 400);
    }
    if !is_e164(&to) {
        return error(
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
            400,
        );
    }
    let now = state.now();
    let sid = state.twilio.ids.hex("SM", 32);
    let segments = body.chars().count().div_ceil(160).max(1);
    let message = json!({
        "sid": sid,
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": twilio_date(now),
        "date_sent": null,
        "date_updated": twilio_date(now),
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "status": "queued",
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    let reply = Reply::json(201, &message);
    // The carrier accepts it at once: later reads see it delivered.
    let mut delivered = message;
    delivered["status"] = json!("delivered");
    delivered["date_sent"] = json!(twilio_date(now));
    state.twilio.messages.insert(sid, delivered);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+14155550101"));
        assert!(is_e164("+447700900123"));
        assert!(!is_e164("4155550101"));
        assert!(!is_e164("+0123"));
        assert!(!is_e164("+1 415 555 0101"));
        assert!(!is_e164("+1234567890123456"));
    }
}
