//! The worker's statements behind [`PgStore`]: starts, claims, commits, heartbeats and the
//! next due time (what readers see is in `reads.rs`). Parameterized throughout; timestamps
//! come from the engine's clock, never from `now()`, so tests can move time.

use super::rows::{parse, SummaryRow};
use super::{PgStore, WORK_CHANNEL};
use crate::error::StoreError;
use crate::model::{CompensationStatus, EventKind, SagaStatus, SagaSummary, StepStatus};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// A saga to insert.
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub started_by: String,
    pub replay_of: Option<Uuid>,
    pub step_names: Vec<String>,
    /// Outputs of leading steps reused from another saga (fork): those steps start succeeded.
    pub reused_outputs: Vec<Value>,
}

/// The result of an idempotent start.
#[derive(Debug, Clone)]
pub struct StartOutcome {
    pub saga: SagaSummary,
    /// False when the idempotency key matched an existing saga with the same input.
    pub created: bool,
}

/// Why an insert did not create a saga.
#[derive(Debug)]
pub enum InsertConflict {
    /// The key exists with a different input.
    DifferentInput(Uuid),
}

/// A worker's hold on a saga. Every write made under it is fenced by `token`.
#[derive(Debug, Clone)]
pub struct Lease {
    pub saga_id: Uuid,
    pub token: i64,
    pub worker: Arc<str>,
    pub expires_at: DateTime<Utc>,
}

/// The persisted state of one step, as a worker needs it.
#[derive(Debug, Clone)]
pub struct StepState {
    pub position: i32,
    pub name: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub attempts_round_base: i32,
    pub output: Option<Value>,
    pub compensation_status: CompensationStatus,
    pub compensation_attempts: i32,
    pub compensation_round_base: i32,
    /// When the step's waits end (see [`crate::wait`]), by wait.
    pub wait_deadlines: std::collections::BTreeMap<String, DateTime<Utc>>,
    /// An attempt failed with an unknown outcome ([`crate::ErrorClass::Unknown`]): if the step
    /// does not succeed, it may have taken effect and is compensated too.
    pub possibly_done: bool,
}

/// A saga a worker just claimed.
#[derive(Debug, Clone)]
pub struct ClaimedSaga {
    pub lease: Lease,
    pub skill: String,
    pub skill_version: i32,
    pub status: SagaStatus,
    pub input: Value,
    pub cursor: i32,
    pub cancel_requested: bool,
    /// The worker whose lease ran out, if the saga was taken over.
    pub expired_owner: Option<String>,
    /// Whether the claim started the next attempt of the step at `cursor` (`steps` shows it
    /// `running` with that attempt counted): the worker runs it without another commit.
    pub begun: bool,
    /// Whether the saga was `waiting` (an event came, a deadline passed or a sleep ended): the
    /// step at `cursor` goes on with its attempt, without a new one.
    pub resumed: bool,
    pub steps: Vec<StepState>,
}

/// The skill versions a worker can run, as the claim matches them (`{skill}@{version}`): a
/// worker never claims a saga it could not drive.
#[derive(Debug, Clone, Default)]
pub struct KnownSkills {
    keys: Vec<String>,
}

impl KnownSkills {
    pub fn new<'a>(skills: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        Self {
            keys: skills
                .into_iter()
                .map(|(name, version)| format!("{name}@{version}"))
                .collect(),
        }
    }
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
}

/// What to do with `wake_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeChange {
    Keep,
    Set(DateTime<Utc>),
    /// The saga reached a terminal state.
    Clear,
}

/// One change to a step row.
#[derive(Debug, Clone)]
pub enum StepChange {
    /// A new attempt of the action starts.
    Begin {
        position: i32,
    },
    Succeeded {
        position: i32,
        output: Value,
    },
    /// The attempt failed; `last` means no attempt follows.
    Failed {
        position: i32,
        error: Value,
        last: bool,
    },
    /// An attempt of this step failed with an unknown outcome: it is possibly done.
    PossiblyDone {
        position: i32,
    },
    /// These succeeded (or possibly done) steps must be undone.
    CompensationPending {
        positions: Vec<i32>,
    },
    CompensationBegin {
        position: i32,
    },
    CompensationSucceeded {
        position: i32,
        output: Value,
    },
    CompensationFailed {
        position: i32,
        error: Value,
        last: bool,
    },
    /// The saga is over: steps never reached become skipped, interrupted ones failed.
    SkipUnreached,
    /// The step's wait deadlines (an object by wait), persisted when it suspends.
    WaitDeadlines {
        position: i32,
        deadlines: Value,
    },
    /// The step took these deliveries (ids).
    ConsumeDeliveries {
        position: i32,
        step: String,
        ids: Vec<i64>,
    },
    /// The attempt begun last is given back (a graceful release): the step is pending again
    /// with one attempt fewer, so its next start has the same attempt number.
    ReleaseAttempt {
        position: i32,
    },
    /// The same for the compensation attempt begun last.
    ReleaseCompensationAttempt {
        position: i32,
    },
}

/// Everything one worker commit changes, applied atomically under the lease.
#[derive(Debug, Clone)]
pub struct Transition {
    pub status: Option<SagaStatus>,
    pub cursor: Option<i32>,
    pub wake: WakeChange,
    pub release_lease: bool,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub steps: Vec<StepChange>,
    pub events: Vec<NewEvent>,
    /// Start this step's next attempt in the same commit, unless a cancel was requested: the
    /// worker that commits step k starts k+1 without another round trip.
    pub then_begin: Option<(i32, NewEvent)>,
    /// The saga starts waiting for this (`status` must be `waiting`); see [`crate::wait`].
    pub waiting_for: Option<Value>,
    /// Deliveries the waiting attempt already took (for earlier waits of the same event):
    /// they do not make the new wait due.
    pub waiting_taken: Vec<i64>,
}

impl Transition {
    pub fn new() -> Self {
        Self {
            status: None,
            cursor: None,
            wake: WakeChange::Keep,
            release_lease: false,
            output: None,
            error: None,
            steps: Vec::new(),
            events: Vec::new(),
            then_begin: None,
            waiting_for: None,
            waiting_taken: Vec::new(),
        }
    }
}

impl Default for Transition {
    fn default() -> Self {
        Self::new()
    }
}

/// What a commit observed.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub cancel_requested: bool,
    /// Whether `then_begin` was applied.
    pub began_next: bool,
}

impl PgStore {
    /// Inserts a saga with its steps and `saga_started` event and wakes a worker, in one round
    /// trip, idempotently on (skill, idempotency key): the same key with the same input returns
    /// the existing saga.
    pub async fn insert_saga(
        &self,
        saga: NewSaga,
        now: DateTime<Utc>,
    ) -> Result<Result<StartOutcome, InsertConflict>, StoreError> {
        let started = start_saga(&self.pool, &saga, now).await?;
        if started.created || started.same_input {
            Ok(Ok(StartOutcome {
                created: started.created,
                saga: started.summary.try_into()?,
            }))
        } else {
            Ok(Err(InsertConflict::DifferentInput(started.summary.id)))
        }
    }

    /// Claims up to `limit` due sagas of the skill versions this worker can run: waiting ones
    /// whose time has come and held ones whose lease expired. Each claim bumps the fencing
    /// token; takeovers are recorded as `lease_expired`. A saga going forward whose step at the
    /// cursor is waiting (`pending`, or `failed` with a retry due) has that step's next attempt
    /// started in the same statement (`step_started`), so a claimed saga runs its step without
    /// another commit.
    pub async fn claim(
        &self,
        worker: &Arc<str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        skills: &KnownSkills,
    ) -> Result<Vec<ClaimedSaga>, StoreError> {
        // One round trip to `stepwise.claim_sagas` (engine/migrations), one statement
        // inside it with a cached plan: lock the due sagas, take them (the update finds its
        // rows by primary key, so a claim stays O(batch) however many sagas ever ran), start
        // the waiting steps, record takeovers and starts in that order, and return each saga
        // with its steps. The steps are read from the statement's snapshot, before `begun`:
        // the caller applies `begun_attempt`.
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "SELECT id, skill, skill_version, status, input, cursor, fencing_token,
                    cancel_requested, previous_owner, begun_attempt, resumed, steps
             FROM stepwise.claim_sagas($1, $2, $3, $4, $5)",
        )
        .bind(now)
        .bind(limit)
        .bind(worker.as_ref())
        .bind(lease_until)
        .bind(&skills.keys)
        .fetch_all(&self.pool)
        .await?;

        claimed_sagas(worker, lease_until, rows)
    }

    /// Takes back sagas this worker was driving when its connection to PostgreSQL was lost
    /// (the server restarted), without waiting for their leases to expire. Only a saga that
    /// still names `worker` as its lease owner with the fencing token of `held` is taken: if its
    /// lease expired and another worker claimed it, or it ended, the token or owner differ and
    /// it is left alone. Each one taken gets a new token (so nothing the lost connection still
    /// carried can commit) and a fresh lease, and is returned as a claim would return it; the
    /// driver starts the step at the cursor itself.
    pub async fn reclaim(
        &self,
        worker: &Arc<str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        held: &[Lease],
    ) -> Result<Vec<ClaimedSaga>, StoreError> {
        let ids: Vec<Uuid> = held.iter().map(|l| l.saga_id).collect();
        let tokens: Vec<i64> = held.iter().map(|l| l.token).collect();
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH mine AS (
                 SELECT s.id FROM stepwise.sagas s
                 JOIN unnest($4::uuid[], $5::int8[]) AS held(id, token)
                   ON s.id = held.id AND s.fencing_token = held.token
                 WHERE s.lease_owner = $3 AND s.status IN ('running', 'compensating')
                 FOR UPDATE OF s SKIP LOCKED),
             claimed AS (
                 UPDATE stepwise.sagas s
                 SET fencing_token = s.fencing_token + 1, wake_at = $2, updated_at = $1
                 WHERE s.id IN (SELECT id FROM mine)
                 RETURNING s.id, s.skill, s.skill_version, s.status::text AS status, s.input,
                           s.cursor, s.fencing_token,
                           s.cancel_requested_at IS NOT NULL AS cancel_requested)
             SELECT claimed.id, claimed.skill, claimed.skill_version, claimed.status,
                    claimed.input, claimed.cursor, claimed.fencing_token,
                    claimed.cancel_requested, NULL::text AS previous_owner,
                    NULL::int4 AS begun_attempt, false AS resumed,
                    (SELECT jsonb_agg(jsonb_build_object(
                                'position', st.position, 'name', st.name, 'status', st.status,
                                'attempts', st.attempts,
                                'attempts_round_base', st.attempts_round_base,
                                'has_output', st.output IS NOT NULL, 'output', st.output,
                                'compensation_status', st.compensation_status,
                                'compensation_attempts', st.compensation_attempts,
                                'compensation_round_base', st.compensation_round_base,
                                'wait_deadlines', st.wait_deadlines,
                                'possibly_done', st.possibly_done)
                            ORDER BY st.position)
                     FROM stepwise.steps st WHERE st.saga_id = claimed.id) AS steps
             FROM claimed",
        )
        .bind(now)
        .bind(lease_until)
        .bind(worker.as_ref())
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await?;
        claimed_sagas(worker, lease_until, rows)
    }

    /// Applies a worker's transition atomically, fenced by its lease token.
    ///
    /// The hot path (a step's result, the next step's start, compensation progress) is one
    /// statement, so one round trip and one commit; with group commit on, several sagas'
    /// transitions share that statement and its commit. Rarer transitions (failures, the end
    /// of a compensation) run as a multi-statement transaction.
    pub async fn commit(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<Committed, StoreError> {
        if is_single_statement(t) && t.waiting_for.is_none() {
            if let Some(group) = &self.group {
                return group.commit(lease, now, t).await;
            }
            return self.commit_one(lease, now, t).await;
        }
        self.commit_in_transaction(lease, now, t).await
    }

    /// One saga's hot-path transition through `stepwise.commit_step`: plain primary-key
    /// statements, cheaper than the batch statement's set-up when there is one saga to commit.
    async fn commit_one(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<Committed, StoreError> {
        let (set_wake, wake_at) = wake_parts(t.wake);
        let (mut c_pos, mut c_kind, mut c_output) = (Vec::new(), Vec::new(), Vec::new());
        for (position, kind, output) in step_changes(t) {
            c_pos.push(position);
            c_kind.push(kind);
            c_output.push(output);
        }
        let (mut e_kind, mut e_step, mut e_attempt, mut e_detail, mut e_next) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (event, next) in history_rows(t) {
            e_kind.push(event.kind.as_str());
            e_step.push(event.step.as_deref());
            e_attempt.push(event.attempt);
            e_detail.push(event.detail.as_ref());
            e_next.push(next);
        }
        let cancel_requested: Option<bool> = sqlx::query_scalar(
            "SELECT stepwise.commit_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                         $14, $15, $16, $17, $18, $19)",
        )
        .bind(lease.saga_id)
        .bind(lease.token)
        .bind(t.status.map(SagaStatus::as_str))
        .bind(t.cursor)
        .bind(set_wake)
        .bind(wake_at)
        .bind(t.release_lease)
        .bind(&t.output)
        .bind(&t.error)
        .bind(now)
        .bind(lease.worker.as_ref())
        .bind(&c_pos)
        .bind(&c_kind)
        .bind(&c_output)
        .bind(&e_kind)
        .bind(&e_step)
        .bind(&e_attempt)
        .bind(&e_detail)
        .bind(&e_next)
        .fetch_one(&self.pool)
        .await?;
        match cancel_requested {
            Some(cancel_requested) => Ok(Committed {
                cancel_requested,
                began_next: t.then_begin.is_some() && !cancel_requested,
            }),
            None => Err(StoreError::LostLease {
                saga_id: lease.saga_id,
            }),
        }
    }

    /// Applies several sagas' transitions (each eligible for [`is_single_statement`]) in one
    /// statement, hence one transaction and one commit. Each saga's writes are fenced by its own
    /// token: a saga whose lease was lost gets `LostLease` and changes nothing, the others commit.
    pub(crate) async fn commit_batch(
        &self,
        items: &[CommitItem],
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        if let [item] = items {
            // Alone in its batch: the plain statements are cheaper than the batch set-up.
            return match self
                .commit_one(&item.lease, item.now, &item.transition)
                .await
            {
                Err(StoreError::LostLease { saga_id }) => {
                    Ok(vec![Err(StoreError::LostLease { saga_id })])
                }
                other => other.map(|committed| vec![Ok(committed)]),
            };
        }
        let n = items.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut statuses: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut cursors = Vec::with_capacity(n);
        let mut set_wakes = Vec::with_capacity(n);
        let mut wakes = Vec::with_capacity(n);
        let mut releases = Vec::with_capacity(n);
        let mut outputs: Vec<Option<&Value>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&Value>> = Vec::with_capacity(n);
        let mut ats = Vec::with_capacity(n);
        let mut c_saga = Vec::new();
        let mut c_pos = Vec::new();
        let mut c_kind: Vec<&str> = Vec::new();
        let mut c_output: Vec<Option<&Value>> = Vec::new();
        let mut e_saga = Vec::new();
        let mut e_kind: Vec<&str> = Vec::new();
        let mut e_step: Vec<Option<&str>> = Vec::new();
        let mut e_attempt = Vec::new();
        let mut e_detail: Vec<Option<&Value>> = Vec::new();
        let mut e_next = Vec::new();
        let mut e_actor: Vec<&str> = Vec::new();
        for item in items {
            let (t, id) = (&item.transition, item.lease.saga_id);
            let (set_wake, wake_at) = wake_parts(t.wake);
            ids.push(id);
            tokens.push(item.lease.token);
            statuses.push(t.status.map(SagaStatus::as_str));
            cursors.push(t.cursor);
            set_wakes.push(set_wake);
            wakes.push(wake_at);
            releases.push(t.release_lease);
            outputs.push(t.output.as_ref());
            errors.push(t.error.as_ref());
            ats.push(item.now);
            for (position, kind, output) in step_changes(t) {
                c_saga.push(id);
                c_pos.push(position);
                c_kind.push(kind);
                c_output.push(output);
            }
            for (event, next) in history_rows(t) {
                e_saga.push(id);
                e_kind.push(event.kind.as_str());
                e_step.push(event.step.as_deref());
                e_attempt.push(event.attempt);
                e_detail.push(event.detail.as_ref());
                e_next.push(next);
                e_actor.push(item.lease.worker.as_ref());
            }
        }
        let rows: Vec<(Uuid, bool)> = sqlx::query_as(COMMIT_BATCH_SQL)
            .bind(&ids)
            .bind(&tokens)
            .bind(&statuses)
            .bind(&cursors)
            .bind(&set_wakes)
            .bind(&wakes)
            .bind(&releases)
            .bind(&outputs)
            .bind(&errors)
            .bind(&ats)
            .bind(&c_saga)
            .bind(&c_pos)
            .bind(&c_kind)
            .bind(&c_output)
            .bind(&e_saga)
            .bind(&e_kind)
            .bind(&e_step)
            .bind(&e_attempt)
            .bind(&e_detail)
            .bind(&e_next)
            .bind(&e_actor)
            .fetch_all(&self.pool)
            .await?;
        let committed: std::collections::HashMap<Uuid, bool> = rows.into_iter().collect();
        Ok(items
            .iter()
            .map(|item| {
                let id = item.lease.saga_id;
                match committed.get(&id) {
                    Some(&cancel_requested) => Ok(Committed {
                        cancel_requested,
                        began_next: item.transition.then_begin.is_some() && !cancel_requested,
                    }),
                    None => Err(StoreError::LostLease { saga_id: id }),
                }
            })
            .collect())
    }

    /// The general path: every kind of step change, in one transaction of several statements.
    async fn commit_in_transaction(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Transition,
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (set_wake, wake_at) = wake_parts(t.wake);
        let cancel_requested: Option<bool> = sqlx::query_scalar(
            "UPDATE stepwise.sagas
             SET status = COALESCE($3, status),
                 cursor = COALESCE($4, cursor),
                 wake_at = CASE WHEN $5 THEN $6 ELSE wake_at END,
                 lease_owner = CASE WHEN $7 THEN NULL ELSE lease_owner END,
                 output = COALESCE($8, output),
                 error = COALESCE($9, error),
                 updated_at = $10,
                 waiting_for = $11
             WHERE id = $1 AND fencing_token = $2
             RETURNING cancel_requested_at IS NOT NULL",
        )
        .bind(lease.saga_id)
        .bind(lease.token)
        .bind(t.status.map(SagaStatus::as_str))
        .bind(t.cursor)
        .bind(set_wake)
        .bind(wake_at)
        .bind(t.release_lease)
        .bind(&t.output)
        .bind(&t.error)
        .bind(now)
        .bind(&t.waiting_for)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(cancel_requested) = cancel_requested else {
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
        let began_next = match &t.then_begin {
            Some((position, event)) if !cancel_requested => {
                apply_step_change(
                    &mut tx,
                    lease.saga_id,
                    now,
                    &StepChange::Begin {
                        position: *position,
                    },
                )
                .await?;
                let mut events = t.events.clone();
                events.push(event.clone());
                insert_events(&mut tx, lease.saga_id, now, &lease.worker, &events).await?;
                true
            }
            _ => {
                insert_events(&mut tx, lease.saga_id, now, &lease.worker, &t.events).await?;
                false
            }
        };
        tx.commit().await?;
        Ok(Committed {
            cancel_requested,
            began_next,
        })
    }

    /// Extends a lease while a long step runs. Fails with `LostLease` if another worker has it.
    pub async fn heartbeat(&self, lease: &Lease, until: DateTime<Utc>) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE stepwise.sagas SET wake_at = $3 WHERE id = $1 AND fencing_token = $2",
        )
        .bind(lease.saga_id)
        .bind(lease.token)
        .bind(until)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::LostLease {
                saga_id: lease.saga_id,
            });
        }
        Ok(())
    }

    /// Gives a saga back without finishing it (shutdown): due now, for any worker. `t` may
    /// carry more (the attempt given back); the wake time and the lease are set here.
    pub async fn release(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        mut t: Transition,
    ) -> Result<(), StoreError> {
        t.wake = WakeChange::Set(now);
        t.release_lease = true;
        self.commit(lease, now, &t).await.map(|_| ())
    }

    /// Records a cancellation request; a worker compensates after the running step. Returns
    /// false if the saga is already terminal.
    pub async fn request_cancel(
        &self,
        id: Uuid,
        actor: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A waiting saga becomes due now so a worker notices; a held one is told at its next commit.
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE stepwise.sagas
             SET cancel_requested_at = COALESCE(cancel_requested_at, $2),
                 wake_at = CASE WHEN lease_owner IS NULL THEN LEAST(wake_at, $2) ELSE wake_at END,
                 updated_at = $2
             WHERE id = $1 AND status IN ('pending', 'running', 'waiting')
             RETURNING status",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if status.is_none() {
            tx.rollback().await?;
            return match self.summary(id).await? {
                Some(_) => Ok(false),
                None => Err(StoreError::NotFound(id)),
            };
        }
        let event = NewEvent::saga(EventKind::CancelRequested)
            .with_detail(serde_json::json!({ "reason": reason }));
        insert_events(&mut tx, id, now, actor, &[event]).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WORK_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The earliest time any waiting saga is due, if any (lets idle workers sleep exactly).
    /// When the next saga of these skill versions becomes due (or its lease expires).
    pub async fn next_due(
        &self,
        skills: &KnownSkills,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        // Walks the `sagas_due` index in order and stops at the first row of a known skill:
        // as `min(wake_at)` it read every row with a `wake_at` (100,000 waiting sagas made
        // every idle poll read 100,000 rows; BENCHMARKS.md, waits).
        Ok(sqlx::query_scalar(
            "SELECT wake_at FROM stepwise.sagas
             WHERE wake_at IS NOT NULL AND skill || '@' || skill_version = ANY($1)
             ORDER BY wake_at
             LIMIT 1",
        )
        .bind(&skills.keys)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// One saga's transition waiting to be committed (possibly with other sagas').
#[derive(Debug, Clone)]
pub(crate) struct CommitItem {
    pub lease: Lease,
    pub now: DateTime<Utc>,
    pub transition: Transition,
}

/// Whether a transition can be applied by [`COMMIT_BATCH_SQL`]: its step changes are only
/// starts and successes (of actions or compensations), each on a different step. Every step
/// commit and compensation step of a saga qualifies; failures and the end of a compensation
/// do not.
pub(crate) fn is_single_statement(t: &Transition) -> bool {
    let mut positions: Vec<i32> = Vec::with_capacity(t.steps.len() + 1);
    for change in &t.steps {
        match change {
            StepChange::Begin { position }
            | StepChange::Succeeded { position, .. }
            | StepChange::CompensationBegin { position }
            | StepChange::CompensationSucceeded { position, .. } => positions.push(*position),
            _ => return false,
        }
    }
    if let Some((position, _)) = &t.then_begin {
        positions.push(*position);
    }
    positions.sort_unstable();
    positions.windows(2).all(|w| w[0] != w[1])
}

/// Applies a batch of transitions in one statement (one round trip, one commit):
/// - `i`: one row per saga (id, fencing token, saga-row changes, the worker's clock);
/// - `s`: the fenced saga update; only sagas whose token still matches come out of it, with
///   whether a cancel was requested;
/// - `c`/`st`: step changes of the sagas that came out of `s` (the next step's start,
///   `begin_next`, only when no cancel was requested), one step row each;
/// - `ev`: their history rows, in order (the next step's `step_started` under the same rule).
///
/// The saga update only rewrites unindexed columns on a step commit (`cursor`, `updated_at`),
/// and the step updates never touch an indexed column, so all of them can be HOT updates.
const COMMIT_BATCH_SQL: &str = "SELECT saga_id, cancel_requested FROM stepwise.commit_transitions(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)";

/// What `stepwise.start_saga` did: created the saga, or found the key taken.
#[derive(sqlx::FromRow)]
pub(super) struct Started {
    #[sqlx(flatten)]
    pub summary: SummaryRow,
    pub created: bool,
    /// When the key was taken: whether the existing saga has the same input.
    pub same_input: bool,
}

/// Calls `stepwise.start_saga` (engine/migrations): the saga row, its steps, its
/// `saga_started` event and the NOTIFY, in one round trip. `executor` is the pool for a start,
/// or the transaction of a replay.
pub(super) async fn start_saga<'e, E>(
    executor: E,
    saga: &NewSaga,
    now: DateTime<Utc>,
) -> Result<Started, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let started: Option<Started> = sqlx::query_as(
        "SELECT * FROM stepwise.start_saga($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(saga.id)
    .bind(&saga.skill)
    .bind(saga.skill_version)
    .bind(&saga.idempotency_key)
    .bind(&saga.input)
    .bind(&saga.started_by)
    .bind(saga.replay_of)
    .bind(&saga.step_names)
    .bind(&saga.reused_outputs)
    .bind(now)
    .bind(WORK_CHANNEL)
    .fetch_optional(executor)
    .await?;
    started.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "starting saga {} returned nothing (idempotency key {:?})",
            saga.id, saga.idempotency_key
        ))
    })
}

/// `wake_at` as the statements take it: whether to set it, and to what (NULL when terminal).
fn wake_parts(wake: WakeChange) -> (bool, Option<DateTime<Utc>>) {
    match wake {
        WakeChange::Keep => (false, None),
        WakeChange::Set(at) => (true, Some(at)),
        WakeChange::Clear => (true, None),
    }
}

/// A hot-path transition's step changes as (position, kind, output), in order, the next
/// step's start (`begin_next`, skipped on a cancel) last. Only the kinds
/// [`is_single_statement`] admits appear.
fn step_changes(t: &Transition) -> impl Iterator<Item = (i32, &'static str, Option<&Value>)> {
    let changes = t.steps.iter().filter_map(|c| match c {
        StepChange::Begin { position } => Some((*position, "begin", None)),
        StepChange::Succeeded { position, output } => Some((*position, "succeeded", Some(output))),
        StepChange::CompensationBegin { position } => Some((*position, "comp_begin", None)),
        StepChange::CompensationSucceeded { position, output } => {
            Some((*position, "comp_succeeded", Some(output)))
        }
        _ => None,
    });
    let next = t.then_begin.as_ref().map(|(p, _)| (*p, "begin_next", None));
    changes.chain(next)
}

/// A transition's history rows, with whether each belongs to the next step's start.
fn history_rows(t: &Transition) -> impl Iterator<Item = (&NewEvent, bool)> {
    let events = t.events.iter().map(|e| (e, false));
    let next_event = t.then_begin.as_ref().map(|(_, e)| (e, true));
    events.chain(next_event)
}

pub(super) async fn insert_events(
    tx: &mut sqlx::PgConnection,
    saga_id: Uuid,
    at: DateTime<Utc>,
    actor: &str,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let steps: Vec<Option<String>> = events.iter().map(|e| e.step.clone()).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    let details: Vec<Option<Value>> = events.iter().map(|e| e.detail.clone()).collect();
    sqlx::query(
        "INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
         SELECT $1, $2, t.kind, t.step, t.attempt, $3, t.detail
         FROM UNNEST($4::text[], $5::text[], $6::int[], $7::jsonb[]) WITH ORDINALITY
              AS t(kind, step, attempt, detail, ord)
         ORDER BY t.ord",
    )
    .bind(saga_id)
    .bind(at)
    .bind(actor)
    .bind(&kinds)
    .bind(&steps)
    .bind(&attempts)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_step_change(
    tx: &mut sqlx::PgConnection,
    saga_id: Uuid,
    now: DateTime<Utc>,
    change: &StepChange,
) -> Result<(), StoreError> {
    let query = match change {
        StepChange::Begin { position } => sqlx::query(
            "UPDATE stepwise.steps
             SET status = 'running', attempts = attempts + 1, started_at = $3, finished_at = NULL
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(now),
        StepChange::Succeeded { position, output } => sqlx::query(
            "UPDATE stepwise.steps
             SET status = 'succeeded', output = $3, error = NULL, finished_at = $4
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(output)
        .bind(now),
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
        StepChange::CompensationBegin { position } => sqlx::query(
            "UPDATE stepwise.steps
             SET compensation_status = 'running', compensation_attempts = compensation_attempts + 1,
                 compensation_started_at = COALESCE(compensation_started_at, $3)
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(now),
        StepChange::CompensationSucceeded { position, output } => sqlx::query(
            "UPDATE stepwise.steps
             SET compensation_status = 'compensated', compensation_output = $3,
                 compensation_error = NULL, compensation_finished_at = $4
             WHERE saga_id = $1 AND position = $2",
        )
        .bind(saga_id)
        .bind(position)
        .bind(output)
        .bind(now),
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
        StepChange::ReleaseAttempt { position } => sqlx::query(
            "UPDATE stepwise.steps
             SET status = 'pending', attempts = attempts - 1,
                 started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END
             WHERE saga_id = $1 AND position = $2 AND status = 'running' AND attempts > 0",
        )
        .bind(saga_id)
        .bind(position),
        StepChange::ReleaseCompensationAttempt { position } => sqlx::query(
            "UPDATE stepwise.steps
             SET compensation_status = 'pending',
                 compensation_attempts = compensation_attempts - 1,
                 compensation_started_at = CASE WHEN compensation_attempts = 1 THEN NULL
                                                ELSE compensation_started_at END
             WHERE saga_id = $1 AND position = $2 AND compensation_status = 'running'
               AND compensation_attempts > 0",
        )
        .bind(saga_id)
        .bind(position),
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

/// One row of `stepwise.claim_sagas` (or of a reclaim, which has the same shape).
#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    skill: String,
    skill_version: i32,
    status: String,
    input: Value,
    cursor: i32,
    fencing_token: i64,
    cancel_requested: bool,
    previous_owner: Option<String>,
    begun_attempt: Option<i32>,
    resumed: bool,
    steps: Option<sqlx::types::Json<Vec<StepJson>>>,
}
#[derive(serde::Deserialize)]
struct StepJson {
    position: i32,
    name: String,
    status: String,
    attempts: i32,
    attempts_round_base: i32,
    /// JSON cannot tell SQL NULL from a `null` output; `has_output` can.
    has_output: bool,
    output: Option<Value>,
    compensation_status: String,
    compensation_attempts: i32,
    compensation_round_base: i32,
    #[serde(default)]
    wait_deadlines: std::collections::BTreeMap<String, DateTime<Utc>>,
    #[serde(default)]
    possibly_done: bool,
}
/// Turns claim rows into claimed sagas held by `worker` until `lease_until`.
fn claimed_sagas(
    worker: &Arc<str>,
    lease_until: DateTime<Utc>,
    rows: Vec<ClaimRow>,
) -> Result<Vec<ClaimedSaga>, StoreError> {
    rows.into_iter()
        .map(|r| {
            let steps = r
                .steps
                .map(|json| json.0)
                .unwrap_or_default()
                .into_iter()
                .map(|st| {
                    Ok(StepState {
                        position: st.position,
                        name: st.name,
                        status: parse("step status", &st.status)?,
                        attempts: st.attempts,
                        attempts_round_base: st.attempts_round_base,
                        output: st.has_output.then(|| st.output.unwrap_or(Value::Null)),
                        compensation_status: parse("compensation status", &st.compensation_status)?,
                        compensation_attempts: st.compensation_attempts,
                        compensation_round_base: st.compensation_round_base,
                        wait_deadlines: st.wait_deadlines,
                        possibly_done: st.possibly_done,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut steps = steps;
            let cursor = usize::try_from(r.cursor).unwrap_or(usize::MAX);
            if let (Some(attempt), Some(step)) = (r.begun_attempt, steps.get_mut(cursor)) {
                step.status = StepStatus::Running;
                step.attempts = attempt;
            }
            Ok(ClaimedSaga {
                lease: Lease {
                    saga_id: r.id,
                    token: r.fencing_token,
                    worker: worker.clone(),
                    expires_at: lease_until,
                },
                status: parse::<SagaStatus>("saga status", &r.status)?,
                skill: r.skill,
                skill_version: r.skill_version,
                input: r.input,
                cursor: r.cursor,
                cancel_requested: r.cancel_requested,
                expired_owner: r.previous_owner,
                begun: r.begun_attempt.is_some(),
                resumed: r.resumed,
                steps,
            })
        })
        .collect()
}
