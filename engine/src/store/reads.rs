//! What readers see of a saga (`sagas show`, MCP results, the console, the metrics): its
//! summary, its steps and its history.

use super::rows::{parse, DetailRow, EventRow, StepRow, SummaryRow};
use super::PgStore;
use crate::error::StoreError;
use crate::model::{EventView, SagaDetail, SagaFilter, SagaStatus, SagaSummary, StepView};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) const SUMMARY_COLUMNS: &str =
    "id, skill, skill_version, status, idempotency_key, created_at, updated_at";

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

    /// A saga with its steps and full history.
    pub async fn detail(&self, id: Uuid) -> Result<Option<SagaDetail>, StoreError> {
        let Some(saga): Option<DetailRow> = sqlx::query_as(
            "SELECT id, skill, skill_version, status, idempotency_key, input, output, error,
                    started_by, replay_of, cancel_requested_at, lease_owner, waiting_for,
                    created_at, updated_at
             FROM stepwise.sagas WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let steps: Vec<StepRow> = sqlx::query_as(
            "SELECT position, name, status, attempts, output, error, started_at, finished_at,
                    compensation_status, compensation_attempts, compensation_output,
                    compensation_error, compensation_started_at, compensation_finished_at,
                    possibly_done
             FROM stepwise.steps WHERE saga_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let events: Vec<EventRow> = sqlx::query_as(
            "SELECT row_number() OVER (ORDER BY id) AS seq, at, kind, step, attempt, actor, detail
             FROM stepwise.events WHERE saga_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
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
