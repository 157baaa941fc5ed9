//! Appending to a saga's history (`stepwise.events`) from Rust: the one statement every
//! history row written outside the hot-path functions goes through (a worker's failures and
//! waits, cancels, operator actions). The functions in engine/migrations write the rest: a
//! saga's start, the end of a saga (`commit_steps`), an attempt's start when it ends without
//! success (`interrupt_attempts`) and a takeover (`claim_sagas`); docs/storage.md.

use super::transition::NewEvent;
use crate::error::StoreError;
use crate::model::EventKind;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// One history row to append.
pub(super) struct HistoryRow<'a> {
    pub saga_id: Uuid,
    pub kind: EventKind,
    pub step: Option<&'a str>,
    pub attempt: Option<i32>,
    pub actor: &'a str,
    pub detail: Option<&'a Value>,
}

impl NewEvent {
    /// This event as a row of `saga_id`'s history written by `actor`.
    pub(super) fn row<'a>(&'a self, saga_id: Uuid, actor: &'a str) -> HistoryRow<'a> {
        HistoryRow {
            saga_id,
            kind: self.kind,
            step: self.step.as_deref(),
            attempt: self.attempt,
            actor,
            detail: self.detail.as_ref(),
        }
    }
}

/// Appends `rows`, in order, all at `at`.
pub(super) async fn append(
    tx: &mut sqlx::PgConnection,
    at: DateTime<Utc>,
    rows: &[HistoryRow<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sagas: Vec<Uuid> = rows.iter().map(|r| r.saga_id).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let steps: Vec<Option<&str>> = rows.iter().map(|r| r.step).collect();
    let attempts: Vec<Option<i32>> = rows.iter().map(|r| r.attempt).collect();
    let actors: Vec<&str> = rows.iter().map(|r| r.actor).collect();
    let details: Vec<Option<&Value>> = rows.iter().map(|r| r.detail).collect();
    sqlx::query(
        "INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
         SELECT t.saga_id, $1, t.kind, t.step, t.attempt, t.actor, t.detail
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::jsonb[])
              WITH ORDINALITY AS t(saga_id, kind, step, attempt, actor, detail, ord)
         ORDER BY t.ord",
    )
    .bind(at)
    .bind(&sagas)
    .bind(&kinds)
    .bind(&steps)
    .bind(&attempts)
    .bind(&actors)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
