//! What the benchmark asks PostgreSQL: scratch databases, commit and WAL counters, the pids of
//! the server processes serving a database, and table health.

use super::BenchError;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;
use stepwise_engine::PgStore;

/// `url` with its database name replaced by `db` (query parameters kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let server = rest.split_once('/').map_or(rest, |(server, _)| server);
    format!("{scheme}://{server}/{db}{query}")
}

/// Quotes an identifier for the few statements (CREATE/DROP DATABASE) that cannot take one
/// as a parameter.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn connect_one(url: &str) -> Result<PgConnection, BenchError> {
    let options = PgConnectOptions::from_str(url)?.application_name("stepwise-bench");
    Ok(PgConnection::connect_with(&options).await?)
}

/// Drops (forcing out any session) and creates database `db` on the server of `server_url`.
pub async fn recreate_database(server_url: &str, db: &str) -> Result<(), BenchError> {
    let mut conn = connect_one(&with_database(server_url, "postgres")).await?;
    let quoted = quote_ident(db);
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Drops database `db` if it exists.
pub async fn drop_database(server_url: &str, db: &str) -> Result<(), BenchError> {
    let mut conn = connect_one(&with_database(server_url, "postgres")).await?;
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(db)
    ))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// The engine's schema migrated through a connection of its own, then a pool of exactly
/// `size` connections opened after it, so that each is warmed up as the engine's pools warm
/// theirs (engine/src/store/warm_up.rs), as it would be in a process that has been serving
/// for a while.
pub async fn migrated_pool(url: &str, size: u32) -> Result<PgPool, BenchError> {
    let migrations = pool(url, 1).await?;
    PgStore::new(migrations.clone()).migrate().await?;
    migrations.close().await;
    pool(url, size).await
}

/// A pool of exactly `size` connections, all opened now so none is opened mid-measurement.
pub async fn pool(url: &str, size: u32) -> Result<PgPool, BenchError> {
    let options = PgConnectOptions::from_str(url)?.application_name("stepwise-bench");
    Ok(stepwise_engine::store::pool_options(size)
        .min_connections(size)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await?)
}

/// Server facts the report states.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub version: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub wal_level: String,
    pub shared_buffers: String,
}

pub async fn server_info(pool: &PgPool) -> Result<ServerInfo, BenchError> {
    let (version, synchronous_commit, fsync, wal_level, shared_buffers): (
        String,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'),
                current_setting('fsync'), current_setting('wal_level'),
                current_setting('shared_buffers')",
    )
    .fetch_one(pool)
    .await?;
    Ok(ServerInfo {
        version,
        synchronous_commit,
        fsync,
        wal_level,
        shared_buffers,
    })
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Commits in the benchmark's database.
    pub commits: i64,
    /// WAL written by the whole server (other databases' traffic included).
    pub wal_bytes: i64,
    /// Row writes of the engine's hot tables (`pg_stat_user_tables`).
    pub writes: Vec<TableWrites>,
}

/// Rows written to one of the engine's tables so far (the history's partitions summed as
/// `events`): PostgreSQL's cumulative `n_tup_ins`, `n_tup_upd` (HOT ones included),
/// `n_tup_hot_upd` and `n_tup_del`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableWrites {
    pub table: String,
    pub inserts: i64,
    pub updates: i64,
    pub hot_updates: i64,
    pub deletes: i64,
}

impl TableWrites {
    /// Rows this table got written: every insert, update (HOT or not) and delete.
    pub fn rows(&self) -> i64 {
        self.inserts + self.updates + self.deletes
    }

    /// `later - earlier`, table by table (a table missing from `earlier` counts whole).
    pub fn delta(later: &[TableWrites], earlier: &[TableWrites]) -> Vec<TableWrites> {
        later
            .iter()
            .map(|l| {
                let e = earlier
                    .iter()
                    .find(|e| e.table == l.table)
                    .cloned()
                    .unwrap_or_default();
                TableWrites {
                    table: l.table.clone(),
                    inserts: l.inserts - e.inserts,
                    updates: l.updates - e.updates,
                    hot_updates: l.hot_updates - e.hot_updates,
                    deletes: l.deletes - e.deletes,
                }
            })
            .collect()
    }
}

/// The row-write counters of `stepwise.sagas`, `stepwise.steps` and the history
/// (`stepwise.events` and its partitions, summed), read from PostgreSQL's statistics views.
async fn table_writes(conn: &mut PgConnection) -> Result<Vec<TableWrites>, BenchError> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT CASE WHEN relname LIKE 'events%' THEN 'events' ELSE relname::text END,
                sum(n_tup_ins)::bigint, sum(n_tup_upd)::bigint, sum(n_tup_hot_upd)::bigint,
                sum(n_tup_del)::bigint
         FROM pg_stat_user_tables
         WHERE schemaname = 'stepwise' AND (relname IN ('sagas', 'steps') OR relname LIKE 'events%')
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(table, inserts, updates, hot_updates, deletes)| TableWrites {
                table,
                inserts,
                updates,
                hot_updates,
                deletes,
            },
        )
        .collect())
}

/// Makes every backend of `pool` publish its pending statistics, then reads the counters.
///
/// PostgreSQL backends send their statistics at most once a second, at the end of a
/// transaction; so this waits a little over a second and then runs a transaction on every
/// idle connection of the pool, each calling `pg_stat_force_next_flush()` (PostgreSQL 15+; older
/// servers flush on the transaction end anyway).
pub async fn settled_counters(pool: &PgPool) -> Result<Counters, BenchError> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flush_stats(pool).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    let (commits, wal_bytes): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                (SELECT wal_bytes::bigint FROM pg_stat_wal)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let writes = table_writes(&mut conn).await?;
    Ok(Counters {
        commits: commits.unwrap_or(0),
        wal_bytes: wal_bytes.unwrap_or(0),
        writes,
    })
}

/// Makes every idle connection of `pool` publish its pending statistics now (an idle backend
/// otherwise holds them for up to 10 s): one `pg_stat_force_next_flush()` transaction each.
/// A worker's LISTEN connection stays out of the pool and has nothing to publish. An engine on
/// this pool parks a connection for its next statement and gives it back once unused for 50 ms,
/// so this first waits well past that for every connection to be back in the pool.
pub async fn flush_stats(pool: &PgPool) -> Result<(), BenchError> {
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut held = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        if sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *conn)
            .await
            .is_err()
        {
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
        }
        held.push(conn);
    }
    drop(held);
    Ok(())
}

/// Pids of the server processes that serve this database, plus the server's background
/// processes (WAL writer, checkpointer, ...), whose CPU the step path also costs.
pub async fn server_pids(pool: &PgPool) -> Result<Vec<u32>, BenchError> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// PostgreSQL's `autovacuum` switched on for a while by [`autovacuum_on`]; [`Self::restore`]
/// puts the server's configuration back as it was.
#[derive(Debug)]
pub struct AutovacuumOn {
    server_url: String,
    /// Whether this changed the configuration (it was off).
    changed: bool,
    /// The `autovacuum` line of `postgresql.auto.conf` before, if it had one.
    previous: Option<String>,
}

/// An `autovacuum_*` setting that is not PostgreSQL's default, as the soak's report states.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub name: String,
    pub setting: String,
    pub source: String,
}

/// Turns autovacuum on with `ALTER SYSTEM` and a configuration reload (it overrides the
/// configuration files, `postgresql.auto.conf` being read last), and waits until new sessions
/// see it and the autovacuum launcher runs. Needs a superuser. Nothing changes when it is on
/// already.
pub async fn autovacuum_on(server_url: &str) -> Result<AutovacuumOn, BenchError> {
    let admin_url = with_database(server_url, "postgres");
    let mut conn = connect_one(&admin_url).await?;
    let current: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&mut conn)
        .await?;
    let mut guard = AutovacuumOn {
        server_url: server_url.to_string(),
        changed: false,
        previous: None,
    };
    if current == "on" {
        conn.close().await?;
        return Ok(guard);
    }
    guard.previous = sqlx::query_scalar(
        "SELECT setting FROM pg_file_settings
         WHERE name = 'autovacuum' AND sourcefile LIKE '%postgresql.auto.conf'
         ORDER BY seqno DESC LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await?;
    sqlx::raw_sql("ALTER SYSTEM SET autovacuum = on")
        .execute(&mut conn)
        .await?;
    guard.changed = true;
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // The reload is asynchronous: wait until a new session sees it and the postmaster has
    // started the launcher (it does so on its next loop once autovacuum is on).
    for _ in 0..100 {
        let mut probe = connect_one(&admin_url).await?;
        let (on, launcher): (String, bool) = sqlx::query_as(
            "SELECT current_setting('autovacuum'),
                    EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum launcher')",
        )
        .fetch_one(&mut probe)
        .await?;
        probe.close().await?;
        if on == "on" && launcher {
            return Ok(guard);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restored = guard.restore().await;
    Err(BenchError::Internal(format!(
        "autovacuum did not come on within 10 s after ALTER SYSTEM and a reload{}",
        restored.err().map_or(String::new(), |e| format!(
            " (restoring it failed too: {e})"
        ))
    )))
}

impl AutovacuumOn {
    /// Whether autovacuum was off and this turned it on.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Puts `postgresql.auto.conf` back as it was and reloads the configuration.
    pub async fn restore(self) -> Result<(), BenchError> {
        if !self.changed {
            return Ok(());
        }
        let mut conn = connect_one(&with_database(&self.server_url, "postgres")).await?;
        let statement = match &self.previous {
            Some(value) => format!(
                "ALTER SYSTEM SET autovacuum = '{}'",
                value.replace('\'', "''")
            ),
            None => "ALTER SYSTEM RESET autovacuum".to_string(),
        };
        sqlx::raw_sql(&statement).execute(&mut conn).await?;
        sqlx::raw_sql("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}

/// The `autovacuum*` settings that differ from PostgreSQL's defaults, and where they come from.
pub async fn autovacuum_settings(pool: &PgPool) -> Result<Vec<Setting>, BenchError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT name, setting, source FROM pg_settings
         WHERE (name LIKE 'autovacuum%' OR name = 'track_counts') AND source <> 'default'
         ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, setting, source)| Setting {
            name,
            setting,
            source,
        })
        .collect())
}

/// Bytes on disk of the engine's tables with their indexes and TOAST (the history's
/// partitions summed as `events`).
pub async fn table_bytes(pool: &PgPool) -> Result<Vec<(String, i64)>, BenchError> {
    Ok(sqlx::query_as(
        "SELECT CASE WHEN c.relname LIKE 'events%' THEN 'events' ELSE c.relname::text END,
                sum(pg_total_relation_size(c.oid))::bigint
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'stepwise' AND c.relkind = 'r'
           AND (c.relname IN ('sagas', 'steps') OR c.relname LIKE 'events%')
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_query_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/app?sslmode=disable", "bench"),
            "postgres://u:p@h:5433/bench?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432", "bench"),
            "postgres://postgres@127.0.0.1:5432/bench"
        );
    }

    #[test]
    fn writes_are_subtracted_table_by_table() {
        let w = |table: &str, inserts, updates, hot_updates| TableWrites {
            table: table.into(),
            inserts,
            updates,
            hot_updates,
            deletes: 0,
        };
        let delta = TableWrites::delta(
            &[w("events", 10, 0, 0), w("sagas", 5, 40, 38)],
            &[w("sagas", 5, 20, 19)],
        );
        assert_eq!(delta, vec![w("events", 10, 0, 0), w("sagas", 0, 20, 19)]);
        assert_eq!(delta[1].rows(), 20);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
