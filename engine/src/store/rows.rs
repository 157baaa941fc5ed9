//! Row types read from PostgreSQL and their conversion into the public views.

use crate::error::StoreError;
use crate::model::{
    CompensationStatus, CompensationView, EventKind, EventView, SagaStatus, SagaSummary,
    StepStatus, StepView,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::str::FromStr;
use uuid::Uuid;

pub(crate) fn parse<T: FromStr<Err = strum::ParseError>>(
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    T::from_str(text).map_err(|_| StoreError::Corrupt(format!("unknown {what} `{text}`")))
}

#[derive(sqlx::FromRow)]
pub(crate) struct SummaryRow {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<SummaryRow> for SagaSummary {
    type Error = StoreError;
    fn try_from(r: SummaryRow) -> Result<Self, StoreError> {
        Ok(SagaSummary {
            id: r.id,
            skill: r.skill,
            skill_version: r.skill_version,
            status: parse::<SagaStatus>("saga status", &r.status)?,
            idempotency_key: r.idempotency_key,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DetailRow {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_by: String,
    pub replay_of: Option<Uuid>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub waiting_for: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct StepRow {
    pub position: i32,
    pub name: String,
    pub status: String,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub compensation_status: String,
    pub compensation_attempts: i32,
    pub compensation_output: Option<Value>,
    pub compensation_error: Option<Value>,
    pub compensation_started_at: Option<DateTime<Utc>>,
    pub compensation_finished_at: Option<DateTime<Utc>>,
    pub possibly_done: bool,
}

impl TryFrom<StepRow> for StepView {
    type Error = StoreError;
    fn try_from(r: StepRow) -> Result<Self, StoreError> {
        Ok(StepView {
            position: r.position,
            name: r.name,
            status: parse::<StepStatus>("step status", &r.status)?,
            attempts: r.attempts,
            output: r.output,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
            compensation: CompensationView {
                status: parse::<CompensationStatus>("compensation status", &r.compensation_status)?,
                attempts: r.compensation_attempts,
                output: r.compensation_output,
                error: r.compensation_error,
                started_at: r.compensation_started_at,
                finished_at: r.compensation_finished_at,
            },
            possibly_done: r.possibly_done && r.status != "succeeded",
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub actor: String,
    pub detail: Option<Value>,
}

impl TryFrom<EventRow> for EventView {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(EventView {
            seq: r.seq,
            at: r.at,
            kind: parse::<EventKind>("event kind", &r.kind)?,
            step: r.step,
            attempt: r.attempt,
            actor: r.actor,
            detail: r.detail,
        })
    }
}
