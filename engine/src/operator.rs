//! What operators do to sagas: retry, restart, fork, cancel, bulk selection and pruning.
//!
//! Every action is recorded in the history with the operator's identity and reason
//! (`operator_retry`, `operator_restart`, `operator_fork`, `cancel_requested`).
//!
//! - **retry** resumes a `failed` saga's compensation where it stopped: the compensations that
//!   exhausted their attempts get a fresh round (`compensation_round_base`), the saga becomes
//!   `compensating` and a worker picks it up. A `compensated` saga cannot resume in place.
//! - **restart** creates a new saga with the same input, linked by `replay_of`, with its own
//!   idempotency scope: `{key}/restart/{n}` (none if the original had no key).
//! - **fork** creates a new saga that takes over the recorded outputs of the steps before
//!   `from_step` (they start `succeeded`, marked in the history as reused) and runs from there.
//!   Only from a finished saga whose steps before `from_step` succeeded and were not undone.
//!   Should the fork fail, it compensates the steps it took over too: their effects are its own.
//! - **version guard**: a replay runs on a registered definition of the saga's skill. By
//!   default that is the saga's own version, and it must still be registered with the same
//!   step names the saga recorded; if a step was renamed or removed, the replay is refused
//!   unless `to_version` names the version to continue on. Steps are then mapped by name, and
//!   the replay is refused if a step it needs is missing.

use crate::engine::Engine;
use crate::error::StoreError;
use crate::metrics;
use crate::model::{
    CompensationStatus, EventKind, SagaDetail, SagaStatus, SagaSummary, StepStatus,
};
use crate::skill::Skill;
use crate::store::{OperatorEvent, PruneBatch, ReplayConflict, ReplaySaga};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// Who asks for an operator action, why, and on which skill version.
#[derive(Debug, Clone, Default)]
pub struct OperatorRequest {
    /// Recorded as the actor of the action's history rows, e.g. `operator:alice`.
    pub actor: String,
    pub reason: Option<String>,
    /// Continue on this registered version of the saga's skill instead of its own.
    pub to_version: Option<u32>,
}

impl OperatorRequest {
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..Self::default()
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn to_version(mut self, version: u32) -> Self {
        self.to_version = Some(version);
        self
    }
}

/// Why an operator action was not applied.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("saga {0} not found")]
    NotFound(Uuid),
    #[error("saga {saga} has no step `{step}` (its steps: {steps})")]
    UnknownStep {
        saga: Uuid,
        step: String,
        steps: String,
    },
    #[error("skill `{skill}` has no registered version {version} (registered: {registered})")]
    UnknownVersion {
        skill: String,
        version: u32,
        registered: String,
    },
    /// The saga's state does not allow the action (exit 4).
    #[error("{0}")]
    Refused(String),
    /// The skill's definition changed incompatibly since the saga started (exit 4).
    #[error("{0}")]
    VersionMismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OperatorError {
    /// A refusal (the CLI's exit 4), as opposed to something missing or broken.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::VersionMismatch(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_) | Self::UnknownStep { .. } | Self::UnknownVersion { .. }
        )
    }
}

/// Which sagas a bulk action applies to.
#[derive(Debug, Clone, Default)]
pub struct BulkFilter {
    pub status: Option<SagaStatus>,
    pub skill: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// The outcome of a prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub cutoff: DateTime<Utc>,
    /// Sagas deleted (or, in a dry run, that would be).
    pub sagas: u64,
    /// History rows deleted one by one.
    pub events_deleted: u64,
    /// Monthly history partitions dropped whole (or that would be).
    pub partitions_dropped: Vec<String>,
}

/// What a fork would create.
#[derive(Debug, Clone)]
pub struct ForkPlan {
    /// The definition the fork runs on.
    pub definition: Arc<Skill>,
    /// The fork's steps.
    pub step_names: Vec<String>,
    /// Outputs taken over, one per leading step before the fork point.
    pub reused_outputs: Vec<serde_json::Value>,
}

/// Progress of a long operator action, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

impl Engine {
    /// Resumes a `failed` saga's compensation with a fresh round of attempts.
    pub async fn retry(
        &self,
        id: Uuid,
        request: &OperatorRequest,
    ) -> Result<SagaSummary, OperatorError> {
        let saga = self.saga_for_operator(id).await?;
        let version = self.check_retry(&saga, request)?;
        let event = OperatorEvent {
            saga_id: id,
            kind: EventKind::OperatorRetry,
            step: None,
            actor: request.actor.clone(),
            detail: Some(json!({
                "reason": request.reason,
                "from_version": saga.skill_version,
                "to_version": version,
                "resumed": saga.steps.iter()
                    .filter(|s| matches!(s.compensation.status, CompensationStatus::Failed | CompensationStatus::Running))
                    .map(|s| s.name.as_str()).collect::<Vec<_>>(),
            })),
        };
        let result = self
            .store()
            .resume_compensation(id, version, event, self.clock().now())
            .await?;
        let summary = result.map_err(|c| conflict(id, "retry", c))?;
        metrics::operator_action("retry");
        Ok(summary)
    }

    /// Checks that `retry` would be accepted; returns the skill version it would run on.
    pub fn check_retry(
        &self,
        saga: &SagaDetail,
        request: &OperatorRequest,
    ) -> Result<i32, OperatorError> {
        match saga.status {
            SagaStatus::Failed => {}
            SagaStatus::Compensated => {
                return Err(OperatorError::Refused(format!(
                    "saga {} is compensated: its completed steps were already undone, so it cannot \
                     resume in place; `stepwise sagas restart {}` runs it again as a new saga",
                    saga.id, saga.id
                )))
            }
            SagaStatus::Completed => {
                return Err(OperatorError::Refused(format!(
                    "saga {} completed: there is nothing to retry",
                    saga.id
                )))
            }
            other => {
                return Err(OperatorError::Refused(format!(
                    "saga {} is {other}: a worker is still on it; retry applies to failed sagas \
                     (cancel it to have it compensated)",
                    saga.id
                )))
            }
        }
        let target = self.replay_definition(saga, request)?;
        // The worker finds steps by position: every step still to undo must be at the same
        // place, with a compensation, in the version the saga continues on.
        if saga.steps.len() > target.steps().len() {
            return Err(version_mismatch(
                saga,
                &target,
                "it has fewer steps than the saga recorded",
            ));
        }
        for step in saga.steps.iter().filter(|s| {
            matches!(
                s.compensation.status,
                CompensationStatus::Pending
                    | CompensationStatus::Running
                    | CompensationStatus::Failed
            )
        }) {
            let same = target
                .steps()
                .get(step.position as usize)
                .filter(|d| d.name() == step.name && d.is_compensable());
            if same.is_none() {
                return Err(version_mismatch(
                    saga,
                    &target,
                    &format!(
                        "the step to undo, `{}`, is not a compensable step at position {} there",
                        step.name,
                        step.position + 1
                    ),
                ));
            }
        }
        Ok(target.version() as i32)
    }

    /// Starts a new saga with the same input, linked to this one by `replay_of`.
    pub async fn restart(
        &self,
        id: Uuid,
        request: &OperatorRequest,
    ) -> Result<SagaSummary, OperatorError> {
        let saga = self.saga_for_operator(id).await?;
        let target = self.check_restart(&saga, request)?;
        let new_id = Uuid::now_v7();
        let replay = ReplaySaga {
            id: new_id,
            replay_of: id,
            original_status: saga.status,
            skill: saga.skill.clone(),
            skill_version: target.version() as i32,
            input: saga.input.clone(),
            key_prefix: saga
                .idempotency_key
                .as_ref()
                .map(|k| format!("{k}/restart")),
            started_by: saga.started_by.clone(),
            step_names: target.step_names_for(&saga.input),
            reused_outputs: Vec::new(),
            events: vec![
                OperatorEvent {
                    saga_id: new_id,
                    kind: EventKind::OperatorRestart,
                    step: None,
                    actor: request.actor.clone(),
                    detail: Some(json!({"replay_of": id, "reason": request.reason})),
                },
                OperatorEvent {
                    saga_id: id,
                    kind: EventKind::OperatorRestart,
                    step: None,
                    actor: request.actor.clone(),
                    detail: Some(json!({"restarted_as": new_id, "reason": request.reason})),
                },
            ],
        };
        let summary = self
            .store()
            .insert_replay(&replay, self.clock().now())
            .await?
            .map_err(|c| conflict(id, "restart", c))?;
        metrics::operator_action("restart");
        Ok(summary)
    }

    /// Checks that `restart` would be accepted; returns the definition it would run on.
    pub fn check_restart(
        &self,
        saga: &SagaDetail,
        request: &OperatorRequest,
    ) -> Result<Arc<Skill>, OperatorError> {
        match saga.status {
            SagaStatus::Compensated => {}
            SagaStatus::Failed => {
                return Err(OperatorError::Refused(format!(
                    "saga {} failed: some of its effects were never undone, so a restart could \
                     repeat them (a second charge); finish its compensation first with \
                     `stepwise sagas retry {}`, then restart it",
                    saga.id, saga.id
                )))
            }
            SagaStatus::Completed => {
                return Err(OperatorError::Refused(format!(
                    "saga {} completed: restarting it would repeat its effects; start a new saga \
                     instead, or fork it from a step",
                    saga.id
                )))
            }
            other => {
                return Err(OperatorError::Refused(format!(
                    "saga {} is {other}: it is not over; cancel it or wait before restarting",
                    saga.id
                )))
            }
        }
        let target = self.replay_definition(saga, request)?;
        target.validate(&saga.input).map_err(|e| {
            version_mismatch(
                saga,
                &target,
                &format!("the saga's input is not valid for it: {e}"),
            )
        })?;
        Ok(target)
    }

    /// Starts a new saga that takes over the outputs of the steps before `from_step` and runs
    /// from there.
    pub async fn fork(
        &self,
        id: Uuid,
        from_step: &str,
        request: &OperatorRequest,
    ) -> Result<SagaSummary, OperatorError> {
        let saga = self.saga_for_operator(id).await?;
        let ForkPlan {
            definition: target,
            step_names: names,
            reused_outputs: reused,
        } = self.check_fork(&saga, from_step, request)?;
        let new_id = Uuid::now_v7();
        let reused_names: Vec<&str> = names[..reused.len()].iter().map(String::as_str).collect();
        let mut events = vec![OperatorEvent {
            saga_id: new_id,
            kind: EventKind::OperatorFork,
            step: Some(from_step.to_string()),
            actor: request.actor.clone(),
            detail: Some(json!({
                "replay_of": id, "from_step": from_step, "reused": reused_names,
                "reason": request.reason,
            })),
        }];
        for name in &reused_names {
            events.push(OperatorEvent {
                saga_id: new_id,
                kind: EventKind::StepSucceeded,
                step: Some(name.to_string()),
                actor: request.actor.clone(),
                detail: Some(json!({"reused_from": id})),
            });
        }
        events.push(OperatorEvent {
            saga_id: id,
            kind: EventKind::OperatorFork,
            step: Some(from_step.to_string()),
            actor: request.actor.clone(),
            detail: Some(
                json!({"forked_as": new_id, "from_step": from_step, "reason": request.reason}),
            ),
        });
        let replay = ReplaySaga {
            id: new_id,
            replay_of: id,
            original_status: saga.status,
            skill: saga.skill.clone(),
            skill_version: target.version() as i32,
            input: saga.input.clone(),
            key_prefix: saga.idempotency_key.as_ref().map(|k| format!("{k}/fork")),
            started_by: saga.started_by.clone(),
            step_names: names,
            reused_outputs: reused,
            events,
        };
        let summary = self
            .store()
            .insert_replay(&replay, self.clock().now())
            .await?
            .map_err(|c| conflict(id, "fork", c))?;
        metrics::operator_action("fork");
        Ok(summary)
    }

    /// Checks that `fork` would be accepted; returns the definition it would run on, the new
    /// saga's step names and the outputs it takes over (one per leading step).
    pub fn check_fork(
        &self,
        saga: &SagaDetail,
        from_step: &str,
        request: &OperatorRequest,
    ) -> Result<ForkPlan, OperatorError> {
        let recorded = saga.steps.iter().find(|s| s.name == from_step);
        if recorded.is_none() && request.to_version.is_none() {
            return Err(unknown_step(saga, from_step));
        }
        if !saga.status.is_terminal() {
            return Err(OperatorError::Refused(format!(
                "saga {} is {}: it is not over; cancel it or wait before forking it",
                saga.id, saga.status
            )));
        }
        let target = self.replay_definition(saga, request)?;
        let names = target.step_names_for(&saga.input);
        let Some(at) = names.iter().position(|n| n == from_step) else {
            return Err(match recorded {
                Some(_) => version_mismatch(
                    saga,
                    &target,
                    &format!("it has no step `{from_step}` to fork from"),
                ),
                None => unknown_step(saga, from_step),
            });
        };
        let mut reused = Vec::with_capacity(at);
        for name in &names[..at] {
            let Some(step) = saga.steps.iter().find(|s| &s.name == name) else {
                return Err(version_mismatch(
                    saga,
                    &target,
                    &format!("it needs the output of step `{name}`, which the saga never ran"),
                ));
            };
            if step.status != StepStatus::Succeeded {
                return Err(OperatorError::Refused(format!(
                    "cannot fork saga {} from `{from_step}`: the earlier step `{name}` is {}, and a \
                     fork reuses only steps that succeeded (restart runs everything again)",
                    saga.id, step.status
                )));
            }
            if step.compensation.status != CompensationStatus::NotNeeded {
                return Err(OperatorError::Refused(format!(
                    "cannot fork saga {} from `{from_step}`: the earlier step `{name}` was {} \
                     (compensation {}), so its output no longer stands (restart runs everything \
                     again)",
                    saga.id,
                    if step.compensation.status == CompensationStatus::Compensated {
                        "undone"
                    } else {
                        "marked for undoing"
                    },
                    step.compensation.status
                )));
            }
            reused.push(step.output.clone().unwrap_or(serde_json::Value::Null));
        }
        Ok(ForkPlan {
            definition: target,
            step_names: names,
            reused_outputs: reused,
        })
    }

    /// Asks a pending or running saga to stop; it is compensated after its current step.
    pub async fn cancel_saga(
        &self,
        id: Uuid,
        request: &OperatorRequest,
    ) -> Result<SagaSummary, OperatorError> {
        let accepted = match self
            .cancel(id, &request.actor, request.reason.as_deref())
            .await
        {
            Err(StoreError::NotFound(_)) => return Err(OperatorError::NotFound(id)),
            other => other?,
        };
        let summary = self
            .store()
            .summary(id)
            .await?
            .ok_or(OperatorError::NotFound(id))?;
        if !accepted {
            return Err(OperatorError::Refused(format!(
                "saga {id} is {}: only pending or running sagas can be cancelled{}",
                summary.status,
                if summary.status == SagaStatus::Compensating {
                    " (it is being compensated already)"
                } else {
                    ""
                }
            )));
        }
        metrics::operator_action("cancel");
        Ok(summary)
    }

    /// Every saga matching `filter`, oldest first (for bulk retry and restart).
    pub async fn bulk_matches(&self, filter: &BulkFilter) -> Result<Vec<SagaSummary>, StoreError> {
        const PAGE: i64 = 1000;
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store()
                .bulk_page(
                    filter.status,
                    filter.skill.as_deref(),
                    filter.since,
                    after,
                    PAGE,
                )
                .await?;
            let full = page.len() as i64 == PAGE;
            after = page.last().map(|s| (s.created_at, s.id));
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Deletes terminal sagas that finished before `cutoff`, with their steps and history:
    /// whole monthly history partitions first, then row by row in batches. With `dry_run`,
    /// only counts. `progress` is called as sagas go.
    pub async fn prune(
        &self,
        cutoff: DateTime<Utc>,
        dry_run: bool,
        mut progress: impl FnMut(Progress),
    ) -> Result<PruneReport, StoreError> {
        const BATCH: i64 = 500;
        let store = self.store();
        store.ensure_history_partitions(self.clock().now()).await?;
        let total = store.count_prunable(cutoff).await?.max(0) as u64;
        let partitions = store.droppable_history_partitions(cutoff).await?;
        let mut report = PruneReport {
            dry_run,
            cutoff,
            ..PruneReport::default()
        };
        progress(Progress { done: 0, total });
        if dry_run {
            report.sagas = total;
            report.partitions_dropped = partitions.into_iter().map(|p| p.name).collect();
            return Ok(report);
        }
        for partition in &partitions {
            if let Some(sagas) = store.prune_history_partition(partition, cutoff).await? {
                report.sagas += sagas;
                report.partitions_dropped.push(partition.name.clone());
                progress(Progress {
                    done: report.sagas,
                    total,
                });
            }
        }
        loop {
            let PruneBatch { sagas, events } = store.prune_batch(cutoff, BATCH).await?;
            report.sagas += sagas;
            report.events_deleted += events;
            progress(Progress {
                done: report.sagas,
                total: total.max(report.sagas),
            });
            if sagas < BATCH as u64 {
                break;
            }
        }
        if report.sagas > 0 {
            metrics::operator_action("prune");
        }
        tracing::info!(
            sagas = report.sagas,
            events_deleted = report.events_deleted,
            partitions = report.partitions_dropped.len(),
            "pruned"
        );
        Ok(report)
    }

    async fn saga_for_operator(&self, id: Uuid) -> Result<SagaDetail, OperatorError> {
        self.detail(id).await?.ok_or(OperatorError::NotFound(id))
    }

    /// The definition a replay of `saga` runs on (the version guard).
    fn replay_definition(
        &self,
        saga: &SagaDetail,
        request: &OperatorRequest,
    ) -> Result<Arc<Skill>, OperatorError> {
        let registered = || {
            let versions: Vec<String> = self
                .registry()
                .all()
                .iter()
                .filter(|s| s.name() == saga.skill)
                .map(|s| format!("v{}", s.version()))
                .collect();
            if versions.is_empty() {
                "none".to_string()
            } else {
                versions.join(", ")
            }
        };
        if let Some(version) = request.to_version {
            return self.registry().get(&saga.skill, version).ok_or_else(|| {
                OperatorError::UnknownVersion {
                    skill: saga.skill.clone(),
                    version,
                    registered: registered(),
                }
            });
        }
        let own = u32::try_from(saga.skill_version).unwrap_or(0);
        let Some(definition) = self.registry().get(&saga.skill, own) else {
            return Err(OperatorError::VersionMismatch(format!(
                "saga {} ran `{}` v{own}, which is no longer registered (registered: {}); pass \
                 --to-version N to continue on another version (steps are matched by name)",
                saga.id,
                saga.skill,
                registered()
            )));
        };
        let recorded: Vec<&str> = saga.steps.iter().map(|s| s.name.as_str()).collect();
        let defined = definition.step_names_for(&saga.input);
        if recorded != defined.iter().map(String::as_str).collect::<Vec<_>>() {
            let gone: Vec<&str> = recorded
                .iter()
                .copied()
                .filter(|r| !defined.iter().any(|d| d == r))
                .collect();
            return Err(OperatorError::VersionMismatch(format!(
                "the definition of `{}` v{own} changed since saga {} started: {}; pass \
                 --to-version N to continue on a version whose steps match (registered: {})",
                saga.skill,
                saga.id,
                if gone.is_empty() {
                    "its steps were reordered or added".to_string()
                } else {
                    format!("steps {} were renamed or removed", gone.join(", "))
                },
                registered()
            )));
        }
        Ok(definition)
    }
}

fn unknown_step(saga: &SagaDetail, step: &str) -> OperatorError {
    OperatorError::UnknownStep {
        saga: saga.id,
        step: step.to_string(),
        steps: saga
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn version_mismatch(saga: &SagaDetail, target: &Skill, why: &str) -> OperatorError {
    OperatorError::VersionMismatch(format!(
        "saga {} cannot continue on `{}` v{}: {why}",
        saga.id,
        target.name(),
        target.version()
    ))
}

fn conflict(id: Uuid, action: &str, c: ReplayConflict) -> OperatorError {
    match c {
        ReplayConflict::NotFound => OperatorError::NotFound(id),
        ReplayConflict::StatusChanged(status) => OperatorError::Refused(format!(
            "saga {id} changed while the {action} was prepared (it is {status} now); look again"
        )),
        ReplayConflict::LiveReplay { id: replay, status } => OperatorError::Refused(format!(
            "saga {id} was already replayed as {replay}, which is {status}: another {action} \
             would repeat its effects; wait for it, or cancel it (a replay that ends \
             compensated or failed can be replayed again)"
        )),
    }
}
