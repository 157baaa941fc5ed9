//! Roles as data: who may call what through a facade.
//!
//! Whoever composes the catalog declares its roles in the [`Registry`](crate::Registry): a name,
//! a description, and the few things a facade needs to know generically — which sagas the
//! role's callers see (all, or only those they started), whether they may call every exposed
//! tool, and which saga controls (cancel, the replays) they may use. Which skills and queries a
//! role may call is said by each skill's [`Exposure`](crate::Exposure), and the registry refuses
//! an exposure that names a role nobody declared, so a typo is a startup error instead of a
//! silently hidden tool.
//!
//! The engine declares one role itself, [`Role::OPERATOR`]: whoever runs Stepwise, with every
//! tool, cancels and replays. The replays are the engine's own operator actions
//! ([`crate::operator`]), and every deployment has someone who runs it, whatever its skills.
//! The engine enforces none of this; a facade does.

use serde::Serialize;

/// Which sagas callers of a role see and act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaScope {
    /// Every saga.
    All,
    /// Only the sagas the caller itself started (self-service callers such as a customer).
    Own,
}

/// A declared role. Build one with [`Role::new`] and the permission methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    name: String,
    description: String,
    saga_scope: SagaScope,
    every_tool: bool,
    may_cancel: bool,
    may_replay: bool,
}

impl Role {
    /// The built-in role of whoever runs Stepwise (see the module docs).
    pub const OPERATOR: &'static str = "operator";

    /// A role that sees every saga, calls the tools whose exposure names it, and may neither
    /// cancel nor replay sagas.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            saga_scope: SagaScope::All,
            every_tool: false,
            may_cancel: false,
            may_replay: false,
        }
    }

    /// The built-in operator: every exposed tool, every saga, cancels and replays.
    pub fn operator() -> Self {
        Self::new(
            Self::OPERATOR,
            "Runs Stepwise: every tool on anyone's data, plus cancels and replays of any saga.",
        )
        .every_tool()
        .may_cancel()
        .may_replay()
    }

    /// Its callers see and act only on the sagas they started.
    pub fn own_sagas_only(mut self) -> Self {
        self.saga_scope = SagaScope::Own;
        self
    }

    /// Its callers may call every exposed skill and query on anyone's data, whether or not the
    /// exposure names the role.
    pub fn every_tool(mut self) -> Self {
        self.every_tool = true;
        self
    }

    /// Its callers may cancel the sagas they can see.
    pub fn may_cancel(mut self) -> Self {
        self.may_cancel = true;
        self
    }

    /// Its callers may retry, restart and fork the sagas they can see.
    pub fn may_replay(mut self) -> Self {
        self.may_replay = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn saga_scope(&self) -> SagaScope {
        self.saga_scope
    }

    pub fn has_every_tool(&self) -> bool {
        self.every_tool
    }

    pub fn can_cancel(&self) -> bool {
        self.may_cancel
    }

    pub fn can_replay(&self) -> bool {
        self.may_replay
    }

    /// Whether `name` can be a role name: lowercase ASCII letters, digits, `_` and `-`, starting
    /// with a letter, at most 64 characters. Principals are written `role:subject`, so a role
    /// name never holds a `:`.
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
            && name.len() <= 64
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_role_has_no_privileges_until_given() {
        let clerk = Role::new("clerk", "Files things.");
        assert_eq!(clerk.saga_scope(), SagaScope::All);
        assert!(!clerk.has_every_tool() && !clerk.can_cancel() && !clerk.can_replay());
        let customer = Role::new("customer", "Self-service.")
            .own_sagas_only()
            .may_cancel();
        assert_eq!(customer.saga_scope(), SagaScope::Own);
        assert!(customer.can_cancel() && !customer.can_replay());
        let operator = Role::operator();
        assert_eq!(operator.name(), Role::OPERATOR);
        assert!(operator.has_every_tool() && operator.can_cancel() && operator.can_replay());
    }

    #[test]
    fn role_names_are_simple_identifiers() {
        for good in ["guest", "front-desk", "level_2", "a"] {
            assert!(Role::is_valid_name(good), "{good}");
        }
        for bad in ["", "Guest", "2nd", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(!Role::is_valid_name(bad), "{bad}");
        }
    }
}
