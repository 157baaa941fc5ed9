//! Stripe-style webhooks: the payment intent events the Stripe service emits are posted to a
//! configured endpoint, signed the way Stripe signs them, and retried with backoff until the
//! endpoint answers 2xx or the attempts run out.
//!
//! Signature (as Stripe's `Stripe-Signature` header): `t=<unix seconds>,v1=<hex>` where the
//! hex is HMAC-SHA256, keyed with the whole endpoint secret (`whsec_...`), of
//! `"<t>.<raw body>"`. Every attempt is signed anew with its own timestamp, so a retry is not
//! refused as stale by a receiver's timestamp tolerance.
//!
//! Retries: up to [`MAX_ATTEMPTS`] attempts per event, the first at once, then after
//! [`FIRST_BACKOFF`] doubling each time (0.2 s, 0.4 s, 0.8 s, 1.6 s, 3.2 s: about 6 s in all,
//! where Stripe spreads its retries over three days). A connection failure, a timeout
//! ([`ATTEMPT_TIMEOUT`]) or any status outside 2xx counts as a failed attempt. Events are sent
//! independently of each other (like Stripe, no ordering is promised).

use super::state::{lock, IdMaker, SandboxState, SharedState};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;

/// Attempts per event, the first included.
pub const MAX_ATTEMPTS: u32 = 6;
/// The pause after the first failed attempt; it doubles after each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long one attempt may take before it counts as failed.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `api_version` the events claim (the shape they follow).
pub const API_VERSION: &str = "2024-06-20";

/// Where events go and the secret that signs them (`POST /_sandbox/webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
}

impl WebhookConfig {
    /// Checks the settings: an http(s) URL and a non-empty secret.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "webhook url must start with http:// or https://, not {:?}",
                self.url
            ));
        }
        if self.secret.trim().is_empty() {
            return Err("webhook secret must not be empty (Stripe's start with whsec_)".into());
        }
        Ok(())
    }
}

/// One event to post.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub index: usize,
    pub body: Vec<u8>,
    pub config: WebhookConfig,
}

/// What the ledger shows of a sent event.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub payment_intent: Option<String>,
    pub url: String,
    pub attempts: u32,
    /// The HTTP status of the last attempt (null: no answer).
    pub last_status: Option<u16>,
    pub delivered: bool,
}

/// The webhook settings, the events sent, and the queue to the sending task.
#[derive(Debug)]
pub struct Webhooks {
    config: Option<WebhookConfig>,
    ids: IdMaker,
    records: Vec<WebhookRecord>,
    queue: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl Webhooks {
    pub fn new(seed: u64) -> Self {
        Self {
            config: None,
            ids: IdMaker::new(seed, 9),
            records: Vec::new(),
            queue: None,
        }
    }

    pub fn config(&self) -> Option<&WebhookConfig> {
        self.config.as_ref()
    }

    pub fn set(&mut self, config: Option<WebhookConfig>) {
        self.config = config;
    }

    pub fn records(&self) -> &[WebhookRecord] {
        &self.records
    }

    /// Keeps the wiring (settings and queue) of `self` in `fresh`, for a reset.
    pub(crate) fn carry_wiring_into(self, fresh: &mut Webhooks) {
        fresh.config = self.config;
        fresh.queue = self.queue;
    }

    pub(crate) fn attach(&mut self, queue: mpsc::UnboundedSender<Outgoing>) {
        self.queue = Some(queue);
    }

    /// Turns emitted `(type, payment intent)` pairs into events and queues them, when an
    /// endpoint is configured (without one, Stripe sends nothing either).
    pub(crate) fn emit(&mut self, emitted: Vec<(&'static str, Value)>, created: i64) {
        let (Some(config), Some(queue)) = (&self.config, &self.queue) else {
            return;
        };
        for (kind, object) in emitted {
            let id = self.ids.stripe("evt_", 24);
            let event = json!({
                "id": id,
                "object": "event",
                "api_version": API_VERSION,
                "created": created,
                "data": {"object": object},
                "livemode": false,
                "pending_webhooks": 1,
                "request": {"id": null, "idempotency_key": null},
                "type": kind,
            });
            let index = self.records.len();
            self.records.push(WebhookRecord {
                id,
                kind: kind.to_string(),
                payment_intent: object.get("id").and_then(Value::as_str).map(str::to_string),
                url: config.url.clone(),
                attempts: 0,
                last_status: None,
                delivered: false,
            });
            let outgoing = Outgoing {
                index,
                body: serde_json::to_vec(&event).unwrap_or_default(),
                config: config.clone(),
            };
            if queue.send(outgoing).is_err() {
                tracing::warn!("sandbox webhook sender is gone; event not sent");
            }
        }
    }
}

/// The `Stripe-Signature` header value for `body` at unix time `t`.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Wires the sending task to `state`: events queued from now on are posted by a task that
/// ends when the state is dropped.
pub(crate) fn spawn_sender(state: &SharedState) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    lock(state).webhooks.attach(tx);
    let weak = std::sync::Arc::downgrade(state);
    tokio::spawn(async move {
        let http = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "sandbox webhooks: cannot build an HTTP client");
                return;
            }
        };
        // The queue's sender lives in the state, so this ends when the state is dropped.
        while let Some(outgoing) = rx.recv().await {
            tokio::spawn(deliver(http.clone(), weak.clone(), outgoing));
        }
    });
}

async fn deliver(
    http: reqwest::Client,
    state: Weak<std::sync::Mutex<SandboxState>>,
    outgoing: Outgoing,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        let t = chrono::Utc::now().timestamp();
        let signature = signature_header(&outgoing.config.secret, t, &outgoing.body);
        let answer = http
            .post(&outgoing.config.url)
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", signature)
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .body(outgoing.body.clone())
            .send()
            .await;
        let status = match &answer {
            Ok(response) => Some(response.status().as_u16()),
            Err(e) => {
                tracing::debug!(error = %e, url = %outgoing.config.url, "sandbox webhook attempt failed");
                None
            }
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let Some(shared) = state.upgrade() else {
            return;
        };
        {
            let mut state = lock(&shared);
            if let Some(record) = state.webhooks.records.get_mut(outgoing.index) {
                record.attempts = attempt;
                record.last_status = status;
                record.delivered = delivered;
            }
        }
        drop(shared);
        if delivered {
            return;
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(
        url = %outgoing.config.url,
        attempts = MAX_ATTEMPTS,
        "sandbox webhook not delivered: the endpoint never answered 2xx"
    );
}

/// Queues the events the Stripe service emitted during a request.
pub(crate) fn flush(state: &mut SandboxState) {
    let emitted = state.stripe.take_emitted();
    if emitted.is_empty() {
        return;
    }
    let created = super::state::unix(state.now());
    state.webhooks.emit(emitted, created);
}
