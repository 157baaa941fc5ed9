//! The decisions: what comes next for a run, and what an attempt's outcome changes.

use super::{
    apply_to_steps, chrono_duration, is_forward, outputs_of, Attempt, Facts, Leg, Next, Outcome,
    Run,
};
use crate::error::StepError;
use crate::model::{CompensationStatus, EventKind, SagaStatus, StepStatus};
use crate::store::{NewEvent, StepChange, StepState, Transition, WakeChange};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;

impl Run {
    /// What comes next while the lease is held.
    pub fn next(&self, facts: &Facts) -> Next {
        match self.status {
            SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting => {
                if self.cancel_requested {
                    let error = json!({"code": "cancelled", "message": "the saga was cancelled on request"});
                    let mut t = Transition::new();
                    if self.in_flight.is_some() {
                        // Cancelled while its attempt waited: that attempt ends here, unfinished.
                        t.steps.push(StepChange::AbandonAttempt);
                    }
                    return Next::Commit(self.to_compensation(&self.steps, t, error));
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
                t.steps.push(StepChange::ReleaseAttempt);
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
                    t.steps.push(StepChange::ReleaseAttempt);
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
        let mut t = Transition::new();
        if leg == Leg::Action {
            t.status = Some(SagaStatus::Running);
        }
        // No history row: the attempt's start is read from where it is recorded.
        t.steps.push(begin_change(leg, position, attempt));
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
        attempt: Attempt,
        output: Value,
        taken: Vec<i64>,
        events: Vec<NewEvent>,
        facts: &Facts,
    ) -> Transition {
        let position = attempt.position;
        let name = &self.steps[position].name;
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
        // No history row: the step's row keeps the attempt's start and end.
        t.steps.push(StepChange::Succeeded {
            attempt: attempt.recorded(),
            output,
        });
        if let Some(outputs) = outputs {
            self.complete_into(outputs, &mut t);
            return t;
        }
        if facts.stopping {
            t.wake = WakeChange::Set(facts.now);
            t.release_lease = true;
            return t;
        }
        t.then_begin = Some((next as i32, self.steps[next].attempts + 1));
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
            Leg::Action => run.action_succeeded(attempt, output, taken, events, facts),
            Leg::Compensation => {
                // No history row: the step's row keeps the attempt's start and end, and the
                // history says what undoing a step that may not have run found from its
                // compensation output (docs/storage.md).
                let mut t = Transition::new();
                t.steps.push(StepChange::CompensationSucceeded {
                    attempt: attempt.recorded(),
                    output,
                });
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
fn begin_change(leg: Leg, position: usize, attempt: i32) -> StepChange {
    let position = position as i32;
    match leg {
        Leg::Action => StepChange::Begin { position, attempt },
        Leg::Compensation => StepChange::CompensationBegin { position, attempt },
    }
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
