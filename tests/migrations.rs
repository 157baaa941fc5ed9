//! `stepwise migrate` on a fresh database, again on a migrated one, and on a database made by
//! the 0.x layout (one shared migration history), which is refused with exit 2.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sqlx::PgPool;
use std::process::{Command, Output};

/// `stepwise migrate` with logs at `info`, the default a user sees.
fn migrate_at_info(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

async fn schemas(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname IN ('stepwise', 'hotel', 'mcp') ORDER BY nspname",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn history(pool: &PgPool, schema: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM {schema}._sqlx_migrations WHERE success ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_fresh_database_migrates_quietly_into_three_schemas(pool: PgPool) {
    let url = database_url(&pool).await;
    for run in ["first", "second"] {
        let out = migrate_at_info(&url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{run} run: {stderr}");
        // PostgreSQL's NOTICEs (`relation "_sqlx_migrations" already exists, skipping`) used
        // to be logged by every command.
        assert!(!stderr.contains("already exists"), "{run} run: {stderr}");
        assert!(!stderr.contains("_sqlx_migrations"), "{run} run: {stderr}");
    }
    assert_eq!(schemas(&pool).await, ["hotel", "mcp", "stepwise"]);
    for crate_migrations in [
        stepwise_engine::store::MIGRATIONS,
        stepwise_skills::MIGRATIONS,
        stepwise_mcp::MIGRATIONS,
    ] {
        let schema = crate_migrations.schema();
        assert_eq!(
            history(&pool, schema).await.len(),
            crate_migrations.migrator().iter().count(),
            "{schema}: every migration of its crate, in its own history"
        );
    }
    let shared: bool = sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(shared, "no shared history in public");
}

/// The 0.x history table as sqlx made it, with the first 0.x migration recorded.
async fn make_0x_history(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE public._sqlx_migrations (
             version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO public._sqlx_migrations VALUES
             (20261124000001, 'engine', now(), true, '\\x00', 1);",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn assert_refused_as_0x(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Stepwise 0.x"), "{stderr}");
    assert!(stderr.contains("use a new database"), "{stderr}");
    assert!(
        stderr.contains("DROP SCHEMA IF EXISTS stepwise CASCADE"),
        "{stderr}"
    );
    assert!(stderr.contains("docs/operators.md"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn a_0x_history_is_refused_with_exit_2_and_nothing_written(pool: PgPool) {
    make_0x_history(&pool).await;
    let url = database_url(&pool).await;

    let out = stepwise(&url, &["migrate"]);
    assert_refused_as_0x(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("20261124000001"));
    assert!(schemas(&pool).await.is_empty(), "nothing was created");

    // Every command's start refuses it the same way.
    assert_refused_as_0x(&stepwise(&url, &["sagas", "list"]));
}

#[sqlx::test(migrations = false)]
async fn the_0x_facade_tables_in_the_engine_schema_are_refused(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE SCHEMA stepwise;
         CREATE TABLE stepwise.mcp_tokens (id uuid PRIMARY KEY);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = database_url(&pool).await;

    let out = stepwise(&url, &["migrate"]);
    assert_refused_as_0x(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stepwise.mcp_tokens"));
    assert_eq!(schemas(&pool).await, ["stepwise"], "no schema was added");
}

#[sqlx::test(migrations = false)]
async fn an_unrelated_public_history_is_not_mistaken_for_0x(pool: PgPool) {
    // Another application's sqlx history in the same database, with none of 0.x's versions.
    sqlx::raw_sql(
        "CREATE TABLE public._sqlx_migrations (
             version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO public._sqlx_migrations VALUES (1, 'theirs', now(), true, '\\x00', 1);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = database_url(&pool).await;
    let out = stepwise(&url, &["migrate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(schemas(&pool).await, ["hotel", "mcp", "stepwise"]);
}
