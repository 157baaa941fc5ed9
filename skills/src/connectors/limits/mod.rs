//! Rate limits shared by every worker (docs/skills.md, "Rate limits shared by every worker").
//!
//! Each connector declares its external system's limits ([`declared`]): calls per second and per
//! day, or concurrent sessions. Before each call the connector asks PostgreSQL, so workers on
//! any number of hosts respect the limits together:
//! - a rate is a token bucket per system and window (`hotel.rate_limits`), kept as GCRA's
//!   theoretical arrival time: one statement reserves the next slot and says how long to wait
//!   for it (the bucket holds one call: calls go out evenly spaced, the external system's own
//!   bucket is never emptied by a burst);
//! - sessions are slots (`hotel.session_slots`) taken under a lease and given back after the
//!   answer; a worker that dies holding one loses it when the lease ends.
//!
//! A call whose slot is more than [`MAX_WAIT`] away is not made: the connector answers a
//! retryable `rate_limited` error carrying when to come back, and the engine schedules the
//! step's durable retry then (as for an external 429 with `Retry-After`).

mod store;

use super::error::{ConnectorError, Service};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::DbPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// The longest a call waits for its slot before the step is rescheduled instead.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// One external system's limits; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limit {
    pub per_second: Option<f64>,
    pub per_day: Option<f64>,
    pub sessions: Option<u32>,
}

/// The name of a system in limits (as `/_sandbox/limits` names it).
pub fn system_name(service: Service) -> &'static str {
    match service {
        Service::Crm => "salesforce",
        Service::Payments => "stripe",
        Service::Sms => "twilio",
        Service::Housekeeping => "legacy",
    }
}

/// The limits each connector declares for its system: the CRM 100,000 API calls per 24 hours
/// (an Enterprise org's base allowance) and 100 per second (ours, to spread bursts; set your
/// org's); Stripe 25 per second (its test mode; live mode allows 100); Twilio 100 per second;
/// the legacy housekeeping system 2 concurrent sessions.
pub fn declared(service: Service) -> Limit {
    match service {
        Service::Crm => Limit {
            per_second: Some(100.0),
            per_day: Some(100_000.0),
            sessions: None,
        },
        Service::Payments => Limit {
            per_second: Some(25.0),
            ..Limit::default()
        },
        Service::Sms => Limit {
            per_second: Some(100.0),
            ..Limit::default()
        },
        Service::Housekeeping => Limit {
            sessions: Some(2),
            ..Limit::default()
        },
    }
}

const SERVICES: [Service; 4] = [
    Service::Crm,
    Service::Payments,
    Service::Sms,
    Service::Housekeeping,
];

/// The limits in force: the declared ones, overridden by the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    limits: HashMap<&'static str, Limit>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitsConfigError(String);

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            limits: SERVICES
                .iter()
                .map(|s| (system_name(*s), declared(*s)))
                .collect(),
        }
    }
}

impl LimitsConfig {
    /// No limits at all.
    pub fn none() -> Self {
        Self {
            limits: HashMap::new(),
        }
    }

    /// The limits of `service`.
    pub fn get(&self, service: Service) -> Limit {
        self.limits
            .get(system_name(service))
            .copied()
            .unwrap_or_default()
    }

    /// The same with `service`'s limits replaced.
    pub fn with(mut self, service: Service, limit: Limit) -> Self {
        self.limits.insert(system_name(service), limit);
        self
    }

    /// The declared limits, overridden by `STEPWISE_LIMIT_<SYSTEM>_PER_SECOND`, `..._PER_DAY`
    /// and `..._SESSIONS` (SYSTEM: `SALESFORCE`, `STRIPE`, `TWILIO`, `LEGACY`); `off` or `0`
    /// lifts one.
    pub fn from_env() -> Result<Self, LimitsConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`LimitsConfig::from_env`] over any source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, LimitsConfigError> {
        let mut config = Self::default();
        for service in SERVICES {
            let system = system_name(service);
            let upper = system.to_uppercase();
            let mut limit = config.get(service);
            let number = |suffix: &str| -> Result<Option<Option<f64>>, LimitsConfigError> {
                let name = format!("STEPWISE_LIMIT_{upper}_{suffix}");
                let Some(value) = get(&name) else {
                    return Ok(None);
                };
                let value = value.trim();
                if value.eq_ignore_ascii_case("off") {
                    return Ok(Some(None));
                }
                let parsed: f64 = value.parse().map_err(|_| {
                    LimitsConfigError(format!("{name}=`{value}` is not a number (or `off`)"))
                })?;
                if !(parsed >= 0.0 && parsed.is_finite()) {
                    return Err(LimitsConfigError(format!("{name} must be 0 or more")));
                }
                Ok(Some((parsed > 0.0).then_some(parsed)))
            };
            if let Some(v) = number("PER_SECOND")? {
                limit.per_second = v;
            }
            if let Some(v) = number("PER_DAY")? {
                limit.per_day = v;
            }
            if let Some(v) = number("SESSIONS")? {
                limit.sessions = v.map(|n| n.max(1.0).min(f64::from(u16::MAX)) as u32);
            }
            config.limits.insert(system, limit);
        }
        Ok(config)
    }
}

/// The limits of every system, kept in PostgreSQL and shared by every worker using `pool`.
#[derive(Debug, Clone)]
pub struct SharedLimits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: DbPool,
    config: LimitsConfig,
    /// How long a session slot is held at most (longer than any call).
    lease: Duration,
    declared: OnceCell<()>,
}

impl SharedLimits {
    /// `lease`: the longest a call can take (a session not given back is free again after it).
    pub fn new(pool: impl Into<DbPool>, config: LimitsConfig, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: pool.into(),
                config,
                lease,
                declared: OnceCell::new(),
            }),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.inner.config
    }

    /// Writes this process's limits (once per process; the last process started wins).
    async fn declare(&self) -> Result<(), ConnectorError> {
        self.inner
            .declared
            .get_or_try_init(|| async {
                let pool = &self.inner.pool;
                for service in SERVICES {
                    let limit = self.inner.config.get(service);
                    let system = system_name(service);
                    if let Some(rate) = limit.per_second {
                        store::declare_rate(pool, &format!("{system}/second"), 1.0 / rate, 1.0)
                            .await?;
                    }
                    if let Some(rate) = limit.per_day {
                        // A day's calls may go at once, then one every 86400 / rate seconds.
                        store::declare_rate(pool, &format!("{system}/day"), 86_400.0 / rate, rate)
                            .await?;
                    }
                    if let Some(sessions) = limit.sessions {
                        store::declare_sessions(pool, system, sessions as i32).await?;
                    }
                }
                Ok::<(), sqlx::Error>(())
            })
            .await
            .map(|_| ())
            .map_err(database)
    }

    /// Waits for `service`'s limits to allow one call, and holds a session for it if the
    /// system counts sessions. Give the permit back with [`Permit::release`] after the answer.
    pub async fn acquire(&self, service: Service) -> Result<Permit, ConnectorError> {
        let limit = self.inner.config.get(service);
        if limit == Limit::default() {
            return Ok(Permit::none());
        }
        self.declare().await?;
        let system = system_name(service);
        let pool = &self.inner.pool;
        let mut names = Vec::new();
        if limit.per_second.is_some() {
            names.push(format!("{system}/second"));
        }
        if limit.per_day.is_some() {
            names.push(format!("{system}/day"));
        }
        if !names.is_empty() {
            match store::reserve(pool, &names, MAX_WAIT)
                .await
                .map_err(database)?
            {
                Ok(wait) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(wait) => {
                    return Err(ConnectorError::Limited {
                        service,
                        retry_after: wait.max(Duration::from_millis(100)),
                    })
                }
            }
        }
        if limit.sessions.is_none() {
            return Ok(Permit::none());
        }
        let holder = Uuid::new_v4();
        let started = Instant::now();
        loop {
            if let Some(slot) = store::take_slot(pool, system, holder, self.inner.lease)
                .await
                .map_err(database)?
            {
                return Ok(Permit {
                    session: Some(Session {
                        pool: pool.clone(),
                        name: system,
                        slot,
                        holder,
                    }),
                });
            }
            if started.elapsed() >= MAX_WAIT {
                return Err(ConnectorError::Limited {
                    service,
                    retry_after: Duration::from_secs(1),
                });
            }
            // Sessions are held for a call's length (the legacy system takes 100-400 ms).
            let pause = rand::rng().random_range(10..40);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

fn database(error: sqlx::Error) -> ConnectorError {
    ConnectorError::Limiter(error.to_string())
}

/// A permit for one call to `service`: from `limits`, or none for a client built without them.
pub async fn permit(
    limits: Option<&SharedLimits>,
    service: Service,
) -> Result<Permit, ConnectorError> {
    match limits {
        Some(limits) => limits.acquire(service).await,
        None => Ok(Permit::none()),
    }
}

/// The right to make one call; holds a session slot if the system counts sessions.
#[derive(Debug)]
pub struct Permit {
    session: Option<Session>,
}

#[derive(Debug)]
struct Session {
    pool: DbPool,
    name: &'static str,
    slot: i32,
    holder: Uuid,
}

impl Permit {
    /// A permit of a system without limits.
    pub fn none() -> Self {
        Self { session: None }
    }

    /// Gives the session back (a failure only delays it until the lease ends).
    pub async fn release(mut self) {
        if let Some(session) = self.session.take() {
            session.release().await;
        }
    }
}

impl Session {
    async fn release(self) {
        if let Err(e) = store::release_slot(&self.pool, self.name, self.slot, self.holder).await {
            tracing::warn!(error = %e, system = self.name, "could not give a session back; its lease will free it");
        }
    }
}

impl Drop for Permit {
    /// A permit dropped without [`Permit::release`] (the call was cut off) is given back in
    /// the background.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(session.release());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_declared_limits_hold_unless_the_environment_overrides_them() {
        let config = LimitsConfig::from_lookup(lookup(&[])).expect("valid");
        assert_eq!(config.get(Service::Housekeeping).sessions, Some(2));
        assert_eq!(config.get(Service::Crm).per_day, Some(100_000.0));
        let config = LimitsConfig::from_lookup(lookup(&[
            ("STEPWISE_LIMIT_SALESFORCE_PER_SECOND", "20"),
            ("STEPWISE_LIMIT_SALESFORCE_PER_DAY", "off"),
            ("STEPWISE_LIMIT_STRIPE_PER_SECOND", "0"),
            ("STEPWISE_LIMIT_LEGACY_SESSIONS", "3"),
        ]))
        .expect("valid");
        assert_eq!(
            config.get(Service::Crm),
            Limit {
                per_second: Some(20.0),
                per_day: None,
                sessions: None
            }
        );
        assert_eq!(config.get(Service::Payments), Limit::default());
        assert_eq!(config.get(Service::Housekeeping).sessions, Some(3));
        assert!(
            LimitsConfig::from_lookup(lookup(&[("STEPWISE_LIMIT_TWILIO_PER_SECOND", "fast")]))
                .is_err()
        );
    }
}
