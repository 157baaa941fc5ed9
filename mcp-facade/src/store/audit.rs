//! The audit table: one row appended per call (see [`crate::audit`]), read back newest first,
//! partitioned by month and pruned by whole partitions (docs/mcp.md, Audit).

use crate::audit::{AuditEntry, Outcome};
use chrono::{DateTime, Utc};
use serde::Serialize;
use stepwise_engine::DbPool;
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

/// What `stepwise audit prune` removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditPruneReport {
    pub dry_run: bool,
    pub cutoff: DateTime<Utc>,
    /// Rows removed: those of the dropped partitions plus those deleted one by one.
    pub rows: u64,
    /// Rows deleted one by one from the month the cutoff falls in.
    pub rows_deleted: u64,
    /// Monthly partitions dropped whole (`audit_YYYY_MM`).
    pub partitions_dropped: Vec<String>,
}

/// The longest `tool` the table keeps (its CHECK); a longer name (an unknown tool a client
/// made up) is cut to it rather than losing the row.
const TOOL_MAX_CHARS: usize = 200;

/// The audit table (append-only).
#[derive(Debug, Clone)]
pub struct AuditStore {
    pool: DbPool,
}

impl AuditStore {
    pub fn new(pool: impl Into<DbPool>) -> Self {
        Self { pool: pool.into() }
    }

    pub async fn record(&self, entry: &AuditEntry) -> Result<(), sqlx::Error> {
        // The CHECK constraint wants a code for every failure; never lose a row over it.
        let error_code = match (entry.outcome, &entry.error_code) {
            (Outcome::Ok | Outcome::Pending, _) => None,
            (_, Some(code)) => Some(code.clone()),
            (outcome, None) => Some(outcome.as_str().to_string()),
        };
        let tool: String = if entry.tool.is_empty() {
            "(empty)".to_string()
        } else {
            entry.tool.chars().take(TOOL_MAX_CHARS).collect()
        };
        let at = Utc::now();
        let insert = || {
            sqlx::query(
                "INSERT INTO mcp.audit
                     (at, principal, transport, tool, saga_id, outcome, error_code, duration_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(at)
            .bind(&entry.principal)
            .bind(entry.transport)
            .bind(&tool)
            .bind(entry.saga_id)
            .bind(entry.outcome.as_str())
            .bind(&error_code)
            .bind(entry.duration_ms.max(0))
            .execute(&self.pool)
        };
        match insert().await {
            Ok(_) => Ok(()),
            // No partition for this month yet (a process running since last month): make it
            // and the next, then write again.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
                self.ensure_partitions(at).await?;
                insert().await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the monthly partitions of `now`'s month and the next one, if missing (every
    /// migrate does; so does a write that found no partition). Returns how many it made.
    pub async fn ensure_partitions(&self, now: DateTime<Utc>) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT mcp.ensure_audit_partitions($1, $1 + interval '1 month')")
            .bind(now)
            .fetch_one(&self.pool)
            .await
    }

    /// Removes the rows older than `cutoff`: drops the monthly partitions wholly before it and
    /// deletes the older rows of the month it falls in (the only deletion the append-only
    /// trigger lets through). With `dry_run`, only counts.
    pub async fn prune(
        &self,
        cutoff: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<AuditPruneReport, sqlx::Error> {
        if dry_run {
            let partitions: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text
                 FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'mcp.audit'::regclass
                   AND c.relname ~ '^audit_[0-9]{4}_[0-9]{2}$'
                   AND (to_date(substr(c.relname, 7), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC')
                       + interval '1 month' <= $1
                 ORDER BY c.relname",
            )
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM mcp.audit WHERE at < $1")
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await?;
            return Ok(AuditPruneReport {
                dry_run,
                cutoff,
                rows: rows.max(0) as u64,
                rows_deleted: 0,
                partitions_dropped: partitions,
            });
        }
        let (partitions, dropped, deleted): (Vec<String>, i64, i64) = sqlx::query_as(
            "SELECT partitions_dropped, rows_dropped, rows_deleted FROM mcp.prune_audit($1)",
        )
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?;
        Ok(AuditPruneReport {
            dry_run,
            cutoff,
            rows: (dropped + deleted).max(0) as u64,
            rows_deleted: deleted.max(0) as u64,
            partitions_dropped: partitions,
        })
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
