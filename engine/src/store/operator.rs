//! The statements behind the operator API (replays, listing for bulk actions; pruning is in
//! `prune.rs`) and the queue sample behind the metrics. Parameterized throughout; kept apart
//! from the worker's hot path. Every change here is one transaction that also appends its
//! history rows.

use super::history::{self, HistoryRow};
use super::queries::start_saga;
use super::reads::SUMMARY_COLUMNS;
use super::rows::SummaryRow;
use super::NewSaga;
use super::{PgStore, WORK_CHANNEL};
use crate::error::StoreError;
use crate::metrics::QueueStats;
use crate::model::{EventKind, SagaStatus, SagaSummary};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// A history row written by an operator action.
#[derive(Debug, Clone)]
pub struct OperatorEvent {
    pub saga_id: Uuid,
    pub kind: EventKind,
    pub step: Option<String>,
    pub actor: String,
    pub detail: Option<Value>,
}

impl OperatorEvent {
    fn row(&self) -> HistoryRow<'_> {
        HistoryRow {
            saga_id: self.saga_id,
            kind: self.kind,
            step: self.step.as_deref(),
            attempt: None,
            actor: &self.actor,
            detail: self.detail.as_ref(),
        }
    }
}

/// A saga to create from another one (restart or fork).
#[derive(Debug, Clone)]
pub struct ReplaySaga {
    pub id: Uuid,
    pub replay_of: Uuid,
    /// The status the original must still have (checked under a lock).
    pub original_status: SagaStatus,
    pub skill: String,
    pub skill_version: i32,
    pub input: Value,
    /// `None`: no idempotency key. `Some(prefix)`: the key is `{prefix}/{n}` with the first
    /// free `n` counting from the number of earlier replays plus one.
    pub key_prefix: Option<String>,
    pub started_by: String,
    pub step_names: Vec<String>,
    /// Outputs of the leading steps taken over from the original (fork).
    pub reused_outputs: Vec<Value>,
    /// Appended after `saga_started`, in order, on either saga.
    pub events: Vec<OperatorEvent>,
}

/// Why a replay could not be written.
#[derive(Debug)]
pub enum ReplayConflict {
    /// The original is gone.
    NotFound,
    /// The original changed since it was checked (its current status).
    StatusChanged(SagaStatus),
    /// An earlier replay of it has not ended undone: running it again would repeat effects.
    LiveReplay { id: Uuid, status: SagaStatus },
}

impl PgStore {
    /// Counts non-terminal sagas by queue state and the lag of the oldest due one. Reads only
    /// rows with `wake_at` set (the partial index `sagas_due` covers exactly those).
    pub async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
        let (due, scheduled, leased, lag): (i64, i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE wake_at <= $1),
                    count(*) FILTER (WHERE wake_at > $1 AND lease_owner IS NULL),
                    count(*) FILTER (WHERE wake_at > $1 AND lease_owner IS NOT NULL),
                    EXTRACT(EPOCH FROM ($1 - min(wake_at) FILTER (WHERE wake_at <= $1)))::float8
             FROM stepwise.sagas WHERE wake_at IS NOT NULL",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            due,
            scheduled,
            leased,
            lag_seconds: lag.unwrap_or(0.0),
        })
    }

    /// Resumes a `failed` saga's compensation: every compensation that failed for good gets a
    /// fresh round of attempts, the saga becomes `compensating` and due now. `skill_version`
    /// moves the saga to another registered version (already checked by the caller).
    /// `Err(conflict)` if the saga is gone or no longer `failed`.
    pub async fn resume_compensation(
        &self,
        id: Uuid,
        skill_version: i32,
        event: OperatorEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<SagaSummary, ReplayConflict>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<SummaryRow> = sqlx::query_as(&format!(
            "UPDATE stepwise.sagas
             SET status = 'compensating', wake_at = $2, skill_version = $3, updated_at = $2
             WHERE id = $1 AND status = 'failed'
             RETURNING {SUMMARY_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .bind(skill_version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return self.conflict_for(id).await.map(Err);
        };
        sqlx::query(
            "UPDATE stepwise.steps
             SET compensation_status = 'pending',
                 compensation_round_base = compensation_attempts,
                 compensation_finished_at = NULL
             WHERE saga_id = $1 AND compensation_status IN ('failed', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        history::append(&mut tx, now, &[event.row()]).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(Ok(row.try_into()?))
    }

    /// Creates a saga from another (restart, fork) with its steps and history, and records the
    /// link on the original, in one transaction. The original is locked and must still have
    /// the status the caller checked.
    pub async fn insert_replay(
        &self,
        replay: &ReplaySaga,
        now: DateTime<Utc>,
    ) -> Result<Result<SagaSummary, ReplayConflict>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> =
            // FOR UPDATE: replays of one saga are serialized, so two operators cannot both
            // see "no live replay" and both start one.
            sqlx::query_scalar("SELECT status FROM stepwise.sagas WHERE id = $1 FOR UPDATE")
                .bind(replay.replay_of)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(status) = status else {
            tx.rollback().await?;
            return Ok(Err(ReplayConflict::NotFound));
        };
        let status: SagaStatus = super::rows::parse("saga status", &status)?;
        if status != replay.original_status {
            tx.rollback().await?;
            return Ok(Err(ReplayConflict::StatusChanged(status)));
        }
        let live: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, status FROM stepwise.sagas
             WHERE replay_of = $1 AND status NOT IN ('compensated', 'failed')
             ORDER BY created_at LIMIT 1",
        )
        .bind(replay.replay_of)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, status)) = live {
            tx.rollback().await?;
            let status: SagaStatus = super::rows::parse("saga status", &status)?;
            return Ok(Err(ReplayConflict::LiveReplay { id, status }));
        }
        let earlier: i64 =
            sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas WHERE replay_of = $1")
                .bind(replay.replay_of)
                .fetch_one(&mut *tx)
                .await?;
        let mut saga = NewSaga {
            id: replay.id,
            skill: replay.skill.clone(),
            skill_version: replay.skill_version,
            input: replay.input.clone(),
            idempotency_key: None,
            started_by: replay.started_by.clone(),
            replay_of: Some(replay.replay_of),
            step_names: replay.step_names.clone(),
            reused_outputs: replay.reused_outputs.clone(),
        };
        let mut n = earlier + 1;
        let row = loop {
            saga.idempotency_key = replay.key_prefix.as_ref().map(|p| format!("{p}/{n}"));
            let started = start_saga(&mut *tx, &saga, now).await?;
            match started.created {
                true => break started.summary,
                // Someone used `{prefix}/{n}` already: take the next number.
                false if n < earlier + 1000 => n += 1,
                false => {
                    return Err(StoreError::Corrupt(format!(
                        "no free replay idempotency key under {:?}",
                        replay.key_prefix
                    )))
                }
            }
        };
        // After `saga_started` (written by `start_saga`), in order.
        let rows: Vec<_> = replay.events.iter().map(OperatorEvent::row).collect();
        history::append(&mut tx, now, &rows).await?;
        tx.commit().await?;
        Ok(Ok(row.try_into()?))
    }

    async fn conflict_for(&self, id: Uuid) -> Result<ReplayConflict, StoreError> {
        Ok(match self.summary(id).await? {
            Some(s) => ReplayConflict::StatusChanged(s.status),
            None => ReplayConflict::NotFound,
        })
    }

    /// One page of sagas matching a bulk filter, oldest first, after `after` (keyset paging
    /// on `(created_at, id)`).
    pub async fn bulk_page(
        &self,
        status: Option<SagaStatus>,
        skill: Option<&str>,
        since: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<SagaSummary>, StoreError> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM stepwise.sagas
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR skill = $2)
               AND ($3::timestamptz IS NULL OR created_at >= $3)
               AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5))
             ORDER BY created_at, id
             LIMIT $6"
        ))
        .bind(status.map(SagaStatus::as_str))
        .bind(skill)
        .bind(since)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(SagaSummary::try_from).collect()
    }

    /// Counts by status among sagas of `skill` created since `since` (all when `None`).
    pub async fn counts_by_status_filtered(
        &self,
        skill: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<(SagaStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM stepwise.sagas
             WHERE ($1::text IS NULL OR skill = $1)
               AND ($2::timestamptz IS NULL OR created_at >= $2)
             GROUP BY status",
        )
        .bind(skill)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((super::rows::parse("saga status", &s)?, n)))
            .collect()
    }
}

async fn notify(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
