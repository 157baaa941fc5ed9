//! The sandbox's whole state (every service's objects, the idempotency store, the request
//! ledger, the fault settings) and the ledger document built from it.

use super::faults::Faults;
use super::legacy::LegacyState;
use super::limits::Limits;
use super::salesforce::SalesforceState;
use super::stripe::StripeState;
use super::twilio::TwilioState;
use super::webhooks::Webhooks;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The state shared by the server's handlers.
pub type SharedState = Arc<Mutex<SandboxState>>;

/// Locks the state; a handler that panicked mid-request cannot leave it unusable for tests.
pub fn lock(state: &SharedState) -> MutexGuard<'_, SandboxState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One of the simulated external systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Stripe,
    Salesforce,
    Twilio,
    /// The legacy SOAP housekeeping system.
    Legacy,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Stripe,
        Service::Salesforce,
        Service::Twilio,
        Service::Legacy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Stripe => "stripe",
            Service::Salesforce => "salesforce",
            Service::Twilio => "twilio",
            Service::Legacy => "legacy",
        }
    }

    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The path prefix the service is mounted under, e.g. `/stripe`.
    pub fn prefix(self) -> &'static str {
        match self {
            Service::Stripe => "/stripe",
            Service::Salesforce => "/salesforce",
            Service::Twilio => "/twilio",
            Service::Legacy => "/legacy",
        }
    }

    /// Which service a request path belongs to, and the path below its prefix.
    pub fn route(path: &str) -> Option<(Service, &str)> {
        Service::ALL.into_iter().find_map(|service| {
            let rest = path.strip_prefix(service.prefix())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((service, rest))
        })
    }
}

/// One request to a service, as the ledger shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub service: Service,
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub replayed: bool,
    /// The status the client was answered (for `reset`, the one whose answer broke off).
    pub status: u16,
    /// The injected fault, if any (`error`, `timeout`, `effect_then_error`,
    /// `effect_then_timeout`, `reset`); the `effect_...` ones and `reset` took effect; `limit`
    /// for a request refused over a limit of `/_sandbox/limits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
}

/// A response kept for an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// Method, path and the sorted request parameters.
    pub fingerprint: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// Everything the sandbox knows.
pub struct SandboxState {
    pub seed: u64,
    /// The UTC date the seed's relative dates were computed from.
    pub today: NaiveDate,
    pub stripe: StripeState,
    pub salesforce: SalesforceState,
    pub twilio: TwilioState,
    /// The legacy housekeeping system's tasks, journal and settings.
    pub legacy: LegacyState,
    /// The services' own limits (`/_sandbox/limits`) and the breaches counted.
    pub limits: Limits,
    pub idempotency: HashMap<(Service, String), StoredResponse>,
    pub requests: Vec<RequestRecord>,
    pub faults: Faults,
    /// The webhook endpoint, the events sent to it, and the queue to the sending task.
    pub webhooks: Webhooks,
}

impl SandboxState {
    /// A fresh state seeded with `seed`, dated relative to today's UTC date.
    pub fn new(seed: u64) -> Self {
        Self::at(seed, Utc::now().date_naive())
    }

    /// A fresh state seeded with `seed`, dated relative to `today`.
    pub fn at(seed: u64, today: NaiveDate) -> Self {
        let mut state = Self {
            seed,
            today,
            stripe: StripeState::new(seed),
            salesforce: SalesforceState::default(),
            twilio: TwilioState::new(seed),
            legacy: LegacyState::new(seed),
            limits: Limits::default(),
            idempotency: HashMap::new(),
            requests: Vec::new(),
            faults: Faults::new(seed),
            webhooks: Webhooks::new(seed),
        };
        if let Err(e) = super::seed::populate(&mut state) {
            // The seed is static data checked by unit tests; this cannot happen in a release.
            tracing::error!(error = ?e, "the sandbox seed is invalid");
        }
        state
    }

    /// Back to the seed (re-dated to today): objects, idempotency keys, ledger and faults.
    /// The webhook endpoint stays configured (it is wiring, not data); the events sent are
    /// forgotten.
    pub fn reset(&mut self) {
        let old = std::mem::replace(self, Self::new(self.seed));
        old.webhooks.carry_wiring_into(&mut self.webhooks);
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    pub fn record(&mut self, record: RequestRecord) {
        self.requests.push(record);
    }

    /// The ledger document of `GET /_sandbox/ledger`.
    pub fn ledger(&self) -> Value {
        let mut objects = Map::new();
        for (name, list) in self.salesforce.ledger_objects() {
            objects.insert(name.to_string(), Value::Array(list));
        }
        objects.insert(
            "customer".into(),
            Value::Array(self.stripe.customers_json()),
        );
        objects.insert(
            "payment_intent".into(),
            Value::Array(self.stripe.payment_intents_json()),
        );
        objects.insert("refund".into(), Value::Array(self.stripe.refunds_json()));
        objects.insert("message".into(), Value::Array(self.twilio.messages_json()));
        objects.insert(
            "legacy_tasks".into(),
            Value::Array(self.legacy.tasks_json()),
        );
        json!({
            "objects": objects,
            "requests": self.requests,
            "limit_breaches": self.limits.breaches_json(),
            "webhooks": self.webhooks.records(),
        })
    }
}

/// Deterministic pseudo-random numbers (splitmix64), so ids and fault draws repeat per seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `len` characters drawn from `alphabet`.
    pub fn chars(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[(self.next_u64() % alphabet.len() as u64) as usize]))
            .collect()
    }
}

pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const HEX: &[u8] = b"0123456789abcdef";

/// `n` in base 62, left-padded to `width` (so ids sort in creation order).
pub fn base62(mut n: u64, width: usize) -> String {
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

/// Ids like Stripe's and Twilio's: a prefix, a creation counter, and seeded random characters.
#[derive(Debug, Clone)]
pub struct IdMaker {
    rng: SplitMix,
    counter: u64,
}

impl IdMaker {
    pub fn new(seed: u64, salt: u64) -> Self {
        Self {
            rng: SplitMix::new(seed.wrapping_mul(31).wrapping_add(salt)),
            counter: 0,
        }
    }

    /// e.g. `pi_` + 24 characters.
    pub fn stripe(&mut self, prefix: &str, len: usize) -> String {
        self.counter += 1;
        let head = base62(self.counter, 6);
        let tail = self.rng.chars(BASE62, len.saturating_sub(6));
        format!("{prefix}{head}{tail}")
    }

    /// e.g. `SM` + 32 hex digits.
    pub fn hex(&mut self, prefix: &str, len: usize) -> String {
        self.counter += 1;
        let head = format!("{:08x}", self.counter);
        let tail = self.rng.chars(HEX, len.saturating_sub(8));
        format!("{prefix}{head}{tail}")
    }
}

/// Seconds since the epoch, as Stripe's `created`.
pub fn unix(at: DateTime<Utc>) -> i64 {
    at.timestamp()
}
