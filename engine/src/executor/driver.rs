//! Drives one claimed saga as far as it can go while this worker holds the lease: forward
//! steps, then compensations in reverse order if needed, until the saga is terminal, must wait
//! for a retry time, or the lease is lost.

use super::machine::{
    self, chrono_duration, decide, observe, output_value, Attempt, Facts, Leg, Next, Outcome, Ran,
    Run,
};
use crate::clock::SharedClock;
use crate::error::{StepError, StoreError};
use crate::registry::Registry;
use crate::skill::BoxFuture;
use crate::store::{
    ClaimedSaga, Committed, Lease, PgStore, StepChange, StoredDelivery, Transition, WakeChange,
};
use crate::wait::{WaitBook, SUSPENDED};
use futures::FutureExt;
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// How one run of an action's or compensation's code ended.
enum Finished {
    Done(Result<Value, StepError>),
    LeaseLost,
    /// The worker's grace period ran out while the attempt ran ([`Driver::abandon`]).
    Interrupted,
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
            if claimed.in_flight.is_some() {
                t.steps.push(StepChange::ReleaseAttempt);
            }
            self.store
                .commit(&claimed.lease, self.clock.now(), &Arc::new(t))
                .await?;
            return Ok(());
        };
        if let Some(previous) = &claimed.expired_owner {
            info!(previous_owner = %previous, "took over a saga whose lease expired");
        }
        // A saga woken from a wait reads its deliveries before its step runs again.
        let mut resumed = claimed.resumed;
        let mut run = Run::new(claimed, skill);
        machine::observe_claim(&run);
        run.check()?;
        while run.held {
            if self.shutdown.is_cancelled() {
                debug!("shutting down: releasing the saga");
                let t = run.release("not_run", self.clock.now());
                return self.give_back(&mut run, t, None).await;
            }
            match run.next(&self.facts()) {
                Next::Stop => return Ok(()),
                Next::Commit(t) => self.commit(&mut run, t, None).await?,
                Next::Begin(t) => {
                    self.commit(&mut run, t, None).await?;
                    let Some(attempt) = run.in_flight else {
                        return Err(StoreError::Corrupt(
                            "no attempt in flight after beginning one".to_string(),
                        ));
                    };
                    self.run_attempt(&mut run, attempt, &mut resumed).await?;
                }
                Next::Run(attempt) => self.run_attempt(&mut run, attempt, &mut resumed).await?,
            }
        }
        Ok(())
    }

    /// What decisions are made with now.
    fn facts(&self) -> Facts {
        Facts {
            now: self.clock.now(),
            jitter: self.jitter.sample(),
            lease_duration: self.lease_duration,
            stopping: self.shutdown.is_cancelled(),
        }
    }

    /// Runs the attempt in flight and commits what came of it.
    async fn run_attempt(
        &self,
        run: &mut Run,
        attempt: Attempt,
        resumed: &mut bool,
    ) -> Result<(), StoreError> {
        let (outcome, elapsed) = match attempt.leg {
            Leg::Action => {
                // A saga woken from a wait reads its deliveries before the step runs;
                // otherwise they are read only when the step reaches a wait (`run_action`).
                let deliveries = if std::mem::take(resumed) {
                    Some(self.store.unconsumed_deliveries(run.lease.saga_id).await?)
                } else {
                    None
                };
                self.run_action(run, attempt, deliveries).await?
            }
            Leg::Compensation => self.run_compensation(run, attempt).await?,
        };
        let ran = Some(Ran {
            attempt,
            outcome: outcome.kind(),
            elapsed,
        });
        let facts = self.facts();
        if let Outcome::Interrupted = outcome {
            let t = run.release("interrupted", facts.now);
            return self.give_back(run, t, ran).await;
        }
        let t = decide(run, outcome, &facts);
        self.commit(run, t, ran).await
    }

    /// Runs one attempt of the action with its waits. When the action suspends on an event
    /// whose deliveries were not read yet, they are read (one query, only then) and, if one is
    /// there, the action runs again at once with it.
    async fn run_action(
        &self,
        run: &mut Run,
        attempt: Attempt,
        mut deliveries: Option<Vec<StoredDelivery>>,
    ) -> Result<(Outcome, Duration), StoreError> {
        let skill = run.skill.clone();
        let step = &skill.steps()[attempt.position];
        let mut deadlines = run.steps[attempt.position].wait_deadlines.clone();
        loop {
            let now = self.clock.now();
            let book = WaitBook::new(
                step.name(),
                attempt.number,
                now,
                step.awaited_events().clone(),
                deadlines.clone(),
                deliveries.clone(),
            );
            let ctx = run.context(attempt, now, Some(book.clone()));
            let span = info_span!("step", saga_id = %run.lease.saga_id, skill = %skill.name(), step = %step.name(), attempt = attempt.number);
            let began = Instant::now();
            let finished = self
                .attempt(&mut run.lease, step.run(ctx), step.timeout_duration())
                .instrument(span)
                .await;
            let elapsed = began.elapsed();
            let result = match finished {
                Finished::Done(result) => result,
                Finished::LeaseLost => {
                    return Err(StoreError::LostLease {
                        saga_id: run.lease.saga_id,
                    })
                }
                Finished::Interrupted => return Ok((Outcome::Interrupted, elapsed)),
            };
            let suspension = match &result {
                Err(e) if e.code == SUSPENDED => book.suspension(),
                _ => None,
            };
            let Some(suspension) = suspension else {
                let outcome = match result {
                    Ok(output) => Outcome::Succeeded {
                        output,
                        taken: book.taken(),
                        events: book.events(),
                    },
                    Err(error) => Outcome::Failed {
                        error,
                        events: book.events(),
                    },
                };
                return Ok((outcome, elapsed));
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
            let outcome = Outcome::Suspended {
                suspension,
                deadlines: book.deadlines(),
                taken: book.taken(),
                events: book.events(),
            };
            return Ok((outcome, elapsed));
        }
    }

    /// Runs one attempt of a compensation.
    async fn run_compensation(
        &self,
        run: &mut Run,
        attempt: Attempt,
    ) -> Result<(Outcome, Duration), StoreError> {
        let skill = run.skill.clone();
        let step = &skill.steps()[attempt.position];
        let output = run.steps[attempt.position]
            .output
            .as_deref()
            .and_then(output_value)
            .unwrap_or(Value::Null);
        let ctx = run.context(attempt, self.clock.now(), None);
        let Some(fut) = step.run_compensation(ctx, output) else {
            return Err(StoreError::Corrupt(format!(
                "step `{}` is marked for compensation but has none",
                step.name()
            )));
        };
        let span = info_span!("compensation", saga_id = %run.lease.saga_id, skill = %skill.name(), step = %step.name(), attempt = attempt.number);
        let began = Instant::now();
        let finished = self
            .attempt(&mut run.lease, fut, step.timeout_duration())
            .instrument(span)
            .await;
        let outcome = match finished {
            Finished::Done(Ok(output)) => Outcome::Succeeded {
                output,
                taken: Vec::new(),
                events: Vec::new(),
            },
            Finished::Done(Err(error)) => Outcome::Failed {
                error,
                events: Vec::new(),
            },
            Finished::LeaseLost => {
                return Err(StoreError::LostLease {
                    saga_id: run.lease.saga_id,
                })
            }
            Finished::Interrupted => Outcome::Interrupted,
        };
        Ok((outcome, began.elapsed()))
    }

    /// Commits a transition under the lease, applies it to the run and observes it.
    async fn commit(
        &self,
        run: &mut Run,
        t: Transition,
        ran: Option<Ran>,
    ) -> Result<(), StoreError> {
        let t = Arc::new(t);
        let committed = self.store.commit(&run.lease, self.clock.now(), &t).await?;
        run.apply(&t, &committed);
        observe(run, &t, &committed, ran);
        Ok(())
    }

    /// Commits a release ([`Run::release`]): the saga is given back, due now.
    async fn give_back(
        &self,
        run: &mut Run,
        t: Transition,
        ran: Option<Ran>,
    ) -> Result<(), StoreError> {
        let now = match t.wake {
            WakeChange::Set(at) => at,
            _ => self.clock.now(),
        };
        self.store.release(&run.lease, now, t.clone()).await?;
        let committed = Committed {
            cancel_requested: run.cancel_requested,
            began_next: false,
            begun: None,
        };
        run.apply(&t, &committed);
        observe(run, &t, &committed, ran);
        Ok(())
    }

    /// Runs one attempt with its timeout, renewing the lease while it runs. A panic in the
    /// action is a permanent failure, not a crashed worker.
    async fn attempt(
        &self,
        lease: &mut Lease,
        fut: BoxFuture<Result<Value, StepError>>,
        timeout: Duration,
    ) -> Finished {
        let guarded = tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind());
        tokio::pin!(guarded);
        let beat = (self.lease_duration / 3).max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        loop {
            tokio::select! {
                result = &mut guarded => {
                    return Finished::Done(match result {
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
                _ = self.abandon.cancelled() => return Finished::Interrupted,
                _ = heartbeat.tick() => {
                    let until = self.clock.now() + chrono_duration(self.lease_duration);
                    match self.store.heartbeat(lease, until).await {
                        Ok(()) => lease.expires_at = until,
                        Err(StoreError::LostLease { .. }) => return Finished::LeaseLost,
                        Err(error) => warn!(error = %error, "heartbeat failed; will try again"),
                    }
                }
            }
        }
    }
}
