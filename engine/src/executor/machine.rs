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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::retry::Jitter;
    use crate::skill::{SkillInput, Step};
    use chrono::TimeZone;
    use schemars::JsonSchema;
    use serde::Deserialize;
    use uuid::Uuid;

    #[derive(Deserialize, JsonSchema)]
    struct Empty {}
    impl SkillInput for Empty {}

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::None,
        }
    }

    /// Four steps: `a`, `c` and `d` have compensations, `b` has none. Actions get three
    /// attempts, compensations two.
    fn skill() -> Arc<Skill> {
        let step = |name: &'static str, compensable: bool| {
            let step = Step::new(name, |_| async { Ok::<_, StepError>(()) })
                .retry(policy(3))
                .compensation_retry(policy(2));
            if compensable {
                step.compensate(|_, _| async { Ok::<_, StepError>(()) })
            } else {
                step
            }
        };
        Arc::new(
            Skill::builder::<Empty>("trip", 1, "A test skill.")
                .step(step("a", true))
                .step(step("b", false))
                .step(step("c", true))
                .step(step("d", true))
                .build()
                .unwrap(),
        )
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap()
    }

    fn facts() -> Facts {
        Facts {
            now: t0(),
            jitter: 0.5,
            lease_duration: Duration::from_secs(30),
            stopping: false,
        }
    }

    fn claimed() -> ClaimedSaga {
        let steps = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(position, name)| StepState {
                position: position as i32,
                name: name.to_string(),
                status: StepStatus::Pending,
                attempts: 0,
                attempts_round_base: 0,
                output: None,
                compensation_status: CompensationStatus::NotNeeded,
                compensation_attempts: 0,
                compensation_round_base: 0,
                wait_deadlines: BTreeMap::new(),
                possibly_done: false,
            })
            .collect();
        ClaimedSaga {
            lease: Lease {
                saga_id: Uuid::nil(),
                token: 1,
                worker: Arc::from("worker:test"),
                expires_at: t0() + chrono::Duration::seconds(30),
            },
            skill: "trip".to_string(),
            skill_version: 1,
            status: SagaStatus::Pending,
            input: json!({}),
            cursor: 0,
            cancel_requested: false,
            expired_owner: None,
            begun: false,
            resumed: false,
            steps,
        }
    }

    fn fresh() -> Run {
        Run::new(claimed(), skill())
    }

    /// What the store does with a transition when no cancel came: it applies all of it.
    fn commit(run: &mut Run, t: &Transition) {
        run.apply(
            t,
            &Committed {
                cancel_requested: false,
                began_next: t.then_begin.is_some(),
            },
        );
    }

    /// A run whose steps before `position` succeeded and whose step at `position` is in
    /// flight with attempt `attempt`.
    fn at(position: usize, attempt: i32) -> Run {
        let mut run = fresh();
        for p in 0..position {
            let s = &mut run.steps[p];
            s.status = StepStatus::Succeeded;
            s.attempts = 1;
            s.output = Some(json!(format!("out-{}", s.name)));
        }
        run.cursor = position;
        run.status = SagaStatus::Running;
        let s = &mut run.steps[position];
        s.status = StepStatus::Running;
        s.attempts = attempt;
        run.in_flight = Some(Attempt {
            leg: Leg::Action,
            position,
            number: attempt,
        });
        run
    }

    /// The run's compensation of step `position` in flight with attempt `attempt`, every step
    /// up to `last` succeeded and those with a compensation waiting for it.
    fn compensating(last: usize, position: usize, attempt: i32) -> Run {
        let mut run = fresh();
        let skill = run.skill.clone();
        for p in 0..=last {
            let s = &mut run.steps[p];
            s.status = StepStatus::Succeeded;
            s.attempts = 1;
            s.output = Some(json!(p));
            if skill.steps()[p].is_compensable() {
                s.compensation_status = CompensationStatus::Pending;
            }
        }
        run.status = SagaStatus::Compensating;
        run.cursor = last + 1;
        let s = &mut run.steps[position];
        s.compensation_status = CompensationStatus::Running;
        s.compensation_attempts = attempt;
        run.in_flight = Some(Attempt {
            leg: Leg::Compensation,
            position,
            number: attempt,
        });
        run
    }

    /// Step changes in short form.
    fn changes(t: &Transition) -> Vec<String> {
        t.steps
            .iter()
            .map(|c| match c {
                StepChange::Begin { position, .. } => format!("begin {position}"),
                StepChange::Succeeded { position, .. } => format!("succeeded {position}"),
                StepChange::Failed { position, last, .. } => {
                    format!("failed {position}{}", if *last { " last" } else { "" })
                }
                StepChange::PossiblyDone { position } => format!("possibly_done {position}"),
                StepChange::CompensationPending { positions } => {
                    format!("compensation_pending {positions:?}")
                }
                StepChange::CompensationBegin { position, .. } => {
                    format!("compensation_begin {position}")
                }
                StepChange::CompensationSucceeded { position, .. } => {
                    format!("compensation_succeeded {position}")
                }
                StepChange::CompensationFailed { position, last, .. } => format!(
                    "compensation_failed {position}{}",
                    if *last { " last" } else { "" }
                ),
                StepChange::SkipUnreached => "skip_unreached".to_string(),
                StepChange::WaitDeadlines { position, .. } => format!("wait_deadlines {position}"),
                StepChange::ConsumeDeliveries { position, ids, .. } => {
                    format!("consume {position} {ids:?}")
                }
                StepChange::ReleaseAttempt { position } => format!("release {position}"),
                StepChange::ReleaseCompensationAttempt { position } => {
                    format!("release_compensation {position}")
                }
            })
            .collect()
    }

    /// History rows in short form (kind, step, attempt).
    fn events(t: &Transition) -> Vec<String> {
        t.events
            .iter()
            .map(|e| match (&e.step, e.attempt) {
                (Some(step), Some(attempt)) => format!("{} {step} {attempt}", e.kind.as_str()),
                _ => e.kind.as_str().to_string(),
            })
            .collect()
    }

    fn detail(t: &Transition, kind: EventKind) -> &Value {
        t.events
            .iter()
            .find(|e| e.kind == kind)
            .and_then(|e| e.detail.as_ref())
            .unwrap()
    }

    fn next_commit(run: &Run) -> Transition {
        match run.next(&facts()) {
            Next::Commit(t) => t,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    fn next_begin(run: &Run) -> Transition {
        match run.next(&facts()) {
            Next::Begin(t) => t,
            other => panic!("expected a begin, got {other:?}"),
        }
    }

    fn succeeded(output: Value) -> Outcome {
        Outcome::Succeeded {
            output,
            taken: Vec::new(),
            events: Vec::new(),
        }
    }

    fn failed(error: StepError) -> Outcome {
        Outcome::Failed {
            error,
            events: Vec::new(),
        }
    }

    #[test]
    fn the_first_attempt_begins() {
        let mut run = fresh();
        let t = next_begin(&run);
        assert_eq!(t.status, Some(SagaStatus::Running));
        assert_eq!(changes(&t), ["begin 0"]);
        assert_eq!(events(&t), ["step_started a 1"]);
        assert_eq!(t.wake, WakeChange::Keep);
        assert!(!t.release_lease);
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Running);
        assert_eq!(run.steps[0].status, StepStatus::Running);
        assert_eq!(run.steps[0].attempts, 1);
        let attempt = Attempt {
            leg: Leg::Action,
            position: 0,
            number: 1,
        };
        assert_eq!(run.in_flight, Some(attempt));
        assert!(matches!(run.next(&facts()), Next::Run(a) if a == attempt));
        assert!(run.held);
    }

    #[test]
    fn a_claim_that_began_the_attempt_runs_it_and_a_woken_saga_goes_on_with_its_attempt() {
        let mut claim = claimed();
        claim.begun = true;
        claim.status = SagaStatus::Running;
        claim.steps[0].status = StepStatus::Running;
        claim.steps[0].attempts = 1;
        let run = Run::new(claim.clone(), skill());
        assert!(matches!(run.next(&facts()), Next::Run(a) if a.position == 0 && a.number == 1));

        claim.begun = false;
        claim.resumed = true;
        claim.status = SagaStatus::Waiting;
        let run = Run::new(claim, skill());
        assert_eq!(
            run.in_flight.map(|a| (a.leg, a.position, a.number)),
            Some((Leg::Action, 0, 1))
        );
    }

    #[test]
    fn a_success_starts_the_next_step_in_the_same_commit() {
        let mut run = at(0, 1);
        let t = decide(&run, succeeded(json!({"id": 7})), &facts());
        assert_eq!(t.cursor, Some(1));
        assert_eq!(changes(&t), ["succeeded 0"]);
        assert_eq!(events(&t), ["step_succeeded a 1"]);
        let (position, event) = t.then_begin.as_ref().unwrap();
        assert_eq!(*position, 1);
        assert_eq!(
            (event.kind, event.attempt),
            (EventKind::StepStarted, Some(1))
        );
        assert_eq!(t.status, None);
        assert_eq!(
            t.wake,
            WakeChange::Keep,
            "the lease has more than half left"
        );
        assert!(!t.release_lease);
        commit(&mut run, &t);
        assert_eq!(run.cursor, 1);
        assert_eq!(run.steps[0].status, StepStatus::Succeeded);
        assert_eq!(run.steps[0].output, Some(json!({"id": 7})));
        assert_eq!(run.steps[1].status, StepStatus::Running);
        assert_eq!(run.steps[1].attempts, 1);
        assert_eq!(run.in_flight.map(|a| (a.position, a.number)), Some((1, 1)));
        assert!(run.held);
    }

    #[test]
    fn a_cancel_seen_by_the_success_commit_stops_the_next_start_and_compensates() {
        let mut run = at(0, 1);
        let t = decide(&run, succeeded(json!(1)), &facts());
        run.apply(
            &t,
            &Committed {
                cancel_requested: true,
                began_next: false,
            },
        );
        assert_eq!(run.steps[1].status, StepStatus::Pending);
        assert_eq!(run.in_flight, None);
        assert!(run.cancel_requested);
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Compensating));
        assert_eq!(changes(&t), ["compensation_pending [0]"]);
        assert_eq!(t.error.as_ref().unwrap()["code"], "cancelled");
    }

    #[test]
    fn the_last_step_completes_the_saga() {
        let mut run = at(3, 1);
        let t = decide(&run, succeeded(json!("out-d")), &facts());
        assert_eq!(t.status, Some(SagaStatus::Completed));
        assert_eq!(t.wake, WakeChange::Clear);
        assert!(t.release_lease);
        assert!(t.then_begin.is_none());
        assert_eq!(changes(&t), ["succeeded 3"]);
        assert_eq!(events(&t), ["step_succeeded d 1", "saga_completed"]);
        assert_eq!(
            t.output,
            Some(json!({"a": "out-a", "b": "out-b", "c": "out-c", "d": "out-d"}))
        );
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Completed);
        assert!(!run.held);
        assert_eq!(run.in_flight, None);
        assert!(matches!(run.next(&facts()), Next::Stop));
    }

    #[test]
    fn a_fork_that_reused_every_step_completes() {
        let mut run = fresh();
        for s in &mut run.steps {
            s.status = StepStatus::Succeeded;
            s.output = Some(json!(s.position));
        }
        run.cursor = 4;
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Completed));
        assert!(t.release_lease);
        assert!(t.steps.is_empty());
        assert_eq!(events(&t), ["saga_completed"]);
        assert_eq!(t.output, Some(json!({"a": 0, "b": 1, "c": 2, "d": 3})));
    }

    #[test]
    fn a_retryable_failure_schedules_a_durable_retry() {
        let mut run = at(1, 2);
        let error = StepError::retryable("busy", "try later");
        let t = decide(&run, failed(error), &facts());
        // Attempt 2 of the round failed: 100 ms * 2^(2-1), no jitter.
        let retry_at = t0() + chrono::Duration::milliseconds(200);
        assert_eq!(t.status, Some(SagaStatus::Pending));
        assert_eq!(t.wake, WakeChange::Set(retry_at));
        assert!(
            t.release_lease,
            "the lease is given up until the retry is due"
        );
        assert_eq!(changes(&t), ["failed 1"]);
        assert_eq!(events(&t), ["step_failed b 2", "retry_scheduled b 2"]);
        assert_eq!(detail(&t, EventKind::StepFailed)["code"], "busy");
        assert_eq!(detail(&t, EventKind::RetryScheduled)["delay_ms"], 200);
        assert_eq!(detail(&t, EventKind::RetryScheduled)["at"], json!(retry_at));
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Pending);
        assert_eq!(run.steps[1].status, StepStatus::Pending);
        assert_eq!(run.steps[1].attempts, 2);
        assert_eq!(run.in_flight, None);
        assert!(!run.held);
    }

    #[test]
    fn a_retry_after_hint_sets_the_retry_time() {
        let run = at(0, 1);
        let error = StepError::retryable("rate_limited", "slow down")
            .with_retry_after(Duration::from_secs(5));
        let t = decide(&run, failed(error), &facts());
        // 5 s plus 10% of 5 s times the jitter sample 0.5.
        assert_eq!(
            t.wake,
            WakeChange::Set(t0() + chrono::Duration::milliseconds(5250))
        );
    }

    #[test]
    fn an_exhausted_failure_starts_compensation_in_reverse_with_possibly_done_steps() {
        let mut run = at(3, 3);
        // Step c never succeeded for sure: an attempt of it ended with an unknown outcome.
        run.steps[2].status = StepStatus::Failed;
        run.steps[2].possibly_done = true;
        let t = decide(
            &run,
            failed(StepError::retryable("busy", "still")),
            &facts(),
        );
        assert_eq!(t.status, Some(SagaStatus::Compensating));
        assert_eq!(t.wake, WakeChange::Keep);
        assert!(!t.release_lease, "the same worker goes on compensating");
        // b has no compensation; d failed for sure and is not undone.
        assert_eq!(
            changes(&t),
            ["failed 3 last", "compensation_pending [0, 2]"]
        );
        assert_eq!(events(&t), ["step_failed d 3"]);
        let error = t.error.as_ref().unwrap();
        assert_eq!(
            (error["code"].as_str(), error["step"].as_str()),
            (Some("busy"), Some("d"))
        );
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Compensating);
        assert_eq!(run.steps[3].status, StepStatus::Failed);
        assert_eq!(run.in_flight, None);
        // The highest position is undone first.
        let mut order = Vec::new();
        for _ in 0..2 {
            let t = next_begin(&run);
            commit(&mut run, &t);
            let attempt = run.in_flight.unwrap();
            order.push(attempt.position);
            if attempt.position == 2 {
                let ctx = run.context(attempt, t0(), None);
                assert!(
                    ctx.possibly_done,
                    "undoing a step that may have taken effect"
                );
            }
            let t = decide(&run, succeeded(json!(null)), &facts());
            if attempt.position == 2 {
                assert_eq!(
                    detail(&t, EventKind::CompensationSucceeded)["possibly_done"],
                    true
                );
            }
            commit(&mut run, &t);
        }
        assert_eq!(order, [2, 0]);
    }

    #[test]
    fn a_permanent_failure_gives_up_at_once() {
        let run = at(1, 1);
        let t = decide(
            &run,
            failed(StepError::permanent("declined", "no")),
            &facts(),
        );
        assert_eq!(t.status, Some(SagaStatus::Compensating));
        assert_eq!(changes(&t), ["failed 1 last", "compensation_pending [0]"]);
        assert!(detail(&t, EventKind::StepFailed)
            .get("possibly_done")
            .is_none());
    }

    #[test]
    fn an_unknown_outcome_marks_the_step_possibly_done() {
        let mut run = at(1, 1);
        let t = decide(
            &run,
            failed(StepError::unknown("timeout", "cut off")),
            &facts(),
        );
        assert_eq!(changes(&t), ["possibly_done 1", "failed 1"]);
        assert!(t.release_lease, "an unknown outcome is retried");
        commit(&mut run, &t);
        assert!(run.steps[1].possibly_done);

        // Its last attempt gives up: compensated too, though b has no compensation here.
        let mut run = at(2, 3);
        let t = decide(
            &run,
            failed(StepError::unknown("timeout", "cut off")),
            &facts(),
        );
        assert_eq!(
            changes(&t),
            [
                "possibly_done 2",
                "failed 2 last",
                "compensation_pending [0, 2]"
            ]
        );
        assert_eq!(detail(&t, EventKind::StepFailed)["possibly_done"], true);
        commit(&mut run, &t);
        assert_eq!(
            run.steps[2].compensation_status,
            CompensationStatus::Pending
        );
    }

    #[test]
    fn an_interrupted_last_attempt_gives_up() {
        // The worker running attempt 3 of 3 died; the next claim finds it running, not begun.
        let mut claim = claimed();
        claim.status = SagaStatus::Running;
        claim.cursor = 1;
        claim.steps[0].status = StepStatus::Succeeded;
        claim.steps[0].attempts = 1;
        claim.steps[1].status = StepStatus::Running;
        claim.steps[1].attempts = 3;
        let run = Run::new(claim, skill());
        assert_eq!(run.in_flight, None);
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Compensating));
        // b has no compensation: only a is undone.
        assert_eq!(
            changes(&t),
            [
                "possibly_done 1",
                "failed 1 last",
                "compensation_pending [0]"
            ]
        );
        let failed = detail(&t, EventKind::StepFailed);
        assert_eq!(failed["code"], "attempt_interrupted");
        assert_eq!(
            (
                failed["interrupted"].clone(),
                failed["possibly_done"].clone()
            ),
            (json!(true), json!(true))
        );

        // With attempts left, the next attempt begins instead.
        let mut run = run;
        run.steps[1].attempts = 2;
        let t = next_begin(&run);
        assert_eq!(events(&t), ["step_started b 3"]);
    }

    #[test]
    fn a_cancel_request_turns_to_compensation() {
        let mut run = at(2, 1);
        run.in_flight = None;
        run.steps[2].status = StepStatus::Pending;
        run.steps[2].attempts = 0;
        run.cancel_requested = true;
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Compensating));
        assert_eq!(changes(&t), ["compensation_pending [0]"]);
        assert!(t.events.is_empty());
        assert!(!t.release_lease);
    }

    #[test]
    fn a_compensation_success_moves_down_and_nothing_left_means_compensated() {
        let mut run = compensating(2, 2, 1);
        let t = decide(&run, succeeded(json!("undone")), &facts());
        assert_eq!(changes(&t), ["compensation_succeeded 2"]);
        assert_eq!(events(&t), ["compensation_succeeded c 1"]);
        assert!(t.events[0].detail.is_none());
        assert!(!t.release_lease);
        commit(&mut run, &t);
        assert_eq!(
            run.steps[2].compensation_status,
            CompensationStatus::Compensated
        );
        assert_eq!(run.in_flight, None);

        let t = next_begin(&run);
        assert_eq!(changes(&t), ["compensation_begin 0"]);
        assert_eq!(events(&t), ["compensation_started a 1"]);
        assert_eq!(t.status, None);
        commit(&mut run, &t);
        let t = decide(&run, succeeded(json!("undone")), &facts());
        commit(&mut run, &t);

        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Compensated));
        assert_eq!(t.wake, WakeChange::Clear);
        assert!(t.release_lease);
        assert_eq!(changes(&t), ["skip_unreached"]);
        assert_eq!(events(&t), ["saga_compensated"]);
        commit(&mut run, &t);
        assert_eq!(run.steps[3].status, StepStatus::Skipped);
        assert!(!run.held);
    }

    #[test]
    fn nothing_to_undo_ends_compensated() {
        let mut run = fresh();
        run.cancel_requested = true;
        let t = next_commit(&run);
        assert_eq!(changes(&t), ["compensation_pending []"]);
        commit(&mut run, &t);
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Compensated));
        commit(&mut run, &t);
        assert!(run.steps.iter().all(|s| s.status == StepStatus::Skipped));
    }

    #[test]
    fn a_failed_compensation_is_retried_then_the_saga_fails() {
        let mut run = compensating(2, 2, 1);
        let t = decide(
            &run,
            failed(StepError::retryable("busy", "later")),
            &facts(),
        );
        assert_eq!(t.status, None, "the saga stays compensating");
        assert_eq!(
            t.wake,
            WakeChange::Set(t0() + chrono::Duration::milliseconds(100))
        );
        assert!(t.release_lease);
        assert_eq!(changes(&t), ["compensation_failed 2"]);
        assert_eq!(
            events(&t),
            ["compensation_failed c 1", "retry_scheduled c 1"]
        );
        assert_eq!(detail(&t, EventKind::RetryScheduled)["compensation"], true);
        commit(&mut run, &t);
        assert_eq!(
            run.steps[2].compensation_status,
            CompensationStatus::Pending
        );
        assert_eq!(run.in_flight, None);

        // The second and last allowed attempt fails too.
        let mut run = compensating(2, 2, 2);
        let t = decide(
            &run,
            failed(StepError::retryable("busy", "later")),
            &facts(),
        );
        assert_eq!(t.status, Some(SagaStatus::Failed));
        assert_eq!(t.wake, WakeChange::Clear);
        assert!(t.release_lease);
        assert_eq!(
            changes(&t),
            ["compensation_failed 2 last", "skip_unreached"]
        );
        assert_eq!(events(&t), ["compensation_failed c 2", "saga_failed"]);
        assert_eq!(t.error.as_ref().unwrap()["code"], "compensation_failed");
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Failed);
        assert_eq!(run.steps[2].compensation_status, CompensationStatus::Failed);
        assert!(!run.held);

        // A permanent failure of a compensation gives up at once.
        let run = compensating(2, 2, 1);
        let t = decide(&run, failed(StepError::permanent("gone", "no")), &facts());
        assert_eq!(t.status, Some(SagaStatus::Failed));
    }

    #[test]
    fn an_interrupted_last_compensation_attempt_gives_up() {
        let mut run = compensating(2, 2, 2);
        run.in_flight = None;
        let t = next_commit(&run);
        assert_eq!(t.status, Some(SagaStatus::Failed));
        assert_eq!(
            detail(&t, EventKind::CompensationFailed)["code"],
            "attempt_interrupted"
        );
        // With attempts left, a new one begins, renewing a lease with less than half left.
        run.steps[2].compensation_attempts = 1;
        run.lease.expires_at = t0() + chrono::Duration::seconds(10);
        let t = next_begin(&run);
        assert_eq!(events(&t), ["compensation_started c 2"]);
        assert_eq!(
            t.wake,
            WakeChange::Set(t0() + chrono::Duration::seconds(30))
        );
    }

    #[test]
    fn a_step_suspends_on_a_wait() {
        let mut run = at(1, 1);
        let deadline = t0() + chrono::Duration::hours(1);
        let outcome = Outcome::Suspended {
            suspension: Suspension {
                wake_at: deadline,
                waiting_for: json!({"event": "approved"}),
                event: NewEvent::step(EventKind::WaitStarted, "b", 1),
                event_name: Some("approved".to_string()),
            },
            deadlines: json!({"approved#1": deadline}),
            taken: vec![4],
            events: Vec::new(),
        };
        let t = decide(&run, outcome, &facts());
        assert_eq!(t.status, Some(SagaStatus::Waiting));
        assert_eq!(t.wake, WakeChange::Set(deadline));
        assert!(t.release_lease);
        assert_eq!(t.waiting_for, Some(json!({"event": "approved"})));
        assert_eq!(t.waiting_taken, [4]);
        assert_eq!(changes(&t), ["wait_deadlines 1"]);
        assert_eq!(events(&t), ["wait_started b 1"]);
        commit(&mut run, &t);
        assert_eq!(run.status, SagaStatus::Waiting);
        assert_eq!(
            run.steps[1].wait_deadlines.get("approved#1"),
            Some(&deadline)
        );
        assert!(
            run.in_flight.is_some(),
            "the attempt goes on when the saga is woken"
        );
        assert!(!run.held);
    }

    #[test]
    fn a_success_after_a_wait_consumes_its_deliveries() {
        let run = at(1, 1);
        let outcome = Outcome::Succeeded {
            output: json!(1),
            taken: vec![4, 5],
            events: vec![NewEvent::step(EventKind::WaitTimedOut, "b", 1)],
        };
        let t = decide(&run, outcome, &facts());
        assert_eq!(changes(&t), ["consume 1 [4, 5]", "succeeded 1"]);
        assert_eq!(events(&t), ["wait_timed_out b 1", "step_succeeded b 1"]);
    }

    #[test]
    fn a_graceful_release_gives_the_attempt_back() {
        let mut run = at(1, 2);
        let t = run.release("not_run", t0());
        assert_eq!(t.status, Some(SagaStatus::Pending));
        assert_eq!(t.wake, WakeChange::Set(t0()));
        assert!(t.release_lease);
        assert_eq!(changes(&t), ["release 1"]);
        assert_eq!(events(&t), ["attempt_released b 2"]);
        assert_eq!(
            detail(&t, EventKind::AttemptReleased),
            &json!({"reason": "not_run", "compensation": false})
        );
        commit(&mut run, &t);
        assert_eq!(run.steps[1].status, StepStatus::Pending);
        assert_eq!(run.steps[1].attempts, 1, "the attempt is not counted");
        assert_eq!(run.in_flight, None);
        assert!(!run.held);

        // A compensation cut short by the end of the grace period is given back the same way.
        let mut run = compensating(2, 2, 1);
        let t = decide(&run, Outcome::Interrupted, &facts());
        assert_eq!(t.status, None);
        assert_eq!(changes(&t), ["release_compensation 2"]);
        assert_eq!(
            detail(&t, EventKind::AttemptReleased),
            &json!({"reason": "interrupted", "compensation": true})
        );
        commit(&mut run, &t);
        assert_eq!(
            run.steps[2].compensation_status,
            CompensationStatus::Pending
        );
        assert_eq!(run.steps[2].compensation_attempts, 0);

        // With nothing in flight, only the lease is given back.
        let t = fresh().release("not_run", t0());
        assert!(t.steps.is_empty() && t.events.is_empty() && t.status.is_none());
        assert!(t.release_lease);
    }

    #[test]
    fn a_stopping_worker_gives_the_saga_back_with_the_success_instead_of_starting_the_next_step() {
        let mut run = at(0, 1);
        let stopping = Facts {
            stopping: true,
            ..facts()
        };
        let t = decide(&run, succeeded(json!(1)), &stopping);
        assert!(t.then_begin.is_none());
        assert_eq!(t.wake, WakeChange::Set(t0()));
        assert!(t.release_lease);
        commit(&mut run, &t);
        assert_eq!(run.cursor, 1);
        assert_eq!(run.steps[1].status, StepStatus::Pending);
    }

    #[test]
    fn the_lease_is_renewed_when_less_than_half_is_left() {
        let mut run = at(0, 1);
        run.lease.expires_at = t0() + chrono::Duration::seconds(14);
        let t = decide(&run, succeeded(json!(1)), &facts());
        let renewed = t0() + chrono::Duration::seconds(30);
        assert_eq!(t.wake, WakeChange::Set(renewed));
        assert!(!t.release_lease);
        commit(&mut run, &t);
        assert_eq!(run.lease.expires_at, renewed);
        assert!(run.held);

        run.lease.expires_at = t0() + chrono::Duration::seconds(16);
        let t = decide(&run, succeeded(json!(1)), &facts());
        assert_eq!(t.wake, WakeChange::Keep);
    }

    #[test]
    fn the_attempt_number_and_keys_reach_the_step() {
        let run = compensating(2, 0, 1);
        let ctx = run.context(run.in_flight.unwrap(), t0(), None);
        assert_eq!(ctx.attempt, 1);
        assert_eq!(ctx.idempotency_key, format!("{}/a/compensate", Uuid::nil()));
        assert!(!ctx.possibly_done);
        assert_eq!(ctx.outputs.len(), 3);
    }
}
