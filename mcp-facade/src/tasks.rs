//! The MCP tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663 as implemented by
//! rmcp 3.11) mapped onto sagas.
//!
//! A client that declares the extension gets, for a skill tool call, a task whose id is the saga
//! id (`CreateTaskResult`) instead of waiting. Nothing about tasks is kept in memory: `tasks/get`
//! reads the saga from PostgreSQL, so a task survives a facade restart and any facade of a
//! fleet can answer for it.
//!
//! | saga | task status | payload |
//! |---|---|---|
//! | `pending`, `running`, `compensating`, `waiting` for a time | `working` | status message: steps done |
//! | `waiting` for an event the viewer may give | `input_required` | `inputRequests`: one elicitation (crate::input) |
//! | `waiting` for an event someone else gives | `working` | status message: what it waits for |
//! | `completed` | `completed` | `result`: the tool result (saga result as `structuredContent`) |
//! | `compensated`, `failed` | `completed` | `result` with `isError: true` and what was undone |
//! | `compensated` after a cancel request | `cancelled` | — |
//!
//! `tasks/cancel` records a cancellation request on the saga (it is then compensated);
//! `tasks/update` delivers the answer to an input request as the event (crate::server).

use crate::auth::Principal;
use crate::input::PendingInput;
use crate::results::saga_report;
use rmcp::model::{DetailedTask, Task, TaskPayload, TaskStatus};
use serde_json::Value;
use stepwise_engine::{SagaDetail, SagaStatus};

/// How often clients are asked to poll `tasks/get`.
pub const POLL_INTERVAL_MS: u64 = 500;

fn base(detail: &SagaDetail, status: TaskStatus) -> Task {
    Task::new(
        detail.id.to_string(),
        status,
        detail.created_at.to_rfc3339(),
        detail.updated_at.to_rfc3339(),
    )
    .with_poll_interval_ms(POLL_INTERVAL_MS)
}

/// The seed state of the task created for a saga, as `viewer` sees it.
pub fn task_of(detail: &SagaDetail, viewer: &Principal) -> Task {
    let detailed = detailed_task(detail, viewer);
    detailed.task
}

/// The full task state of a saga, for `tasks/get` by `viewer` (who is asked for input only
/// when it may give it).
pub fn detailed_task(detail: &SagaDetail, viewer: &Principal) -> DetailedTask {
    let asked = PendingInput::of(detail)
        .filter(|p| p.may_answer(viewer, &detail.started_by))
        .map(|p| p.input_requests())
        .filter(|requests| !requests.is_empty());
    let report = saga_report(detail);
    let message = report.text.clone();
    let payload = match detail.status {
        SagaStatus::Waiting if asked.is_some() => TaskPayload::InputRequired {
            input_requests: asked.unwrap_or_default(),
        },
        SagaStatus::Pending
        | SagaStatus::Running
        | SagaStatus::Waiting
        | SagaStatus::Compensating => TaskPayload::Working,
        SagaStatus::Compensated if detail.cancel_requested_at.is_some() => TaskPayload::Cancelled,
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => {
            let result = serde_json::to_value(report.into_result())
                .ok()
                .and_then(|v| match v {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .unwrap_or_default();
            TaskPayload::Completed { result }
        }
    };
    let task = base(detail, payload.status()).with_status_message(message);
    DetailedTask::new(task, payload)
}
