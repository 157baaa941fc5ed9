//! What a tool call answers: the saga result (docs/mcp.md, "Results") and tool errors.
//!
//! A saga tool returns `structuredContent`
//! `{"saga_id","status","skill","output"?,"error"?:{"code","message","action"?,"undone",`
//! `"undo_summaries"?},"steps_done","steps_total"}`
//! and a text rendering of it. A saga that ended `compensated` or `failed` is a tool error
//! (`isError: true`) whose message says what was undone. Every other refusal is a tool error
//! with `structuredContent: {"error":{"code","message","field"?,"action"?}}`.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Map, Value};
use stepwise_engine::{CompensationStatus, SagaDetail, SagaStatus, StepStatus};

/// A tool error the agent can relay: a stable code, a message, maybe the field at fault and
/// what to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub action: Option<String>,
    /// Extra members of the error object (e.g. the saga id an idempotency key belongs to).
    pub extra: Map<String, Value>,
}

impl ToolError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            field: None,
            action: None,
            extra: Map::new(),
        }
    }

    pub fn invalid(field: Option<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match &field {
            Some(f) if !message.contains(f.as_str()) => format!("`{f}`: {message}"),
            _ => message,
        };
        Self {
            field,
            action: Some("Correct the arguments and call again.".into()),
            ..Self::new("invalid_input", message)
        }
    }

    /// A refusal by role or ownership; callers with a better next move replace the action.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new("forbidden", message).with_action(
            "Not allowed for you: use only the tools tools/list shows you, on your own data, or \
             ask someone whose role allows it.",
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new("not_found", what)
            .with_action("Check the id or name; list_sagas lists the sagas you can see.")
    }

    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    pub fn with_extra(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::String(self.code.clone()));
        error.insert("message".into(), Value::String(self.message.clone()));
        if let Some(field) = &self.field {
            error.insert("field".into(), Value::String(field.clone()));
        }
        if let Some(action) = &self.action {
            error.insert("action".into(), Value::String(action.clone()));
        }
        for (k, v) in &self.extra {
            error.entry(k.clone()).or_insert_with(|| v.clone());
        }
        json!({ "error": Value::Object(error) })
    }

    pub fn into_result(self) -> CallToolResult {
        let mut text = format!("Error ({}): {}", self.code, self.message);
        if let Some(action) = &self.action {
            text.push_str(&format!(" {action}"));
        }
        let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
        result.structured_content = Some(self.to_json());
        result
    }
}

/// The saga result of a finished (or still running) saga.
#[derive(Debug, Clone)]
pub struct SagaReport {
    pub structured: Value,
    pub text: String,
    pub is_error: bool,
}

impl SagaReport {
    pub fn into_result(self) -> CallToolResult {
        let mut result = if self.is_error {
            CallToolResult::error(vec![ContentBlock::text(self.text)])
        } else {
            CallToolResult::success(vec![ContentBlock::text(self.text)])
        };
        result.structured_content = Some(self.structured);
        result
    }
}

/// Steps whose compensation ran, in the order they were undone (reverse of the forward order).
pub fn undone_steps(detail: &SagaDetail) -> Vec<String> {
    let mut undone: Vec<_> = detail
        .steps
        .iter()
        .filter(|s| s.compensation.status == CompensationStatus::Compensated)
        .collect();
    undone.sort_by_key(|s| std::cmp::Reverse(s.position));
    undone.into_iter().map(|s| s.name.clone()).collect()
}

/// What the undos reported, last undone first: each compensated step whose compensation's
/// output has a `summary` sentence (e.g. "a possible charge of $412.00 was found and
/// refunded"), or that was possibly done (its outcome unknown; docs/skills.md, "Possibly done
/// steps"), as `{"step","summary","possibly_done"}`.
fn undo_summaries(detail: &SagaDetail) -> Vec<Value> {
    let mut steps: Vec<_> = detail
        .steps
        .iter()
        .filter(|s| s.compensation.status == CompensationStatus::Compensated)
        .collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.position));
    steps
        .into_iter()
        .filter_map(|s| {
            let summary = s
                .compensation
                .output
                .as_ref()
                .and_then(|o| o.get("summary"))
                .and_then(Value::as_str)
                .map(str::to_string);
            if summary.is_none() && !s.possibly_done {
                return None;
            }
            let summary = summary.unwrap_or_else(|| "its undo ran".to_string());
            Some(json!({"step": s.name, "summary": summary, "possibly_done": s.possibly_done}))
        })
        .collect()
}

/// Steps that succeeded (or possibly took effect) but whose undo failed or has not run yet.
fn not_undone_steps(detail: &SagaDetail) -> Vec<String> {
    detail
        .steps
        .iter()
        .filter(|s| {
            (s.status == StepStatus::Succeeded || s.possibly_done)
                && matches!(
                    s.compensation.status,
                    CompensationStatus::Failed
                        | CompensationStatus::Pending
                        | CompensationStatus::Running
                )
        })
        .map(|s| s.name.clone())
        .collect()
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The structured saga result (see the module docs), plus a sentence for the text content.
pub fn saga_report(detail: &SagaDetail) -> SagaReport {
    let mut out = Map::new();
    out.insert("saga_id".into(), Value::String(detail.id.to_string()));
    out.insert("status".into(), Value::String(detail.status.to_string()));
    out.insert("skill".into(), Value::String(detail.skill.clone()));
    let steps_done = detail.steps_done();
    let steps_total = detail.steps.len();
    out.insert("steps_done".into(), json!(steps_done));
    out.insert("steps_total".into(), json!(steps_total));

    let head = format!("`{}` saga {}", detail.skill, detail.id);
    let (text, is_error) = match detail.status {
        SagaStatus::Completed => {
            let output = detail.output.clone().unwrap_or(Value::Null);
            let text =
                format!("{head} completed ({steps_done}/{steps_total} steps). Output: {output}");
            out.insert("output".into(), output);
            (text, false)
        }
        SagaStatus::Compensated | SagaStatus::Failed => {
            let error = failure(detail);
            let text = format!(
                "{head} {}: {}{}",
                detail.status,
                error["message"].as_str().unwrap_or_default(),
                error
                    .get("action")
                    .and_then(Value::as_str)
                    .map(|a| format!(" {a}"))
                    .unwrap_or_default()
            );
            out.insert("error".into(), error);
            (text, true)
        }
        SagaStatus::Waiting => {
            let waiting = detail.waiting_for.clone().unwrap_or(Value::Null);
            let what = match waiting["event"].as_str() {
                Some(event) => format!("event `{event}`"),
                None => "a time".to_string(),
            };
            let how = match (waiting["event"].as_str(), waiting["url"].as_str()) {
                (Some(_), Some(url)) => {
                    format!(" The answer is given at {url}; the saga goes on by itself once it is.")
                }
                (Some(event), None) => {
                    let who = match waiting["roles"].as_array() {
                        Some(roles) if !roles.is_empty() => format!(
                            "a member of {}",
                            roles
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ),
                        _ => "the person who started it".to_string(),
                    };
                    format!(
                        " Ask {who}, then give the answer with provide_input (saga_id {}, event \
                         `{event}`, data matching waiting_for.schema).",
                        detail.id
                    )
                }
                _ => String::new(),
            };
            let text = format!(
                "{head} is waiting for {what} until {} ({steps_done}/{steps_total} steps done).{}{how}",
                waiting["until"].as_str().unwrap_or("?"),
                waiting["prompt"]
                    .as_str()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            );
            out.insert("waiting_for".into(), waiting);
            (text, false)
        }
        SagaStatus::Pending | SagaStatus::Running | SagaStatus::Compensating => {
            let text = format!(
                "{head} is {} ({steps_done}/{steps_total} steps done). It goes on in the background: \
                 get_saga_status with this saga_id (or the resource saga://{}) tells how it ends.",
                detail.status, detail.id
            );
            (text, false)
        }
    };
    SagaReport {
        structured: Value::Object(out),
        text,
        is_error,
    }
}

/// The `error` member of a compensated or failed saga: the cause, what was undone, what was
/// not, and what to do.
fn failure(detail: &SagaDetail) -> Value {
    let cause = detail.error.clone().unwrap_or(Value::Null);
    let code = cause
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("saga_failed")
        .to_string();
    let cause_message = cause
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the saga did not complete")
        .to_string();
    let step = cause.get("step").and_then(Value::as_str);
    let undone = undone_steps(detail);
    let not_undone = not_undone_steps(detail);

    let cause_message = cause_message.trim_end_matches('.');
    let mut message = match step {
        Some(step) => format!("{cause_message} (at step `{step}`)."),
        None => format!("{cause_message}."),
    };
    if undone.is_empty() {
        message.push_str(" Nothing had to be undone.");
    } else {
        message.push_str(&format!(" Undone, in this order: {}.", list(&undone)));
    }
    let summaries = undo_summaries(detail);
    for summary in &summaries {
        let step = summary["step"].as_str().unwrap_or_default();
        let what = summary["summary"].as_str().unwrap_or_default();
        if summary["possibly_done"] == true {
            message.push_str(&format!(
                " `{step}` may have taken effect (its answer was lost), so it was undone too: \
                 {what}."
            ));
        } else {
            message.push_str(&format!(" `{step}`: {what}."));
        }
    }
    let action = match detail.status {
        SagaStatus::Failed => {
            if !not_undone.is_empty() {
                message.push_str(&format!(" NOT undone yet: {}.", list(&not_undone)));
            }
            Some(format!(
                "An operator has to finish the undo (`stepwise sagas retry {}`); tell the person \
                 their request failed and is being looked after. Do not call again.",
                detail.id
            ))
        }
        _ => cause
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                Some(if code == "cancelled" {
                    "The request was cancelled and rolled back.".to_string()
                } else {
                    "Everything the saga had done was rolled back; fix the cause, then call again \
                     with a new idempotency_key."
                        .to_string()
                })
            }),
    };
    let field = field_named(cause_message);
    let mut error = Map::new();
    error.insert("code".into(), Value::String(code));
    error.insert("message".into(), Value::String(message));
    if let Some(field) = field {
        error.insert("field".into(), Value::String(field));
    }
    if let Some(action) = action {
        error.insert("action".into(), Value::String(action));
    }
    if let Some(step) = step {
        error.insert("step".into(), Value::String(step.to_string()));
    }
    error.insert("undone".into(), json!(undone));
    if !summaries.is_empty() {
        error.insert("undo_summaries".into(), json!(summaries));
    }
    if detail.status == SagaStatus::Failed {
        error.insert("not_undone".into(), json!(not_undone));
    }
    Value::Object(error)
}

/// The JSON Schema of [`saga_report`]'s structured content, with the skill's output schema.
pub fn saga_output_schema(skill_output: Option<&Map<String, Value>>) -> Map<String, Value> {
    let output = skill_output
        .map(|o| Value::Object(o.clone()))
        .unwrap_or_else(|| json!({"description": "The skill's output."}));
    let schema = json!({
        "type": "object",
        "properties": {
            "saga_id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["pending", "running", "waiting", "compensating", "completed", "compensated", "failed"]},
            "waiting_for": {
                "type": ["object", "null"],
                "description": "While `waiting`: what it waits for (`event`; null: a timer) and until when. Answer with provide_input.",
                "properties": {
                    "step": {"type": "string"},
                    "event": {"type": ["string", "null"]},
                    "until": {"type": "string"},
                    "prompt": {"type": ["string", "null"]},
                    "schema": {},
                    "url": {"type": ["string", "null"]},
                    "roles": {"type": "array", "items": {"type": "string"}}
                }
            },
            "skill": {"type": "string"},
            "output": output,
            "error": {
                "type": "object",
                "description": "Why it did not complete, what was undone.",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "action": {"type": "string"},
                    "step": {"type": "string"},
                    "undone": {"type": "array", "items": {"type": "string"}},
                    "not_undone": {"type": "array", "items": {"type": "string"}},
                    // What the undos reported, last undone first (docs/mcp.md, "Results");
                    // the message repeats them, so no description is paid for here.
                    "undo_summaries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "step": {"type": "string"},
                                "summary": {"type": "string"},
                                "possibly_done": {"type": "boolean"}
                            }
                        }
                    }
                },
                "required": ["code", "message"]
            },
            "steps_done": {"type": "integer"},
            "steps_total": {"type": "integer"}
        },
        "required": ["saga_id", "status", "skill", "steps_done", "steps_total"]
    });
    match schema {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The field a step's error names the way input validation does (a message starting with
/// "`field`: ..."), e.g. a status move the record's current status does not allow.
pub(crate) fn field_named(message: &str) -> Option<String> {
    message
        .strip_prefix('`')
        .and_then(|rest| rest.split_once("`:"))
        .map(|(field, _)| field.to_string())
}
