//! Every SQL statement of the facade, on its own tables: the bearer tokens ([`TokenStore`]) and
//! the audit of calls ([`AuditStore`]). Statements are parameterized; the facade reads sagas
//! only through the engine's API, never with SQL of its own.

pub mod audit;
pub mod tokens;

pub use audit::{AuditFilter, AuditPruneReport, AuditRecord, AuditStore};
pub use tokens::{CreatedToken, TokenInfo, TokenStore};
