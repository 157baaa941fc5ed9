//! The MCP sessions of the streamable HTTP transport, in PostgreSQL, so that every facade of a
//! deployment serves every session (docs/mcp.md, "Several facades"): rmcp keeps a session's
//! live state in the process that has it and asks this store for the client's `initialize`
//! parameters when a request of a session it does not know arrives, then restores the session
//! as if the client had initialized with it. Answers to server requests sent during a call
//! (`elicitation/create`) are relayed to the facade holding that call through
//! `mcp.session_answers` and NOTIFY [`ANSWERS_CHANNEL`].

use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore};
use serde_json::Value;
use stepwise_engine::PgStore;

/// The NOTIFY channel announcing a relayed answer (its payload: the row's id).
pub const ANSWERS_CHANNEL: &str = "stepwise_mcp_answers";

/// Sessions not used for this long are deleted when a new one is stored.
const SESSION_RETENTION: &str = "7 days";
/// Relayed answers are deleted after this long (they are read within milliseconds).
const ANSWER_RETENTION: &str = "10 minutes";

/// Why the session store failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot listen: {0}")]
    Listen(#[from] stepwise_engine::StoreError),
    #[error("a stored session is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// `mcp.sessions` and `mcp.session_answers`.
#[derive(Debug, Clone)]
pub struct PgSessionStore {
    store: PgStore,
}

impl PgSessionStore {
    /// Over the engine's connections (its pool, and its LISTEN connection, which goes to
    /// `STEPWISE_LISTEN_URL` when set).
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// Keeps a client's answer for session `session_id` and announces it; returns its id.
    pub async fn relay_answer(
        &self,
        session_id: &str,
        message: &Value,
    ) -> Result<i64, SessionStoreError> {
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(&format!(
            "DELETE FROM mcp.session_answers WHERE at < now() - interval '{ANSWER_RETENTION}'"
        ))
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO mcp.session_answers (session_id, message) VALUES ($1, $2) RETURNING id",
        )
        .bind(session_id)
        .bind(message)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ANSWERS_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A connection listening on [`ANSWERS_CHANNEL`].
    pub async fn listen(&self) -> Result<sqlx::postgres::PgListener, SessionStoreError> {
        let mut listener = self.store.listener().await?;
        listener.listen(ANSWERS_CHANNEL).await?;
        Ok(listener)
    }

    /// A relayed answer by id: its session and message.
    pub async fn answer(&self, id: i64) -> Result<Option<(String, Value)>, SessionStoreError> {
        Ok(
            sqlx::query_as("SELECT session_id, message FROM mcp.session_answers WHERE id = $1")
                .bind(id)
                .fetch_optional(self.store.pool())
                .await?,
        )
    }
}

#[async_trait::async_trait]
impl SessionStore for PgSessionStore {
    async fn load(
        &self,
        session_id: &str,
    ) -> Result<
        Option<SessionState>,
        rmcp::transport::streamable_http_server::session::SessionStoreError,
    > {
        let state: Option<Value> = sqlx::query_scalar(
            "UPDATE mcp.sessions SET seen_at = now() WHERE id = $1 RETURNING state",
        )
        .bind(session_id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(SessionStoreError::from)?;
        match state {
            Some(state) => Ok(Some(
                serde_json::from_value(state).map_err(SessionStoreError::from)?,
            )),
            None => Ok(None),
        }
    }

    async fn store(
        &self,
        session_id: &str,
        state: &SessionState,
    ) -> Result<(), rmcp::transport::streamable_http_server::session::SessionStoreError> {
        let state = serde_json::to_value(state).map_err(SessionStoreError::from)?;
        sqlx::query(&format!(
            "DELETE FROM mcp.sessions WHERE seen_at < now() - interval '{SESSION_RETENTION}'"
        ))
        .execute(self.store.pool())
        .await
        .map_err(SessionStoreError::from)?;
        sqlx::query(
            "INSERT INTO mcp.sessions (id, state) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, seen_at = now()",
        )
        .bind(session_id)
        .bind(state)
        .execute(self.store.pool())
        .await
        .map_err(SessionStoreError::from)?;
        Ok(())
    }

    async fn delete(
        &self,
        session_id: &str,
    ) -> Result<(), rmcp::transport::streamable_http_server::session::SessionStoreError> {
        sqlx::query("DELETE FROM mcp.sessions WHERE id = $1")
            .bind(session_id)
            .execute(self.store.pool())
            .await
            .map_err(SessionStoreError::from)?;
        Ok(())
    }
}
