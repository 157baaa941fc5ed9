//! The stores' connection pool, and how it runs statements when `DATABASE_URL` goes through a
//! transaction-pooling PgBouncer (docs/operations.md, "PgBouncer").
//!
//! PgBouncer 1.18 in `pool_mode = transaction` gives its server connection back at every
//! ReadyForQuery sent outside a transaction. sqlx 0.8 runs a statement with arguments in two
//! round trips (Parse, Describe, Sync; then Bind, Execute, Sync) and names the statement
//! (`sqlx_s_N`) even with its statement cache off. Outside a transaction the second round trip
//! may reach a server connection that never saw the first ("prepared statement sqlx_s_N does
//! not exist"), or one where another client left a statement of the same name ("... already
//! exists"). With [`Pooling::Transaction`] (`STEPWISE_PREPARED_STATEMENTS=off`) the statement
//! cache is off and every statement run on the pool runs in a transaction of its own, opened
//! with `DEALLOCATE ALL` (the names a previous client left on that server connection) and
//! committed before the caller sees the result; [`DbPool::begin`] opens its transactions the
//! same way.

use super::parked::{Parked, Taken};
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement};
use sqlx::{Connection, Describe, Either, Execute, Executor, PgPool, Postgres, Transaction};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// How `DATABASE_URL`'s connections reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Directly, or through a pooler that keeps a server connection per client connection
    /// (PgBouncer's `pool_mode = session`): sqlx's prepared-statement cache is used.
    #[default]
    Direct,
    /// Through a pooler that may switch server connections between transactions (PgBouncer's
    /// `pool_mode = transaction`): no statement cache, every statement in a transaction.
    Transaction,
}

/// What every transaction opened through a transaction pooler starts with.
const POOLED_BEGIN: &str = "DEALLOCATE ALL; BEGIN";

/// How [`DbPool::begin_snapshot`] starts its transactions, directly and through a transaction
/// pooler. `BEGIN` comes first there: the statements of one message run in one transaction,
/// and its isolation level can no longer be set once `DEALLOCATE` has run in it.
const SNAPSHOT_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
const POOLED_SNAPSHOT_BEGIN: &str =
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; DEALLOCATE ALL";

/// A PostgreSQL pool that knows whether a transaction pooler stands between it and the server.
/// `&DbPool` is an sqlx [`Executor`], like `&PgPool`. Cheap to clone: clones share the pool
/// and its parked connections (super::parked).
#[derive(Debug, Clone)]
pub struct DbPool {
    pool: PgPool,
    pooling: Pooling,
    parked: Arc<Parked>,
}

impl From<PgPool> for DbPool {
    fn from(pool: PgPool) -> Self {
        Self::new(pool, Pooling::Direct)
    }
}

/// A pooled connection idle for less than this is handed out without a check: it was working
/// a moment ago, and a statement on a connection that broke since fails like one that breaks
/// while it runs.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The options of every engine pool, with at most `max_connections`. sqlx pings each
/// connection as it is taken from the pool by default: a second round trip for every
/// statement, and a step commit is one statement (BENCHMARKS.md). Only connections idle for
/// [`CHECK_AFTER_IDLE`] or more are pinged here, which is where a restarted server or a cut
/// link shows; a failed ping discards the connection and the pool takes or opens another.
/// Each new connection is warmed up first ([`super::warm_up`]).
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        // No idle timeout and no maximum lifetime, hence no pool maintenance task: in sqlx
        // 0.8 that task can read a momentarily wrapped idle count and spin on a core forever
        // (sqlx issue 3645, fixed in 0.9; seen here in a 30-minute soak, docs/reliability.md).
        // A connection lives until it fails; the check below replaces the ones that broke
        // while idle.
        .idle_timeout(None)
        .max_lifetime(None)
        // Compiled and planned before it is handed out, not on its first requests
        // (super::warm_up).
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                super::warm_up::warm_up_or_log(conn).await;
                Ok(())
            })
        })
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

impl DbPool {
    /// A pool of at most `max_connections` to `options`, set up for `pooling`; connects once
    /// so a wrong URL fails here.
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
        pooling: Pooling,
    ) -> Result<Self, sqlx::Error> {
        let pool = pool_options(max_connections)
            .connect_with(pooled_options(options, pooling))
            .await?;
        Ok(Self::new(pool, pooling))
    }

    fn new(pool: PgPool, pooling: Pooling) -> Self {
        let parked = Parked::for_pool(&pool);
        Self {
            pool,
            pooling,
            parked,
        }
    }

    /// Like [`DbPool::connect`], without connecting until the first statement.
    pub fn connect_lazy(options: PgConnectOptions, max_connections: u32, pooling: Pooling) -> Self {
        let pool =
            pool_options(max_connections).connect_lazy_with(pooled_options(options, pooling));
        Self::new(pool, pooling)
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The sqlx pool underneath. Statements run on it directly bypass [`Pooling::Transaction`]'s
    /// precautions: use it only for what needs no statement (sizes, closing) or when the pool
    /// is direct.
    pub fn raw(&self) -> &PgPool {
        &self.pool
    }

    /// A connection: a parked one if there is one (super::parked; checked first if it has been
    /// idle for [`CHECK_AFTER_IDLE`], like sqlx's idle ones, see [`pool_options`]), else one of
    /// sqlx's pool. Dropped, it goes back to sqlx's pool.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        Ok(self.take().await?.connection)
    }

    async fn take(&self) -> Result<Taken, sqlx::Error> {
        while let Some(mut taken) = self.parked.take() {
            if taken.idle_for < CHECK_AFTER_IDLE {
                return Ok(taken);
            }
            match taken.connection.ping().await {
                Ok(()) => return Ok(taken),
                Err(error) => {
                    debug!(%error, "a parked connection broke while idle; closing it");
                    taken.connection.close_on_drop();
                }
            }
        }
        Ok(Taken {
            connection: self.pool.acquire().await?,
            out_since: Instant::now(),
            idle_for: Duration::ZERO,
        })
    }

    /// How many connections are parked (tests hold the pool to its rules with it).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Starts a transaction, as [`PgPool::begin`] does.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let conn = self.acquire().await?;
        let begin = match self.pooling {
            Pooling::Direct => None,
            Pooling::Transaction => Some(Cow::Borrowed(POOLED_BEGIN)),
        };
        Transaction::begin(conn, begin).await
    }

    /// Starts a read-only transaction whose statements all see one snapshot (`REPEATABLE
    /// READ`): for readers that assemble one answer from several statements while workers
    /// commit.
    pub async fn begin_snapshot(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let conn = self.acquire().await?;
        let begin = match self.pooling {
            Pooling::Direct => SNAPSHOT_BEGIN,
            Pooling::Transaction => POOLED_SNAPSHOT_BEGIN,
        };
        Transaction::begin(conn, Some(Cow::Borrowed(begin))).await
    }

    /// Where the pool's new connections go from now on (the connections open stay).
    pub fn set_connect_options(&self, options: PgConnectOptions) {
        self.pool
            .set_connect_options(pooled_options(options, self.pooling));
    }

    /// Closes the pool, waiting for the connections in use (sqlx's [`PgPool::close`]; parked
    /// ones are not in use).
    pub async fn close(&self) {
        // Marks the pool closed first: a statement ending meanwhile does not park.
        let closing = self.pool.close();
        self.parked.release_all();
        closing.await;
    }
}

/// The connect options for `pooling`: through a transaction pooler, no statement cache and no
/// `extra_float_digits` startup parameter (PgBouncer refuses startup parameters it does not
/// know unless told to ignore them; PostgreSQL 12 and later print floats exactly anyway).
pub fn pooled_options(options: PgConnectOptions, pooling: Pooling) -> PgConnectOptions {
    match pooling {
        Pooling::Direct => options,
        Pooling::Transaction => options.statement_cache_capacity(0).extra_float_digits(None),
    }
}

/// Runs `query` on a connection of `pool`, read to its end before the rows are handed over:
/// directly, parking the connection afterwards (super::parked), or through a transaction pooler in
/// a transaction of its own, committed (or rolled back on error) first.
async fn run_to_end<'q, E>(
    pool: DbPool,
    query: E,
) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error>
where
    E: 'q + Execute<'q, Postgres>,
{
    match pool.pooling {
        Pooling::Direct => {
            let Taken {
                mut connection,
                out_since,
                ..
            } = pool.take().await?;
            let results: Vec<_> = (&mut *connection).fetch_many(query).try_collect().await?;
            pool.parked.park(connection, out_since, &pool.pool);
            Ok(results)
        }
        Pooling::Transaction => {
            let conn = pool.acquire().await?;
            let mut tx = Transaction::begin(conn, Some(Cow::Borrowed(POOLED_BEGIN))).await?;
            let results: Vec<_> = (&mut *tx).fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok(results)
        }
    }
}

impl<'p> Executor<'p> for &'_ DbPool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::stream::BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        futures::stream::once(run_to_end(self.clone(), query))
            .map_ok(|rows| futures::stream::iter(rows.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::future::BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(run_to_end(self.clone(), query).and_then(|rows| async move {
            Ok(rows.into_iter().find_map(|r| match r {
                Either::Right(row) => Some(row),
                Either::Left(_) => None,
            }))
        }))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures::future::BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures::future::BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}
