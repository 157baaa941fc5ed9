//! Taking sagas: the claim of due sagas and the reclaim after a lost connection, both one call
//! to a function in engine/migrations that returns each saga with what its worker needs.

use super::claim_rows::{claimed_sagas, ClaimRow};
use super::queries::NewSaga;
use super::transition::{InFlight, Lease};
use super::PgStore;
use crate::error::StoreError;
use crate::model::{CompensationStatus, SagaStatus, StepStatus};
use crate::registry::Registry;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::PgExecutor;
use std::sync::Arc;
use uuid::Uuid;

/// The persisted state of one step, as a worker needs it.
#[derive(Debug, Clone)]
pub struct StepState {
    pub position: i32,
    pub name: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub attempts_round_base: i32,
    /// The output of a succeeded step, as JSON text: a run keeps the output of every succeeded
    /// step for the steps after it, and a `serde_json::Value` tree costs many times its text
    /// (a two-field object ~870 bytes), which was most of a worker's memory with 1,000 sagas in
    /// flight (BENCHMARKS.md).
    pub output: Option<Box<RawValue>>,
    pub compensation_status: CompensationStatus,
    pub compensation_attempts: i32,
    pub compensation_round_base: i32,
    /// When the step's waits end (see [`crate::wait`]), by wait.
    pub wait_deadlines: std::collections::BTreeMap<String, DateTime<Utc>>,
    /// An attempt failed with an unknown outcome ([`crate::ErrorClass::Unknown`]): if the step
    /// does not succeed, it may have taken effect and is compensated too.
    pub possibly_done: bool,
}

impl StepState {
    /// The step at `position` as `stepwise.start_saga` writes it for a saga that reuses
    /// nothing: pending, never attempted, no output, no compensation needed.
    pub(crate) fn untouched(position: i32, name: String) -> Self {
        Self {
            position,
            name,
            status: StepStatus::Pending,
            attempts: 0,
            attempts_round_base: 0,
            output: None,
            compensation_status: CompensationStatus::NotNeeded,
            compensation_attempts: 0,
            compensation_round_base: 0,
            wait_deadlines: Default::default(),
            possibly_done: false,
        }
    }
}

/// A saga a worker just claimed.
#[derive(Debug, Clone)]
pub struct ClaimedSaga {
    pub lease: Lease,
    pub skill: String,
    pub skill_version: i32,
    pub status: SagaStatus,
    pub input: Value,
    pub cursor: i32,
    pub cancel_requested: bool,
    /// The worker whose lease ran out, if the saga was taken over.
    pub expired_owner: Option<String>,
    /// Whether the claim began the next attempt of the step at `cursor`: the worker runs it
    /// without another commit.
    pub begun: bool,
    /// Whether the saga was `waiting` (an event came, a deadline passed or a sleep ended): the
    /// step at `cursor` goes on with its attempt in flight, without a new one.
    pub resumed: bool,
    /// The attempt in flight (begun by this claim, or resumed); `steps` shows it.
    pub in_flight: Option<InFlight>,
    pub steps: Vec<StepState>,
}

/// The skill versions a worker can run, as the claim matches them (`{skill}@{version}`), with
/// their step names: a worker never claims a saga it could not drive, and it builds the steps
/// of a saga nothing has run in yet from those names (the claim does not read them; see
/// docs/storage.md, "Steps at a claim").
#[derive(Debug, Clone, Default)]
pub struct KnownSkills {
    keys: Vec<String>,
    /// Each key's step names, in position order.
    step_names: Vec<Vec<String>>,
}

impl KnownSkills {
    /// From `(skill, version, step names)`.
    pub fn new<'a>(skills: impl IntoIterator<Item = (&'a str, u32, Vec<String>)>) -> Self {
        let (keys, step_names) = skills
            .into_iter()
            .map(|(name, version, steps)| (format!("{name}@{version}"), steps))
            .unzip();
        Self { keys, step_names }
    }

    /// Every skill version of `registry`.
    pub fn of(registry: &Registry) -> Self {
        let skills = registry.all();
        Self::new(
            skills
                .iter()
                .map(|skill| (skill.name(), skill.version(), skill.step_names())),
        )
    }

    pub(super) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Where `skill` at `version` is among them, if it is.
    fn index(&self, skill: &str, version: impl std::fmt::Display) -> Option<usize> {
        let key = format!("{skill}@{version}");
        self.keys.iter().position(|k| *k == key)
    }

    /// Whether `skill` at `version` is among them.
    pub(crate) fn contains(&self, skill: &str, version: u32) -> bool {
        self.index(skill, version).is_some()
    }

    /// The step names of `skill` at `version`, if it is among them.
    fn step_names(&self, skill: &str, version: i32) -> Option<&[String]> {
        let i = self.index(skill, version)?;
        self.step_names.get(i).map(Vec::as_slice)
    }
}

const CLAIM_COLUMNS: &str = "id, skill, skill_version, status, input, cursor, fencing_token,
    cancel_requested, previous_owner, resumed, attempt_position, attempt_compensation, attempt,
    attempt_started_at, attempt_seq, steps";

impl PgStore {
    /// Claims up to `limit` due sagas of the skill versions this worker can run: waiting ones
    /// whose time has come and held ones whose lease expired. Each claim bumps the fencing
    /// token; takeovers are recorded as `lease_expired`, after the start of the attempt the
    /// lost worker had in flight. A saga going forward whose step at the cursor waits to run
    /// has that step's next attempt begun in the same call, so a claimed saga runs its step
    /// without another commit.
    pub async fn claim(
        &self,
        worker: &Arc<str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        skills: &KnownSkills,
    ) -> Result<Vec<ClaimedSaga>, StoreError> {
        // One round trip to `stepwise.claim_sagas` (engine/migrations): its statements have
        // cached plans and reach rows by index only, so a claim stays O(batch) however many
        // sagas ever ran.
        let rows = claim_rows(&self.pool, now, limit, worker, lease_until, skills.keys()).await?;
        claimed_sagas(worker, lease_until, rows, |skill, version| {
            skills.step_names(skill, version)
        })
    }

    /// Takes back sagas this worker was driving when its connection to PostgreSQL was lost
    /// (the server restarted), without waiting for their leases to expire. Only a saga that
    /// still names `worker` as its lease owner with the fencing token of `held` is taken: if its
    /// lease expired and another worker claimed it, or it ended, the token or owner differ and
    /// it is left alone. The attempt it had in flight was cut short and is recorded so; each
    /// saga taken gets a new token (so nothing the lost connection still carried can commit)
    /// and a fresh lease, and is returned as a claim would return it; the driver decides what
    /// runs next as after a takeover.
    pub async fn reclaim(
        &self,
        worker: &Arc<str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        held: &[Lease],
    ) -> Result<Vec<ClaimedSaga>, StoreError> {
        let ids: Vec<Uuid> = held.iter().map(|l| l.saga_id).collect();
        let tokens: Vec<i64> = held.iter().map(|l| l.token).collect();
        let rows: Vec<ClaimRow> = sqlx::query_as(&format!(
            "SELECT {CLAIM_COLUMNS} FROM stepwise.reclaim_sagas($1, $2, $3, $4, $5)"
        ))
        .bind(now)
        .bind(worker.as_ref())
        .bind(lease_until)
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await?;
        // Every saga taken back was claimed before: its steps come as rows.
        claimed_sagas(worker, lease_until, rows, |_, _| None)
    }

    /// Starts a saga already claimed by `worker` until `lease_until`, its first attempt begun,
    /// in one transaction (a local start, see [`crate::executor`]): the worker runs its first
    /// step without another commit, and no NOTIFY wakes other workers. `None` when the
    /// idempotency key is taken: nothing was written, and [`PgStore::insert_saga`] reports the
    /// saga holding the key. Live views hear of the new saga from the announcer.
    pub async fn insert_claimed_saga(
        &self,
        saga: &NewSaga,
        now: DateTime<Utc>,
        worker: &Arc<str>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ClaimedSaga>, StoreError> {
        let rows = start_claimed_rows(&self.pool, saga, now, worker, lease_until).await?;
        let names = |_: &str, _: i32| Some(saga.step_names.as_slice());
        let claimed = claimed_sagas(worker, lease_until, rows, names)?.pop();
        if let Some(saga) = &claimed {
            self.announcer
                .announce(&self.pool, vec![(saga.lease.saga_id, saga.status)]);
        }
        Ok(claimed)
    }
}

/// The rows of `stepwise.claim_sagas` (see [`PgStore::claim`]), on `executor`.
pub(super) async fn claim_rows<'e, E: PgExecutor<'e>>(
    executor: E,
    now: DateTime<Utc>,
    limit: i64,
    worker: &str,
    lease_until: DateTime<Utc>,
    skill_keys: &[String],
) -> Result<Vec<ClaimRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS} FROM stepwise.claim_sagas($1, $2, $3, $4, $5)"
    ))
    .bind(now)
    .bind(limit)
    .bind(worker)
    .bind(lease_until)
    .bind(skill_keys)
    .fetch_all(executor)
    .await
}

/// The rows of `stepwise.start_claimed_saga` (see [`PgStore::insert_claimed_saga`]), on
/// `executor`: one row, or none when the idempotency key is taken.
pub(super) async fn start_claimed_rows<'e, E: PgExecutor<'e>>(
    executor: E,
    saga: &NewSaga,
    now: DateTime<Utc>,
    worker: &str,
    lease_until: DateTime<Utc>,
) -> Result<Vec<ClaimRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLAIM_COLUMNS}
         FROM stepwise.start_claimed_saga($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(saga.id)
    .bind(&saga.skill)
    .bind(saga.skill_version)
    .bind(&saga.idempotency_key)
    .bind(&saga.input)
    .bind(&saga.started_by)
    .bind(&saga.step_names)
    .bind(now)
    .bind(worker)
    .bind(lease_until)
    .fetch_all(executor)
    .await
}
