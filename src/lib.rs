//! The `stepwise` binary's library: command line, embedded PostgreSQL, demo.
//! Nothing depends on this crate; it composes the engine, the skills and the MCP facade.

pub mod embedded_pg;
