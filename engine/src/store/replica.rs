//! Reads from a streaming replica (`STEPWISE_READ_URL`, docs/operations.md, "Read replicas").
//!
//! A read goes to the replica only once the replica has replayed everything the primary had
//! written when the read began: the primary's `pg_current_wal_lsn()` (one trivial statement),
//! then the replica's `pg_last_wal_replay_lsn()` until it reaches it. So whatever any process
//! wrote before (a start followed by its status, an operator's retry followed by the page) is
//! there. A replica further behind than its wait, or down, gives the read back to the primary.

use super::reads::HISTORY;
use super::{DbPool, PgStore};
use crate::error::StoreError;
use std::time::Duration;
use tracing::debug;

/// The replica's pool and how long a read waits for it to catch up.
#[derive(Debug, Clone)]
pub(super) struct ReadReplica {
    pub(super) pool: DbPool,
    pub(super) max_wait: Duration,
}

impl PgStore {
    /// The store to read from: the replica once it has caught up with the primary (see the
    /// module documentation), else this store.
    pub async fn reads(&self) -> PgStore {
        let Some(replica) = &self.read else {
            return self.clone();
        };
        match self.replica_caught_up(replica).await {
            Ok(true) => PgStore {
                pool: replica.pool.clone(),
                listen: None,
                read: None,
                group: None,
                announcer: Default::default(),
            },
            Ok(false) => {
                debug!("the read replica is behind; reading from the primary");
                self.clone()
            }
            Err(error) => {
                debug!(%error, "the read replica does not answer; reading from the primary");
                self.clone()
            }
        }
    }

    /// Whether a read replica is configured.
    pub fn has_read_replica(&self) -> bool {
        self.read.is_some()
    }

    async fn replica_caught_up(&self, replica: &ReadReplica) -> Result<bool, StoreError> {
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await?;
        let deadline = tokio::time::Instant::now() + replica.max_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            // On a server that is not a standby there is nothing to replay: it is current.
            let caught_up: bool = sqlx::query_scalar(
                "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, NOT pg_is_in_recovery())",
            )
            .bind(&target)
            .fetch_one(&replica.pool)
            .await?;
            if caught_up {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Whether this store's server is a standby (`pg_is_in_recovery()`).
    pub async fn is_standby(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// How the first streaming standby of this primary replicates (`sync`, `async`, ...:
    /// `pg_stat_replication.sync_state`), None before one streams.
    pub async fn replication_state(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming' LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Makes a named restore point (`pg_create_restore_point`) and switches to a new WAL file
    /// so the archive has it; returns how many sagas exist at that point.
    pub async fn restore_point(&self, name: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM stepwise.sagas")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_create_restore_point($1)")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&self.pool)
            .await?;
        Ok(sagas)
    }

    /// When the latest entry of any saga's history was recorded, if any (a step's start or
    /// success counts: the history is derived, see `reads.rs`).
    pub async fn latest_event_at(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        Ok(
            sqlx::query_scalar(&format!("SELECT max(at) FROM ({HISTORY}) h"))
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
