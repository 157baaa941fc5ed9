//! Stepwise sandbox: an in-memory stand-in for the Dewy Resort's external systems, served over
//! real HTTP so every test and the demo cross a network boundary like production does.
//!
//! # What it emulates
//! One HTTP server plays three services under three path prefixes:
//! - the payment provider, Stripe-style (`/stripe/v1`: customers, payment intents with test
//!   cards, refunds, `Idempotency-Key` replay);
//! - the CRM / property system, Salesforce-style (`/salesforce/services/data/v60.0`: the hotel's
//!   sObjects with their validation rules, and a real SOQL parser);
//! - the SMS gateway, Twilio-style (`/twilio/2010-04-01`: messages, magic test numbers);
//! - the legacy housekeeping and maintenance system (`/legacy/housekeeping`: SOAP 1.1 with
//!   WS-Security, ISO-8859-1, its own codes and faults, sequence numbers, slow answers;
//!   [`legacy`]).
//!
//! It follows each API's own conventions (auth headers, form or JSON bodies, error shapes, ids)
//! closely enough that the skills' connectors work unchanged against the real services given a
//! base URL and credentials (see "Pointing the connectors at real services" in docs/skills.md).
//! It also serves test endpoints under `/_sandbox`: a ledger of every object and request (for
//! exactly-once assertions), seeded fault injection, a 3-D Secure switch, and a reset. Everything
//! lives in memory behind one mutex; each request runs atomically. The data is seeded like the
//! Dewy Resort sample, dated relative to today, and a seed number makes ids and history repeat.
//!
//! This crate depends on no other Stepwise crate: the skills reach it only over HTTP.
//!
//! # How it is used
//! - `stepwise sandbox [--addr 127.0.0.1:8787] [--seed N]` serves it until SIGTERM/Ctrl-C.
//! - `stepwise demo` and `stepwise mcp` start one in-process when no external service is
//!   configured (README, Configuration).
//! - Tests start their own on a free port with [`Sandbox::start`] (port 0), point the
//!   connectors at [`SandboxHandle::base_url`], run skills, then read `GET /_sandbox/ledger` (or
//!   [`SandboxHandle::state`] in process) to assert what happened exactly once, and
//!   `POST /_sandbox/faults` to make the services fail or hang. Each test owns its sandbox, so
//!   tests run in parallel without sharing state. This crate's own HTTP tests are in
//!   `sandbox/tests/`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stepwise_sandbox::SandboxError> {
//! use stepwise_sandbox::Sandbox;
//! let sandbox = Sandbox::start("127.0.0.1:0".parse().expect("addr"), 7).await?;
//! let base = sandbox.base_url(); // e.g. http://127.0.0.1:41234, no trailing slash
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The rest of this page is the reference of every endpoint.
//!
//! # Stripe: `/stripe/v1`
//! Auth `Authorization: Bearer sk_test_...` (any `sk_test_` key; also Basic with the key as
//! user); otherwise 401. Bodies are form-encoded (`metadata[key]=value`); unknown parameters are
//! refused (`parameter_unknown`). Errors: `{"error":{"type","code","message","param"}}`.
//! - `POST /customers` (email, name, phone, description, metadata), `GET /customers/{id}`,
//!   `POST /customers/{id}` (update), `GET /customers?email=X&limit=N` (a list object),
//!   `GET /customers/search?query=email:'X'` (also `name`, `phone`, `metadata['k']`, joined by
//!   `AND` or `OR`; `\'` escapes; case-insensitive exact match).
//! - `GET /payment_intents/search?query=metadata['idempotency_key']:'X'` (also `customer`,
//!   `status`, `currency`; exact match; newest first; a `search_result` list): how a client
//!   finds the intent a request of its own created when the answer was lost.
//! - `POST /payment_intents` (amount >= 50 cents, currency, customer, payment_method,
//!   confirm, description, metadata, automatic_payment_methods[...]),
//!   `POST /payment_intents/{id}/confirm` (optional payment_method),
//!   `POST /payment_intents/{id}/cancel`, `GET /payment_intents/{id}`. Intents also carry
//!   `amount_refunded`.
//! - `POST /refunds` (payment_intent or charge, optional amount <= what is left, reason,
//!   metadata) -> a refund `{"id":"re_...","status":"succeeded",...}`; more than what is left
//!   -> 400 `amount_too_large`, nothing left -> 400 `charge_already_refunded`; `GET /refunds/{id}`.
//! - Test payment methods: `pm_card_visa` / `pm_card_mastercard` / `pm_card_amex` succeed
//!   (`succeeded`, `latest_charge` `ch_...`); `pm_card_chargeDeclined` -> 402 `card_error`
//!   `card_declined`/`generic_decline` with the intent (now `requires_payment_method`) in
//!   `error.payment_intent`; `pm_card_chargeDeclinedInsufficientFunds`,
//!   `pm_card_chargeDeclinedExpiredCard` decline likewise; `pm_card_authenticationRequired`
//!   and `pm_card_threeDSecure2Required` -> 200 with status `requires_action` and
//!   `next_action` `{"type":"redirect_to_url","redirect_to_url":{"url","return_url"}}`, the
//!   URL being this sandbox's challenge page `/_sandbox/3ds/{id}` (below). Any other
//!   `pm_...` -> 400 `resource_missing`.
//! - `Idempotency-Key` on any POST: the same key with the same method, path and parameters
//!   replays the first response byte for byte with `Idempotent-Replayed: true` and no new
//!   effect; with other parameters -> 400 `idempotency_error`. Like Stripe, only results of
//!   requests that ran are kept (2xx and 402 declines), not validation errors or 5xx.
//!   Keys are 1 to 255 characters (400 otherwise). Concurrent requests with one key are
//!   serialized: exactly one runs, the others replay it.
//!
//! # Salesforce: `/salesforce/services/data/v60.0`
//! Auth `Authorization: Bearer <anything non-empty>`, else 401
//! `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`. Errors are
//! arrays `[{"message","errorCode","fields"}]`.
//! - `POST /sobjects/{Type}` (JSON) -> 201 `{"id","success":true,"errors":[]}`;
//!   `GET /sobjects/{Type}/{Id}` (optional `?fields=A,B`) -> the record with
//!   `attributes {type,url}` and every field (null when unset), 404 `NOT_FOUND`;
//!   `PATCH /sobjects/{Type}/{Id}` -> 204; `DELETE` -> 204;
//!   `PATCH /sobjects/{Type}/{ExternalIdField}/{value}` upserts: 201 `{"created":true}` or 200
//!   `{"created":false}` after updating; `GET` on the same path retrieves by external id;
//!   `GET /sobjects/{Type}/describe`; `GET /query?q=SOQL` -> `{"totalSize","done":true,"records"}`.
//! - Objects ([`salesforce::schema`]): `Contact` (003), `Hotel_Room__c` (a02, `Name` = room
//!   number), `Booking__c` (a01, `Name` auto-numbered `BK-000001`, `Total_Nights__c` computed),
//!   `Opportunity` (006), `Case` (500, `CaseNumber` auto `00001001`), `Payment_Transaction__c`
//!   (a03), `SMS_Notification__c` (a04), `Case_Note__c` (a05, a note on a case), `Stay_Segment__c` (a06, nights a booking spent in a
//!   room it has since left, at the rate that held then). Ids are 18 characters with Salesforce's checksum
//!   suffix (15-character forms are accepted). Every record has `CreatedDate` and
//!   `LastModifiedDate`.
//! - Validation: unknown field -> `INVALID_FIELD`; read-only field written ->
//!   `INVALID_FIELD_FOR_INSERT_UPDATE`; restricted picklist -> `INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST`;
//!   missing required -> `REQUIRED_FIELD_MISSING`; a second record with a unique external id
//!   (`Unique_Email__c`, `External_ID__c`; compared exactly) -> `DUPLICATE_VALUE`; bad email ->
//!   `INVALID_EMAIL_ADDRESS`; lookups must name an existing record of the right object
//!   (`MALFORMED_ID`, `FIELD_INTEGRITY_EXCEPTION`, `INVALID_CROSS_REFERENCE_KEY`); a booking's
//!   check-out must follow its check-in (`FIELD_CUSTOM_VALIDATION_EXCEPTION`). Picklist
//!   defaults are applied on create. Deletes do not cascade.
//! - SOQL ([`soql`], a real tokenizer and parser): `SELECT f, ... | COUNT() FROM Obj
//!   [WHERE ...] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]`;
//!   conditions `= != <> < <= > >= LIKE IN NOT IN`, `AND`/`OR` (mixing needs parentheses, as in
//!   SOQL), `NOT`, parentheses; literals `'strings'` with `\'` `\\` escapes, numbers, unquoted
//!   dates `YYYY-MM-DD`, datetimes, `TODAY`/`YESTERDAY`/`TOMORROW`, `null`, `true`/`false`.
//!   Fields are checked against the object (`INVALID_FIELD`; no relationship paths), literal
//!   types against field types (`INVALID_QUERY_FILTER_OPERATOR`, e.g. a quoted date), unknown
//!   objects give `INVALID_TYPE`, anything else `MALFORMED_QUERY`. Text compares
//!   case-insensitively like Salesforce. Values are literals, never spliced: a quote inside a
//!   properly escaped value cannot widen a query.
//!
//! # Twilio: `/twilio/2010-04-01/Accounts/{AccountSid}/Messages.json`
//! Basic auth `AccountSid:AuthToken` (SID starting `AC` and equal to the path's; any non-empty
//! token), else 401 `{"code":20003,...}`. `POST` form `To`, `From` (or `MessagingServiceSid`
//! `MG...`), `Body` -> 201 `{"sid":"SM...","status":"queued",...}`; an invalid (non-E.164) `To`
//! -> 400 `{"code":21211,...}`, and Twilio's magic test numbers `+1500555000x` fail as Twilio's
//! test credentials do. `GET .../Messages/{sid}.json` shows the message `delivered`.
//! Sandbox extension: the header `I-Twilio-Idempotency-Token` has Stripe's `Idempotency-Key`
//! semantics (replay with `Idempotent-Replayed: true`, 400 on other parameters).
//!
//! # Legacy housekeeping: `/legacy/housekeeping`
//! SOAP 1.1; the WSDL at `GET /legacy/housekeeping?wsdl`. See [`legacy`] for the operations,
//! codes, faults and the sequence-number journal. Its tasks are in the ledger under
//! `objects.legacy_tasks`. `GET`/`POST /_sandbox/legacy` ([`legacy::LegacySettings`]):
//! `{"latency_ms":[100,400],"try_again_next":0,"busy_next":0,"busy_retry_after_s":1}`.
//! Fault injection applies to it like to the others (`"services":["legacy"]`): an injected
//! error is the fault `HK-999`, a timeout a proxy's 504 page.
//!
//! # Limits: `/_sandbox/limits`
//! `POST {"salesforce":{"per_second":N},"stripe":{"per_second":N},"twilio":{"per_second":N},
//! "legacy":{"sessions":N}}` ([`limits::LimitConfig`]; `{}` lifts them, `GET` shows them): a
//! REST request over its service's rate (a token bucket holding one second's worth) is answered
//! 429 with `Retry-After` in the service's error shape (Salesforce `REQUEST_LIMIT_EXCEEDED`,
//! Stripe `rate_limit`, Twilio 20429); a legacy request beyond N concurrent sessions gets the
//! SOAP Fault `HK-429` with `RetryAfter`. Such a request has no effect, is in the ledger's
//! `requests` with `"fault":"limit"`, and is counted in `limit_breaches` per service
//! (`{"salesforce":0,"stripe":0,"twilio":0,"legacy":0}`, top level of the ledger).
//!
//! # Test endpoints: `/_sandbox`
//! - `GET /_sandbox/health` -> 200.
//! - `GET /_sandbox/ledger` -> `{"objects":{TYPE:[...]}, "requests":[...]}`: TYPE is each
//!   sObject name (records as `GET` returns them) and `customer`, `payment_intent`, `refund`,
//!   `message`; requests are every service request in order, with `service`, `method`, `path`,
//!   `idempotency_key`, `replayed`, `status` and, for a faulted one, `fault`.
//! - `POST /_sandbox/faults` ([`faults::FaultConfig`]) `{"error_rate":0.1,"timeout_rate":0.02,
//!   "effect_then_error_rate":0.05,"effect_then_timeout_rate":0.02,"reset_rate":0.02,
//!   "latency_ms":20,"services":["stripe"],"path_prefix":"/stripe/v1/refunds","method":"POST",
//!   "max_faults":3,"seed":N,"timeout_ms":10000}`: a matching request (service listed, or all
//!   when `services` is empty; path starting with `path_prefix` if given; HTTP method equal to
//!   `method`, any case, if given) is delayed by `latency_ms`, then drawn:
//!   - `error_rate`: answered 500 in the service's error shape, WITHOUT any effect;
//!   - `timeout_rate`: held `timeout_ms` (default 10 s) and answered 504, WITHOUT any effect;
//!   - `effect_then_error_rate`: the request is applied (its idempotent result kept, so a retry
//!     with the key replays it), then answered 500 instead of its result;
//!   - `effect_then_timeout_rate`: applied, then held `timeout_ms` and answered 504;
//!   - `reset_rate`: applied, then the status line, the headers (with the full
//!     `Content-Length`) and half the body are sent and the connection is dropped (a 204 is
//!     sent as a 200 promising one byte).
//!
//!   The rates together are at most 1. `max_faults` stops injecting after that many faults
//!   (latency goes on); setting the faults again restarts the count. The ledger's record of a
//!   faulted request has `fault` (`error`, `timeout`, `effect_then_error`,
//!   `effect_then_timeout`, `reset`) and the status the client was answered. Draws are seeded
//!   (`seed`, default the sandbox seed), so a run repeats. `{}` clears the faults; `GET` shows
//!   the current settings.
//! - `POST /_sandbox/3ds/{id}?outcome=succeed|fail` (or the body `{"outcome":...}`; default
//!   `succeed`) plays the guest completing (or failing) the 3-D Secure challenge of an intent
//!   in `requires_action`: it becomes `succeeded`, or `requires_payment_method` with
//!   `last_payment_error.code` `payment_intent_authentication_failure`, and its webhook event
//!   is sent. 400 if the intent is not in `requires_action`, 404 if unknown. `GET` on the same
//!   path is the page a browser sent to `next_action.redirect_to_url.url` sees (two buttons).
//!   `POST /_sandbox/stripe/payment_intents/{id}/authenticate` `{"outcome":...}` does the same.
//!   Not service requests, so not in the ledger's `requests`.
//! - `POST /_sandbox/webhooks {"url":"http://host/webhooks/stripe","secret":"whsec_..."}` makes
//!   the Stripe service send its events to `url` like Stripe does: `payment_intent.succeeded`,
//!   `payment_intent.payment_failed` (a decline or a failed authentication),
//!   `payment_intent.requires_action` and `payment_intent.canceled`, each an event object
//!   `{"id":"evt_...","object":"event","type","created","data":{"object":<the intent>},...}`
//!   posted as JSON with the header `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
//!   "<t>.<body>" keyed with the secret>`. A non-2xx answer (or none within 5 s) is retried:
//!   6 attempts in all, 0.2 s after the first failure, doubling ([`webhooks`]). `{}` stops
//!   sending; `GET` shows the URL and the retry settings (never the secret). The ledger lists
//!   every event sent under `"webhooks"`: `{"id","type","payment_intent","url","attempts",
//!   "last_status","delivered"}`. `stepwise sandbox --webhook-url URL --webhook-secret SECRET`
//!   sets it at start; a reset keeps it.
//! - `POST /_sandbox/reset` restores the seed (re-dated to today), clears the ledger, the
//!   idempotency keys and the faults (the webhook endpoint stays set).
//!
//! # Seed ([`seed`])
//! Like the Dewy Resort sample, dated relative to today's UTC date: 22 rooms on floors 1-4
//! (101-106, 201-206, 301-305, 401-405), Occupied 9, Vacant 8, Cleaning 2 (106, 302),
//! Maintenance 2 (205, 404), Out of Service 1 (305); Standard 129.00, Deluxe 189.00,
//! Suite 289.00, Penthouse 489.00. 12 guests, the manager `manager@dewy.example` and the front
//! desk `frontdesk@dewy.example` (both `Contact_Type__c` Manager), 11 vendors with
//! `Vendor_Specialty__c`; 20 bookings each with an Opportunity; 4 cases. Guests
//! ([`seed::SEEDED_GUESTS`], [`seed::BOOKINGS`]):
//!
//! | guest | state | room |
//! |---|---|---|
//! | emma.johnson@example.com | checked in 3 nights ago, checks out **today** (checkout demo, 387.00) | 104 Standard |
//! | liam.smith@example.com | checked in, out in 2 days; room free after (extend_stay fits) | 105 Deluxe |
//! | isabella.thomas@example.com | checked in, out tomorrow; room reserved from tomorrow (extension conflicts) | 101 Standard |
//! | olivia.brown, noah.garcia, ava.martinez, ethan.davis, sophia.wilson, mason.anderson | checked in | 203, 206, 301, 303, 401, 403 |
//! | ethan.davis, noah.garcia (also) | Reserved +14 -> +17 and +21 -> +23, rooms Vacant today | 304 Suite, 405 Penthouse |
//! | james.taylor@example.com | Reserved **today** -> +2, room Vacant (check-in demo) | 102 Standard |
//! | mia.moore@example.com | Reserved **today** -> +3, room still Cleaning (check-in refused until Vacant) | 302 Deluxe |
//! | lucas.jackson@example.com | Reserved tomorrow -> +4 (room 101) and +7 -> +10 (room 402) | — |
//!
//! History: Checked Out stays for lucas, emma and noah, a Cancelled one for mia and a No Show
//! for ava. Every checked-in booking's room is Occupied with `Current_Guest__c` set. The seed
//! number changes only loyalty numbers, how far back the history lies (0-4 days) and the
//! random part of Stripe/Twilio ids; the same seed gives the same ids.

pub mod faults;
pub mod legacy;
pub mod limits;
pub mod salesforce;
pub mod seed;
mod server;
pub mod soql;
pub mod state;
pub mod stripe;
pub mod twilio;
pub mod webhooks;

pub use server::router;
pub use state::{SandboxState, SharedState};
pub use webhooks::WebhookConfig;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util_free::Cancel;

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts sandboxes.
pub struct Sandbox;

impl Sandbox {
    /// Binds `addr` (port 0 picks a free port) and serves the sandbox, seeded with `seed`, on a
    /// tokio task until [`SandboxHandle::shutdown`] or until the handle is dropped.
    pub async fn start(addr: SocketAddr, seed: u64) -> Result<SandboxHandle, SandboxError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let state: SharedState = Arc::new(Mutex::new(SandboxState::new(seed)));
        webhooks::spawn_sender(&state);
        let app = router(state.clone());
        let cancel = Cancel::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "sandbox server stopped with an error");
            }
        });
        tracing::debug!(addr = %local, seed, "sandbox listening");
        Ok(SandboxHandle {
            addr: local,
            state,
            cancel,
            task: Some(task),
        })
    }
}

/// A running sandbox. Dropping it stops the server (abruptly); [`SandboxHandle::shutdown`]
/// stops it gracefully.
pub struct SandboxHandle {
    addr: SocketAddr,
    state: SharedState,
    cancel: Cancel,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live state (for in-process inspection; the HTTP ledger shows the same).
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Sends the Stripe service's events to `config`'s URL from now on (None stops sending),
    /// as `POST /_sandbox/webhooks` does.
    pub fn set_webhooks(&self, config: Option<WebhookConfig>) -> Result<(), String> {
        if let Some(config) = &config {
            config.validate()?;
        }
        state::lock(&self.state).webhooks.set(config);
        Ok(())
    }

    /// Changes how the legacy system behaves (latency, "try again" answers), as
    /// `POST /_sandbox/legacy` does.
    pub fn set_legacy(&self, settings: legacy::LegacySettings) -> Result<(), String> {
        settings.validate()?;
        state::lock(&self.state).legacy.settings = settings;
        Ok(())
    }

    /// Sets the services' own limits, as `POST /_sandbox/limits` does.
    pub fn set_limits(&self, config: limits::LimitConfig) -> Result<(), String> {
        state::lock(&self.state).limits.set(config)
    }

    /// Stops accepting connections, lets in-flight requests finish for up to one second, then
    /// stops the server.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A tiny cancellation flag (this crate does not depend on tokio-util).
mod tokio_util_free {
    use std::sync::Arc;
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Cancel(Arc<watch::Sender<bool>>);

    impl Cancel {
        pub fn new() -> Self {
            Self(Arc::new(watch::channel(false).0))
        }

        pub fn cancel(&self) {
            self.0.send_replace(true);
        }

        pub async fn cancelled(&self) {
            let mut rx = self.0.subscribe();
            // An error means the sender is gone, which only happens once every clone dropped.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}
