//! Composition root: resolves the database (embedded default included), migrates, and builds
//! the engine over the built-in skills.

use crate::embedded_pg::{self, DatabaseTarget};
use crate::exit::CliError;
use std::sync::Arc;
use stepwise_engine::{Engine, PgStore, SystemClock};
use tracing::warn;

/// A connected engine. Keep it alive while the engine is used: it may own the embedded server.
pub struct App {
    pub engine: Engine,
    pub database_url: String,
    target: DatabaseTarget,
}

impl App {
    /// Connects (starting the embedded PostgreSQL if needed), applies migrations and registers
    /// the built-in skills.
    pub async fn open(pool_size: u32) -> Result<Self, CliError> {
        let target = embedded_pg::resolve_database().await?;
        let store = PgStore::connect(&target.url, pool_size).await?;
        store.migrate().await?;
        let registry = stepwise_skills::registry()
            .map_err(|e| CliError::failed(format!("built-in skills are inconsistent: {e}")))?;
        Ok(Self {
            engine: Engine::new(store, Arc::new(registry), Arc::new(SystemClock)),
            database_url: target.url.clone(),
            target,
        })
    }

    /// Closes the pool and stops the embedded server if this process started it.
    pub async fn close(self) {
        self.engine.store().pool().close().await;
        if let Some(embedded) = self.target.embedded {
            if let Err(e) = embedded.shutdown().await {
                warn!(error = %e, "could not stop the embedded PostgreSQL cleanly");
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Who the CLI acts as in the history: `cli:{OS user}`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
