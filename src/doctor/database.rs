//! The database checks: which server and why, the login, the server version, the migrations,
//! `synchronous_commit` and the clock.

use super::Check;
use crate::db_login::{redact, REFUSED_FIX};
use crate::embedded_pg::{self, EmbeddedError};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;

/// The oldest PostgreSQL major version Stepwise is meant for (README, Set-up).
const MIN_SERVER_VERSION: i32 = 140_000;
/// A clock difference above this is worth a warning: retry and lease times are computed here and
/// compared there.
const CLOCK_WARN_MS: i64 = 1_000;
/// Above this (the default lease), a worker may take over a saga whose owner is alive.
const CLOCK_FAIL_MS: i64 = 30_000;

/// One set of migrations the binary applies, and where the database records them.
struct MigrationSet {
    name: &'static str,
    migrator: &'static Migrator,
    /// The history table, schema-qualified.
    history: String,
}

/// Each crate's schema, in the order the composition root applies them (`app::migrate`).
fn migration_sets() -> Vec<MigrationSet> {
    [
        stepwise_engine::store::MIGRATIONS,
        stepwise_skills::MIGRATIONS,
        stepwise_mcp::MIGRATIONS,
    ]
    .into_iter()
    .map(|set| MigrationSet {
        name: set.schema(),
        migrator: set.migrator(),
        history: format!("{}._sqlx_migrations", set.schema()),
    })
    .collect()
}

pub async fn checks() -> Vec<Check> {
    let target = match embedded_pg::resolve_database().await {
        Ok(target) => target,
        Err(error) => return vec![resolve_failure(error)],
    };
    let mut checks = vec![Check::ok(
        "database",
        format!("{} ({})", redact(&target.url), target.why),
    )];
    match PgConnection::connect(&target.url).await {
        Ok(mut conn) => {
            checks.push(server_version(&mut conn).await);
            for set in migration_sets() {
                checks.push(migrations(&mut conn, &set).await);
            }
            checks.push(synchronous_commit(&mut conn).await);
            checks.push(clock(&mut conn).await);
            let _ = conn.close().await;
        }
        Err(e) => checks.push(Check::fail(
            "database",
            format!("connecting to {}: {e}", redact(&target.url)),
            "check that the server is up and DATABASE_URL is right",
        )),
    }
    if let Some(embedded) = target.embedded {
        let _ = embedded.shutdown().await;
    }
    checks
}

fn resolve_failure(error: EmbeddedError) -> Check {
    let fix = match &error {
        EmbeddedError::LoginRefused { .. } => REFUSED_FIX.to_owned(),
        EmbeddedError::Unreachable { .. } => {
            "start that server or correct DATABASE_URL, or unset DATABASE_URL to use the \
             embedded server"
                .to_owned()
        }
        EmbeddedError::NoBinaries { .. } => {
            "install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL".to_owned()
        }
        _ => "see the detail; set DATABASE_URL to choose a server".to_owned(),
    };
    // The variants with a fix carry it in their message too; the detail is the first line.
    let text = error.to_string();
    let detail = text.lines().next().unwrap_or_default().to_owned();
    Check::fail("database", detail, fix)
}

async fn server_version(conn: &mut PgConnection) -> Check {
    let row: Result<(String, String), _> =
        sqlx::query_as("SELECT current_setting('server_version_num'), version()")
            .fetch_one(&mut *conn)
            .await;
    match row {
        Ok((num, version)) => {
            let num: i32 = num.parse().unwrap_or(0);
            if num >= MIN_SERVER_VERSION {
                Check::ok("server_version", version)
            } else {
                Check::warn(
                    "server_version",
                    format!("{version}: older than PostgreSQL 14, which Stepwise is not tested on"),
                    "use PostgreSQL 14 or newer",
                )
            }
        }
        Err(e) => Check::fail(
            "server_version",
            format!("cannot read it: {e}"),
            "check the database user's rights",
        ),
    }
}

/// One applied migration as the history table records it.
struct Applied {
    checksum: Vec<u8>,
    success: bool,
}

async fn migrations(conn: &mut PgConnection, set: &MigrationSet) -> Check {
    let name = format!("migrations:{}", set.name);
    let exists: Result<bool, _> = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&set.history)
        .fetch_one(&mut *conn)
        .await;
    let known: BTreeMap<i64, &[u8]> = set
        .migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    match exists {
        Ok(true) => {}
        Ok(false) => {
            return Check::warn(
                &name,
                format!(
                    "not migrated yet: none of the {} migrations is applied",
                    known.len()
                ),
                "run `stepwise migrate` (every command also applies them on start)",
            )
        }
        Err(e) => {
            return Check::fail(
                &name,
                format!("cannot read the history: {e}"),
                "see the detail",
            )
        }
    }
    let query = format!("SELECT version, checksum, success FROM {}", set.history);
    let rows: Vec<(i64, Vec<u8>, bool)> = match sqlx::query_as(&query).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(e) => {
            return Check::fail(
                &name,
                format!("cannot read {}: {e}", set.history),
                "see the detail",
            )
        }
    };
    let applied: BTreeMap<i64, Applied> = rows
        .into_iter()
        .map(|(version, checksum, success)| (version, Applied { checksum, success }))
        .collect();
    judge_migrations(&name, &known, &applied)
}

/// Compares the binary's migrations with the applied ones.
fn judge_migrations(
    name: &str,
    known: &BTreeMap<i64, &[u8]>,
    applied: &BTreeMap<i64, Applied>,
) -> Check {
    let unknown: Vec<i64> = applied
        .keys()
        .filter(|v| !known.contains_key(v))
        .copied()
        .collect();
    if !unknown.is_empty() {
        return Check::fail(
            name,
            format!(
                "the database has migrations this binary does not know ({}): a newer stepwise \
                 migrated it",
                list(&unknown)
            ),
            "run the stepwise version that migrated this database (or a newer one)",
        );
    }
    let failed: Vec<i64> = applied
        .iter()
        .filter(|(_, a)| !a.success)
        .map(|(v, _)| *v)
        .collect();
    if !failed.is_empty() {
        return Check::fail(
            name,
            format!("migrations recorded as failed: {}", list(&failed)),
            "read the server log, repair the schema by hand, then delete those rows from the \
             history and run `stepwise migrate`",
        );
    }
    let changed: Vec<i64> = applied
        .iter()
        .filter(|(v, a)| known.get(v).is_some_and(|k| *k != a.checksum.as_slice()))
        .map(|(v, _)| *v)
        .collect();
    if !changed.is_empty() {
        return Check::fail(
            name,
            format!(
                "migrations changed after they were applied: {} (this binary's text differs \
                 from what ran)",
                list(&changed)
            ),
            "run the stepwise version that migrated this database",
        );
    }
    let pending: Vec<i64> = known
        .keys()
        .filter(|v| !applied.contains_key(v))
        .copied()
        .collect();
    if !pending.is_empty() {
        return Check::warn(
            name,
            format!(
                "{} of {} migrations pending: {}",
                pending.len(),
                known.len(),
                list(&pending)
            ),
            "run `stepwise migrate` (every command also applies them on start)",
        );
    }
    Check::ok(
        name,
        format!("all {} applied, in step with this binary", known.len()),
    )
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn synchronous_commit(conn: &mut PgConnection) -> Check {
    let value: Result<String, _> =
        sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
            .fetch_one(&mut *conn)
            .await;
    match value {
        Ok(value) if value == "off" => Check::warn(
            "synchronous_commit",
            "off: a server crash may lose the last step results it reported committed; those \
             steps then run again (effects stay single through their idempotency keys)",
            "set synchronous_commit = on for this database unless you chose that trade-off \
             (docs/operators.md)",
        ),
        Ok(value) => Check::ok(
            "synchronous_commit",
            format!("{value}: commits are durable"),
        ),
        Err(e) => Check::fail(
            "synchronous_commit",
            format!("cannot read it: {e}"),
            "see the detail",
        ),
    }
}

async fn clock(conn: &mut PgConnection) -> Check {
    let before = Utc::now();
    let theirs: Result<DateTime<Utc>, _> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await;
    let after = Utc::now();
    let theirs = match theirs {
        Ok(t) => t,
        Err(e) => return Check::fail("clock", format!("cannot read it: {e}"), "see the detail"),
    };
    let round_trip = after - before;
    let ours = before + round_trip / 2;
    judge_clock(
        (theirs - ours).num_milliseconds(),
        round_trip.num_milliseconds(),
    )
}

fn judge_clock(skew_ms: i64, round_trip_ms: i64) -> Check {
    let direction = if skew_ms >= 0 { "ahead of" } else { "behind" };
    let detail = format!(
        "the database's clock is {} ms {direction} this machine's (± {} ms)",
        skew_ms.abs(),
        round_trip_ms / 2 + 1
    );
    let fix = "synchronize both clocks (NTP, e.g. chrony or systemd-timesyncd)";
    match skew_ms.abs() {
        d if d > CLOCK_FAIL_MS => Check::fail(
            "clock",
            format!("{detail}: more than a lease, so workers may take over live sagas"),
            fix,
        ),
        d if d > CLOCK_WARN_MS => Check::warn(
            "clock",
            format!("{detail}: retry and lease times will be off by as much"),
            fix,
        ),
        _ => Check::ok("clock", detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(entries: &[(i64, &[u8], bool)]) -> BTreeMap<i64, Applied> {
        entries
            .iter()
            .map(|(v, c, s)| {
                (
                    *v,
                    Applied {
                        checksum: c.to_vec(),
                        success: *s,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn migrations_are_judged_against_the_binary() {
        let known: BTreeMap<i64, &[u8]> = [(1, b"a".as_slice()), (2, b"b".as_slice())].into();
        let status = |a: &BTreeMap<i64, Applied>| judge_migrations("m", &known, a).status;
        assert_eq!(
            status(&applied(&[(1, b"a", true), (2, b"b", true)])),
            super::super::Status::Ok
        );
        assert_eq!(
            status(&applied(&[(1, b"a", true)])),
            super::super::Status::Warn
        );
        assert_eq!(
            status(&applied(&[
                (1, b"a", true),
                (2, b"b", true),
                (3, b"c", true)
            ])),
            super::super::Status::Fail
        );
        assert_eq!(
            status(&applied(&[(1, b"x", true)])),
            super::super::Status::Fail
        );
        assert_eq!(
            status(&applied(&[(1, b"a", false)])),
            super::super::Status::Fail
        );
    }

    #[test]
    fn clock_differences_are_graded() {
        assert_eq!(judge_clock(20, 2).status, super::super::Status::Ok);
        assert_eq!(judge_clock(-5_000, 2).status, super::super::Status::Warn);
        assert_eq!(judge_clock(60_000, 2).status, super::super::Status::Fail);
        assert!(judge_clock(-5_000, 2).detail.contains("behind"));
    }
}
