//! What readers see of a saga (`sagas show`, MCP results, the console, the metrics): its
//! summary, its steps and its history, derived from the storage as docs/storage.md describes.
//!
//! A step attempt that succeeds leaves no history row: its start and its success are kept on
//! the step's row (`started_seq`, `finished_seq`, `actor`, and the same for the compensation),
//! and the attempt in flight lives on the saga row (`attempt_*`). The history is the union of
//! `stepwise.events`, the rows derived from the steps and the attempt in flight, ordered by
//! their places, all taken from the events' id sequence. [`HISTORY`] and [`STEPS_VIEW`] are
//! the one definition of that derivation; every reader of the history or of the steps goes
//! through them.

use super::rows::{parse, DetailRow, EventRow, StepRow, SummaryRow};
use super::PgStore;
use crate::error::StoreError;
use crate::model::{EventView, SagaDetail, SagaFilter, SagaStatus, SagaSummary, StepView};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) const SUMMARY_COLUMNS: &str =
    "id, skill, skill_version, status, idempotency_key, created_at, updated_at";

/// Every saga's history as rows `(saga_id, place, at, kind, step, attempt, actor, detail)`:
/// `place` orders a saga's history (its rank is the `seq` readers see). Select from it with a
/// condition on `saga_id`: PostgreSQL pushes it into each branch of the union, so one saga's
/// history is read by key from the events partition, its steps and its saga row.
///
/// - the rows of `stepwise.events` (saga-level history, and every attempt that did not
///   succeed: its start is written there when it ends);
/// - the last action attempt of a succeeded step: `step_started` and `step_succeeded` at the
///   places the step's row keeps (none for a step a fork copied: it has no places);
/// - the last compensation attempt of a compensated step: `compensation_started` and
///   `compensation_succeeded`, whose detail says what undoing a step that may not have run
///   found (as the worker wrote it before the attempt rows);
/// - the attempt in flight, from the saga row: its `step_started` (or `compensation_started`).
pub(super) const HISTORY: &str = "
    SELECT e.saga_id, e.id AS place, e.at, e.kind::text AS kind, e.step, e.attempt, e.actor,
           e.detail
    FROM stepwise.events e
    UNION ALL
    SELECT st.saga_id, d.place, d.at, d.kind, st.name, st.attempts, st.actor, NULL::jsonb
    FROM stepwise.steps st
    CROSS JOIN LATERAL (VALUES ('step_started', st.started_seq, st.started_at),
                               ('step_succeeded', st.finished_seq, st.finished_at))
         AS d(kind, place, at)
    WHERE st.status = 'succeeded' AND st.started_seq IS NOT NULL AND d.place IS NOT NULL
    UNION ALL
    SELECT st.saga_id, d.place, d.at, d.kind, st.name, st.compensation_attempts,
           st.compensation_actor, d.detail
    FROM stepwise.steps st
    CROSS JOIN LATERAL (VALUES
            ('compensation_started', st.compensation_started_seq, st.compensation_started_at,
             NULL::jsonb),
            ('compensation_succeeded', st.compensation_finished_seq,
             st.compensation_finished_at,
             CASE WHEN st.possibly_done AND st.status <> 'succeeded'
                  THEN jsonb_build_object('possibly_done', true,
                                          'output', st.compensation_output) END))
         AS d(kind, place, at, detail)
    WHERE st.compensation_status = 'compensated' AND st.compensation_started_seq IS NOT NULL
      AND d.place IS NOT NULL
    UNION ALL
    SELECT s.id, s.attempt_seq, s.attempt_started_at,
           CASE WHEN s.attempt_compensation THEN 'compensation_started' ELSE 'step_started' END,
           st.name, s.attempt, s.attempt_actor, NULL::jsonb
    FROM stepwise.sagas s
    JOIN stepwise.steps st ON st.saga_id = s.id AND st.position = s.attempt_position
    WHERE s.attempt_position IS NOT NULL";

/// Every step as readers see it: its row, overlaid with the saga's attempt in flight (a step
/// whose attempt is in flight is `running` with that attempt's number and start and no end;
/// the same for a compensation in flight). Columns as [`StepRow`] reads them, plus `saga_id`;
/// select from it with a condition on `saga_id`.
pub(super) const STEPS_VIEW: &str = "
    SELECT st.saga_id, st.position, st.name,
           CASE WHEN f.forward THEN 'running' ELSE st.status::text END AS status,
           CASE WHEN f.forward THEN s.attempt ELSE st.attempts END AS attempts,
           st.output, st.error,
           CASE WHEN f.forward THEN s.attempt_started_at ELSE st.started_at END AS started_at,
           CASE WHEN f.forward THEN NULL ELSE st.finished_at END AS finished_at,
           CASE WHEN f.compensation THEN 'running' ELSE st.compensation_status::text END
               AS compensation_status,
           CASE WHEN f.compensation THEN s.attempt ELSE st.compensation_attempts END
               AS compensation_attempts,
           st.compensation_output, st.compensation_error,
           CASE WHEN f.compensation THEN s.attempt_started_at ELSE st.compensation_started_at END
               AS compensation_started_at,
           CASE WHEN f.compensation THEN NULL ELSE st.compensation_finished_at END
               AS compensation_finished_at,
           st.possibly_done
    FROM stepwise.steps st
    JOIN stepwise.sagas s ON s.id = st.saga_id
    CROSS JOIN LATERAL (
        SELECT st.position = s.attempt_position AND NOT s.attempt_compensation AS forward,
               st.position = s.attempt_position AND s.attempt_compensation AS compensation) f";

impl PgStore {
    pub async fn summary(&self, id: Uuid) -> Result<Option<SagaSummary>, StoreError> {
        let row: Option<SummaryRow> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM stepwise.sagas WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(SagaSummary::try_from).transpose()
    }

    /// A saga with its steps and full history (see the module documentation), read in one
    /// snapshot so the three agree while a worker commits the saga's next step.
    pub async fn detail(&self, id: Uuid) -> Result<Option<SagaDetail>, StoreError> {
        let mut tx = self.pool.begin_snapshot().await?;
        let Some(saga): Option<DetailRow> = sqlx::query_as(
            "SELECT id, skill, skill_version, status, idempotency_key, input, output, error,
                    started_by, replay_of, cancel_requested_at, lease_owner, waiting_for,
                    created_at, updated_at
             FROM stepwise.sagas WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let steps: Vec<StepRow> = sqlx::query_as(&format!(
            "SELECT position, name, status, attempts, output, error, started_at, finished_at,
                    compensation_status, compensation_attempts, compensation_output,
                    compensation_error, compensation_started_at, compensation_finished_at,
                    possibly_done
             FROM ({STEPS_VIEW}) v WHERE saga_id = $1 ORDER BY position"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        // One statement, so the ranks count every row of the union in its place.
        let events: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT row_number() OVER (ORDER BY place) AS seq, at, kind, step, attempt, actor,
                    detail
             FROM ({HISTORY}) h WHERE saga_id = $1 ORDER BY place"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(SagaDetail {
            id: saga.id,
            status: parse("saga status", &saga.status)?,
            skill: saga.skill,
            skill_version: saga.skill_version,
            idempotency_key: saga.idempotency_key,
            input: saga.input,
            output: saga.output,
            error: saga.error,
            started_by: saga.started_by,
            replay_of: saga.replay_of,
            cancel_requested_at: saga.cancel_requested_at,
            lease_owner: saga.lease_owner,
            waiting_for: saga.waiting_for,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
            steps: steps
                .into_iter()
                .map(StepView::try_from)
                .collect::<Result<_, _>>()?,
            events: events
                .into_iter()
                .map(EventView::try_from)
                .collect::<Result<_, _>>()?,
        }))
    }

    /// Sagas matching `filter`, newest first.
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaSummary>, StoreError> {
        let rows: Vec<SummaryRow> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM stepwise.sagas
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR skill = $2)
               AND ($3::timestamptz IS NULL OR created_at >= $3)
               AND ($4::text IS NULL OR started_by = $4)
             ORDER BY created_at DESC, id
             LIMIT $5"
        ))
        .bind(filter.status.map(SagaStatus::as_str))
        .bind(&filter.skill)
        .bind(filter.since)
        .bind(&filter.started_by)
        .bind(if filter.limit > 0 { filter.limit } else { 100 })
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(SagaSummary::try_from).collect()
    }

    /// The saga of `skill` started with idempotency key `key`, if any.
    pub async fn saga_by_key(
        &self,
        skill: &str,
        key: &str,
    ) -> Result<Option<SagaSummary>, StoreError> {
        let row: Option<SummaryRow> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM stepwise.sagas WHERE skill = $1 AND idempotency_key = $2"
        ))
        .bind(skill)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(SagaSummary::try_from).transpose()
    }

    /// The status of each of `ids` that exists (a pruned or unknown id is absent from the map).
    pub async fn saga_statuses(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, SagaStatus>, StoreError> {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM stepwise.sagas WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, s)| Ok((id, parse("saga status", &s)?)))
            .collect()
    }

    /// How many sagas are in each status (for `sagas list` and metrics).
    pub async fn counts_by_status(&self) -> Result<Vec<(SagaStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM stepwise.sagas GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((parse("saga status", &s)?, n)))
            .collect()
    }
}
