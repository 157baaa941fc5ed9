//! The audit table: one row appended per call (see [`crate::audit`]), read back newest first.

use crate::audit::{AuditEntry, Outcome};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A stored row, as `stepwise audit --json` prints it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub principal: String,
    pub transport: String,
    pub tool: String,
    pub saga_id: Option<Uuid>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub duration_ms: i32,
}

/// Filters of `stepwise audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tool: Option<String>,
    pub principal: Option<String>,
    pub saga_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows, newest first (default 100).
    pub limit: i64,
}

/// The audit table (append-only).
#[derive(Debug, Clone)]
pub struct AuditStore {
    pool: PgPool,
}

impl AuditStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn record(&self, entry: &AuditEntry) -> Result<(), sqlx::Error> {
        // The CHECK constraint wants a code for every failure; never lose a row over it.
        let error_code = match (entry.outcome, &entry.error_code) {
            (Outcome::Ok | Outcome::Pending, _) => None,
            (_, Some(code)) => Some(code.clone()),
            (outcome, None) => Some(outcome.as_str().to_string()),
        };
        sqlx::query(
            "INSERT INTO mcp.audit
                 (at, principal, transport, tool, saga_id, outcome, error_code, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Utc::now())
        .bind(&entry.principal)
        .bind(entry.transport)
        .bind(&entry.tool)
        .bind(entry.saga_id)
        .bind(entry.outcome.as_str())
        .bind(error_code)
        .bind(entry.duration_ms.max(0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Rows matching `filter`, newest first.
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, at, principal, transport, tool, saga_id, outcome, error_code, duration_ms
             FROM mcp.audit
             WHERE ($1::text IS NULL OR tool = $1)
               AND ($2::text IS NULL OR principal = $2)
               AND ($3::uuid IS NULL OR saga_id = $3)
               AND ($4::timestamptz IS NULL OR at >= $4)
             ORDER BY id DESC
             LIMIT $5",
        )
        .bind(&filter.tool)
        .bind(&filter.principal)
        .bind(filter.saga_id)
        .bind(filter.since)
        .bind(if filter.limit > 0 { filter.limit } else { 100 })
        .fetch_all(&self.pool)
        .await
    }
}
