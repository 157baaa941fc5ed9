//! The entry point applications use: start, cancel, inspect and wait for sagas.

use crate::clock::SharedClock;
use crate::error::{StartError, StoreError};
use crate::executor::{chrono_duration, LocalWorkers, Worker, WorkerConfig};
use crate::model::{SagaDetail, SagaFilter, SagaStatus, SagaSummary};
use crate::registry::Registry;
use crate::store::{DeliveryOutcome, InsertConflict, NewSaga, PgStore, StartOutcome};
use crate::wait::{validate_payload, DeliverError, Delivery};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A request to start a saga.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub skill: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// Who asked: `role:subject` for MCP callers, the OS user for the CLI.
    pub started_by: String,
}

/// The engine: a store, a registry and a clock. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: PgStore,
    registry: Arc<Registry>,
    clock: SharedClock,
    /// The running workers made by this engine (or its clones), which take the sagas it
    /// starts while they have a free slot.
    local: LocalWorkers,
}

impl Engine {
    pub fn new(store: PgStore, registry: Arc<Registry>, clock: SharedClock) -> Self {
        Self {
            store,
            registry,
            clock,
            local: LocalWorkers::default(),
        }
    }

    pub fn store(&self) -> &PgStore {
        &self.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(
            self.store.clone(),
            self.registry.clone(),
            self.clock.clone(),
            config,
            self.local.clone(),
        )
    }

    /// Validates the input and starts a saga on the skill's latest version, idempotently on
    /// (skill, idempotency key). If a running worker of this engine has a free slot, the saga
    /// is started already claimed by it and returned `running` (see [`crate::executor`]).
    pub async fn start(&self, request: StartRequest) -> Result<StartOutcome, StartError> {
        let skill = self
            .registry
            .latest(&request.skill)
            .ok_or_else(|| StartError::UnknownSkill(request.skill.clone()))?;
        skill
            .validate(&request.input)
            .map_err(|e| StartError::InvalidInput {
                skill: request.skill.clone(),
                message: e.to_string(),
            })?;
        let step_names = skill.step_names_for(&request.input);
        let new = NewSaga {
            id: Uuid::now_v7(),
            skill: skill.name().to_string(),
            skill_version: skill.version() as i32,
            input: request.input,
            idempotency_key: request.idempotency_key.clone(),
            started_by: request.started_by,
            replay_of: None,
            step_names,
            reused_outputs: Vec::new(),
        };
        let now = self.clock.now();
        if let Some(worker) = self.local.reserve(skill.name(), skill.version()) {
            let lease_until = now + chrono_duration(worker.lease);
            let claimed = self
                .store
                .insert_claimed_saga(&new, now, &worker.worker_id, lease_until)
                .await?;
            if let Some(claimed) = claimed {
                let saga = SagaSummary {
                    id: new.id,
                    skill: new.skill,
                    skill_version: new.skill_version,
                    status: claimed.status,
                    idempotency_key: new.idempotency_key,
                    created_at: now,
                    updated_at: now,
                };
                worker.hand(claimed, skill, &self.store, &self.clock).await;
                return Ok(StartOutcome {
                    saga,
                    created: true,
                });
            }
            // The key is taken: the usual start reports the saga that holds it.
        }
        match self.store.insert_saga(new, now).await? {
            Ok(outcome) => Ok(outcome),
            Err(InsertConflict::DifferentInput(existing)) => Err(StartError::IdempotencyConflict {
                skill: request.skill,
                key: request.idempotency_key.unwrap_or_default(),
                existing,
            }),
        }
    }

    /// Asks a saga to stop; it is compensated after its running step. False if already over.
    pub async fn cancel(
        &self,
        id: Uuid,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.store
            .request_cancel(id, actor, reason, self.clock.now())
            .await
    }

    /// Delivers event `event` with `payload` to a saga, durably and idempotently on
    /// (saga, `delivery_key`): the same key with the same payload again reports `duplicate`
    /// and does nothing; with another payload it is a [`DeliverError::Conflict`]. The payload
    /// must match the schema a step of the saga's skill version declares for the event
    /// ([`crate::Step::awaits`]); otherwise nothing is written. A saga waiting for the event is
    /// woken at once; an event that comes before its wait is kept until the step reaches it.
    /// `actor` (who delivered it) goes to the history (`event_received`).
    pub async fn deliver(
        &self,
        saga_id: Uuid,
        event: &str,
        payload: Value,
        delivery_key: &str,
        actor: &str,
    ) -> Result<Delivery, DeliverError> {
        let summary = self
            .store
            .summary(saga_id)
            .await?
            .ok_or(DeliverError::NotFound(saga_id))?;
        let unknown = || DeliverError::UnknownEvent {
            skill: summary.skill.clone(),
            version: summary.skill_version,
            event: event.to_string(),
        };
        let version = u32::try_from(summary.skill_version).unwrap_or(0);
        let skill = self
            .registry
            .get(&summary.skill, version)
            .ok_or_else(unknown)?;
        let schema = skill.event_schema(event).ok_or_else(unknown)?;
        validate_payload(event, schema, &payload)?;
        let outcome = self
            .store
            .deliver(
                saga_id,
                event,
                &payload,
                delivery_key,
                actor,
                self.clock.now(),
            )
            .await?;
        let delivery = |duplicate, status| Delivery {
            saga_id,
            event: event.to_string(),
            key: delivery_key.to_string(),
            duplicate,
            status,
        };
        match outcome {
            DeliveryOutcome::Delivered { status } => Ok(delivery(false, status)),
            DeliveryOutcome::Duplicate { status } => Ok(delivery(true, status)),
            DeliveryOutcome::Conflict => Err(DeliverError::Conflict {
                saga_id,
                key: delivery_key.to_string(),
            }),
            DeliveryOutcome::Terminal { status } => Err(DeliverError::Terminal { saga_id, status }),
            DeliveryOutcome::NotFound => Err(DeliverError::NotFound(saga_id)),
        }
    }

    /// A read: from the read replica once it has caught up (see [`PgStore::reads`]).
    pub async fn detail(&self, id: Uuid) -> Result<Option<SagaDetail>, StoreError> {
        self.store.reads().await.detail(id).await
    }

    /// The status of each of `ids` that exists (see [`PgStore::saga_statuses`]): how other
    /// crates ask about sagas without reading the engine's tables.
    pub async fn saga_statuses(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, SagaStatus>, StoreError> {
        self.store.saga_statuses(ids).await
    }

    /// A read: from the read replica once it has caught up (see [`PgStore::reads`]).
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaSummary>, StoreError> {
        self.store.reads().await.list(filter).await
    }

    /// The saga of `skill` started with idempotency key `key`, if any: how a skill finds a
    /// saga another one started under a key both can derive (a booking's no-show timer).
    pub async fn saga_by_key(
        &self,
        skill: &str,
        key: &str,
    ) -> Result<Option<SagaSummary>, StoreError> {
        self.store.saga_by_key(skill, key).await
    }

    /// Waits until the saga is terminal or `timeout` passes; returns its latest summary.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<SagaSummary, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let summary = self
                .store
                .summary(id)
                .await?
                .ok_or(StoreError::NotFound(id))?;
            if summary.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(summary);
            }
            tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
