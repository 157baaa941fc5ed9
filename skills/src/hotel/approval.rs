//! When a refund needs a manager's approval: `compensate_checkout` refunds above
//! `STEPWISE_REFUND_APPROVAL_CENTS` (default 50000, $500.00) wait for event `approval` from a
//! manager for at most `STEPWISE_REFUND_APPROVAL_TIMEOUT` (default 24h). See the README's
//! "Refund approval" and docs/skills.md.

use serde_json::{json, Value};
use std::time::Duration;

/// The variable holding the threshold, in cents: refunds strictly above it need an approval.
pub const THRESHOLD_VAR: &str = "STEPWISE_REFUND_APPROVAL_CENTS";
/// The variable holding how long a manager has to answer (`90m`, `24h`, `2d`).
pub const TIMEOUT_VAR: &str = "STEPWISE_REFUND_APPROVAL_TIMEOUT";

/// The event a waiting refund takes, and the role that may deliver it.
pub const EVENT: &str = "approval";
pub const APPROVER_ROLE: &str = "manager";

/// Which refunds wait for a manager, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundApproval {
    /// Refunds of more than this many cents wait for an approval.
    pub threshold_cents: i64,
    /// How long the wait lasts; at the deadline the refund is not made.
    pub timeout: Duration,
}

impl Default for RefundApproval {
    /// $500.00 and 24 hours: a day gives a manager on any shift time to answer.
    fn default() -> Self {
        Self {
            threshold_cents: 50_000,
            timeout: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A variable that does not parse: a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}` {expected}")]
pub struct BadSetting {
    pub var: &'static str,
    pub value: String,
    expected: &'static str,
}

impl RefundApproval {
    /// The settings from [`THRESHOLD_VAR`] and [`TIMEOUT_VAR`]; unset or empty means the default.
    pub fn from_env() -> Result<Self, BadSetting> {
        let read = |var| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        Self::parse(read(THRESHOLD_VAR).as_deref(), read(TIMEOUT_VAR).as_deref())
    }

    /// The settings from the variables' values (None: unset).
    pub fn parse(threshold: Option<&str>, timeout: Option<&str>) -> Result<Self, BadSetting> {
        let mut settings = Self::default();
        if let Some(text) = threshold {
            settings.threshold_cents = text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|cents| *cents >= 0)
                .ok_or_else(|| BadSetting {
                    var: THRESHOLD_VAR,
                    value: text.to_string(),
                    expected: "is not an amount in cents such as 50000 (0 makes every refund wait)",
                })?;
        }
        if let Some(text) = timeout {
            settings.timeout = humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| BadSetting {
                    var: TIMEOUT_VAR,
                    value: text.to_string(),
                    expected: "is not a duration such as 24h, 90m or 2d",
                })?;
        }
        Ok(settings)
    }

    /// Whether a refund of `cents` waits for a manager.
    pub fn needed_for(&self, cents: i64) -> bool {
        cents > self.threshold_cents
    }
}

/// The payload schema of event `approval`: `{"approved": bool, "note"?: string}`.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["approved"],
        "properties": {
            "approved": {"type": "boolean", "description": "true to make the refund, false to refuse it"},
            "note": {"type": "string", "maxLength": 500, "description": "why (kept in the saga's output or error)"}
        },
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_settings_are_500_dollars_and_a_day() {
        let settings = RefundApproval::parse(None, None).expect("unset means the defaults");
        assert_eq!(settings, RefundApproval::default());
        assert_eq!(settings.threshold_cents, 50_000);
        assert_eq!(settings.timeout, Duration::from_secs(86_400));
        assert!(
            !settings.needed_for(50_000),
            "the threshold itself needs none"
        );
        assert!(settings.needed_for(50_001));
    }

    #[test]
    fn settings_parse_and_bad_ones_name_their_variable() {
        assert_eq!(
            RefundApproval::parse(Some(" 0 "), Some("90m")),
            Ok(RefundApproval {
                threshold_cents: 0,
                timeout: Duration::from_secs(5400)
            })
        );
        for (threshold, timeout, var) in [
            (Some("$500"), None, THRESHOLD_VAR),
            (Some("-1"), None, THRESHOLD_VAR),
            (None, Some("soon"), TIMEOUT_VAR),
            (None, Some("0s"), TIMEOUT_VAR),
        ] {
            let error = RefundApproval::parse(threshold, timeout).expect_err(var);
            assert_eq!(error.var, var);
            assert!(error.to_string().starts_with(var), "{error}");
        }
    }
}
