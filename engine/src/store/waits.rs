//! The statements behind durable waits: deliveries of events to sagas (see [`crate::wait`]).

use super::queries::{insert_events, NewEvent};
use super::rows::parse;
use super::{PgStore, WORK_CHANNEL};
use crate::error::StoreError;
use crate::model::{EventKind, SagaStatus};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
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
    /// worker). An event it does not wait for yet is kept for the step that will.
    pub async fn deliver(
        &self,
        saga_id: Uuid,
        event: &str,
        payload: &Value,
        key: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeliveryOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock orders this delivery with the worker commits that change the status.
        let saga: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, waiting_for->>'event' FROM stepwise.sagas WHERE id = $1
             FOR NO KEY UPDATE",
        )
        .bind(saga_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Early answers end the transaction explicitly: a dropped sqlx transaction is only
        // rolled back when its connection is next used, and until then the row lock taken above
        // would hide the saga from claims (`SKIP LOCKED`).
        let Some((status, awaited)) = saga else {
            tx.rollback().await?;
            return Ok(DeliveryOutcome::NotFound);
        };
        let status: SagaStatus = parse("saga status", &status)?;
        let earlier: Option<(String, Value)> = sqlx::query_as(
            "SELECT event, payload FROM stepwise.deliveries
             WHERE saga_id = $1 AND delivery_key = $2",
        )
        .bind(saga_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((earlier_event, earlier_payload)) = earlier {
            tx.rollback().await?;
            return Ok(if earlier_event == event && &earlier_payload == payload {
                DeliveryOutcome::Duplicate { status }
            } else {
                DeliveryOutcome::Conflict
            });
        }
        if status.is_terminal() {
            tx.rollback().await?;
            return Ok(DeliveryOutcome::Terminal { status });
        }
        sqlx::query(
            "INSERT INTO stepwise.deliveries
                 (saga_id, event, delivery_key, payload, actor, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(saga_id)
        .bind(event)
        .bind(key)
        .bind(payload)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let received = NewEvent::saga(EventKind::EventReceived)
            .with_detail(json!({"event": event, "key": key, "actor": actor}));
        insert_events(&mut tx, saga_id, now, actor, &[received]).await?;
        if status == SagaStatus::Waiting && awaited.as_deref() == Some(event) {
            sqlx::query(
                "UPDATE stepwise.sagas SET wake_at = LEAST(wake_at, $2), updated_at = $2
                 WHERE id = $1",
            )
            .bind(saga_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WORK_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(DeliveryOutcome::Delivered { status })
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
