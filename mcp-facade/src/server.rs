//! The MCP server: lists and calls tools for the caller's role, reports sagas, answers tasks
//! and the `saga://{id}` resource template. Thin by design: it validates, authorizes, starts
//! or finds a saga, waits a bounded time, and reports. It never orchestrates.

use crate::audit::{AuditEntry, AuditStore, Outcome};
use crate::auth::{Principal, Role};
use crate::results::{saga_report, ToolError};
use crate::schema;
use crate::tasks;
use crate::tools::{access, Access, Catalog, Control, ToolTarget, IDEMPOTENCY_KEY};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateTaskResult, GetTaskParams, GetTaskResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::{
    Engine, Exposure, OperatorError, OperatorRequest, Query, SagaDetail, SagaFilter, SagaStatus,
    Skill, StartError, StartRequest, StoreError,
};
use uuid::Uuid;

/// Default bound on how long a skill call waits for its saga (`STEPWISE_MCP_WAIT_MS`).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5000);

/// What every MCP session of a process shares: the engine, the catalog, the audit.
pub struct Facade {
    engine: Engine,
    catalog: Catalog,
    audit: AuditStore,
    wait: Duration,
}

impl Facade {
    /// A facade over `engine`'s registry; skill calls wait at most `wait` for their saga.
    pub fn new(engine: Engine, wait: Duration) -> Arc<Self> {
        let catalog = Catalog::new(engine.registry().clone());
        let audit = AuditStore::new(engine.store().pool().clone());
        Arc::new(Self {
            engine,
            catalog,
            audit,
            wait,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The wait bound from `STEPWISE_MCP_WAIT_MS`, or the default.
    pub fn wait_from_env() -> Duration {
        std::env::var("STEPWISE_MCP_WAIT_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_WAIT)
    }
}

/// One MCP session's handler. Over stdio it acts as a fixed principal; over HTTP the principal
/// of each request comes from its bearer token (see [`crate::http`]).
#[derive(Clone)]
pub struct StepwiseServer {
    facade: Arc<Facade>,
    fixed: Option<Principal>,
}

/// Who is calling and over what.
#[derive(Debug, Clone)]
struct Caller {
    principal: Principal,
    transport: &'static str,
}

/// What a call produced, and how to audit it.
struct Answer {
    response: CallToolResponse,
    outcome: Outcome,
    error_code: Option<String>,
    saga_id: Option<Uuid>,
}

impl Answer {
    fn ok(result: CallToolResult, saga_id: Option<Uuid>) -> Self {
        Self {
            response: result.into(),
            outcome: Outcome::Ok,
            error_code: None,
            saga_id,
        }
    }

    fn refused(error: ToolError, saga_id: Option<Uuid>) -> Self {
        let outcome = match error.code.as_str() {
            "invalid_input" | "not_found" => Outcome::Invalid,
            "forbidden" => Outcome::Refused,
            "idempotency_conflict" => Outcome::Conflict,
            _ => Outcome::Error,
        };
        Self {
            error_code: Some(error.code.clone()),
            response: error.into_result().into(),
            outcome,
            saga_id,
        }
    }

    /// A saga result: ok when completed, pending while running, saga_failed otherwise.
    fn saga(detail: &SagaDetail, result: CallToolResult) -> Self {
        let (outcome, error_code) = match detail.status {
            SagaStatus::Completed => (Outcome::Ok, None),
            SagaStatus::Compensated | SagaStatus::Failed => (
                Outcome::SagaFailed,
                Some(
                    detail
                        .error
                        .as_ref()
                        .and_then(|e| e.get("code"))
                        .and_then(Value::as_str)
                        .unwrap_or("saga_failed")
                        .to_string(),
                ),
            ),
            _ => (Outcome::Pending, None),
        };
        Self {
            response: result.into(),
            outcome,
            error_code,
            saga_id: Some(detail.id),
        }
    }
}

type Call = Result<Answer, McpError>;

fn unavailable(e: impl std::fmt::Display) -> ToolError {
    tracing::error!(error = %e, "facade could not reach the database");
    ToolError::new(
        "unavailable",
        "Stepwise could not reach its database just now.",
    )
    .with_action("Call again with the same arguments (and the same idempotency_key).")
}

impl StepwiseServer {
    /// A session acting as `principal` (stdio).
    pub fn with_principal(facade: Arc<Facade>, principal: Principal) -> Self {
        Self {
            facade,
            fixed: Some(principal),
        }
    }

    /// A session whose requests carry their principal (HTTP, after bearer authentication).
    pub fn per_request(facade: Arc<Facade>) -> Self {
        Self {
            facade,
            fixed: None,
        }
    }

    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        if let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() {
            return match parts.extensions.get::<Principal>() {
                Some(principal) => Ok(Caller {
                    principal: principal.clone(),
                    transport: "http",
                }),
                None => Err(McpError::invalid_request("not authenticated", None)),
            };
        }
        match &self.fixed {
            Some(principal) => Ok(Caller {
                principal: principal.clone(),
                transport: "stdio",
            }),
            None => Err(McpError::invalid_request("not authenticated", None)),
        }
    }

    async fn audit(&self, caller: &Caller, tool: &str, answer: &Answer, started: Instant) {
        let entry = AuditEntry {
            principal: caller.principal.to_string(),
            transport: caller.transport,
            tool: tool.to_string(),
            saga_id: answer.saga_id,
            outcome: answer.outcome,
            error_code: answer.error_code.clone(),
            duration_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
        };
        if let Err(e) = self.facade.audit.record(&entry).await {
            // The call already happened; losing its audit row is logged loudly, never silent.
            tracing::error!(error = %e, ?entry, "could not write the audit row of a tool call");
        }
    }

    async fn dispatch(
        &self,
        caller: &Caller,
        name: &str,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let role = caller.principal.role;
        let Some(target) = self.facade.catalog.target(name) else {
            return Err(McpError::invalid_params(
                format!("unknown tool `{name}` (tools/list shows the tools you may call)"),
                None,
            ));
        };
        match target {
            ToolTarget::Skill(skill) => match access(skill.exposure(), role) {
                Some(access) => self.call_skill(caller, skill, access, args, ctx).await,
                None => Ok(Answer::refused(not_for_role(name, role), None)),
            },
            ToolTarget::Query(query) => match access(query.exposure(), role) {
                Some(access) => self.call_query(caller, query, access, args).await,
                None => Ok(Answer::refused(not_for_role(name, role), None)),
            },
            ToolTarget::Control(control) if control.allows(role) => {
                self.call_control(caller, control, args, ctx).await
            }
            ToolTarget::Control(_) => Ok(Answer::refused(not_for_role(name, role), None)),
        }
    }

    async fn call_skill(
        &self,
        caller: &Caller,
        skill: Arc<Skill>,
        access: Access,
        mut args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let declares_key = crate::tools::skill_declares_key(&skill);
        let key = if declares_key {
            args.get(IDEMPOTENCY_KEY).cloned()
        } else {
            args.remove(IDEMPOTENCY_KEY)
        };
        let key = match key {
            Some(Value::String(k)) if !k.trim().is_empty() && k.len() <= 200 => k,
            Some(Value::String(_)) => {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(IDEMPOTENCY_KEY.into()), "must be 1 to 200 characters"),
                    None,
                ))
            }
            Some(Value::Null) | None => {
                return Ok(Answer::refused(
                    ToolError::invalid(
                        Some(IDEMPOTENCY_KEY.into()),
                        "is required: pick a new key for each new request, and reuse it only \
                         to repeat the same request",
                    ),
                    None,
                ))
            }
            Some(_) => {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(IDEMPOTENCY_KEY.into()), "must be a string"),
                    None,
                ))
            }
        };
        if let Err(e) = enforce_subject(&caller.principal, &access, &mut args) {
            return Ok(Answer::refused(e, None));
        }
        fill_caller_field(&caller.principal, skill.exposure(), &mut args);
        let input = Value::Object(args);
        if let Err(e) = check_input(skill.input_schema(), &input, |v| skill.validate(v)) {
            return Ok(Answer::refused(e, None));
        }

        let started = self
            .facade
            .engine
            .start(StartRequest {
                skill: skill.name().to_string(),
                input,
                idempotency_key: Some(key.clone()),
                started_by: caller.principal.to_string(),
            })
            .await;
        let outcome = match started {
            Ok(outcome) => outcome,
            Err(StartError::IdempotencyConflict { existing, .. }) => {
                let mut error = ToolError::new(
                    "idempotency_conflict",
                    format!(
                        "idempotency_key `{key}` was already used for another `{}` request with \
                         different arguments",
                        skill.name()
                    ),
                )
                .with_action(
                    "Repeat the first request's exact arguments to get its result, or use a new \
                     idempotency_key for a new request.",
                );
                if self
                    .visible(caller, existing)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    error = error.with_extra("saga_id", Value::String(existing.to_string()));
                }
                return Ok(Answer::refused(error, None));
            }
            Err(StartError::InvalidInput { message, .. }) => {
                return Ok(Answer::refused(
                    ToolError::invalid(schema::field_in_message(&message), message),
                    None,
                ))
            }
            Err(StartError::UnknownSkill(name)) => {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{name}`"),
                    None,
                ))
            }
            Err(StartError::Store(e)) => return Ok(Answer::refused(unavailable(e), None)),
        };
        let id = outcome.saga.id;
        if !outcome.created {
            // The key matched an existing saga with the same input: it is the answer, if it
            // is the caller's to see.
            match self.visible(caller, id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Ok(Answer::refused(
                        ToolError::new(
                            "idempotency_conflict",
                            format!("idempotency_key `{key}` is already in use"),
                        )
                        .with_action("Use a new idempotency_key."),
                        None,
                    ))
                }
                Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
            }
        }

        match self.wait_for(id, ctx).await {
            // Still running after the wait bound, and the client declared the tasks extension:
            // hand it a task whose id is the saga id (answered from PostgreSQL by tasks/get).
            Ok(detail) if !detail.status.is_terminal() && client_wants_tasks(ctx) => Ok(Answer {
                response: CreateTaskResult::new(tasks::task_of(&detail)).into(),
                outcome: Outcome::Pending,
                error_code: None,
                saga_id: Some(id),
            }),
            Ok(detail) => {
                let result = saga_report(&detail).into_result();
                Ok(Answer::saga(&detail, result))
            }
            Err(e) => Ok(Answer::refused(unavailable(e), Some(id))),
        }
    }

    /// Waits up to the facade's bound for the saga to end, sending progress notifications when
    /// the request carried a progress token; returns the saga as it is then.
    async fn wait_for(
        &self,
        id: Uuid,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<SagaDetail, StoreError> {
        let engine = &self.facade.engine;
        let deadline = Instant::now() + self.facade.wait;
        let token = ctx.meta.get_progress_token();
        let mut reported: Option<(usize, SagaStatus)> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let slice = if token.is_some() {
                remaining.min(Duration::from_millis(250))
            } else {
                remaining
            };
            let summary = tokio::select! {
                summary = engine.wait(id, slice) => summary?,
                _ = ctx.ct.cancelled() => break,
            };
            if summary.status.is_terminal() || Instant::now() >= deadline {
                break;
            }
            if let Some(token) = &token {
                let Some(detail) = engine.detail(id).await? else {
                    return Err(StoreError::NotFound(id));
                };
                let now = (detail.steps_done(), detail.status);
                if reported != Some(now) {
                    reported = Some(now);
                    let message = match detail.status {
                        SagaStatus::Compensating => "undoing the steps done".to_string(),
                        status => {
                            format!("{status}: {} of {} steps done", now.0, detail.steps.len())
                        }
                    };
                    let progress = ProgressNotificationParam::new(token.clone(), now.0 as f64)
                        .with_total(detail.steps.len() as f64)
                        .with_message(message);
                    if let Err(e) = ctx.peer.notify_progress(progress).await {
                        tracing::debug!(error = %e, "could not send a progress notification");
                    }
                }
            }
        }
        engine.detail(id).await?.ok_or(StoreError::NotFound(id))
    }

    async fn call_query(
        &self,
        caller: &Caller,
        query: Arc<Query>,
        access: Access,
        mut args: JsonObject,
    ) -> Call {
        if let Err(e) = enforce_subject(&caller.principal, &access, &mut args) {
            return Ok(Answer::refused(e, None));
        }
        fill_caller_field(&caller.principal, query.exposure(), &mut args);
        let input = Value::Object(args);
        if let Err(e) = check_input(query.input_schema(), &input, |v| query.validate(v)) {
            return Ok(Answer::refused(e, None));
        }
        match query.call(input).await {
            Ok(output) => {
                let structured = if crate::tools::query_output_is_object(&query) {
                    output
                } else {
                    json!({ "result": output })
                };
                Ok(Answer::ok(CallToolResult::structured(structured), None))
            }
            Err(e) => {
                let mut error = ToolError::new(e.code.clone(), e.message.clone());
                error.action = e.action.clone();
                if e.is_retryable() && error.action.is_none() {
                    error.action =
                        Some("A system it depends on did not answer; call again shortly.".into());
                }
                Ok(Answer::refused(error, None))
            }
        }
    }

    /// The saga if it exists and the caller may see it.
    async fn visible(&self, caller: &Caller, id: Uuid) -> Result<Option<SagaDetail>, StoreError> {
        Ok(self
            .facade
            .engine
            .detail(id)
            .await?
            .filter(|d| caller.principal.may_see_saga(&d.started_by)))
    }

    async fn call_control(
        &self,
        caller: &Caller,
        control: Control,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let tool = self
            .facade
            .catalog
            .tools_for(&caller.principal)
            .into_iter()
            .find(|t| t.name == control.name());
        if let Some(tool) = &tool {
            if let Err((field, message)) = schema::check_arguments(&tool.input_schema, &args) {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(field), message),
                    None,
                ));
            }
        }
        match control {
            Control::GetSagaStatus => {
                let id = match saga_id_arg(&args) {
                    Ok(id) => id,
                    Err(e) => return Ok(Answer::refused(e, None)),
                };
                match self.visible(caller, id).await {
                    Ok(Some(detail)) => {
                        let result = status_result(&detail, None);
                        Ok(Answer::ok(result, Some(id)))
                    }
                    Ok(None) => Ok(Answer::refused(no_such_saga(id), None)),
                    Err(e) => Ok(Answer::refused(unavailable(e), Some(id))),
                }
            }
            Control::ListSagas => {
                let status = match args.get("status").and_then(Value::as_str) {
                    Some(s) => match s.parse::<SagaStatus>() {
                        Ok(status) => Some(status),
                        Err(_) => {
                            return Ok(Answer::refused(
                                ToolError::invalid(Some("status".into()), "is not a saga status"),
                                None,
                            ))
                        }
                    },
                    None => None,
                };
                let limit = args
                    .get("limit")
                    .and_then(Value::as_i64)
                    .unwrap_or(20)
                    .clamp(1, 200);
                let filter = SagaFilter {
                    status,
                    skill: args
                        .get("skill")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    since: None,
                    started_by: (caller.principal.role == Role::Guest)
                        .then(|| caller.principal.to_string()),
                    limit,
                };
                match self.facade.engine.list(&filter).await {
                    Ok(sagas) => {
                        let value = json!({ "sagas": sagas });
                        let mut result = CallToolResult::structured(value);
                        result.content = vec![ContentBlock::text(format!(
                            "{} saga(s): {}",
                            sagas.len(),
                            sagas
                                .iter()
                                .map(|s| format!("{} {} {}", s.id, s.skill, s.status))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))];
                        Ok(Answer::ok(result, None))
                    }
                    Err(e) => Ok(Answer::refused(unavailable(e), None)),
                }
            }
            Control::CancelSaga => {
                let id = match saga_id_arg(&args) {
                    Ok(id) => id,
                    Err(e) => return Ok(Answer::refused(e, None)),
                };
                match self.visible(caller, id).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Answer::refused(no_such_saga(id), None)),
                    Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
                }
                let reason = args.get("reason").and_then(Value::as_str);
                let actor = caller.principal.to_string();
                let requested = match self.facade.engine.cancel(id, &actor, reason).await {
                    Ok(requested) => requested,
                    Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
                };
                match self.wait_for(id, ctx).await {
                    Ok(detail) => Ok(Answer::ok(
                        status_result(&detail, Some(requested)),
                        Some(id),
                    )),
                    Err(e) => Ok(Answer::refused(unavailable(e), Some(id))),
                }
            }
            Control::RetrySaga | Control::RestartSaga | Control::ForkSaga => {
                self.replay(control, caller, &args, ctx).await
            }
        }
    }

    /// retry_saga, restart_saga, fork_saga: the engine's operator actions, recorded with the
    /// caller as the actor; then the resulting saga is waited for and reported.
    async fn replay(
        &self,
        control: Control,
        caller: &Caller,
        args: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let id = match saga_id_arg(args) {
            Ok(id) => id,
            Err(e) => return Ok(Answer::refused(e, None)),
        };
        let mut request = OperatorRequest::new(caller.principal.to_string());
        if let Some(reason) = args.get("reason").and_then(Value::as_str) {
            request = request.reason(reason);
        }
        if let Some(version) = args.get("to_version").and_then(Value::as_u64) {
            request = request.to_version(version.min(u32::MAX as u64) as u32);
        }
        let engine = &self.facade.engine;
        let done = match control {
            Control::RetrySaga => engine.retry(id, &request).await,
            Control::RestartSaga => engine.restart(id, &request).await,
            _ => {
                let Some(step) = args.get("from_step").and_then(Value::as_str) else {
                    return Ok(Answer::refused(
                        ToolError::invalid(Some("from_step".into()), "is required"),
                        Some(id),
                    ));
                };
                engine.fork(id, step, &request).await
            }
        };
        let summary = match done {
            Ok(summary) => summary,
            Err(e) => {
                let error = match &e {
                    OperatorError::NotFound(_) => no_such_saga(id),
                    OperatorError::UnknownStep { .. } => ToolError {
                        field: Some("from_step".into()),
                        ..ToolError::not_found(e.to_string())
                    },
                    OperatorError::UnknownVersion { .. } => ToolError {
                        field: Some("to_version".into()),
                        ..ToolError::not_found(e.to_string())
                    },
                    OperatorError::Refused(_) | OperatorError::VersionMismatch(_) => {
                        ToolError::new("replay_refused", e.to_string())
                    }
                    OperatorError::Store(store) => unavailable(store),
                };
                let mut answer = Answer::refused(error, Some(id));
                if e.is_conflict() {
                    answer.outcome = Outcome::Conflict;
                }
                return Ok(answer);
            }
        };
        match self.wait_for(summary.id, ctx).await {
            Ok(detail) => {
                let result = saga_report(&detail).into_result();
                Ok(Answer::saga(&detail, result))
            }
            Err(e) => Ok(Answer::refused(unavailable(e), Some(summary.id))),
        }
    }
}

fn not_for_role(tool: &str, role: Role) -> ToolError {
    ToolError::forbidden(format!("the {role} role may not call `{tool}`"))
}

fn no_such_saga(id: Uuid) -> ToolError {
    ToolError::not_found(format!("no saga {id} that you can see"))
}

fn saga_id_arg(args: &JsonObject) -> Result<Uuid, ToolError> {
    match args.get("saga_id") {
        Some(Value::String(s)) => Uuid::parse_str(s.trim())
            .map_err(|_| ToolError::invalid(Some("saga_id".into()), "is not a saga id (a UUID)")),
        Some(_) => Err(ToolError::invalid(
            Some("saga_id".into()),
            "must be a string",
        )),
        None => Err(ToolError::invalid(Some("saga_id".into()), "is required")),
    }
}

/// The saga result plus the saga's identity, for `get_saga_status`, `cancel_saga` and the
/// `saga://` resource. A status read is not an error even when the saga failed.
fn status_value(detail: &SagaDetail, cancel_requested: Option<bool>) -> (Value, String) {
    let report = saga_report(detail);
    let mut value = report.structured;
    if let Value::Object(map) = &mut value {
        map.insert(
            "started_by".into(),
            Value::String(detail.started_by.clone()),
        );
        map.insert("idempotency_key".into(), json!(detail.idempotency_key));
        map.insert("created_at".into(), json!(detail.created_at));
        map.insert("updated_at".into(), json!(detail.updated_at));
        if let Some(requested) = cancel_requested {
            map.insert("cancel_requested".into(), Value::Bool(requested));
        }
    }
    let mut text = report.text;
    if cancel_requested == Some(false) {
        text = format!("The saga had already ended; nothing was cancelled. {text}");
    }
    (value, text)
}

fn status_result(detail: &SagaDetail, cancel_requested: Option<bool>) -> CallToolResult {
    let (value, text) = status_value(detail, cancel_requested);
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// Self-service callers act only on their own data: the subject field is filled from the
/// principal when absent and must be the principal's subject when present.
fn enforce_subject(
    principal: &Principal,
    access: &Access,
    args: &mut JsonObject,
) -> Result<(), ToolError> {
    let Access::SelfService { field } = access else {
        return Ok(());
    };
    let Some(field) = field else {
        return Err(ToolError::forbidden(
            "this tool has no field that names whose data it touches, so the caller's role may \
             not use it on its own behalf",
        ));
    };
    match args.get(field.as_str()) {
        None | Some(Value::Null) => {
            args.insert(field.clone(), Value::String(principal.subject.clone()));
            Ok(())
        }
        Some(Value::String(given)) if given.eq_ignore_ascii_case(&principal.subject) => {
            args.insert(field.clone(), Value::String(principal.subject.clone()));
            Ok(())
        }
        Some(_) => Err(ToolError {
            field: Some(field.clone()),
            ..ToolError::forbidden(format!(
                "as a {} you may act only on your own data: `{field}` must be {} (or left out)",
                principal.role, principal.subject
            ))
        }),
    }
}

/// Who acted is recorded from the caller's identity, never from what a model typed: the
/// exposure's `caller_field` is always set to the caller's subject.
fn fill_caller_field(principal: &Principal, exposure: &Exposure, args: &mut JsonObject) {
    if let Some(field) = &exposure.caller_field {
        args.insert(field.clone(), Value::String(principal.subject.clone()));
    }
}

/// Checks arguments against the schema (naming the field) and then the skill's own rules.
fn check_input(
    schema_value: &Value,
    input: &Value,
    validate: impl Fn(&Value) -> Result<(), stepwise_engine::InputError>,
) -> Result<(), ToolError> {
    let schema = schema::normalize(schema_value);
    if let Value::Object(args) = input {
        if let Err((field, message)) = schema::check_arguments(&schema, args) {
            return Err(ToolError::invalid(Some(field), message));
        }
    }
    validate(input).map_err(|e| {
        let field = e
            .field
            .clone()
            .or_else(|| schema::field_in_message(&e.message));
        ToolError::invalid(field, e.message)
    })
}

fn client_wants_tasks(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .is_some_and(|caps| caps.supports_tasks())
}

fn parse_saga_uri(uri: &str) -> Option<Uuid> {
    uri.strip_prefix("saga://")
        .and_then(|rest| Uuid::parse_str(rest.trim_end_matches('/')).ok())
}

impl ServerHandler for StepwiseServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_tasks()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(
                Implementation::new("stepwise", env!("CARGO_PKG_VERSION")).with_title("Stepwise"),
            )
            .with_instructions(
                "Stepwise runs each tool as a durable saga: it validates, runs the steps with \
                 retries, and undoes what was done if a step fails. Every mutating tool takes an \
                 idempotency_key: reuse it to repeat a request safely (after a timeout, say), use \
                 a new one for a new request. A result with status `pending` or `running` is still \
                 going on: get_saga_status tells how it ends. Errors carry a code, a message \
                 saying what was undone, and an action to relay.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&ctx)?;
        Ok(ListToolsResult::with_all_items(
            self.facade.catalog.tools_for(&caller.principal),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&ctx)?;
        let started = Instant::now();
        let name = request.name.to_string();
        let args = request.arguments.unwrap_or_default();
        match self.dispatch(&caller, &name, args, &ctx).await {
            Ok(answer) => {
                tracing::info!(tool = %name, principal = %caller.principal, outcome = answer.outcome.as_str(), saga = ?answer.saga_id, "tool call");
                self.audit(&caller, &name, &answer, started).await;
                Ok(answer.response)
            }
            Err(error) => {
                let answer = Answer {
                    response: CallToolResult::error(vec![]).into(),
                    outcome: Outcome::Invalid,
                    error_code: Some("unknown_tool".into()),
                    saga_id: None,
                };
                self.audit(&caller, &name, &answer, started).await;
                Err(error)
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&ctx)?;
        let filter = SagaFilter {
            started_by: (caller.principal.role == Role::Guest)
                .then(|| caller.principal.to_string()),
            limit: 20,
            ..SagaFilter::default()
        };
        let sagas = self
            .facade
            .engine
            .list(&filter)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let resources = sagas
            .into_iter()
            .map(|s| {
                Resource::new(format!("saga://{}", s.id), format!("{} {}", s.skill, s.id))
                    .with_description(format!("`{}` saga, {}", s.skill, s.status))
                    .with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.caller(&ctx)?;
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("saga://{id}", "saga")
                .with_title("Saga status")
                .with_description(
                    "A saga's status as JSON: status, output or error with what was undone, steps \
                     done. Guests can read only their own sagas.",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&ctx)?;
        let uri = request.uri.clone();
        let Some(id) = parse_saga_uri(&uri) else {
            return Err(McpError::resource_not_found(
                format!("`{uri}` is not a saga://{{id}} resource"),
                Some(json!({ "uri": uri })),
            ));
        };
        let detail = self
            .visible(&caller, id)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .ok_or_else(|| {
                McpError::resource_not_found(
                    format!("no saga {id} that you can see"),
                    Some(json!({ "uri": uri })),
                )
            })?;
        let (value, _) = status_value(&detail, None);
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type("application/json")
        ])
        .into())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let caller = self.caller(&ctx)?;
        let detail = self.task_saga(&caller, &request.task_id).await?;
        Ok(GetTaskResult::new(tasks::detailed_task(&detail)))
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&ctx)?;
        let started = Instant::now();
        let detail = self.task_saga(&caller, &request.task_id).await?;
        let answer = if Control::CancelSaga.allows(caller.principal.role) {
            match self
                .facade
                .engine
                .cancel(
                    detail.id,
                    &caller.principal.to_string(),
                    Some("tasks/cancel"),
                )
                .await
            {
                Ok(_) => Answer::ok(CallToolResult::success(vec![]), Some(detail.id)),
                Err(e) => Answer::refused(unavailable(e), Some(detail.id)),
            }
        } else {
            Answer::refused(
                not_for_role("cancel_saga", caller.principal.role),
                Some(detail.id),
            )
        };
        self.audit(&caller, "tasks/cancel", &answer, started).await;
        match answer.outcome {
            Outcome::Ok => Ok(()),
            Outcome::Refused => Err(McpError::invalid_request(
                format!("the {} role may not cancel sagas", caller.principal.role),
                None,
            )),
            _ => Err(McpError::internal_error(
                "could not record the cancellation",
                None,
            )),
        }
    }
}

impl StepwiseServer {
    async fn task_saga(&self, caller: &Caller, task_id: &str) -> Result<SagaDetail, McpError> {
        let not_found = || McpError::invalid_params(format!("no task `{task_id}`"), None);
        let id = Uuid::parse_str(task_id).map_err(|_| not_found())?;
        self.visible(caller, id)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .ok_or_else(not_found)
    }
}
