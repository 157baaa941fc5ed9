//! Every SQL statement of the facade, on its own tables: the bearer tokens ([`TokenStore`]), the
//! HTTP sessions ([`PgSessionStore`]) and the audit of calls ([`AuditStore`]). Statements are parameterized; the facade reads sagas
//! only through the engine's API, never with SQL of its own.

pub mod audit;
pub mod sessions;
pub mod tokens;

pub use audit::{AuditFilter, AuditPruneReport, AuditRecord, AuditStore};
pub use sessions::{PgSessionStore, ANSWERS_CHANNEL};
pub use tokens::{CreatedToken, NewToken, TokenCheck, TokenInfo, TokenStore};
