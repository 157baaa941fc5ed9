//! Errors: the ones step actions report (classified where they happen) and the engine's own.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether trying again can help, and whether the failed attempt may have taken effect
/// (README, "States"; docs/skills.md, "Classifying errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Refused before any effect (connection refused, 429, 503 with `Retry-After`): the next
    /// attempt may succeed.
    Retryable,
    /// Validation, business rules, a declined card: no effect; stop and compensate.
    Permanent,
    /// The request may have taken effect (a timeout after it was sent, a 5xx, the connection
    /// lost while reading the answer). Retried like [`ErrorClass::Retryable`]; if the step
    /// gives up after such an attempt it is "possibly done" and its own compensation runs too.
    Unknown,
}

/// What a step action or compensation reports when it fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    pub class: ErrorClass,
    /// A stable, machine-readable code such as `card_declined` or `timeout`.
    pub code: String,
    pub message: String,
    /// What the caller (often an agent relaying to a person) can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When the external system said to come back (its `Retry-After`), in milliseconds: the
    /// next attempt is scheduled then instead of after the policy's backoff
    /// ([`RetryPolicy::next_delay`](crate::RetryPolicy::next_delay)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl StepError {
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Retryable,
            code: code.into(),
            message: message.into(),
            action: None,
            retry_after_ms: None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            code: code.into(),
            message: message.into(),
            action: None,
            retry_after_ms: None,
        }
    }

    /// An attempt whose effect is unknown (see [`ErrorClass::Unknown`]).
    pub fn unknown(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Unknown,
            code: code.into(),
            message: message.into(),
            action: None,
            retry_after_ms: None,
        }
    }

    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Says when the external system wants the next attempt (its `Retry-After`).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// When the external system wants the next attempt, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms.map(std::time::Duration::from_millis)
    }

    /// Whether another attempt may be made (retryable and unknown errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self.class, ErrorClass::Retryable | ErrorClass::Unknown)
    }

    /// Whether the attempt may have taken effect.
    pub fn is_unknown(&self) -> bool {
        self.class == ErrorClass::Unknown
    }

    /// The shape stored in `steps.error` and shown by `sagas show`: `code`, `message`,
    /// `retryable`, `action` if any, `"outcome": "unknown"` when the attempt may have
    /// taken effect, and `retry_after_ms` when the external system said when to come back.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "retryable": self.is_retryable(),
        });
        if let Some(map) = value.as_object_mut() {
            if let Some(action) = &self.action {
                map.insert("action".into(), action.clone().into());
            }
            if self.is_unknown() {
                map.insert("outcome".into(), "unknown".into());
            }
            if let Some(ms) = self.retry_after_ms {
                map.insert("retry_after_ms".into(), ms.into());
            }
        }
        value
    }
}

/// Why a saga could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown skill `{0}`")]
    UnknownSkill(String),
    #[error("invalid input for `{skill}`: {message}")]
    InvalidInput { skill: String, message: String },
    #[error("idempotency key `{key}` was already used for skill `{skill}` with a different input (saga {existing})")]
    IdempotencyConflict {
        skill: String,
        key: String,
        existing: Uuid,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Failures of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migration(#[from] crate::migrations::MigrationError),
    #[error("the lease on saga {saga_id} was lost (another worker owns it now)")]
    LostLease { saga_id: Uuid },
    #[error("saga {0} not found")]
    NotFound(Uuid),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the connection to PostgreSQL was lost under the statement (the server restarted
    /// or shut down, the network dropped, or no connection could be had in time). Its outcome
    /// is unknown, but nothing says the worker's leases are gone: once it reconnects it takes
    /// back the sagas it was driving (docs/reliability.md, "PostgreSQL restarts").
    pub fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Database(error) => match error {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; 57P01-57P03: the server is shutting down,
                // crashed or is not accepting connections yet.
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}
