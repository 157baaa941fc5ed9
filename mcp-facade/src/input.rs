//! Waits shown to agents: a saga that waits for an event is a request for input, offered to
//! each MCP client in the form its protocol era understands (docs/mcp.md, "Input").
//!
//! | client | what it gets | how it answers |
//! |---|---|---|
//! | declared the tasks extension | task `input_required` with `inputRequests` | `tasks/update` |
//! | 2026-07-28 without tasks | `InputRequiredResult` (MRTR) | the call again, with `inputResponses` |
//! | older, with the elicitation capability | `elicitation/create` during the call | the elicitation result |
//! | any other | result `status: "waiting"` with `waiting_for` | the `provide_input` tool |
//!
//! Each input request is an elicitation: URL mode when the wait names a URL (the answer is
//! given on that page and reaches the saga some other way, e.g. a payment webhook), else a form
//! built from the event's payload schema. Nothing about a wait is kept in the facade: the wait
//! lives in PostgreSQL, and the handle of a wait (the `requestState` of MRTR, the key of a
//! task's input request) is a digest of the saga id, step, event and deadline, recomputed from
//! the saga on every answer, never read back as data.

use crate::auth::Principal;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitationSchema, InputRequest, InputRequests,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use stepwise_engine::{Role, SagaDetail, SagaStatus};
use uuid::Uuid;

/// What a waiting saga asks for, from its `waiting_for`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingInput {
    pub saga_id: Uuid,
    pub skill: String,
    pub step: String,
    pub event: String,
    pub until: String,
    pub prompt: Option<String>,
    pub schema: Value,
    pub url: Option<String>,
    /// Roles whose members may answer; empty: the saga's owner (and operators).
    pub roles: Vec<String>,
    /// The wait's opaque handle (see the module docs).
    pub handle: String,
}

impl PendingInput {
    /// The input a saga waits for, if it is `waiting` for an event (not for a time).
    pub fn of(detail: &SagaDetail) -> Option<Self> {
        if detail.status != SagaStatus::Waiting {
            return None;
        }
        let waiting = detail.waiting_for.as_ref()?;
        let event = waiting.get("event")?.as_str()?.to_string();
        let text = |key: &str| waiting.get(key).and_then(Value::as_str).map(str::to_string);
        let step = text("step").unwrap_or_default();
        let until = text("until").unwrap_or_default();
        let handle = handle(detail.id, &step, &event, &until);
        Some(Self {
            saga_id: detail.id,
            skill: detail.skill.clone(),
            step,
            until,
            prompt: text("prompt"),
            schema: waiting.get("schema").cloned().unwrap_or(Value::Null),
            url: text("url"),
            roles: waiting
                .get("roles")
                .and_then(Value::as_array)
                .map(|roles| {
                    roles
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            event,
            handle,
        })
    }

    /// The key of this wait's input request (`inputRequests`): `{event}@{handle}`, unique over
    /// the saga's life because the handle names the step and the deadline.
    pub fn request_key(&self) -> String {
        format!("{}@{}", self.event, self.handle)
    }

    /// What the human is asked.
    pub fn message(&self) -> String {
        match &self.prompt {
            Some(prompt) => prompt.clone(),
            None => format!(
                "The `{}` request {} waits for `{}` until {}.",
                self.skill, self.saga_id, self.event, self.until
            ),
        }
    }

    /// The elicitation that asks for this input: URL mode when the wait names a URL, else a
    /// form from the payload schema; `None` when the schema is not a flat object of
    /// primitive fields (MCP forms cannot ask for more: the agent answers with `provide_input`).
    pub fn elicitation(&self) -> Option<ElicitRequestParams> {
        if let Some(url) = &self.url {
            return Some(ElicitRequestParams::UrlElicitationParams {
                meta: None,
                message: self.message(),
                url: url.clone(),
                elicitation_id: self.handle.clone(),
            });
        }
        Some(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: self.message(),
            requested_schema: form_schema(&self.schema)?,
        })
    }

    /// This wait's input requests, for a task or an MRTR result (empty when no elicitation
    /// can ask for it).
    pub fn input_requests(&self) -> InputRequests {
        let mut requests = InputRequests::new();
        if let Some(params) = self.elicitation() {
            requests.insert(
                self.request_key(),
                InputRequest::Elicitation(ElicitRequest::new(params)),
            );
        }
        requests
    }

    /// Whether `principal` may answer this wait (the saga started by `started_by`): operators
    /// always; the roles the wait names; or, when it names none, whoever started the saga.
    pub fn may_answer(&self, principal: &Principal, started_by: &str) -> bool {
        if principal.role().name() == Role::OPERATOR {
            return true;
        }
        if self.roles.is_empty() {
            return started_by == principal.to_string();
        }
        self.roles.iter().any(|r| r == principal.role().name())
    }

    /// Who may answer, for a refusal.
    pub fn answered_by(&self) -> String {
        if self.roles.is_empty() {
            "the person who started it (or an operator)".to_string()
        } else {
            format!(
                "a member of {} (or an operator)",
                self.roles
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

fn handle(saga: Uuid, step: &str, event: &str, until: &str) -> String {
    let digest = Sha256::digest(format!("{saga}|{step}|{event}|{until}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The event named by an input request key (`{event}@{handle}`).
pub fn event_of_request_key(key: &str) -> Option<&str> {
    key.rsplit_once('@').map(|(event, _)| event)
}

/// An MCP form schema from an event's payload schema: an object whose properties are all
/// primitive (string, number, integer, boolean, enum). Optional properties that are not
/// primitive are left out of the form; a required one makes a form impossible.
pub fn form_schema(schema: &Value) -> Option<ElicitationSchema> {
    let object = schema.as_object()?;
    if object.get("type").and_then(Value::as_str) != Some("object") {
        return None;
    }
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut properties = Map::new();
    if let Some(Value::Object(props)) = object.get("properties") {
        for (name, prop) in props {
            let single = json!({"type": "object", "properties": {name.clone(): prop}});
            let primitive = matches!(single, Value::Object(ref m) if ElicitationSchema::from_json_schema(m.clone()).is_ok());
            if primitive {
                properties.insert(name.clone(), prop.clone());
            } else if required.contains(name) {
                return None;
            }
        }
    }
    if required.iter().any(|name| !properties.contains_key(name)) {
        return None;
    }
    let mut form = Map::new();
    form.insert("type".into(), json!("object"));
    form.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        form.insert("required".into(), json!(required));
    }
    if let Some(description) = object.get("description") {
        form.insert("description".into(), description.clone());
    }
    ElicitationSchema::from_json_schema(form).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_object_schema_becomes_a_form_and_a_nested_required_field_does_not() {
        let approval = json!({
            "type": "object",
            "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
            "required": ["approved"]
        });
        let form = serde_json::to_value(form_schema(&approval).unwrap()).unwrap();
        assert_eq!(form["properties"]["approved"]["type"], "boolean");
        assert_eq!(form["required"], json!(["approved"]));

        let bare = form_schema(&json!({"type": "object"})).unwrap();
        assert!(bare.properties.is_empty());

        let nested = json!({
            "type": "object",
            "properties": {"card": {"type": "object", "properties": {"n": {"type": "string"}}}},
            "required": ["card"]
        });
        assert!(form_schema(&nested).is_none());
        assert!(form_schema(&json!({"type": "string"})).is_none());
    }

    #[test]
    fn request_keys_name_their_event() {
        assert_eq!(event_of_request_key("payment@0a1b"), Some("payment"));
        assert_eq!(event_of_request_key("a@b@0a1b"), Some("a@b"));
        assert_eq!(event_of_request_key("nohandle"), None);
    }
}
