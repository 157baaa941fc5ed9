//! The per-crate migration mechanism: each schema keeps its own history, one crate's
//! migrations never block another's, concurrent starts are safe.
#![allow(clippy::unwrap_used)]

use sqlx::migrate::Migrator;
use sqlx::PgPool;
use stepwise_engine::migrations::{apply_all, MigrationError, SchemaMigrations};

static ALPHA_MIGRATOR: Migrator = sqlx::migrate!("tests/fixtures/alpha");
static BETA_MIGRATOR: Migrator = sqlx::migrate!("tests/fixtures/beta");
const ALPHA: SchemaMigrations = SchemaMigrations::new("alpha", &ALPHA_MIGRATOR);
const BETA: SchemaMigrations = SchemaMigrations::new("beta", &BETA_MIGRATOR);

async fn applied_versions(pool: &PgPool, schema: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM {schema}._sqlx_migrations WHERE success ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn table_exists(pool: &PgPool, qualified: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(qualified)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn each_schema_keeps_its_own_history(pool: PgPool) {
    apply_all(&pool, &[ALPHA, BETA]).await.unwrap();

    assert_eq!(applied_versions(&pool, "alpha").await, vec![1, 2]);
    // Beta's version 1 has other content than alpha's version 1: in a shared history its
    // checksum would clash; here it is simply beta's own first migration.
    assert_eq!(applied_versions(&pool, "beta").await, vec![1]);
    assert!(table_exists(&pool, "alpha.things").await);
    assert!(table_exists(&pool, "beta.items").await);
    assert!(!table_exists(&pool, "public._sqlx_migrations").await);

    // Applying again, in any order, is a no-op.
    apply_all(&pool, &[BETA, ALPHA]).await.unwrap();
    assert_eq!(applied_versions(&pool, "alpha").await, vec![1, 2]);
    assert_eq!(applied_versions(&pool, "beta").await, vec![1]);
}

#[sqlx::test(migrations = false)]
async fn the_pools_search_path_is_left_alone(pool: PgPool) {
    ALPHA.apply(&pool).await.unwrap();
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!path.contains("alpha"), "search_path leaked: {path}");
}

#[sqlx::test(migrations = false)]
async fn concurrent_starts_apply_each_migration_once(pool: PgPool) {
    let runs = (0..6).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { apply_all(&pool, &[ALPHA, BETA]).await })
    });
    for run in futures::future::join_all(runs).await {
        run.unwrap().unwrap();
    }
    assert_eq!(applied_versions(&pool, "alpha").await, vec![1, 2]);
    assert_eq!(applied_versions(&pool, "beta").await, vec![1]);
}

#[sqlx::test(migrations = false)]
async fn a_schema_name_must_be_a_plain_identifier(pool: PgPool) {
    let bad = SchemaMigrations::new("Alpha; DROP", &ALPHA_MIGRATOR);
    let err = bad.apply(&pool).await.unwrap_err();
    assert!(matches!(err, MigrationError::InvalidSchemaName(_)), "{err}");
}
