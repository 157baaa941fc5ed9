//! The MCP server: lists and calls tools for the caller's role, reports sagas, answers tasks
//! and the `saga://{id}` resource template. Thin by design: it validates, authorizes, starts
//! or finds a saga, waits a bounded time, and reports. It never orchestrates.

use crate::audit::{read_fingerprint, AuditEntry, AuditStore, Outcome, RepeatedReads};
use crate::auth::{AuthError, Principal};
use crate::results::{saga_report, ToolError};
use crate::schema;
use crate::tasks;
use crate::tools::{access, Access, Catalog, Control, ToolTarget, IDEMPOTENCY_KEY};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateTaskResult, ErrorCode, GetTaskParams, GetTaskResult, Implementation, InputResponses,
    JsonObject, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ServerCapabilities, ServerConfig, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::{
    Engine, Exposure, OperatorError, OperatorRequest, Query, Role, SagaDetail, SagaFilter,
    SagaStatus, Skill, StartError, StartRequest, StoreError,
};
use uuid::Uuid;

mod calls;
mod control;
mod input;

use control::{not_for_role, status_value};

/// Default bound on how long a skill call waits for its saga (`STEPWISE_MCP_WAIT_MS`).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5000);

/// What every MCP session of a process shares: the engine, the catalog, the audit.
pub struct Facade {
    engine: Engine,
    catalog: Catalog,
    audit: AuditStore,
    reads: RepeatedReads,
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
            reads: RepeatedReads::default(),
            wait,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Parses `role:subject` against the roles of the facade's catalog.
    pub fn principal(&self, text: &str) -> Result<Principal, AuthError> {
        Principal::parse(self.engine.registry(), text)
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
            "invalid_input" | "not_found" | "not_waiting" | "saga_ended" => Outcome::Invalid,
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

/// What a 2026-07-28 client sends when it repeats a call that answered `InputRequiredResult`:
/// the answers to its input requests and the `requestState` it was given.
#[derive(Debug, Default)]
struct Retry {
    responses: InputResponses,
    state: Option<String>,
}

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
        self.record_audit(AuditEntry {
            principal: caller.principal.to_string(),
            transport: caller.transport,
            tool: tool.to_string(),
            saga_id: answer.saga_id,
            outcome: answer.outcome,
            error_code: answer.error_code.clone(),
            duration_ms: elapsed_ms(started),
        })
        .await;
    }

    /// Audits a read of one saga outside a tool call (`resources/read`, `tasks/get`), so who
    /// looked at which saga is on record as for `get_saga_status`: found; not found or not the
    /// caller's (no saga id, as for the tool); or the database failing. A `tasks/get` or
    /// `resources/read` of `target` (the task id or URI asked for) answering what this
    /// caller's last recorded read of it answered is not recorded again ([`RepeatedReads`]);
    /// a failure to read is always recorded.
    async fn audit_read(
        &self,
        caller: &Caller,
        method: &'static str,
        target: &str,
        read: &Result<SagaDetail, McpError>,
        started: Instant,
    ) {
        let (saga_id, outcome, error_code) = match read {
            Ok(detail) => (Some(detail.id), Outcome::Ok, None),
            Err(e) if e.code == ErrorCode::INTERNAL_ERROR => {
                (None, Outcome::Error, Some("unavailable".to_string()))
            }
            Err(_) => (None, Outcome::Invalid, Some("not_found".to_string())),
        };
        let polled = matches!(method, "tasks/get" | "resources/read");
        if polled && outcome != Outcome::Error {
            let fingerprint = match read {
                Ok(detail) => read_fingerprint(detail),
                Err(_) => "not_found".to_string(),
            };
            let principal = caller.principal.to_string();
            if !self
                .facade
                .reads
                .first_or_changed(&principal, method, target, fingerprint)
            {
                return;
            }
        }
        self.record_audit(AuditEntry {
            principal: caller.principal.to_string(),
            transport: caller.transport,
            tool: method.to_string(),
            saga_id,
            outcome,
            error_code,
            duration_ms: elapsed_ms(started),
        })
        .await;
    }

    async fn record_audit(&self, entry: AuditEntry) {
        if let Err(e) = self.facade.audit.record(&entry).await {
            // The call already happened; losing its audit row is logged loudly, never silent.
            tracing::error!(error = %e, ?entry, "could not write the audit row of a call");
        }
    }

    async fn dispatch(
        &self,
        caller: &Caller,
        name: &str,
        args: JsonObject,
        retry: &Retry,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let role = caller.principal.role();
        let Some(target) = self.facade.catalog.target(name) else {
            return Err(McpError::invalid_params(
                format!("unknown tool `{name}` (tools/list shows the tools you may call)"),
                None,
            ));
        };
        match target {
            ToolTarget::Skill(skill) => match access(skill.exposure(), role) {
                Some(access) => {
                    self.call_skill(caller, skill, access, args, retry, ctx)
                        .await
                }
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
}

fn elapsed_ms(started: Instant) -> i32 {
    started.elapsed().as_millis().min(i32::MAX as u128) as i32
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
        let retry = Retry {
            responses: request.input_responses.unwrap_or_default(),
            state: request.request_state,
        };
        let args = request.arguments.unwrap_or_default();
        match self.dispatch(&caller, &name, args, &retry, &ctx).await {
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
            started_by: caller.principal.own_sagas_filter(),
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
                     done. A caller whose role is confined to its own sagas reads only those.",
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
        let started = Instant::now();
        let uri = request.uri.clone();
        let read = self.resource_saga(&caller, &uri).await;
        self.audit_read(&caller, "resources/read", &uri, &read, started)
            .await;
        let detail = read?;
        let (value, _) = status_value(&caller.principal, &detail, None);
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
        let started = Instant::now();
        let read = self.task_saga(&caller, &request.task_id).await;
        self.audit_read(&caller, "tasks/get", &request.task_id, &read, started)
            .await;
        Ok(GetTaskResult::new(tasks::detailed_task(
            &read?,
            &caller.principal,
        )))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&ctx)?;
        self.update_task_input(&caller, request).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&ctx)?;
        let started = Instant::now();
        let read = self.task_saga(&caller, &request.task_id).await;
        if read.is_err() {
            // An unknown (or another guest's) task is on record too, like the tool's refusal.
            self.audit_read(&caller, "tasks/cancel", &request.task_id, &read, started)
                .await;
        }
        let detail = read?;
        let answer = if Control::CancelSaga.allows(caller.principal.role()) {
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
                not_for_role("cancel_saga", caller.principal.role()),
                Some(detail.id),
            )
        };
        self.audit(&caller, "tasks/cancel", &answer, started).await;
        match answer.outcome {
            Outcome::Ok => Ok(()),
            Outcome::Refused => Err(McpError::invalid_request(
                format!(
                    "the {} role may not cancel sagas",
                    caller.principal.role().name()
                ),
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
    /// The saga a `saga://{id}` URI names, if the caller may see it.
    async fn resource_saga(&self, caller: &Caller, uri: &str) -> Result<SagaDetail, McpError> {
        let Some(id) = parse_saga_uri(uri) else {
            return Err(McpError::resource_not_found(
                format!("`{uri}` is not a saga://{{id}} resource"),
                Some(json!({ "uri": uri })),
            ));
        };
        self.visible(caller, id)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .ok_or_else(|| {
                McpError::resource_not_found(
                    format!("no saga {id} that you can see"),
                    Some(json!({ "uri": uri })),
                )
            })
    }

    async fn task_saga(&self, caller: &Caller, task_id: &str) -> Result<SagaDetail, McpError> {
        let not_found = || McpError::invalid_params(format!("no task `{task_id}`"), None);
        let id = Uuid::parse_str(task_id).map_err(|_| not_found())?;
        self.visible(caller, id)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .ok_or_else(not_found)
    }
}
