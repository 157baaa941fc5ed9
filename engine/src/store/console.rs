//! Read models of the operator console (docs/console.md): counts, the last hour's activity,
//! the sagas that need attention, and the saga list with filters and keyset paging. Read-only;
//! every statement is parameterized (the list's optional filters are appended with bound
//! values, so each filter combination gets a plan that can use the indexes).

use super::reads::HISTORY;
use super::rows::parse;
use super::PgStore;
use crate::error::StoreError;
use crate::model::SagaStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// The channel a saga's status change is announced on, as `<id> <status>` (see the migration
/// `saga_changes_notify`).
pub const SAGA_CHANGED_CHANNEL: &str = "stepwise_saga_changed";

/// One saga as the console lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSaga {
    pub id: Uuid,
    pub skill: String,
    pub skill_version: i32,
    pub status: SagaStatus,
    pub idempotency_key: Option<String>,
    pub started_by: String,
    /// What a waiting saga awaits: `{"step","event","until","prompt","schema"}`.
    pub waiting_for: Option<Value>,
    pub error: Option<Value>,
    pub cursor: i32,
    pub step_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ConsoleRow {
    id: Uuid,
    skill: String,
    skill_version: i32,
    status: String,
    idempotency_key: Option<String>,
    started_by: String,
    waiting_for: Option<Value>,
    error: Option<Value>,
    cursor: i32,
    step_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, skill, skill_version, status, idempotency_key, started_by, \
                       waiting_for, error, cursor, step_count, created_at, updated_at";

impl TryFrom<ConsoleRow> for ConsoleSaga {
    type Error = StoreError;
    fn try_from(r: ConsoleRow) -> Result<Self, StoreError> {
        Ok(Self {
            status: parse("saga status", &r.status)?,
            id: r.id,
            skill: r.skill,
            skill_version: r.skill_version,
            idempotency_key: r.idempotency_key,
            started_by: r.started_by,
            waiting_for: r.waiting_for,
            error: r.error,
            cursor: r.cursor,
            step_count: r.step_count,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// How many sagas of a skill are in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillStatusCount {
    pub skill: String,
    pub status: SagaStatus,
    pub count: i64,
}

/// What happened in one minute: steps that succeeded and sagas that ended, by outcome.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteActivity {
    pub minute: DateTime<Utc>,
    pub steps: i64,
    pub completed: i64,
    pub compensated: i64,
    pub failed: i64,
}

/// Which sagas a page of the console's list shows. Newest first; `after` is the
/// `(created_at, id)` of the last saga of the previous page (keyset paging).
#[derive(Debug, Clone, Default)]
pub struct SagaPageQuery {
    pub status: Option<SagaStatus>,
    pub skill: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// A saga id, an idempotency key (or part of one), or a guest's email.
    pub search: Option<String>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// The sagas an overview lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionList {
    /// `failed`, most recently changed first.
    Failed,
    /// `waiting`, the soonest deadline first.
    Waiting,
    /// pending, running or compensating, the oldest first.
    OldestActive,
}

impl PgStore {
    /// Saga counts by skill and status.
    pub async fn console_counts(&self) -> Result<Vec<SkillStatusCount>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT skill, status, count(*) FROM stepwise.sagas
             GROUP BY skill, status ORDER BY skill, status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(skill, status, count)| {
                Ok(SkillStatusCount {
                    skill,
                    status: parse("saga status", &status)?,
                    count,
                })
            })
            .collect()
    }

    /// Per-minute activity from `since` to now, from the history of the sagas created within
    /// `created_within` before `since` (the history is keyed by saga id, a UUIDv7 holding its
    /// creation time, so this is a range scan of the recent sagas' history, not of all of it).
    /// Steps count from the derived history: a step's success is on its row, not a history row.
    pub async fn console_activity(
        &self,
        since: DateTime<Utc>,
        created_within: chrono::Duration,
    ) -> Result<Vec<MinuteActivity>, StoreError> {
        let oldest = since - created_within;
        Ok(sqlx::query_as(&format!(
            "SELECT date_trunc('minute', at) AS minute,
                    count(*) FILTER (WHERE kind = 'step_succeeded') AS steps,
                    count(*) FILTER (WHERE kind = 'saga_completed') AS completed,
                    count(*) FILTER (WHERE kind = 'saga_compensated') AS compensated,
                    count(*) FILTER (WHERE kind = 'saga_failed') AS failed
             FROM ({HISTORY}) h
             WHERE saga_id >= stepwise.uuid_v7_floor($1) AND at >= $2
               AND kind IN ('step_succeeded', 'saga_completed', 'saga_compensated', 'saga_failed')
             GROUP BY 1 ORDER BY 1"
        ))
        .bind(oldest)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Up to `limit` sagas of one of the overview's lists.
    pub async fn console_attention(
        &self,
        list: AttentionList,
        limit: i64,
    ) -> Result<Vec<ConsoleSaga>, StoreError> {
        let filter = match list {
            AttentionList::Failed => "status = 'failed' ORDER BY updated_at DESC",
            AttentionList::Waiting => "status = 'waiting' ORDER BY wake_at",
            AttentionList::OldestActive => {
                "status IN ('pending', 'running', 'compensating') ORDER BY created_at"
            }
        };
        // `filter` is one of the constants above, not input.
        let rows: Vec<ConsoleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM stepwise.sagas WHERE {filter} LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ConsoleSaga::try_from).collect()
    }

    /// One page of the saga list (see [`SagaPageQuery`]).
    pub async fn console_page(
        &self,
        query: &SagaPageQuery,
    ) -> Result<Vec<ConsoleSaga>, StoreError> {
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "SELECT {COLUMNS} FROM stepwise.sagas WHERE true"
        ));
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(skill) = &query.skill {
            sql.push(" AND skill = ").push_bind(skill.clone());
        }
        if let Some(from) = query.created_from {
            sql.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = query.created_to {
            sql.push(" AND created_at < ").push_bind(to);
        }
        if let Some(search) = query
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match Uuid::parse_str(search) {
                Ok(id) => {
                    sql.push(" AND id = ").push_bind(id);
                }
                Err(_) => {
                    let pattern = format!(
                        "%{}%",
                        search
                            .replace('\\', "\\\\")
                            .replace('%', "\\%")
                            .replace('_', "\\_")
                    );
                    sql.push(" AND (idempotency_key LIKE ")
                        .push_bind(pattern)
                        .push(" OR started_by = ")
                        .push_bind(format!("guest:{search}"))
                        .push(" OR input->>'guest_email' = ")
                        .push_bind(search.to_string())
                        .push(")");
                }
            }
        }
        if let Some((at, id)) = query.after {
            sql.push(" AND (created_at, id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(if query.limit > 0 { query.limit } else { 50 });
        let rows: Vec<ConsoleRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(ConsoleSaga::try_from).collect()
    }
}
