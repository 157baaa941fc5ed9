//! Who is calling: principals, roles, and the bearer tokens of the HTTP transport.
//!
//! A principal is `role:subject`: `guest:ana@example.com`, `staff:frontdesk@dewy.example`,
//! `operator:local`. The role decides which tools exist for the caller; the subject is who the
//! caller is within the role (for a guest, the guest's email: the facade fills and checks
//! self-service inputs with it, so a model cannot act for another guest by changing an
//! argument).
//!
//! Tokens are 32 random bytes shown once (`swt_` + 64 hex digits); only their SHA-256 is
//! stored (`mcp.tokens`). All SQL of this module is parameterized and lives in
//! [`TokenStore`].

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The roles of CONTRACT.md section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A hotel guest: acts only on its own bookings and sagas.
    Guest,
    /// Front desk.
    Staff,
    Manager,
    /// Runs Stepwise: every tool, plus replays.
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Guest, Role::Staff, Role::Manager, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Staff => "staff",
            Role::Manager => "manager",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a role, principal or token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown role `{0}` (expected guest, staff, manager or operator)")]
    UnknownRole(String),
    #[error("a principal is `role:subject`, e.g. `staff:frontdesk@dewy.example` (got `{0}`)")]
    BadPrincipal(String),
    #[error("a subject must be 1 to 320 characters without spaces (got `{0}`)")]
    BadSubject(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthError::UnknownRole(s.to_string()))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub role: Role,
    pub subject: String,
}

impl Principal {
    pub fn new(role: Role, subject: impl Into<String>) -> Result<Self, AuthError> {
        let subject = subject.into();
        if subject.is_empty() || subject.len() > 320 || subject.chars().any(char::is_whitespace) {
            return Err(AuthError::BadSubject(subject));
        }
        Ok(Self { role, subject })
    }

    /// `operator:local`, the default of a stdio session.
    pub fn local_operator() -> Self {
        Self {
            role: Role::Operator,
            subject: "local".to_string(),
        }
    }

    /// Whether this caller may see and act on a saga started by `started_by`.
    /// Guests only on their own; every other role on all.
    pub fn may_see_saga(&self, started_by: &str) -> bool {
        self.role != Role::Guest || started_by == self.to_string()
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
        write!(f, "{}:{}", self.role, self.subject)
    }
}

impl FromStr for Principal {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, subject) = s
            .split_once(':')
            .ok_or_else(|| AuthError::BadPrincipal(s.to_string()))?;
        Principal::new(role.parse()?, subject)
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

type TokenRow = (
    Uuid,
    String,
    String,
    DateTime<Utc>,
    String,
    Option<DateTime<Utc>>,
);

/// A token as listed (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub role: String,
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created: the only time the secret is available.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    pub id: Uuid,
    pub token: String,
    pub role: Role,
    pub subject: String,
    pub principal: String,
}

/// `mcp.tokens`.
#[derive(Debug, Clone)]
pub struct TokenStore {
    pool: PgPool,
}

impl TokenStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a token for `principal`; the returned secret is not stored.
    pub async fn create(
        &self,
        principal: &Principal,
        created_by: &str,
    ) -> Result<CreatedToken, AuthError> {
        let token = generate_token();
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO mcp.tokens (id, token_sha256, role, subject, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(hash_token(&token).as_slice())
        .bind(principal.role.as_str())
        .bind(&principal.subject)
        .bind(Utc::now())
        .bind(created_by)
        .execute(&self.pool)
        .await?;
        Ok(CreatedToken {
            id,
            token,
            role: principal.role,
            subject: principal.subject.clone(),
            principal: principal.to_string(),
        })
    }

    /// The principal of a valid (known, unrevoked) token.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, AuthError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT role, subject FROM mcp.tokens
             WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(hash_token(token).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((role, subject)) => Ok(Some(Principal::new(role.parse()?, subject)?)),
            None => Ok(None),
        }
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, role, subject, created_at, created_by, revoked_at
             FROM mcp.tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, role, subject, created_at, created_by, revoked_at)| TokenInfo {
                    id,
                    role,
                    subject,
                    created_at,
                    created_by,
                    revoked_at,
                },
            )
            .collect())
    }

    /// Revokes a token by id; false if no such unrevoked token.
    pub async fn revoke(&self, id: Uuid) -> Result<bool, AuthError> {
        let done = sqlx::query(
            "UPDATE mcp.tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn principals_parse_and_print() {
        let p: Principal = "guest:ana@example.com".parse().unwrap();
        assert_eq!(p.role, Role::Guest);
        assert_eq!(p.subject, "ana@example.com");
        assert_eq!(p.to_string(), "guest:ana@example.com");
        assert!("admin:x".parse::<Principal>().is_err());
        assert!("staff".parse::<Principal>().is_err());
        assert!("staff:".parse::<Principal>().is_err());
        assert!("staff:a b".parse::<Principal>().is_err());
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
    fn guests_see_only_their_sagas() {
        let guest: Principal = "guest:ana@example.com".parse().unwrap();
        assert!(guest.may_see_saga("guest:ana@example.com"));
        assert!(!guest.may_see_saga("guest:bob@example.com"));
        assert!(!guest.may_see_saga("staff:frontdesk"));
        let staff: Principal = "staff:frontdesk".parse().unwrap();
        assert!(staff.may_see_saga("guest:bob@example.com"));
    }

    #[test]
    fn idempotency_keys_are_scoped_by_principal_unambiguously() {
        let ana: Principal = "guest:ana@example.com".parse().unwrap();
        let bob: Principal = "guest:bob@example.com".parse().unwrap();
        assert_eq!(ana.scoped_key("k-1"), "guest:ana@example.com/k-1");
        assert_ne!(ana.scoped_key("k-1"), bob.scoped_key("k-1"));
        assert_eq!(ana.own_key(&ana.scoped_key("k-1")), Some("k-1"));
        assert_eq!(bob.own_key(&ana.scoped_key("k-1")), None);
        assert_eq!(ana.shown_key("guest:ana@example.com/a/b"), "a/b");
        assert_eq!(
            bob.shown_key("guest:ana@example.com/k-1"),
            "guest:ana@example.com/k-1"
        );
        // A `/` in a subject cannot move the boundary between scope and key.
        let slashed: Principal = "staff:a/b".parse().unwrap();
        let plain: Principal = "staff:a".parse().unwrap();
        assert_ne!(slashed.scoped_key("c"), plain.scoped_key("b/c"));
        assert_eq!(slashed.scoped_key("c"), "staff:a%2Fb/c");
        assert_eq!(plain.own_key(&slashed.scoped_key("c")), None);
        let percent: Principal = "staff:a%2Fb".parse().unwrap();
        assert_ne!(percent.scoped_key("c"), slashed.scoped_key("c"));
    }
}
