//! Shared by the hotel tests: an engine with every skill over a per-test database, talking
//! over real HTTP to a sandbox started by the test, driven deterministically by a manual clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{
    Engine, JitterSource, ManualClock, PgStore, SagaDetail, SagaStatus, StartError, StartRequest,
    Worker, WorkerConfig,
};
use stepwise_sandbox::{Sandbox, SandboxHandle};
use stepwise_skills::connectors::{ConnectorConfig, Connectors};
use stepwise_skills::hotel::approval::RefundApproval;
use stepwise_skills::hotel::{self, calendar, Hotel};
use uuid::Uuid;

pub struct World {
    pub engine: Engine,
    pub clock: ManualClock,
    pub worker: Worker,
    pub sandbox: SandboxHandle,
    pub http: reqwest::Client,
    pub hotel: Arc<Hotel>,
}

impl World {
    /// A hotel on UTC whose clock starts at [`start_of_today`].
    pub async fn new(pool: PgPool) -> Self {
        Self::in_time_zone(pool, "UTC", start_of_today()).await
    }

    /// A hotel in `time_zone` (an IANA name, as `STEPWISE_HOTEL_TZ` takes it) whose clock
    /// starts at `now`.
    pub async fn in_time_zone(pool: PgPool, time_zone: &str, now: DateTime<Utc>) -> Self {
        Self::build(
            pool,
            time_zone,
            now,
            hotel::DEFAULT_PAYMENT_AUTH_TIMEOUT,
            RefundApproval::default(),
        )
        .await
    }

    /// A hotel on UTC whose checkouts wait `timeout` for a card authentication (what
    /// `STEPWISE_PAYMENT_AUTH_TIMEOUT` sets).
    pub async fn with_payment_auth_timeout(pool: PgPool, timeout: Duration) -> Self {
        Self::build(
            pool,
            "UTC",
            start_of_today(),
            timeout,
            RefundApproval::default(),
        )
        .await
    }

    /// A hotel on UTC whose refunds wait for a manager as `approval` says (what
    /// `STEPWISE_REFUND_APPROVAL_CENTS` and `STEPWISE_REFUND_APPROVAL_TIMEOUT` set).
    pub async fn with_refund_approval(pool: PgPool, approval: RefundApproval) -> Self {
        Self::build(
            pool,
            "UTC",
            start_of_today(),
            hotel::DEFAULT_PAYMENT_AUTH_TIMEOUT,
            approval,
        )
        .await
    }

    async fn build(
        pool: PgPool,
        time_zone: &str,
        now: DateTime<Utc>,
        payment_auth_timeout: Duration,
        approval: RefundApproval,
    ) -> Self {
        let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), 7)
            .await
            .expect("sandbox starts");
        // The legacy housekeeping system answers at once here (its 100-400 ms are for the demo
        // and the throughput run).
        sandbox
            .set_legacy(stepwise_sandbox::legacy::LegacySettings {
                latency_ms: [0, 0],
                ..Default::default()
            })
            .expect("legacy settings");
        let config =
            ConnectorConfig::sandbox(&sandbox.base_url()).with_timeout(Duration::from_secs(3));
        let hotel = Hotel::with_time_zone(
            Connectors::new(&config).expect("connectors"),
            pool.clone(),
            calendar::parse_time_zone(time_zone).expect("a known time zone"),
        )
        .with_payment_auth_timeout(payment_auth_timeout)
        .with_refund_approval(approval);
        let registry = stepwise_skills::registry_with_hotel(&hotel).expect("skills register");
        let clock = ManualClock::new(now);
        let engine = Engine::new(
            PgStore::new(pool),
            Arc::new(registry),
            Arc::new(clock.clone()),
        );
        hotel.sagas.attach(&engine);
        let worker = engine.worker(WorkerConfig {
            worker_id: "hotel-test".into(),
            concurrency: 32,
            lease: Duration::from_secs(30),
            jitter: JitterSource::Fixed(1.0),
            ..WorkerConfig::default()
        });
        Self {
            engine,
            clock,
            worker,
            sandbox,
            http: reqwest::Client::new(),
            hotel,
        }
    }

    pub async fn start(&self, skill: &str, input: Value) -> Result<Uuid, StartError> {
        let key = input
            .get("idempotency_key")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.engine
            .start(StartRequest {
                skill: skill.into(),
                input,
                idempotency_key: key,
                started_by: "staff:frontdesk@dewy.example".into(),
            })
            .await
            .map(|outcome| outcome.saga.id)
    }

    /// Runs every due saga until all of `ids` are terminal, moving the clock past retry
    /// delays between rounds.
    pub async fn settle(&self, ids: &[Uuid]) -> Vec<SagaDetail> {
        for _ in 0..200 {
            self.worker.run_until_idle().await.expect("worker runs");
            let mut details = Vec::new();
            for id in ids {
                details.push(self.engine.detail(*id).await.unwrap().expect("saga exists"));
            }
            if details.iter().all(|d| d.status.is_terminal()) {
                return details;
            }
            self.clock.advance(Duration::from_secs(10));
        }
        panic!("sagas did not settle");
    }

    /// Starts a saga and runs it to the end.
    pub async fn run(&self, skill: &str, input: Value) -> SagaDetail {
        let id = self.start(skill, input).await.expect("saga starts");
        self.settle(&[id]).await.remove(0)
    }

    pub async fn query(&self, name: &str, input: Value) -> Value {
        let query = self
            .engine
            .registry()
            .query(name)
            .expect("query registered");
        query.call(input).await.expect("query answers")
    }

    pub async fn ledger(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/ledger", self.sandbox.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn faults(&self, faults: Value) {
        let response = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox.base_url()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "faults accepted: {faults}");
    }

    pub async fn clear_faults(&self) {
        self.faults(json!({})).await;
    }
}

/// Objects of one type in the ledger.
pub fn objects(ledger: &Value, kind: &str) -> Vec<Value> {
    ledger["objects"][kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The one object of `kind` whose `field` is `value`.
pub fn find(ledger: &Value, kind: &str, field: &str, value: &str) -> Value {
    let found: Vec<Value> = objects(ledger, kind)
        .into_iter()
        .filter(|o| o[field].as_str() == Some(value))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} with {field}={value}: {found:?}");
    found.into_iter().next().unwrap()
}

pub fn room(ledger: &Value, number: &str) -> Value {
    find(ledger, "Hotel_Room__c", "Name", number)
}

pub fn booking(ledger: &Value, number: &str) -> Value {
    find(ledger, "Booking__c", "Name", number)
}

/// The email of a contact id.
pub fn email_of(ledger: &Value, contact_id: &str) -> String {
    find(ledger, "Contact", "Id", contact_id)["Email"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Rooms in `status`, lowest number first.
pub fn rooms_in(ledger: &Value, status: &str) -> Vec<String> {
    let mut rooms: Vec<String> = objects(ledger, "Hotel_Room__c")
        .into_iter()
        .filter(|r| r["Status__c"] == status)
        .map(|r| r["Name"].as_str().unwrap().to_string())
        .collect();
    rooms.sort();
    rooms
}

/// The checked-in stays of the seed: `(guest email, booking number, room number)`.
pub fn checked_in_stays(ledger: &Value) -> Vec<(String, String, String)> {
    objects(ledger, "Booking__c")
        .into_iter()
        .filter(|b| b["Status__c"] == "Checked In")
        .map(|b| {
            let room = find(
                ledger,
                "Hotel_Room__c",
                "Id",
                b["Hotel_Room__c"].as_str().unwrap(),
            );
            (
                email_of(ledger, b["Guest__c"].as_str().unwrap()),
                b["Name"].as_str().unwrap().to_string(),
                room["Name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn status(detail: &SagaDetail) -> SagaStatus {
    detail.status
}

/// Steps whose compensation ran, in the order they ran.
pub fn compensated_steps(detail: &SagaDetail) -> Vec<String> {
    detail
        .events
        .iter()
        .filter(|e| e.kind.to_string() == "compensation_succeeded")
        .filter_map(|e| e.step.clone())
        .collect()
}

pub fn error_code(detail: &SagaDetail) -> String {
    detail
        .error
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Midnight UTC of the wall clock's day: where the UTC worlds' clocks start. A booking arriving
/// [`today`] arms a no-show timer for 18:00 that day (the default cutoff); from a clock started
/// at the wall clock's time, a test run at 17:58 would cross it while its retries move the clock
/// on, and the timer would release the stay's room hold under the test.
pub fn start_of_today() -> DateTime<Utc> {
    today().and_time(chrono::NaiveTime::MIN).and_utc()
}

pub fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

pub fn day(offset: i64) -> String {
    (today() + chrono::Duration::days(offset)).to_string()
}

/// Requests to a path prefix with a given method.
pub fn requests(ledger: &Value, method: &str, path_prefix: &str) -> Vec<Value> {
    ledger["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r["method"] == method && r["path"].as_str().unwrap_or("").starts_with(path_prefix)
        })
        .collect()
}

/// Vacant rooms with no live booking overlapping `[from, to)` (offsets from today), cheapest
/// first.
pub fn free_vacant_rooms(ledger: &Value, from: i64, to: i64) -> Vec<String> {
    let (from, to) = (day(from), day(to));
    let busy: Vec<String> = objects(ledger, "Booking__c")
        .into_iter()
        .filter(|b| b["Status__c"] == "Reserved" || b["Status__c"] == "Checked In")
        .filter(|b| {
            b["Check_In_Date__c"].as_str().unwrap_or("") < to.as_str()
                && b["Check_Out_Date__c"].as_str().unwrap_or("") > from.as_str()
        })
        .map(|b| b["Hotel_Room__c"].as_str().unwrap_or("").to_string())
        .collect();
    let mut rooms: Vec<(i64, String)> = objects(ledger, "Hotel_Room__c")
        .into_iter()
        .filter(|r| r["Status__c"] == "Vacant")
        .filter(|r| !busy.contains(&r["Id"].as_str().unwrap_or("").to_string()))
        .map(|r| {
            let rate = (r["Nightly_Rate__c"].as_f64().unwrap_or(0.0) * 100.0).round() as i64;
            (rate, r["Name"].as_str().unwrap().to_string())
        })
        .collect();
    rooms.sort();
    rooms.into_iter().map(|(_, name)| name).collect()
}

/// A booking input for a new guest.
pub fn booking_input(key: &str, email: &str, room: &str, from: i64, to: i64) -> Value {
    json!({
        "idempotency_key": key,
        "guest_email": email,
        "guest_first_name": "Ada",
        "guest_last_name": "O'Hara",
        "guest_phone": "+15550101234",
        "room_number": room,
        "check_in_date": day(from),
        "check_out_date": day(to),
        "number_of_guests": 2,
    })
}

/// A checkout input for a checked-in guest, paying with `payment_method` (a `pm_...` token).
pub fn checkout_input(key: &str, email: &str, payment_method: &str) -> Value {
    json!({
        "idempotency_key": key,
        "guest_email": email,
        "payment_method_id": payment_method,
    })
}
