//! Announcing the status changes a worker commits. Live views (the operator console) follow
//! sagas on [`SAGA_CHANGED_CHANNEL`](super::SAGA_CHANGED_CHANNEL). A change made by the worker
//! holding the saga is announced by that worker after the commit that made it, not by the
//! commit itself: PostgreSQL serialises the commits of transactions that notify, WAL flush
//! included. The changes of [`ANNOUNCE_EVERY`] go out together in one transaction of their
//! own, so announcing costs a few transactions a second whatever the rate of changes; live
//! views coalesce bursts longer than that anyway (docs/console.md, "Live updates"). Every
//! other change is announced by the trigger on `stepwise.sagas` (engine/migrations).

use super::commit::CommitItem;
use super::db_pool::DbPool;
use super::transition::Committed;
use crate::error::StoreError;
use crate::model::SagaStatus;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

/// How long the changes committed after a first one wait to go out with it.
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// Changes waiting to be announced, at most; more are dropped (a live view that misses one
/// refreshes on the next).
const QUEUE: usize = 65_536;

/// One store's announcer: a task started with the first change, sending each window's changes
/// in one call. Shared by the store's copies.
#[derive(Debug, Clone, Default)]
pub(crate) struct Announcer {
    queue: Arc<OnceLock<mpsc::Sender<(Uuid, SagaStatus)>>>,
}

impl Announcer {
    /// Queues the changes, in order. Needs a Tokio runtime (the first call starts the task).
    pub(crate) fn announce(&self, pool: &DbPool, changes: Vec<(Uuid, SagaStatus)>) {
        if changes.is_empty() {
            return;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(announce_in_windows(pool.clone(), receiver));
            sender
        });
        for change in changes {
            if queue.try_send(change).is_err() {
                debug!("announcement queue full or closed; a live view will refresh later");
                return;
            }
        }
    }
}

/// Sends the changes queued within each window in one call to
/// `stepwise.announce_saga_changes`. Ends when the queue is dropped with the store.
async fn announce_in_windows(pool: DbPool, mut receiver: mpsc::Receiver<(Uuid, SagaStatus)>) {
    while let Some(first) = receiver.recv().await {
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        let mut ids = vec![first.0];
        let mut statuses = vec![first.1.as_str()];
        while let Ok((id, status)) = receiver.try_recv() {
            ids.push(id);
            statuses.push(status.as_str());
        }
        match sqlx::query("SELECT stepwise.announce_saga_changes($1, $2)")
            .bind(&ids)
            .bind(&statuses)
            .execute(&pool)
            .await
        {
            Ok(_) => {}
            // The process is closing its pool on its way out: nothing to warn anyone about.
            Err(sqlx::Error::PoolClosed) => {
                debug!(
                    sagas = ids.len(),
                    "pool closed; the last saga status changes were not announced"
                );
            }
            Err(error) => {
                warn!(%error, sagas = ids.len(), "could not announce saga status changes; live views see them at their next refresh");
            }
        }
    }
}

/// The status changes among the committed transitions (answered `Ok`), in the call's order.
/// A worker's `running` is left out: the claim already made the saga running (a worker holds
/// only running, compensating or claimed sagas), so it changes nothing stored, and the trigger
/// that announced changes before only announced a status that differed.
pub(crate) fn status_changes(
    items: &[CommitItem],
    answers: &[Result<Committed, StoreError>],
) -> Vec<(Uuid, SagaStatus)> {
    items
        .iter()
        .zip(answers)
        .filter(|(_, answer)| answer.is_ok())
        .filter_map(|(item, _)| Some((item.lease.saga_id, item.transition.status?)))
        .filter(|(_, status)| *status != SagaStatus::Running)
        .collect()
}
