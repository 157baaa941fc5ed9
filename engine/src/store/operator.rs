//! The statements behind the operator API (replays, cancellation, pruning) and the queue
//! sample behind the metrics. Parameterized throughout; kept apart from the worker's hot path.

use super::PgStore;
use crate::error::StoreError;
use crate::metrics::QueueStats;
use chrono::{DateTime, Utc};

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
}
