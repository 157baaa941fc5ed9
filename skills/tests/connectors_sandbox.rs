//! The connectors against the sandbox over HTTP: a repeated call under one idempotency key has
//! one effect, business errors are permanent, service faults are retried, and a write whose
//! answer was lost has an unknown outcome. Each test runs
//! its own sandbox on a free port.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use stepwise_sandbox::{state::lock, Sandbox, SandboxHandle};
use stepwise_skills::connectors::payments::PaymentRequest;
use stepwise_skills::connectors::{ConnectorConfig, Connectors};

async fn start() -> (SandboxHandle, Connectors) {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), 7)
        .await
        .unwrap();
    let connectors = Connectors::new(&ConnectorConfig::sandbox(&sandbox.base_url())).unwrap();
    (sandbox, connectors)
}

fn ledger_objects(sandbox: &SandboxHandle, kind: &str) -> Vec<Value> {
    let ledger = lock(&sandbox.state()).ledger();
    ledger["objects"][kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn payment<'a>(customer: &'a str, payment_method: &'a str) -> PaymentRequest<'a> {
    PaymentRequest {
        amount: 12_900,
        currency: "usd",
        customer,
        payment_method,
        description: "one night, room 102",
        metadata: &[],
    }
}

#[tokio::test]
async fn a_repeated_charge_under_one_key_charges_once() {
    let (sandbox, connectors) = start().await;
    let customer = connectors
        .payments
        .find_or_create_customer("ada@example.com", "Ada Lovelace", "saga-1:customer")
        .await
        .unwrap();
    let request = payment(&customer.id, "pm_card_visa");
    let first = connectors
        .payments
        .create_and_confirm(&request, "saga-1:charge")
        .await
        .unwrap();
    let again = connectors
        .payments
        .create_and_confirm(&request, "saga-1:charge")
        .await
        .unwrap();
    assert_eq!(first.status, "succeeded");
    assert_eq!(again, first, "the replay is the first answer");
    let intents = ledger_objects(&sandbox, "payment_intent");
    let charged: Vec<_> = intents
        .iter()
        .filter(|intent| intent["customer"] == customer.id.as_str())
        .collect();
    assert_eq!(charged.len(), 1, "{intents:?}");

    let found = connectors
        .payments
        .find_or_create_customer("ada@example.com", "Ada Lovelace", "saga-2:customer")
        .await
        .unwrap();
    assert_eq!(
        found.id, customer.id,
        "an existing customer is found by email"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_declined_card_is_permanent_and_a_service_fault_is_retryable() {
    let (sandbox, connectors) = start().await;
    let customer = connectors
        .payments
        .find_or_create_customer("grace@example.com", "Grace Hopper", "saga-3:customer")
        .await
        .unwrap();
    let declined = connectors
        .payments
        .create_and_confirm(&payment(&customer.id, "pm_card_chargeDeclined"), "saga-3:a")
        .await
        .unwrap_err();
    assert_eq!(declined.code(), Some("card_declined"), "{declined}");
    assert!(!declined.is_retryable(), "{declined}");

    let faults = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(&serde_json::json!({"error_rate": 1.0, "services": ["twilio"]}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success(), "{}", faults.status());
    let faulted = connectors
        .sms
        .send("+15551234567", "Your room is ready", "saga-3:sms")
        .await
        .unwrap_err();
    assert_eq!(faulted.status(), Some(500), "{faulted}");
    assert!(faulted.is_retryable(), "{faulted}");
    assert!(ledger_objects(&sandbox, "message").is_empty());
    sandbox.shutdown().await;
}

async fn set_faults(sandbox: &SandboxHandle, faults: Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
}

/// Classification over real HTTP (docs/skills.md, "Classifying errors"): a write whose answer
/// was lost after it took effect has an unknown outcome; a failed read, or a connection never
/// made, is retryable with no effect; and the charge is found afterwards by its metadata.
#[tokio::test]
async fn lost_answers_to_writes_are_unknown_and_the_charge_is_found_by_its_key() {
    let (sandbox, _) = start().await;
    let connectors = Connectors::new(
        &ConnectorConfig::sandbox(&sandbox.base_url())
            .with_timeout(std::time::Duration::from_millis(800)),
    )
    .unwrap();
    let customer = connectors
        .payments
        .find_or_create_customer("lin@example.com", "Lin Lee", "saga-4:customer")
        .await
        .unwrap();
    let metadata = [("idempotency_key", "saga-4/charge".to_string())];
    let request = PaymentRequest {
        metadata: &metadata,
        ..payment(&customer.id, "pm_card_visa")
    };
    for (fault, max) in [
        ("effect_then_error_rate", 1),
        ("reset_rate", 1),
        ("effect_then_timeout_rate", 1),
    ] {
        set_faults(
            &sandbox,
            serde_json::json!({fault: 1.0, "services": ["stripe"], "method": "POST",
                               "max_faults": max, "timeout_ms": 3000}),
        )
        .await;
        let lost = connectors
            .payments
            .create_and_confirm(&request, &format!("saga-4:{fault}"))
            .await
            .unwrap_err();
        assert!(lost.is_unknown(), "{fault}: {lost}");
        let step: stepwise_engine::StepError = lost.into();
        assert!(step.is_unknown() && step.is_retryable(), "{fault}");
    }
    // Three payments were made although every answer was lost; the search finds them all.
    let found = connectors
        .payments
        .search_by_metadata("idempotency_key", "saga-4/charge")
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    assert!(found.iter().all(|i| i.status == "succeeded"));
    assert!(connectors
        .payments
        .search_by_metadata("idempotency_key", "saga-4/other' OR status:'succeeded")
        .await
        .unwrap()
        .is_empty());

    // A read that fails has no effect: retryable, not unknown.
    set_faults(
        &sandbox,
        serde_json::json!({"error_rate": 1.0, "services": ["stripe"], "method": "GET"}),
    )
    .await;
    let read = connectors
        .payments
        .retrieve(&found[0].id)
        .await
        .unwrap_err();
    assert!(read.is_retryable() && !read.is_unknown(), "{read}");

    // Nothing listens: the request was never sent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = Connectors::new(&ConnectorConfig::sandbox(&format!(
        "http://127.0.0.1:{port}"
    )))
    .unwrap();
    let refused = nowhere
        .payments
        .create_and_confirm(&request, "saga-4:refused")
        .await
        .unwrap_err();
    assert!(refused.is_retryable() && !refused.is_unknown(), "{refused}");
    sandbox.shutdown().await;
}
