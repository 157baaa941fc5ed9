//! Metrics and tracing, from what was committed.

use super::{Attempt, Leg, OutcomeKind, Run};
use crate::metrics;
use crate::model::{EventKind, SagaStatus};
use crate::store::{Committed, StepChange, StepState, Transition, WakeChange};
use serde_json::Value;
use std::time::Duration;
use tracing::{debug, info, warn};

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
            StepChange::ReleaseAttempt => {
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
        // As a StepError displays itself: `code: message`.
        let error = format!(
            "{}: {}",
            error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        let attempt = match leg {
            Leg::Action => state.attempts,
            Leg::Compensation => state.compensation_attempts,
        };
        match (leg, last) {
            (_, false) => {
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

/// Whether the attempt just started is the saga's very first (the claim or the worker starts
/// it): the moment the saga counts as started in the metrics.
fn is_first_attempt_of_saga(steps: &[StepState]) -> bool {
    steps.iter().map(|s| s.attempts).sum::<i32>() == 1
}
