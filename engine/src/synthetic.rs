//! `synthetic_chain`: a diagnostic skill for tests, benchmarks and chaos runs.
//!
//! Steps are named `step_1`..`step_K`. `fail_at` picks the 1-based step that fails, either
//! permanently or with a retryable error `transient_failures` times in total before it succeeds;
//! every compensation fails with a retryable error `compensation_failures` times in total before
//! it succeeds. "In total" counts every attempt recorded for that step over the saga's life,
//! operator retries included. `max_attempts` overrides the retry policy of every step and
//! compensation. Each output records the step's index and the attempt that succeeded.
//!
//! Waits: `wait_at` makes that step first wait for event `go` (payload schema
//! `{"type":"object"}`, deadline `wait_timeout_ms`, default 60000; its output records the
//! payload as `received`); `sleep_at` makes that step first sleep durably for `sleep_ms`.
//!
//! It lives in the engine because it knows nothing but the engine: the engine's own tests use
//! it, and applications register it next to their skills (`stepwise skills` lists it).

use crate::{
    Exposure, InputError, RetryPolicy, Skill, SkillError, SkillInput, Step, StepError, Wait,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

pub const NAME: &str = "synthetic_chain";
/// The longest chain a synthetic saga may ask for.
pub const MAX_STEPS: usize = 1000;

/// How the step at `fail_at` fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    #[default]
    Permanent,
    Transient,
}

/// Input of `synthetic_chain`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntheticInput {
    /// Number of steps, 1 to 1000.
    pub steps: usize,
    /// The 1-based step that fails, if any.
    #[serde(default)]
    pub fail_at: Option<usize>,
    /// `permanent` (compensate at once) or `transient` (retryable `transient_failures` times).
    #[serde(default)]
    pub fail_kind: FailKind,
    /// Attempts of step `fail_at` that fail (in total) before it succeeds, when transient.
    #[serde(default)]
    pub transient_failures: u32,
    /// Attempts of every compensation that fail (in total) before it succeeds.
    #[serde(default)]
    pub compensation_failures: u32,
    /// Overrides the attempts allowed for every step and compensation.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long each step takes, in milliseconds.
    #[serde(default)]
    pub step_sleep_ms: u64,
    /// The 1-based step that first waits for event `go`, if any.
    #[serde(default)]
    pub wait_at: Option<usize>,
    /// How long that wait lasts before `wait_timed_out`, in milliseconds.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// The 1-based step that first sleeps durably for `sleep_ms`, if any.
    #[serde(default)]
    pub sleep_at: Option<usize>,
    /// How long that sleep lasts, in milliseconds.
    #[serde(default)]
    pub sleep_ms: u64,
}

fn default_wait_timeout_ms() -> u64 {
    60_000
}

/// The event a synthetic step waits for (`wait_at`).
pub const EVENT: &str = "go";

impl SkillInput for SyntheticInput {
    fn validate(&self) -> Result<(), InputError> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(InputError::field(
                "steps",
                format!("must be between 1 and {MAX_STEPS}"),
            ));
        }
        if let Some(at) = self.fail_at {
            if at == 0 || at > self.steps {
                return Err(InputError::field(
                    "fail_at",
                    format!("must be a step between 1 and {}", self.steps),
                ));
            }
        }
        for (field, at) in [("wait_at", self.wait_at), ("sleep_at", self.sleep_at)] {
            if at.is_some_and(|at| at == 0 || at > self.steps) {
                return Err(InputError::field(
                    field,
                    format!("must be a step between 1 and {}", self.steps),
                ));
            }
        }
        if self.max_attempts == Some(0) {
            return Err(InputError::field("max_attempts", "must be at least 1"));
        }
        if self.step_sleep_ms > 10_000 {
            return Err(InputError::field(
                "step_sleep_ms",
                "must be at most 10000 (steps time out after 30 s)",
            ));
        }
        Ok(())
    }
}

/// Retries come fast so tests and chaos runs finish quickly.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(10),
        multiplier: 2.0,
        max_delay: Duration::from_millis(500),
        jitter: crate::Jitter::Full,
    }
}

/// Builds the skill (version 1).
pub fn skill() -> Result<Skill, SkillError> {
    let mut builder = Skill::builder::<SyntheticInput>(
        NAME,
        1,
        "Runs a chain of no-op steps that can fail on demand; compensates the steps done, in reverse order, when one fails.",
    )
    // A diagnostic: only operators get it as a tool.
    .exposure(Exposure::roles(&["operator"]))
    .step_count(|input| {
        input
            .get("steps")
            .and_then(Value::as_u64)
            .map_or(1, |n| n as usize)
    })
    .attempts_override(|input| {
        input
            .get("max_attempts")
            .and_then(Value::as_u64)
            .map(|n| n as u32)
    });
    for index in 1..=MAX_STEPS {
        builder = builder.step(
            Step::new(format!("step_{index}"), move |ctx| async move {
                let input: SyntheticInput = ctx.input()?;
                if input.sleep_at == Some(index) {
                    ctx.sleep(Duration::from_millis(input.sleep_ms))?;
                }
                let received = if input.wait_at == Some(index) {
                    Some(ctx.await_event(
                        EVENT,
                        Wait::within(Duration::from_millis(input.wait_timeout_ms))
                            .prompt(format!("step_{index} waits for event `{EVENT}`")),
                    )?)
                } else {
                    None
                };
                if input.step_sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(input.step_sleep_ms)).await;
                }
                if input.fail_at == Some(index) {
                    match input.fail_kind {
                        FailKind::Permanent => {
                            return Err(StepError::permanent(
                                "synthetic_failure",
                                format!("step_{index} failed permanently, as asked"),
                            ))
                        }
                        FailKind::Transient if ctx.attempt <= input.transient_failures => {
                            return Err(StepError::retryable(
                                "synthetic_transient",
                                format!(
                                    "step_{index} failed transiently (attempt {} of {} failing)",
                                    ctx.attempt, input.transient_failures
                                ),
                            ))
                        }
                        FailKind::Transient => {}
                    }
                }
                let mut output = json!({"index": index, "attempt": ctx.attempt});
                if let Some(payload) = received {
                    output["received"] = payload;
                }
                Ok(output)
            })
            .compensate(move |ctx, output| async move {
                let input: SyntheticInput = ctx.input()?;
                if ctx.attempt <= input.compensation_failures {
                    return Err(StepError::retryable(
                        "synthetic_compensation_failure",
                        format!(
                            "undoing step_{index} failed (attempt {} of {} failing)",
                            ctx.attempt, input.compensation_failures
                        ),
                    ));
                }
                Ok(json!({"undid": format!("step_{index}"), "index": index, "output": output, "attempt": ctx.attempt}))
            })
            .awaits(EVENT, json!({"type": "object"}))
            .retry(policy())
            .compensation_retry(policy()),
        );
    }
    builder.output::<Value>().build()
}
