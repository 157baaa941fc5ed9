//! Tasks in the legacy housekeeping system (docs/skills.md, "The legacy housekeeping system"):
//! created once per step, cancelled by the undo.

use crate::connectors::housekeeping::codec::TaskStatus;
use crate::connectors::housekeeping::{HousekeepingTask, NewTask};
use crate::hotel::{ext, Hotel};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{StepContext, StepError};

/// Creates the step's task, once: the request's sequence number comes from the step's key (the
/// system answers a repeated number from its journal), and a retried attempt first looks the
/// task up by its reference (the key), so a task whose creation answer was lost is found, not
/// made again, even if the retry's content differs (another day's due date).
pub(crate) async fn create_task(
    hotel: &Hotel,
    ctx: &StepContext,
    task: NewTask<'_>,
) -> Result<Value, StepError> {
    let system = &hotel.connectors.housekeeping;
    if ctx.attempt > 1 {
        let found = system.find_tasks(&ctx.idempotency_key).await.map_err(ext)?;
        if let Some(task) = found.into_iter().next() {
            return Ok(task_json(&task, true));
        }
    }
    let created = system
        .create_task(&task, &ctx.idempotency_key)
        .await
        .map_err(ext)?;
    Ok(task_json(&created, false))
}

fn task_json(task: &HousekeepingTask, found_again: bool) -> Value {
    json!({
        "task_no": task.task_no,
        "room_number": task.room_number,
        "kind": task.kind,
        "priority": task.priority,
        "due_date": task.due_date,
        "status": task.status,
        "system": "legacy housekeeping",
        "found_again": found_again,
    })
}

/// Undoes [`create_task`]: cancels the task its step recorded (or, when the step is possibly
/// done, the open tasks found under the action's key, if any). A task cancelled before is fine.
pub(crate) async fn cancel_task(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let system = &hotel.connectors.housekeeping;
    let tasks: Vec<String> = if ctx.possibly_done {
        system
            .find_tasks(&ctx.action_idempotency_key())
            .await
            .map_err(ext)?
            .into_iter()
            .filter(|t| t.status == TaskStatus::Open)
            .map(|t| t.task_no)
            .collect()
    } else {
        let task_no = output
            .get("task_no")
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::permanent("invalid_step_output", "no task_no"))?;
        vec![task_no.to_string()]
    };
    if tasks.is_empty() {
        return Ok(json!({"task_no": null, "possibly_done": true,
                         "summary": "no housekeeping task had been created"}));
    }
    for task_no in &tasks {
        system
            .cancel_task(
                task_no,
                "Undone: the operation that asked for it was undone.",
                &format!("{}/{task_no}", ctx.idempotency_key),
            )
            .await
            .map_err(ext)?;
    }
    Ok(json!({"task_no": tasks.join(", "), "status": "cancelled",
              "summary": format!("housekeeping task {} was cancelled", tasks.join(", "))}))
}
