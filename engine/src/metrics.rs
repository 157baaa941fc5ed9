//! Prometheus metrics of the engine, process-wide.
//!
//! Counters and histograms are updated where things happen (the executor, the engine, the
//! operator API); the queue gauges are sampled from PostgreSQL by [`refresh_queue_gauges`]
//! (the `/metrics` handlers call it on every scrape). [`render_prometheus`] encodes everything
//! in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]).
//!
//! Counters and histograms count what happened in this process (the executor counts the sagas
//! it drives): sum them over processes in PromQL. The queue gauges describe the whole database.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stepwise_sagas_started_total` | counter | `skill` |
//! | `stepwise_sagas_completed_total` | counter | `skill` |
//! | `stepwise_sagas_compensated_total` | counter | `skill` |
//! | `stepwise_sagas_failed_total` | counter | `skill` |
//! | `stepwise_step_duration_seconds` | histogram | `skill`, `step`, `kind` (`action`/`compensation`), `outcome` (`succeeded`/`failed`) |
//! | `stepwise_step_retries_total` | counter | `skill`, `step`, `kind` |
//! | `stepwise_step_waits_total` | counter | `skill`, `step` (a step began waiting for an event or a time; waiting sagas count as `scheduled` below) |
//! | `stepwise_operator_actions_total` | counter | `action` (`retry`, `restart`, `fork`, `cancel`, `prune`) |
//! | `stepwise_queue_depth` | gauge | `state`: `due` (waiting and due now, or lease expired), `scheduled` (waiting for a later time), `leased` (held by a worker) |
//! | `stepwise_queue_lag_seconds` | gauge | how long the oldest due saga has been due (0 when none) |
//! | `stepwise_queue_sampled_at_seconds` | gauge | Unix time of the last queue sample |

use crate::error::StoreError;
use crate::store::PgStore;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

/// The `Content-Type` of [`render_prometheus`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkillLabels {
    skill: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    skill: String,
    step: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    skill: String,
    step: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    skill: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn step_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

struct Metrics {
    registry: Registry,
    started: Family<SkillLabels, Counter>,
    completed: Family<SkillLabels, Counter>,
    compensated: Family<SkillLabels, Counter>,
    failed: Family<SkillLabels, Counter>,
    step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    retries: Family<RetryLabels, Counter>,
    waits: Family<WaitLabels, Counter>,
    operator_actions: Family<ActionLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_lag: FloatGauge,
    queue_sampled_at: FloatGauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("stepwise");
        let m = Self {
            registry: Registry::default(),
            started: Family::default(),
            completed: Family::default(),
            compensated: Family::default(),
            failed: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            retries: Family::default(),
            waits: Family::default(),
            operator_actions: Family::default(),
            queue_depth: Family::default(),
            queue_lag: FloatGauge::default(),
            queue_sampled_at: FloatGauge::default(),
        };
        registry.register(
            "sagas_started",
            "Sagas whose first step began in this process (new sagas, restarts, forks)",
            m.started.clone(),
        );
        registry.register(
            "sagas_completed",
            "Sagas whose every step succeeded",
            m.completed.clone(),
        );
        registry.register(
            "sagas_compensated",
            "Sagas that failed or were cancelled and were undone",
            m.compensated.clone(),
        );
        registry.register(
            "sagas_failed",
            "Sagas left failed because a compensation exhausted its retries (operator needed)",
            m.failed.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Duration of step actions and compensations, per attempt",
            m.step_duration.clone(),
        );
        registry.register(
            "step_retries",
            "Attempts of steps and compensations scheduled again after a retryable failure",
            m.retries.clone(),
        );
        registry.register(
            "step_waits",
            "Steps that began waiting for an event or a time (the saga became `waiting`)",
            m.waits.clone(),
        );
        registry.register(
            "operator_actions",
            "Operator replays, cancellations and prunes",
            m.operator_actions.clone(),
        );
        registry.register(
            "queue_depth",
            "Non-terminal sagas by queue state, sampled from PostgreSQL",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_lag_seconds",
            "How long the oldest due saga has been waiting for a worker, sampled from PostgreSQL",
            m.queue_lag.clone(),
        );
        registry.register(
            "queue_sampled_at_seconds",
            "Unix time of the last queue sample",
            m.queue_sampled_at.clone(),
        );
        Self { registry, ..m }
    }
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn skill(skill: &str) -> SkillLabels {
    SkillLabels {
        skill: skill.to_string(),
    }
}

/// A saga's first step begins (counted by the executor that runs it).
pub fn saga_started(skill_name: &str) {
    metrics().started.get_or_create(&skill(skill_name)).inc();
}

/// A saga reached `completed`.
pub fn saga_completed(skill_name: &str) {
    metrics().completed.get_or_create(&skill(skill_name)).inc();
}

/// A saga reached `compensated`.
pub fn saga_compensated(skill_name: &str) {
    metrics()
        .compensated
        .get_or_create(&skill(skill_name))
        .inc();
}

/// A saga reached `failed`.
pub fn saga_failed(skill_name: &str) {
    metrics().failed.get_or_create(&skill(skill_name)).inc();
}

/// Whether an attempt ran a step's action or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    Action,
    Compensation,
}

impl AttemptKind {
    fn label(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::Compensation => "compensation",
        }
    }
}

/// One attempt of a step's action or compensation ended.
pub fn step_attempt(
    skill_name: &str,
    step: &str,
    kind: AttemptKind,
    succeeded: bool,
    took: Duration,
) {
    metrics()
        .step_duration
        .get_or_create(&StepLabels {
            skill: skill_name.to_string(),
            step: step.to_string(),
            kind: kind.label(),
            outcome: if succeeded { "succeeded" } else { "failed" },
        })
        .observe(took.as_secs_f64());
}

/// A failed attempt was scheduled to run again.
pub fn step_retry(skill_name: &str, step: &str, kind: AttemptKind) {
    metrics()
        .retries
        .get_or_create(&RetryLabels {
            skill: skill_name.to_string(),
            step: step.to_string(),
            kind: kind.label(),
        })
        .inc();
}

/// A step began waiting for an event or a time.
pub fn step_waits(skill_name: &str, step: &str) {
    metrics()
        .waits
        .get_or_create(&WaitLabels {
            skill: skill_name.to_string(),
            step: step.to_string(),
        })
        .inc();
}

/// An operator action was applied.
pub fn operator_action(action: &'static str) {
    metrics()
        .operator_actions
        .get_or_create(&ActionLabels { action })
        .inc();
}

/// What [`PgStore::queue_stats`] sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStats {
    pub due: i64,
    pub scheduled: i64,
    pub leased: i64,
    /// Seconds the oldest due saga has been due; 0 when none is.
    pub lag_seconds: f64,
}

/// Records a queue sample in the gauges.
pub fn set_queue(stats: QueueStats, at: DateTime<Utc>) {
    let m = metrics();
    m.queue_depth
        .get_or_create(&QueueLabels { state: "due" })
        .set(stats.due);
    m.queue_depth
        .get_or_create(&QueueLabels { state: "scheduled" })
        .set(stats.scheduled);
    m.queue_depth
        .get_or_create(&QueueLabels { state: "leased" })
        .set(stats.leased);
    m.queue_lag.set(stats.lag_seconds.max(0.0));
    m.queue_sampled_at
        .set(at.timestamp_millis() as f64 / 1000.0);
}

/// Samples the queue from PostgreSQL into the gauges (one indexed query over non-terminal
/// sagas).
pub async fn refresh_queue_gauges(store: &PgStore, now: DateTime<Utc>) -> Result<(), StoreError> {
    let stats = store.queue_stats(now).await?;
    set_queue(stats, now);
    Ok(())
}

/// Every metric in the Prometheus text format (serve with [`CONTENT_TYPE`]). The queue gauges
/// hold the last sample taken by [`refresh_queue_gauges`].
pub fn render_prometheus() -> String {
    let mut out = String::new();
    if let Err(e) =
        prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics().registry)
    {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

/// Samples the queue, then renders: what a `/metrics` handler with a store at hand serves.
/// A failed sample is logged and the previous one is served.
pub async fn render_prometheus_with_queue(store: &PgStore, now: DateTime<Utc>) -> String {
    if let Err(e) = refresh_queue_gauges(store, now).await {
        tracing::warn!(error = %e, "could not sample the queue for metrics");
    }
    render_prometheus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_appear_in_the_text_exposition() {
        saga_started("metrics_unit_test_skill");
        saga_started("metrics_unit_test_skill");
        step_attempt(
            "metrics_unit_test_skill",
            "s1",
            AttemptKind::Action,
            true,
            Duration::from_millis(3),
        );
        let text = render_prometheus();
        assert!(
            text.contains("stepwise_sagas_started_total{skill=\"metrics_unit_test_skill\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE stepwise_step_duration_seconds histogram"));
        assert!(text.contains(
            "stepwise_step_duration_seconds_count{skill=\"metrics_unit_test_skill\",step=\"s1\",kind=\"action\",outcome=\"succeeded\"} 1"
        ), "{text}");
    }
}
