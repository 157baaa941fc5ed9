//! Local starts: a saga started in a process whose worker has a free slot is claimed by that
//! worker in the transaction that starts it (`stepwise.start_claimed_saga`) and handed to it
//! in memory, the way Temporal's eager workflow start gives the first task to a co-located
//! worker. Its first step then waits for one commit instead of two (the start's, then the
//! claim's once a NOTIFY woke a worker), and no other worker is woken for nothing. Without a
//! free slot the saga is started the usual way and any worker claims it.
//!
//! A worker offers itself while its loop runs ([`LocalWorkers::register`]); a start reserves
//! one of its permits before writing anything, so a handed saga always has a slot. If the
//! worker stopped in between, the saga is given back (due now, its attempt not counted) for
//! any worker, as a stopping worker gives back the sagas it did not run.

use super::machine::Run;
use crate::clock::SharedClock;
use crate::error::StoreError;
use crate::skill::Skill;
use crate::store::{ClaimedSaga, KnownSkills, PgStore};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// The workers of this process that take the sagas it starts. Shared by an engine's clones and
/// the workers made from it.
#[derive(Clone, Default)]
pub(crate) struct LocalWorkers {
    inner: Arc<Mutex<Offers>>,
}

#[derive(Default)]
struct Offers {
    next_key: u64,
    /// Where the next reservation starts looking, so starts are spread over the workers.
    turn: usize,
    workers: Vec<Offer>,
}

/// A running worker's offer to take local starts.
struct Offer {
    key: u64,
    worker_id: Arc<str>,
    known: Arc<KnownSkills>,
    lease: Duration,
    permits: Arc<Semaphore>,
    sender: mpsc::UnboundedSender<Handed>,
}

/// A saga started for a worker, with the slot reserved for it.
pub(crate) struct Handed {
    pub saga: ClaimedSaga,
    pub permit: OwnedSemaphorePermit,
}

/// A free slot of a local worker, held while the saga is started for it.
pub(crate) struct Reservation {
    pub worker_id: Arc<str>,
    pub lease: Duration,
    permit: OwnedSemaphorePermit,
    sender: mpsc::UnboundedSender<Handed>,
}

/// Withdraws its worker's offer when dropped.
pub(crate) struct Registration {
    workers: LocalWorkers,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.workers.offers().workers.retain(|o| o.key != self.key);
    }
}

impl LocalWorkers {
    fn offers(&self) -> MutexGuard<'_, Offers> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent offers.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a running worker's free permits to local starts, until the registration drops.
    pub(crate) fn register(
        &self,
        worker_id: Arc<str>,
        known: Arc<KnownSkills>,
        lease: Duration,
        permits: Arc<Semaphore>,
    ) -> (Registration, mpsc::UnboundedReceiver<Handed>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut offers = self.offers();
        let key = offers.next_key;
        offers.next_key += 1;
        offers.workers.push(Offer {
            key,
            worker_id,
            known,
            lease,
            permits,
            sender,
        });
        let registration = Registration {
            workers: self.clone(),
            key,
        };
        (registration, receiver)
    }

    /// A free slot of a worker that runs `skill` at `version`, if one has a slot now.
    pub(crate) fn reserve(&self, skill: &str, version: u32) -> Option<Reservation> {
        let mut offers = self.offers();
        let count = offers.workers.len();
        let first = offers.turn;
        let found = (0..count).find_map(|i| {
            let offer = &offers.workers[(first + i) % count];
            if offer.sender.is_closed() || !offer.known.contains(skill, version) {
                return None;
            }
            let permit = offer.permits.clone().try_acquire_owned().ok()?;
            Some((
                i,
                Reservation {
                    worker_id: offer.worker_id.clone(),
                    lease: offer.lease,
                    permit,
                    sender: offer.sender.clone(),
                },
            ))
        });
        let (i, reservation) = found?;
        offers.turn = (first + i + 1) % count;
        Some(reservation)
    }
}

impl Reservation {
    /// Hands the saga started for this worker to it. If the worker stopped meanwhile, the saga
    /// is given back at once for any worker.
    pub(crate) async fn hand(
        self,
        saga: ClaimedSaga,
        skill: Arc<Skill>,
        store: &PgStore,
        clock: &SharedClock,
    ) {
        let handed = Handed {
            saga,
            permit: self.permit,
        };
        let Err(mpsc::error::SendError(unrun)) = self.sender.send(handed) else {
            return;
        };
        let saga_id = unrun.saga.lease.saga_id;
        info!(%saga_id, worker = %self.worker_id, "the worker stopped before it got the saga started for it; giving the saga back");
        if let Err(error) = give_back(unrun.saga, skill, store, clock).await {
            warn!(%saga_id, %error, "could not give back a saga started for a stopped worker; it is resumed when its lease expires");
        }
    }
}

/// Gives back a saga its worker never ran: due now, the attempt its start began not counted.
async fn give_back(
    saga: ClaimedSaga,
    skill: Arc<Skill>,
    store: &PgStore,
    clock: &SharedClock,
) -> Result<(), StoreError> {
    let run = Run::new(saga, skill);
    let now = clock.now();
    let t = run.release("not_run", now);
    store.release(&run.lease, now, t).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::{SagaStatus, StepStatus};
    use crate::store::NewSaga;
    use sqlx::PgPool;
    use uuid::Uuid;

    fn offer(
        local: &LocalWorkers,
        permits: usize,
    ) -> (Registration, mpsc::UnboundedReceiver<Handed>) {
        local.register(
            Arc::from("w1"),
            Arc::new(KnownSkills::new([(
                crate::synthetic::NAME,
                1,
                vec!["step_1".into()],
            )])),
            Duration::from_secs(30),
            Arc::new(Semaphore::new(permits)),
        )
    }

    #[test]
    fn a_reservation_takes_a_free_slot_of_a_worker_that_runs_the_skill() {
        let local = LocalWorkers::default();
        assert!(
            local.reserve(crate::synthetic::NAME, 1).is_none(),
            "no worker yet"
        );
        let (registration, _receiver) = offer(&local, 1);
        assert!(local.reserve("other_skill", 1).is_none());
        assert!(local.reserve(crate::synthetic::NAME, 2).is_none());
        let held = local.reserve(crate::synthetic::NAME, 1).unwrap();
        assert_eq!(&*held.worker_id, "w1");
        assert!(
            local.reserve(crate::synthetic::NAME, 1).is_none(),
            "its one slot is held"
        );
        drop(held);
        assert!(
            local.reserve(crate::synthetic::NAME, 1).is_some(),
            "the slot is free again"
        );
        drop(registration);
        assert!(
            local.reserve(crate::synthetic::NAME, 1).is_none(),
            "the offer is withdrawn"
        );
    }

    #[sqlx::test(migrations = false)]
    async fn a_saga_started_for_a_worker_that_stopped_is_given_back_unrun(pool: PgPool) {
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        let clock = ManualClock::starting_now();
        let shared: SharedClock = Arc::new(clock.clone());
        let skill = crate::synthetic::skill().unwrap();
        let local = LocalWorkers::default();
        let (_registration, receiver) = offer(&local, 1);
        let reservation = local.reserve(crate::synthetic::NAME, 1).unwrap();
        drop(receiver); // the worker stopped after the slot was reserved

        let now = shared.now();
        let saga = NewSaga {
            id: Uuid::now_v7(),
            skill: crate::synthetic::NAME.to_string(),
            skill_version: 1,
            input: serde_json::json!({"steps": 2}),
            idempotency_key: None,
            started_by: "test".to_string(),
            replay_of: None,
            step_names: vec!["step_1".into(), "step_2".into()],
            reused_outputs: Vec::new(),
        };
        let claimed = store
            .insert_claimed_saga(
                &saga,
                now,
                &reservation.worker_id,
                now + chrono::Duration::seconds(30),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(claimed.begun);
        reservation
            .hand(claimed, Arc::new(skill), &store, &shared)
            .await;

        let detail = store.detail(saga.id).await.unwrap().unwrap();
        assert_eq!(detail.status, SagaStatus::Pending);
        assert_eq!(detail.lease_owner, None);
        assert_eq!(detail.steps[0].status, StepStatus::Pending);
        assert_eq!(
            detail.steps[0].attempts, 0,
            "the begun attempt is not counted"
        );
        let released: Vec<_> = detail
            .events
            .iter()
            .filter(|e| e.kind.as_str() == "attempt_released")
            .map(|e| e.detail.clone().unwrap()["reason"].clone())
            .collect();
        assert_eq!(released, [serde_json::json!("not_run")]);
    }
}
