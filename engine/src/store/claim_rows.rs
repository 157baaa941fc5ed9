//! How a claim's rows become [`ClaimedSaga`]s: the saga row's columns, its steps read from
//! their rows or, for a saga nothing has run in yet, built from its skill's step names, and
//! the attempt in flight shown on them.

use super::claim::{ClaimedSaga, StepState};
use super::rows::parse;
use super::transition::{InFlight, Lease};
use crate::error::StoreError;
use crate::model::{CompensationStatus, SagaStatus, StepStatus};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// One row of `stepwise.claim_sagas` (or of `reclaim_sagas` or `start_claimed_saga`, which have
/// the same shape).
#[derive(sqlx::FromRow)]
pub(super) struct ClaimRow {
    id: Uuid,
    skill: String,
    skill_version: i32,
    status: String,
    input: Value,
    cursor: i32,
    fencing_token: i64,
    cancel_requested: bool,
    previous_owner: Option<String>,
    resumed: bool,
    attempt_position: Option<i32>,
    attempt_compensation: Option<bool>,
    attempt: Option<i32>,
    attempt_started_at: Option<DateTime<Utc>>,
    attempt_seq: Option<i64>,
    steps: Option<sqlx::types::Json<StepsJson>>,
}

/// A claimed saga's `steps`: the rows of `stepwise.step_states` (a json array), or only how
/// many steps it has when nothing has run in it yet (a json number; migration
/// 20261203180000).
enum StepsJson {
    Rows(Vec<StepJson>),
    Untouched(usize),
}

// By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input, and a buffered
// value cannot give the outputs' `RawValue`.
impl<'de> serde::Deserialize<'de> for StepsJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StepsJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of steps or a number of steps")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StepsJson, E> {
                usize::try_from(n)
                    .map(StepsJson::Untouched)
                    .map_err(|_| E::custom("too many steps"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StepsJson, A::Error> {
                let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(row) = seq.next_element()? {
                    rows.push(row);
                }
                Ok(StepsJson::Rows(rows))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl ClaimRow {
    fn in_flight(&self) -> Option<InFlight> {
        Some(InFlight {
            position: self.attempt_position?,
            compensation: self.attempt_compensation?,
            attempt: self.attempt?,
            started_at: self.attempt_started_at?,
            seq: self.attempt_seq?,
        })
    }
}

/// The shape of `stepwise.step_states`.
#[derive(serde::Deserialize)]
struct StepJson {
    position: i32,
    name: String,
    status: String,
    attempts: i32,
    attempts_round_base: i32,
    /// JSON cannot tell SQL NULL from a `null` output; `has_output` can.
    has_output: bool,
    output: Option<Box<RawValue>>,
    compensation_status: String,
    compensation_attempts: i32,
    compensation_round_base: i32,
    #[serde(default)]
    wait_deadlines: std::collections::BTreeMap<String, DateTime<Utc>>,
    #[serde(default)]
    possibly_done: bool,
}

impl StepJson {
    fn into_state(self) -> Result<StepState, StoreError> {
        Ok(StepState {
            position: self.position,
            name: self.name,
            status: parse("step status", &self.status)?,
            attempts: self.attempts,
            attempts_round_base: self.attempts_round_base,
            output: self
                .has_output
                .then(|| self.output.unwrap_or_else(|| RawValue::NULL.to_owned())),
            compensation_status: parse("compensation status", &self.compensation_status)?,
            compensation_attempts: self.compensation_attempts,
            compensation_round_base: self.compensation_round_base,
            wait_deadlines: self.wait_deadlines,
            possibly_done: self.possibly_done,
        })
    }
}

/// Shows the attempt in flight in the steps, as the worker reasons about them: the step (or
/// its compensation) `running` with that attempt counted.
pub(crate) fn overlay_in_flight(steps: &mut [StepState], in_flight: &InFlight) {
    let Some(step) = usize::try_from(in_flight.position)
        .ok()
        .and_then(|p| steps.get_mut(p))
    else {
        return;
    };
    if in_flight.compensation {
        step.compensation_status = CompensationStatus::Running;
        step.compensation_attempts = in_flight.attempt;
    } else {
        step.status = StepStatus::Running;
        step.attempts = in_flight.attempt;
    }
}

/// The first `count` steps named `names`, as `stepwise.start_saga` writes them for a saga
/// that reuses nothing ([`StepState::untouched`]).
fn untouched_steps(names: &[String], count: usize) -> Option<Vec<StepState>> {
    let steps = names.get(..count)?.iter().zip(0..);
    Some(
        steps
            .map(|(name, position)| StepState::untouched(position, name.clone()))
            .collect(),
    )
}

/// Turns claim rows into claimed sagas held by `worker` until `lease_until`; `step_names`
/// gives a skill version's step names for the sagas whose steps were not read.
pub(super) fn claimed_sagas<'n>(
    worker: &Arc<str>,
    lease_until: DateTime<Utc>,
    rows: Vec<ClaimRow>,
    step_names: impl Fn(&str, i32) -> Option<&'n [String]>,
) -> Result<Vec<ClaimedSaga>, StoreError> {
    rows.into_iter()
        .map(|mut r| {
            let in_flight = r.in_flight();
            let mut steps = match r.steps.take().map(|json| json.0) {
                None => Vec::new(),
                Some(StepsJson::Rows(rows)) => rows
                    .into_iter()
                    .map(StepJson::into_state)
                    .collect::<Result<Vec<_>, StoreError>>()?,
                Some(StepsJson::Untouched(count)) => step_names(&r.skill, r.skill_version)
                    .and_then(|names| untouched_steps(names, count))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "saga {} has {count} steps its claim did not read, more than {}@{} names",
                            r.id, r.skill, r.skill_version
                        ))
                    })?,
            };
            if let Some(in_flight) = &in_flight {
                overlay_in_flight(&mut steps, in_flight);
            }
            Ok(ClaimedSaga {
                lease: Lease {
                    saga_id: r.id,
                    token: r.fencing_token,
                    worker: worker.clone(),
                    expires_at: lease_until,
                },
                status: parse::<SagaStatus>("saga status", &r.status)?,
                skill: r.skill,
                skill_version: r.skill_version,
                input: r.input,
                cursor: r.cursor,
                cancel_requested: r.cancel_requested,
                expired_owner: r.previous_owner,
                begun: in_flight.is_some() && !r.resumed,
                resumed: r.resumed,
                in_flight,
                steps,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::store::NewSaga;
    use crate::store::{KnownSkills, PgStore};
    use sqlx::PgPool;

    fn synthetic(steps: usize) -> NewSaga {
        NewSaga {
            id: Uuid::now_v7(),
            skill: crate::synthetic::NAME.to_string(),
            skill_version: 1,
            input: serde_json::json!({ "steps": steps }),
            idempotency_key: None,
            started_by: "test".to_string(),
            replay_of: None,
            step_names: (0..steps).map(|i| format!("step_{}", i + 1)).collect(),
            reused_outputs: Vec::new(),
        }
    }

    /// A store on `pool`, migrated, and the skills of a worker that runs the synthetic skill.
    async fn migrated_with_synthetic(pool: &PgPool) -> (PgStore, KnownSkills) {
        let store = PgStore::new(pool.clone());
        store.migrate().await.unwrap();
        let mut registry = Registry::new();
        registry
            .register(crate::synthetic::skill().unwrap())
            .unwrap();
        (store, KnownSkills::of(&registry))
    }

    /// The steps as `stepwise.step_states` reads them from their rows.
    async fn steps_read(pool: &PgPool, id: Uuid) -> Vec<StepState> {
        let json: sqlx::types::Json<StepsJson> =
            sqlx::query_scalar("SELECT stepwise.step_states($1)")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        let StepsJson::Rows(rows) = json.0 else {
            panic!("step_states returns rows");
        };
        rows.into_iter().map(|r| r.into_state().unwrap()).collect()
    }

    #[sqlx::test(migrations = false)]
    async fn a_claim_builds_an_untouched_sagas_steps_exactly_as_its_rows_hold_them(pool: PgPool) {
        let (store, known) = migrated_with_synthetic(&pool).await;
        let saga = synthetic(3);
        let now = Utc::now();
        store.insert_saga(saga.clone(), now).await.unwrap().unwrap();
        let worker: Arc<str> = Arc::from("w1");

        let claimed = store
            .claim(&worker, now, now + chrono::Duration::seconds(30), 1, &known)
            .await
            .unwrap()
            .pop()
            .unwrap();

        // The claim did not read the rows (it took the saga's token from 0 at cursor 0).
        let untaken: Option<String> = sqlx::query_scalar(
            "SELECT steps::text FROM stepwise.take_sagas(ARRAY[$1], $2, 'w2', $2)",
        )
        .bind(saga.id)
        .bind(now)
        .fetch_optional(&pool)
        .await
        .unwrap();
        assert!(
            untaken.is_some_and(|steps| steps.starts_with('[')),
            "a saga claimed before has its rows read"
        );
        let mut read = steps_read(&pool, saga.id).await;
        overlay_in_flight(&mut read, claimed.in_flight.as_ref().unwrap());
        assert_eq!(format!("{:?}", claimed.steps), format!("{read:?}"));
        assert_eq!(claimed.steps.len(), 3);
        assert_eq!(claimed.steps[0].attempts, 1, "the claim's attempt shows");
    }

    #[sqlx::test(migrations = false)]
    async fn a_fresh_saga_is_claimed_without_reading_its_steps(pool: PgPool) {
        let store = PgStore::new(pool.clone());
        store.migrate().await.unwrap();
        let saga = synthetic(2);
        let now = Utc::now();
        store.insert_saga(saga.clone(), now).await.unwrap().unwrap();
        let steps: String = sqlx::query_scalar(
            "SELECT steps::text FROM stepwise.take_sagas(ARRAY[$1], $2, 'w1', $2)",
        )
        .bind(saga.id)
        .bind(now)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(steps, "2");
    }

    /// A saga's rows without what differs between two sagas (ids, sequence numbers): the saga
    /// row, its step rows in order, its history rows in order.
    async fn rows_of(pool: &PgPool, id: Uuid) -> (Value, Value, Value) {
        sqlx::query_as(
            "SELECT (SELECT to_jsonb(s) - 'id' - 'attempt_seq' FROM stepwise.sagas s
                     WHERE s.id = $1),
                    (SELECT jsonb_agg(to_jsonb(st) - 'saga_id' ORDER BY st.position)
                     FROM stepwise.steps st WHERE st.saga_id = $1),
                    (SELECT jsonb_agg(to_jsonb(e) - 'id' - 'saga_id' ORDER BY e.id)
                     FROM stepwise.events e WHERE e.saga_id = $1)",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Whether the saga's `saga_started` row comes before its attempt in flight in its history.
    async fn started_before_attempt(pool: &PgPool, id: Uuid) -> bool {
        sqlx::query_scalar(
            "SELECT (SELECT e.id FROM stepwise.events e
                     WHERE e.saga_id = $1 AND e.kind = 'saga_started')
                    < (SELECT s.attempt_seq FROM stepwise.sagas s WHERE s.id = $1)",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[sqlx::test(migrations = false)]
    async fn a_local_start_writes_the_rows_a_start_and_a_claim_write(pool: PgPool) {
        let (store, known) = migrated_with_synthetic(&pool).await;
        let worker: Arc<str> = Arc::from("w1");
        let now = Utc::now();
        let lease_until = now + chrono::Duration::seconds(30);

        // Started, then claimed (the local saga is not due before its lease ends).
        let usual = synthetic(3);
        store
            .insert_saga(usual.clone(), now)
            .await
            .unwrap()
            .unwrap();
        let local = synthetic(3);
        let by_start = store
            .insert_claimed_saga(&local, now, &worker, lease_until)
            .await
            .unwrap()
            .unwrap();
        let by_claim = store
            .claim(&worker, now, lease_until, 8, &known)
            .await
            .unwrap();
        assert_eq!(by_claim.len(), 1, "only the usual start was due");
        let by_claim = &by_claim[0];

        assert_eq!(
            rows_of(&pool, local.id).await,
            rows_of(&pool, usual.id).await
        );
        assert!(started_before_attempt(&pool, local.id).await);
        assert!(started_before_attempt(&pool, usual.id).await);

        // The worker is handed the same saga either way.
        let same = |c: &ClaimedSaga| {
            let in_flight = c.in_flight.unwrap();
            (
                (c.lease.token, c.lease.expires_at, c.lease.worker.clone()),
                (c.status, c.cursor, c.cancel_requested, c.begun, c.resumed),
                (
                    in_flight.position,
                    in_flight.compensation,
                    in_flight.attempt,
                ),
                in_flight.started_at,
                (c.expired_owner.clone(), c.skill.clone(), c.input.clone()),
                format!("{:?}", c.steps),
            )
        };
        assert_eq!(same(&by_start), same(by_claim));
        let seq_on_row: i64 =
            sqlx::query_scalar("SELECT attempt_seq FROM stepwise.sagas WHERE id = $1")
                .bind(local.id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(by_start.in_flight.unwrap().seq, seq_on_row);
    }
}
