//! Helpers of the MCP tests: a facade over the built-in skills plus test skills and queries
//! with various exposures, a worker, and in-process rmcp clients acting as given principals.
#![allow(dead_code, clippy::unwrap_used)]

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, FormElicitationCapability,
    Implementation, ProgressNotificationParam, ProtocolVersion, UrlElicitationCapability,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, RequestContext, RunningService,
};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stepwise_engine::{
    Engine, Exposure, InputError, PgStore, Query, Registry, Skill, SkillInput, Step, StepError,
    SystemClock, Wait, WorkerConfig,
};
use stepwise_mcp::{Facade, Principal, StepwiseServer};
use tokio_util::sync::CancellationToken;

/// Input of the test skill `guest_note`: staff and managers for anyone, guests for themselves.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteInput {
    /// The guest the note is about.
    pub guest_email: String,
    /// What to note.
    pub note: String,
}

impl SkillInput for NoteInput {
    fn validate(&self) -> Result<(), InputError> {
        if !self.guest_email.contains('@') {
            return Err(InputError::field("guest_email", "must be an email address"));
        }
        if self.note.trim().is_empty() {
            return Err(InputError::field("note", "must not be empty"));
        }
        Ok(())
    }
}

/// Input of the test skill `risky_refund` (managers only; destructive, open world).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    /// Amount in cents.
    pub amount_cents: u32,
    /// Makes the payment step decline.
    #[serde(default)]
    pub decline: bool,
}

impl SkillInput for RefundInput {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindNotesInput {
    /// Whose notes.
    pub guest_email: String,
}

impl SkillInput for FindNotesInput {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FindNotesOutput {
    pub guest_email: String,
    pub notes: Vec<String>,
}

/// Input of the test skill `confirm_stay`: a guest confirms (the saga waits for `confirmed`
/// from the guest who started it, on a page at `url` when given).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmInput {
    /// The guest who confirms.
    pub guest_email: String,
    /// Where the guest confirms, if outside the conversation.
    #[serde(default)]
    pub url: Option<String>,
}

impl SkillInput for ConfirmInput {}

/// Input of the test skill `large_refund`: a refund that waits for a manager's `approval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LargeRefundInput {
    /// Whose refund.
    pub guest_email: String,
    /// Amount in cents.
    pub amount_cents: u32,
}

impl SkillInput for LargeRefundInput {}

/// The payload schema of `confirmed`.
pub fn confirmed_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean", "description": "Whether the guest confirms."}},
        "required": ["ok"],
        "additionalProperties": false
    })
}

/// The payload schema of `approval`.
pub fn approval_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "approved": {"type": "boolean", "description": "Whether the refund is approved."},
            "note": {"type": "string", "description": "Why, for the guest."}
        },
        "required": ["approved"],
        "additionalProperties": false
    })
}

/// The skills of the input tests: `confirm_stay` (the owner answers) and `large_refund` (a
/// manager answers), both callable by guests for themselves, staff and managers.
fn register_waiting_skills(registry: &mut Registry) {
    let confirm = Skill::builder::<ConfirmInput>(
        "confirm_stay",
        1,
        "Asks the guest to confirm the stay, then records it.",
    )
    .exposure(Exposure::roles(&["staff", "manager"]).self_service(&["guest"], "guest_email"))
    .step(
        Step::new("confirm", |ctx| async move {
            let input: ConfirmInput = ctx.input()?;
            let mut wait =
                Wait::within(Duration::from_secs(60)).prompt("Do you confirm your stay?");
            if let Some(url) = input.url {
                wait = wait.url(url);
            }
            let answer = ctx.await_event("confirmed", wait)?;
            if answer["ok"] != json!(true) {
                return Err(StepError::permanent(
                    "not_confirmed",
                    "the guest did not confirm",
                ));
            }
            Ok(json!({"confirmed": answer}))
        })
        .awaits("confirmed", confirmed_schema()),
    )
    .build()
    .unwrap();
    registry.register(confirm).unwrap();
    let refund = Skill::builder::<LargeRefundInput>(
        "large_refund",
        1,
        "Refunds a guest once a manager approves.",
    )
    .exposure(Exposure::roles(&["staff", "manager"]).self_service(&["guest"], "guest_email"))
    .step(
        Step::new("approval", |ctx| async move {
            let input: LargeRefundInput = ctx.input()?;
            let answer = ctx.await_event(
                "approval",
                Wait::within(Duration::from_secs(60))
                    .prompt(format!(
                        "Approve a refund of {} cents to {}?",
                        input.amount_cents, input.guest_email
                    ))
                    .answered_by(["manager"]),
            )?;
            if answer["approved"] != json!(true) {
                return Err(StepError::permanent(
                    "refund_rejected",
                    "a manager rejected the refund",
                ));
            }
            Ok(json!({"approval": answer}))
        })
        .awaits("approval", approval_schema()),
    )
    .step(Step::new("refund", |ctx| async move {
        let input: LargeRefundInput = ctx.input()?;
        Ok(json!({"refunded_cents": input.amount_cents}))
    }))
    .build()
    .unwrap();
    registry.register(refund).unwrap();
}

/// The diagnostic skill, the hotel's roles, and the test skills and queries that name them.
pub fn test_registry() -> Registry {
    let mut registry = stepwise_skills::registry().unwrap();
    stepwise_skills::hotel::roles::declare(&mut registry).unwrap();
    let note = Skill::builder::<NoteInput>("guest_note", 1, "Records a note about a guest.")
        .exposure(
            Exposure::roles(&["staff", "manager"]).self_service(&["guest"], "guest_email"),
        )
        .step(
            Step::new("record", |ctx| async move {
                let input: NoteInput = ctx.input()?;
                Ok(json!({"recorded": input.note}))
            })
            .compensate(|_ctx, _out| async move { Ok(json!({"erased": true})) }),
        )
        .finish(|input, outputs| json!({"guest_email": input["guest_email"], "record": outputs["record"]}))
        .build()
        .unwrap();
    registry.register(note).unwrap();
    let refund =
        Skill::builder::<RefundInput>("risky_refund", 1, "Reserves then pays out a refund.")
            .exposure(Exposure::roles(&["manager"]).destructive().open_world())
            .step(
                Step::new(
                    "reserve",
                    |_ctx| async move { Ok(json!({"reserved": true})) },
                )
                .compensate(|_ctx, _out| async move { Ok(json!({"released": true})) }),
            )
            .step(Step::new("pay_out", |ctx| async move {
                let input: RefundInput = ctx.input()?;
                if input.decline {
                    return Err(
                        StepError::permanent("card_declined", "the card was declined")
                            .with_action("Ask the guest for another payment method."),
                    );
                }
                Ok(json!({"paid": input.amount_cents}))
            }))
            .build()
            .unwrap();
    registry.register(refund).unwrap();
    let find = Query::new::<FindNotesInput, FindNotesOutput, _, _>(
        "find_notes",
        "Notes about a guest.",
        Exposure::roles(&["staff", "manager"]).self_service(&["guest"], "guest_email"),
        |input: FindNotesInput| async move {
            Ok(FindNotesOutput {
                notes: vec![format!("note about {}", input.guest_email)],
                guest_email: input.guest_email,
            })
        },
    );
    registry.register_query(find).unwrap();
    registry
}

/// [`test_registry`] plus the skills that wait for input (`confirm_stay`, `large_refund`).
pub fn input_registry() -> Registry {
    let mut registry = test_registry();
    register_waiting_skills(&mut registry);
    registry
}

pub struct Harness {
    pub engine: Engine,
    pub facade: Arc<Facade>,
    pub stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A facade (waiting up to `wait`) and a running worker over a per-test database.
pub fn harness(pool: PgPool, wait: Duration) -> Harness {
    harness_with(pool, wait, test_registry())
}

/// Like [`harness`], over the catalog `registry`.
pub fn harness_with(pool: PgPool, wait: Duration, registry: Registry) -> Harness {
    let engine = Engine::new(
        PgStore::new(pool),
        Arc::new(registry),
        Arc::new(SystemClock),
    );
    let stop = CancellationToken::new();
    let worker = engine.worker(WorkerConfig {
        worker_id: "mcp-test-worker".into(),
        concurrency: 8,
        ..WorkerConfig::default()
    });
    let token = stop.clone();
    tokio::spawn(async move { worker.run(token).await });
    Harness {
        facade: Facade::new(engine.clone(), wait),
        engine,
        stop,
    }
}

/// Records progress notifications; declares tasks and answers elicitations when asked to.
#[derive(Clone, Default)]
pub struct TestClient {
    pub tasks: bool,
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    /// Declares the elicitation capability (form and URL) and answers every elicitation with
    /// this result.
    pub elicit: Option<ElicitResult>,
    /// The elicitations received.
    pub elicited: Arc<Mutex<Vec<ElicitRequestParams>>>,
}

impl TestClient {
    /// A client that accepts every elicitation with `content` (none for a URL).
    pub fn accepting(content: Option<Value>) -> Self {
        let mut result = ElicitResult::new(ElicitationAction::Accept);
        result.content = content;
        Self {
            elicit: Some(result),
            ..Self::default()
        }
    }
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = if self.tasks {
            ClientCapabilities::builder().enable_tasks().build()
        } else {
            ClientCapabilities::default()
        };
        if self.elicit.is_some() {
            capabilities.elicitation = Some(
                ElicitationCapability::new()
                    .with_form(FormElicitationCapability::default())
                    .with_url(UrlElicitationCapability::new()),
            );
        }
        ClientConfig::new(capabilities, Implementation::new("stepwise-tests", "0"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        self.elicited.lock().unwrap().push(request);
        Ok(self
            .elicit
            .clone()
            .unwrap_or_else(|| ElicitResult::new(ElicitationAction::Decline)))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

pub type Client = RunningService<RoleClient, TestClient>;

/// An in-process client session acting as `principal` (e.g. `guest:ana@example.com`).
pub async fn connect_with(facade: &Arc<Facade>, principal: &str, handler: TestClient) -> Client {
    let principal: Principal = facade.principal(principal).unwrap();
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let server = StepwiseServer::with_principal(facade.clone(), principal);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    handler.serve(client_io).await.unwrap()
}

/// Like [`connect_with`], but the client speaks protocol 2026-07-28 (`server/discover`, no
/// `initialize`), where a server asks for input with `InputRequiredResult` (MRTR).
pub async fn connect_modern(facade: &Arc<Facade>, principal: &str, handler: TestClient) -> Client {
    let principal: Principal = facade.principal(principal).unwrap();
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let server = StepwiseServer::with_principal(facade.clone(), principal);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    handler
        .serve_with_lifecycle(
            client_io,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
}

pub async fn connect(facade: &Arc<Facade>, principal: &str) -> Client {
    connect_with(facade, principal, TestClient::default()).await
}

/// Polls `tasks/get` until the task has `status` (for at most 15 s) and returns that answer.
pub async fn task_reaching(
    client: &Client,
    task_id: &str,
    status: rmcp::model::TaskStatus,
) -> rmcp::model::GetTaskResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = client
            .get_task(rmcp::model::GetTaskParams::new(task_id.to_string()))
            .await
            .unwrap();
        if got.task.status() == status {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task never became {status:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn params(tool: &str, args: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    params
}

pub async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    client.call_tool(params(tool, args)).await.unwrap()
}

pub fn structured(result: &CallToolResult) -> &Value {
    result
        .structured_content
        .as_ref()
        .expect("structured content")
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many sagas exist, read through the engine's store (its counts by status).
pub async fn saga_count(pool: &PgPool) -> i64 {
    stepwise_engine::PgStore::new(pool.clone())
        .counts_by_status()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// The audit rows as (principal, tool, saga_id, outcome, error_code), oldest first, read
/// through the facade's audit store.
pub async fn audit_rows(
    pool: &PgPool,
) -> Vec<(String, String, Option<uuid::Uuid>, String, Option<String>)> {
    let filter = stepwise_mcp::AuditFilter {
        limit: 100_000,
        ..stepwise_mcp::AuditFilter::default()
    };
    let mut rows = stepwise_mcp::AuditStore::new(pool.clone())
        .query(&filter)
        .await
        .unwrap();
    rows.reverse();
    rows.into_iter()
        .map(|r| (r.principal, r.tool, r.saga_id, r.outcome, r.error_code))
        .collect()
}
