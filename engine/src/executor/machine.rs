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

use crate::error::{StepError, StoreError};
use crate::metrics::{self, AttemptKind};
use crate::model::{CompensationStatus, EventKind, SagaStatus, StepStatus};
use crate::retry::RetryPolicy;
use crate::skill::{Skill, StepContext};
use crate::store::{
    ClaimedSaga, Committed, Lease, NewEvent, StepChange, StepState, Transition, WakeChange,
};
use crate::wait::{Suspension, WaitBook};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

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

/// An attempt this worker began and has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub leg: Leg,
    pub position: usize,
    /// Its number over the step's life (1 for the first).
    pub number: i32,
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
        // A saga woken from a wait goes on with the attempt of its step that suspended.
        let begun = claimed.begun
            || (claimed.resumed
                && claimed
                    .steps
                    .get(cursor)
                    .is_some_and(|s| s.status == StepStatus::Running));
        let in_flight = claimed
            .steps
            .get(cursor)
            .filter(|_| begun)
            .map(|s| Attempt {
                leg: Leg::Action,
                position: cursor,
                number: s.attempts,
            });
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

    /// What comes next while the lease is held.
    pub fn next(&self, facts: &Facts) -> Next {
        match self.status {
            SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting => {
                if self.cancel_requested {
                    let error = json!({"code": "cancelled", "message": "the saga was cancelled on request"});
                    return Next::Commit(self.to_compensation(
                        &self.steps,
                        Transition::new(),
                        error,
                    ));
                }
                if self.cursor >= self.steps.len() {
                    // Every step is done (a fork that reused them all): finish.
                    let mut t = Transition::new();
                    self.complete_into(outputs_of(&self.steps), &mut t);
                    return Next::Commit(t);
                }
                match self.in_flight {
                    Some(attempt) if attempt.leg == Leg::Action => Next::Run(attempt),
                    _ => self.begin(Leg::Action, self.cursor, facts),
                }
            }
            SagaStatus::Compensating => {
                // The highest step still to undo; its compensation always begins a new attempt
                // (one found running belongs to a worker that stopped).
                let next = self.steps.iter().rposition(|s| {
                    matches!(
                        s.compensation_status,
                        CompensationStatus::Pending | CompensationStatus::Running
                    )
                });
                match next {
                    Some(position) => self.begin(Leg::Compensation, position, facts),
                    None => Next::Commit(self.compensated()),
                }
            }
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => Next::Stop,
        }
    }

    /// Gives the saga back, due now for any worker. A graceful release never consumes an
    /// attempt: the attempt in flight (the step its last commit or its claim started, a saga
    /// woken from a wait, or a compensation cut short when the grace period ran out) is given
    /// back, so the step goes back to pending with its attempt count as before and a rolling
    /// restart never uses up a step's last attempt (README, "Concepts", the workers).
    pub fn release(&self, reason: &str, now: DateTime<Utc>) -> Transition {
        let mut t = Transition::new();
        match self.in_flight {
            Some(Attempt {
                leg: Leg::Compensation,
                position,
                ..
            }) => {
                let state = &self.steps[position];
                t.steps.push(StepChange::ReleaseCompensationAttempt {
                    position: position as i32,
                });
                t.events.push(
                    NewEvent::step(
                        EventKind::AttemptReleased,
                        &state.name,
                        state.compensation_attempts,
                    )
                    .with_detail(json!({"reason": reason, "compensation": true})),
                );
            }
            Some(Attempt {
                leg: Leg::Action,
                position,
                ..
            }) if is_forward(self.status) => {
                if let Some(state) = self.steps.get(position) {
                    t.status = Some(SagaStatus::Pending);
                    t.steps.push(StepChange::ReleaseAttempt {
                        position: position as i32,
                    });
                    t.events.push(
                        NewEvent::step(EventKind::AttemptReleased, &state.name, state.attempts)
                            .with_detail(json!({"reason": reason, "compensation": false})),
                    );
                }
            }
            _ => {}
        }
        t.wake = WakeChange::Set(now);
        t.release_lease = true;
        t
    }

    /// Updates the run from a committed transition, exactly as the store applied it.
    pub fn apply(&mut self, t: &Transition, committed: &Committed) {
        for change in &t.steps {
            self.apply_change(change);
        }
        if let (Some((position, _)), true) = (&t.then_begin, committed.began_next) {
            self.apply_change(&StepChange::Begin {
                position: *position,
            });
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

    fn apply_change(&mut self, change: &StepChange) {
        apply_to_steps(&mut self.steps, change);
        let ended = match change {
            StepChange::Begin { position } => {
                let position = *position as usize;
                self.in_flight = self.steps.get(position).map(|s| Attempt {
                    leg: Leg::Action,
                    position,
                    number: s.attempts,
                });
                None
            }
            StepChange::CompensationBegin { position } => {
                let position = *position as usize;
                self.in_flight = self.steps.get(position).map(|s| Attempt {
                    leg: Leg::Compensation,
                    position,
                    number: s.compensation_attempts,
                });
                None
            }
            StepChange::Succeeded { position, .. }
            | StepChange::Failed { position, .. }
            | StepChange::ReleaseAttempt { position } => Some((Leg::Action, *position)),
            StepChange::CompensationSucceeded { position, .. }
            | StepChange::CompensationFailed { position, .. }
            | StepChange::ReleaseCompensationAttempt { position } => {
                Some((Leg::Compensation, *position))
            }
            _ => None,
        };
        if let (Some((leg, position)), Some(attempt)) = (ended, self.in_flight) {
            if attempt.leg == leg && attempt.position as i32 == position {
                self.in_flight = None;
            }
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

    /// Begins the next attempt of `leg` at `position`, or gives up when the last allowed
    /// attempt was cut short (its worker died): it may have taken effect before the worker
    /// died, so an action's outcome is unknown and the step is possibly done (README,
    /// "Concepts").
    fn begin(&self, leg: Leg, position: usize, facts: &Facts) -> Next {
        if self.running(leg, position)
            && !self
                .policy(leg, position)
                .allows_another(self.in_round(leg, position))
        {
            let error = match leg {
                Leg::Action => StepError::unknown(
                    "attempt_interrupted",
                    "the worker running the last allowed attempt stopped",
                ),
                Leg::Compensation => StepError::retryable(
                    "attempt_interrupted",
                    "the worker running the last allowed compensation attempt stopped",
                ),
            };
            return Next::Commit(self.give_up(leg, position, error, true, Vec::new()));
        }
        let attempt = self.attempts(leg, position) + 1;
        let name = &self.steps[position].name;
        let mut t = Transition::new();
        if leg == Leg::Action {
            t.status = Some(SagaStatus::Running);
        }
        t.steps.push(begin_change(leg, position, attempt));
        t.events.extend(started_event(leg, name, attempt));
        if leg == Leg::Compensation {
            self.renew_lease_if_due(&mut t, facts);
        }
        Next::Begin(t)
    }

    /// A failed attempt: another at a durable time (`wake_at`, the lease given up) when the
    /// failure is retryable and the policy allows one, else give up.
    fn after_failure(
        &self,
        leg: Leg,
        position: usize,
        error: StepError,
        events: Vec<NewEvent>,
        facts: &Facts,
    ) -> Transition {
        let policy = self.policy(leg, position);
        let in_round = self.in_round(leg, position);
        if !error.is_retryable() || !policy.allows_another(in_round) {
            return self.give_up(leg, position, error, false, events);
        }
        let delay = policy.next_delay(in_round, facts.jitter, error.retry_after());
        let retry_at = facts.now + chrono_duration(delay);
        let name = &self.steps[position].name;
        let attempt = self.attempts(leg, position);
        let mut t = Transition::new();
        t.wake = WakeChange::Set(retry_at);
        t.release_lease = true;
        t.events.extend(events);
        let mut retry = json!({"at": retry_at, "delay_ms": delay.as_millis() as u64});
        if leg == Leg::Action {
            t.status = Some(SagaStatus::Pending);
            if error.is_unknown() {
                t.steps.push(StepChange::PossiblyDone {
                    position: position as i32,
                });
            }
        } else {
            retry["compensation"] = Value::Bool(true);
        }
        t.steps
            .push(failed_change(leg, position, error.to_json(), false));
        t.events
            .push(NewEvent::step(failed_kind(leg), name, attempt).with_detail(error.to_json()));
        t.events
            .push(NewEvent::step(EventKind::RetryScheduled, name, attempt).with_detail(retry));
        t
    }

    /// No attempt of `leg` at `position` follows. A step that fails for good is recorded and
    /// the saga starts compensating; a compensation that cannot succeed leaves the saga
    /// `failed`, for an operator.
    fn give_up(
        &self,
        leg: Leg,
        position: usize,
        error: StepError,
        interrupted: bool,
        events: Vec<NewEvent>,
    ) -> Transition {
        let state = &self.steps[position];
        let name = state.name.as_str();
        let mut t = Transition::new();
        t.events.extend(events);
        match leg {
            Leg::Action => {
                if error.is_unknown() && !state.possibly_done {
                    t.steps.push(StepChange::PossiblyDone {
                        position: position as i32,
                    });
                }
                let possibly_done = error.is_unknown() || state.possibly_done;
                t.steps
                    .push(failed_change(leg, position, error.to_json(), true));
                let mut detail = error.to_json();
                if interrupted {
                    detail["interrupted"] = Value::Bool(true);
                }
                if possibly_done {
                    // It gives up, but an attempt may have taken effect: it is compensated
                    // too, first.
                    detail["possibly_done"] = Value::Bool(true);
                }
                t.events.push(
                    NewEvent::step(failed_kind(leg), name, state.attempts.max(1))
                        .with_detail(detail),
                );
                let mut saga_error =
                    json!({"code": error.code, "message": error.message, "step": name});
                if let Some(action) = &error.action {
                    saga_error["action"] = Value::String(action.clone());
                }
                // Which steps to undo is read from the steps as this commit leaves them.
                let mut steps = self.steps.clone();
                for change in &t.steps {
                    apply_to_steps(&mut steps, change);
                }
                self.to_compensation(&steps, t, saga_error)
            }
            Leg::Compensation => {
                t.status = Some(SagaStatus::Failed);
                t.wake = WakeChange::Clear;
                t.release_lease = true;
                t.error = Some(json!({
                    "code": "compensation_failed",
                    "message": format!("could not undo step `{name}`: {}", error.message),
                    "step": name,
                    "cause": error.to_json(),
                }));
                t.steps
                    .push(failed_change(leg, position, error.to_json(), true));
                t.steps.push(StepChange::SkipUnreached);
                t.events.push(
                    NewEvent::step(failed_kind(leg), name, state.compensation_attempts.max(1))
                        .with_detail(error.to_json()),
                );
                t.events.push(NewEvent::saga(EventKind::SagaFailed));
                t
            }
        }
    }

    /// Adds to `t` what turns the saga toward compensation: every succeeded or possibly done
    /// step of `steps` with a compensation is marked pending (the compensations then run from
    /// the highest position down, so a possibly done step at the cursor is undone first); with
    /// nothing to undo the next decision ends the saga `compensated`.
    fn to_compensation(&self, steps: &[StepState], mut t: Transition, error: Value) -> Transition {
        let positions: Vec<i32> = steps
            .iter()
            .filter(|s| {
                (s.status == StepStatus::Succeeded || s.possibly_done)
                    && s.compensation_status == CompensationStatus::NotNeeded
                    && self.skill.steps()[s.position as usize].is_compensable()
            })
            .map(|s| s.position)
            .collect();
        t.error = Some(error);
        t.steps.push(StepChange::CompensationPending { positions });
        t.status = Some(SagaStatus::Compensating);
        t
    }

    fn compensated(&self) -> Transition {
        let mut t = Transition::new();
        t.status = Some(SagaStatus::Compensated);
        t.wake = WakeChange::Clear;
        t.release_lease = true;
        t.steps.push(StepChange::SkipUnreached);
        t.events.push(NewEvent::saga(EventKind::SagaCompensated));
        t
    }

    fn complete_into(&self, outputs: BTreeMap<String, Value>, t: &mut Transition) {
        t.status = Some(SagaStatus::Completed);
        t.wake = WakeChange::Clear;
        t.release_lease = true;
        t.output = Some(self.skill.finish(&self.input, &outputs));
        t.events.push(NewEvent::saga(EventKind::SagaCompleted));
    }

    /// The action at `position` succeeded: the cursor moves on and, in the same commit, the
    /// saga completes or the next step begins (unless the worker is stopping: it gives the
    /// saga back in this commit rather than start a step whose attempt it would give back).
    fn action_succeeded(
        &self,
        position: usize,
        output: Value,
        taken: Vec<i64>,
        events: Vec<NewEvent>,
        facts: &Facts,
    ) -> Transition {
        let name = &self.steps[position].name;
        let attempt = self.steps[position].attempts;
        let mut t = Transition::new();
        t.cursor = Some(position as i32 + 1);
        if !taken.is_empty() {
            t.steps.push(StepChange::ConsumeDeliveries {
                position: position as i32,
                step: name.clone(),
                ids: taken,
            });
        }
        t.events.extend(events);
        let next = position + 1;
        let outputs = (next == self.steps.len()).then(|| {
            let mut outputs = outputs_of(&self.steps);
            outputs.insert(name.clone(), output.clone());
            outputs
        });
        t.steps.push(StepChange::Succeeded {
            position: position as i32,
            output,
        });
        t.events
            .extend(succeeded_event(Leg::Action, name, attempt, None));
        if let Some(outputs) = outputs {
            self.complete_into(outputs, &mut t);
            return t;
        }
        if facts.stopping {
            t.wake = WakeChange::Set(facts.now);
            t.release_lease = true;
            return t;
        }
        t.then_begin = Some(then_begin(
            next,
            &self.steps[next].name,
            self.steps[next].attempts + 1,
        ));
        self.renew_lease_if_due(&mut t, facts);
        t
    }

    /// Renews the lease in this commit when less than half of it is left. Skipping renewal on
    /// most commits keeps the hot-path update from touching the indexed `wake_at` (HOT updates).
    fn renew_lease_if_due(&self, t: &mut Transition, facts: &Facts) {
        let half = chrono_duration(facts.lease_duration / 2);
        if self.lease.expires_at - facts.now < half {
            t.wake = WakeChange::Set(facts.now + chrono_duration(facts.lease_duration));
        }
    }
}

/// The transition that records what happened to the attempt in flight.
pub(crate) fn decide(run: &Run, outcome: Outcome, facts: &Facts) -> Transition {
    let Some(attempt) = run.in_flight else {
        // Nothing was in flight: there is nothing to record but the lease to keep.
        return Transition::new();
    };
    let (leg, position) = (attempt.leg, attempt.position);
    match outcome {
        Outcome::Interrupted => run.release("interrupted", facts.now),
        Outcome::Failed { error, events } => run.after_failure(leg, position, error, events, facts),
        Outcome::Succeeded {
            output,
            taken,
            events,
        } => match leg {
            Leg::Action => run.action_succeeded(position, output, taken, events, facts),
            Leg::Compensation => {
                let mut t = Transition::new();
                let detail = run
                    .undoes_possibly_done(position)
                    // The history says what undoing a step that may not have run found.
                    .then(|| json!({"possibly_done": true, "output": output}));
                t.steps.push(StepChange::CompensationSucceeded {
                    position: position as i32,
                    output,
                });
                t.events.extend(succeeded_event(
                    leg,
                    &run.steps[position].name,
                    attempt.number,
                    detail,
                ));
                t
            }
        },
        Outcome::Suspended {
            suspension,
            deadlines,
            taken,
            events,
        } => {
            if leg == Leg::Compensation {
                // Compensations have no waits (their context has none), so this cannot come;
                // were it to, it is a failure like any error the code returns.
                let error = StepError::permanent("suspended", "a compensation cannot wait");
                return run.after_failure(leg, position, error, events, facts);
            }
            let mut t = Transition::new();
            t.status = Some(SagaStatus::Waiting);
            t.wake = WakeChange::Set(suspension.wake_at);
            t.release_lease = true;
            t.waiting_for = Some(suspension.waiting_for);
            t.waiting_taken = taken;
            t.steps.push(StepChange::WaitDeadlines {
                position: position as i32,
                deadlines,
            });
            t.events.extend(events);
            t.events.push(suspension.event);
            t
        }
    }
}

/// The step change that begins attempt `attempt` of `leg`.
fn begin_change(leg: Leg, position: usize, _attempt: i32) -> StepChange {
    let position = position as i32;
    match leg {
        Leg::Action => StepChange::Begin { position },
        Leg::Compensation => StepChange::CompensationBegin { position },
    }
}

/// The history row of an attempt's start, when the driver writes one.
fn started_event(leg: Leg, name: &str, attempt: i32) -> Option<NewEvent> {
    let kind = match leg {
        Leg::Action => EventKind::StepStarted,
        Leg::Compensation => EventKind::CompensationStarted,
    };
    Some(NewEvent::step(kind, name, attempt))
}

/// The history row of an attempt's success, when the driver writes one.
fn succeeded_event(leg: Leg, name: &str, attempt: i32, detail: Option<Value>) -> Option<NewEvent> {
    let kind = match leg {
        Leg::Action => EventKind::StepSucceeded,
        Leg::Compensation => EventKind::CompensationSucceeded,
    };
    let event = NewEvent::step(kind, name, attempt);
    Some(match detail {
        Some(detail) => event.with_detail(detail),
        None => event,
    })
}

/// The next step's start carried by a step's success (`Transition::then_begin`).
fn then_begin(position: usize, name: &str, attempt: i32) -> (i32, NewEvent) {
    (
        position as i32,
        NewEvent::step(EventKind::StepStarted, name, attempt),
    )
}

fn failed_change(leg: Leg, position: usize, error: Value, last: bool) -> StepChange {
    let position = position as i32;
    match leg {
        Leg::Action => StepChange::Failed {
            position,
            error,
            last,
        },
        Leg::Compensation => StepChange::CompensationFailed {
            position,
            error,
            last,
        },
    }
}

fn failed_kind(leg: Leg) -> EventKind {
    match leg {
        Leg::Action => EventKind::StepFailed,
        Leg::Compensation => EventKind::CompensationFailed,
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
        StepChange::Begin { position } => {
            if let Some(p) = at(steps, *position) {
                steps[p].status = StepStatus::Running;
                steps[p].attempts += 1;
            }
        }
        StepChange::Succeeded { position, output } => {
            if let Some(p) = at(steps, *position) {
                steps[p].status = StepStatus::Succeeded;
                steps[p].output = Some(output.clone());
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
        StepChange::CompensationBegin { position } => {
            if let Some(p) = at(steps, *position) {
                steps[p].compensation_status = CompensationStatus::Running;
                steps[p].compensation_attempts += 1;
            }
        }
        StepChange::CompensationSucceeded { position, .. } => {
            if let Some(p) = at(steps, *position) {
                steps[p].compensation_status = CompensationStatus::Compensated;
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
        StepChange::ReleaseAttempt { position } => {
            if let Some(p) = at(steps, *position) {
                let s = &mut steps[p];
                if s.status == StepStatus::Running && s.attempts > 0 {
                    s.status = StepStatus::Pending;
                    s.attempts -= 1;
                }
            }
        }
        StepChange::ReleaseCompensationAttempt { position } => {
            if let Some(p) = at(steps, *position) {
                let s = &mut steps[p];
                if s.compensation_status == CompensationStatus::Running
                    && s.compensation_attempts > 0
                {
                    s.compensation_status = CompensationStatus::Pending;
                    s.compensation_attempts -= 1;
                }
            }
        }
        StepChange::ConsumeDeliveries { .. } => {}
    }
}

/// Outputs of the steps that succeeded, by name.
fn outputs_of(steps: &[StepState]) -> BTreeMap<String, Value> {
    steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
        .collect()
}

/// An attempt that ran, for [`observe`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ran {
    pub attempt: Attempt,
    pub outcome: OutcomeKind,
    pub elapsed: Duration,
}

/// The claim started the saga's very first attempt: the moment it counts as started.
pub(crate) fn observe_claim(run: &Run) {
    if run.in_flight.is_some() && is_first_attempt_of_saga(&run.steps) {
        metrics::saga_started(run.skill.name());
    }
}

/// Metrics and tracing for a committed transition, looked at after [`Run::apply`]; `ran` is
/// the attempt whose outcome it records, if one ran.
pub(crate) fn observe(run: &Run, t: &Transition, committed: &Committed, ran: Option<Ran>) {
    let skill = run.skill.name();
    if let Some(ran) = ran {
        let step = &run.steps[ran.attempt.position].name;
        let ok = match ran.outcome {
            OutcomeKind::Succeeded => Some(true),
            OutcomeKind::Failed => Some(false),
            OutcomeKind::Suspended | OutcomeKind::Interrupted => None,
        };
        if let Some(ok) = ok {
            metrics::step_attempt(skill, step, ran.attempt.leg.metric(), ok, ran.elapsed);
        }
        if ran.outcome == OutcomeKind::Succeeded && ran.attempt.leg == Leg::Action {
            debug!(step = %step, attempt = ran.attempt.number, "step succeeded");
        }
    }
    let began = t
        .steps
        .iter()
        .any(|c| matches!(c, StepChange::Begin { .. }))
        || (t.then_begin.is_some() && committed.began_next);
    if began && is_first_attempt_of_saga(&run.steps) {
        metrics::saga_started(skill);
    }
    for change in &t.steps {
        let (leg, position, error, last) = match change {
            StepChange::Failed {
                position,
                error,
                last,
            } => (Leg::Action, *position, error, *last),
            StepChange::CompensationFailed {
                position,
                error,
                last,
            } => (Leg::Compensation, *position, error, *last),
            StepChange::ReleaseAttempt { .. } | StepChange::ReleaseCompensationAttempt { .. } => {
                let reason = t
                    .events
                    .iter()
                    .find(|e| e.kind == EventKind::AttemptReleased)
                    .and_then(|e| e.detail.as_ref())
                    .and_then(|d| d.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                info!(reason, "shutting down: the begun attempt is given back");
                continue;
            }
            _ => continue,
        };
        let Some(state) = usize::try_from(position)
            .ok()
            .and_then(|p| run.steps.get(p))
        else {
            continue;
        };
        let step = state.name.as_str();
        let attempt = match leg {
            Leg::Action => state.attempts,
            Leg::Compensation => state.compensation_attempts,
        };
        match (leg, last) {
            (Leg::Action, false) | (Leg::Compensation, false) => {
                metrics::step_retry(skill, step, leg.metric());
                let delay_ms = t
                    .events
                    .iter()
                    .find(|e| e.kind == EventKind::RetryScheduled)
                    .and_then(|e| e.detail.as_ref())
                    .and_then(|d| d.get("delay_ms"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if leg == Leg::Action {
                    info!(step, attempt, error = %error, delay_ms, "step failed; retry scheduled");
                } else {
                    info!(step, attempt, error = %error, delay_ms, "compensation failed; retry scheduled");
                }
            }
            (Leg::Action, true) => {
                warn!(step, attempt, error = %error, "step failed for good; compensating");
            }
            (Leg::Compensation, true) => {
                warn!(step, attempt, error = %error, "compensation exhausted; saga failed, operator needed");
            }
        }
    }
    match t.status {
        Some(SagaStatus::Completed) => {
            metrics::saga_completed(skill);
            debug!("saga completed");
        }
        Some(SagaStatus::Compensated) => {
            metrics::saga_compensated(skill);
            info!("saga compensated");
        }
        Some(SagaStatus::Failed) => metrics::saga_failed(skill),
        Some(SagaStatus::Waiting) => {
            if let Some(state) = run.steps.get(run.cursor) {
                if let WakeChange::Set(until) = t.wake {
                    debug!(step = %state.name, until = %until, "step waits");
                }
                metrics::step_waits(skill, &state.name);
            }
        }
        _ => {}
    }
}

pub(crate) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether the attempt just started is the saga's very first (the claim or the worker starts
/// it): the moment the saga counts as started in the metrics.
fn is_first_attempt_of_saga(steps: &[StepState]) -> bool {
    steps.iter().map(|s| s.attempts).sum::<i32>() == 1
}
