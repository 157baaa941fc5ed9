//! The services' own limits (`POST /_sandbox/limits`): requests per second for the REST
//! services (a token bucket holding one second's worth), concurrent sessions for the legacy
//! system. A request over a limit is refused before it is processed (429 with `Retry-After` in
//! the service's error shape; the legacy system's SOAP Fault `HK-429` with `RetryAfter`) and
//! counted in the ledger's `limit_breaches`, per service.

use super::state::Service;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// Requests per second of one REST service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
}

/// Concurrent sessions of the legacy system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLimit {
    pub sessions: u32,
}

/// The limits, as posted to and returned by `/_sandbox/limits` (`{}` lifts them all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salesforce: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilio: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<SessionLimit>,
}

impl LimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, limit) in [
            ("salesforce", self.salesforce),
            ("stripe", self.stripe),
            ("twilio", self.twilio),
        ] {
            if let Some(limit) = limit {
                if !(limit.per_second > 0.0 && limit.per_second <= 100_000.0) {
                    return Err(format!(
                        "{name}.per_second must be above 0 (at most 100000), got {}",
                        limit.per_second
                    ));
                }
            }
        }
        if self.legacy.is_some_and(|l| l.sessions == 0) {
            return Err("legacy.sessions must be at least 1".into());
        }
        Ok(())
    }

    fn rate(&self, service: Service) -> Option<f64> {
        match service {
            Service::Salesforce => self.salesforce,
            Service::Stripe => self.stripe,
            Service::Twilio => self.twilio,
            Service::Legacy => None,
        }
        .map(|l| l.per_second)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits in force, the buckets, and the breaches counted.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    config: LimitConfig,
    buckets: HashMap<Service, Bucket>,
    breaches: HashMap<Service, u64>,
}

impl Limits {
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Replaces the limits; the buckets start full. Breaches counted so far stay.
    pub fn set(&mut self, config: LimitConfig) -> Result<(), String> {
        config.validate()?;
        self.config = config;
        self.buckets.clear();
        Ok(())
    }

    /// Admits one request of `service` at `now`, or says after how many whole seconds to come
    /// back (at least 1, as `Retry-After` counts).
    pub fn admit(&mut self, service: Service, now: Instant) -> Result<(), u64> {
        let Some(rate) = self.config.rate(service) else {
            return Ok(());
        };
        let capacity = rate.max(1.0);
        let bucket = self.buckets.entry(service).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - bucket.tokens) / rate).ceil() as u64).max(1))
        }
    }

    /// The legacy system's session limit, if any.
    pub fn sessions(&self) -> Option<u32> {
        self.config.legacy.map(|l| l.sessions)
    }

    pub fn breach(&mut self, service: Service) {
        *self.breaches.entry(service).or_default() += 1;
    }

    /// `{"salesforce":N,"stripe":N,"twilio":N,"legacy":N}`.
    pub fn breaches_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for service in Service::ALL {
            map.insert(
                service.as_str().into(),
                json!(self.breaches.get(&service).copied().unwrap_or(0)),
            );
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_holds_one_second_and_refills_at_the_rate() {
        let mut limits = Limits::default();
        limits
            .set(LimitConfig {
                salesforce: Some(RateLimit { per_second: 10.0 }),
                ..LimitConfig::default()
            })
            .expect("valid");
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limits.admit(Service::Salesforce, start).is_ok());
        }
        assert_eq!(limits.admit(Service::Salesforce, start), Err(1));
        assert!(limits
            .admit(Service::Salesforce, start + Duration::from_millis(110))
            .is_ok());
        assert!(limits.admit(Service::Stripe, start).is_ok(), "no limit set");
    }

    #[test]
    fn limits_are_checked() {
        let bad = LimitConfig {
            legacy: Some(SessionLimit { sessions: 0 }),
            ..LimitConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = LimitConfig {
            stripe: Some(RateLimit { per_second: 0.0 }),
            ..LimitConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
