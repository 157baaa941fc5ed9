//! The end-of-run checks of a chaos run, from outside the workers: the database and the
//! sandbox ledger.

use super::Disruptions;
use crate::exit::CliError;
use serde_json::{json, Value};
use std::collections::HashMap;
use stepwise_engine::DbPool;

/// Sagas not yet in a terminal state, other than the bookings' no-show timers waiting for
/// their arrival day (docs/skills.md, "No-shows"): those wait by design.
pub async fn unfinished(pool: &DbPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.sagas
         WHERE status NOT IN ('completed', 'compensated', 'failed')
           AND NOT (skill = 'mark_no_show' AND status = 'waiting')",
    )
    .fetch_one(pool)
    .await
}

/// The bookings' no-show timers still waiting for their arrival day.
async fn armed_timers(pool: &DbPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.sagas WHERE skill = 'mark_no_show' AND status = 'waiting'",
    )
    .fetch_one(pool)
    .await
}

/// Up to 10 sagas that ended `failed` (a compensation gave up), with their error, so a run
/// says why without keeping its cluster.
async fn failed_sagas(pool: &DbPool) -> Result<Vec<Value>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, Option<Value>)> = sqlx::query_as(
        "SELECT id, skill, error FROM stepwise.sagas WHERE status = 'failed'
         ORDER BY created_at LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, skill, error)| json!({"id": id, "skill": skill, "error": error}))
        .collect())
}

/// A saga that handles money: a checkout or a booking.
#[derive(sqlx::FromRow)]
struct PayingSaga {
    id: uuid::Uuid,
    skill: String,
    status: String,
    output: Option<Value>,
    error: Option<Value>,
}

pub struct Report {
    pub json: Value,
    /// Every figure that must be 0 is 0.
    pub ok: bool,
}

fn db(e: sqlx::Error) -> CliError {
    CliError::failed(format!("chaos checks: {e}"))
}

/// One saga's money in the ledger: what its payment intents received, less what was refunded.
#[derive(Default, Debug)]
struct Money {
    charges: i64,
    net: i64,
}

pub async fn report(
    pool: &DbPool,
    http: &reqwest::Client,
    sandbox_url: &str,
    minutes: f64,
    disruptions: Disruptions,
    unexpected_exits: u32,
) -> Result<Report, CliError> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM stepwise.sagas GROUP BY status")
            .fetch_all(pool)
            .await
            .map_err(db)?;
    let count = |s: &str| {
        by_status
            .iter()
            .find(|(status, _)| status == s)
            .map_or(0, |(_, n)| *n)
    };
    let started: i64 = by_status.iter().map(|(_, n)| n).sum();
    let terminal = count("completed") + count("compensated") + count("failed");
    let timers = armed_timers(pool).await.map_err(db)?;
    let failed = failed_sagas(pool).await.map_err(db)?;
    // From the saga histories as readers see them: a step's success may be on its row
    // (docs/storage.md), so the history rows alone would not show a step run again.
    let twice = stepwise_engine::PgStore::new(pool.clone())
        .steps_succeeded_twice()
        .await
        .map_err(|e| CliError::failed(format!("chaos checks: {e}")))?;

    let ledger = super::load::ledger(http, sandbox_url).await?;
    let mut money: HashMap<String, Money> = HashMap::new();
    for intent in ledger["objects"]["payment_intent"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(saga) = intent["metadata"]["saga_id"].as_str() else {
            continue;
        };
        let received = intent["amount_received"].as_i64().unwrap_or(0);
        let refunded = intent["amount_refunded"].as_i64().unwrap_or(0);
        let entry = money.entry(saga.to_string()).or_default();
        if received > 0 {
            entry.charges += 1;
        }
        entry.net += received - refunded;
    }
    let faults_injected = ledger["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !r["fault"].is_null())
        .count();

    // Every saga that handles money: checkouts (the stay) and bookings (the deposit).
    let paying: Vec<PayingSaga> = sqlx::query_as(
        "SELECT id, skill, status::text AS status, output, error FROM stepwise.sagas
         WHERE skill IN ('process_guest_checkout', 'create_booking')",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut checkouts = 0;
    let mut mismatches = Vec::new();
    for PayingSaga {
        id,
        skill,
        status,
        output,
        error,
    } in &paying
    {
        if skill == "process_guest_checkout" {
            checkouts += 1;
        }
        let m = money.remove(&id.to_string()).unwrap_or_default();
        let output = output.clone().unwrap_or(Value::Null);
        let expected = match skill.as_str() {
            "process_guest_checkout" => output["amount"].as_i64().unwrap_or(0),
            _ => output["deposit_amount"].as_i64().unwrap_or(0),
        };
        let ok = match status.as_str() {
            // Exactly one charge of the amount the saga reports, kept.
            "completed" => m.net == expected && m.charges == i64::from(expected > 0),
            // Nothing kept.
            "compensated" => m.net == 0,
            // Waiting for an operator (a refund that could not be made): not judged here;
            // counted below.
            _ => true,
        };
        if !ok {
            mismatches.push(json!({
                "saga_id": id, "skill": skill, "status": status,
                "charges": m.charges, "net": m.net, "expected_net": if status == "completed" { expected } else { 0 },
                // Why it compensated: the step that gave up and its last error.
                "error": error.as_ref().map(|e| json!({"step": e["step"], "code": e["code"]})),
            }));
        }
    }
    // Money taken for a saga id that no paying saga has.
    let orphan_charges: i64 = money.values().filter(|m| m.net != 0).count() as i64;

    let stuck = started - terminal - timers;
    let ok = stuck == 0
        && twice == 0
        && mismatches.is_empty()
        && orphan_charges == 0
        && unexpected_exits == 0;
    let json = json!({
        "minutes": minutes,
        "sagas_started": started,
        "terminal": terminal,
        "stuck": stuck,
        "no_show_timers_waiting": timers,
        "steps_succeeded_twice": twice,
        "checkouts": checkouts,
        "money_mismatches": mismatches.len() + orphan_charges as usize,
        "unexpected_exits": unexpected_exits,
        "completed": count("completed"),
        "compensated": count("compensated"),
        "failed": count("failed"),
        "failed_sagas": failed,
        "faults_injected": faults_injected,
        "disruptions": disruptions,
        "mismatched": mismatches.iter().take(10).collect::<Vec<_>>(),
        "ok": ok,
    });
    Ok(Report { json, ok })
}
