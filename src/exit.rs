//! Exit codes of the CLI (README, "Command line") and the error type that carries them.

use stepwise_engine::{MigrationError, StartError, StoreError};

/// What kind of failure ended a command; the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The operation ran and failed (e.g. a waited-for saga ended compensated).
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    NotFound = 3,
    /// Idempotency key reused with other input, replay refused.
    Conflict = 4,
}

/// An error that reached the command line: a message and an exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Exit::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Exit::Conflict, message)
    }

    pub fn code(&self) -> i32 {
        self.exit as i32
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::not_found(e.to_string()),
            StoreError::Migration(MigrationError::OldLayout { .. }) => Self::usage(e.to_string()),
            StoreError::Database(_) | StoreError::Migration(_) => Self::usage(format!(
                "{e} (check DATABASE_URL and that PostgreSQL is running)"
            )),
            other => Self::failed(other.to_string()),
        }
    }
}

impl From<StartError> for CliError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::UnknownSkill(_) => {
                Self::not_found(format!("{e} (`stepwise skills` lists them)"))
            }
            StartError::InvalidInput { .. } => Self::usage(e.to_string()),
            StartError::IdempotencyConflict { .. } => Self::conflict(e.to_string()),
            StartError::Store(store) => store.into(),
        }
    }
}

impl From<crate::embedded_pg::EmbeddedError> for CliError {
    fn from(e: crate::embedded_pg::EmbeddedError) -> Self {
        let exit = if e.exit_code() == 2 {
            Exit::Usage
        } else {
            Exit::Failed
        };
        Self::new(exit, e.to_string())
    }
}
