//! The facade's own schema `mcp`: what its tables guarantee whatever the code above them does.
//! The audit refuses to be rewritten; a token is stored only as its SHA-256.
#![allow(clippy::unwrap_used)]

use sqlx::PgPool;
use stepwise_engine::migrations::apply_all;
use stepwise_engine::Registry;
use stepwise_mcp::auth::hash_token;
use stepwise_mcp::{AuditEntry, AuditFilter, AuditStore, Outcome, Principal, TokenStore};

/// The engine's schema, then the facade's, as the composition root applies them.
async fn migrate(pool: &PgPool) {
    apply_all(
        pool,
        &[stepwise_engine::store::MIGRATIONS, stepwise_mcp::MIGRATIONS],
    )
    .await
    .expect("migrations apply");
}

#[sqlx::test(migrations = false)]
async fn the_audit_refuses_update_and_delete(pool: PgPool) {
    migrate(&pool).await;
    let audit = AuditStore::new(pool.clone());
    audit
        .record(&AuditEntry {
            principal: "operator:local".to_string(),
            transport: "stdio",
            tool: "synthetic_chain".to_string(),
            saga_id: None,
            outcome: Outcome::Ok,
            error_code: None,
            duration_ms: 3,
        })
        .await
        .unwrap();

    let update = sqlx::query("UPDATE mcp.audit SET outcome = 'error', error_code = 'x'")
        .execute(&pool)
        .await;
    assert!(update.is_err(), "an audit row was rewritten");
    let delete = sqlx::query("DELETE FROM mcp.audit").execute(&pool).await;
    assert!(delete.is_err(), "an audit row was deleted");

    let rows = audit.query(&AuditFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "ok");
}

#[sqlx::test(migrations = false)]
async fn a_token_is_stored_only_as_its_sha256(pool: PgPool) {
    migrate(&pool).await;
    let principal = Principal::new(&Registry::new(), "operator", "ci").unwrap();
    let created = TokenStore::new(pool.clone())
        .create(&principal, "test")
        .await
        .unwrap();

    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_sha256 FROM mcp.tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![hash_token(&created.token).to_vec()]);
    // No column of the row holds the secret itself.
    let row_text: String = sqlx::query_scalar("SELECT t::text FROM mcp.tokens t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!row_text.contains(&created.token), "{row_text}");
}

/// Appends a row at `at` straight into the table, as a call of that time would have.
async fn row_at(pool: &PgPool, at: chrono::DateTime<chrono::Utc>, tool: &str) {
    sqlx::query(
        "INSERT INTO mcp.audit (at, principal, transport, tool, outcome, duration_ms)
         VALUES ($1, 'operator:ci', 'http', $2, 'ok', 1)",
    )
    .bind(at)
    .bind(tool)
    .execute(pool)
    .await
    .unwrap();
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'mcp.audit'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn tools(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT tool FROM mcp.audit ORDER BY at")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_audit_is_kept_by_month_and_a_prune_removes_only_rows_older_than_its_cutoff(
    pool: PgPool,
) {
    use chrono::{TimeZone, Utc};
    migrate(&pool).await;
    let day = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
    sqlx::query("SELECT mcp.ensure_audit_partitions($1, $2)")
        .bind(day(2025, 1, 1))
        .bind(day(2025, 4, 1))
        .execute(&pool)
        .await
        .unwrap();
    for (at, tool) in [
        (day(2025, 1, 10), "january"),
        (day(2025, 2, 3), "february"),
        (day(2025, 3, 2), "early-march"),
        (day(2025, 3, 20), "late-march"),
        (day(2025, 4, 5), "april"),
    ] {
        row_at(&pool, at, tool).await;
    }
    let audit = AuditStore::new(pool.clone());
    let cutoff = day(2025, 3, 10);

    let dry = audit.prune(cutoff, true).await.unwrap();
    assert_eq!(dry.rows, 3);
    assert_eq!(
        dry.partitions_dropped,
        vec!["audit_2025_01", "audit_2025_02"]
    );
    assert_eq!(tools(&pool).await.len(), 5, "a dry run removed rows");

    let report = audit.prune(cutoff, false).await.unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(
        report.rows_deleted, 1,
        "early March, deleted from its month"
    );
    assert_eq!(
        report.partitions_dropped,
        vec!["audit_2025_01", "audit_2025_02"]
    );
    assert_eq!(tools(&pool).await, vec!["late-march", "april"]);
    let left = partitions(&pool).await;
    assert!(!left.contains(&"audit_2025_02".to_string()), "{left:?}");
    assert!(left.contains(&"audit_2025_03".to_string()), "{left:?}");

    // Outside a prune the rows are as append-only as before, in every partition.
    for statement in [
        "DELETE FROM mcp.audit",
        "DELETE FROM mcp.audit_2025_04",
        "UPDATE mcp.audit SET tool = 'x'",
        "TRUNCATE mcp.audit",
        "TRUNCATE mcp.audit_2025_03",
    ] {
        assert!(
            sqlx::query(statement).execute(&pool).await.is_err(),
            "`{statement}` went through"
        );
    }
    assert_eq!(tools(&pool).await, vec!["late-march", "april"]);
}

#[sqlx::test(migrations = false)]
async fn a_row_whose_month_has_no_partition_yet_makes_it_and_is_kept(pool: PgPool) {
    migrate(&pool).await;
    let now = chrono::Utc::now();
    let month = format!("audit_{}", now.format("%Y_%m"));
    assert!(partitions(&pool).await.contains(&month));
    // As if the process had started last month: this month's partition is not there.
    sqlx::query(&format!("DROP TABLE mcp.{month}"))
        .execute(&pool)
        .await
        .unwrap();
    AuditStore::new(pool.clone())
        .record(&AuditEntry {
            principal: "operator:local".to_string(),
            transport: "http",
            // An unknown tool's made-up name longer than the column keeps is cut, not lost.
            tool: "x".repeat(5_000),
            saga_id: None,
            outcome: Outcome::Invalid,
            error_code: Some("unknown_tool".to_string()),
            duration_ms: 0,
        })
        .await
        .unwrap();
    assert!(partitions(&pool).await.contains(&month));
    assert_eq!(tools(&pool).await, vec!["x".repeat(200)]);
}

/// Rows written before the table was partitioned are moved into their months' partitions with
/// their ids, and new rows continue the ids.
#[sqlx::test(migrations = false)]
async fn partitioning_keeps_the_rows_written_before_it(pool: PgPool) {
    let mut baseline_only = sqlx::migrate::Migrator {
        migrations: stepwise_mcp::MIGRATOR.migrations.clone(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    baseline_only.migrations = std::borrow::Cow::Owned(
        baseline_only
            .migrations
            .iter()
            .filter(|m| m.version == 20261127000001)
            .cloned()
            .collect(),
    );
    let baseline_only: &'static sqlx::migrate::Migrator = Box::leak(Box::new(baseline_only));
    apply_all(
        &pool,
        &[
            stepwise_engine::store::MIGRATIONS,
            stepwise_engine::SchemaMigrations::new("mcp", baseline_only),
        ],
    )
    .await
    .unwrap();
    let long_ago = chrono::Utc::now() - chrono::Duration::days(400);
    row_at(&pool, long_ago, "old").await;
    row_at(&pool, chrono::Utc::now(), "new").await;

    migrate(&pool).await;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, tool, tableoid::regclass::text FROM mcp.audit ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                1,
                "old".to_string(),
                format!("mcp.audit_{}", long_ago.format("%Y_%m"))
            ),
            (
                2,
                "new".to_string(),
                format!("mcp.audit_{}", chrono::Utc::now().format("%Y_%m"))
            ),
        ]
    );
    row_at(&pool, chrono::Utc::now(), "after").await;
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM mcp.audit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(last, 3);
}
