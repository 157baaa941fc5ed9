//! The catalog a process knows: its skills, its queries and the roles their exposures name.
//! Several versions of one skill may be registered: new sagas start on the latest, and a saga
//! always runs on the version it started with.
//!
//! Roles are declared before the skills and queries that name them: registering a skill or
//! query whose [`Exposure`] names an undeclared role fails with
//! [`RegistryError::UnknownRole`], naming both. A new registry already knows the built-in
//! [`Role::OPERATOR`] (see [`crate::role`]).

use crate::query::Query;
use crate::role::Role;
use crate::skill::{Exposure, Skill};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("skill `{name}` version {version} is registered twice")]
    Duplicate { name: String, version: u32 },
    #[error("`{0}` is registered both as a skill and as a query, or twice as a query")]
    NameTaken(String),
    #[error("role `{0}` is declared twice")]
    DuplicateRole(String),
    #[error(
        "`{0}` is not a valid role name (lowercase letters, digits, `_` and `-`, starting with a \
         letter)"
    )]
    BadRoleName(String),
    #[error("{kind} `{name}` is exposed to role `{role}`, which is not declared (declared roles: {known})")]
    UnknownRole {
        /// `skill` or `query`.
        kind: &'static str,
        name: String,
        role: String,
        known: String,
    },
}

#[derive(Debug, Clone)]
pub struct Registry {
    skills: BTreeMap<String, BTreeMap<u32, Arc<Skill>>>,
    queries: BTreeMap<String, Arc<Query>>,
    roles: BTreeMap<String, Arc<Role>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty catalog that knows only the built-in [`Role::OPERATOR`].
    pub fn new() -> Self {
        let operator = Role::operator();
        Self {
            skills: BTreeMap::new(),
            queries: BTreeMap::new(),
            roles: BTreeMap::from([(operator.name().to_string(), Arc::new(operator))]),
        }
    }

    /// Declares a role that exposures may then name.
    pub fn declare_role(&mut self, role: Role) -> Result<(), RegistryError> {
        if !Role::is_valid_name(role.name()) {
            return Err(RegistryError::BadRoleName(role.name().to_string()));
        }
        if self.roles.contains_key(role.name()) {
            return Err(RegistryError::DuplicateRole(role.name().to_string()));
        }
        self.roles.insert(role.name().to_string(), Arc::new(role));
        Ok(())
    }

    pub fn role(&self, name: &str) -> Option<Arc<Role>> {
        self.roles.get(name).cloned()
    }

    /// Every declared role, by name.
    pub fn roles(&self) -> Vec<Arc<Role>> {
        self.roles.values().cloned().collect()
    }

    /// The declared role names, sorted and comma-separated (for error messages).
    pub fn role_names(&self) -> String {
        self.roles
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every role an exposure names must be declared.
    fn check_roles(
        &self,
        kind: &'static str,
        name: &str,
        exposure: &Exposure,
    ) -> Result<(), RegistryError> {
        let named = exposure.roles.iter().chain(&exposure.self_service_roles);
        match named.into_iter().find(|r| !self.roles.contains_key(*r)) {
            Some(role) => Err(RegistryError::UnknownRole {
                kind,
                name: name.to_string(),
                role: role.clone(),
                known: self.role_names(),
            }),
            None => Ok(()),
        }
    }

    pub fn register_query(&mut self, query: Query) -> Result<(), RegistryError> {
        let name = query.name().to_string();
        if self.skills.contains_key(&name) || self.queries.contains_key(&name) {
            return Err(RegistryError::NameTaken(name));
        }
        self.check_roles("query", &name, query.exposure())?;
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
        self.check_roles("skill", skill.name(), skill.exposure())?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::skill::{SkillInput, Step};
    use crate::StepError;
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    struct Empty {}
    impl SkillInput for Empty {}

    fn skill(name: &str, exposure: Exposure) -> Skill {
        Skill::builder::<Empty>(name, 1, "A test skill.")
            .exposure(exposure)
            .step(Step::new("only", |_| async { Ok::<_, StepError>(()) }))
            .build()
            .unwrap()
    }

    fn query(name: &str, exposure: Exposure) -> Query {
        Query::new::<Empty, (), _, _>(name, "A test query.", exposure, |_| async { Ok(()) })
    }

    #[test]
    fn a_new_registry_knows_the_operator_only() {
        let registry = Registry::new();
        assert_eq!(registry.role_names(), "operator");
        assert!(registry.role(Role::OPERATOR).unwrap().can_replay());
        assert!(registry.role("guest").is_none());
    }

    #[test]
    fn an_exposure_naming_an_undeclared_role_is_refused_naming_skill_and_role() {
        let mut registry = Registry::new();
        registry
            .declare_role(Role::new("staff", "Front desk."))
            .unwrap();
        registry
            .register(skill("file_note", Exposure::roles(&["staff", "operator"])))
            .unwrap();

        let typo = registry
            .register(skill("refund", Exposure::roles(&["staff", "manger"])))
            .unwrap_err();
        assert!(matches!(
            &typo,
            RegistryError::UnknownRole { kind: "skill", name, role, .. }
                if name == "refund" && role == "manger"
        ));
        let message = typo.to_string();
        assert!(message.contains("skill `refund`"), "{message}");
        assert!(message.contains("role `manger`"), "{message}");
        assert!(message.contains("operator, staff"), "{message}");
        assert!(
            registry.latest("refund").is_none(),
            "nothing half-registered"
        );

        // Self-service roles are checked too, and queries like skills.
        let self_service = registry
            .register(skill(
                "own_note",
                Exposure::roles(&["staff"]).self_service(&["gest"], "email"),
            ))
            .unwrap_err();
        assert!(self_service.to_string().contains("role `gest`"));
        let in_query = registry
            .register_query(query("find_notes", Exposure::roles(&["clerk"])))
            .unwrap_err();
        assert!(in_query.to_string().contains("query `find_notes`"));
        assert!(registry.query("find_notes").is_none());

        // An exposure without roles (not a tool) names nothing to check.
        registry
            .register(skill("internal", Exposure::default()))
            .unwrap();
    }

    #[test]
    fn roles_are_declared_once_with_valid_names() {
        let mut registry = Registry::new();
        registry
            .declare_role(Role::new("guest", "A guest.").own_sagas_only())
            .unwrap();
        assert!(matches!(
            registry.declare_role(Role::new("guest", "Again.")),
            Err(RegistryError::DuplicateRole(name)) if name == "guest"
        ));
        assert!(matches!(
            registry.declare_role(Role::operator()),
            Err(RegistryError::DuplicateRole(_))
        ));
        assert!(matches!(
            registry.declare_role(Role::new("front:desk", "Bad.")),
            Err(RegistryError::BadRoleName(_))
        ));
        assert_eq!(registry.role_names(), "guest, operator");
    }
}
