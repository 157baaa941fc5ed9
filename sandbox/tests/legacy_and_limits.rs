//! The legacy housekeeping system's HTTP conventions (SOAPAction, WS-Security, ISO-8859-1,
//! slow answers, sequence numbers) and the services' own limits (`/_sandbox/limits`,
//! `limit_breaches`). Each test runs its own sandbox on a free port.
#![allow(clippy::unwrap_used)]

use reqwest::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepwise_sandbox::{Sandbox, SandboxHandle};

const SF_ROOMS: &str =
    "/salesforce/services/data/v60.0/query?q=SELECT+Id+FROM+Hotel_Room__c+LIMIT+1";

async fn sandbox() -> (SandboxHandle, Client) {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), 7)
        .await
        .expect("sandbox starts");
    (sandbox, Client::new())
}

/// A CreateTask request as a SOAP client writes it (ISO-8859-1 bytes).
fn create_task(user: Option<&str>, sequence: u64, room: &str, remark: &str) -> Vec<u8> {
    let security = user
        .map(|u| {
            format!(
                "<soapenv:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">\
                 <wsse:UsernameToken><wsse:Username>{u}</wsse:Username>\
                 <wsse:Password>secret</wsse:Password></wsse:UsernameToken></wsse:Security></soapenv:Header>"
            )
        })
        .unwrap_or_default();
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\
         <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:hk=\"urn:dewy-resort:housekeeping:2004\">\
         {security}<soapenv:Body><hk:CreateTask><hk:SequenceNo>{sequence}</hk:SequenceNo><hk:RoomNo>{room}</hk:RoomNo>\
         <hk:TaskType>INS</hk:TaskType><hk:Priority>2</hk:Priority><hk:DueDate>24.12.2026</hk:DueDate>\
         <hk:Remark>{remark}</hk:Remark><hk:Reference>ref-{sequence}</hk:Reference></hk:CreateTask></soapenv:Body></soapenv:Envelope>"
    );
    // ISO-8859-1: every character below U+0100 is one byte.
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

async fn soap(
    env: &(SandboxHandle, Client),
    action: &str,
    body: Vec<u8>,
) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = env
        .1
        .post(format!("{}/legacy/housekeeping", env.0.base_url()))
        .header("Content-Type", "text/xml; charset=ISO-8859-1")
        .header("SOAPAction", action)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    (status, text, started.elapsed())
}

async fn ledger(env: &(SandboxHandle, Client)) -> Value {
    env.1
        .get(format!("{}/_sandbox/ledger", env.0.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn control(env: &(SandboxHandle, Client), path: &str, body: Value) -> (u16, Value) {
    let response = env
        .1
        .post(format!("{}/_sandbox/{path}", env.0.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

const CREATE: &str = "\"urn:dewy-resort:housekeeping:2004#CreateTask\"";

#[tokio::test]
async fn a_task_is_created_slowly_in_latin1_and_listed_in_the_ledger() {
    let env = sandbox().await;
    let (status, answer, took) =
        soap(&env, CREATE, create_task(Some("HK"), 11, "204", "Prüfen")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        took >= Duration::from_millis(100),
        "slow by default: {took:?}"
    );
    assert!(answer.starts_with("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"));
    assert!(answer.contains("<hk:Remark>Prüfen</hk:Remark>"), "{answer}");
    assert!(answer.contains("<hk:DueDate>24.12.2026</hk:DueDate>"));
    let ledger = ledger(&env).await;
    let tasks = ledger["objects"]["legacy_tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["TaskType"], "INS");
    assert_eq!(tasks[0]["Remark"], "Prüfen");
    assert_eq!(tasks[0]["User"], "HK");
    assert_eq!(ledger["limit_breaches"]["legacy"], 0);
}

#[tokio::test]
async fn a_repeated_sequence_number_is_answered_again_without_a_second_task() {
    let env = sandbox().await;
    let (code, body) = control(&env, "legacy", json!({"latency_ms": [0, 0]})).await;
    assert_eq!(code, 200, "{body}");
    let (_, first, took) = soap(&env, CREATE, create_task(Some("HK"), 12, "204", "x")).await;
    assert!(took < Duration::from_millis(100), "latency switched off");
    let (_, again, _) = soap(&env, CREATE, create_task(Some("HK"), 12, "204", "x")).await;
    assert_eq!(first, again);
    let (status, other, _) = soap(&env, CREATE, create_task(Some("HK"), 12, "205", "x")).await;
    assert_eq!(status, 500);
    assert!(other.contains("<hk:Code>HK-105</hk:Code>"), "{other}");
    let ledger = ledger(&env).await;
    assert_eq!(
        ledger["objects"]["legacy_tasks"].as_array().unwrap().len(),
        1
    );
    let replayed: Vec<&Value> = ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["replayed"] == true)
        .collect();
    assert_eq!(replayed.len(), 1);
}

#[tokio::test]
async fn security_and_soap_action_are_checked() {
    let env = sandbox().await;
    control(&env, "legacy", json!({"latency_ms": [0, 0]})).await;
    let (status, answer, _) = soap(&env, CREATE, create_task(None, 13, "204", "x")).await;
    assert_eq!(status, 500);
    assert!(answer.contains("<faultcode>soap:Client</faultcode>"));
    assert!(answer.contains("HK-001"), "{answer}");
    let wrong = "\"urn:dewy-resort:housekeeping:2004#CancelTask\"";
    let (_, answer, _) = soap(&env, wrong, create_task(Some("HK"), 14, "204", "x")).await;
    assert!(answer.contains("HK-002"), "{answer}");
    let (_, answer, _) = soap(&env, CREATE, b"<not-soap/>".to_vec()).await;
    assert!(answer.contains("HK-003"), "{answer}");
    let (code, body) = control(&env, "legacy", json!({"latency_ms": [5, 1]})).await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn a_rest_service_over_its_rate_is_answered_429_and_counted() {
    let env = sandbox().await;
    let (code, body) = control(
        &env,
        "limits",
        json!({"salesforce": {"per_second": 2}, "legacy": {"sessions": 2}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["salesforce"]["per_second"], 2.0);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = env
            .1
            .get(format!("{}{SF_ROOMS}", env.0.base_url()))
            .bearer_auth("00Dsandbox!token")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
        }
    }
    assert_eq!(statuses, [200, 200, 429], "a bucket of one second's worth");
    let ledger = ledger(&env).await;
    assert_eq!(ledger["limit_breaches"]["salesforce"], 1);
    assert_eq!(ledger["limit_breaches"]["stripe"], 0);
    let refused = ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["fault"] == "limit")
        .count();
    assert_eq!(refused, 1);
    let (code, _) = control(&env, "limits", json!({"legacy": {"sessions": 0}})).await;
    assert_eq!(code, 400);
    let (code, _) = control(&env, "limits", json!({"paypal": {"per_second": 1}})).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn the_legacy_system_over_its_sessions_answers_a_fault_with_retry_after() {
    let env = sandbox().await;
    control(&env, "limits", json!({"legacy": {"sessions": 1}})).await;
    control(&env, "legacy", json!({"latency_ms": [300, 300]})).await;
    let (slow, refused) = tokio::join!(
        soap(&env, CREATE, create_task(Some("HK"), 21, "204", "x")),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            soap(&env, CREATE, create_task(Some("HK"), 22, "204", "x")).await
        }
    );
    assert_eq!(slow.0, 200);
    assert_eq!(refused.0, 500);
    assert!(
        refused.1.contains("<hk:Code>HK-429</hk:Code>"),
        "{}",
        refused.1
    );
    assert!(refused.1.contains("<hk:RetryAfter>1</hk:RetryAfter>"));
    // Sessions are given back: the next one passes.
    let (status, _, _) = soap(&env, CREATE, create_task(Some("HK"), 23, "204", "x")).await;
    assert_eq!(status, 200);
    let ledger = ledger(&env).await;
    assert_eq!(ledger["limit_breaches"]["legacy"], 1);
    assert_eq!(
        ledger["objects"]["legacy_tasks"].as_array().unwrap().len(),
        2
    );
}
