//! Durable waits: a step's action waits for a named event or for a time.
//!
//! A step declares the events it may await, each with the JSON Schema of its payload
//! ([`Step::awaits`](crate::Step::awaits)), so a delivery is checked against the saga's skill
//! version before the saga reaches the wait. Inside the action:
//!
//! ```ignore
//! let payload = ctx.await_event("go", Wait::within(Duration::from_secs(60)).prompt("Say go"))?;
//! ctx.sleep(Duration::from_secs(5))?;
//! ```
//!
//! `await_event` returns the payload when an event of that name was delivered (oldest first,
//! one per wait; `await_delivery` returns it with the delivery's actor and key); otherwise it returns an error that suspends the step: pass it on with `?`.
//! Suspension is not a failure and costs no retry: the saga becomes `waiting` (no lease,
//! `wake_at` = the deadline), and when an event is delivered, the deadline passes or the sleep is
//! over, a worker claims it and runs the same attempt of the action again, from the top; this
//! time the wait returns. So the code before a wait must be safe to run again, as every step's
//! code is. A wait's deadline (and a sleep's end) is fixed the first time the action reaches
//! it and persisted with the step, so running again never moves it. At the deadline the wait
//! returns its default payload if it has one, else the permanent error `wait_timed_out`
//! (the saga compensates).

use crate::error::StepError;
use crate::model::EventKind;
use crate::store::{NewEvent, StoredDelivery};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The code of the error that suspends a step (never stored, never shown).
pub(crate) const SUSPENDED: &str = "suspended";

/// When a wait ends if its event does not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    At(DateTime<Utc>),
    After(Duration),
}

/// How to wait for an event: the deadline, a prompt for the humans who may answer, where they
/// answer (a URL, such as a 3-D Secure page), who may answer, and an optional payload to go on
/// with when the deadline passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    deadline: Deadline,
    prompt: Option<String>,
    url: Option<String>,
    answered_by: Vec<String>,
    default_payload: Option<Value>,
}

impl Wait {
    /// Waits until `deadline` (by the engine's clock).
    pub fn until(deadline: DateTime<Utc>) -> Self {
        Self::new(Deadline::At(deadline))
    }

    /// Waits at most `timeout` from the moment the action first reaches the wait.
    pub fn within(timeout: Duration) -> Self {
        Self::new(Deadline::After(timeout))
    }

    fn new(deadline: Deadline) -> Self {
        Self {
            deadline,
            prompt: None,
            url: None,
            answered_by: Vec::new(),
            default_payload: None,
        }
    }

    /// What to tell whoever may deliver the event (shown in `sagas show` as `prompt`).
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = Some(prompt.into());
        self
    }

    /// Where the answer is given outside the agent's conversation (a payment authentication
    /// page, say): shown as `url` in `waiting_for`, and offered to MCP clients as a URL
    /// elicitation rather than a form.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The roles whose members may deliver the event (shown as `roles` in `waiting_for`). Empty,
    /// the default, means the party who started the saga (and operators). The engine records the
    /// roles; front ends that know who is asking (the MCP facade) enforce them.
    pub fn answered_by<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.answered_by = roles.into_iter().map(Into::into).collect();
        self
    }

    /// At the deadline, go on with this payload instead of failing with `wait_timed_out`.
    pub fn default_payload(mut self, payload: Option<Value>) -> Self {
        self.default_payload = payload;
        self
    }
}

/// What the driver must do after an attempt that suspended.
#[derive(Debug, Clone)]
pub(crate) struct Suspension {
    pub wake_at: DateTime<Utc>,
    /// The saga's `waiting_for`.
    pub waiting_for: Value,
    /// `wait_started` or `sleep_started`, with its detail.
    pub event: NewEvent,
    /// Whether it waits for an event (a sleep does not).
    pub event_name: Option<String>,
}

/// One attempt's view of its step's waits, shared between the action's context and the driver.
#[derive(Debug, Default)]
pub(crate) struct WaitBook {
    inner: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    now: Option<DateTime<Utc>>,
    step: String,
    attempt: i32,
    /// The step's declared events and their payload schemas.
    declared: BTreeMap<String, Value>,
    /// Unconsumed deliveries of this saga, oldest first, when loaded.
    deliveries: Option<Vec<StoredDelivery>>,
    /// Deliveries this attempt took (ids), in order.
    taken: Vec<i64>,
    /// Deadlines persisted with the step, plus the ones this attempt fixed.
    deadlines: BTreeMap<String, DateTime<Utc>>,
    /// How many event waits (by name) and sleeps this attempt reached.
    counters: BTreeMap<String, usize>,
    /// History rows for what happened (consumed, timed out, sleep over).
    events: Vec<NewEvent>,
    suspension: Option<Suspension>,
}

impl WaitBook {
    pub(crate) fn new(
        step: &str,
        attempt: i32,
        now: DateTime<Utc>,
        declared: BTreeMap<String, Value>,
        deadlines: BTreeMap<String, DateTime<Utc>>,
        deliveries: Option<Vec<StoredDelivery>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(BookState {
                now: Some(now),
                step: step.to_string(),
                attempt,
                declared,
                deliveries,
                deadlines,
                ..BookState::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BookState> {
        // A panic while holding this lock is an action panic, already a permanent failure.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn suspension(&self) -> Option<Suspension> {
        self.state().suspension.clone()
    }

    pub(crate) fn deliveries_loaded(&self) -> bool {
        self.state().deliveries.is_some()
    }

    pub(crate) fn taken(&self) -> Vec<i64> {
        self.state().taken.clone()
    }

    pub(crate) fn events(&self) -> Vec<NewEvent> {
        self.state().events.clone()
    }

    pub(crate) fn deadline_map(&self) -> BTreeMap<String, DateTime<Utc>> {
        self.state().deadlines.clone()
    }

    /// Every deadline of the step, for persisting with a suspension.
    pub(crate) fn deadlines(&self) -> Value {
        let state = self.state();
        Value::Object(
            state
                .deadlines
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<Map<String, Value>>(),
        )
    }

    pub(crate) fn await_event(&self, event: &str, wait: &Wait) -> Result<Received, StepError> {
        let mut state = self.state();
        let Some(schema) = state.declared.get(event).cloned() else {
            return Err(StepError::permanent(
                "undeclared_event",
                format!(
                    "step `{}` waits for event `{event}` but does not declare it (Step::awaits)",
                    state.step
                ),
            ));
        };
        let index = next_index(&mut state.counters, event);
        let key = format!("event:{event}:{index}");
        let now = state.now.unwrap_or_else(Utc::now);
        let until = *state.deadlines.entry(key).or_insert(match wait.deadline {
            Deadline::At(at) => at,
            Deadline::After(d) => {
                now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
            }
        });
        let taken = state.taken.clone();
        let found = state.deliveries.as_ref().and_then(|all| {
            all.iter()
                .find(|d| d.event == event && !taken.contains(&d.id))
                .cloned()
        });
        if let Some(delivery) = found {
            state.taken.push(delivery.id);
            return Ok(Received {
                payload: delivery.payload,
                key: Some(delivery.delivery_key),
                actor: Some(delivery.actor),
            });
        }
        // Past the deadline the wait ends now, but only once the stored deliveries were read:
        // an event delivered in time may be waiting there (a retry that runs after the
        // deadline). Until then, suspend: the driver reads them and runs the action again.
        if now >= until && state.deliveries.is_some() {
            let (step, attempt) = (state.step.clone(), state.attempt);
            let default_used = wait.default_payload.is_some();
            state.events.push(
                NewEvent::step(EventKind::WaitTimedOut, &step, attempt).with_detail(
                    json!({"event": event, "until": until, "default_used": default_used}),
                ),
            );
            return match &wait.default_payload {
                Some(payload) => Ok(Received {
                    payload: payload.clone(),
                    key: None,
                    actor: None,
                }),
                None => Err(StepError::permanent(
                    "wait_timed_out",
                    format!("no `{event}` event came before {until}"),
                )),
            };
        }
        let (step, attempt) = (state.step.clone(), state.attempt);
        state.suspension = Some(Suspension {
            wake_at: until,
            waiting_for: json!({
                "step": step,
                "event": event,
                "until": until,
                "prompt": wait.prompt,
                "schema": schema,
                "url": wait.url,
                "roles": wait.answered_by,
            }),
            event: NewEvent::step(EventKind::WaitStarted, &step, attempt)
                .with_detail(json!({"event": event, "until": until, "prompt": wait.prompt})),
            event_name: Some(event.to_string()),
        });
        Err(suspended())
    }

    pub(crate) fn sleep_until(
        &self,
        wake: Option<DateTime<Utc>>,
        d: Duration,
    ) -> Result<(), StepError> {
        let mut state = self.state();
        let index = next_index(&mut state.counters, "sleep");
        let key = format!("sleep:{index}");
        let now = state.now.unwrap_or_else(Utc::now);
        let first_time = !state.deadlines.contains_key(&key);
        let until = *state.deadlines.entry(key).or_insert(match wake {
            Some(at) => at,
            None => now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
        });
        let (step, attempt) = (state.step.clone(), state.attempt);
        if now >= until {
            if !first_time {
                state.events.push(
                    NewEvent::step(EventKind::SleepEnded, &step, attempt)
                        .with_detail(json!({"until": until})),
                );
            }
            return Ok(());
        }
        state.suspension = Some(Suspension {
            wake_at: until,
            waiting_for: json!({
                "step": step,
                "event": null,
                "until": until,
                "prompt": null,
                "schema": null,
                "url": null,
                "roles": [],
            }),
            event: NewEvent::step(EventKind::SleepStarted, &step, attempt)
                .with_detail(json!({"until": until})),
            event_name: None,
        });
        Err(suspended())
    }
}

fn next_index(counters: &mut BTreeMap<String, usize>, name: &str) -> usize {
    let n = counters.entry(name.to_string()).or_insert(0);
    let index = *n;
    *n += 1;
    index
}

fn suspended() -> StepError {
    StepError::retryable(SUSPENDED, "the step waits (pass this error on with `?`)")
}

/// What a wait for an event returned ([`StepContext::await_delivery`](crate::StepContext::await_delivery)):
/// the payload and the delivery it came with, so a step can record who answered (an approval's
/// approver is the delivery's actor, not the saga's starter).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub payload: Value,
    /// The delivery key; None when the deadline passed and the wait's default payload was used.
    pub key: Option<String>,
    /// Who delivered the event (`Engine::deliver`'s actor); None for a default payload.
    pub actor: Option<String>,
}

/// The result of [`Engine::deliver`](crate::Engine::deliver).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub saga_id: uuid::Uuid,
    pub event: String,
    pub key: String,
    /// The same key with the same payload was delivered before: nothing new happened.
    pub duplicate: bool,
    /// The saga's status after the delivery.
    pub status: crate::SagaStatus,
}

/// Why an event was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("saga {0} not found")]
    NotFound(uuid::Uuid),
    #[error("saga {saga_id} is {status}: it takes no more events")]
    Terminal {
        saga_id: uuid::Uuid,
        status: crate::SagaStatus,
    },
    #[error("no step of skill `{skill}` version {version} awaits event `{event}`")]
    UnknownEvent {
        skill: String,
        version: i32,
        event: String,
    },
    #[error("invalid payload for event `{event}`: {field}: {message}")]
    Invalid {
        event: String,
        /// JSON Pointer of the offending field (`/approved`), or `payload` for the whole.
        field: String,
        message: String,
    },
    #[error(
        "delivery key `{key}` was already used for saga {saga_id} with another event or payload"
    )]
    Conflict { saga_id: uuid::Uuid, key: String },
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// Checks a payload against an event's declared schema; the first error names its field.
pub(crate) fn validate_payload(
    event: &str,
    schema: &Value,
    payload: &Value,
) -> Result<(), DeliverError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| DeliverError::Invalid {
        event: event.to_string(),
        field: "schema".to_string(),
        message: format!("the declared schema does not compile: {e}"),
    })?;
    if let Some(error) = validator.iter_errors(payload).next() {
        let mut pointer = error.instance_path().to_string();
        // A missing property is reported at its parent: name the property itself.
        if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
            pointer = format!("{pointer}/{}", property.as_str().unwrap_or_default());
        }
        return Err(DeliverError::Invalid {
            event: event.to_string(),
            field: if pointer.is_empty() {
                "payload".to_string()
            } else {
                pointer
            },
            message: error.to_string(),
        });
    }
    Ok(())
}
