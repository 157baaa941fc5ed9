//! The Dewy Resort skills: each business intent of the hotel as one saga (or one read-only
//! query) over the CRM/PMS, payments and SMS connectors.
//!
//! Every mutating skill takes an `idempotency_key` (a repeated call returns the same saga) and
//! every external effect carries the step's own key, so re-running a step after a crash has no
//! second effect. Failures are classified where they happen; a permanent one undoes the steps
//! done so far, in reverse order, automatically: no agent ever calls an undo tool by hand.
//!
//! | skill | what it does | what it undoes on failure |
//! |---|---|---|
//! | `upsert_contact` | finds a contact by email or creates it | nothing to undo |
//! | `create_booking` | holds the room, finds/creates the guest, opportunity, booking, optional deposit | deposit refunded, booking cancelled, opportunity lost, hold released |
//! | `manage_booking` | changes guests, requests or dates of a reservation | fields and holds restored |
//! | `extend_stay` | moves the check-out date later if the room is free | hold released, date restored |
//! | `upgrade_room` | moves the booking to a better room and charges the difference | room moved back, charge refunded |
//! | `cancel_booking` | cancels a reservation and refunds the deposit per policy | booking restored |
//! | `check_in_guest` | checks in today's reservation into a vacant room | booking and room restored |
//! | `process_guest_checkout` | charges the stay (waiting for 3-D Secure if the card needs it), checks out, room to Cleaning, housekeeping case, receipt | charge refunded (or cancelled if it never succeeded), booking and room restored, case closed |
//! | `compensate_checkout` | reverses a completed checkout: refund and restore; a refund above the threshold first waits for a manager's approval ([`approval`]) | booking and room restored if the refund fails |
//! | `submit_guest_service_request` | opens a case for a staying guest | case closed |
//! | `submit_maintenance_request` | opens a case; urgent: room to Maintenance and vendor texted | room status restored, case closed |
//! | `update_room_status` | legal room transitions only (e.g. Cleaning -> Vacant) | status restored |
//! | `manage_case` | a note, priority, status (New -> Working -> Resolved -> Closed), escalation (texts the manager on duty) | note removed, priority and status restored |
//!
//! Read-only queries (not sagas): `search_rooms`, `search_cases`, `get_booking`,
//! `list_bookings`.

pub mod approval;
pub mod bill;
pub mod calendar;
mod effects;
pub mod errors;
pub mod holds;
pub mod input;
pub mod no_show;
pub mod queries;
pub mod records;
mod reversible;
pub mod roles;
pub mod skills;

use crate::connectors::Connectors;
use chrono::NaiveDate;
use chrono_tz::Tz;
use holds::Holds;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::DbPool;
use stepwise_engine::{
    Exposure, Registry, RegistryError, RetryPolicy, Step, StepContext, StepError,
};

/// What the hotel skills work with: the connectors, our own database (room holds), the
/// hotel's time zone and its refund approval settings.
#[derive(Debug, Clone)]
pub struct Hotel {
    pub connectors: Connectors,
    pub holds: Holds,
    time_zone: Tz,
    /// How long a checkout waits for the guest to authenticate a card payment (3-D Secure).
    payment_auth_timeout: Duration,
    /// Which refunds wait for a manager's approval, and for how long.
    refund_approval: approval::RefundApproval,
    /// The local time on the arrival day by which a reservation must be checked in.
    no_show_cutoff: chrono::NaiveTime,
    /// Starts and wakes the bookings' no-show timers (see [`no_show`]).
    pub sagas: no_show::SagaLauncher,
}

/// The environment variable that sets how long a payment waits for the guest's 3-D Secure
/// authentication (a humantime duration such as `15m` or `90s`).
pub const PAYMENT_AUTH_TIMEOUT_VAR: &str = "STEPWISE_PAYMENT_AUTH_TIMEOUT";
/// How long a payment waits for the guest's authentication unless configured.
pub const DEFAULT_PAYMENT_AUTH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// An unusable `STEPWISE_PAYMENT_AUTH_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("{PAYMENT_AUTH_TIMEOUT_VAR}={value:?} is not a duration (e.g. 15m, 90s): {reason}")]
pub struct PaymentAuthTimeoutError {
    value: String,
    reason: String,
}

/// The payment authentication deadline from [`PAYMENT_AUTH_TIMEOUT_VAR`], or the default.
pub fn payment_auth_timeout_from_env() -> Result<Duration, PaymentAuthTimeoutError> {
    match std::env::var(PAYMENT_AUTH_TIMEOUT_VAR) {
        Ok(value) if !value.trim().is_empty() => parse_payment_auth_timeout(&value),
        _ => Ok(DEFAULT_PAYMENT_AUTH_TIMEOUT),
    }
}

/// Parses a humantime duration of at least one second.
pub fn parse_payment_auth_timeout(value: &str) -> Result<Duration, PaymentAuthTimeoutError> {
    let error = |reason: String| PaymentAuthTimeoutError {
        value: value.to_string(),
        reason,
    };
    let timeout = humantime::parse_duration(value.trim()).map_err(|e| error(e.to_string()))?;
    if timeout < Duration::from_secs(1) {
        return Err(error("it must be at least 1s".into()));
    }
    Ok(timeout)
}

impl Hotel {
    /// A hotel whose days are UTC days ([`calendar::DEFAULT_TIME_ZONE`]).
    pub fn new(connectors: Connectors, pool: impl Into<DbPool>) -> Arc<Self> {
        Self::with_time_zone(connectors, pool, calendar::DEFAULT_TIME_ZONE)
    }

    /// A hotel whose "today" is the date in `time_zone` (see [`calendar`]).
    pub fn with_time_zone(
        connectors: Connectors,
        pool: impl Into<DbPool>,
        time_zone: Tz,
    ) -> Arc<Self> {
        Arc::new(Self {
            connectors,
            holds: Holds::new(pool),
            time_zone,
            payment_auth_timeout: DEFAULT_PAYMENT_AUTH_TIMEOUT,
            refund_approval: approval::RefundApproval::default(),
            no_show_cutoff: no_show::DEFAULT_CUTOFF,
            sagas: no_show::SagaLauncher::default(),
        })
    }

    /// The same hotel whose unarrived reservations become no-shows at `cutoff` local time on
    /// their arrival day (see [`no_show::cutoff_from_env`]).
    pub fn with_no_show_cutoff(self: Arc<Self>, cutoff: chrono::NaiveTime) -> Arc<Self> {
        let mut hotel = Arc::unwrap_or_clone(self);
        hotel.no_show_cutoff = cutoff;
        Arc::new(hotel)
    }

    /// The local time on the arrival day by which a reservation must be checked in.
    pub fn no_show_cutoff(&self) -> chrono::NaiveTime {
        self.no_show_cutoff
    }

    /// The same hotel whose checkouts wait `timeout` for a card authentication (see
    /// [`payment_auth_timeout_from_env`]).
    pub fn with_payment_auth_timeout(self: Arc<Self>, timeout: Duration) -> Arc<Self> {
        let mut hotel = Arc::unwrap_or_clone(self);
        hotel.payment_auth_timeout = timeout;
        Arc::new(hotel)
    }

    /// The same hotel with other refund approval settings (see [`approval`]).
    pub fn with_refund_approval(self: Arc<Self>, settings: approval::RefundApproval) -> Arc<Self> {
        let mut hotel = Arc::unwrap_or_clone(self);
        hotel.refund_approval = settings;
        Arc::new(hotel)
    }

    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// How long a checkout waits for the guest to authenticate a card payment.
    pub fn payment_auth_timeout(&self) -> Duration {
        self.payment_auth_timeout
    }

    /// Which refunds wait for a manager's approval, and for how long.
    pub fn refund_approval(&self) -> approval::RefundApproval {
        self.refund_approval
    }

    /// The hotel's date when the step's attempt started (the engine's clock, in the hotel's
    /// time zone). Steps that default to "today" record the date they used in their output,
    /// so a re-run and later steps see the same date.
    pub fn today(&self, ctx: &StepContext) -> NaiveDate {
        calendar::local_date(self.time_zone, ctx.now)
    }
}

impl Hotel {
    /// Takes a room hold. When another hold is in the way, holds of finished sagas whose
    /// booking is no longer live in the CRM (cancelled there, or the CRM was restored or
    /// reset) are stale: they are released and the hold is tried once more. Holds of sagas
    /// still running always win, so racing bookings stay exclusive.
    pub async fn take_hold(&self, hold: &holds::NewHold<'_>) -> Result<(), StepError> {
        let first = self.holds.take(hold).await;
        let Err(error) = first else { return Ok(()) };
        if error.code != "room_unavailable" {
            return Err(error);
        }
        let mut released = 0;
        for (id, booking_ref) in self.holds.settled_conflicts(hold).await? {
            if !records::booking_is_live(&self.connectors.crm, &booking_ref, hold.from, hold.to)
                .await?
            {
                tracing::warn!(
                    booking_ref,
                    room = hold.room_number,
                    "releasing a stale room hold: its booking is not live in the CRM"
                );
                self.holds.release_id(id).await?;
                released += 1;
            }
        }
        if released == 0 {
            return Err(error);
        }
        self.holds.take(hold).await
    }
}

/// Declares the hotel's roles and registers every hotel skill and query.
pub fn register(registry: &mut Registry, hotel: &Arc<Hotel>) -> Result<(), crate::SetupError> {
    roles::declare(registry)?;
    for skill in [
        skills::contact::upsert_contact(hotel)?,
        skills::booking::create_booking(hotel)?,
        skills::manage::manage_booking(hotel)?,
        skills::extend::extend_stay(hotel)?,
        skills::upgrade::upgrade_room(hotel)?,
        skills::cancel::cancel_booking(hotel)?,
        skills::check_in::check_in_guest(hotel)?,
        skills::checkout::process_guest_checkout(hotel)?,
        skills::reverse_checkout::compensate_checkout(hotel)?,
        skills::service_request::submit_guest_service_request(hotel)?,
        skills::maintenance::submit_maintenance_request(hotel)?,
        skills::room_status::update_room_status(hotel)?,
        skills::case::manage_case(hotel)?,
        skills::no_show::mark_no_show(hotel)?,
    ] {
        registry.register(skill)?;
    }
    for query in queries::all(hotel) {
        registry
            .register_query(query)
            .map_err(|e: RegistryError| crate::SetupError::Registry(e))?;
    }
    Ok(())
}

/// Who may call what: operators may call everything.
pub(crate) mod exposure {
    use super::Exposure;

    /// Guests on their own data (`guest_email`), staff, managers, operators.
    pub fn guest_self_staff_manager() -> Exposure {
        Exposure::roles(&["staff", "manager", "operator"])
            .self_service(&["guest"], "guest_email")
            .open_world()
    }

    pub fn staff_manager() -> Exposure {
        Exposure::roles(&["staff", "manager", "operator"]).open_world()
    }

    pub fn manager() -> Exposure {
        Exposure::roles(&["manager", "operator"]).open_world()
    }
}

/// Retry policies of the hotel's steps: external calls get a few quick retries; compensations
/// get many more over a longer span, because giving up on an undo needs an operator.
pub(crate) mod policy {
    use super::{Duration, RetryPolicy};
    use stepwise_engine::Jitter;

    pub fn action() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: Jitter::Full,
        }
    }

    pub fn compensation() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 12,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

/// A step whose action gets the hotel, with the hotel's retry policies and a timeout that
/// leaves room for a few connector calls.
pub(crate) fn step<F, Fut, O>(hotel: &Arc<Hotel>, name: &'static str, action: F) -> Step
where
    F: Fn(Arc<Hotel>, StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    O: Serialize + 'static,
{
    let hotel = hotel.clone();
    Step::new(name, move |ctx| errors::acted(action(hotel.clone(), ctx)))
        .retry(policy::action())
        .compensation_retry(policy::compensation())
        .timeout(Duration::from_secs(20))
}

/// Adds a compensation that gets the hotel and the step's recorded output.
pub(crate) fn undo<F, Fut, O>(step: Step, hotel: &Arc<Hotel>, compensation: F) -> Step
where
    F: Fn(Arc<Hotel>, StepContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    O: Serialize + 'static,
{
    let hotel = hotel.clone();
    step.compensate(move |ctx, output| compensation(hotel.clone(), ctx, output))
}

/// Reads a step's recorded output in a compensation.
pub(crate) fn recorded<T: serde::de::DeserializeOwned>(output: Value) -> Result<T, StepError> {
    serde_json::from_value(output)
        .map_err(|e| StepError::permanent("invalid_step_output", e.to_string()))
}

/// The external id under which a step creates its CRM record.
pub(crate) fn record_key(ctx: &StepContext) -> String {
    crate::connectors::external_id(&ctx.idempotency_key)
}

/// In the undo of a possibly done step (`ctx.possibly_done`): the id of the `sobject` record its
/// action's upsert may have created under its external id, if it did (docs/skills.md,
/// "Possibly done steps").
pub(crate) async fn possibly_created(
    hotel: &Hotel,
    ctx: &StepContext,
    sobject: &str,
) -> Result<Option<String>, StepError> {
    let key = crate::connectors::external_id(&ctx.action_idempotency_key());
    hotel
        .connectors
        .crm
        .find_by_external_id(sobject, "External_ID__c", &key)
        .await
        .map_err(ext)
}

/// Turns a connector failure into a step failure.
pub(crate) fn ext(error: crate::connectors::ConnectorError) -> StepError {
    error.into()
}
