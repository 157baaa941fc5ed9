//! Pruning: terminal sagas deleted after their retention, a month's history partition
//! dropped whole when none of its sagas stays (docs/operators.md).

use super::PgStore;
use crate::error::StoreError;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One monthly partition of the history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryPartition {
    pub name: String,
    pub lower: Uuid,
    pub upper: Uuid,
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneBatch {
    pub sagas: u64,
    /// History rows deleted one by one (rows of dropped partitions are not counted).
    pub events: u64,
}

impl PgStore {
    /// Creates the monthly history partitions around `now` (a month back, two ahead) that do
    /// not exist yet. Returns how many it created.
    pub async fn ensure_history_partitions(&self, now: DateTime<Utc>) -> Result<i32, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT stepwise.ensure_event_partitions($1 - interval '1 month', $1 + interval '2 months')",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Completed and compensated sagas that finished before `cutoff`: what a prune would
    /// delete. `failed` sagas are kept: they wait for an operator.
    pub async fn count_prunable(&self, cutoff: DateTime<Utc>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM stepwise.sagas
             WHERE status IN ('completed', 'compensated')
               AND created_at < $1 AND updated_at < $1",
        )
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The monthly history partitions wholly older than `cutoff` in which no saga would
    /// survive a prune at `cutoff`: they can be dropped whole.
    pub async fn droppable_history_partitions(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<HistoryPartition>, StoreError> {
        Ok(sqlx::query_as(
            "WITH parts AS (
                 SELECT c.relname::text AS name,
                        to_date(substr(c.relname, 8), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC' AS month
                 FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'stepwise.events'::regclass
                   AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'),
             bounds AS (
                 SELECT name, month,
                        stepwise.uuid_v7_floor(month) AS lower,
                        stepwise.uuid_v7_floor(month + interval '1 month') AS upper
                 FROM parts)
             SELECT name, lower, upper FROM bounds b
             WHERE b.month + interval '1 month' <= $1
               AND NOT EXISTS (
                   SELECT 1 FROM stepwise.sagas s
                   WHERE s.id >= b.lower AND s.id < b.upper
                     AND (s.status NOT IN ('completed', 'compensated')
                          OR s.updated_at >= $1))
             ORDER BY month",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Prunes one month at once: deletes its sagas (steps cascade) and drops its history
    /// partition, in one transaction. Returns `None`, changing nothing, if a saga of that
    /// month must stay after all (it was retried meanwhile) or the partition lock could not be
    /// had quickly (workers are never stalled behind a prune); those sagas are then pruned row
    /// by row.
    pub async fn prune_history_partition(
        &self,
        partition: &HistoryPartition,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM stepwise.sagas
             WHERE id >= $1 AND id < $2
               AND status IN ('completed', 'compensated') AND updated_at < $3",
        )
        .bind(partition.lower)
        .bind(partition.upper)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM stepwise.sagas WHERE id >= $1 AND id < $2)",
        )
        .bind(partition.lower)
        .bind(partition.upper)
        .fetch_one(&mut *tx)
        .await?;
        if left {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        // The name comes from pg_class and matched ^events_[0-9]{4}_[0-9]{2}$.
        let dropped = sqlx::query(&format!(
            "DROP TABLE stepwise.\"{}\"",
            partition.name.replace('"', "")
        ))
        .execute(&mut *tx)
        .await;
        match dropped {
            Ok(_) => {
                tx.commit().await?;
                Ok(Some(deleted))
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                tx.rollback().await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes up to `limit` terminal sagas that finished before `cutoff`, with their steps and
    /// history rows, in one statement. Rows locked by someone else are skipped this time.
    pub async fn prune_batch(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<PruneBatch, StoreError> {
        let (sagas, events): (i64, i64) = sqlx::query_as(
            "WITH doomed AS (
                 SELECT id FROM stepwise.sagas
                 WHERE status IN ('completed', 'compensated')
                   AND created_at < $1 AND updated_at < $1
                 ORDER BY created_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED),
             ev AS (
                 DELETE FROM stepwise.events e USING doomed
                 WHERE e.saga_id = doomed.id RETURNING 1),
             gone AS (
                 DELETE FROM stepwise.sagas s USING doomed
                 WHERE s.id = doomed.id RETURNING 1)
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM ev)",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_one(&self.pool)
        .await?;
        Ok(PruneBatch {
            sagas: sagas as u64,
            events: events as u64,
        })
    }
}
