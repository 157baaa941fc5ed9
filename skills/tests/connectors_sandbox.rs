//! The connectors against the sandbox over HTTP: a repeated call under one idempotency key has
//! one effect, business errors are permanent, and service faults are retryable. Each test runs
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
