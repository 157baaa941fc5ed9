//! Read-only statistics over the engine's tables for benchmarks and diagnostics: counts, the
//! attempts a set of sagas made, their timings, and PostgreSQL's per-table health counters.
//! Everything here is read through the store so that no other crate queries the engine's
//! tables; the one write is [`PgStore::vacuum_analyze`], a maintenance command.

use super::reads::{HISTORY, STEPS_VIEW};
use super::PgStore;
use crate::error::StoreError;
use crate::model::EventKind;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// When one saga was created, started its first step, and last changed (its end, once
/// terminal).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SagaTimes {
    pub created_at: DateTime<Utc>,
    /// When the first step's action returned (the worker's clock, before its commit).
    pub first_step_finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// PostgreSQL's activity counters of one of the engine's tables (`pg_stat_user_tables`).
#[derive(Debug, Clone, Serialize)]
pub struct TableHealth {
    pub table: String,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    pub updates: i64,
    pub hot_updates: i64,
    /// Share of updates that were HOT (no index touched), 0..1.
    pub hot_ratio: Option<f64>,
    pub autovacuum_count: i64,
}

impl PgStore {
    /// How many sagas are not terminal yet.
    ///
    /// Read through the partial index of unfinished sagas: without statistics (a fresh
    /// database, or a server with autovacuum off) the planner would scan every saga ever run,
    /// and callers poll this many times a second. Rolled back, so it adds nothing to the
    /// server's commit counts.
    pub async fn unfinished_count(&self) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas WHERE wake_at IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(n)
    }

    /// How many sagas reached a terminal state.
    pub async fn finished_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM stepwise.sagas WHERE status IN ('completed', 'compensated', 'failed')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// How many history entries of `kind` `actor` made, across every saga: how a caller
    /// watches one worker make progress without reading each saga's history. Counted in the
    /// derived history (`reads.rs`), where a step's start and success may live on its row.
    pub async fn event_count(&self, kind: EventKind, actor: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ({HISTORY}) h WHERE kind = $1 AND actor = $2"
        ))
        .bind(kind.as_str())
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }

    /// How many step successes the history holds (since `since`, when given), across every
    /// saga: the successes on the steps' rows and the `step_succeeded` rows of
    /// `stepwise.events` (a fork's copied steps, databases older than docs/storage.md).
    pub async fn steps_succeeded(&self, since: Option<DateTime<Utc>>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ({HISTORY}) h
             WHERE kind = 'step_succeeded' AND ($1::timestamptz IS NULL OR at > $1)"
        ))
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Steps, across every saga, whose history shows them succeeding more than once or
    /// starting again after they succeeded: a step's effect committed twice, or an attempt
    /// run after its success was committed. 0 when fencing held. A step's row keeps only its
    /// last success, so the second condition is what sees a step run again after a success
    /// that the row then recorded once.
    pub async fn steps_succeeded_twice(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
                 SELECT saga_id, step
                 FROM ({HISTORY}) h
                 WHERE kind IN ('step_started', 'step_succeeded')
                 GROUP BY saga_id, step
                 HAVING count(*) FILTER (WHERE kind = 'step_succeeded') > 1
                     OR max(place) FILTER (WHERE kind = 'step_started')
                        > min(place) FILTER (WHERE kind = 'step_succeeded')) twice"
        ))
        .fetch_one(&self.pool)
        .await?)
    }

    /// How many unfinished sagas have added nothing to their history after `at` (no step
    /// began or ended, nothing was recorded): the ones not moving.
    pub async fn stalled_since(&self, at: DateTime<Utc>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM stepwise.sagas s
             WHERE s.status NOT IN ('completed', 'compensated', 'failed')
               AND NOT EXISTS (SELECT 1 FROM ({HISTORY}) h WHERE h.saga_id = s.id AND h.at > $1)"
        ))
        .bind(at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every attempt of an action or a compensation that `ids` made (the attempt in flight
    /// included).
    pub async fn attempts_executed(&self, ids: &[Uuid]) -> Result<i64, StoreError> {
        let n: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT sum(attempts + compensation_attempts)::bigint FROM ({STEPS_VIEW}) v
             WHERE saga_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unwrap_or(0))
    }

    /// The latest `updated_at` of `ids` (for terminal sagas: when the last one ended).
    pub async fn last_updated(&self, ids: &[Uuid]) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT max(updated_at) FROM stepwise.sagas WHERE id = ANY($1)")
                .bind(ids)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The timings of each of `ids` that exists, in no particular order.
    pub async fn saga_times(&self, ids: &[Uuid]) -> Result<Vec<SagaTimes>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT s.created_at, v.finished_at AS first_step_finished_at, s.updated_at
             FROM stepwise.sagas s
             JOIN ({STEPS_VIEW}) v ON v.saga_id = s.id AND v.position = 0
             WHERE s.id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// `VACUUM (ANALYZE)` of the sagas and steps tables (the history is append-only).
    pub async fn vacuum_analyze(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("VACUUM (ANALYZE) stepwise.sagas, stepwise.steps")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The counters of the sagas, steps and history tables (partitions included) that hold
    /// rows, fresh (the statistics snapshot is cleared first).
    pub async fn table_health(&self) -> Result<Vec<TableHealth>, StoreError> {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&self.pool)
            .await?;
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count
             FROM pg_stat_user_tables
             WHERE schemaname = 'stepwise' AND (relname IN ('sagas', 'steps') OR relname LIKE 'events%')
               AND n_live_tup + n_dead_tup > 0
             ORDER BY relname",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(table, live, dead, upd, hot, av)| TableHealth {
                table,
                live_tuples: live,
                dead_tuples: dead,
                updates: upd,
                hot_updates: hot,
                hot_ratio: (upd > 0).then(|| hot as f64 / upd as f64),
                autovacuum_count: av,
            })
            .collect())
    }
}
