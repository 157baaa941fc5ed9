//! The skills a process knows. Several versions of one skill may be registered: new sagas start
//! on the latest, and a saga always runs on the version it started with.

use crate::query::Query;
use crate::skill::Skill;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("skill `{name}` version {version} is registered twice")]
    Duplicate { name: String, version: u32 },
    #[error("`{0}` is registered both as a skill and as a query, or twice as a query")]
    NameTaken(String),
}

#[derive(Debug, Default, Clone)]
pub struct Registry {
    skills: BTreeMap<String, BTreeMap<u32, Arc<Skill>>>,
    queries: BTreeMap<String, Arc<Query>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register_query(&mut self, query: Query) -> Result<(), RegistryError> {
        let name = query.name().to_string();
        if self.skills.contains_key(&name) || self.queries.contains_key(&name) {
            return Err(RegistryError::NameTaken(name));
        }
        self.queries.insert(name, Arc::new(query));
        Ok(())
    }

    pub fn query(&self, name: &str) -> Option<Arc<Query>> {
        self.queries.get(name).cloned()
    }

    pub fn queries(&self) -> Vec<Arc<Query>> {
        self.queries.values().cloned().collect()
    }

    pub fn register(&mut self, skill: Skill) -> Result<(), RegistryError> {
        if self.queries.contains_key(skill.name()) {
            return Err(RegistryError::NameTaken(skill.name().to_string()));
        }
        let versions = self.skills.entry(skill.name().to_string()).or_default();
        if versions.contains_key(&skill.version()) {
            return Err(RegistryError::Duplicate {
                name: skill.name().to_string(),
                version: skill.version(),
            });
        }
        versions.insert(skill.version(), Arc::new(skill));
        Ok(())
    }

    /// The version new sagas of `name` start on.
    pub fn latest(&self, name: &str) -> Option<Arc<Skill>> {
        self.skills
            .get(name)
            .and_then(|v| v.values().next_back().cloned())
    }

    pub fn get(&self, name: &str, version: u32) -> Option<Arc<Skill>> {
        self.skills.get(name).and_then(|v| v.get(&version).cloned())
    }

    /// The latest version of every skill, by name.
    pub fn latest_skills(&self) -> Vec<Arc<Skill>> {
        self.skills
            .values()
            .filter_map(|v| v.values().next_back().cloned())
            .collect()
    }

    /// Every registered (name, version).
    pub fn all(&self) -> Vec<Arc<Skill>> {
        self.skills
            .values()
            .flat_map(|v| v.values().cloned())
            .collect()
    }
}
