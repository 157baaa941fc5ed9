//! Stepwise skills: the Dewy Resort skills, their connectors, and the synthetic diagnostic
//! skill used by tests, benchmarks and chaos runs (defined by the engine, re-exported here as
//! [`synthetic`]). The external systems' stand-in for tests and the demo is its own crate,
//! `stepwise-sandbox` (sandbox/).
//!
//! # Layout
//!
//! ```text
//! ../migrations/        the schema `hotel` (room holds), applied after the engine's
//! connectors/           HTTP clients of the hotel's external systems: payments (Stripe-style),
//!                       crm (Salesforce-style CRM/PMS), sms (Twilio-style); errors classified
//!                       retryable or permanent where they happen
//! hotel/
//!   mod.rs              Hotel (connectors, room holds, time zone), register(), the step
//!                       helpers every skill uses (step, undo, retry policies, exposures)
//!   skills/             one file per skill: its input, steps, undos and output
//!     contact.rs          upsert_contact
//!     booking.rs          create_booking
//!     manage.rs           manage_booking
//!     extend.rs           extend_stay
//!     upgrade.rs          upgrade_room
//!     cancel.rs           cancel_booking (and the cancellation policy)
//!     check_in.rs         check_in_guest
//!     checkout.rs         process_guest_checkout
//!     reverse_checkout.rs compensate_checkout
//!     service_request.rs  submit_guest_service_request
//!     maintenance.rs      submit_maintenance_request
//!     room_status.rs      update_room_status (and the legal transitions)
//!     case.rs             manage_case (notes, priority, legal status moves, escalation)
//!   effects/            what several skills do, each under the step's idempotency key:
//!     payments.rs         charge, refund, payment records in the CRM
//!     crm.rs              contacts, opportunity stages, room statuses (with their undos)
//!     cases.rs            open and close cases
//!     sms.rs              text a guest or vendor (best effort)
//!     room_holds.rs       a step's room hold and its release
//!   reversible.rs       a status change and its undo, both from the recorded output
//!   records.rs          the CRM records, picklists and the lookups skills share
//!   queries/            read-only tools (not sagas): rooms.rs search_rooms (by dates),
//!                       cases.rs search_cases, bookings.rs get_booking and
//!                       list_bookings
//!   input.rs            input rules serde cannot express (emails, names, dates...)
//!   holds.rs            room holds in our own database (schema `hotel`)
//!   calendar.rs         the hotel's "today": the engine's clock in STEPWISE_HOTEL_TZ
//!   approval.rs         which refunds wait for a manager (STEPWISE_REFUND_APPROVAL_*)
//! ```
//!
//! A skill file reads top to bottom as the saga runs: the input type and its checks, the
//! builder listing the steps in order (each step's name is a durable contract, stored with
//! every saga), then one function per step and per undo. A step that defaults to "today" asks
//! [`hotel::Hotel::today`] and records the date it used in its output.

pub mod connectors;
pub mod hotel;

/// The diagnostic skill `synthetic_chain` (defined by the engine, which it needs alone).
pub use stepwise_engine::synthetic;

use stepwise_engine::{Registry, RegistryError, SchemaMigrations, SkillError};

/// The hotel skills' migrations (`skills/migrations/`), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The hotel skills' schema `hotel` (room holds) and its migrations, with their own history in
/// `hotel._sqlx_migrations`. The composition root applies them after the engine's.
pub const MIGRATIONS: SchemaMigrations = SchemaMigrations::new("hotel", &MIGRATOR);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Skill(#[from] SkillError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Connectors(#[from] connectors::ConnectorError),
}

/// A registry with the built-in diagnostic skill only (no external systems needed).
pub fn registry() -> Result<Registry, SetupError> {
    let mut registry = Registry::new();
    registry.register(synthetic::skill()?)?;
    Ok(registry)
}

/// A registry with every skill: the diagnostic one and the Dewy Resort skills and queries
/// over `hotel`'s connectors and database.
pub fn registry_with_hotel(hotel: &std::sync::Arc<hotel::Hotel>) -> Result<Registry, SetupError> {
    let mut registry = registry()?;
    hotel::register(&mut registry, hotel)?;
    Ok(registry)
}

/// Every skill and query, for listings that need neither a database nor external systems
/// (`stepwise skills`): the connectors and database handle inside are never used, and the pool
/// connects lazily, so building it does no I/O. Do not run sagas on it.
pub fn catalog() -> Result<Registry, SetupError> {
    let config = connectors::ConnectorConfig::sandbox("http://127.0.0.1:8787");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
    registry_with_hotel(&hotel::Hotel::new(
        connectors::Connectors::new(&config)?,
        pool,
    ))
}
