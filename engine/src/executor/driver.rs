//! Drives one claimed saga as far as it can go while this worker holds the lease: forward
//! steps, then compensations in reverse order if needed, until the saga is terminal, must wait
//! for a retry time, or the lease is lost.

use crate::clock::SharedClock;
use crate::error::{StepError, StoreError};
use crate::metrics::{self, AttemptKind};
use crate::model::{CompensationStatus, EventKind, SagaStatus, StepStatus};
use crate::registry::Registry;
use crate::skill::{BoxFuture, Skill, StepContext};
use crate::store::{
    ClaimedSaga, Lease, NewEvent, PgStore, StepChange, StepState, StoredDelivery, Transition,
    WakeChange,
};
use crate::wait::{Suspension, WaitBook, SUSPENDED};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long a worker waits before looking again at a saga whose skill version it lacks.
const UNKNOWN_SKILL_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Driver {
    pub store: PgStore,
    pub registry: Arc<Registry>,
    pub clock: SharedClock,
    pub lease_duration: Duration,
    pub jitter: super::JitterSource,
    /// Cancelled when the worker stops: finish the step that runs, then give the saga back.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown's grace period is over: interrupt the attempt that runs
    /// and give the saga back with that attempt not counted.
    pub abandon: CancellationToken,
}

/// The result of one attempt of an action or compensation.
enum Attempt {
    Done(Result<Value, StepError>),
    LeaseLost,
    /// The worker's grace period ran out while the attempt ran ([`Driver::abandon`]).
    Interrupted,
}

/// In-memory mirror of a claimed saga; authoritative while the lease is held because every
/// change is committed under the fencing token first.
struct Run {
    skill: Arc<Skill>,
    lease: Lease,
    status: SagaStatus,
    input: Arc<Value>,
    cursor: usize,
    cancel_requested: bool,
    steps: Vec<StepState>,
    /// Whether the step at `cursor` already has its current attempt recorded as started.
    begun: bool,
    /// Whether the saga was just woken from `waiting`: its step reads its deliveries first.
    resumed: bool,
    /// Whether the attempt that ran was cut short by the end of the shutdown's grace period.
    interrupted: bool,
}

impl Run {
    /// What the action (or compensation) at `position` sees for this attempt.
    fn context(
        &self,
        position: usize,
        attempt: i32,
        compensation: bool,
        now: DateTime<Utc>,
        waits: Option<Arc<WaitBook>>,
    ) -> StepContext {
        let step = self.skill.steps()[position].name_arc();
        let saga_id = self.lease.saga_id;
        let state = &self.steps[position];
        let possibly_done =
            compensation && state.possibly_done && state.status != StepStatus::Succeeded;
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
            attempt: attempt.max(1) as u32,
            idempotency_key,
            now,
            input: self.input.clone(),
            outputs: Arc::new(outputs_of(&self.steps)),
            waits,
            possibly_done,
        }
    }
}

impl Driver {
    /// Drives the saga as far as it goes. Returns its lease when the connection to PostgreSQL
    /// was lost under it: the worker takes the saga back once it reconnects
    /// ([`PgStore::reclaim`]) rather than leave it to lease expiry.
    pub async fn drive(&self, claimed: ClaimedSaga) -> Option<Lease> {
        let span = info_span!(
            "saga",
            saga_id = %claimed.lease.saga_id,
            skill = %claimed.skill,
            version = claimed.skill_version,
        );
        let lease = claimed.lease.clone();
        async move {
            match self.drive_inner(claimed).await {
                Ok(()) => None,
                Err(StoreError::LostLease { .. }) => {
                    info!("lease lost; another worker owns the saga now");
                    None
                }
                Err(error) if error.is_connection_lost() => {
                    warn!(error = %error, "saga paused: the connection to PostgreSQL was lost; taking it back on reconnect");
                    Some(lease)
                }
                Err(error) => {
                    warn!(error = %error, "saga paused by a store error; its lease will expire and it will be resumed");
                    None
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn drive_inner(&self, claimed: ClaimedSaga) -> Result<(), StoreError> {
        let version = u32::try_from(claimed.skill_version).unwrap_or(0);
        let Some(skill) = self.registry.get(&claimed.skill, version) else {
            // The claim only takes the versions this worker registered, so this is a registry
            // that disagrees with its own claim; leave the saga alone rather than guess.
            warn!(
                "this worker does not have the saga's skill version; leaving it for another worker"
            );
            let mut t = Transition::new();
            t.wake = WakeChange::Set(self.clock.now() + chrono_duration(UNKNOWN_SKILL_BACKOFF));
            t.release_lease = true;
            self.store
                .commit(&claimed.lease, self.clock.now(), &t)
                .await?;
            return Ok(());
        };
        if let Some(previous) = &claimed.expired_owner {
            info!(previous_owner = %previous, "took over a saga whose lease expired");
        }
        let mut run = Run {
            skill,
            lease: claimed.lease,
            status: claimed.status,
            input: Arc::new(claimed.input),
            cursor: usize::try_from(claimed.cursor).unwrap_or(0),
            cancel_requested: claimed.cancel_requested,
            begun: claimed.begun
                || (claimed.resumed
                    && claimed
                        .steps
                        .get(usize::try_from(claimed.cursor).unwrap_or(usize::MAX))
                        .is_some_and(|s| s.status == StepStatus::Running)),
            steps: claimed.steps,
            resumed: claimed.resumed,
            interrupted: false,
        };
        if run.begun && is_first_attempt_of_saga(&run.steps) {
            metrics::saga_started(run.skill.name());
        }
        if run.steps.is_empty() || run.steps.len() > run.skill.steps().len() {
            return Err(StoreError::Corrupt(format!(
                "saga has {} steps but skill version has {}",
                run.steps.len(),
                run.skill.steps().len()
            )));
        }
        loop {
            if self.shutdown.is_cancelled() {
                debug!("shutting down: releasing the saga");
                return self.release(&mut run, None, "not_run").await;
            }
            let more = match run.status {
                SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting => {
                    self.forward(&mut run).await?
                }
                SagaStatus::Compensating => self.compensate(&mut run).await?,
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => false,
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// Runs the step at the cursor. Returns whether to keep driving.
    async fn forward(&self, run: &mut Run) -> Result<bool, StoreError> {
        if run.cancel_requested {
            let error =
                json!({"code": "cancelled", "message": "the saga was cancelled on request"});
            let t = self.compensation_transition(run, Transition::new(), error);
            self.commit(run, &t).await?;
            return Ok(true);
        }
        let position = run.cursor;
        if position >= run.steps.len() {
            // Every step is done (a fork that reused them all): finish.
            let mut t = Transition::new();
            self.complete_into(run, &mut t);
            self.commit(run, &t).await?;
            return Ok(false);
        }
        let skill = run.skill.clone();
        let step = &skill.steps()[position];
        let policy = skill.action_policy(step, &run.input);

        if !run.begun {
            let state = &run.steps[position];
            if state.status == StepStatus::Running
                && !policy
                    .allows_another((state.attempts - state.attempts_round_base).max(0) as u32)
            {
                // The last allowed attempt was cut short (its worker died): give up. It may have
                // taken effect before the worker died, so its outcome is unknown and the step
                // is possibly done (README, "Concepts").
                let error = StepError::unknown(
                    "attempt_interrupted",
                    "the worker running the last allowed attempt stopped",
                );
                return self.fail_forward(run, error, true, Vec::new()).await;
            }
            let attempt = state.attempts + 1;
            let mut t = Transition::new();
            t.status = Some(SagaStatus::Running);
            t.steps.push(StepChange::Begin {
                position: position as i32,
            });
            t.events
                .push(NewEvent::step(EventKind::StepStarted, step.name(), attempt));
            self.commit(run, &t).await?;
            let state = &mut run.steps[position];
            state.attempts = attempt;
            state.status = StepStatus::Running;
            run.status = SagaStatus::Running;
            run.begun = true;
            if is_first_attempt_of_saga(&run.steps) {
                metrics::saga_started(skill.name());
            }
        }

        let state = &run.steps[position];
        let attempt = state.attempts;
        // A saga woken from a wait reads its deliveries before the step runs; otherwise they
        // are read only when the step reaches a wait (see `run_action`).
        let deliveries = if std::mem::take(&mut run.resumed) {
            Some(self.store.unconsumed_deliveries(run.lease.saga_id).await?)
        } else {
            None
        };
        let (result, book) = self.run_action(run, position, attempt, deliveries).await?;
        if run.interrupted {
            self.release(run, None, "interrupted").await?;
            return Ok(false);
        }
        if let Err(error) = &result {
            if let (true, Some(suspension)) = (error.code == SUSPENDED, book.suspension()) {
                return self.suspend(run, position, &book, suspension).await;
            }
        }
        let wait_events = book.events();
        match result {
            Ok(output) => {
                debug!(step = %step.name(), attempt, "step succeeded");
                run.steps[position].output = Some(output.clone());
                run.steps[position].status = StepStatus::Succeeded;
                let mut t = Transition::new();
                t.cursor = Some(position as i32 + 1);
                let taken = book.taken();
                if !taken.is_empty() {
                    t.steps.push(StepChange::ConsumeDeliveries {
                        position: position as i32,
                        step: step.name().to_string(),
                        ids: taken,
                    });
                }
                t.events.extend(wait_events);
                t.steps.push(StepChange::Succeeded {
                    position: position as i32,
                    output,
                });
                t.events.push(NewEvent::step(
                    EventKind::StepSucceeded,
                    step.name(),
                    attempt,
                ));
                run.cursor = position + 1;
                run.begun = false;
                if run.cursor == run.steps.len() {
                    self.complete_into(run, &mut t);
                    self.commit(run, &t).await?;
                    return Ok(false);
                }
                if self.shutdown.is_cancelled() {
                    // Stopping: give the saga back in this commit rather than start the next
                    // step, whose attempt would then have to be given back.
                    t.wake = WakeChange::Set(self.clock.now());
                    t.release_lease = true;
                    self.commit(run, &t).await?;
                    return Ok(false);
                }
                let next = &run.steps[run.cursor];
                let next_attempt = next.attempts + 1;
                t.then_begin = Some((
                    run.cursor as i32,
                    NewEvent::step(EventKind::StepStarted, &next.name, next_attempt),
                ));
                self.renew_lease_if_due(run, &mut t);
                let committed = self.commit(run, &t).await?;
                if committed.began_next {
                    let next = &mut run.steps[run.cursor];
                    next.attempts = next_attempt;
                    next.status = StepStatus::Running;
                    run.begun = true;
                }
                run.cancel_requested = committed.cancel_requested;
                Ok(true)
            }
            Err(error) => {
                let state = &run.steps[position];
                let in_round = (state.attempts - state.attempts_round_base).max(0) as u32;
                let last = !error.is_retryable() || !policy.allows_another(in_round);
                if last {
                    return self.fail_forward(run, error, false, wait_events).await;
                }
                let delay = policy.next_delay(in_round, self.jitter.sample(), error.retry_after());
                let retry_at = self.clock.now() + chrono_duration(delay);
                info!(step = %step.name(), attempt, error = %error, delay_ms = delay.as_millis() as u64, "step failed; retry scheduled");
                metrics::step_retry(skill.name(), step.name(), AttemptKind::Action);
                let mut t = Transition::new();
                t.status = Some(SagaStatus::Pending);
                t.wake = WakeChange::Set(retry_at);
                t.release_lease = true;
                t.events.extend(wait_events);
                if error.is_unknown() {
                    t.steps.push(StepChange::PossiblyDone {
                        position: position as i32,
                    });
                    run.steps[position].possibly_done = true;
                }
                t.steps.push(StepChange::Failed {
                    position: position as i32,
                    error: error.to_json(),
                    last: false,
                });
                t.events.push(
                    NewEvent::step(EventKind::StepFailed, step.name(), attempt)
                        .with_detail(error.to_json()),
                );
                t.events.push(
                    NewEvent::step(EventKind::RetryScheduled, step.name(), attempt)
                        .with_detail(json!({"at": retry_at, "delay_ms": delay.as_millis() as u64})),
                );
                self.commit(run, &t).await?;
                Ok(false)
            }
        }
    }

    /// Runs one attempt of the action at `position` with its waits. When the action suspends
    /// on an event whose deliveries were not read yet, they are read (one query, only then)
    /// and, if one is there, the action runs again at once with it.
    async fn run_action(
        &self,
        run: &mut Run,
        position: usize,
        attempt: i32,
        mut deliveries: Option<Vec<StoredDelivery>>,
    ) -> Result<(Result<Value, StepError>, Arc<WaitBook>), StoreError> {
        let skill = run.skill.clone();
        let step = &skill.steps()[position];
        let mut deadlines = run.steps[position].wait_deadlines.clone();
        loop {
            let now = self.clock.now();
            let book = WaitBook::new(
                step.name(),
                attempt,
                now,
                step.awaited_events().clone(),
                deadlines.clone(),
                deliveries.clone(),
            );
            let ctx = run.context(position, attempt, false, now, Some(book.clone()));
            let span = info_span!("step", saga_id = %run.lease.saga_id, skill = %skill.name(), step = %step.name(), attempt);
            let began = std::time::Instant::now();
            let outcome = self
                .attempt(&mut run.lease, step.run(ctx), step.timeout_duration())
                .instrument(span)
                .await;
            let result = match outcome {
                Attempt::Done(result) => result,
                Attempt::LeaseLost => {
                    return Err(StoreError::LostLease {
                        saga_id: run.lease.saga_id,
                    })
                }
                Attempt::Interrupted => {
                    run.interrupted = true;
                    let error = StepError::retryable("interrupted", "the worker stopped");
                    return Ok((Err(error), book));
                }
            };
            let suspension = match &result {
                Err(e) if e.code == SUSPENDED => book.suspension(),
                _ => None,
            };
            let Some(suspension) = suspension else {
                metrics::step_attempt(
                    skill.name(),
                    step.name(),
                    AttemptKind::Action,
                    result.is_ok(),
                    began.elapsed(),
                );
                return Ok((result, book));
            };
            if let (Some(event), false) = (&suspension.event_name, book.deliveries_loaded()) {
                let loaded = self.store.unconsumed_deliveries(run.lease.saga_id).await?;
                let taken = book.taken();
                // Run again with them when one answers this wait, or when its deadline has
                // passed: the wait then ends now, with the event if it came, else timed out.
                if suspension.wake_at <= now
                    || loaded
                        .iter()
                        .any(|d| &d.event == event && !taken.contains(&d.id))
                {
                    deliveries = Some(loaded);
                    deadlines = book.deadline_map();
                    continue;
                }
            }
            return Ok((result, book));
        }
    }

    /// Gives the saga back at shutdown, due now for any worker. A graceful release never
    /// consumes an attempt: the attempt this worker began and did not finish (the step that
    /// its last commit or its claim started, a saga woken from a wait, or an attempt cut short
    /// when the grace period ran out, `compensation` for a compensation's) is given back, so the
    /// step goes back to pending with its attempt count as before and a rolling restart never
    /// uses up a step's last attempt (README, "Concepts", the workers).
    async fn release(
        &self,
        run: &mut Run,
        compensation: Option<usize>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut t = Transition::new();
        if let Some(position) = compensation {
            let state = &run.steps[position];
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
        } else if run.begun
            && matches!(
                run.status,
                SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting
            )
        {
            if let Some(state) = run.steps.get(run.cursor) {
                t.status = Some(SagaStatus::Pending);
                t.steps.push(StepChange::ReleaseAttempt {
                    position: run.cursor as i32,
                });
                t.events.push(
                    NewEvent::step(EventKind::AttemptReleased, &state.name, state.attempts)
                        .with_detail(json!({"reason": reason, "compensation": false})),
                );
            }
        }
        if !t.events.is_empty() {
            info!(reason, "shutting down: the begun attempt is given back");
        }
        self.store.release(&run.lease, self.clock.now(), t).await
    }

    /// The step waits: the saga becomes `waiting`, without a lease, due at the deadline (or
    /// the end of the sleep); its attempt goes on when a worker claims it back.
    async fn suspend(
        &self,
        run: &mut Run,
        position: usize,
        book: &WaitBook,
        suspension: Suspension,
    ) -> Result<bool, StoreError> {
        debug!(step = %run.steps[position].name, until = %suspension.wake_at, "step waits");
        let mut t = Transition::new();
        t.status = Some(SagaStatus::Waiting);
        t.wake = WakeChange::Set(suspension.wake_at);
        t.release_lease = true;
        t.waiting_for = Some(suspension.waiting_for);
        t.waiting_taken = book.taken();
        t.steps.push(StepChange::WaitDeadlines {
            position: position as i32,
            deadlines: book.deadlines(),
        });
        t.events.extend(book.events());
        t.events.push(suspension.event);
        self.commit(run, &t).await?;
        run.status = SagaStatus::Waiting;
        run.steps[position].wait_deadlines = book.deadline_map();
        metrics::step_waits(run.skill.name(), &run.steps[position].name);
        Ok(false)
    }

    /// The step at the cursor failed for good: record it and start compensating.
    async fn fail_forward(
        &self,
        run: &mut Run,
        error: StepError,
        interrupted: bool,
        wait_events: Vec<NewEvent>,
    ) -> Result<bool, StoreError> {
        let position = run.cursor;
        let state = &run.steps[position];
        let name = state.name.clone();
        warn!(step = %name, attempt = state.attempts, error = %error, "step failed for good; compensating");
        let mut t = Transition::new();
        t.events.extend(wait_events);
        if error.is_unknown() && !state.possibly_done {
            t.steps.push(StepChange::PossiblyDone {
                position: position as i32,
            });
        }
        let possibly_done = error.is_unknown() || state.possibly_done;
        t.steps.push(StepChange::Failed {
            position: position as i32,
            error: error.to_json(),
            last: true,
        });
        let mut detail = error.to_json();
        if interrupted {
            detail["interrupted"] = Value::Bool(true);
        }
        if possibly_done {
            // It gives up, but an attempt may have taken effect: it is compensated too, first.
            detail["possibly_done"] = Value::Bool(true);
        }
        t.events.push(
            NewEvent::step(EventKind::StepFailed, &name, state.attempts.max(1)).with_detail(detail),
        );
        run.steps[position].status = StepStatus::Failed;
        run.steps[position].possibly_done = possibly_done;
        let mut saga_error = json!({"code": error.code, "message": error.message, "step": name});
        if let Some(action) = &error.action {
            saga_error["action"] = Value::String(action.clone());
        }
        let t = self.compensation_transition(run, t, saga_error);
        self.commit(run, &t).await?;
        Ok(true)
    }

    /// Adds to `t` what turns the saga toward compensation: every succeeded or possibly done
    /// step with a compensation is marked pending (the compensations then run from the highest
    /// position down, so a possibly done step at the cursor is undone first); with nothing to
    /// undo the saga ends `compensated` at once.
    fn compensation_transition(
        &self,
        run: &mut Run,
        mut t: Transition,
        error: Value,
    ) -> Transition {
        let skill = run.skill.clone();
        let positions: Vec<i32> = run
            .steps
            .iter()
            .filter(|s| {
                (s.status == StepStatus::Succeeded || s.possibly_done)
                    && s.compensation_status == CompensationStatus::NotNeeded
                    && skill.steps()[s.position as usize].is_compensable()
            })
            .map(|s| s.position)
            .collect();
        for s in run.steps.iter_mut() {
            if positions.contains(&s.position) {
                s.compensation_status = CompensationStatus::Pending;
            }
        }
        t.error = Some(error);
        t.steps.push(StepChange::CompensationPending { positions });
        t.status = Some(SagaStatus::Compensating);
        run.status = SagaStatus::Compensating;
        run.begun = false;
        t
    }

    /// Undoes the highest succeeded step still to compensate. Returns whether to keep driving.
    async fn compensate(&self, run: &mut Run) -> Result<bool, StoreError> {
        let next = run.steps.iter().rposition(|s| {
            matches!(
                s.compensation_status,
                CompensationStatus::Pending | CompensationStatus::Running
            )
        });
        let Some(position) = next else {
            let mut t = Transition::new();
            t.status = Some(SagaStatus::Compensated);
            t.wake = WakeChange::Clear;
            t.release_lease = true;
            t.steps.push(StepChange::SkipUnreached);
            t.events.push(NewEvent::saga(EventKind::SagaCompensated));
            self.commit(run, &t).await?;
            run.status = SagaStatus::Compensated;
            info!("saga compensated");
            return Ok(false);
        };
        let skill = run.skill.clone();
        let step = &skill.steps()[position];
        let policy = skill.compensation_policy(step, &run.input);
        let state = &run.steps[position];
        let in_round = (state.compensation_attempts - state.compensation_round_base).max(0) as u32;
        if state.compensation_status == CompensationStatus::Running
            && !policy.allows_another(in_round)
        {
            let error = StepError::retryable(
                "attempt_interrupted",
                "the worker running the last allowed compensation attempt stopped",
            );
            return self.fail_compensation(run, position, error).await;
        }
        let attempt = state.compensation_attempts + 1;
        let mut t = Transition::new();
        t.steps.push(StepChange::CompensationBegin {
            position: position as i32,
        });
        t.events.push(NewEvent::step(
            EventKind::CompensationStarted,
            step.name(),
            attempt,
        ));
        self.renew_lease_if_due(run, &mut t);
        self.commit(run, &t).await?;
        let state = &mut run.steps[position];
        state.compensation_attempts = attempt;
        state.compensation_status = CompensationStatus::Running;
        let output = state.output.clone().unwrap_or(Value::Null);

        let ctx = run.context(position, attempt, true, self.clock.now(), None);
        let possibly_done = ctx.possibly_done;
        let Some(fut) = step.run_compensation(ctx, output) else {
            return Err(StoreError::Corrupt(format!(
                "step `{}` is marked for compensation but has none",
                step.name()
            )));
        };
        let span = info_span!("compensation", saga_id = %run.lease.saga_id, skill = %skill.name(), step = %step.name(), attempt);
        let began = std::time::Instant::now();
        let outcome = self
            .attempt(&mut run.lease, fut, step.timeout_duration())
            .instrument(span)
            .await;
        let result = match outcome {
            Attempt::Done(result) => {
                metrics::step_attempt(
                    skill.name(),
                    step.name(),
                    AttemptKind::Compensation,
                    result.is_ok(),
                    began.elapsed(),
                );
                result
            }
            Attempt::LeaseLost => {
                return Err(StoreError::LostLease {
                    saga_id: run.lease.saga_id,
                })
            }
            Attempt::Interrupted => {
                self.release(run, Some(position), "interrupted").await?;
                return Ok(false);
            }
        };
        match result {
            Ok(output) => {
                let mut t = Transition::new();
                let mut event =
                    NewEvent::step(EventKind::CompensationSucceeded, step.name(), attempt);
                if possibly_done {
                    // The history says what undoing a step that may not have run found.
                    event = event.with_detail(json!({"possibly_done": true, "output": output}));
                }
                t.steps.push(StepChange::CompensationSucceeded {
                    position: position as i32,
                    output,
                });
                t.events.push(event);
                self.commit(run, &t).await?;
                run.steps[position].compensation_status = CompensationStatus::Compensated;
                Ok(true)
            }
            Err(error) => {
                let in_round =
                    (attempt - run.steps[position].compensation_round_base).max(0) as u32;
                if error.is_retryable() && policy.allows_another(in_round) {
                    let delay =
                        policy.next_delay(in_round, self.jitter.sample(), error.retry_after());
                    let retry_at = self.clock.now() + chrono_duration(delay);
                    info!(step = %step.name(), attempt, error = %error, "compensation failed; retry scheduled");
                    metrics::step_retry(skill.name(), step.name(), AttemptKind::Compensation);
                    let mut t = Transition::new();
                    t.wake = WakeChange::Set(retry_at);
                    t.release_lease = true;
                    t.steps.push(StepChange::CompensationFailed {
                        position: position as i32,
                        error: error.to_json(),
                        last: false,
                    });
                    t.events.push(
                        NewEvent::step(EventKind::CompensationFailed, step.name(), attempt)
                            .with_detail(error.to_json()),
                    );
                    t.events.push(
                        NewEvent::step(EventKind::RetryScheduled, step.name(), attempt)
                            .with_detail(json!({"at": retry_at, "delay_ms": delay.as_millis() as u64, "compensation": true})),
                    );
                    self.commit(run, &t).await?;
                    run.steps[position].compensation_status = CompensationStatus::Pending;
                    Ok(false)
                } else {
                    self.fail_compensation(run, position, error).await
                }
            }
        }
    }

    /// A compensation cannot succeed: the saga is `failed` and waits for an operator.
    async fn fail_compensation(
        &self,
        run: &mut Run,
        position: usize,
        error: StepError,
    ) -> Result<bool, StoreError> {
        let state = &run.steps[position];
        let name = state.name.clone();
        warn!(step = %name, attempt = state.compensation_attempts, error = %error, "compensation exhausted; saga failed, operator needed");
        let mut t = Transition::new();
        t.status = Some(SagaStatus::Failed);
        t.wake = WakeChange::Clear;
        t.release_lease = true;
        t.error = Some(json!({
            "code": "compensation_failed",
            "message": format!("could not undo step `{name}`: {}", error.message),
            "step": name,
            "cause": error.to_json(),
        }));
        t.steps.push(StepChange::CompensationFailed {
            position: position as i32,
            error: error.to_json(),
            last: true,
        });
        t.steps.push(StepChange::SkipUnreached);
        t.events.push(
            NewEvent::step(
                EventKind::CompensationFailed,
                &name,
                state.compensation_attempts.max(1),
            )
            .with_detail(error.to_json()),
        );
        t.events.push(NewEvent::saga(EventKind::SagaFailed));
        self.commit(run, &t).await?;
        run.status = SagaStatus::Failed;
        run.steps[position].compensation_status = CompensationStatus::Failed;
        Ok(false)
    }

    fn complete_into(&self, run: &mut Run, t: &mut Transition) {
        let output = run.skill.finish(&run.input, &outputs_of(&run.steps));
        t.status = Some(SagaStatus::Completed);
        t.wake = WakeChange::Clear;
        t.release_lease = true;
        t.output = Some(output);
        t.events.push(NewEvent::saga(EventKind::SagaCompleted));
        run.status = SagaStatus::Completed;
        debug!("saga completed");
    }

    /// Renews the lease in this commit when less than half of it is left. Skipping renewal on
    /// most commits keeps the hot-path update from touching the indexed `wake_at` (HOT updates).
    fn renew_lease_if_due(&self, run: &Run, t: &mut Transition) {
        let now = self.clock.now();
        let half = chrono_duration(self.lease_duration / 2);
        if run.lease.expires_at - now < half {
            t.wake = WakeChange::Set(now + chrono_duration(self.lease_duration));
        }
    }

    async fn commit(
        &self,
        run: &mut Run,
        t: &Transition,
    ) -> Result<crate::store::Committed, StoreError> {
        let committed = self.store.commit(&run.lease, self.clock.now(), t).await?;
        match t.status {
            Some(SagaStatus::Completed) => metrics::saga_completed(run.skill.name()),
            Some(SagaStatus::Compensated) => metrics::saga_compensated(run.skill.name()),
            Some(SagaStatus::Failed) => metrics::saga_failed(run.skill.name()),
            _ => {}
        }
        if let (WakeChange::Set(at), false) = (t.wake, t.release_lease) {
            run.lease.expires_at = at;
        }
        Ok(committed)
    }

    /// Runs one attempt with its timeout, renewing the lease while it runs. A panic in the
    /// action is a permanent failure, not a crashed worker.
    async fn attempt(
        &self,
        lease: &mut Lease,
        fut: BoxFuture<Result<Value, StepError>>,
        timeout: Duration,
    ) -> Attempt {
        let guarded = tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind());
        tokio::pin!(guarded);
        let beat = (self.lease_duration / 3).max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        loop {
            tokio::select! {
                result = &mut guarded => {
                    return Attempt::Done(match result {
                        Ok(Ok(result)) => result,
                        Ok(Err(_panic)) => Err(StepError::permanent("panicked", "the step's code panicked")),
                        // The action was cut off mid-way: whatever it had sent may have taken
                        // effect, so the outcome is unknown (retried, and compensated as
                        // possibly done if the step gives up).
                        Err(_elapsed) => Err(StepError::unknown(
                            "timeout",
                            format!(
                                "the attempt took longer than {} ms (it may have taken effect)",
                                timeout.as_millis()
                            ),
                        )),
                    });
                }
                _ = self.abandon.cancelled() => return Attempt::Interrupted,
                _ = heartbeat.tick() => {
                    let until = self.clock.now() + chrono_duration(self.lease_duration);
                    match self.store.heartbeat(lease, until).await {
                        Ok(()) => lease.expires_at = until,
                        Err(StoreError::LostLease { .. }) => return Attempt::LeaseLost,
                        Err(error) => warn!(error = %error, "heartbeat failed; will try again"),
                    }
                }
            }
        }
    }
}

/// Whether the attempt just started is the saga's very first (the claim or the worker starts
/// it): the moment the saga counts as started in the metrics.
fn is_first_attempt_of_saga(steps: &[StepState]) -> bool {
    steps.iter().map(|s| s.attempts).sum::<i32>() == 1
}

/// Outputs of the steps that succeeded, by name.
fn outputs_of(steps: &[StepState]) -> BTreeMap<String, Value> {
    steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
        .collect()
}

pub(crate) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
