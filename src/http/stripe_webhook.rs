//! `POST /webhooks/stripe`: Stripe's payment events, turned into the `payment_authenticated`
//! event a checkout waiting for 3-D Secure awaits (docs/waits.md, "Webhooks").
//!
//! The signature is the authentication (no bearer token): `Stripe-Signature: t=...,v1=...`
//! must carry an HMAC-SHA256 of `"<t>.<raw body>"` keyed with `STEPWISE_STRIPE_WEBHOOK_SECRET`,
//! compared in constant time, with `t` within five minutes of this server's clock. A bad or
//! missing signature is 400 and nothing is delivered; without a configured secret every
//! request is 503 (unsigned events are never accepted).
//!
//! A verified `payment_intent.succeeded` or `payment_intent.payment_failed` whose intent
//! carries `metadata.saga_id` is delivered to that saga as `payment_authenticated`, with the
//! Stripe event id as the delivery key (so Stripe's redeliveries are duplicates) and
//! `stripe:webhook` as the actor. Everything else (another type, no or an unknown saga, a
//! saga whose skill awaits no such event, a finished saga) is 200 and ignored, because Stripe
//! retries non-2xx answers for days. One case asks for a retry (409): the saga has a step that
//! will wait for the event but has not reached the wait yet, the only way an event could come
//! too early; answering 200 there would lose it. Events for payments that never needed
//! authentication (the saga went past its waiting step) are ignored that way too.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{DeliverError, Engine, EventKind, SagaStatus, StepStatus};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where the endpoint is mounted.
pub const PATH: &str = "/webhooks/stripe";
/// The environment variable holding the endpoint secret (`whsec_...`).
pub const SECRET_VAR: &str = "STEPWISE_STRIPE_WEBHOOK_SECRET";
/// Who delivered the events, in the sagas' history.
pub const ACTOR: &str = "stripe:webhook";
/// The event a checkout waiting for 3-D Secure awaits.
pub const EVENT: &str = "payment_authenticated";
/// How far a signature's timestamp may be from this server's clock (Stripe's default).
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// The endpoint secret from [`SECRET_VAR`], if set and not blank.
pub fn secret_from_env() -> Option<String> {
    std::env::var(SECRET_VAR)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A fresh random endpoint secret, for processes that wire their own in-process sandbox.
pub fn generate_secret() -> String {
    format!(
        "whsec_{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

#[derive(Clone)]
struct Receiver {
    engine: Engine,
    secret: Option<Arc<str>>,
}

/// The `/webhooks/stripe` route over `engine`, verifying with `secret` (None: 503).
pub fn router(engine: Engine, secret: Option<String>) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .with_state(Receiver {
            engine,
            secret: secret.map(Arc::from),
        })
}

/// Serves only [`router`] on a loopback port, for commands without an HTTP server of their
/// own (`demo`, `mcp` over stdio) that wire their in-process sandbox to it. Returns the
/// endpoint's URL; the server stops when `stop` is cancelled.
pub async fn serve_loopback(
    engine: Engine,
    secret: String,
    stop: CancellationToken,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let app = router(engine, Some(secret));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the webhook listener stopped with an error");
        }
    });
    Ok(format!("http://{addr}{PATH}"))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header (expected t=<unix seconds>,v1=<hex>)")]
    Malformed,
    #[error("the signature's timestamp is more than {0} s away from this server's clock")]
    Stale(u64),
    #[error("no v1 signature matches the body (wrong secret, or the body was changed)")]
    Mismatch,
}

/// Checks a `Stripe-Signature` header against `body` as Stripe's libraries do: any `v1`
/// entry may match (Stripe sends several while a secret is rolled), compared in constant
/// time; `t` must be within `tolerance` of `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = value.parse().ok(),
            "v1" => {
                if let Some(bytes) = decode_hex(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let tolerance_secs = tolerance.as_secs();
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // `verify_slice` compares in constant time; each candidate needs its own MAC state.
    if signatures
        .iter()
        .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn ignored(event_id: &str, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    // Every payment of the hotel (deposits, upgrades) has its webhooks: ignoring is routine.
    tracing::debug!(event_id, %reason, "stripe webhook ignored");
    answer(
        StatusCode::OK,
        json!({"received": true, "outcome": "ignored", "reason": reason}),
    )
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = receiver.secret.as_deref() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!(
                "Stripe webhooks are not configured here: set {SECRET_VAR} to the endpoint's \
                 signing secret (whsec_...); unsigned events are never accepted"
            )}),
        );
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify(signature, &body, secret, now, TOLERANCE) {
        tracing::warn!(error = %e, "stripe webhook refused: bad signature");
        return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the body is not a JSON event: {e}")}),
            )
        }
    };
    let (Some(event_id), Some(kind)) = (
        event.get("id").and_then(Value::as_str),
        event.get("type").and_then(Value::as_str),
    ) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "the event has no id or type"}),
        );
    };
    let outcome = match kind {
        "payment_intent.succeeded" => "succeeded",
        "payment_intent.payment_failed" => "failed",
        other => return ignored(event_id, format!("event type {other} is not handled")),
    };
    let intent = event
        .pointer("/data/object")
        .cloned()
        .unwrap_or(Value::Null);
    let intent_id = intent.get("id").and_then(Value::as_str).unwrap_or_default();
    let Some(saga_id) = intent
        .pointer("/metadata/saga_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return ignored(
            event_id,
            format!("payment intent {intent_id} names no saga"),
        );
    };
    let mut payload = json!({
        "payment_intent_id": intent_id,
        "status": outcome,
        "stripe_event_id": event_id,
    });
    if let Some(code) = intent
        .pointer("/last_payment_error/code")
        .and_then(Value::as_str)
    {
        payload["failure_code"] = json!(code);
    }
    match relevance(&receiver.engine, saga_id, event_id).await {
        Ok(Relevance::Deliver) => {}
        Ok(Relevance::Ignore(reason)) => return ignored(event_id, reason),
        Ok(Relevance::TooEarly) => {
            tracing::debug!(event_id, %saga_id, "stripe webhook came before its wait: retry asked");
            return answer(
                StatusCode::CONFLICT,
                json!({"error": format!(
                    "saga {saga_id} has not reached its wait for {EVENT} yet: retry later"
                )}),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "stripe webhook: cannot read the saga");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the saga store is unavailable: retry later"}),
            );
        }
    }
    match receiver
        .engine
        .deliver(saga_id, EVENT, payload, event_id, ACTOR)
        .await
    {
        Ok(delivery) => {
            let outcome = if delivery.duplicate {
                "duplicate"
            } else {
                "delivered"
            };
            tracing::info!(event_id, %saga_id, outcome, "stripe webhook delivered");
            answer(
                StatusCode::OK,
                json!({"received": true, "outcome": outcome, "saga_id": saga_id,
                       "status": delivery.status}),
            )
        }
        Err(
            e @ (DeliverError::NotFound(_)
            | DeliverError::Terminal { .. }
            | DeliverError::UnknownEvent { .. }
            | DeliverError::Invalid { .. }
            | DeliverError::Conflict { .. }),
        ) => ignored(event_id, e.to_string()),
        Err(DeliverError::Store(e)) => {
            tracing::error!(error = %e, "stripe webhook: cannot deliver");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the saga store is unavailable: retry later"}),
            )
        }
    }
}

enum Relevance {
    Deliver,
    Ignore(String),
    TooEarly,
}

/// Whether an event for `saga_id` should be delivered now: see the module documentation.
async fn relevance(
    engine: &Engine,
    saga_id: Uuid,
    event_id: &str,
) -> Result<Relevance, stepwise_engine::StoreError> {
    let Some(saga) = engine.detail(saga_id).await? else {
        return Ok(Relevance::Ignore(format!("saga {saga_id} not found")));
    };
    let version = u32::try_from(saga.skill_version).unwrap_or(0);
    let waiting_step = engine
        .registry()
        .get(&saga.skill, version)
        .and_then(|skill| {
            skill
                .steps()
                .iter()
                .find(|s| s.awaited_events().contains_key(EVENT))
                .map(|s| s.name().to_string())
        });
    let Some(waiting_step) = waiting_step else {
        return Ok(Relevance::Ignore(format!(
            "saga {saga_id} ({}) awaits no {EVENT} event",
            saga.skill
        )));
    };
    let awaited_now = saga.status == SagaStatus::Waiting
        && saga
            .waiting_for
            .as_ref()
            .and_then(|w| w.get("event"))
            .and_then(Value::as_str)
            == Some(EVENT);
    // Delivered before: let the engine answer `duplicate` (or refuse a terminal saga).
    let seen = saga.events.iter().any(|e| {
        e.kind == EventKind::EventReceived
            && e.detail
                .as_ref()
                .and_then(|d| d.get("key"))
                .and_then(Value::as_str)
                == Some(event_id)
    });
    if awaited_now || seen || saga.status.is_terminal() {
        return Ok(Relevance::Deliver);
    }
    match saga.steps.iter().find(|s| s.name == waiting_step) {
        Some(step) if matches!(step.status, StepStatus::Pending | StepStatus::Running) => {
            Ok(Relevance::TooEarly)
        }
        _ => Ok(Relevance::Ignore(format!(
            "saga {saga_id} is past step {waiting_step}: it does not wait for {EVENT}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit";

    fn sign(t: i64, body: &[u8], secret: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
            unreachable!("HMAC takes keys of any length");
        });
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t={t},v1={hex}")
    }

    #[test]
    fn a_signature_of_the_body_with_the_secret_within_tolerance_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(1_000, body, SECRET);
        assert_eq!(
            verify(Some(&header), body, SECRET, 1_000, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(Some(&header), body, SECRET, 1_300, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(Some(&header), body, SECRET, 1_301, TOLERANCE),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify(
                Some(&header),
                b"{\"id\":\"evt_2\"}",
                SECRET,
                1_000,
                TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), body, "whsec_other", 1_000, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_v1_entry_may_match_and_malformed_headers_are_refused() {
        let body = b"{}";
        let good = sign(50, body, SECRET);
        let v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        let rolled = format!("t=50,v1={},v0=abc,v1={v1}", "00".repeat(32));
        assert_eq!(verify(Some(&rolled), body, SECRET, 50, TOLERANCE), Ok(()));
        assert_eq!(
            verify(None, body, SECRET, 50, TOLERANCE),
            Err(SignatureError::Missing)
        );
        for header in ["", "t=50", "v1=00", "t=x,v1=00", "t=50,v1=zz"] {
            assert_eq!(
                verify(Some(header), body, SECRET, 50, TOLERANCE),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
    }
}
