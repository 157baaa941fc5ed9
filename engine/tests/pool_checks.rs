//! The engine's pools do not ping a connection before every statement (a second round trip per
//! step commit, BENCHMARKS.md): only a connection idle for a second or more is checked when it
//! is taken. This holds the pool to what that must still give: a connection the server cut
//! while it sat idle is replaced before a statement uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{DbPool, Pooling};

async fn backend_pid(pool: &DbPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool.raw())
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_connection_cut_while_idle_is_replaced_before_the_next_statement(
    admin_options: PgPoolOptions,
    options: PgConnectOptions,
) {
    let admin: PgPool = admin_options.connect_with(options.clone()).await.unwrap();
    let pool = DbPool::connect(options, 1, Pooling::Direct).await.unwrap();
    let before = backend_pid(&pool).await;

    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(before)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(cut);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let after = backend_pid(&pool).await;
    assert_ne!(after, before, "a new connection serves the statement");
}
