//! Recognises a database made by the 0.x layout, where one migrator (then the engine's) built
//! every crate's tables and kept one history in `public._sqlx_migrations`. The per-crate
//! baselines cannot be applied over it, so it is refused before anything is written.

use crate::migrations::MigrationError;
use sqlx::PgPool;

/// The versions the 0.x layout recorded in `public._sqlx_migrations`.
const OLD_VERSIONS: [i64; 10] = [
    20261124000001,
    20261125000100,
    20261125000101,
    20261125000200,
    20261125000300,
    20261125000400,
    20261126000100,
    20261126000200,
    20261126000300,
    20261126000400,
];

/// Fails with [`MigrationError::OldLayout`] when the database holds the 0.x migration history
/// or the facade's tables inside the engine's schema.
pub(crate) async fn refuse_old_layout(pool: &PgPool) -> Result<(), MigrationError> {
    let database = |source| MigrationError::Database {
        schema: "stepwise",
        source,
    };
    let (shared_history, facade_tables): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL,
                to_regclass('stepwise.mcp_tokens') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(database)?;
    if facade_tables {
        return Err(MigrationError::OldLayout {
            found: "table stepwise.mcp_tokens".into(),
        });
    }
    if shared_history {
        let old: Option<i64> = sqlx::query_scalar(
            "SELECT max(version) FROM public._sqlx_migrations WHERE version = ANY($1)",
        )
        .bind(&OLD_VERSIONS[..])
        .fetch_one(pool)
        .await
        .map_err(database)?;
        if let Some(version) = old {
            return Err(MigrationError::OldLayout {
                found: format!("migration {version} in public._sqlx_migrations"),
            });
        }
    }
    Ok(())
}
