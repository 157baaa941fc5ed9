//! The tool catalog: one tool per exposed skill and query of the registry, plus the saga
//! control tools, each shown only to the roles that may call it.
//!
//! Annotations are set explicitly on every tool: a skill tool is not read-only, is destructive
//! when its [`Exposure`] says so, is idempotent (it requires an `idempotency_key`, and the same
//! key and input return the same saga), and is open-world when it reaches external systems. A
//! query is read-only, non-destructive and idempotent.

use crate::auth::Principal;
use crate::results::saga_output_schema;
use crate::schema;
use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use stepwise_engine::{Exposure, Query, Registry, Role, SagaScope, Skill};

/// The argument every skill tool requires (unless the skill's own input declares it).
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";

/// A control tool: saga status and operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    GetSagaStatus,
    ListSagas,
    CancelSaga,
    RetrySaga,
    RestartSaga,
    ForkSaga,
    ProvideInput,
}

impl Control {
    pub const ALL: [Control; 7] = [
        Control::GetSagaStatus,
        Control::ListSagas,
        Control::CancelSaga,
        Control::RetrySaga,
        Control::RestartSaga,
        Control::ForkSaga,
        Control::ProvideInput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Control::GetSagaStatus => "get_saga_status",
            Control::ListSagas => "list_sagas",
            Control::CancelSaga => "cancel_saga",
            Control::RetrySaga => "retry_saga",
            Control::RestartSaga => "restart_saga",
            Control::ForkSaga => "fork_saga",
            Control::ProvideInput => "provide_input",
        }
    }

    /// Whether callers of `role` may use it, from the role's declared data: status and lists
    /// for every role (on the sagas the role may see); cancel for roles that may cancel;
    /// replays for roles that may replay.
    pub fn allows(self, role: &Role) -> bool {
        match self {
            // Who may answer a wait is decided per wait (docs/mcp.md, "Input").
            Control::GetSagaStatus | Control::ListSagas | Control::ProvideInput => true,
            Control::CancelSaga => role.can_cancel(),
            Control::RetrySaga | Control::RestartSaga | Control::ForkSaga => role.can_replay(),
        }
    }

    /// The tool as shown to callers of `role`: a role confined to its own sagas is told so.
    fn tool(self, role: &Role) -> Tool {
        let (description, input, output, annotations) = match self {
            Control::GetSagaStatus => (
                "The status of a saga started through a tool: its status, output or error (with \
                 what was undone), and steps done.",
                json!({
                    "type": "object",
                    "properties": {"saga_id": {"type": "string", "format": "uuid", "description": "The saga's id, as returned by the tool that started it."}},
                    "required": ["saga_id"],
                    "additionalProperties": false
                }),
                Value::Object(status_output_schema()),
                ToolAnnotations::new()
                    .read_only(true)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(false),
            ),
            Control::ListSagas => (
                "Recent sagas, newest first, optionally by status or skill.",
                json!({
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["pending", "running", "waiting", "compensating", "completed", "compensated", "failed"], "description": "Only sagas in this status."},
                        "skill": {"type": "string", "description": "Only sagas of this skill (tool name)."},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20, "description": "At most this many sagas."}
                    },
                    "additionalProperties": false
                }),
                json!({
                    "type": "object",
                    "properties": {"sagas": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "skill": {"type": "string"}, "skill_version": {"type": "integer"},
                        "status": {"type": "string"}, "idempotency_key": {"type": ["string", "null"]},
                        "created_at": {"type": "string"}, "updated_at": {"type": "string"}
                    }, "required": ["id", "skill", "status"]}}},
                    "required": ["sagas"]
                }),
                ToolAnnotations::new()
                    .read_only(true)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(false),
            ),
            Control::CancelSaga => (
                "Stops a saga that is still running and undoes what it did (its running step \
                 finishes first). Waits a bounded time and reports what was undone.",
                json!({
                    "type": "object",
                    "properties": {
                        "saga_id": {"type": "string", "format": "uuid", "description": "The saga to cancel."},
                        "reason": {"type": "string", "maxLength": 500, "description": "Why, for the history."}
                    },
                    "required": ["saga_id"],
                    "additionalProperties": false
                }),
                Value::Object(status_output_schema()),
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(true)
                    .open_world(false),
            ),
            Control::RetrySaga => (
                "Operators: resumes the undo of a `failed` saga (a compensation that ran out of \
                 attempts, e.g. while a payment API was down) where it stopped, then waits a \
                 bounded time and reports. A `compensated` saga cannot be retried in place: \
                 restart it.",
                replay_input(false),
                Value::Object(saga_output_schema(None)),
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(false)
                    .open_world(true),
            ),
            Control::RestartSaga => (
                "Operators: starts a new saga with the same input as this one (linked by \
                 replay_of), e.g. a checkout compensated during an outage, then waits a bounded \
                 time and reports the new saga.",
                replay_input(false),
                Value::Object(saga_output_schema(None)),
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
            Control::ForkSaga => (
                "Operators: starts a new saga that reuses the outputs of this saga's steps before \
                 `from_step` and runs from there (only where those steps succeeded and were not \
                 undone), then waits a bounded time and reports the new saga.",
                replay_input(true),
                Value::Object(saga_output_schema(None)),
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
            Control::ProvideInput => (
                "Gives a saga the input it waits for (status `waiting`, see `waiting_for`): the \
                 answer of the person asked (an approval, a confirmation) as `data` matching \
                 `waiting_for.schema`. Only who the wait names may answer: the person who started \
                 the saga, or the roles in `waiting_for.roles`. Then waits a bounded time and \
                 reports the saga.",
                json!({
                    "type": "object",
                    "properties": {
                        "saga_id": {"type": "string", "format": "uuid", "description": "The waiting saga."},
                        "event": {"type": "string", "minLength": 1, "description": "What it waits for: `waiting_for.event`."},
                        "data": {"type": "object", "description": "The answer, matching `waiting_for.schema`.", "default": {}},
                        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200, "description": "A new key for each answer; reuse it only to repeat the same answer."}
                    },
                    "required": ["saga_id", "event", "idempotency_key"],
                    "additionalProperties": false
                }),
                {
                    let mut schema = status_output_schema();
                    if let Some(Value::Object(props)) = schema.get_mut("properties") {
                        props.insert("input".into(), json!({
                            "type": "object",
                            "description": "The answer delivered: its event, key, and whether it repeated an earlier one.",
                            "properties": {"event": {"type": "string"}, "idempotency_key": {"type": "string"}, "duplicate": {"type": "boolean"}}
                        }));
                    }
                    Value::Object(schema)
                },
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(true)
                    .open_world(false),
            ),
        };
        let description = match (self, role.saga_scope()) {
            (Control::GetSagaStatus | Control::ListSagas, SagaScope::Own) => {
                format!("{description} You see only the sagas you started.")
            }
            (Control::CancelSaga, SagaScope::Own) => {
                format!("{description} You may cancel only the sagas you started.")
            }
            _ => description.to_string(),
        };
        Tool::new(self.name(), description, object(input))
            .with_raw_output_schema(Arc::new(object(output)))
            .with_annotations(annotations.with_title_of(self.name()))
    }
}

fn replay_input(from_step: bool) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "saga_id": {"type": "string", "format": "uuid", "description": "The saga to replay."},
            "reason": {"type": "string", "maxLength": 500, "description": "Why, for the history."},
            "to_version": {"type": "integer", "minimum": 1, "description": "Run on this registered version of the skill instead of the saga's own (when its steps changed)."}
        },
        "required": ["saga_id"],
        "additionalProperties": false
    });
    if from_step {
        schema["properties"]["from_step"] = json!({"type": "string", "description": "The first step to run again; the outputs of the steps before it are reused."});
        schema["required"] = json!(["saga_id", "from_step"]);
    }
    schema
}

trait WithTitle {
    fn with_title_of(self, name: &str) -> Self;
}

impl WithTitle for ToolAnnotations {
    fn with_title_of(mut self, name: &str) -> Self {
        let mut title = name.replace('_', " ");
        if let Some(first) = title.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        self.title = Some(title);
        self
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The saga result plus the fields `get_saga_status` and `cancel_saga` add.
fn status_output_schema() -> Map<String, Value> {
    let mut schema = saga_output_schema(None);
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.insert("started_by".into(), json!({"type": "string"}));
        props.insert(
            "idempotency_key".into(),
            json!({"type": ["string", "null"]}),
        );
        props.insert("created_at".into(), json!({"type": "string"}));
        props.insert("updated_at".into(), json!({"type": "string"}));
        props.insert(
            "cancel_requested".into(),
            json!({"type": "boolean", "description": "cancel_saga: whether this call asked the saga to stop."}),
        );
    }
    schema
}

/// What a tool name resolves to for a caller.
#[derive(Debug, Clone)]
pub enum ToolTarget {
    Skill(Arc<Skill>),
    Query(Arc<Query>),
    Control(Control),
}

/// How a caller may use a skill or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// On anyone's data.
    Full,
    /// Only on its own: the input field `field` must be the caller's subject.
    SelfService { field: Option<String> },
}

/// Whether `role` sees a skill or query with this exposure, and how. A role declared with
/// every tool (the operator) sees everything exposed; an empty exposure is not a tool at all.
/// Own-data access comes only from the exposure's self-service roles and subject field.
pub fn access(exposure: &Exposure, role: &Role) -> Option<Access> {
    let exposed = !exposure.roles.is_empty() || !exposure.self_service_roles.is_empty();
    if !exposed {
        return None;
    }
    if role.has_every_tool() || exposure.roles.iter().any(|r| r == role.name()) {
        return Some(Access::Full);
    }
    if exposure.self_service_roles.iter().any(|r| r == role.name()) {
        return Some(Access::SelfService {
            field: exposure.subject_field.clone(),
        });
    }
    None
}

/// The registry seen as tools.
#[derive(Debug, Clone)]
pub struct Catalog {
    registry: Arc<Registry>,
}

impl Catalog {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Resolves a tool name regardless of the caller (for "exists but not for you").
    pub fn target(&self, name: &str) -> Option<ToolTarget> {
        if let Some(skill) = self.registry.latest(name) {
            let exposed = !skill.exposure().roles.is_empty()
                || !skill.exposure().self_service_roles.is_empty();
            return exposed.then_some(ToolTarget::Skill(skill));
        }
        if let Some(query) = self.registry.query(name) {
            let exposed = !query.exposure().roles.is_empty()
                || !query.exposure().self_service_roles.is_empty();
            return exposed.then_some(ToolTarget::Query(query));
        }
        Control::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .map(ToolTarget::Control)
    }

    /// Whether callers of `role` may call the tool `name`: `None` when no such tool exists.
    pub fn allows(&self, name: &str, role: &Role) -> Option<bool> {
        Some(match self.target(name)? {
            ToolTarget::Skill(skill) => access(skill.exposure(), role).is_some(),
            ToolTarget::Query(query) => access(query.exposure(), role).is_some(),
            ToolTarget::Control(control) => control.allows(role),
        })
    }

    /// The declared roles whose callers may call the tool `name`, sorted by name (empty for an
    /// unknown tool).
    pub fn roles_for(&self, name: &str) -> Vec<String> {
        let mut roles: Vec<String> = self
            .registry
            .roles()
            .iter()
            .filter(|role| self.allows(name, role) == Some(true))
            .map(|role| role.name().to_string())
            .collect();
        roles.sort();
        roles
    }

    /// The tools `principal` may call, sorted by name.
    pub fn tools_for(&self, principal: &Principal) -> Vec<Tool> {
        let role = principal.role();
        let mut tools = Vec::new();
        for skill in self.registry.latest_skills() {
            if let Some(access) = access(skill.exposure(), role) {
                tools.push(skill_tool(&skill, &access));
            }
        }
        for query in self.registry.queries() {
            if let Some(access) = access(query.exposure(), role) {
                tools.push(query_tool(&query, &access));
            }
        }
        for control in Control::ALL {
            if control.allows(role) {
                tools.push(control.tool(role));
            }
        }
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }
}

/// Whether a skill's own input declares `idempotency_key` (then it is passed through).
pub fn skill_declares_key(skill: &Skill) -> bool {
    schema::has_property(&schema::normalize(skill.input_schema()), IDEMPOTENCY_KEY)
}

fn self_service_note(field: &str) -> String {
    format!(
        "You may act only on your own data: `{field}` is filled in from your identity and \
         must not name anyone else."
    )
}

fn apply_access(input: &mut Map<String, Value>, access: &Access, exposure: &Exposure) {
    if let Access::SelfService { field: Some(field) } = access {
        schema::make_optional(input, field, &self_service_note(field));
    }
    if let Some(field) = &exposure.caller_field {
        schema::make_optional(
            input,
            field,
            "Filled in by Stepwise with your identity; whatever is given is replaced.",
        );
    }
}

fn skill_tool(skill: &Skill, access: &Access) -> Tool {
    let mut input = schema::normalize(skill.input_schema());
    if !schema::has_property(&input, IDEMPOTENCY_KEY) {
        schema::add_property(
            &mut input,
            IDEMPOTENCY_KEY,
            json!({
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "Makes the call safe to repeat: the same key with the same input \
                                returns the same saga and result (use it again after a timeout); \
                                the same key with other input is refused (idempotency_conflict). \
                                Use a new key for a new request."
            }),
            true,
        );
    } else {
        let declared = input
            .get("properties")
            .and_then(|p| p.get(IDEMPOTENCY_KEY))
            .cloned()
            .unwrap_or_else(|| json!({"type": "string"}));
        schema::add_property(&mut input, IDEMPOTENCY_KEY, declared, true);
    }
    apply_access(&mut input, access, skill.exposure());
    let skill_output = skill.output_schema().map(schema::normalize);
    let output = saga_output_schema(skill_output.as_ref());
    let exposure = skill.exposure();
    let annotations = ToolAnnotations::new()
        .read_only(false)
        .destructive(exposure.destructive)
        .idempotent(true)
        .open_world(exposure.open_world)
        .with_title_of(skill.name());
    // The skill's version is in the result (`skill`) and in `stepwise skills`; the agent
    // needs only what the call returns (docs/mcp.md, "What tools/list costs").
    let description = format!(
        "{} A durable saga: returns the output, or the error and what was undone; still \
         running after a bounded wait, its status.",
        skill.description(),
    );
    Tool::new(skill.name().to_string(), description, input)
        .with_raw_output_schema(Arc::new(output))
        .with_annotations(annotations)
}

/// A query's output as structured content: objects as they are, anything else wrapped.
pub fn query_output_is_object(query: &Query) -> bool {
    query.output_schema().get("type").and_then(Value::as_str) == Some("object")
}

fn query_tool(query: &Query, access: &Access) -> Tool {
    let mut input = schema::normalize(query.input_schema());
    apply_access(&mut input, access, query.exposure());
    let output = if query_output_is_object(query) {
        schema::normalize(query.output_schema())
    } else {
        let inner = schema::resolve(query.output_schema());
        object(json!({
            "type": "object",
            "properties": {"result": Value::Object(inner)},
            "required": ["result"]
        }))
    };
    let annotations = ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(query.exposure().open_world)
        .with_title_of(query.name());
    Tool::new(
        query.name().to_string(),
        query.description().to_string(),
        input,
    )
    .with_raw_output_schema(Arc::new(output))
    .with_annotations(annotations)
}
