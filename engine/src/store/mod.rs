//! The PostgreSQL store: every SQL statement the engine runs lives in this module.
//!
//! Writes made on behalf of a worker go through [`PgStore::commit`], which conditions the whole
//! transaction on the saga's fencing token: a worker that lost its lease gets
//! [`StoreError::LostLease`] and changes nothing.

mod announce;
mod claim;
mod claim_rows;
mod commit;
mod console;
mod db_pool;
mod group_commit;
mod history;
pub mod multi_host;
mod old_layout;
mod operator;
mod parked;
mod prune;
mod queries;
mod reads;
mod replica;
mod rows;
mod stats;
mod transition;
mod waits;
mod warm_up;

pub use claim::{ClaimedSaga, KnownSkills, StepState};
pub use console::{
    AttentionList, ConsoleSaga, MinuteActivity, SagaPageQuery, SkillStatusCount,
    SAGA_CHANGED_CHANNEL,
};
pub use db_pool::{pool_options, pooled_options, DbPool, Pooling};
pub use operator::{OperatorEvent, ReplayConflict, ReplaySaga};
pub use prune::{HistoryPartition, PruneBatch};
pub use queries::{InsertConflict, NewSaga, StartOutcome};
pub use stats::{SagaTimes, TableHealth};
pub use transition::{Committed, InFlight, Lease, NewEvent, StepChange, Transition, WakeChange};
pub use waits::{DeliveryOutcome, StoredDelivery};

use crate::error::StoreError;
use crate::migrations::SchemaMigrations;
use sqlx::postgres::{PgConnectOptions, PgListener};
use std::str::FromStr;

/// The channel workers LISTEN on; a NOTIFY means "new or due work may be waiting".
pub const WORK_CHANNEL: &str = "stepwise_work";

/// The engine's migrations (`engine/migrations/`), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The engine's schema `stepwise` and its migrations, with their history in
/// `stepwise._sqlx_migrations` (see [`crate::migrations`]). [`PgStore::migrate`] applies them.
pub const MIGRATIONS: SchemaMigrations = SchemaMigrations::new("stepwise", &MIGRATOR);

/// How the store reaches PostgreSQL (docs/operations.md, "Beyond one machine").
#[derive(Debug, Clone, Default)]
pub struct Connections {
    /// `DATABASE_URL`: every read and write, possibly through PgBouncer.
    pub url: String,
    /// `STEPWISE_LISTEN_URL`: a direct connection to the primary for LISTEN (and migrations),
    /// needed when `url` goes through a transaction pooler.
    pub listen_url: Option<String>,
    /// `STEPWISE_PREPARED_STATEMENTS=off`: `url` goes through a transaction pooler.
    pub pooling: Pooling,
    /// `STEPWISE_READ_URL`: a streaming replica for read-only work (see [`PgStore::reads`]).
    pub read_url: Option<String>,
    /// How long a read waits for the replica to catch up before going to the primary
    /// (`STEPWISE_READ_MAX_WAIT_MS`).
    pub read_max_wait: std::time::Duration,
}

impl Connections {
    /// Everything over one direct URL.
    pub fn direct(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            read_max_wait: DEFAULT_READ_MAX_WAIT,
            ..Self::default()
        }
    }
}

/// How long a read waits for the replica by default.
pub const DEFAULT_READ_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Handle to the engine's tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: DbPool,
    /// Where LISTEN connects (`STEPWISE_LISTEN_URL`), when not through `pool`: LISTEN does not
    /// survive a transaction pooler (docs/operations.md, "PgBouncer").
    listen: Option<PgConnectOptions>,
    /// The streaming replica read-only work goes to (`STEPWISE_READ_URL`).
    read: Option<replica::ReadReplica>,
    /// Set on a worker's copy when its step commits are grouped across sagas.
    group: Option<std::sync::Arc<group_commit::GroupCommit>>,
    /// Announces the status changes this store's workers commit (shared by its copies).
    announcer: announce::Announcer,
}

impl PgStore {
    pub fn new(pool: impl Into<DbPool>) -> Self {
        Self {
            pool: pool.into(),
            listen: None,
            read: None,
            group: None,
            announcer: announce::Announcer::default(),
        }
    }

    /// A copy of this store whose hot-path commits (step results, step and compensation
    /// starts) are grouped across sagas: up to `max_batch` sagas' transitions in one statement
    /// and one commit, by `committers` concurrent tasks. Each caller still waits for its own
    /// commit. Needs a Tokio runtime; the tasks end when every copy is dropped.
    pub fn with_group_commit(&self, max_batch: usize, committers: usize) -> Self {
        let direct = Self {
            group: None,
            ..self.clone()
        };
        Self {
            pool: self.pool.clone(),
            listen: self.listen.clone(),
            read: self.read.clone(),
            group: Some(group_commit::GroupCommit::start(
                direct, max_batch, committers,
            )),
            announcer: self.announcer.clone(),
        }
    }

    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(&Connections::direct(url), max_connections).await
    }

    /// Connects to `connections.url` with a pool of at most `max_connections`, set up for
    /// `connections.pooling`; LISTEN goes to `connections.listen_url` when given.
    pub async fn connect_with(
        connections: &Connections,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = match multi_host::parse(&connections.url)? {
            Some((hosts, attrs)) => {
                let hosts = hosts
                    .into_iter()
                    .map(|h| h.application_name("stepwise"))
                    .collect();
                multi_host::connect(
                    hosts,
                    attrs,
                    max_connections,
                    connections.pooling,
                    std::time::Duration::from_secs(30),
                )
                .await?
            }
            None => {
                let options =
                    PgConnectOptions::from_str(&connections.url)?.application_name("stepwise");
                DbPool::connect(options, max_connections, connections.pooling).await?
            }
        };
        let listen = match &connections.listen_url {
            Some(url) => Some(PgConnectOptions::from_str(url)?.application_name("stepwise-listen")),
            None => None,
        };
        // The replica is connected lazily: a replica that is down leaves reads on the primary.
        let read = match &connections.read_url {
            Some(url) => Some(replica::ReadReplica {
                pool: DbPool::connect_lazy(
                    PgConnectOptions::from_str(url)?.application_name("stepwise-read"),
                    max_connections,
                    connections.pooling,
                ),
                max_wait: connections.read_max_wait,
            }),
            None => None,
        };
        Ok(Self {
            pool,
            listen,
            read,
            group: None,
            announcer: announce::Announcer::default(),
        })
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// A LISTEN connection: to `STEPWISE_LISTEN_URL` when set, else one of the pool's.
    pub async fn listener(&self) -> Result<PgListener, StoreError> {
        match &self.listen {
            // A pool of one per listener: it only reconnects the listener.
            Some(options) => {
                let pool = pool_options(1).connect_lazy_with(options.clone());
                Ok(PgListener::connect_with(&pool).await?)
            }
            None => Ok(PgListener::connect_with(self.pool.raw()).await?),
        }
    }

    /// Applies the engine's pending migrations (safe to run concurrently, see
    /// [`crate::migrations`]). A database made by the 0.x layout, with one shared migration
    /// history, is refused with [`crate::MigrationError::OldLayout`] before anything is
    /// written.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        old_layout::refuse_old_layout(self.pool.raw()).await?;
        MIGRATIONS.apply(self.pool.raw()).await?;
        // Saga ids are time-ordered (UUIDv7): keep the history's monthly partitions ahead.
        self.ensure_history_partitions(chrono::Utc::now()).await?;
        Ok(())
    }
}
