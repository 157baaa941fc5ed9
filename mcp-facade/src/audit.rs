//! The audit of every tool call, and of the reads and cancels of a saga outside tool calls
//! (`resources/read`, `tasks/get`, `tasks/cancel`, recorded under those names as the `tool`):
//! append-only (a trigger refuses UPDATE, DELETE and TRUNCATE), written and read by
//! [`AuditStore`]. Operators query it with `stepwise audit`.

use serde::Serialize;
use uuid::Uuid;

pub use crate::store::audit::{AuditFilter, AuditRecord, AuditStore};

/// How a call ended, as stored in `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done, or a read answered.
    Ok,
    /// The saga was still running when the call returned.
    Pending,
    /// The saga ended compensated or failed.
    SagaFailed,
    /// The caller may not do this.
    Refused,
    /// Malformed arguments.
    Invalid,
    /// Idempotency key reused with other input.
    Conflict,
    /// The facade could not serve the call.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Pending => "pending",
            Outcome::SagaFailed => "saga_failed",
            Outcome::Refused => "refused",
            Outcome::Invalid => "invalid",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// One row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub principal: String,
    pub transport: &'static str,
    pub tool: String,
    pub saga_id: Option<Uuid>,
    pub outcome: Outcome,
    /// Required unless the outcome is `ok` or `pending`.
    pub error_code: Option<String>,
    pub duration_ms: i32,
}
