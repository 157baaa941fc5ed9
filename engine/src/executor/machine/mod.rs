//! The saga state machine, without I/O.
//!
//! A claimed saga is a [`Run`]. The driver asks it what comes next ([`Run::next`]): a
//! transition to commit (start compensating, finish, give up), an attempt to begin, or the
//! attempt in flight to run. When an attempt has run, [`decide`] turns its [`Outcome`] into the
//! store's [`Transition`]; the driver commits it and hands the same transition, with what the
//! commit observed, to [`Run::apply`]. `apply` is the only code that changes a run after its
//! claim, so the run cannot disagree with what the store wrote. Time, the jitter sample and
//! whether the worker is stopping come in as values ([`Facts`]), so every decision is a pure
//! function, tested below without a database. Metrics and tracing look at a transition after
//! it was committed ([`observe`]); no decision records anything.
//!
//! Forward steps and compensations follow the same rules for an attempt (begin one, give up
//! when the last allowed one was cut short, retry at a durable time from the
//! [`RetryPolicy`], give up when it is exhausted or the failure is permanent): [`Leg`] names
//! which of the two an attempt is, and one routine serves both.
use crate::error::StepError;
use crate::error::StoreError;
use crate::metrics::AttemptKind;
use crate::model::{CompensationStatus, SagaStatus, StepStatus};
use crate::retry::RetryPolicy;
use crate::skill::{Skill, StepContext};
use crate::store::{
    ClaimedSaga, Committed, InFlight, Lease, NewEvent, StepChange, StepState, Transition,
    WakeChange,
};
use crate::wait::{Suspension, WaitBook};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod decide;
mod observe;
#[cfg(test)]
mod tests;

pub(crate) use decide::decide;
pub(crate) use observe::{observe, observe_claim, Ran};

/// Whether an attempt runs a step's action or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leg {
    Action,
    Compensation,
}

impl Leg {
    fn metric(self) -> AttemptKind {
        match self {
            Leg::Action => AttemptKind::Action,
            Leg::Compensation => AttemptKind::Compensation,
        }
    }
}

/// The attempt in flight: begun (by the claim or a commit) and not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub leg: Leg,
    pub position: usize,
    /// Its number over the step's life (1 for the first).
    pub number: i32,
    /// When it began and its start's place in the history, as the saga row records them: a
    /// success hands them back to the store (docs/storage.md).
    pub started_at: DateTime<Utc>,
    pub seq: i64,
}

impl Attempt {
    fn from_recorded(recorded: InFlight) -> Self {
        Self {
            leg: if recorded.compensation {
                Leg::Compensation
            } else {
                Leg::Action
            },
            position: usize::try_from(recorded.position).unwrap_or(0),
            number: recorded.attempt,
            started_at: recorded.started_at,
            seq: recorded.seq,
        }
    }

    /// The attempt as the saga row records it.
    pub fn recorded(&self) -> InFlight {
        InFlight {
            position: self.position as i32,
            compensation: self.leg == Leg::Compensation,
            attempt: self.number,
            started_at: self.started_at,
            seq: self.seq,
        }
    }
}

/// What a decision may depend on besides the run: given as values so decisions stay pure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    pub now: DateTime<Utc>,
    /// A uniform sample of `[0, 1)` for full-jitter retry delays.
    pub jitter: f64,
    pub lease_duration: Duration,
    /// The worker is stopping: finish the step that runs, start no other.
    pub stopping: bool,
}

/// What happened to the attempt in flight.
#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded {
        output: Value,
        /// Deliveries the attempt took.
        taken: Vec<i64>,
        /// History rows of its waits (consumed, timed out, sleep over).
        events: Vec<NewEvent>,
    },
    Failed {
        error: StepError,
        events: Vec<NewEvent>,
    },
    /// The action waits for an event or a time; the attempt goes on when the saga is woken.
    Suspended {
        suspension: Suspension,
        /// Every deadline of the step's waits, as persisted.
        deadlines: Value,
        taken: Vec<i64>,
        events: Vec<NewEvent>,
    },
    /// The worker's grace period ran out while the attempt ran: it is given back.
    Interrupted,
}

/// An [`Outcome`] without its data, for [`observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutcomeKind {
    Succeeded,
    Failed,
    Suspended,
    Interrupted,
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Succeeded { .. } => OutcomeKind::Succeeded,
            Outcome::Failed { .. } => OutcomeKind::Failed,
            Outcome::Suspended { .. } => OutcomeKind::Suspended,
            Outcome::Interrupted => OutcomeKind::Interrupted,
        }
    }
}

/// What the driver does next with a run.
#[derive(Debug)]
pub(crate) enum Next {
    /// Commit this and ask again, unless it released the lease.
    Commit(Transition),
    /// Commit this, which begins an attempt, then run that attempt at once.
    Begin(Transition),
    /// Run the attempt in flight (begun by the claim or by the last commit).
    Run(Attempt),
    /// The saga is over.
    Stop,
}

/// A claimed saga in memory; authoritative while the lease is held because every change is
/// committed under the fencing token first, then applied here by [`Run::apply`].
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub skill: Arc<Skill>,
    pub lease: Lease,
    pub status: SagaStatus,
    pub input: Arc<Value>,
    pub cursor: usize,
    pub cancel_requested: bool,
    pub steps: Vec<StepState>,
    /// The attempt begun and not finished: the claim's, a saga woken from a wait, or the one
    /// the last commit began.
    pub in_flight: Option<Attempt>,
    /// Whether this worker still holds the lease (a commit that releases it ends the drive).
    pub held: bool,
}

impl Run {
    pub fn new(claimed: ClaimedSaga, skill: Arc<Skill>) -> Self {
        let cursor = usize::try_from(claimed.cursor).unwrap_or(0);
        // The claim's attempt, or the one a saga woken from a wait goes on with.
        let in_flight = claimed.in_flight.map(Attempt::from_recorded);
        Self {
            skill,
            lease: claimed.lease,
            status: claimed.status,
            input: Arc::new(claimed.input),
            cursor,
            cancel_requested: claimed.cancel_requested,
            steps: claimed.steps,
            in_flight,
            held: true,
        }
    }

    /// The saga's steps must be the leading steps of its skill version.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.steps.is_empty() || self.steps.len() > self.skill.steps().len() {
            return Err(StoreError::Corrupt(format!(
                "saga has {} steps but skill version has {}",
                self.steps.len(),
                self.skill.steps().len()
            )));
        }
        Ok(())
    }

    /// Updates the run from a committed transition, exactly as the store applied it.
    pub fn apply(&mut self, t: &Transition, committed: &Committed) {
        for change in &t.steps {
            self.apply_change(change);
        }
        if let Some(begun) = committed.begun {
            // The attempt the commit began (a `Begin`, a `CompensationBegin` or `then_begin`).
            let begun = Attempt::from_recorded(begun);
            if let Some(state) = self.steps.get_mut(begun.position) {
                match begun.leg {
                    Leg::Action => {
                        state.status = StepStatus::Running;
                        state.attempts = begun.number;
                    }
                    Leg::Compensation => {
                        state.compensation_status = CompensationStatus::Running;
                        state.compensation_attempts = begun.number;
                    }
                }
            }
            self.in_flight = Some(begun);
        }
        if let Some(status) = t.status {
            self.status = status;
        }
        if let Some(cursor) = t.cursor {
            self.cursor = usize::try_from(cursor).unwrap_or(0);
        }
        match (t.wake, t.release_lease) {
            (_, true) => self.held = false,
            (WakeChange::Set(at), false) => self.lease.expires_at = at,
            _ => {}
        }
        self.cancel_requested = committed.cancel_requested;
        // An action's attempt is in flight only while the saga runs forward, and nothing is in
        // flight once it is over.
        let keep = match self.in_flight {
            Some(Attempt {
                leg: Leg::Action, ..
            }) => is_forward(self.status),
            Some(_) => self.status == SagaStatus::Compensating,
            None => false,
        };
        if !keep {
            self.in_flight = None;
        }
    }

    /// Applies one step change. The attempt a change begins is applied from what the commit
    /// recorded (see [`Run::apply`]); a change that ends the attempt in flight ends it here.
    fn apply_change(&mut self, change: &StepChange) {
        if let (StepChange::ReleaseAttempt, Some(attempt)) = (change, self.in_flight) {
            // Given back, not counted: the step is as before the attempt began.
            let state = &mut self.steps[attempt.position];
            match attempt.leg {
                Leg::Action => {
                    state.status = StepStatus::Pending;
                    state.attempts = attempt.number - 1;
                }
                Leg::Compensation => {
                    state.compensation_status = CompensationStatus::Pending;
                    state.compensation_attempts = attempt.number - 1;
                }
            }
        }
        apply_to_steps(&mut self.steps, change);
        let ends = match change {
            StepChange::Succeeded { .. } | StepChange::CompensationSucceeded { .. } => true,
            other => other.interrupts().is_some(),
        };
        if ends {
            self.in_flight = None;
        }
    }

    /// What the action (or compensation) of `attempt` sees.
    pub fn context(
        &self,
        attempt: Attempt,
        now: DateTime<Utc>,
        waits: Option<Arc<WaitBook>>,
    ) -> StepContext {
        let position = attempt.position;
        let compensation = attempt.leg == Leg::Compensation;
        let step = self.skill.steps()[position].name_arc();
        let saga_id = self.lease.saga_id;
        let idempotency_key = if compensation {
            format!("{saga_id}/{step}/compensate")
        } else {
            format!("{saga_id}/{step}")
        };
        StepContext {
            saga_id,
            skill: Arc::from(self.skill.name()),
            step,
            position,
            attempt: attempt.number.max(1) as u32,
            idempotency_key,
            now,
            input: self.input.clone(),
            outputs: Arc::new(outputs_of(&self.steps)),
            waits,
            possibly_done: compensation && self.undoes_possibly_done(position),
        }
    }

    /// Whether undoing the step at `position` undoes a step that never succeeded but may have
    /// taken effect.
    fn undoes_possibly_done(&self, position: usize) -> bool {
        let state = &self.steps[position];
        state.possibly_done && state.status != StepStatus::Succeeded
    }

    fn policy(&self, leg: Leg, position: usize) -> RetryPolicy {
        let step = &self.skill.steps()[position];
        match leg {
            Leg::Action => self.skill.action_policy(step, &self.input),
            Leg::Compensation => self.skill.compensation_policy(step, &self.input),
        }
    }

    /// Attempts of the leg so far, the one in flight included.
    fn attempts(&self, leg: Leg, position: usize) -> i32 {
        let state = &self.steps[position];
        match leg {
            Leg::Action => state.attempts,
            Leg::Compensation => state.compensation_attempts,
        }
    }

    /// Attempts of the leg in the current round (an operator's retry starts a new round).
    fn in_round(&self, leg: Leg, position: usize) -> u32 {
        let state = &self.steps[position];
        let base = match leg {
            Leg::Action => state.attempts_round_base,
            Leg::Compensation => state.compensation_round_base,
        };
        (self.attempts(leg, position) - base).max(0) as u32
    }

    fn running(&self, leg: Leg, position: usize) -> bool {
        let state = &self.steps[position];
        match leg {
            Leg::Action => state.status == StepStatus::Running,
            Leg::Compensation => state.compensation_status == CompensationStatus::Running,
        }
    }
}

fn is_forward(status: SagaStatus) -> bool {
    matches!(
        status,
        SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting
    )
}

/// Applies one step change to the steps in memory, as the store applies it to their rows.
fn apply_to_steps(steps: &mut [StepState], change: &StepChange) {
    let at = |steps: &mut [StepState], position: i32| -> Option<usize> {
        usize::try_from(position).ok().filter(|p| *p < steps.len())
    };
    match change {
        StepChange::Begin { position, attempt } => {
            if let Some(p) = at(steps, *position) {
                steps[p].status = StepStatus::Running;
                steps[p].attempts = *attempt;
            }
        }
        StepChange::Succeeded { attempt, output } => {
            if let Some(p) = at(steps, attempt.position) {
                steps[p].status = StepStatus::Succeeded;
                steps[p].attempts = attempt.attempt;
                steps[p].output = Some(as_json_text(output));
            }
        }
        StepChange::Failed { position, last, .. } => {
            if let Some(p) = at(steps, *position) {
                steps[p].status = if *last {
                    StepStatus::Failed
                } else {
                    StepStatus::Pending
                };
            }
        }
        StepChange::PossiblyDone { position } => {
            if let Some(p) = at(steps, *position) {
                steps[p].possibly_done = true;
            }
        }
        StepChange::CompensationPending { positions } => {
            for s in steps.iter_mut() {
                if positions.contains(&s.position)
                    && (s.status == StepStatus::Succeeded || s.possibly_done)
                {
                    s.compensation_status = CompensationStatus::Pending;
                }
            }
        }
        StepChange::CompensationBegin { position, attempt } => {
            if let Some(p) = at(steps, *position) {
                steps[p].compensation_status = CompensationStatus::Running;
                steps[p].compensation_attempts = *attempt;
            }
        }
        StepChange::CompensationSucceeded { attempt, .. } => {
            if let Some(p) = at(steps, attempt.position) {
                steps[p].compensation_status = CompensationStatus::Compensated;
                steps[p].compensation_attempts = attempt.attempt;
            }
        }
        StepChange::CompensationFailed { position, last, .. } => {
            if let Some(p) = at(steps, *position) {
                steps[p].compensation_status = if *last {
                    CompensationStatus::Failed
                } else {
                    CompensationStatus::Pending
                };
            }
        }
        StepChange::SkipUnreached => {
            for s in steps.iter_mut() {
                if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
                    s.status = if s.attempts == 0 {
                        StepStatus::Skipped
                    } else {
                        StepStatus::Failed
                    };
                }
            }
        }
        StepChange::WaitDeadlines {
            position,
            deadlines,
        } => {
            if let Some(p) = at(steps, *position) {
                steps[p].wait_deadlines =
                    serde_json::from_value(deadlines.clone()).unwrap_or_default();
            }
        }
        // A given-back attempt is undone by `Run::apply_change`, which knows the attempt in
        // flight; an abandoned one stays counted and `running` until the saga ends.
        StepChange::ReleaseAttempt
        | StepChange::AbandonAttempt
        | StepChange::ConsumeDeliveries { .. } => {}
    }
}

/// Outputs of the steps that succeeded, by name. An output nested deeper than serde_json's
/// recursion limit (128 levels) cannot be parsed back from its text: it is left out, so a step
/// that asks for it fails with `missing_step_output` (and its compensation gets `null`).
fn outputs_of(steps: &[StepState]) -> BTreeMap<String, Value> {
    steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .filter_map(|s| Some((s.name.clone(), output_value(s.output.as_deref()?)?)))
        .collect()
}

/// A step's output as the run keeps it ([`StepState::output`]).
fn as_json_text(output: &Value) -> Box<RawValue> {
    // Infallible: a `Value` always serializes (its object keys are strings).
    serde_json::value::to_raw_value(output).expect("a serde_json::Value serializes")
}

/// A kept output as a value again (`None` past serde_json's recursion limit).
pub(crate) fn output_value(output: &RawValue) -> Option<Value> {
    serde_json::from_str(output.get()).ok()
}

pub(crate) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
