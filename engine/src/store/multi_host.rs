//! A `DATABASE_URL` naming several hosts, as libpq takes it:
//! `postgres://user@db1:5432,db2:5432/stepwise?target_session_attrs=read-write`
//! (docs/operations.md, "Failover"). sqlx 0.8 takes one host per URL, so the store does what
//! libpq would: it connects to the first host that answers as a primary (`read-write`, the
//! default with several hosts) or at all (`any`), and a watcher moves the pool's new
//! connections to another host when that one stops answering or turns into a standby. A
//! standby promoted after its primary died is found within a second; connections to the dead
//! server fail and are replaced by connections to the new primary.

use super::DbPool;
use crate::error::StoreError;
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;
use tracing::{info, warn};

/// What a host must be to take the connections (`target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    ReadWrite,
    Any,
}

/// The hosts of a multi-host URL, in order, and what they must be. None for a one-host URL.
pub fn parse(url: &str) -> Result<Option<(Vec<PgConnectOptions>, SessionAttrs)>, StoreError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, query),
        None => (tail, ""),
    };
    let mut attrs = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                attrs = Some(value.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let attrs = match attrs.as_deref() {
        None | Some("read-write") | Some("primary") => SessionAttrs::ReadWrite,
        Some("any") => SessionAttrs::Any,
        Some(other) => {
            return Err(config(format!(
                "target_session_attrs={other}: Stepwise understands read-write, primary and any"
            )))
        }
    };
    if !hosts.contains(',') {
        return Ok(None);
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let options = hosts
        .split(',')
        .map(|host| {
            PgConnectOptions::from_str(&format!("{scheme}://{userinfo}{host}{path}{query}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((options, attrs)))
}

fn config(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(message.into()))
}

/// Whether `url` names several hosts.
pub fn is_multi_host(url: &str) -> bool {
    matches!(parse(url), Ok(Some(_)))
}

/// The first host that answers and is what `attrs` asks for.
async fn find_host(
    hosts: &[PgConnectOptions],
    attrs: SessionAttrs,
) -> Option<(usize, PgConnectOptions)> {
    for (i, host) in hosts.iter().enumerate() {
        let connected = tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::PgConnection::connect_with(host),
        )
        .await;
        let Ok(Ok(mut conn)) = connected else {
            continue;
        };
        let standby: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await;
        let _ = conn.close().await;
        match (standby, attrs) {
            (Ok(false), _) | (Ok(true), SessionAttrs::Any) => return Some((i, host.clone())),
            _ => {}
        }
    }
    None
}

/// Connects to the first suitable host, waiting up to `patience` for one, and starts the
/// watcher that moves the pool when that host goes away.
pub(super) async fn connect(
    hosts: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
    max_connections: u32,
    pooling: super::Pooling,
    patience: Duration,
) -> Result<DbPool, StoreError> {
    let deadline = tokio::time::Instant::now() + patience;
    let (index, options) = loop {
        if let Some(found) = find_host(&hosts, attrs).await {
            break found;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(config(format!(
                "none of the {} hosts of DATABASE_URL answers as {}",
                hosts.len(),
                match attrs {
                    SessionAttrs::ReadWrite => "a primary (target_session_attrs=read-write)",
                    SessionAttrs::Any => "a server",
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pool = DbPool::connect(options, max_connections, pooling).await?;
    tokio::spawn(watch(pool.clone(), hosts, index, attrs));
    Ok(pool)
}

/// Every 250 ms: does the pool's host still answer as it must, within 500 ms? If not, the first
/// host that does takes the pool's new connections (a busy pool that was only slow finds its
/// own host again, and nothing changes).
async fn watch(
    pool: DbPool,
    hosts: Vec<PgConnectOptions>,
    mut current: usize,
    attrs: SessionAttrs,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if pool.raw().is_closed() {
            return;
        }
        let answer: Result<bool, _> = tokio::time::timeout(
            Duration::from_millis(500),
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&pool),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        let fine = match answer {
            Ok(standby) => !standby || attrs == SessionAttrs::Any,
            Err(sqlx::Error::PoolClosed) => return,
            Err(_) => false,
        };
        if fine {
            continue;
        }
        if let Some((index, options)) = find_host(&hosts, attrs).await {
            if index != current {
                info!(
                    from = %hosts[current].get_port(),
                    to = %options.get_port(),
                    "DATABASE_URL's host changed: new connections go to the one that answers as required"
                );
                current = index;
                pool.set_connect_options(options);
            }
        } else {
            warn!("no host of DATABASE_URL answers as required; retrying");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{parse, SessionAttrs};

    #[test]
    fn a_url_of_several_hosts_becomes_one_url_per_host_without_target_session_attrs() {
        let (hosts, attrs) = parse(
            "postgres://u:pw@db1:5432,db2:6543/stepwise?target_session_attrs=read-write&sslmode=disable",
        )
        .unwrap()
        .unwrap();
        assert_eq!(attrs, SessionAttrs::ReadWrite);
        let ports: Vec<u16> = hosts.iter().map(|h| h.get_port()).collect();
        assert_eq!(ports, [5432, 6543]);
        assert_eq!(hosts[1].get_host(), "db2");
        assert_eq!(hosts[1].get_database(), Some("stepwise"));
        assert_eq!(hosts[0].get_username(), "u");
    }

    #[test]
    fn one_host_is_left_to_sqlx_and_unknown_session_attrs_are_refused() {
        assert!(parse("postgres://u@db1:5432/stepwise").unwrap().is_none());
        assert!(parse("postgres://u@a,b/x?target_session_attrs=standby").is_err());
        let (_, attrs) = parse("postgres://u@a,b/x?target_session_attrs=any")
            .unwrap()
            .unwrap();
        assert_eq!(attrs, SessionAttrs::Any);
    }
}
