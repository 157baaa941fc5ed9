//! Who is calling: principals and the bearer tokens of the HTTP transport.
//!
//! A principal is `role:subject`, e.g. `operator:local`. The role is one the catalog declares
//! (a [`Role`] of the engine's [`Registry`]): a principal naming any other role cannot be
//! built, so a typo is refused with the list of known roles instead of hiding every tool. The
//! role's data decides which control tools the caller may use and which sagas it sees; each
//! skill's exposure decides which skills and queries it may call. The subject is who the caller
//! is within the role (for a self-service role, e.g. a customer's email: the facade fills and
//! checks self-service inputs with it, so a model cannot act for someone else by changing an
//! argument).
//!
//! Tokens are 32 random bytes shown once (`swt_` + 64 hex digits); only their SHA-256 is
//! stored, by [`crate::store::TokenStore`].

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use stepwise_engine::{Registry, Role, SagaScope};

/// Why a role, principal or token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown role `{role}` (known roles: {known})")]
    UnknownRole { role: String, known: String },
    #[error("a principal is `role:subject`, e.g. `operator:local` (got `{0}`)")]
    BadPrincipal(String),
    #[error("a subject must be 1 to 320 characters without spaces (got `{0}`)")]
    BadSubject(String),
    #[error("a token's lifetime must be a positive duration that ends in a representable time (got {0})")]
    BadLifetime(String),
    #[error("a region is 1 to 63 letters, digits, `_`, `.` or `-` (got `{0}`)")]
    BadRegion(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// An authenticated caller: a declared role and a subject.
#[derive(Debug, Clone)]
pub struct Principal {
    role: Arc<Role>,
    subject: String,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.role.name() == other.role.name() && self.subject == other.subject
    }
}

impl Eq for Principal {}

impl Hash for Principal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.role.name().hash(state);
        self.subject.hash(state);
    }
}

impl Principal {
    /// `subject` acting in the role `role`, which `catalog` must declare.
    pub fn new(
        catalog: &Registry,
        role: &str,
        subject: impl Into<String>,
    ) -> Result<Self, AuthError> {
        let subject = subject.into();
        let role = catalog.role(role).ok_or_else(|| AuthError::UnknownRole {
            role: role.to_string(),
            known: catalog.role_names(),
        })?;
        if subject.is_empty() || subject.len() > 320 || subject.chars().any(char::is_whitespace) {
            return Err(AuthError::BadSubject(subject));
        }
        Ok(Self { role, subject })
    }

    /// Parses `role:subject` against the roles `catalog` declares.
    pub fn parse(catalog: &Registry, text: &str) -> Result<Self, AuthError> {
        let (role, subject) = text
            .split_once(':')
            .ok_or_else(|| AuthError::BadPrincipal(text.to_string()))?;
        Self::new(catalog, role, subject)
    }

    /// `operator:local`, the default of a stdio session (every registry declares the
    /// operator).
    pub fn local_operator(catalog: &Registry) -> Result<Self, AuthError> {
        Self::new(catalog, Role::OPERATOR, "local")
    }

    /// The caller's role, as the catalog declares it.
    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Whether this caller may see and act on a saga started by `started_by`: every saga, or
    /// only its own when its role says so.
    pub fn may_see_saga(&self, started_by: &str) -> bool {
        match self.role.saga_scope() {
            SagaScope::All => true,
            SagaScope::Own => started_by == self.to_string(),
        }
    }

    /// The `started_by` a listing of sagas is confined to for this caller, if any.
    pub fn own_sagas_filter(&self) -> Option<String> {
        (self.role.saga_scope() == SagaScope::Own).then(|| self.to_string())
    }

    /// The idempotency key under which a saga this caller starts is stored. The engine keeps
    /// keys unique per skill, so an unscoped key would let two callers who pick the same key
    /// collide, or one obtain the other's saga. The form is `{principal}/{key}` with `%` and
    /// `/` of the principal percent-encoded: the first `/` always ends the scope, so no two
    /// (principal, key) pairs share a stored key, and the common case stays readable
    /// (`guest:ana@example.com/k-1`).
    pub fn scoped_key(&self, key: &str) -> String {
        format!("{}/{key}", self.key_scope())
    }

    /// The key this caller chose, if `stored` is in its scope (see [`Self::scoped_key`]).
    pub fn own_key<'a>(&self, stored: &'a str) -> Option<&'a str> {
        let scope = self.key_scope();
        stored.strip_prefix(scope.as_str())?.strip_prefix('/')
    }

    /// A stored key as this caller is shown it: its own key without the scope, anyone else's
    /// (which staff may see) as stored, so whose it is stays visible.
    pub fn shown_key<'a>(&self, stored: &'a str) -> &'a str {
        self.own_key(stored).unwrap_or(stored)
    }

    fn key_scope(&self) -> String {
        self.to_string().replace('%', "%25").replace('/', "%2F")
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.name(), self.subject)
    }
}

/// The prefix of every token, so they are recognisable in a leaked log or config.
pub const TOKEN_PREFIX: &str = "swt_";

/// A new random token: `swt_` + 64 hex digits (32 bytes from the thread-local CSPRNG, which
/// the OS seeds).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 64);
    token.push_str(TOKEN_PREFIX);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A catalog of a shop, not a hotel: the facade knows only what is declared.
    fn catalog() -> Registry {
        let mut registry = Registry::new();
        registry
            .declare_role(Role::new("customer", "Self-service.").own_sagas_only())
            .unwrap();
        registry
            .declare_role(Role::new("clerk", "Serves anyone."))
            .unwrap();
        registry
    }

    fn principal(text: &str) -> Principal {
        Principal::parse(&catalog(), text).unwrap()
    }

    #[test]
    fn principals_parse_and_print_against_the_declared_roles() {
        let p = principal("customer:ana@example.com");
        assert_eq!(p.role().name(), "customer");
        assert_eq!(p.subject(), "ana@example.com");
        assert_eq!(p.to_string(), "customer:ana@example.com");
        assert_eq!(p, principal("customer:ana@example.com"));
        assert_eq!(
            Principal::local_operator(&catalog()).unwrap().to_string(),
            "operator:local"
        );
        let catalog = catalog();
        for bad in ["clerk", "clerk:", "clerk:a b", ":x"] {
            assert!(Principal::parse(&catalog, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_undeclared_role_is_refused_with_the_known_roles() {
        let error = Principal::parse(&catalog(), "guest:ana@example.com").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown role `guest` (known roles: clerk, customer, operator)"
        );
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn own_saga_roles_see_only_their_sagas() {
        let ana = principal("customer:ana@example.com");
        assert!(ana.may_see_saga("customer:ana@example.com"));
        assert!(!ana.may_see_saga("customer:bob@example.com"));
        assert!(!ana.may_see_saga("clerk:frontdesk"));
        assert_eq!(
            ana.own_sagas_filter().as_deref(),
            Some("customer:ana@example.com")
        );
        let clerk = principal("clerk:frontdesk");
        assert!(clerk.may_see_saga("customer:bob@example.com"));
        assert_eq!(clerk.own_sagas_filter(), None);
    }

    #[test]
    fn idempotency_keys_are_scoped_by_principal_unambiguously() {
        let ana = principal("customer:ana@example.com");
        let bob = principal("customer:bob@example.com");
        assert_eq!(ana.scoped_key("k-1"), "customer:ana@example.com/k-1");
        assert_ne!(ana.scoped_key("k-1"), bob.scoped_key("k-1"));
        assert_eq!(ana.own_key(&ana.scoped_key("k-1")), Some("k-1"));
        assert_eq!(bob.own_key(&ana.scoped_key("k-1")), None);
        assert_eq!(ana.shown_key("customer:ana@example.com/a/b"), "a/b");
        assert_eq!(
            bob.shown_key("customer:ana@example.com/k-1"),
            "customer:ana@example.com/k-1"
        );
        // A `/` in a subject cannot move the boundary between scope and key.
        let slashed = principal("clerk:a/b");
        let plain = principal("clerk:a");
        assert_ne!(slashed.scoped_key("c"), plain.scoped_key("b/c"));
        assert_eq!(slashed.scoped_key("c"), "clerk:a%2Fb/c");
        assert_eq!(plain.own_key(&slashed.scoped_key("c")), None);
        let percent = principal("clerk:a%2Fb");
        assert_ne!(percent.scoped_key("c"), slashed.scoped_key("c"));
    }
}
