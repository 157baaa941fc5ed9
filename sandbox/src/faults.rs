//! Fault injection: `POST /_sandbox/faults` makes matching requests fail (500), hang and time
//! out (504 after a hold), or slow down, always before any effect is applied.

use super::state::{Service, SplitMix};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a "timed out" request is held before the sandbox answers 504, unless the fault
/// settings say otherwise (`timeout_ms`, a sandbox extension). Connectors time out sooner.
pub const DEFAULT_TIMEOUT_HOLD_MS: u64 = 10_000;

/// The fault settings, as posted to and returned by `/_sandbox/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Probability that a matching request is answered 500 without effect.
    #[serde(default)]
    pub error_rate: f64,
    /// Probability that a matching request is held, then answered 504 without effect.
    #[serde(default)]
    pub timeout_rate: f64,
    /// Added to every matching request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Services affected (`stripe`, `salesforce`, `twilio`); empty means all of them.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only requests whose path starts with this (e.g. `/stripe/v1/refunds`) are affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Seed of the fault draws (default: the sandbox seed), so a run repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How long a timed-out request is held (default 10 000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl FaultConfig {
    /// Checks the settings; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.error_rate + self.timeout_rate > 1.0 {
            return Err("error_rate + timeout_rate must not exceed 1".into());
        }
        if let Some(unknown) = self.services.iter().find(|s| Service::parse(s).is_none()) {
            return Err(format!(
                "services: unknown service `{unknown}` (stripe, salesforce, twilio)"
            ));
        }
        if self.latency_ms > 60_000 {
            return Err("latency_ms must be at most 60000".into());
        }
        if self.timeout_ms.is_some_and(|ms| ms > 120_000) {
            return Err("timeout_ms must be at most 120000".into());
        }
        Ok(())
    }

    fn matches(&self, service: Service, path: &str) -> bool {
        let service_ok =
            self.services.is_empty() || self.services.iter().any(|s| s == service.as_str());
        let path_ok = self
            .path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix));
        service_ok && path_ok
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Answer 500 without effect.
    Error,
    /// Hold for this long, then answer 504 without effect.
    Timeout(Duration),
}

/// The decision for one request: an extra delay, then the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub latency: Duration,
    pub outcome: Outcome,
}

/// The current settings and the random source of the draws.
#[derive(Debug, Clone)]
pub struct Faults {
    config: FaultConfig,
    default_seed: u64,
    rng: SplitMix,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            config: FaultConfig::default(),
            default_seed: seed,
            rng: SplitMix::new(seed),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Replaces the settings (an all-default config clears every fault).
    pub fn set(&mut self, config: FaultConfig) -> Result<(), String> {
        config.validate()?;
        self.rng = SplitMix::new(config.seed.unwrap_or(self.default_seed));
        self.config = config;
        Ok(())
    }

    /// Draws the fate of a request to `service` at `path` (the full request path).
    pub fn decide(&mut self, service: Service, path: &str) -> Decision {
        let config = &self.config;
        if !config.matches(service, path) {
            return Decision {
                latency: Duration::ZERO,
                outcome: Outcome::Pass,
            };
        }
        let latency = Duration::from_millis(config.latency_ms);
        let mut outcome = Outcome::Pass;
        if config.error_rate > 0.0 || config.timeout_rate > 0.0 {
            let draw = self.rng.next_f64();
            if draw < config.timeout_rate {
                let hold = config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_HOLD_MS);
                outcome = Outcome::Timeout(Duration::from_millis(hold));
            } else if draw < config.timeout_rate + config.error_rate {
                outcome = Outcome::Error;
            }
        }
        Decision { latency, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        let config = FaultConfig {
            error_rate: 1.5,
            ..FaultConfig::default()
        };
        assert!(config.validate().is_err());
        let config = FaultConfig {
            services: vec!["paypal".into()],
            ..FaultConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn only_matching_requests_are_faulted() {
        let mut faults = Faults::new(7);
        faults
            .set(FaultConfig {
                error_rate: 1.0,
                services: vec!["stripe".into()],
                path_prefix: Some("/stripe/v1/refunds".into()),
                ..FaultConfig::default()
            })
            .expect("valid");
        assert_eq!(
            faults.decide(Service::Stripe, "/stripe/v1/refunds").outcome,
            Outcome::Error
        );
        assert_eq!(
            faults
                .decide(Service::Stripe, "/stripe/v1/customers")
                .outcome,
            Outcome::Pass
        );
        assert_eq!(
            faults.decide(Service::Twilio, "/stripe/v1/refunds").outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn draws_repeat_for_a_seed_and_follow_the_rate() {
        let config = FaultConfig {
            error_rate: 0.3,
            seed: Some(11),
            ..FaultConfig::default()
        };
        let run = || {
            let mut faults = Faults::new(1);
            faults.set(config.clone()).expect("valid");
            (0..1000)
                .map(|_| faults.decide(Service::Salesforce, "/salesforce/x").outcome)
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let errors = first.iter().filter(|o| **o == Outcome::Error).count();
        assert!(
            (200..400).contains(&errors),
            "{errors} errors in 1000 at rate 0.3"
        );
    }
}
