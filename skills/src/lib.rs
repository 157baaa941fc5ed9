//! Stepwise skills: the Dewy Resort skills, their connectors, the external-systems sandbox,
//! and the synthetic diagnostic skill used by tests, benchmarks and chaos runs.

pub mod connectors;
pub mod hotel;
pub mod sandbox;
pub mod synthetic;

use stepwise_engine::{Registry, RegistryError, SkillError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Skill(#[from] SkillError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Connectors(#[from] connectors::ConnectorError),
}

/// A registry with the built-in diagnostic skill only (no external systems needed).
pub fn registry() -> Result<Registry, SetupError> {
    let mut registry = Registry::new();
    registry.register(synthetic::skill()?)?;
    Ok(registry)
}

/// A registry with every skill: the diagnostic one and the Dewy Resort skills and queries
/// over `hotel`'s connectors and database.
pub fn registry_with_hotel(hotel: &std::sync::Arc<hotel::Hotel>) -> Result<Registry, SetupError> {
    let mut registry = registry()?;
    hotel::register(&mut registry, hotel)?;
    Ok(registry)
}

/// Every skill and query, for listings that need neither a database nor external systems
/// (`stepwise skills`): the connectors and database handle inside are never used, and the pool
/// connects lazily, so building it does no I/O. Do not run sagas on it.
pub fn catalog() -> Result<Registry, SetupError> {
    let config = connectors::ConnectorConfig::sandbox("http://127.0.0.1:8787");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
    registry_with_hotel(&hotel::Hotel::new(
        connectors::Connectors::new(&config)?,
        pool,
    ))
}
