//! Group commit: several sagas' step commits share one statement and one PostgreSQL commit.
//!
//! A saga's driver hands its transition to a committer and waits for the answer; it starts
//! step k+1 only after the commit holding step k returned, so the durability contract is the
//! same as committing alone (with `synchronous_commit = on`, "returned" means "flushed").
//! Committer tasks take whatever is queued when they become free (up to `max_batch`), so
//! batches form by themselves under load and stay at one transition when the system is idle:
//! no timer, no added latency.

use super::commit::CommitItem;
use super::transition::{Committed, Lease, Transition};
use super::PgStore;
use crate::error::StoreError;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::debug;

type Reply = oneshot::Sender<Result<Committed, StoreError>>;

struct Request {
    item: CommitItem,
    reply: Reply,
}

/// The queue in front of the committer tasks. Dropping every handle ends the tasks.
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Request>,
    /// Commits alone when the committers are gone (runtime shutting down).
    direct: PgStore,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts `committers` tasks committing batches of at most `max_batch` transitions
    /// through `store` (a store without group commit). Needs a Tokio runtime.
    pub(crate) fn start(store: PgStore, max_batch: usize, committers: usize) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel::<Request>(max_batch.max(1) * committers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..committers.max(1) {
            let receiver = receiver.clone();
            let store = store.clone();
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch.max(1)).await {
                    commit_and_answer(&store, batch).await;
                }
            });
        }
        Arc::new(Self {
            queue,
            direct: store,
        })
    }

    pub(crate) async fn commit(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        t: &Arc<Transition>,
    ) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        let item = CommitItem {
            lease: lease.clone(),
            now,
            transition: Arc::clone(t),
        };
        if let Err(mpsc::error::SendError(request)) = self.queue.send(Request { item, reply }).await
        {
            return self.commit_alone(request.item).await;
        }
        match answer.await {
            Ok(result) => result,
            // The committer was dropped mid-way (runtime shutdown): the transition may or may
            // not be committed; committing again is safe only if the token still matches, which
            // the fenced statement checks.
            Err(_) => Err(StoreError::LostLease {
                saga_id: lease.saga_id,
            }),
        }
    }

    async fn commit_alone(&self, item: CommitItem) -> Result<Committed, StoreError> {
        let saga_id = item.lease.saga_id;
        self.direct
            .commit_batch(std::slice::from_ref(&item))
            .await?
            .pop()
            .unwrap_or(Err(StoreError::LostLease { saga_id }))
    }
}

/// Waits for one request, then takes whatever else is queued, up to `max`.
async fn next_batch(
    receiver: &Mutex<mpsc::Receiver<Request>>,
    max: usize,
) -> Option<(Vec<CommitItem>, Vec<Reply>)> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut items = Vec::with_capacity(max);
    let mut replies = Vec::with_capacity(max);
    items.push(first.item);
    replies.push(first.reply);
    while items.len() < max {
        match receiver.try_recv() {
            Ok(request) => {
                items.push(request.item);
                replies.push(request.reply);
            }
            Err(_) => break,
        }
    }
    Some((items, replies))
}

async fn commit_and_answer(store: &PgStore, (items, replies): (Vec<CommitItem>, Vec<Reply>)) {
    match store.commit_batch(&items).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(error) if items.len() > 1 => {
            // One statement failed for all: commit each alone so every saga gets its own
            // outcome (and one bad transition cannot fail the others).
            debug!(%error, size = items.len(), "group commit failed; committing one by one");
            for (item, reply) in items.iter().zip(replies) {
                let saga_id = item.lease.saga_id;
                let result = match store.commit_batch(std::slice::from_ref(item)).await {
                    Ok(mut results) => results
                        .pop()
                        .unwrap_or(Err(StoreError::LostLease { saga_id })),
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
    }
}
