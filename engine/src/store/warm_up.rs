//! Warming up a new connection before the pool hands it out.
//!
//! The first call of a plpgsql function on a connection compiles it, and the row checks and
//! triggers its statements fire; each statement inside is planned on its first run, and each
//! statement the engine sends is parsed on its first use. On the machines of BENCHMARKS.md
//! that is 4-12 ms once per connection and function, ten times a warm call. A pool hands out
//! its idle connections in turn, so with C connections the first C starts, commits and claims
//! each pay it on the request path, and a measurement of a few dozen sagas on a pool of 32
//! connections measured almost nothing but cold connections.
//!
//! So every engine pool runs [`warm_up`] on each connection it opens: in one transaction that
//! it rolls back, the connection starts a saga of two steps claimed by a worker of its own
//! (a local start), commits its first step and begins the second (a step commit), starts
//! another saga the usual way and claims it. Nothing it wrote outlives the rollback, no NOTIFY
//! is sent (they go at a commit), the claim is of the warm-up's own skill (and undone with the
//! rest), and the statements are the engine's own ([`super::claim`], [`super::commit`],
//! [`super::queries`]), so they stay in step with it. The warm-up is not tried where it cannot
//! succeed (a database not migrated yet, a read-only replica), and one that fails leaves the
//! connection as it was: either way the connection is handed out cold.

use super::claim::{claim_rows, start_claimed_rows};
use super::claim_rows::claimed_sagas;
use super::commit::{commit_steps, CommitItem};
use super::queries::{start_saga, NewSaga};
use super::transition::{StepChange, Transition};
use crate::error::StoreError;
use chrono::{DateTime, Duration, Utc};
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use uuid::Uuid;

/// The actor of the warm-up's writes (never committed).
const WORKER: &str = "stepwise:warm-up";

/// Warms `conn` up (see the module's docs) if it can write to a migrated database; a failure
/// is logged and leaves it cold.
pub(super) async fn warm_up_or_log(conn: &mut PgConnection) {
    let result = match can_warm_up(conn).await {
        Ok(true) => warm_up(conn).await,
        Ok(false) => {
            tracing::debug!("connection not warmed up: no engine schema yet, or read-only");
            return;
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => tracing::debug!("connection warmed up"),
        Err(error) => tracing::debug!(%error, "connection not warmed up"),
    }
}

/// Whether `conn` can run the warm-up: the engine's functions exist (a pool opened before the
/// migrations, like the migrations' own, has none yet) and it may write (not a replica).
/// Asked first so that the server's log shows no failed statement for it.
async fn can_warm_up(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT to_regproc('stepwise.start_claimed_saga') IS NOT NULL
                AND NOT pg_is_in_recovery()
                AND current_setting('transaction_read_only') = 'off'",
    )
    .fetch_one(conn)
    .await?)
}

/// The skill of the warm-up's sagas, which are never committed: its claim takes the warm-up's
/// own saga. (Were a real skill so named, the claim could take one of its due sagas instead,
/// and only lock it until the rollback, which undoes the claim.)
const SKILL: &str = "stepwise.warm_up";

fn saga() -> NewSaga {
    NewSaga {
        id: Uuid::now_v7(),
        skill: SKILL.to_string(),
        skill_version: 1,
        input: serde_json::json!({}),
        idempotency_key: None,
        started_by: WORKER.to_string(),
        replay_of: None,
        step_names: vec!["first".to_string(), "second".to_string()],
        reused_outputs: Vec::new(),
    }
}

/// Runs a local start and a step commit, a start and a claim, on `conn` in a transaction it
/// rolls back.
pub(super) async fn warm_up(conn: &mut PgConnection) -> Result<(), StoreError> {
    let worker: Arc<str> = Arc::from(WORKER);
    let now = Utc::now();
    let lease_until = now + Duration::minutes(1);
    let mut tx = conn.begin().await?;

    // A local start, then its first step's success with the second begun: the common commit
    // of a saga going forward.
    let local = saga();
    let rows = start_claimed_rows(&mut *tx, &local, now, &worker, lease_until).await?;
    let names = |_: &str, _: i32| Some(local.step_names.as_slice());
    let claimed = claimed_sagas(&worker, lease_until, rows, names)?
        .pop()
        .ok_or_else(|| warm_up_failed("the local start returned no saga"))?;
    let attempt = (claimed.in_flight).ok_or_else(|| warm_up_failed("no attempt was begun"))?;
    let mut transition = Transition::new();
    transition.cursor = Some(1);
    transition.steps.push(StepChange::Succeeded {
        attempt,
        output: serde_json::json!({}),
    });
    transition.then_begin = Some((1, 1));
    let item = CommitItem {
        lease: claimed.lease,
        now,
        transition: Arc::new(transition),
    };
    let committed = commit_steps(&mut *tx, std::slice::from_ref(&item), |_| true).await?;
    if !committed.contains_key(&local.id) {
        return Err(warm_up_failed("the step commit matched no saga"));
    }

    // A start without a worker at hand, then a claim that takes it. Both at a time before any
    // real saga's, so that the claim's walk of the due sagas (by time) stops at this one
    // however long the real backlog is.
    let long_ago = DateTime::<Utc>::UNIX_EPOCH;
    start_saga(&mut *tx, &saga(), long_ago).await?;
    let keys = [format!("{SKILL}@1")];
    let taken = claim_rows(&mut *tx, long_ago, 1, &worker, lease_until, &keys).await?;
    if taken.len() != 1 {
        return Err(warm_up_failed("the claim did not take the started saga"));
    }

    tx.rollback().await?;
    Ok(())
}

fn warm_up_failed(what: &str) -> StoreError {
    StoreError::Corrupt(format!("connection warm-up: {what}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::PgStore;
    use sqlx::PgPool;

    async fn rows_written(pool: &PgPool) -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM stepwise.sagas) + (SELECT count(*) FROM stepwise.steps)
                    + (SELECT count(*) FROM stepwise.events)",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[sqlx::test(migrations = false)]
    async fn a_warm_up_runs_the_hot_statements_and_leaves_no_row(pool: PgPool) {
        PgStore::new(pool.clone()).migrate().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();

        assert!(can_warm_up(&mut conn).await.unwrap());
        warm_up(&mut conn).await.unwrap();

        assert_eq!(rows_written(&pool).await, 0);
        // A savepoint is refused outside a transaction block.
        let savepoint = sqlx::query("SAVEPOINT s").execute(&mut *conn).await;
        assert!(
            savepoint.is_err(),
            "the connection is left outside a transaction"
        );
    }

    #[sqlx::test(migrations = false)]
    async fn a_warm_up_before_the_migrations_fails_and_leaves_the_connection_usable(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();

        assert!(!can_warm_up(&mut conn).await.unwrap());
        assert!(warm_up(&mut conn).await.is_err());

        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
}
