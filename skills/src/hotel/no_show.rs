//! No-shows: every booking `create_booking` makes starts a durable timer, a `mark_no_show` saga
//! (skills/src/hotel/skills/no_show.rs) that waits until the hotel's cutoff on the arrival day
//! (`STEPWISE_NO_SHOW_CUTOFF`, default 18:00, local time in `STEPWISE_HOTEL_TZ`). A check-in or
//! a cancellation before then disarms it (event `disarm`); at the cutoff a reservation still
//! not checked in is marked No Show, its room released and the no-show policy applied (docs/
//! skills.md, "No-shows"). The timer is one of the engine's durable waits (docs/waits.md): the
//! saga is `waiting`, holding no worker, until the deadline or the event.
//!
//! This module has what the booking, check-in and cancellation skills share: the cutoff, the
//! deadline rule and a handle on the engine to start and wake the timers with.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock, Weak};
use stepwise_engine::{
    DeliverError, Engine, PgStore, Registry, SharedClock, StartRequest, StepContext, StepError,
};

/// The variable naming the cutoff: a local time `HH:MM` (or `HH:MM:SS`).
pub const CUTOFF_VAR: &str = "STEPWISE_NO_SHOW_CUTOFF";

/// The cutoff when [`CUTOFF_VAR`] is unset: 18:00 local time.
pub const DEFAULT_CUTOFF: NaiveTime = match NaiveTime::from_hms_opt(18, 0, 0) {
    Some(t) => t,
    None => NaiveTime::MIN,
};

/// The timer's skill.
pub const SKILL: &str = "mark_no_show";

/// The event that disarms a timer (a check-in or a cancellation came first).
pub const DISARM: &str = "disarm";

/// Who starts the timers (the saga's `started_by`).
pub const TIMER_ACTOR: &str = "hotel:no-show-timer";

/// An unusable `STEPWISE_NO_SHOW_CUTOFF`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{CUTOFF_VAR}={value:?} is not a local time of day: give HH:MM, e.g. 18:00 (unset means 18:00)"
)]
pub struct CutoffError {
    pub value: String,
}

/// Parses `HH:MM` or `HH:MM:SS`.
pub fn parse_cutoff(value: &str) -> Result<NaiveTime, CutoffError> {
    let v = value.trim();
    NaiveTime::parse_from_str(v, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(v, "%H:%M:%S"))
        .map_err(|_| CutoffError {
            value: value.to_string(),
        })
}

/// The cutoff [`CUTOFF_VAR`] gives, or [`DEFAULT_CUTOFF`].
pub fn cutoff_from_env() -> Result<NaiveTime, CutoffError> {
    match std::env::var(CUTOFF_VAR) {
        Ok(value) if !value.trim().is_empty() => parse_cutoff(&value),
        _ => Ok(DEFAULT_CUTOFF),
    }
}

/// The instant of `time` on `date` in `tz` (the earlier one when clocks go back; the first
/// instant after the gap when they go forward).
pub fn local_instant(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| Utc.from_utc_datetime(&naive), |t| t.with_timezone(&Utc))
}

/// The cutoff instant of an arrival day.
pub fn cutoff_instant(tz: Tz, cutoff: NaiveTime, arrival: NaiveDate) -> DateTime<Utc> {
    local_instant(tz, arrival, cutoff)
}

/// When a reservation arriving on `arrival` becomes a no-show, as seen at `now`: the cutoff on
/// the arrival day; for a booking made after that cutoff (a late same-day booking), the end of
/// the arrival day, so a guest booking at 19:00 for tonight is not a no-show at once.
pub fn deadline(
    tz: Tz,
    cutoff: NaiveTime,
    arrival: NaiveDate,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let at = cutoff_instant(tz, cutoff, arrival);
    if now < at {
        at
    } else {
        local_instant(tz, arrival + chrono::Duration::days(1), NaiveTime::MIN)
    }
}

/// The idempotency key of a booking's timer, from the booking's external reference
/// ([`crate::hotel::records::Booking::hold_ref`]): the booking skill starts it under this key,
/// check-in and cancellation find it by it.
pub fn timer_key(booking_ref: &str) -> String {
    format!("no-show/{booking_ref}")
}

/// A handle on the engine for the hotel's steps that start or wake other sagas (the no-show
/// timers). The composition root attaches the engine once it is built ([`SagaLauncher::attach`]);
/// without one, bookings are made without a timer (and say so in their step output). It keeps
/// the registry weakly: the registry holds the skills, which hold the hotel.
#[derive(Clone, Default)]
pub struct SagaLauncher {
    inner: Arc<OnceLock<Parts>>,
}

struct Parts {
    store: PgStore,
    registry: Weak<Registry>,
    clock: SharedClock,
}

impl std::fmt::Debug for SagaLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaLauncher")
            .field("attached", &self.inner.get().is_some())
            .finish()
    }
}

impl SagaLauncher {
    /// Lets the hotel's steps start and wake sagas on `engine` (the first call wins).
    pub fn attach(&self, engine: &Engine) {
        let _ = self.inner.set(Parts {
            store: engine.store().clone(),
            registry: Arc::downgrade(engine.registry()),
            clock: engine.clock().clone(),
        });
    }

    fn engine(&self) -> Option<Engine> {
        let parts = self.inner.get()?;
        Some(Engine::new(
            parts.store.clone(),
            parts.registry.upgrade()?,
            parts.clock.clone(),
        ))
    }
}

fn launcher_error(code: &str, error: impl std::fmt::Display) -> StepError {
    StepError::retryable(code, error.to_string())
}

/// Starts the booking's timer (idempotently: a re-run finds the same saga).
pub async fn arm(
    launcher: &SagaLauncher,
    booking_ref: &str,
    booking_number: &str,
    guest_email: &str,
) -> Result<Value, StepError> {
    let Some(engine) = launcher.engine() else {
        return Ok(json!({"armed": false, "reason": "no engine attached to the hotel"}));
    };
    let started = engine
        .start(StartRequest {
            skill: SKILL.into(),
            input: json!({"booking_number": booking_number, "guest_email": guest_email,
                          "booking_ref": booking_ref}),
            idempotency_key: Some(timer_key(booking_ref)),
            started_by: TIMER_ACTOR.into(),
        })
        .await
        .map_err(|e| launcher_error("no_show_timer_not_started", e))?;
    Ok(json!({"armed": true, "no_show_saga_id": started.saga.id}))
}

/// Disarms the booking's timer, if it has one still running: a check-in or cancellation came
/// before the cutoff.
pub async fn disarm(
    launcher: &SagaLauncher,
    ctx: &StepContext,
    booking_ref: &str,
    reason: &str,
) -> Result<Value, StepError> {
    let Some(engine) = launcher.engine() else {
        return Ok(json!({"disarmed": false, "reason": "no engine attached to the hotel"}));
    };
    let timer = engine
        .saga_by_key(SKILL, &timer_key(booking_ref))
        .await
        .map_err(|e| launcher_error("no_show_timer_unreachable", e))?;
    let Some(timer) = timer else {
        return Ok(json!({"disarmed": false, "reason": "the booking has no no-show timer"}));
    };
    if timer.status.is_terminal() {
        return Ok(json!({"disarmed": false, "no_show_saga_id": timer.id,
                         "reason": format!("its no-show timer is already {}", timer.status)}));
    }
    let actor = format!("{}:{}", ctx.skill, ctx.saga_id);
    match engine
        .deliver(
            timer.id,
            DISARM,
            json!({"reason": reason}),
            &ctx.idempotency_key,
            &actor,
        )
        .await
    {
        Ok(_) => Ok(json!({"disarmed": true, "no_show_saga_id": timer.id})),
        Err(DeliverError::Terminal { status, .. }) => Ok(json!({"disarmed": false,
            "no_show_saga_id": timer.id, "reason": format!("its no-show timer is already {status}")})),
        Err(e) => Err(launcher_error("no_show_timer_unreachable", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 instant")
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("a date")
    }

    #[test]
    fn the_cutoff_parses_as_a_local_time_and_a_bad_one_names_the_variable() {
        assert_eq!(parse_cutoff("18:00"), Ok(DEFAULT_CUTOFF));
        assert_eq!(
            parse_cutoff(" 21:30:15 "),
            Ok(NaiveTime::from_hms_opt(21, 30, 15).expect("a time"))
        );
        for bad in ["6pm", "25:00", "", "18"] {
            let error = parse_cutoff(bad).expect_err(bad);
            assert!(error.to_string().contains(CUTOFF_VAR), "{error}");
        }
    }

    #[test]
    fn the_deadline_is_the_cutoff_in_the_hotels_time_zone_or_the_day_end_for_a_late_booking() {
        let la = Tz::America__Los_Angeles;
        // 18:00 in Los Angeles on 10 March 2026 (PDT, UTC-7) is 01:00 UTC the next day.
        let booked = at("2026-03-09T12:00:00Z");
        assert_eq!(
            deadline(la, DEFAULT_CUTOFF, date("2026-03-10"), booked),
            at("2026-03-11T01:00:00Z")
        );
        assert_eq!(
            deadline(Tz::UTC, DEFAULT_CUTOFF, date("2026-03-10"), booked),
            at("2026-03-10T18:00:00Z")
        );
        // Booked at 19:00 for tonight: until the end of the arrival day.
        assert_eq!(
            deadline(
                Tz::UTC,
                DEFAULT_CUTOFF,
                date("2026-03-10"),
                at("2026-03-10T19:00:00Z")
            ),
            at("2026-03-11T00:00:00Z")
        );
    }
}
