//! `stepwise doctor`: what stands between this machine and a working Stepwise, each finding
//! with what to do (README, Command line; docs/operators.md, Install and doctor).
//!
//! The checks only read: the database is chosen by the same rule as every command (and, like
//! every command, created when missing), but nothing is migrated.

mod database;
mod services;

use serde::Serialize;

/// How a check came out. `Fail` makes the report unhealthy (exit 2); `Warn` is worth reading
/// but does not stop Stepwise from working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do; `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail, None)
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix.into()))
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix.into()))
    }

    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// Every finding, and whether none of them failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Self {
        Self {
            healthy: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }
}

/// Runs every check.
pub async fn examine() -> Report {
    let mut checks = database::checks().await;
    checks
        .extend(services::checks(&|name| std::env::var(name).ok().filter(|v| !v.is_empty())).await);
    Report::new(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_keeps_the_report_healthy_a_failure_does_not() {
        let warned = Report::new(vec![Check::ok("a", "fine"), Check::warn("b", "hm", "look")]);
        assert!(warned.healthy);
        let failed = Report::new(vec![Check::ok("a", "fine"), Check::fail("c", "no", "fix")]);
        assert!(!failed.healthy);
        let json = serde_json::to_value(&failed).expect("serializes");
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }
}
