//! What a worker commits: a [`Transition`] of one saga, made of saga-row changes, step changes
//! and history rows, applied atomically under the saga's fencing token ([`Lease`]). See
//! docs/storage.md for how each change is stored.

use crate::model::{EventKind, SagaStatus};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// A worker's hold on a saga. Every write made under it is fenced by `token`.
#[derive(Debug, Clone)]
pub struct Lease {
    pub saga_id: Uuid,
    pub token: i64,
    pub worker: Arc<str>,
    pub expires_at: DateTime<Utc>,
}

/// The attempt in flight of a saga, as recorded on its row when the attempt began (by a
/// claim or a commit). The worker holding the lease knows it, and hands it back to the store
/// when the attempt succeeds, so the success is one write of the step's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub position: i32,
    /// Whether the attempt is of the step's compensation.
    pub compensation: bool,
    /// Its number over the step's life.
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// Its start's place in the saga's history.
    pub seq: i64,
}

/// A history row to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub detail: Option<Value>,
}

impl NewEvent {
    pub fn saga(kind: EventKind) -> Self {
        Self {
            kind,
            step: None,
            attempt: None,
            detail: None,
        }
    }

    pub fn step(kind: EventKind, step: &str, attempt: i32) -> Self {
        Self {
            kind,
            step: Some(step.to_string()),
            attempt: Some(attempt),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Whether the row closes the saga's story: it comes after the transition's step
    /// changes (a step's success is recorded before the saga's end), where every other row
    /// tells what happened during the attempt and comes before them.
    pub(crate) fn ends_saga(&self) -> bool {
        matches!(
            self.kind,
            EventKind::SagaCompleted | EventKind::SagaCompensated | EventKind::SagaFailed
        )
    }
}

/// What to do with `wake_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WakeChange {
    #[default]
    Keep,
    Set(DateTime<Utc>),
    /// The saga reached a terminal state.
    Clear,
}

/// One change to a saga's steps. The start and the success of an attempt write no history
/// row: the history's `step_started` / `step_succeeded` (and the compensation's) are read
/// from where they are stored (docs/storage.md).
#[derive(Debug, Clone)]
pub enum StepChange {
    /// Attempt `attempt` of the action at `position` begins (it is in flight on the saga row).
    Begin { position: i32, attempt: i32 },
    /// The action's attempt in flight succeeded.
    Succeeded { attempt: InFlight, output: Value },
    /// The action's attempt failed; `last` means no attempt follows. The attempt in flight, if
    /// any, ends without a result first (its start goes to the history).
    Failed {
        position: i32,
        error: Value,
        last: bool,
    },
    /// An attempt of this step failed with an unknown outcome: it is possibly done.
    PossiblyDone { position: i32 },
    /// These succeeded (or possibly done) steps must be undone.
    CompensationPending { positions: Vec<i32> },
    /// Attempt `attempt` of the compensation at `position` begins.
    CompensationBegin { position: i32, attempt: i32 },
    /// The compensation's attempt in flight succeeded.
    CompensationSucceeded { attempt: InFlight, output: Value },
    /// The compensation's attempt failed; `last` means no attempt follows.
    CompensationFailed {
        position: i32,
        error: Value,
        last: bool,
    },
    /// The saga is over: steps never reached become skipped, interrupted ones failed.
    SkipUnreached,
    /// The step's wait deadlines (an object by wait), persisted when it suspends.
    WaitDeadlines { position: i32, deadlines: Value },
    /// The step took these deliveries (ids).
    ConsumeDeliveries {
        position: i32,
        step: String,
        ids: Vec<i64>,
    },
    /// The attempt in flight is given back (a graceful release): it is not counted, so the
    /// step's next start has the same attempt number.
    ReleaseAttempt,
    /// The attempt in flight ends without a result and counts (the saga was cancelled while
    /// the attempt waited).
    AbandonAttempt,
}

impl StepChange {
    /// Whether this change ends the attempt in flight without a result, and whether that
    /// attempt then counts.
    pub(crate) fn interrupts(&self) -> Option<bool> {
        match self {
            Self::Failed { .. } | Self::CompensationFailed { .. } | Self::AbandonAttempt => {
                Some(true)
            }
            Self::ReleaseAttempt => Some(false),
            _ => None,
        }
    }
}

/// Everything one worker commit changes, applied atomically under the lease.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    pub status: Option<SagaStatus>,
    pub cursor: Option<i32>,
    pub wake: WakeChange,
    pub release_lease: bool,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub steps: Vec<StepChange>,
    pub events: Vec<NewEvent>,
    /// Begin this step's attempt (position, attempt) in the same commit, unless a cancel was
    /// requested: the worker that commits step k starts k+1 without another round trip.
    pub then_begin: Option<(i32, i32)>,
    /// The saga starts waiting for this (`status` must be `waiting`); see [`crate::wait`].
    pub waiting_for: Option<Value>,
    /// Deliveries the waiting attempt already took (for earlier waits of the same event):
    /// they do not make the new wait due.
    pub waiting_taken: Vec<i64>,
}

impl Transition {
    pub fn new() -> Self {
        Self::default()
    }

    /// The attempt this transition begins, as (position, compensation, attempt, only if no
    /// cancel was requested).
    pub(crate) fn begins(&self) -> Option<(i32, bool, i32, bool)> {
        self.steps
            .iter()
            .find_map(|change| match change {
                StepChange::Begin { position, attempt } => {
                    Some((*position, false, *attempt, false))
                }
                StepChange::CompensationBegin { position, attempt } => {
                    Some((*position, true, *attempt, false))
                }
                _ => None,
            })
            .or(self
                .then_begin
                .map(|(position, attempt)| (position, false, attempt, true)))
    }
}

/// What a commit observed.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub cancel_requested: bool,
    /// Whether `then_begin` was applied.
    pub began_next: bool,
    /// The attempt this commit began (by a `Begin`, a `CompensationBegin` or `then_begin`), as
    /// recorded on the saga row, if it began one.
    pub begun: Option<InFlight>,
}
