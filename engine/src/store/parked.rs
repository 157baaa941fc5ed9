//! Connections kept aside between statements instead of going back to sqlx's pool.
//!
//! sqlx 0.8 checks every connection given back to its pool with a round trip (a Sync message and
//! its ReadyForQuery) before another caller may take it: a second round trip after every
//! statement, and a step commit is one statement (BENCHMARKS.md, 4 December 2026, "The release
//! check"). A statement read to its end (up to ReadyForQuery) leaves nothing to check, so
//! [`super::DbPool`] parks its connection here for its next statement. A connection whose
//! statement failed or was dropped half-way is not parked: it goes back to sqlx, whose check
//! reads what is left or closes it.
//!
//! Parked connections count as taken for sqlx's pool, whose other callers (a LISTEN connection,
//! migrations, code holding the `PgPool` the engine was given) would wait for them. So they do
//! not stay long: at most the pool's size minus two are parked, one unused for
//! [`IDLE_RELEASE`] goes back to sqlx (a sweeper task), and one taken out of sqlx's pool
//! [`MAX_OUT`] ago goes back at its next park, where sqlx's waiters get their turn however busy
//! the engine is.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A parked connection unused this long goes back to sqlx's pool.
pub(super) const IDLE_RELEASE: Duration = Duration::from_millis(50);

/// A connection out of sqlx's pool this long goes back to it at its next park.
pub(super) const MAX_OUT: Duration = Duration::from_millis(250);

/// A connection taken for a statement: parked or fresh from sqlx's pool.
pub(super) struct Taken {
    pub connection: PoolConnection<Postgres>,
    /// When it left sqlx's pool.
    pub out_since: Instant,
    /// How long it had been parked (zero if it came from sqlx's pool).
    pub idle_for: Duration,
}

struct Entry {
    connection: PoolConnection<Postgres>,
    out_since: Instant,
    parked_at: Instant,
}

/// The parked connections of one pool, the most recently parked last.
pub(super) struct Parked {
    entries: Mutex<Vec<Entry>>,
    capacity: usize,
    /// Wakes the sweeper when the first connection is parked, and when this is dropped.
    sweeper: Arc<Notify>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("parked", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Parked {
    /// The parking of `pool`, with its sweeper task. Outside a tokio runtime there is no
    /// sweeper, so nothing is parked.
    pub(super) fn for_pool(pool: &PgPool) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let max = pool.options().get_max_connections() as usize;
        let parked = Arc::new(Self {
            entries: Mutex::new(Vec::with_capacity(max)),
            capacity: if runtime.is_some() {
                max.saturating_sub(2)
            } else {
                0
            },
            sweeper: Arc::new(Notify::new()),
        });
        if let Some(runtime) = runtime {
            runtime.spawn(sweep(Arc::downgrade(&parked), Arc::clone(&parked.sweeper)));
        }
        parked
    }

    /// The connection parked last (the one most likely still in the server's caches).
    pub(super) fn take(&self) -> Option<Taken> {
        let entry = self.lock().pop()?;
        Some(Taken {
            idle_for: entry.parked_at.elapsed(),
            connection: entry.connection,
            out_since: entry.out_since,
        })
    }

    /// Keeps `connection` if there is room, `pool` is open and it has not been out of sqlx's
    /// pool for [`MAX_OUT`]; else gives it back to sqlx's pool (by dropping it). Closed is read
    /// under the lock: [`super::DbPool::close`] marks the pool closed before it empties the
    /// list, so nothing is parked after that.
    pub(super) fn park(
        &self,
        connection: PoolConnection<Postgres>,
        out_since: Instant,
        pool: &PgPool,
    ) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity
            || pool.is_closed()
            || now.duration_since(out_since) >= MAX_OUT
        {
            return;
        }
        entries.push(Entry {
            connection,
            out_since,
            parked_at: now,
        });
        if entries.len() == 1 {
            self.sweeper.notify_one();
        }
    }

    /// Gives every parked connection back to sqlx's pool.
    pub(super) fn release_all(&self) {
        let released = std::mem::take(&mut *self.lock());
        drop(released);
    }

    /// Gives back the connections parked for [`IDLE_RELEASE`] or more; returns when the next
    /// one will have been, if any is left.
    fn release_idle(&self) -> Option<Instant> {
        let now = Instant::now();
        let (released, next): (Vec<Entry>, _) = {
            let mut entries = self.lock();
            // Parked last at the end, so the idle ones are a prefix.
            let idle = entries
                .iter()
                .take_while(|e| now.duration_since(e.parked_at) >= IDLE_RELEASE)
                .count();
            let released = entries.drain(..idle).collect();
            (
                released,
                entries.first().map(|e| e.parked_at + IDLE_RELEASE),
            )
        };
        // Given back outside the lock: each drop hands its connection to sqlx's pool.
        drop(released);
        next
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The list cannot be left half-changed (a push, a pop or a drain of entries), so a
    /// poisoned lock is still a sound one.
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.sweeper.notify_one();
    }
}

/// Gives idle parked connections back to sqlx's pool until the pool's last handle is gone.
/// Sleeps while nothing is parked.
async fn sweep(parked: Weak<Parked>, wake: Arc<Notify>) {
    loop {
        let next = match parked.upgrade() {
            Some(parked) => parked.release_idle(),
            None => return,
        };
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => wake.notified().await,
        }
    }
}
