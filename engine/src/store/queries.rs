//! The worker's statements behind [`PgStore`]: starts, claims, commits, heartbeats and the
//! next due time (what readers see is in `reads.rs`). Parameterized throughout; timestamps
//! come from the engine's clock, never from `now()`, so tests can move time.

use super::claim::KnownSkills;
use super::history;
use super::rows::SummaryRow;
use super::transition::{Lease, NewEvent, Transition, WakeChange};
use super::{PgStore, WORK_CHANNEL};
use crate::error::StoreError;
use crate::model::{EventKind, SagaSummary};
use chrono::{DateTime, Utc};
use serde_json::Value;
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
        self.commit(lease, now, &std::sync::Arc::new(t))
            .await
            .map(|_| ())
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
        history::append(&mut tx, now, &[event.row(id, actor)]).await?;
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
        .bind(skills.keys())
        .fetch_optional(&self.pool)
        .await?)
    }
}

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
