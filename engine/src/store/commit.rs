//! Committing a worker's [`Transition`]s under their fencing tokens. Every commit goes through
//! `stepwise.commit_steps` (engine/migrations), one call over arrays for one saga or a group
//! of sagas: the saga rows, the attempts that begin and succeed, and the history rows that end
//! sagas. Inside, one fenced statement updates all the call's sagas and one the steps rows of
//! the attempts that succeeded, so a step in a group of 16 or more costs the server about a
//! fifth of a call for one saga (BENCHMARKS.md). A transition that also fails a step, waits
//! or ends a compensation adds its other changes around that call, in one transaction
//! (docs/storage.md).

use super::announce::status_changes;
use super::history;
use super::transition::{Committed, InFlight, Lease, NewEvent, StepChange, Transition, WakeChange};
use super::PgStore;
use crate::error::StoreError;
use crate::model::SagaStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// One saga's transition waiting to be committed (possibly with other sagas').
#[derive(Debug, Clone)]
pub(crate) struct CommitItem {
    pub lease: Lease,
    pub now: DateTime<Utc>,
    /// Shared with the driver that waits for the answer, so a transition waiting in a group
    /// commit (with a step's output, or a whole saga's) is held once, not copied.
    pub transition: Arc<Transition>,
}

impl PgStore {
    /// Applies a worker's transition atomically, fenced by its lease token.
    ///
    /// The hot path (a step's result and the next step's start, compensation progress, a
    /// saga's end) is one function call, so one round trip and one commit; with group commit on,
    /// several sagas' transitions share that statement and its commit. Rarer transitions (a
    /// failure, a wait, a compensation that gives up) run as a transaction of a few.
    pub async fn commit(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Arc<Transition>,
    ) -> Result<Committed, StoreError> {
        if !fits_one_statement(t) {
            return self.commit_in_transaction(lease, now, t).await;
        }
        if let Some(group) = &self.group {
            return group.commit(lease, now, t).await;
        }
        let item = CommitItem {
            lease: lease.clone(),
            now,
            transition: Arc::clone(t),
        };
        self.commit_batch(std::slice::from_ref(&item))
            .await?
            .pop()
            .unwrap_or(Err(StoreError::LostLease {
                saga_id: lease.saga_id,
            }))
    }

    /// Applies several sagas' transitions (each [`fits_one_statement`]) in one statement, hence
    /// one transaction and one commit. Each saga's writes are fenced by its own token: a saga
    /// whose lease was lost gets `LostLease` and changes nothing, the others commit. Their
    /// status changes are announced after the commit (`announce`).
    pub(crate) async fn commit_batch(
        &self,
        items: &[CommitItem],
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let committed = commit_steps(&self.pool, items, |_| true).await?;
        let answers = answers(items, &committed);
        self.announcer
            .announce(&self.pool, status_changes(items, &answers));
        Ok(answers)
    }

    /// The general path: the changes `commit_steps` does not make, around it, in one
    /// transaction.
    async fn commit_in_transaction(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Arc<Transition>,
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The attempt in flight ends without a result: its start goes to the history before
        // what the worker says about it.
        if let Some(counted) = t.steps.iter().find_map(StepChange::interrupts) {
            sqlx::query("SELECT stepwise.interrupt_attempts($1, $2, $3)")
                .bind([lease.saga_id])
                .bind([lease.token])
                .bind(counted)
                .execute(&mut *tx)
                .await?;
        }
        let during: Vec<_> = (t.events.iter())
            .filter(|e| !e.ends_saga())
            .map(|e| e.row(lease.saga_id, &lease.worker))
            .collect();
        history::append(&mut tx, now, &during).await?;

        let item = CommitItem {
            lease: lease.clone(),
            now,
            transition: Arc::clone(t),
        };
        let committed =
            commit_steps(&mut *tx, std::slice::from_ref(&item), NewEvent::ends_saga).await?;
        let Some(committed) = answers(std::slice::from_ref(&item), &committed)
            .pop()
            .and_then(Result::ok)
        else {
            tx.rollback().await?;
            return Err(StoreError::LostLease {
                saga_id: lease.saga_id,
            });
        };

        if let Some(waiting_for) = &t.waiting_for {
            // A cancel or a delivery of the awaited event that came while the step ran (the
            // fenced update above waited for the delivery's lock) makes the wait due now.
            sqlx::query(
                "UPDATE stepwise.sagas SET wake_at = $2
                 WHERE id = $1
                   AND (cancel_requested_at IS NOT NULL
                        OR EXISTS (SELECT 1 FROM stepwise.deliveries d
                                   WHERE d.saga_id = $1 AND d.event = $3
                                     AND d.consumed_at IS NULL AND d.id <> ALL($4)))",
            )
            .bind(lease.saga_id)
            .bind(now)
            .bind(waiting_for.get("event").and_then(Value::as_str))
            .bind(&t.waiting_taken)
            .execute(&mut *tx)
            .await?;
        }
        for change in &t.steps {
            apply_step_change(&mut tx, lease.saga_id, now, change).await?;
        }
        tx.commit().await?;
        self.announcer.announce(
            &self.pool,
            status_changes(std::slice::from_ref(&item), &[Ok(committed)]),
        );
        Ok(committed)
    }
}

/// Whether `commit_steps` alone applies the transition: its step changes are at most one
/// attempt's success and one attempt's start (of an action or a compensation), it does not
/// wait, and its history rows all end the saga. Every step commit and compensation step of a
/// saga qualifies, and so does its end; failures and waits do not.
pub(crate) fn fits_one_statement(t: &Transition) -> bool {
    let (mut finishes, mut begins) = (0, usize::from(t.then_begin.is_some()));
    for change in &t.steps {
        match change {
            StepChange::Succeeded { .. } | StepChange::CompensationSucceeded { .. } => {
                finishes += 1
            }
            StepChange::Begin { .. } | StepChange::CompensationBegin { .. } => begins += 1,
            _ => return false,
        }
    }
    finishes <= 1
        && begins <= 1
        && t.waiting_for.is_none()
        && t.events.iter().all(NewEvent::ends_saga)
}

/// One saga's share of `stepwise.commit_steps`, as its arrays take it.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<Uuid>,
    tokens: Vec<i64>,
    ats: Vec<DateTime<Utc>>,
    actors: Vec<&'a str>,
    statuses: Vec<Option<&'static str>>,
    cursors: Vec<Option<i32>>,
    set_wakes: Vec<bool>,
    wakes: Vec<Option<DateTime<Utc>>>,
    releases: Vec<bool>,
    outputs: Vec<Option<&'a Value>>,
    errors: Vec<Option<&'a Value>>,
    waiting: Vec<Option<&'a Value>>,
    end_attempts: Vec<bool>,
    f_pos: Vec<Option<i32>>,
    f_comp: Vec<Option<bool>>,
    f_attempt: Vec<Option<i32>>,
    f_started: Vec<Option<DateTime<Utc>>>,
    f_seq: Vec<Option<i64>>,
    f_output: Vec<Option<&'a Value>>,
    b_pos: Vec<Option<i32>>,
    b_comp: Vec<Option<bool>>,
    b_attempt: Vec<Option<i32>>,
    b_next: Vec<Option<bool>>,
    e_saga: Vec<Uuid>,
    e_kind: Vec<&'static str>,
    e_step: Vec<Option<&'a str>>,
    e_attempt: Vec<Option<i32>>,
    e_detail: Vec<Option<&'a Value>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, item: &'a CommitItem, events: &impl Fn(&NewEvent) -> bool) {
        let (t, id) = (&item.transition, item.lease.saga_id);
        let (set_wake, wake_at) = match t.wake {
            WakeChange::Keep => (false, None),
            WakeChange::Set(at) => (true, Some(at)),
            WakeChange::Clear => (true, None),
        };
        self.ids.push(id);
        self.tokens.push(item.lease.token);
        self.ats.push(item.now);
        self.actors.push(item.lease.worker.as_ref());
        self.statuses.push(t.status.map(SagaStatus::as_str));
        self.cursors.push(t.cursor);
        self.set_wakes.push(set_wake);
        self.wakes.push(wake_at);
        self.releases.push(t.release_lease);
        self.outputs.push(t.output.as_ref());
        self.errors.push(t.error.as_ref());
        self.waiting.push(t.waiting_for.as_ref());

        let mut finish = None;
        let mut ends_attempt = false;
        for change in &t.steps {
            match change {
                StepChange::Succeeded { attempt, output }
                | StepChange::CompensationSucceeded { attempt, output } => {
                    finish = Some((attempt, output));
                    ends_attempt = true;
                }
                other => ends_attempt |= other.interrupts().is_some(),
            }
        }
        let begin = t.begins();
        self.end_attempts.push(ends_attempt);
        self.f_pos.push(finish.map(|(a, _)| a.position));
        self.f_comp.push(finish.map(|(a, _)| a.compensation));
        self.f_attempt.push(finish.map(|(a, _)| a.attempt));
        self.f_started.push(finish.map(|(a, _)| a.started_at));
        self.f_seq.push(finish.map(|(a, _)| a.seq));
        self.f_output.push(finish.map(|(_, output)| output));
        self.b_pos.push(begin.map(|b| b.0));
        self.b_comp.push(begin.map(|b| b.1));
        self.b_attempt.push(begin.map(|b| b.2));
        self.b_next.push(begin.map(|b| b.3));

        for event in t.events.iter().filter(|e| events(e)) {
            self.e_saga.push(id);
            self.e_kind.push(event.kind.as_str());
            self.e_step.push(event.step.as_deref());
            self.e_attempt.push(event.attempt);
            self.e_detail.push(event.detail.as_ref());
        }
    }
}

/// Calls `stepwise.commit_steps` for `items`, with the history rows `events` selects. Returns
/// each committed saga with whether a cancel was requested and the history place of the
/// attempt it began; a saga whose fencing token no longer matches is missing.
pub(super) async fn commit_steps<'e, E>(
    executor: E,
    items: &[CommitItem],
    events: impl Fn(&NewEvent) -> bool,
) -> Result<HashMap<Uuid, (bool, Option<i64>)>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let mut c = Columns::default();
    for item in items {
        c.push(item, &events);
    }
    let rows: Vec<(Uuid, bool, Option<i64>)> = sqlx::query_as(
        "SELECT saga_id, cancel_requested, begun_seq FROM stepwise.commit_steps(
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)",
    )
    .bind(&c.ids)
    .bind(&c.tokens)
    .bind(&c.ats)
    .bind(&c.actors)
    .bind(&c.statuses)
    .bind(&c.cursors)
    .bind(&c.set_wakes)
    .bind(&c.wakes)
    .bind(&c.releases)
    .bind(&c.outputs)
    .bind(&c.errors)
    .bind(&c.waiting)
    .bind(&c.end_attempts)
    .bind(&c.f_pos)
    .bind(&c.f_comp)
    .bind(&c.f_attempt)
    .bind(&c.f_started)
    .bind(&c.f_seq)
    .bind(&c.f_output)
    .bind(&c.b_pos)
    .bind(&c.b_comp)
    .bind(&c.b_attempt)
    .bind(&c.b_next)
    .bind(&c.e_saga)
    .bind(&c.e_kind)
    .bind(&c.e_step)
    .bind(&c.e_attempt)
    .bind(&c.e_detail)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, cancel, seq)| (id, (cancel, seq)))
        .collect())
}

/// Each item's answer from what `commit_steps` returned.
fn answers(
    items: &[CommitItem],
    committed: &HashMap<Uuid, (bool, Option<i64>)>,
) -> Vec<Result<Committed, StoreError>> {
    items
        .iter()
        .map(|item| {
            let id = item.lease.saga_id;
            match committed.get(&id) {
                Some(&(cancel_requested, begun_seq)) => Ok(Committed {
                    cancel_requested,
                    began_next: item.transition.then_begin.is_some() && begun_seq.is_some(),
                    begun: begun_seq.zip(item.transition.begins()).map(
                        |(seq, (position, compensation, attempt, _))| InFlight {
                            position,
                            compensation,
                            attempt,
                            started_at: item.now,
                            seq,
                        },
                    ),
                }),
                None => Err(StoreError::LostLease { saga_id: id }),
            }
        })
        .collect()
}

/// The changes `commit_steps` does not make, one statement each. The starts and successes of
/// attempts, and ends of attempts without a result, were made before this runs.
async fn apply_step_change(
    tx: &mut sqlx::PgConnection,
    saga_id: Uuid,
    now: DateTime<Utc>,
    change: &StepChange,
) -> Result<(), StoreError> {
    let query = match change {
        StepChange::Begin { .. }
        | StepChange::Succeeded { .. }
        | StepChange::CompensationBegin { .. }
        | StepChange::CompensationSucceeded { .. }
        | StepChange::ReleaseAttempt
        | StepChange::AbandonAttempt => return Ok(()),
        StepChange::Failed {
            position,
            error,
            last,
        } => sqlx::query(
            "UPDATE stepwise.steps
             SET status = CASE WHEN $4 THEN 'failed' ELSE 'pending' END, error = $3, finished_at = $5
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(error)
        .bind(last)
        .bind(now),
        StepChange::PossiblyDone { position } => sqlx::query(
            "UPDATE stepwise.steps SET possibly_done = true WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position),
        StepChange::CompensationPending { positions } => sqlx::query(
            "UPDATE stepwise.steps SET compensation_status = 'pending'
             WHERE saga_id = $1 AND position = ANY($2) AND (status = 'succeeded' OR possibly_done)",
        )
        .bind(saga_id)
        .bind(positions),
        StepChange::CompensationFailed {
            position,
            error,
            last,
        } => sqlx::query(
            "UPDATE stepwise.steps
             SET compensation_status = CASE WHEN $4 THEN 'failed' ELSE 'pending' END,
                 compensation_error = $3,
                 compensation_finished_at = CASE WHEN $4 THEN $5 ELSE NULL END
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(error)
        .bind(last)
        .bind(now),
        StepChange::SkipUnreached => sqlx::query(
            "UPDATE stepwise.steps
             SET status = CASE WHEN attempts = 0 THEN 'skipped' ELSE 'failed' END
             WHERE saga_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(saga_id),
        StepChange::WaitDeadlines {
            position,
            deadlines,
        } => sqlx::query(
            "UPDATE stepwise.steps SET wait_deadlines = $3 WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(deadlines),
        StepChange::ConsumeDeliveries { step, ids, .. } => sqlx::query(
            "UPDATE stepwise.deliveries SET consumed_by = $3, consumed_at = $4
             WHERE saga_id = $1 AND id = ANY($2) AND consumed_at IS NULL",
        )
        .bind(saga_id)
        .bind(ids)
        .bind(step)
        .bind(now),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}
