//! The engine's pools do not ping a connection before every statement (a second round trip per
//! step commit, BENCHMARKS.md): only a connection idle for a second or more is checked when it
//! is taken. Nor after: a connection whose statement ran to its end is parked for the next
//! statement instead of going back to sqlx's pool, which would check it with a round trip.
//! This holds the pool to what that must still give: a connection the server cut while it sat
//! idle is replaced before a statement uses it, a statement dropped half-way leaves nothing for
//! the next one, parked connections leave room for a LISTEN connection, and closing does not
//! wait for them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};
use stepwise_engine::{DbPool, Pooling};

/// The server process of the connection that runs the statement, through sqlx's pool or the
/// engine's.
async fn backend_pid<'e>(executor: impl sqlx::PgExecutor<'e>) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(executor)
        .await
        .unwrap()
}

/// Has the server end `pid`'s session, then waits past the pool's idle check (1 s).
async fn cut_and_wait(admin: &PgPool, pid: i32) {
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(cut);
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[sqlx::test(migrations = false)]
async fn a_connection_cut_while_idle_is_replaced_before_the_next_statement(
    admin_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let admin: PgPool = admin_options.connect_with(options.clone()).await.unwrap();
    let pool = DbPool::connect(options, 1, Pooling::Direct).await.unwrap();
    let before = backend_pid(pool.raw()).await;

    cut_and_wait(&admin, before).await;

    let after = backend_pid(pool.raw()).await;
    assert_ne!(after, before, "a new connection serves the statement");
}

#[sqlx::test(migrations = false)]
async fn a_statement_that_ran_to_its_end_leaves_its_connection_parked_for_the_next(
    _pool_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    let first = backend_pid(&pool).await;
    assert_eq!(pool.parked(), 1);
    for _ in 0..20 {
        assert_eq!(backend_pid(&pool).await, first, "the parked one is taken");
    }
    // A transaction takes the parked connection too; it goes back to sqlx's pool afterwards.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(backend_pid(&mut *tx).await, first);
    assert_eq!(pool.parked(), 0);
    tx.commit().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_parked_connection_cut_while_idle_is_replaced_before_the_next_statement(
    admin_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let admin: PgPool = admin_options.connect_with(options.clone()).await.unwrap();
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    let before = backend_pid(&pool).await;
    assert_eq!(pool.parked(), 1);

    cut_and_wait(&admin, before).await;

    let after = backend_pid(&pool).await;
    assert_ne!(after, before, "a new connection serves the statement");
}

#[sqlx::test(migrations = false)]
async fn a_statement_dropped_half_way_leaves_no_answer_for_the_next_statement(
    _pool_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    backend_pid(&pool).await;
    assert_eq!(pool.parked(), 1);

    let slow = sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(3)").fetch_one(&pool);
    let gave_up = tokio::time::timeout(Duration::from_millis(200), slow).await;
    assert!(gave_up.is_err(), "the slow statement was dropped half-way");
    assert_eq!(pool.parked(), 0, "its connection was not parked");

    let started = Instant::now();
    let answer: i32 = sqlx::query_scalar("SELECT 42")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(answer, 42, "the next statement gets its own answer");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the next statement did not wait for the dropped one: {:?}",
        started.elapsed()
    );
}

#[sqlx::test(migrations = false)]
async fn parked_connections_leave_room_for_a_listener_and_go_back_to_sqlx_when_unused(
    _pool_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Four statements hold all four connections and end together: each waits for a lock a
    // connection outside the pool holds until all four wait. (Ending at different moments, an
    // early one would be given back as unused before the last one ends.)
    let mut gate = PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7)")
        .execute(&mut gate)
        .await
        .unwrap();
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    let busy = futures::future::join_all((0..4).map(|_| {
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_advisory_xact_lock_shared(7)")
            .fetch_one(&pool)
    }));
    let open_the_gate = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND objid = 7 AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&mut gate)
            .await
            .unwrap();
            if waiting == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sqlx::query("SELECT pg_advisory_unlock(7)")
            .execute(&mut gate)
            .await
            .unwrap();
    };
    let (answers, ()) = futures::future::join(busy, open_the_gate).await;
    for answer in answers {
        assert_eq!(answer.unwrap(), 1);
    }
    assert_eq!(
        pool.parked(),
        2,
        "two fewer than the pool's four are parked"
    );

    let mut listener =
        tokio::time::timeout(Duration::from_secs(1), PgListener::connect_with(pool.raw()))
            .await
            .expect("a LISTEN connection is found while connections are parked")
            .unwrap();
    listener.listen("pool_checks").await.unwrap();

    // The listener holds one of four: the other three, two of them parked a moment ago, are
    // all sqlx's again soon.
    let all_the_rest = futures::future::join_all((0..3).map(|_| pool.raw().acquire()));
    let held = tokio::time::timeout(Duration::from_secs(2), all_the_rest)
        .await
        .expect("parked connections went back to sqlx's pool");
    assert!(held.iter().all(Result::is_ok));
    assert_eq!(pool.parked(), 0);
}

#[sqlx::test(migrations = false)]
async fn sqlxs_callers_get_a_turn_while_the_engine_keeps_its_connections_busy(
    _pool_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Two statement loops on a pool of four: each finds room to park after every statement
    // and takes a parked connection again at once, so none is ever unused for long.
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statements = 0_u32;
                while !stop.is_cancelled() {
                    sqlx::query("SELECT pg_sleep(0.002)")
                        .execute(&pool)
                        .await
                        .unwrap();
                    statements += 1;
                }
                statements
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Three of four: one of them has to come from the loops.
    let three = futures::future::join_all((0..3).map(|_| pool.raw().acquire()));
    let held = tokio::time::timeout(Duration::from_secs(3), three)
        .await
        .expect("sqlx's pool got a busy connection back");
    assert!(held.iter().all(Result::is_ok));
    drop(held);

    stop.cancel();
    for statements in futures::future::join_all(loops).await {
        assert!(statements.unwrap() > 10, "the loops ran meanwhile");
    }
}

#[sqlx::test(migrations = false)]
async fn closing_the_pool_does_not_wait_for_its_parked_connections(
    _pool_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let pool = DbPool::connect(options, 4, Pooling::Direct).await.unwrap();
    backend_pid(&pool).await;
    assert_eq!(pool.parked(), 1);
    tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .expect("the pool closes");
    assert_eq!(pool.parked(), 0);
    assert!(pool.raw().is_closed());
}
