//! Where the database connections go beyond `DATABASE_URL` (docs/operations.md, "Beyond one
//! machine"): `STEPWISE_LISTEN_URL` (a direct connection for LISTEN and migrations) and
//! `STEPWISE_PREPARED_STATEMENTS=off` (`DATABASE_URL` goes through a transaction-pooling
//! PgBouncer), `STEPWISE_READ_URL` and `STEPWISE_READ_MAX_WAIT_MS` (a streaming replica for
//! read-only work).

use stepwise_engine::{Connections, Pooling};

pub const LISTEN_URL: &str = "STEPWISE_LISTEN_URL";
pub const PREPARED_STATEMENTS: &str = "STEPWISE_PREPARED_STATEMENTS";
pub const READ_URL: &str = "STEPWISE_READ_URL";
pub const READ_MAX_WAIT_MS: &str = "STEPWISE_READ_MAX_WAIT_MS";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The pooling `STEPWISE_PREPARED_STATEMENTS` asks for: `on` (default) or `off`.
pub fn pooling_from_env() -> Result<Pooling, String> {
    match var(PREPARED_STATEMENTS).as_deref() {
        None | Some("on") => Ok(Pooling::Direct),
        Some("off") => Ok(Pooling::Transaction),
        Some(other) => Err(format!(
            "{PREPARED_STATEMENTS}={other:?}: expected `on` or `off` (`off` when DATABASE_URL \
             goes through PgBouncer in pool_mode=transaction, docs/operations.md)"
        )),
    }
}

/// The direct URL for LISTEN and migrations, when one is configured. With
/// `STEPWISE_PREPARED_STATEMENTS=off` it is required: neither LISTEN nor sqlx's migration lock
/// survives a transaction pooler.
pub fn listen_url_from_env() -> Result<Option<String>, String> {
    let listen = var(LISTEN_URL);
    if listen.is_none() && pooling_from_env()? == Pooling::Transaction {
        return Err(format!(
            "{PREPARED_STATEMENTS}=off says DATABASE_URL goes through a transaction pooler, \
             where LISTEN and migrations do not work: set {LISTEN_URL} to a direct connection \
             to the primary (docs/operations.md, \"PgBouncer\")"
        ));
    }
    Ok(listen)
}

/// How long a read waits for the replica (`STEPWISE_READ_MAX_WAIT_MS`).
fn read_max_wait_from_env() -> Result<std::time::Duration, String> {
    match var(READ_MAX_WAIT_MS) {
        None => Ok(stepwise_engine::store::DEFAULT_READ_MAX_WAIT),
        Some(ms) => ms
            .trim()
            .parse::<u64>()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("{READ_MAX_WAIT_MS}={ms:?}: expected milliseconds")),
    }
}

/// Every connection setting, with `url` as `DATABASE_URL`.
pub fn connections(url: &str) -> Result<Connections, String> {
    Ok(Connections {
        url: url.to_owned(),
        listen_url: listen_url_from_env()?,
        pooling: pooling_from_env()?,
        read_url: var(READ_URL),
        read_max_wait: read_max_wait_from_env()?,
    })
}
