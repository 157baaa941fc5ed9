//! The `stepwise` binary's library: command line, composition root, embedded PostgreSQL,
//! rendering and the demo. Nothing depends on this crate; it composes the engine, the skills
//! and the MCP facade.

pub mod actor;
pub mod app;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod console;
pub mod db_login;
pub mod db_urls;
pub mod demo;
pub mod doctor;
pub mod embedded_pg;
pub mod exit;
pub mod http;
pub mod metrics_server;
pub mod pgbouncer;
pub mod render;
pub mod telemetry;
pub mod throwaway_pg;
