//! Schema migrations, one history per crate.
//!
//! Every crate that keeps tables owns one PostgreSQL schema (the engine `stepwise`, the hotel
//! skills `hotel`, the MCP facade `mcp`) and embeds its own sqlx [`Migrator`] for it. A crate
//! describes that pair as a [`SchemaMigrations`] value, and the composition root applies them in
//! order with [`SchemaMigrations::apply`] (or [`apply_all`]).
//!
//! Each crate keeps its own migration history: the migrator runs on a dedicated connection
//! whose `search_path` is the crate's schema, so sqlx's history table is
//! `<schema>._sqlx_migrations` (`stepwise._sqlx_migrations`, `hotel._sqlx_migrations`, ...).
//! A crate never sees another crate's applied versions, so adding, squashing or removing one
//! crate's migrations never makes another crate's migrator refuse to run.
//!
//! Concurrency: several processes may start at once. Creating the schema is serialised by a
//! transaction-scoped advisory lock, and sqlx's own advisory lock serialises the migrations, so
//! exactly one process applies each pending migration and the others find it applied.
//!
//! The migration connection sets `client_min_messages = warning`: the NOTICEs PostgreSQL sends
//! for idempotent statements (such as sqlx's `CREATE TABLE IF NOT EXISTS _sqlx_migrations`)
//! would otherwise be logged on every start.
//!
//! Migration files still name their objects with the schema (`CREATE TABLE hotel.room_holds`);
//! the `search_path` only decides where the history table lives.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

/// One crate's schema and the embedded migrations that build it.
#[derive(Debug, Clone, Copy)]
pub struct SchemaMigrations {
    schema: &'static str,
    migrator: &'static Migrator,
}

/// Why a crate's migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("schema name `{0}` is not a plain lower-case identifier ([a-z_][a-z0-9_]*)")]
    InvalidSchemaName(&'static str),
    #[error("preparing schema `{schema}` for migration failed: {source}")]
    Database {
        schema: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "this database was made by Stepwise 0.x ({found}), whose single migration history \
         cannot be converted to the per-crate schemas. Before 1.0 there is no in-place \
         upgrade: use a new database, or save what you need and run `DROP SCHEMA IF EXISTS stepwise \
         CASCADE; DROP SCHEMA IF EXISTS hotel CASCADE; DROP TABLE IF EXISTS public._sqlx_migrations;` \
         (docs/operators.md, \"Upgrading from 0.x\"). Nothing was changed"
    )]
    OldLayout { found: String },
    #[error("migrating schema `{schema}` failed: {source}")]
    Migrate {
        schema: &'static str,
        #[source]
        source: MigrateError,
    },
}

impl SchemaMigrations {
    /// `schema` must be a plain lower-case identifier; it is checked when the migrations are
    /// applied (a `const fn` cannot check it).
    pub const fn new(schema: &'static str, migrator: &'static Migrator) -> Self {
        Self { schema, migrator }
    }

    /// The schema this crate owns.
    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// The embedded migrations, e.g. for `#[sqlx::test(migrator = ...)]` of a crate that needs
    /// only its own schema.
    pub fn migrator(&self) -> &'static Migrator {
        self.migrator
    }

    /// Creates the schema if needed and applies the pending migrations, recording them in
    /// `<schema>._sqlx_migrations`. Uses a connection of its own (made with the pool's connect
    /// options), so the pool's connections keep their default `search_path`.
    pub async fn apply(&self, pool: &PgPool) -> Result<(), MigrationError> {
        let schema = self.schema;
        if !is_plain_identifier(schema) {
            return Err(MigrationError::InvalidSchemaName(schema));
        }
        let database = |source| MigrationError::Database { schema, source };
        let options = (*pool.connect_options())
            .clone()
            .options([("search_path", schema), ("client_min_messages", "warning")]);
        // A pool of one, not a bare connection: `Migrator::run` over `&mut PgConnection` makes
        // a future that is not `Send` for every lifetime, so callers could not spawn it.
        let migration_pool = crate::store::pool_options(1)
            .connect_with(options)
            .await
            .map_err(database)?;
        let applied = async {
            create_schema(&migration_pool, schema)
                .await
                .map_err(database)?;
            self.migrator
                .run(&migration_pool)
                .await
                .map_err(|source| MigrationError::Migrate { schema, source })
        }
        .await;
        migration_pool.close().await;
        applied
    }
}

/// Applies each crate's migrations in the order given (a crate's schema may refer to the
/// schemas before it, never after).
pub async fn apply_all(pool: &PgPool, crates: &[SchemaMigrations]) -> Result<(), MigrationError> {
    for migrations in crates {
        migrations.apply(pool).await?;
    }
    Ok(())
}

/// Creates the schema, serialised with an advisory lock: concurrent `CREATE SCHEMA IF NOT
/// EXISTS` statements can fail on the catalog's unique index.
async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('stepwise.migrations:' || $1, 0))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    // An identifier cannot be a bind parameter; `schema` is checked by `is_plain_identifier`.
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// `[a-z_][a-z0-9_]*`, at most 63 bytes: safe unquoted in SQL and in `search_path`.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::is_plain_identifier;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["stepwise", "hotel", "mcp", "_x", "a1_b"] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "Hotel",
            "a-b",
            "a;drop",
            "a b",
            "\"x\"",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }
}
