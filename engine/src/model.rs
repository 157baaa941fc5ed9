//! The states of sagas and steps, and the views the store returns. Names and JSON shapes are
//! the public contract (README, "States" and "Command line").
//!
//! ```text
//!            claim                    last step succeeds
//! pending ──────────▶ running ─────────────────────────────▶ completed
//!    ▲                 │ ▲ │
//!    └─ retry due ─────┘ │ │ permanent failure, retries exhausted, or cancel requested
//!                        │ │   (a wait's deadline without a default: `wait_timed_out`)
//!  waiting ◀─ a step ────┘ │
//!   │ waits (event/sleep)  │
//!   └─ event delivered, deadline, sleep over or cancel: claimed back to running
//!                          ▼
//!                    compensating ──── all undone ─────────▶ compensated
//!                          │
//!                          └── a compensation exhausts ────▶ failed (operator: retry)
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strum::{Display, EnumString, IntoStaticStr, VariantArray};
use uuid::Uuid;

/// Where a saga is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SagaStatus {
    Pending,
    Running,
    /// A step waits for an event or a time: no lease, due at its deadline (non-terminal).
    Waiting,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl SagaStatus {
    /// Every status, in lifecycle order.
    pub fn all() -> &'static [SagaStatus] {
        Self::VARIANTS
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

/// Where a forward step is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where a step's compensation is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CompensationStatus {
    NotNeeded,
    Pending,
    Running,
    Compensated,
    Failed,
}

impl CompensationStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The kinds of rows in the append-only history.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    SagaStarted,
    StepStarted,
    StepSucceeded,
    StepFailed,
    RetryScheduled,
    CompensationStarted,
    CompensationSucceeded,
    CompensationFailed,
    SagaCompleted,
    SagaCompensated,
    SagaFailed,
    CancelRequested,
    LeaseExpired,
    OperatorRetry,
    OperatorRestart,
    OperatorFork,
    /// A step began waiting for an event (detail: event, until, prompt).
    WaitStarted,
    /// An event was delivered (detail: event, key, actor).
    EventReceived,
    /// A wait's deadline passed without its event (detail: event, until, default_used).
    WaitTimedOut,
    /// A step began a durable sleep (detail: until).
    SleepStarted,
    /// A durable sleep is over (detail: until).
    SleepEnded,
    /// A worker shutting down gave back an attempt it had begun but not finished (detail:
    /// reason `not_run` or `interrupted`, compensation): the attempt counts as not made.
    AttemptReleased,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A saga's identity and state, as printed by `start --json` and the operator commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub status: SagaStatus,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A step's compensation as shown in `sagas show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationView {
    pub status: CompensationStatus,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A step as shown in `sagas show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub position: i32,
    pub name: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub compensation: CompensationView,
    /// An attempt failed with an unknown outcome and the step did not succeed after it: it may
    /// have taken effect, so it is compensated like a succeeded step (README, "States").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub possibly_done: bool,
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// 1-based position in this saga's history.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub detail: Option<Value>,
}

/// Everything known about one saga: `stepwise sagas show ID --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDetail {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub status: SagaStatus,
    pub idempotency_key: Option<String>,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_by: String,
    pub replay_of: Option<Uuid>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    /// What a `waiting` saga awaits: `{"event","until","prompt","schema"}` (`event` null for
    /// a sleep); null otherwise.
    pub waiting_for: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub steps: Vec<StepView>,
    pub events: Vec<EventView>,
}

impl SagaDetail {
    pub fn summary(&self) -> SagaSummary {
        SagaSummary {
            id: self.id,
            skill: self.skill.clone(),
            skill_version: self.skill_version,
            status: self.status,
            idempotency_key: self.idempotency_key.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// Steps that succeeded and were not undone.
    pub fn steps_done(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .count()
    }
}

/// Filters for listing sagas.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    pub status: Option<SagaStatus>,
    pub skill: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub started_by: Option<String>,
    pub limit: i64,
}
