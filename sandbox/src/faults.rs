//! Fault injection: `POST /_sandbox/faults` makes matching requests fail (500), hang and time
//! out (504 after a hold), or slow down, before any effect is applied; or apply their effect and
//! then lose the answer (500, a hold then 504, or the connection dropped mid-answer), the case
//! where a client cannot know whether its request took effect.

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
    /// Probability that a matching request takes effect, then is answered 500.
    #[serde(default)]
    pub effect_then_error_rate: f64,
    /// Probability that a matching request takes effect, then is held and answered 504.
    #[serde(default)]
    pub effect_then_timeout_rate: f64,
    /// Probability that a matching request takes effect, then its connection is dropped
    /// part-way through the answer.
    #[serde(default)]
    pub reset_rate: f64,
    /// Added to every matching request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Services affected (`stripe`, `salesforce`, `twilio`, `legacy`); empty means all of them.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only requests whose path starts with this (e.g. `/stripe/v1/refunds`) are affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Only requests with this HTTP method (e.g. `POST`, any case) are affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// At most this many faults (not counting latency) are injected; then requests pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_faults: Option<u64>,
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
        for (name, rate) in self.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.rates().iter().map(|(_, rate)| rate).sum::<f64>() > 1.0 {
            return Err("error_rate + timeout_rate + effect_then_error_rate + \
                 effect_then_timeout_rate + reset_rate must not exceed 1"
                .into());
        }
        if let Some(method) = &self.method {
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "method must be an HTTP method such as POST, got `{method}`"
                ));
            }
        }
        if let Some(unknown) = self.services.iter().find(|s| Service::parse(s).is_none()) {
            return Err(format!(
                "services: unknown service `{unknown}` (stripe, salesforce, twilio, legacy)"
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

    /// Every fault rate with its name, in the order the draw tests them.
    fn rates(&self) -> [(&'static str, f64); 5] {
        [
            ("timeout_rate", self.timeout_rate),
            ("error_rate", self.error_rate),
            ("effect_then_error_rate", self.effect_then_error_rate),
            ("effect_then_timeout_rate", self.effect_then_timeout_rate),
            ("reset_rate", self.reset_rate),
        ]
    }

    fn matches(&self, service: Service, method: &str, path: &str) -> bool {
        let service_ok =
            self.services.is_empty() || self.services.iter().any(|s| s == service.as_str());
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method));
        let path_ok = self
            .path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix));
        service_ok && method_ok && path_ok
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
    /// Apply the request, then answer 500 instead of its result.
    EffectThenError,
    /// Apply the request, then hold for this long and answer 504 instead of its result.
    EffectThenTimeout(Duration),
    /// Apply the request, then send part of its answer and drop the connection.
    Reset,
}

impl Outcome {
    /// The fault's name as the ledger shows it (`None` for a request that passed).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Outcome::Pass => None,
            Outcome::Error => Some("error"),
            Outcome::Timeout(_) => Some("timeout"),
            Outcome::EffectThenError => Some("effect_then_error"),
            Outcome::EffectThenTimeout(_) => Some("effect_then_timeout"),
            Outcome::Reset => Some("reset"),
        }
    }
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
    /// Faults injected since the settings were last set (for `max_faults`).
    injected: u64,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            config: FaultConfig::default(),
            default_seed: seed,
            rng: SplitMix::new(seed),
            injected: 0,
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
        self.injected = 0;
        Ok(())
    }

    /// Draws the fate of a `method` request to `service` at `path` (the full request path).
    pub fn decide(&mut self, service: Service, method: &str, path: &str) -> Decision {
        let config = &self.config;
        if !config.matches(service, method, path) {
            return Decision {
                latency: Duration::ZERO,
                outcome: Outcome::Pass,
            };
        }
        let latency = Duration::from_millis(config.latency_ms);
        let spent = config.max_faults.is_some_and(|max| self.injected >= max);
        let rates = config.rates();
        let mut outcome = Outcome::Pass;
        if !spent && rates.iter().any(|(_, rate)| *rate > 0.0) {
            let hold = Duration::from_millis(config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_HOLD_MS));
            let draw = self.rng.next_f64();
            let mut bound = 0.0;
            for (name, rate) in rates {
                bound += rate;
                if draw < bound {
                    outcome = match name {
                        "timeout_rate" => Outcome::Timeout(hold),
                        "error_rate" => Outcome::Error,
                        "effect_then_error_rate" => Outcome::EffectThenError,
                        "effect_then_timeout_rate" => Outcome::EffectThenTimeout(hold),
                        _ => Outcome::Reset,
                    };
                    break;
                }
            }
        }
        if outcome != Outcome::Pass {
            self.injected += 1;
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
            faults
                .decide(Service::Stripe, "POST", "/stripe/v1/refunds")
                .outcome,
            Outcome::Error
        );
        assert_eq!(
            faults
                .decide(Service::Stripe, "POST", "/stripe/v1/customers")
                .outcome,
            Outcome::Pass
        );
        assert_eq!(
            faults
                .decide(Service::Twilio, "POST", "/stripe/v1/refunds")
                .outcome,
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
                .map(|_| {
                    faults
                        .decide(Service::Salesforce, "GET", "/salesforce/x")
                        .outcome
                })
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

    #[test]
    fn the_method_filter_and_max_faults_bound_the_faults() {
        let mut faults = Faults::new(3);
        faults
            .set(FaultConfig {
                effect_then_error_rate: 1.0,
                method: Some("post".into()),
                max_faults: Some(2),
                ..FaultConfig::default()
            })
            .expect("valid");
        let get = faults.decide(Service::Stripe, "GET", "/stripe/v1/payment_intents/pi_1");
        assert_eq!(get.outcome, Outcome::Pass, "another method passes");
        let posts: Vec<Outcome> = (0..4)
            .map(|_| {
                faults
                    .decide(Service::Stripe, "POST", "/stripe/v1/payment_intents")
                    .outcome
            })
            .collect();
        assert_eq!(
            posts,
            vec![
                Outcome::EffectThenError,
                Outcome::EffectThenError,
                Outcome::Pass,
                Outcome::Pass
            ]
        );
        faults.set(faults.config().clone()).expect("valid");
        assert_eq!(
            faults
                .decide(Service::Stripe, "POST", "/stripe/v1/refunds")
                .outcome,
            Outcome::EffectThenError,
            "setting the faults again restarts the count"
        );
    }

    #[test]
    fn the_rates_together_must_not_exceed_one_and_each_is_drawn() {
        let config = FaultConfig {
            effect_then_error_rate: 0.6,
            reset_rate: 0.6,
            ..FaultConfig::default()
        };
        assert!(config.validate().is_err());
        let bad_method = FaultConfig {
            method: Some("PO ST".into()),
            ..FaultConfig::default()
        };
        assert!(bad_method.validate().is_err());
        let mut faults = Faults::new(5);
        faults
            .set(FaultConfig {
                error_rate: 0.2,
                timeout_rate: 0.2,
                effect_then_error_rate: 0.2,
                effect_then_timeout_rate: 0.2,
                reset_rate: 0.2,
                timeout_ms: Some(10),
                ..FaultConfig::default()
            })
            .expect("valid");
        let names: std::collections::BTreeSet<&str> = (0..200)
            .filter_map(|_| {
                faults
                    .decide(Service::Twilio, "POST", "/twilio/x")
                    .outcome
                    .name()
            })
            .collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec![
                "effect_then_error",
                "effect_then_timeout",
                "error",
                "reset",
                "timeout"
            ]
        );
    }
}
