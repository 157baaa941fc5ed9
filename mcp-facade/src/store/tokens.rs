//! The bearer tokens of the HTTP transport: only each token's SHA-256 is stored, with the role
//! and subject it acts as. The role is checked against the catalog when a token is created
//! (a [`Principal`] names only declared roles) and again when it is used.

use crate::auth::{generate_token, hash_token, AuthError, Principal};
use chrono::{DateTime, Utc};
use serde::Serialize;
use stepwise_engine::DbPool;
use stepwise_engine::Registry;
use uuid::Uuid;

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
    pub role: String,
    pub subject: String,
    pub principal: String,
}

/// The facade's token table.
#[derive(Debug, Clone)]
pub struct TokenStore {
    pool: DbPool,
}

impl TokenStore {
    pub fn new(pool: impl Into<DbPool>) -> Self {
        Self { pool: pool.into() }
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
        .bind(principal.role().name())
        .bind(principal.subject())
        .bind(Utc::now())
        .bind(created_by)
        .execute(&self.pool)
        .await?;
        Ok(CreatedToken {
            id,
            token,
            role: principal.role().name().to_string(),
            subject: principal.subject().to_string(),
            principal: principal.to_string(),
        })
    }

    /// The principal of a valid (known, unrevoked) token, its role resolved in `catalog`. A
    /// token whose role the catalog no longer declares is refused with
    /// [`AuthError::UnknownRole`].
    pub async fn authenticate(
        &self,
        token: &str,
        catalog: &Registry,
    ) -> Result<Option<Principal>, AuthError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT role, subject FROM mcp.tokens
             WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(hash_token(token).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((role, subject)) => Ok(Some(Principal::new(catalog, &role, subject)?)),
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
