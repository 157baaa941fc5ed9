//! # stepwise-mcp
//!
//! The MCP facade of Stepwise, on rmcp (the official Rust MCP SDK, pinned at 3.11.0). It serves
//! whatever [`Registry`](stepwise_engine::Registry) the engine was built with and knows no
//! hotel: tools, schemas and roles come from the catalog's definitions.
//!
//! ## Roles are data
//!
//! The facade names no role. The catalog declares its roles
//! ([`Role`](stepwise_engine::Role)): which sagas a role's callers see (all, or only their
//! own), whether they may call every exposed tool, and whether they may cancel and replay
//! sagas. Each skill's and query's [`Exposure`](stepwise_engine::Exposure) says which roles
//! may call it, and which may call it only on their own data (the input field holding the
//! caller's subject). The registry refuses an exposure naming an undeclared role, and a
//! [`Principal`] can only be built for a declared role, so `STEPWISE_PRINCIPAL`, token creation
//! and token use all check the role against the catalog and list the known ones when it is not
//! there. The `operator` role (every tool, cancels and replays) is built into every registry by
//! the engine, because the replays are the engine's own operator actions and every deployment
//! has someone who runs Stepwise; a composer adds its own roles next to it (the Dewy Resort
//! skills declare `guest`, `staff` and `manager`). docs/mcp.md has the full table.
//!
//! It is thin: a tool call is validated, authorized, turned into a saga start (idempotent on
//! the caller's `idempotency_key`) or a read, waited for a bounded time, and reported. It never
//! orchestrates.
//!
//! | module | responsibility |
//! |---|---|
//! | [`auth`] | principals (`role:subject`, a declared role), bearer token generation |
//! | [`tools`] | the tool catalog per role, annotations, control tools |
//! | [`schema`] | JSON Schemas for clients (inlined `$ref`s, object roots), argument checks |
//! | [`server`] | the rmcp `ServerHandler`: dispatch, skill and query calls, control tools, resources (`saga://{id}`), tasks |
//! | [`results`] | the saga result and tool errors (what was undone, what to do) |
//! | [`tasks`] | the MCP tasks extension mapped onto sagas (read from PostgreSQL) |
//! | [`input`] | waits for input shown to agents: elicitations, who may answer, wait handles |
//! | [`audit`] | the append-only audit of every call |
//! | [`store`] | every SQL statement of the facade: tokens (only SHA-256 stored), audit rows |
//! | [`http`] | streamable HTTP at `/mcp` with bearer auth, `/metrics` |
//! | [`stdio`](serve_stdio) | the stdio transport |

pub mod audit;
pub mod auth;
pub mod http;
pub mod input;
pub mod oauth;
pub mod residency;
pub mod results;
pub mod schema;
pub mod server;
pub mod store;
pub mod tasks;
pub mod tools;

pub use audit::{AuditEntry, Outcome};
pub use auth::{AuthError, Principal};
pub use server::{Facade, StepwiseServer};
pub use store::{
    AuditFilter, AuditPruneReport, AuditRecord, AuditStore, CreatedToken, NewToken, TokenCheck,
    TokenInfo, TokenStore,
};

/// The facade's migrations (`mcp-facade/migrations/`), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The facade's schema `mcp` (tokens, audit) and its migrations, with their own history in
/// `mcp._sqlx_migrations`. The composition root applies them after the engine's.
pub const MIGRATIONS: stepwise_engine::SchemaMigrations =
    stepwise_engine::SchemaMigrations::new("mcp", &MIGRATOR);

use rmcp::ServiceExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("MCP session failed to start: {0}")]
    Start(String),
    #[error("MCP session ended abnormally: {0}")]
    Session(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves one MCP session over stdin/stdout as `principal` until the client disconnects or
/// `shutdown` is cancelled. Logs must go to stderr: stdout carries the protocol.
pub async fn serve_stdio(
    facade: Arc<Facade>,
    principal: Principal,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let server = StepwiseServer::with_principal(facade, principal);
    let running = server
        .serve_with_ct(rmcp::transport::stdio(), shutdown)
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| ServeError::Session(e.to_string()))?;
    Ok(())
}
