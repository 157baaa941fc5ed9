//! The PostgreSQL store: every SQL statement the engine runs lives in this module.
//!
//! Writes made on behalf of a worker go through [`PgStore::commit`], which conditions the whole
//! transaction on the saga's fencing token: a worker that lost its lease gets
//! [`StoreError::LostLease`] and changes nothing.

mod console;
mod group_commit;
mod old_layout;
mod operator;
mod queries;
mod rows;
mod stats;
mod waits;

pub use console::{
    AttentionList, ConsoleSaga, MinuteActivity, SagaPageQuery, SkillStatusCount,
    SAGA_CHANGED_CHANNEL,
};
pub use operator::{HistoryPartition, OperatorEvent, PruneBatch, ReplayConflict, ReplaySaga};
pub use queries::{
    ClaimedSaga, Committed, InsertConflict, KnownSkills, Lease, NewEvent, NewSaga, StartOutcome,
    StepChange, StepState, Transition, WakeChange,
};
pub use stats::{SagaTimes, TableHealth};
pub use waits::{DeliveryOutcome, StoredDelivery};

use crate::error::StoreError;
use crate::migrations::SchemaMigrations;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The channel workers LISTEN on; a NOTIFY means "new or due work may be waiting".
pub const WORK_CHANNEL: &str = "stepwise_work";

/// The engine's migrations (`engine/migrations/`), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The engine's schema `stepwise` and its migrations, with their history in
/// `stepwise._sqlx_migrations` (see [`crate::migrations`]). [`PgStore::migrate`] applies them.
pub const MIGRATIONS: SchemaMigrations = SchemaMigrations::new("stepwise", &MIGRATOR);

/// Handle to the engine's tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Set on a worker's copy when its step commits are grouped across sagas.
    group: Option<std::sync::Arc<group_commit::GroupCommit>>,
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, group: None }
    }

    /// A copy of this store whose hot-path commits (step results, step and compensation
    /// starts) are grouped across sagas: up to `max_batch` sagas' transitions in one statement
    /// and one commit, by `committers` concurrent tasks. Each caller still waits for its own
    /// commit. Needs a Tokio runtime; the tasks end when every copy is dropped.
    pub fn with_group_commit(&self, max_batch: usize, committers: usize) -> Self {
        let direct = Self::new(self.pool.clone());
        Self {
            pool: self.pool.clone(),
            group: Some(group_commit::GroupCommit::start(
                direct, max_batch, committers,
            )),
        }
    }

    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("stepwise");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self::new(pool))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the engine's pending migrations (safe to run concurrently, see
    /// [`crate::migrations`]). A database made by the 0.x layout, with one shared migration
    /// history, is refused with [`crate::MigrationError::OldLayout`] before anything is
    /// written.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        old_layout::refuse_old_layout(&self.pool).await?;
        MIGRATIONS.apply(&self.pool).await?;
        // Saga ids are time-ordered (UUIDv7): keep the history's monthly partitions ahead.
        self.ensure_history_partitions(chrono::Utc::now()).await?;
        Ok(())
    }
}
