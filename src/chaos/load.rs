//! The load of a chaos run: hotel stays and synthetic sagas, started through the engine of
//! this process while the workers (other processes) drive them.

use crate::exit::CliError;
use chrono::{Duration as Days, Utc};
use serde_json::{json, Value};
use std::time::Duration;
use stepwise_engine::{Engine, SagaStatus, StartError, StartRequest};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Posts the sandbox's fault settings (`{}` clears them).
pub async fn set_faults(
    http: &reqwest::Client,
    sandbox_url: &str,
    faults: Value,
) -> Result<(), CliError> {
    let response = http
        .post(format!("{sandbox_url}/_sandbox/faults"))
        .json(&faults)
        .send()
        .await
        .map_err(|e| CliError::failed(format!("cannot set the sandbox faults: {e}")))?;
    if !response.status().is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(CliError::failed(format!(
            "the sandbox refused the faults {faults}: {body}"
        )));
    }
    Ok(())
}

/// Reads the sandbox ledger.
pub async fn ledger(http: &reqwest::Client, sandbox_url: &str) -> Result<Value, CliError> {
    http.get(format!("{sandbox_url}/_sandbox/ledger"))
        .send()
        .await
        .map_err(|e| CliError::failed(format!("cannot read the sandbox ledger: {e}")))?
        .json()
        .await
        .map_err(|e| CliError::failed(format!("cannot read the sandbox ledger: {e}")))
}

#[derive(Clone)]
pub struct Load {
    engine: Engine,
    http: reqwest::Client,
    sandbox_url: String,
}

impl Load {
    pub fn new(engine: Engine, http: reqwest::Client, sandbox_url: String) -> Self {
        Self {
            engine,
            http,
            sandbox_url,
        }
    }

    /// Runs until `stop`: synthetic sagas all along, and one lane per vacant room cycling
    /// through booking, check-in, checkout and cleaning, plus the checkout of every guest in
    /// house at the start.
    pub async fn run(self, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().synthetic(stop.clone()));
        match ledger(&self.http, &self.sandbox_url).await {
            Ok(ledger) => {
                let (house, rooms) = (guests_in_house(&ledger), vacant_rooms(&ledger));
                eprintln!(
                    "chaos: hotel load: {} guests in house to check out, {} vacant rooms to cycle",
                    house.len(),
                    rooms.len()
                );
                for (i, email) in house.into_iter().enumerate() {
                    let load = self.clone();
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        load.checkout(&email, &format!("house-{i}"), &stop).await;
                    });
                }
                for room in rooms {
                    tasks.spawn(self.clone().lane(room, stop.clone()));
                }
            }
            Err(e) => eprintln!("chaos: no hotel load: {}", e.message),
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn synthetic(self, stop: CancellationToken) {
        let mut n: u64 = 0;
        while !stop.is_cancelled() {
            n += 1;
            let input = match n % 5 {
                0 => json!({"steps": 4, "step_sleep_ms": 10}),
                1 => json!({"steps": 4, "sleep_at": 2, "sleep_ms": 1500}),
                2 => json!({"steps": 4, "wait_at": 3, "wait_timeout_ms": 60000}),
                3 => {
                    json!({"steps": 3, "fail_at": 2, "fail_kind": "transient", "transient_failures": 2})
                }
                _ => json!({"steps": 4, "fail_at": 3}),
            };
            let waits = n % 5 == 2;
            if let Some(id) = self.start("synthetic_chain", input, &stop).await {
                if waits {
                    let engine = self.engine.clone();
                    tokio::spawn(async move { deliver_go(engine, id).await });
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// One vacant room: book it for a night (a deposit every other time), check the guest in
    /// on that day, check out, and put the room back to Vacant; then the next night.
    async fn lane(self, room: String, stop: CancellationToken) {
        let today = Utc::now().date_naive();
        for k in 1..10_000i64 {
            if stop.is_cancelled() {
                return;
            }
            let day_in = today + Days::days(2 * k + 2);
            let email = format!("chaos.{room}.{k}@example.com");
            let mut booking = json!({
                "idempotency_key": format!("chaos-book-{room}-{k}"),
                "guest_email": email,
                "guest_first_name": "Chaos",
                "guest_last_name": format!("Guest {}", letters(k)),
                "guest_phone": "+15550101234",
                "room_number": room,
                "check_in_date": day_in.to_string(),
                "check_out_date": (day_in + Days::days(1)).to_string(),
                "number_of_guests": 1,
            });
            if k % 2 == 1 {
                booking["payment_method_id"] = json!("pm_card_visa");
            }
            if self.run_saga("create_booking", booking, &stop).await != Some(SagaStatus::Completed)
            {
                continue;
            }
            let mut checked_in = false;
            for attempt in 0..3 {
                let input = json!({
                    "idempotency_key": format!("chaos-in-{room}-{k}-{attempt}"),
                    "guest_email": email,
                    "check_in_date": day_in.to_string(),
                });
                match self.run_saga("check_in_guest", input, &stop).await {
                    Some(SagaStatus::Completed) => {
                        checked_in = true;
                        break;
                    }
                    None => return,
                    _ => {}
                }
            }
            if !checked_in {
                continue;
            }
            if !self.checkout(&email, &format!("{room}-{k}"), &stop).await {
                return; // the room stays occupied: this lane is done
            }
            for attempt in 0..5 {
                let input = json!({
                    "idempotency_key": format!("chaos-clean-{room}-{k}-{attempt}"),
                    "room_number": room,
                    "status": "Vacant",
                    "reason": "cleaned after a chaos stay",
                });
                match self.run_saga("update_room_status", input, &stop).await {
                    Some(SagaStatus::Completed) => break,
                    None => return,
                    _ => {}
                }
            }
        }
    }

    /// Checks the guest out, again with a new key if a checkout is compensated (up to three
    /// times). Returns whether one completed.
    async fn checkout(&self, email: &str, tag: &str, stop: &CancellationToken) -> bool {
        for attempt in 0..3 {
            let input = json!({
                "idempotency_key": format!("chaos-out-{tag}-{attempt}"),
                "guest_email": email,
                "payment_method_id": "pm_card_visa",
            });
            match self.run_saga("process_guest_checkout", input, stop).await {
                Some(SagaStatus::Completed) => return true,
                None => return false,
                _ => {}
            }
        }
        false
    }

    /// Starts a saga and waits until it is terminal. `None` when it could not be started or
    /// the load stopped first.
    async fn run_saga(
        &self,
        skill: &str,
        input: Value,
        stop: &CancellationToken,
    ) -> Option<SagaStatus> {
        let id = self.start(skill, input, stop).await?;
        loop {
            match self.engine.wait(id, Duration::from_secs(2)).await {
                Ok(summary) if summary.status.is_terminal() => return Some(summary.status),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            if stop.is_cancelled() {
                return None;
            }
        }
    }

    /// Starts a saga, retrying while PostgreSQL is away. `None` for input the skill refuses
    /// (a bug of this load, reported) or when the load stopped.
    async fn start(&self, skill: &str, input: Value, stop: &CancellationToken) -> Option<Uuid> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let request = StartRequest {
                skill: skill.to_string(),
                input: input.clone(),
                idempotency_key: input
                    .get("idempotency_key")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                started_by: "chaos".to_string(),
            };
            match self.engine.start(request).await {
                Ok(outcome) => return Some(outcome.saga.id),
                Err(StartError::Store(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => {
                    eprintln!("chaos: {skill} refused its input: {e}");
                    return None;
                }
            }
        }
    }
}

/// Delivers event `go` to a waiting synthetic saga a second after its start, retrying while
/// PostgreSQL is away.
async fn deliver_go(engine: Engine, id: Uuid) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..120 {
        match engine
            .deliver(
                id,
                "go",
                json!({"from": "chaos"}),
                &format!("go-{id}"),
                "chaos",
            )
            .await
        {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    eprintln!("chaos: could not deliver `go` to saga {id}");
}

fn objects<'a>(ledger: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> {
    ledger["objects"][kind]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
}

/// Emails of the guests whose booking is Checked In.
fn guests_in_house(ledger: &Value) -> Vec<String> {
    objects(ledger, "Booking__c")
        .filter(|b| b["Status__c"] == "Checked In")
        .filter_map(|b| {
            let guest = b["Guest__c"].as_str()?;
            objects(ledger, "Contact")
                .find(|c| c["Id"] == guest)
                .and_then(|c| c["Email"].as_str())
                .map(str::to_string)
        })
        .collect()
}

fn vacant_rooms(ledger: &Value) -> Vec<String> {
    objects(ledger, "Hotel_Room__c")
        .filter(|r| r["Status__c"] == "Vacant")
        .filter_map(|r| r["Name"].as_str().map(str::to_string))
        .collect()
}

/// `k` in letters (1 -> `A`, 27 -> `AA`): guest names take no digits.
fn letters(mut k: i64) -> String {
    let mut out = Vec::new();
    while k > 0 {
        k -= 1;
        out.push(b'A' + (k % 26) as u8);
        k /= 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}
