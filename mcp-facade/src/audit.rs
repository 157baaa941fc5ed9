//! The audit of every tool call, and of the reads and cancels of a saga outside tool calls
//! (`resources/read`, `tasks/get`, `tasks/cancel`, recorded under those names as the `tool`):
//! append-only (a trigger refuses UPDATE, DELETE and TRUNCATE), written and read by
//! [`AuditStore`]. Operators query it with `stepwise audit`. A saga read repeated with the same
//! answer (a client polling a task) is recorded once, not once per poll ([`RepeatedReads`]).

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use stepwise_engine::SagaDetail;
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

/// How many (caller, method, target) read answers [`RepeatedReads`] remembers; past this it
/// forgets them all and starts over (a few more rows, never an unbounded map).
pub const REPEATED_READS_CAPACITY: usize = 10_000;

/// The answers of saga reads already on record (`tasks/get`, `resources/read`), so that a
/// client polling a saga writes a row for its first read and for each read whose answer
/// changed (status, a step's status or attempts, a compensation, what the saga waits for, a
/// cancel request), including the last change of the run, not one row per poll
/// (docs/mcp.md, Audit). Kept in the process's memory: a restarted server records the next
/// read of each saga again.
#[derive(Debug, Default)]
pub struct RepeatedReads {
    seen: Mutex<HashMap<(String, &'static str, String), String>>,
}

impl RepeatedReads {
    /// Whether a read by `principal` of `target` through `method` answering `fingerprint` is
    /// to be recorded: its first, or its answer differs from the last one recorded.
    pub fn first_or_changed(
        &self,
        principal: &str,
        method: &'static str,
        target: &str,
        fingerprint: String,
    ) -> bool {
        let key = (
            principal.to_string(),
            method,
            target.chars().take(200).collect::<String>(),
        );
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.get(&key) == Some(&fingerprint) {
            return false;
        }
        if seen.len() >= REPEATED_READS_CAPACITY && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(key, fingerprint);
        true
    }
}

/// What a client reading `detail` is told, reduced to what can change: the saga's status,
/// each step's status, attempts and compensation, what it waits for, a cancel request.
/// Timestamps are left out (a lease renewal is not a new answer).
pub fn read_fingerprint(detail: &SagaDetail) -> String {
    let mut text = format!(
        "{}|{}|",
        detail.status,
        detail.cancel_requested_at.is_some()
    );
    for step in &detail.steps {
        text.push_str(&format!(
            "{}:{}:{}:{};",
            step.status, step.attempts, step.compensation.status, step.compensation.attempts
        ));
    }
    if let Some(waiting) = &detail.waiting_for {
        text.push_str(&waiting.to_string());
    }
    text
}
