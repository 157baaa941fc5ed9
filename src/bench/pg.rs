//! What the benchmark asks PostgreSQL: scratch databases, commit and WAL counters, the pids of
//! the server processes serving a database, and table health.

use super::BenchError;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

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

/// A pool of exactly `size` connections, all opened now so none is opened mid-measurement.
pub async fn pool(url: &str, size: u32) -> Result<PgPool, BenchError> {
    let options = PgConnectOptions::from_str(url)?.application_name("stepwise-bench");
    Ok(PgPoolOptions::new()
        .max_connections(size)
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
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Commits in the benchmark's database.
    pub commits: i64,
    /// WAL written by the whole server (other databases' traffic included).
    pub wal_bytes: i64,
}

/// Makes every backend of `pool` publish its pending statistics, then reads the counters.
///
/// PostgreSQL backends send their statistics at most once a second, at the end of a
/// transaction; so this waits a little over a second and then runs a transaction on every
/// idle connection of the pool, each calling `pg_stat_force_next_flush()` (PostgreSQL 15+; older
/// servers flush on the transaction end anyway).
pub async fn settled_counters(pool: &PgPool) -> Result<Counters, BenchError> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Every idle connection (a worker's LISTEN connection stays out of the pool).
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
    Ok(Counters {
        commits: commits.unwrap_or(0),
        wal_bytes: wal_bytes.unwrap_or(0),
    })
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

/// Health of one of the engine's tables.
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
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
