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
