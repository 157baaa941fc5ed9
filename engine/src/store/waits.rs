//! The statements behind durable waits: deliveries of events to sagas (see [`crate::wait`]).

use super::rows::parse;
use super::{PgStore, WORK_CHANNEL};
use crate::error::StoreError;
use crate::model::SagaStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// An event delivered to a saga and not consumed yet.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredDelivery {
    pub id: i64,
    pub event: String,
    pub delivery_key: String,
    pub payload: Value,
    pub actor: String,
}

/// What [`PgStore::deliver`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// Stored (and the saga woken if it waited for this event).
    Delivered {
        status: SagaStatus,
    },
    /// The key was used before for the same event and payload: nothing written.
    Duplicate {
        status: SagaStatus,
    },
    /// The key was used before for another event or payload: nothing written.
    Conflict,
    /// The saga is over: nothing written.
    Terminal {
        status: SagaStatus,
    },
    NotFound,
}

impl PgStore {
    /// Stores an event for a saga in one transaction, idempotently on (saga, key): history row
    /// `event_received`, and a saga waiting for this event becomes due now (NOTIFY wakes a
    /// worker). An event it does not wait for yet is kept for the step that will. One round
    /// trip: the function `stepwise.deliver_event` (engine migrations) does it all.
    pub async fn deliver(
        &self,
        saga_id: Uuid,
        event: &str,
        payload: &Value,
        key: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeliveryOutcome, StoreError> {
        let (outcome, status): (String, Option<String>) = sqlx::query_as(
            "SELECT outcome, status FROM stepwise.deliver_event($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(saga_id)
        .bind(event)
        .bind(key)
        .bind(payload)
        .bind(actor)
        .bind(now)
        .bind(WORK_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        let status = || -> Result<SagaStatus, StoreError> {
            parse("saga status", status.as_deref().unwrap_or_default())
        };
        Ok(match outcome.as_str() {
            "delivered" => DeliveryOutcome::Delivered { status: status()? },
            "duplicate" => DeliveryOutcome::Duplicate { status: status()? },
            "conflict" => DeliveryOutcome::Conflict,
            "terminal" => DeliveryOutcome::Terminal { status: status()? },
            "not_found" => DeliveryOutcome::NotFound,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "stepwise.deliver_event answered `{other}`"
                )))
            }
        })
    }

    /// A saga's deliveries not consumed yet, oldest first (read when a step reaches a wait).
    pub async fn unconsumed_deliveries(
        &self,
        saga_id: Uuid,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, event, delivery_key, payload, actor FROM stepwise.deliveries
             WHERE saga_id = $1 AND consumed_at IS NULL ORDER BY id",
        )
        .bind(saga_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
