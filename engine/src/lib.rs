//! # stepwise-engine
//!
//! A durable saga executor on PostgreSQL. It knows no hotel and no protocol: applications
//! register [`Skill`]s (named, versioned, ordered [`Step`]s with optional compensations) and
//! start sagas through the [`Engine`]; [`Worker`]s run them.
//!
//! ## Concepts
//!
//! - **Skill / step.** A step's action receives the saga input, the outputs of earlier steps,
//!   its attempt number and a stable idempotency key (`{saga_id}/{step}`, or
//!   `{saga_id}/{step}/compensate`) to hand to external systems. Its output is committed before
//!   the next step starts. Steps run at least once; effects happen once through those keys.
//! - **Errors** are classified where they happen ([`StepError::retryable`] or
//!   [`StepError::permanent`]). A permanent error, or a retryable one that exhausted the step's
//!   [`RetryPolicy`], starts compensation: the compensations of the succeeded steps run in
//!   reverse order, each with its own durable retries. A compensation that cannot succeed leaves
//!   the saga `failed` for an operator, with the whole story in its history.
//! - **Durable retries.** The next attempt time is `now + RetryPolicy::delay_after(..)`, written
//!   to the saga's `wake_at`; the worker lets go. No sleeping loop that a crash would forget.
//! - **Leases and fencing.** Workers claim due sagas with `FOR UPDATE SKIP LOCKED`, taking a
//!   lease (`wake_at` = expiry) and bumping `fencing_token`. Every write is conditioned on the
//!   token, so a worker that lost its lease cannot overwrite the new owner. Expired leases are
//!   reclaimed by any worker (`lease_expired` in the history). A worker claims only the skill
//!   versions it has registered, and the claim itself starts the saga's waiting step. The
//!   worker that commits step k starts step k+1 in the same commit and runs it while it holds
//!   the lease. A saga the [`Engine`] starts while one of its running workers has a free slot
//!   is claimed by that worker in the start's own transaction and handed to it in memory (a
//!   local start: one commit before the first step, not two). A worker claims when a NOTIFY
//!   says work was started, when its sleep until the next due time ends, and after a saga ends
//!   only if its last claim was full (more may be waiting): otherwise a claim would hold the
//!   free slots a local start is looking for.
//! - **Waits.** A step may wait for a named event it declares with a payload schema
//!   ([`Step::awaits`], [`StepContext::await_event`] with a [`Wait`]) or for a time
//!   ([`StepContext::sleep`]). The action returns an error that suspends it (pass it on with
//!   `?`); the saga becomes `waiting` (no lease, `wake_at` = the deadline), and when the event
//!   is delivered ([`Engine::deliver`], idempotent on its key, checked against the schema), the
//!   deadline passes or the sleep ends, a worker runs the same attempt again and the wait
//!   returns. A deadline without a default payload fails the step with `wait_timed_out`. See
//!   [`wait`].
//! - **Time** comes from a [`Clock`]; tests use [`ManualClock`]. Steps see it too, as the
//!   start of their attempt ([`StepContext::now`]).
//! - **Roles** are data: the [`Registry`] holds the [`Role`]s its composer declares, and
//!   refuses a skill or query whose [`Exposure`] names an undeclared one. A facade decides what
//!   callers of a role may do from that data; the engine enforces none of it ([`role`]).
//!
//! ## Tables (schema `stepwise`, one baseline in `engine/migrations/`)
//!
//! The engine owns schema `stepwise` and nothing else; all its SQL is in [`store`], and other
//! crates ask through its API ([`Engine::saga_statuses`], the statistics in [`store`] such as
//! [`PgStore::table_health`]), never by querying these tables.
//!
//! - `sagas`: one row per saga: skill and version, status, input/output/error, `cursor` (the
//!   forward step in progress), `wake_at` (when a worker must look: due time, or lease expiry
//!   while held; NULL when terminal), `lease_owner`, `fencing_token`, `cancel_requested_at`,
//!   `replay_of`, and the attempt in flight (`attempt_position`, `attempt_compensation`,
//!   `attempt`, `attempt_started_at`, `attempt_seq`: its place in the history, `attempt_actor`;
//!   all NULL when none). `(skill, idempotency_key)` is unique. Step commits only touch
//!   unindexed columns so they are HOT updates.
//! - `steps`: one row per step, created with the saga: status, attempts (over the saga's whole
//!   life) and the base of the current round (operator retries get a fresh budget), output,
//!   error, start and end of the last attempt, and the same for its compensation; the history
//!   places and worker of the last attempts (`started_seq`, `finished_seq`, `actor`, and
//!   `compensation_*`).
//! - `sagas.waiting_for`: what a `waiting` saga awaits (`{"step","event","until","prompt",
//!   "schema","url","roles"}`), set exactly while it waits (the row invariants tie it to the status, no lease and a
//!   wake time); `steps.wait_deadlines`: each wait's deadline, fixed when first reached.
//! - `deliveries`: events delivered to sagas, unique on (saga, delivery key), with payload,
//!   actor, time and which step consumed them when.
//! - `events`: the append-only history (a trigger refuses updates): kind, step, attempt, actor,
//!   time, detail. Partitioned by month of saga id. It holds the saga-level history and every
//!   attempt that did not succeed; a succeeded attempt's `step_started` / `step_succeeded`
//!   (`compensation_*`) are derived from its step's row and the attempt in flight from the saga
//!   row.
//!
//! The common step commit (step k succeeds, k+1 begins) writes two rows, the steps row of k and
//! the saga row, both HOT updates. Readers ([`PgStore::detail`] and the counts) see the history
//! as the union of the three, ordered by place, and the steps overlaid with the attempt in
//! flight: docs/storage.md.
//!
//! States and event kinds are domains (`stepwise.saga_status`, `step_status`,
//! `compensation_status`, `event_kind`). The hot path is plpgsql functions, one round trip
//! each: `start_saga`, `claim_sagas` (and `reclaim_sagas` after a lost connection) and
//! `commit_steps` (every worker commit, one saga's or a group's); `interrupt_attempts` writes
//! the start of an attempt that ends without success to the history.
//!
//! ## Schemas and migrations
//!
//! Each crate that keeps tables owns one schema and embeds its migrations as a
//! [`SchemaMigrations`] value: the engine's is [`store::MIGRATIONS`] (applied by
//! [`PgStore::migrate`], which also refuses a database made by the 0.x layout), the hotel
//! skills' `stepwise_skills::MIGRATIONS` (schema `hotel`), the MCP facade's
//! `stepwise_mcp::MIGRATIONS` (schema `mcp`). [`migrations`] applies each with its own history
//! in `<schema>._sqlx_migrations`, so one crate's migrations never block another's; the
//! composition root applies them in that order.
//!
//! ## The diagnostic skill
//!
//! [`synthetic`] defines `synthetic_chain`, a chain of no-op steps that fail on demand, used by
//! the engine's own tests (`engine/tests/`, against PostgreSQL), benchmarks and chaos runs.
//!
//! ## States
//!
//! See [`model`] for the state machine of sagas, steps and compensations.

pub mod clock;
pub mod engine;
pub mod error;
pub mod executor;
pub mod metrics;
pub mod migrations;
pub mod model;
pub mod operator;
pub mod query;
pub mod registry;
pub mod retry;
pub mod role;
pub mod skill;
pub mod store;
pub mod synthetic;
pub mod wait;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use engine::{Engine, StartRequest};
pub use error::{ErrorClass, StartError, StepError, StoreError};
pub use executor::{JitterSource, Worker, WorkerConfig, WorkerError};
pub use migrations::{MigrationError, SchemaMigrations};
pub use model::{
    CompensationStatus, EventKind, EventView, SagaDetail, SagaFilter, SagaStatus, SagaSummary,
    StepStatus, StepView,
};
pub use operator::{BulkFilter, OperatorError, OperatorRequest, Progress, PruneReport};
pub use query::Query;
pub use registry::{Registry, RegistryError};
pub use retry::{Jitter, RetryPolicy};
pub use role::{Role, SagaScope};
pub use skill::{
    Exposure, InputError, Skill, SkillBuilder, SkillError, SkillInput, Step, StepContext,
};
pub use store::{Connections, DbPool, PgStore, Pooling, StartOutcome};
pub use wait::{DeliverError, Delivery, Received, Wait};
