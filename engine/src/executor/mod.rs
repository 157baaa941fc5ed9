//! The executor: workers that claim due sagas from PostgreSQL and drive them.
//!
//! A worker claims with `FOR UPDATE SKIP LOCKED`, holds each saga under a lease and fencing
//! token, and keeps running the saga's next step itself while it holds the lease. Idle workers
//! wait on LISTEN/NOTIFY, with polling as the fallback (and for retry times coming due).
//! A running worker also takes the sagas its own process starts while it has a free slot,
//! claimed in the transaction that starts them ([`handoff`]).

mod driver;
mod handoff;
mod machine;

use crate::clock::SharedClock;
use crate::error::StoreError;
use crate::registry::Registry;
use crate::store::{ClaimedSaga, KnownSkills, Lease, PgStore, WORK_CHANNEL};
use driver::Driver;
pub(crate) use handoff::LocalWorkers;
pub(crate) use machine::chrono_duration;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a stopping worker waits, after its grace period, for interrupted sagas to be given
/// back (a commit each) before it drops them and leaves them to lease expiry.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The shortest idle sleep: a saga due now but locked by another worker's claim is looked at
/// again this often, not in a busy loop.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(2);

/// Waits for every saga task to end.
async fn drain(tasks: &mut JoinSet<Option<Lease>>) {
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            warn!(error = %e, "a saga task ended abnormally");
        }
    }
}

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Recorded as the actor of the worker's events and as the lease owner.
    pub worker_id: String,
    /// Sagas driven at once.
    pub concurrency: usize,
    /// How long a claim lasts without renewal; a dead worker's sagas are reclaimed after it.
    pub lease: Duration,
    /// Longest idle wait between looks at the queue when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Most sagas claimed in one statement.
    pub claim_batch: usize,
    /// On shutdown, how long in-flight steps may take to finish. Steps still running then are
    /// interrupted and their sagas given back with that attempt not counted, due at once for
    /// another worker.
    pub shutdown_grace: Duration,
    /// Where full-jitter retry delays draw their randomness.
    pub jitter: JitterSource,
    /// Most sagas' step commits grouped into one transaction (1: every saga commits alone).
    /// A saga still never starts step k+1 before the commit holding step k is durable.
    pub commit_batch: usize,
    /// With `commit_batch > 1`: how many grouped commits may be in flight at once (capped by
    /// the pool, less one connection for claims). Two keep one batch filling while the other
    /// is flushed; more make smaller batches, which costs PostgreSQL CPU per step (measured on
    /// 2 cores: 2 committers +12% steps/s against 7, BENCHMARKS.md). Raise it when PostgreSQL
    /// has cores to spare.
    pub committers: usize,
}

/// The random number behind full-jitter delays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JitterSource {
    Random,
    /// Always this point of `[0, 1]`: `Fixed(1.0)` gives the whole capped delay, so tests know
    /// exactly when a retry is due.
    Fixed(f64),
}

impl JitterSource {
    pub(crate) fn sample(self) -> f64 {
        match self {
            Self::Random => rand::random::<f64>(),
            Self::Fixed(unit) => unit,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            claim_batch: 16,
            shutdown_grace: Duration::from_secs(10),
            jitter: JitterSource::Random,
            commit_batch: 1,
            committers: 2,
        }
    }
}

/// `worker:{host}:{pid}:{random}`, unique per process.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("worker:{host}:{}:{}", std::process::id(), &suffix[..6])
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not listen for work notifications: {0}")]
    Listen(#[from] sqlx::Error),
}

/// A saga worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    store: PgStore,
    clock: SharedClock,
    config: WorkerConfig,
    worker_id: Arc<str>,
    registry: Arc<Registry>,
    /// What the claim asks for: this worker never takes a saga it has no definition for.
    known: Arc<KnownSkills>,
    /// Where a running worker offers its free slots to its process's starts.
    local: LocalWorkers,
}

impl Worker {
    pub(crate) fn new(
        store: PgStore,
        registry: Arc<Registry>,
        clock: SharedClock,
        config: WorkerConfig,
        local: LocalWorkers,
    ) -> Self {
        let known = KnownSkills::of(&registry);
        Self {
            worker_id: Arc::from(config.worker_id.as_str()),
            known: Arc::new(known),
            store,
            clock,
            config,
            registry,
            local,
        }
    }

    pub fn id(&self) -> &str {
        &self.worker_id
    }

    fn driver(&self, shutdown: CancellationToken, abandon: CancellationToken) -> Driver {
        let store = if self.config.commit_batch > 1 {
            // Leave a connection for claims and heartbeats.
            let connections = self.store.pool().raw().options().get_max_connections() as usize;
            self.store.with_group_commit(
                self.config.commit_batch,
                self.config
                    .committers
                    .clamp(1, connections.saturating_sub(1).max(1)),
            )
        } else {
            self.store.clone()
        };
        Driver {
            store,
            registry: self.registry.clone(),
            clock: self.clock.clone(),
            lease_duration: self.config.lease,
            jitter: self.config.jitter,
            shutdown,
            abandon,
        }
    }

    async fn claim(&self, limit: usize) -> Result<Vec<ClaimedSaga>, StoreError> {
        let now = self.clock.now();
        self.store
            .claim(
                &self.worker_id,
                now,
                now + chrono_duration(self.config.lease),
                limit as i64,
                &self.known,
            )
            .await
    }

    /// Drives every due saga until none is due, then returns how many claims it made.
    /// Deterministic under a manual clock: for tests, the demo and one-shot runs.
    pub async fn run_until_idle(&self) -> Result<usize, WorkerError> {
        let driver = self.driver(CancellationToken::new(), CancellationToken::new());
        let mut total = 0;
        loop {
            let claimed = self.claim(self.config.concurrency.max(1)).await?;
            if claimed.is_empty() {
                return Ok(total);
            }
            total += claimed.len();
            // A saga paused by a lost connection is left to its lease here: one-shot runs have
            // no loop to take it back in.
            futures::future::join_all(claimed.into_iter().map(|c| driver.drive(c))).await;
        }
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets in-flight steps finish
    /// within the grace period and releases their sagas.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let mut listener = self.store.listener().await?;
        listener.listen(WORK_CHANNEL).await?;
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let abandon = CancellationToken::new();
        let driver = self.driver(shutdown.clone(), abandon.clone());
        let mut tasks = JoinSet::new();
        let (offer, mut handed) = self.local.register(
            self.worker_id.clone(),
            self.known.clone(),
            self.config.lease,
            permits.clone(),
        );
        // Sagas whose driver lost its connection to PostgreSQL, with the lease it held: taken
        // back as soon as a statement goes through again (see `reclaim`).
        let mut paused: Vec<Lease> = Vec::new();
        info!(worker = %self.worker_id, concurrency = self.config.concurrency, "worker started");
        // Whether a claim may find a due saga. A claim that came back with fewer sagas than it
        // asked for found all there were; until a NOTIFY arrives or the sleep until the next
        // due time ends, a saga of this worker ending only frees a slot and the loop just
        // looks at the next due time again (one query, no slots held). Claiming anyway held
        // every free slot for the claim's round trip after each saga's end, and local starts
        // meanwhile found no slot and fell back to a start, a NOTIFY and a claim: 45% of them
        // at half load (BENCHMARKS.md, 4 December).
        let mut may_be_due = true;

        while !shutdown.is_cancelled() {
            while let Some(done) = tasks.try_join_next() {
                collect_paused(done, &mut paused);
            }
            while let Ok(saga) = handed.try_recv() {
                spawn_drive(&mut tasks, &driver, saga.saga, saga.permit);
            }
            if !paused.is_empty() {
                if let Some(mut slots) = take_free_slots(&permits, paused.len()) {
                    let taken = self.reclaim(&mut paused, slots.num_permits()).await;
                    for saga in taken {
                        let Some(slot) = one_slot(&mut slots) else {
                            break;
                        };
                        spawn_drive(&mut tasks, &driver, saga, slot);
                    }
                }
            }
            let mut claimed_all = false;
            let mut free = permits.available_permits();
            // Without `may_be_due` nothing is claimed; the wait below looks at the next due time.
            let claiming = may_be_due;
            let slots = if claiming {
                take_free_slots(&permits, self.config.claim_batch.max(1))
            } else {
                None
            };
            if let Some(mut slots) = slots {
                free = slots.num_permits();
                match self.claim(free).await {
                    Ok(claimed) => {
                        claimed_all = claimed.len() == free;
                        may_be_due = claimed_all;
                        for saga in claimed {
                            let Some(slot) = one_slot(&mut slots) else {
                                break;
                            };
                            spawn_drive(&mut tasks, &driver, saga, slot);
                        }
                    }
                    Err(error) => {
                        warn!(error = %error, "claim failed; retrying after the poll interval");
                    }
                }
            }
            if claimed_all {
                continue; // more may be due right now
            }
            // With every permit taken nothing can be claimed before a saga lets go, which
            // wakes this loop anyway: skip the look at the next due time (a query per claim
            // when the worker is saturated).
            let wait = if free == 0 {
                self.config.poll_interval
            } else {
                self.idle_wait().await
            };
            if !claiming && wait <= MIN_IDLE_WAIT {
                // Something is due now (a retry of a saga that just let go, a lease expired):
                // claim it at once.
                may_be_due = true;
                continue;
            }
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    notification = listener.recv() => {
                        if let Err(error) = notification {
                            warn!(error = %error, "notification listener failed; polling until it reconnects");
                            tokio::time::sleep(self.config.poll_interval).await;
                        }
                        may_be_due = true;
                        break;
                    }
                    _ = &mut sleep => {
                        may_be_due = true;
                        break;
                    }
                    // A saga let go: a permit is free, and it may have scheduled a retry sooner
                    // than this sleep would notice.
                    Some(done) = tasks.join_next() => {
                        collect_paused(done, &mut paused);
                        break;
                    }
                    // A local start is driven at once, with no look at the queue: it says
                    // nothing about what else is due.
                    Some(saga) = handed.recv() => spawn_drive(&mut tasks, &driver, saga.saga, saga.permit),
                }
            }
        }

        // No more local starts; those already handed are driven, which gives them back at
        // once since the worker is stopping.
        drop(offer);
        handed.close();
        while let Some(saga) = handed.recv().await {
            spawn_drive(&mut tasks, &driver, saga.saga, saga.permit);
        }
        info!(in_flight = tasks.len(), "worker stopping");
        if tokio::time::timeout(self.config.shutdown_grace, drain(&mut tasks))
            .await
            .is_err()
        {
            // The steps still running are interrupted; each saga is given back with its
            // attempt not counted (one commit each), so nothing waits for a lease to expire.
            warn!(
                interrupted = tasks.len(),
                "grace period over; interrupting in-flight steps and giving their sagas back"
            );
            abandon.cancel();
            if tokio::time::timeout(RELEASE_WAIT, drain(&mut tasks))
                .await
                .is_err()
            {
                warn!(
                    abandoned = tasks.len(),
                    "could not give every saga back in time; their leases will expire"
                );
                tasks.shutdown().await;
            }
        }
        info!("worker stopped");
        Ok(())
    }

    /// Takes back up to `limit` of the sagas paused by a lost connection
    /// ([`PgStore::reclaim`]). Those it could not take (their lease was taken over or they
    /// ended) are forgotten; if PostgreSQL is still unreachable all stay paused for the next
    /// turn of the loop.
    async fn reclaim(&self, paused: &mut Vec<Lease>, limit: usize) -> Vec<ClaimedSaga> {
        let batch: Vec<Lease> = paused.drain(..paused.len().min(limit)).collect();
        let now = self.clock.now();
        match self
            .store
            .reclaim(
                &self.worker_id,
                now,
                now + chrono_duration(self.config.lease),
                &batch,
            )
            .await
        {
            Ok(taken) => {
                info!(
                    paused = batch.len(),
                    taken = taken.len(),
                    "reconnected to PostgreSQL; took back the sagas paused by the lost connection"
                );
                taken
            }
            Err(error) => {
                debug!(error = %error, "could not take back paused sagas yet");
                paused.extend(batch);
                Vec::new()
            }
        }
    }

    /// How long to sleep when nothing was due: until the next due time, within the poll interval.
    async fn idle_wait(&self) -> Duration {
        match self.store.next_due(&self.known).await {
            Ok(Some(at)) => {
                let until = (at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
                until.clamp(MIN_IDLE_WAIT, self.config.poll_interval)
            }
            Ok(None) => self.config.poll_interval,
            Err(error) => {
                debug!(error = %error, "could not read the next due time");
                self.config.poll_interval
            }
        }
    }
}

/// Up to `most` of the worker's free slots, taken before a claim asks for that many sagas: a
/// local start may take a slot at any time, and a saga claimed without one would wait under
/// this worker's lease until the lease expired. The slots not used go back when dropped.
fn take_free_slots(permits: &Arc<Semaphore>, most: usize) -> Option<OwnedSemaphorePermit> {
    loop {
        let free = permits.available_permits().min(most);
        if free == 0 {
            return None;
        }
        let count = u32::try_from(free).unwrap_or(u32::MAX);
        if let Ok(slots) = permits.clone().try_acquire_many_owned(count) {
            return Some(slots);
        }
        // A local start took one meanwhile: count again.
    }
}

/// One of the slots taken for a claim. A claim returns at most as many sagas as it was
/// allowed, so there is one for each; if a claim ever returned more, the rest are left to
/// their leases' expiry, as if this worker had died.
fn one_slot(slots: &mut OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
    let slot = slots.split(1);
    if slot.is_none() {
        warn!("a claim returned more sagas than it asked for; the rest are resumed when their leases expire");
    }
    slot
}

/// Drives a saga in a task of its own, holding a worker slot until it lets go.
fn spawn_drive(
    tasks: &mut JoinSet<Option<Lease>>,
    driver: &Driver,
    saga: ClaimedSaga,
    permit: OwnedSemaphorePermit,
) {
    let driver = driver.clone();
    tasks.spawn(async move {
        let paused = driver.drive(saga).await;
        drop(permit);
        paused
    });
}

/// Notes a finished saga task: the lease of a saga paused by a lost connection is kept to take
/// it back.
fn collect_paused(done: Result<Option<Lease>, tokio::task::JoinError>, paused: &mut Vec<Lease>) {
    match done {
        Ok(Some(lease)) => paused.push(lease),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "a saga task ended abnormally"),
    }
}
