//! Retry policy and the pure function that turns it into the next attempt's delay.
//!
//! Retries are durable: the executor writes `now + delay` into the saga's `wake_at` and lets go
//! of the saga; whichever worker finds it due runs the next attempt. Nothing sleeps in memory.
//! (The `backoff` crate named in early designs is unmaintained, RUSTSEC-2025-0012; this small
//! function is all the engine needs.)

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the delay between attempts is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, exponential delay]` (AWS "full jitter"): spreads retry storms best.
    Full,
    /// Exactly the exponential delay: for tests and for callers that need predictability.
    None,
}

/// When and how often a step (or its compensation) is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in one round, the first included. 1 means no retry.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(200),
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether another attempt is allowed after `attempts_in_round` attempts have been made.
    pub fn allows_another(&self, attempts_in_round: u32) -> bool {
        attempts_in_round < self.max_attempts
    }

    /// The delay before the attempt that follows failed attempt number `failed_attempt`
    /// (1-based, within the round). `unit` is a uniform random number in `[0, 1)`; it is a
    /// parameter so the function stays pure and testable.
    pub fn delay_after(&self, failed_attempt: u32, unit: f64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let seconds = match self.jitter {
            Jitter::Full => capped * unit.clamp(0.0, 1.0),
            Jitter::None => capped,
        };
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

/// The longest `Retry-After` honoured as given; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// The delay before the next attempt: the external system's `Retry-After` when the failure
    /// carried one (`hint`; up to [`MAX_RETRY_AFTER`], plus up to 10% so that many sagas told
    /// the same second do not all come back at once), otherwise [`RetryPolicy::delay_after`].
    pub fn next_delay(&self, failed_attempt: u32, unit: f64, hint: Option<Duration>) -> Duration {
        match hint {
            Some(after) => {
                let after = after.min(MAX_RETRY_AFTER);
                after + after.mul_f64(0.1 * unit.clamp(0.0, 1.0))
            }
            None => self.delay_after(failed_attempt, unit),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter,
        }
    }

    #[test]
    fn delays_grow_exponentially_until_the_cap() {
        let p = policy(Jitter::None);
        let delays: Vec<u128> = (1..=6).map(|a| p.delay_after(a, 0.5).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn attempts_are_bounded_by_the_round() {
        let p = policy(Jitter::None);
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
    }

    #[test]
    fn a_retry_after_hint_replaces_the_backoff() {
        let p = policy(Jitter::None);
        let hint = Some(Duration::from_secs(7));
        assert_eq!(p.next_delay(1, 0.0, hint), Duration::from_secs(7));
        assert_eq!(p.next_delay(1, 0.99, hint).as_millis(), 7693);
        assert_eq!(p.next_delay(3, 0.5, None), Duration::from_millis(400));
        assert_eq!(
            p.next_delay(1, 0.0, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }

    proptest! {
        #[test]
        fn full_jitter_stays_within_zero_and_the_capped_delay(attempt in 1u32..100, unit in 0.0f64..1.0) {
            let p = policy(Jitter::Full);
            let d = p.delay_after(attempt, unit);
            prop_assert!(d <= policy(Jitter::None).delay_after(attempt, unit));
            prop_assert!(d <= Duration::from_secs(1));
        }
    }
}
