//! Composition root: resolves the database (embedded default included), migrates, and builds
//! the engine over every skill: the diagnostic one and the Dewy Resort skills, whose
//! connectors point at `STEPWISE_SANDBOX_URL` or the real services (see
//! `stepwise_skills::connectors::ConnectorConfig::from_env`).

use crate::embedded_pg::{self, DatabaseTarget};
use crate::exit::CliError;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{Engine, PgStore, StoreError, SystemClock};
use stepwise_sandbox::{Sandbox, SandboxHandle};
use stepwise_skills::connectors::limits::{LimitsConfig, SharedLimits};
use stepwise_skills::connectors::{ConnectorConfig, Connectors};
use stepwise_skills::hotel::approval::RefundApproval;
use stepwise_skills::hotel::{calendar, Hotel};
use tracing::{debug, warn};

/// Where `stepwise sandbox` listens by default, and where connectors look when nothing is
/// configured and no sandbox is started in-process.
pub const DEFAULT_SANDBOX_URL: &str = "http://127.0.0.1:8787";

/// Whether an unconfigured process starts its own sandbox (`demo`, `mcp`) or expects one at
/// [`DEFAULT_SANDBOX_URL`] (workers and one-shot commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    StartIfUnset,
    ExpectRunning,
}

/// A connected engine. Keep it alive while the engine is used: it may own the embedded server.
pub struct App {
    pub engine: Engine,
    pub database_url: String,
    /// The hotel skills' connectors and room holds.
    pub hotel: Arc<Hotel>,
    /// The in-process sandbox's base URL, when this process started one.
    pub sandbox_url: Option<String>,
    target: DatabaseTarget,
    sandbox: Option<SandboxHandle>,
}

impl App {
    /// Connects (starting the embedded PostgreSQL if needed), applies migrations and registers
    /// every skill. Unconfigured connectors point at [`DEFAULT_SANDBOX_URL`].
    pub async fn open(pool_size: u32) -> Result<Self, CliError> {
        Self::open_with(pool_size, SandboxMode::ExpectRunning).await
    }

    /// Like [`App::open`], but starts an in-process sandbox when no external system is
    /// configured, so one command runs the whole story.
    pub async fn open_with_sandbox(pool_size: u32) -> Result<Self, CliError> {
        Self::open_with(pool_size, SandboxMode::StartIfUnset).await
    }

    async fn open_with(pool_size: u32, mode: SandboxMode) -> Result<Self, CliError> {
        // Configuration errors come before anything is started or connected.
        let time_zone =
            calendar::time_zone_from_env().map_err(|e| CliError::usage(e.to_string()))?;
        let payment_auth_timeout = stepwise_skills::hotel::payment_auth_timeout_from_env()
            .map_err(|e| CliError::usage(e.to_string()))?;
        let refund_approval =
            RefundApproval::from_env().map_err(|e| CliError::usage(e.to_string()))?;
        crate::db_urls::listen_url_from_env().map_err(CliError::usage)?;
        let no_show_cutoff = stepwise_skills::hotel::no_show::cutoff_from_env()
            .map_err(|e| CliError::usage(e.to_string()))?;
        let limits = LimitsConfig::from_env().map_err(|e| CliError::usage(e.to_string()))?;
        let target = embedded_pg::resolve_database().await?;
        let connections = crate::db_urls::connections(&target.url).map_err(CliError::usage)?;
        let store = PgStore::connect_with(&connections, pool_size).await?;
        match &connections.listen_url {
            // Migrations take a session-level lock and set a search_path: not through a
            // transaction pooler.
            Some(direct) => {
                let direct = PgStore::connect(direct, 1).await?;
                let migrated = migrate(direct.pool().raw()).await;
                direct.pool().close().await;
                migrated?;
            }
            None => migrate(store.pool().raw()).await?,
        }
        let (config, sandbox) = connector_config(mode).await?;
        // Every worker sharing this PostgreSQL respects the external systems' limits together
        // (docs/skills.md, "Rate limits shared by every worker").
        let lease = config.timeout * 2 + Duration::from_secs(10);
        let connectors = Connectors::new(&config)
            .map_err(|e| CliError::failed(format!("cannot set up the connectors: {e}")))?
            .with_shared_limits(SharedLimits::new(store.pool().clone(), limits, lease));
        let hotel = Hotel::with_time_zone(connectors, store.pool().clone(), time_zone)
            .with_payment_auth_timeout(payment_auth_timeout)
            .with_refund_approval(refund_approval)
            .with_no_show_cutoff(no_show_cutoff);
        let registry = stepwise_skills::registry_with_hotel(&hotel)
            .map_err(|e| CliError::failed(format!("built-in skills are inconsistent: {e}")))?;
        let engine = Engine::new(store, Arc::new(registry), Arc::new(SystemClock));
        // The booking skills start and wake the bookings' no-show timers on this engine.
        hotel.sagas.attach(&engine);
        Ok(Self {
            engine,
            database_url: target.url.clone(),
            sandbox_url: sandbox.as_ref().map(SandboxHandle::base_url),
            hotel,
            target,
            sandbox,
        })
    }

    /// Closes the pool and stops the embedded server if this process started it.
    pub async fn close(self) {
        self.engine.store().pool().close().await;
        if let Some(sandbox) = self.sandbox {
            sandbox.shutdown().await;
        }
        if let Some(embedded) = self.target.embedded {
            if let Err(e) = embedded.shutdown().await {
                warn!(error = %e, "could not stop the embedded PostgreSQL cleanly");
            }
        }
    }
}

impl App {
    /// The Stripe webhook secret this process verifies `/webhooks/stripe` with:
    /// `STEPWISE_STRIPE_WEBHOOK_SECRET`, or, when it started its own sandbox, a fresh random
    /// one (the sandbox is then wired to it by [`App::wire_sandbox_webhooks`]). None: the
    /// endpoint answers 503.
    pub fn webhook_secret(&self) -> Option<String> {
        crate::http::stripe_webhook::secret_from_env().or_else(|| {
            self.sandbox
                .is_some()
                .then(crate::http::stripe_webhook::generate_secret)
        })
    }

    /// Makes the in-process sandbox (if this process started one) send its Stripe events to
    /// `endpoint`, signed with `secret`, as a Stripe account's webhook endpoint would.
    pub fn wire_sandbox_webhooks(&self, endpoint: &str, secret: &str) {
        let Some(sandbox) = &self.sandbox else { return };
        let config = stepwise_sandbox::WebhookConfig {
            url: endpoint.to_string(),
            secret: secret.to_string(),
        };
        match sandbox.set_webhooks(Some(config)) {
            Ok(()) => debug!(
                endpoint,
                "the in-process sandbox sends its Stripe webhooks here"
            ),
            Err(e) => warn!(error = %e, "cannot wire the sandbox's webhooks"),
        }
    }

    /// For commands without an HTTP server (`demo`, `mcp` over stdio): when this process
    /// started its own sandbox, serves `/webhooks/stripe` on a loopback port until `stop` and
    /// points the sandbox's webhooks at it, so a checkout waiting for 3-D Secure hears back.
    pub async fn serve_sandbox_webhooks(&self, stop: tokio_util::sync::CancellationToken) {
        if self.sandbox.is_none() {
            return;
        }
        let Some(secret) = self.webhook_secret() else {
            return;
        };
        let served =
            crate::http::stripe_webhook::serve_loopback(self.engine.clone(), secret.clone(), stop)
                .await;
        match served {
            Ok(endpoint) => self.wire_sandbox_webhooks(&endpoint, &secret),
            Err(e) => {
                warn!(error = %e, "cannot serve the Stripe webhook endpoint; payments waiting for 3-D Secure will wait until their deadline")
            }
        }
    }
}

/// Applies every crate's migrations, each into its own schema with its own history: the
/// engine's (`stepwise`, refusing a 0.x database), then the hotel skills' (`hotel`), then the
/// MCP facade's (`mcp`).
pub async fn migrate(pool: &PgPool) -> Result<(), CliError> {
    PgStore::new(pool.clone()).migrate().await?;
    stepwise_engine::migrations::apply_all(
        pool,
        &[stepwise_skills::MIGRATIONS, stepwise_mcp::MIGRATIONS],
    )
    .await
    .map_err(StoreError::from)?;
    // This month's and next month's audit partitions, ahead of the rows (docs/mcp.md, Audit).
    stepwise_mcp::AuditStore::new(pool.clone())
        .ensure_partitions(chrono::Utc::now())
        .await
        .map_err(StoreError::from)?;
    Ok(())
}

/// The connector configuration from the environment, or a sandbox: started here
/// ([`SandboxMode::StartIfUnset`]) or expected at [`DEFAULT_SANDBOX_URL`].
async fn connector_config(
    mode: SandboxMode,
) -> Result<(ConnectorConfig, Option<SandboxHandle>), CliError> {
    if let Some(config) = ConnectorConfig::from_env().map_err(|e| CliError::usage(e.to_string()))? {
        return Ok((config, None));
    }
    match mode {
        SandboxMode::ExpectRunning => Ok((ConnectorConfig::sandbox(DEFAULT_SANDBOX_URL), None)),
        SandboxMode::StartIfUnset => {
            let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), 1)
                .await
                .map_err(|e| CliError::failed(format!("cannot start the sandbox: {e}")))?;
            debug!(url = %sandbox.base_url(), "started an in-process sandbox for the external systems");
            Ok((ConnectorConfig::sandbox(&sandbox.base_url()), Some(sandbox)))
        }
    }
}

/// What a process that started an in-process sandbox says at start (`mcp` and `serve` as a
/// warning, `demo` as information): which services are fake, that nothing real happens, and how to point the
/// connectors at real ones (docs/skills.md, "Pointing the connectors at real services").
pub fn in_process_sandbox_notice(url: &str) -> String {
    format!(
        "no external services configured: payments (Stripe-style), the CRM/PMS \
         (Salesforce-style) and SMS (Twilio-style) are an in-memory sandbox at {url}; nothing \
         real is charged, recorded or texted, and everything in it is gone on exit. For real \
         services set STEPWISE_STRIPE_URL, STEPWISE_SALESFORCE_URL and STEPWISE_TWILIO_URL with \
         their credentials (STEPWISE_STRIPE_KEY, STEPWISE_SALESFORCE_TOKEN, \
         STEPWISE_TWILIO_ACCOUNT_SID, STEPWISE_TWILIO_AUTH_TOKEN, STEPWISE_TWILIO_FROM); for a \
         sandbox shared by several processes, STEPWISE_SANDBOX_URL (see docs/skills.md)"
    )
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
