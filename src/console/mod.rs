//! The operator console (docs/console.md): server-rendered pages at `/console` over the
//! engine's read models and operator API, live over Server-Sent Events fed by PostgreSQL's
//! LISTEN/NOTIFY. Served by `stepwise serve` and alone by `stepwise console --addr ADDR`.
//!
//! - [`session`]: sign-in with a bearer token, session cookies, CSRF tokens, roles;
//! - [`layout`], [`view`], [`timeline`]: the page shell, shared fragments, the SVG charts;
//! - [`pages`]: the pages (overview, saga list, saga detail, MCP audit, sign-in);
//! - [`actions`]: retry, restart, fork, cancel, send an event, bulk retry/restart;
//! - [`live`]: the NOTIFY listener and the SSE stream.

pub mod actions;
pub mod assets;
pub mod layout;
pub mod live;
pub mod pages;
pub mod session;
pub mod timeline;
pub mod view;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use stepwise_engine::Engine;
use stepwise_mcp::{AuditStore, TokenStore};

/// Everything a console request needs.
#[derive(Clone)]
pub struct Console {
    pub engine: Engine,
    pub tokens: TokenStore,
    pub audit: AuditStore,
    pub sessions: session::Sessions,
    pub live: live::Live,
}

impl FromRef<Console> for session::Sessions {
    fn from_ref(console: &Console) -> Self {
        console.sessions.clone()
    }
}

impl Console {
    /// A console over `engine`; `live` is the NOTIFY listener's feed (see [`live::Live::start`]).
    pub fn new(engine: Engine, live: live::Live) -> Self {
        let pool = engine.store().pool().clone();
        Self {
            tokens: TokenStore::new(pool.clone()),
            audit: AuditStore::new(pool),
            engine,
            sessions: session::Sessions::default(),
            live,
        }
    }
}

/// The console's routes, all under `/console`.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/console", get(pages::overview::page))
        .route("/console/", get(pages::overview::page))
        .route("/console/overview/live", get(pages::overview::live))
        .route(
            "/console/signin",
            get(pages::signin::form).post(pages::signin::submit),
        )
        .route("/console/signout", post(pages::signin::signout))
        .route("/console/sagas", get(pages::list::page))
        .route("/console/sagas/{id}", get(pages::detail::page))
        .route("/console/sagas/{id}/live", get(pages::detail::live))
        .route(
            "/console/sagas/{id}/{action}",
            get(actions::confirm).post(actions::apply),
        )
        .route(
            "/console/bulk",
            get(actions::bulk_form).post(actions::bulk_apply),
        )
        .route("/console/audit", get(pages::audit::page))
        .route("/console/events", get(live::events))
        .route("/console/assets/{file}", get(assets::serve))
        .with_state(console)
}
