//! Stepwise skills: the Dewy Resort skills, their connectors, the external-systems sandbox,
//! and the synthetic diagnostic skill used by tests, benchmarks and chaos runs.

pub mod sandbox;
pub mod synthetic;

use stepwise_engine::{Registry, RegistryError, SkillError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Skill(#[from] SkillError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A registry with every built-in skill.
pub fn registry() -> Result<Registry, SetupError> {
    let mut registry = Registry::new();
    registry.register(synthetic::skill()?)?;
    Ok(registry)
}
