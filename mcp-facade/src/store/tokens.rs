//! The bearer tokens of the HTTP transport: only each token's SHA-256 is stored, with the role
//! and subject it acts as, its expiry, its last use and its region. The role is checked against
//! the catalog when a token is created (a [`Principal`] names only declared roles) and again
//! when it is used.

use crate::auth::{generate_token, hash_token, AuthError, Principal};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use stepwise_engine::DbPool;
use stepwise_engine::Registry;
use uuid::Uuid;

/// How often `last_used_at` is written for one token at most.
const LAST_USED_EVERY: Duration = Duration::seconds(60);

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    role: String,
    subject: String,
    created_at: DateTime<Utc>,
    created_by: String,
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    region: Option<String>,
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub role: String,
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub region: Option<String>,
    /// `active`, `revoked` or `expired`, at the time of listing.
    pub state: &'static str,
}

/// A token just created: the only time the secret is available.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    pub id: Uuid,
    pub token: String,
    pub role: String,
    pub subject: String,
    pub principal: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub region: Option<String>,
}

/// What a new token is: who it acts as, for how long, for which region.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub principal: &'a Principal,
    pub created_by: &'a str,
    /// How long it is valid from now; `None` for no expiry.
    pub expires_in: Option<std::time::Duration>,
    /// The data-residency region it belongs to (checked against `STEPWISE_REGION`).
    pub region: Option<String>,
}

/// The outcome of presenting a token.
#[derive(Debug, Clone)]
pub enum TokenCheck {
    /// Known, unrevoked, unexpired: its principal and region.
    Valid {
        principal: Principal,
        region: Option<String>,
    },
    /// No such token.
    Unknown,
    Revoked,
    Expired,
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

    /// Creates a token for `principal`, valid forever; the returned secret is not stored.
    pub async fn create(
        &self,
        principal: &Principal,
        created_by: &str,
    ) -> Result<CreatedToken, AuthError> {
        self.create_token(NewToken {
            principal,
            created_by,
            expires_in: None,
            region: None,
        })
        .await
    }

    /// Creates a token as `new` says; the returned secret is not stored.
    pub async fn create_token(&self, new: NewToken<'_>) -> Result<CreatedToken, AuthError> {
        let token = generate_token();
        let id = Uuid::now_v7();
        let now = Utc::now();
        let expires_at = match new.expires_in {
            Some(lifetime) => Some(
                Duration::from_std(lifetime)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| AuthError::BadLifetime(format!("{lifetime:?}")))?,
            ),
            None => None,
        };
        sqlx::query(
            "INSERT INTO mcp.tokens
                 (id, token_sha256, role, subject, created_at, created_by, expires_at, region)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(hash_token(&token).as_slice())
        .bind(new.principal.role().name())
        .bind(new.principal.subject())
        .bind(now)
        .bind(new.created_by)
        .bind(expires_at)
        .bind(&new.region)
        .execute(&self.pool)
        .await?;
        Ok(CreatedToken {
            id,
            token,
            role: new.principal.role().name().to_string(),
            subject: new.principal.subject().to_string(),
            principal: new.principal.to_string(),
            expires_at,
            region: new.region,
        })
    }

    /// Checks a presented token: its principal (role resolved in `catalog`) and region when
    /// it is known, unrevoked and unexpired, and records its use (at most once a minute). A
    /// token whose role the catalog no longer declares is refused with
    /// [`AuthError::UnknownRole`].
    pub async fn check(&self, token: &str, catalog: &Registry) -> Result<TokenCheck, AuthError> {
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT id, role, subject, created_at, created_by, revoked_at, expires_at,
                    last_used_at, region
             FROM mcp.tokens WHERE token_sha256 = $1",
        )
        .bind(hash_token(token).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TokenCheck::Unknown);
        };
        let now = Utc::now();
        if row.revoked_at.is_some() {
            return Ok(TokenCheck::Revoked);
        }
        if row.expires_at.is_some_and(|at| at <= now) {
            return Ok(TokenCheck::Expired);
        }
        let principal = Principal::new(catalog, &row.role, row.subject)?;
        if row
            .last_used_at
            .is_none_or(|at| now - at >= LAST_USED_EVERY)
        {
            sqlx::query(
                "UPDATE mcp.tokens SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - interval '60 seconds')",
            )
            .bind(row.id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(TokenCheck::Valid {
            principal,
            region: row.region,
        })
    }

    /// The principal of a valid (known, unrevoked, unexpired) token, its role resolved in
    /// `catalog`.
    pub async fn authenticate(
        &self,
        token: &str,
        catalog: &Registry,
    ) -> Result<Option<Principal>, AuthError> {
        match self.check(token, catalog).await? {
            TokenCheck::Valid { principal, .. } => Ok(Some(principal)),
            _ => Ok(None),
        }
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, role, subject, created_at, created_by, revoked_at, expires_at,
                    last_used_at, region
             FROM mcp.tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = Utc::now();
        Ok(rows
            .into_iter()
            .map(|row| TokenInfo {
                state: if row.revoked_at.is_some() {
                    "revoked"
                } else if row.expires_at.is_some_and(|at| at <= now) {
                    "expired"
                } else {
                    "active"
                },
                id: row.id,
                role: row.role,
                subject: row.subject,
                created_at: row.created_at,
                created_by: row.created_by,
                revoked_at: row.revoked_at,
                expires_at: row.expires_at,
                last_used_at: row.last_used_at,
                region: row.region,
            })
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
