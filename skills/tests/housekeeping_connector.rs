//! The legacy housekeeping system's connector against the sandbox over HTTP: the WSDL, recorded
//! request/answer pairs, every kind of fault classified, the sequence number's exactly-once
//! effect, the ISO-8859-1 text and the room status codes read as the CRM's statuses.
//!
//! Recorded pairs live in `tests/fixtures/housekeeping/`; `STEPWISE_RECORD_FIXTURES=1` writes
//! them again from the current connector and sandbox (then read the diff before committing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::NaiveDate;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use stepwise_engine::{ErrorClass, StepError};
use stepwise_sandbox::legacy::LegacySettings;
use stepwise_sandbox::limits::{LimitConfig, SessionLimit};
use stepwise_sandbox::{state::lock, Sandbox, SandboxHandle};
use stepwise_skills::connectors::error::Outcome;
use stepwise_skills::connectors::housekeeping::codec::{TaskKind, TaskStatus};
use stepwise_skills::connectors::housekeeping::{soap, HousekeepingClient, NewTask};
use stepwise_skills::connectors::{ConnectorConfig, ConnectorError, Connectors};
use stepwise_skills::hotel::records::Priority;

async fn start() -> (SandboxHandle, HousekeepingClient) {
    start_with(|config| config).await
}

async fn start_with(
    configure: impl FnOnce(ConnectorConfig) -> ConnectorConfig,
) -> (SandboxHandle, HousekeepingClient) {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), 7)
        .await
        .unwrap();
    sandbox
        .set_legacy(LegacySettings {
            latency_ms: [0, 0],
            ..LegacySettings::default()
        })
        .unwrap();
    let config = configure(ConnectorConfig::sandbox(&sandbox.base_url()));
    let connectors = Connectors::new(&config).unwrap();
    (sandbox, connectors.housekeeping)
}

fn tasks(sandbox: &SandboxHandle) -> Vec<Value> {
    lock(&sandbox.state()).ledger()["objects"]["legacy_tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn due() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()
}

fn cleaning(room: &str) -> NewTask<'_> {
    NewTask {
        room_number: room,
        kind: TaskKind::Clean,
        priority: Priority::Medium,
        due_date: due(),
        remark: "Zimmer reinigen – Grüße an das Team ✓",
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/housekeeping")
        .join(name)
}

/// Compares `bytes` with the recorded fixture (or records it).
fn recorded(name: &str, bytes: &[u8]) {
    let path = fixture(name);
    if std::env::var_os("STEPWISE_RECORD_FIXTURES").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        String::from_utf8_lossy(bytes),
        String::from_utf8_lossy(&expected),
        "{name} differs from the recording"
    );
    assert_eq!(
        bytes,
        expected.as_slice(),
        "{name}: byte for byte (ISO-8859-1)"
    );
}

async fn post(sandbox: &SandboxHandle, action: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("{}/legacy/housekeeping", sandbox.base_url()))
        .header("Content-Type", "text/xml; charset=ISO-8859-1")
        .header(
            "SOAPAction",
            format!("\"urn:dewy-resort:housekeeping:2004#{action}\""),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn the_wsdl_describes_the_operations_at_the_sandbox_address() {
    let (sandbox, client) = start().await;
    let response = reqwest::get(format!("{}?wsdl", client.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/xml; charset=ISO-8859-1"
    );
    let wsdl = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    assert!(wsdl.starts_with("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"));
    for operation in ["CreateTask", "CancelTask", "FindTasks", "GetRoomStatus"] {
        assert!(
            wsdl.contains(&format!(
                "soapAction=\"urn:dewy-resort:housekeeping:2004#{operation}\""
            )),
            "{operation} bound with its SOAPAction"
        );
    }
    assert!(wsdl.contains(&format!(
        "<soap:address location=\"{}/legacy/housekeeping\"/>",
        sandbox.base_url()
    )));
    // It is XML a parser reads.
    let mut reader = quick_xml::Reader::from_str(&wsdl);
    let mut elements = 0;
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(_) | quick_xml::events::Event::Empty(_) => {
                elements += 1
            }
            _ => {}
        }
    }
    assert!(elements > 50, "{elements} elements");
}

#[tokio::test]
async fn a_create_task_request_and_its_answer_match_the_recording() {
    let (sandbox, client) = start().await;
    let key = "0193a4f2-7c1e-7000-8000-000000000001/create_housekeeping_task";
    let request = client
        .document(soap::Request::CreateTask(soap::CreateTask {
            sequence_no: stepwise_skills::connectors::housekeeping::codec::sequence_number(
                key,
                "CreateTask",
            ),
            room_no: "104".into(),
            task_type: "CLN",
            priority: 3,
            due_date: "02.12.2026".into(),
            remark: stepwise_skills::connectors::housekeeping::codec::remark(
                "Zimmer reinigen – Grüße an das Team ✓",
            ),
            reference: key.into(),
        }))
        .unwrap();
    recorded("create_task.request.xml", &request);
    let (status, answer) = post(&sandbox, "CreateTask", request).await;
    assert_eq!(status, 200);
    recorded("create_task.response.xml", &answer);
    // The connector's own call sends the same document and reads the task back.
    let task = client.create_task(&cleaning("104"), key).await.unwrap();
    assert_eq!(task.task_no, "4700001", "the recorded task, answered again");
    assert_eq!(task.kind, TaskKind::Clean);
    assert_eq!(task.status, TaskStatus::Open);
    assert_eq!(task.due_date, due());
    assert_eq!(task.remark, "Zimmer reinigen ? Grüße an das Team ?");
    assert_eq!(tasks(&sandbox).len(), 1, "one task for one sequence number");
}

#[tokio::test]
async fn an_unknown_room_fault_matches_the_recording_and_is_permanent() {
    let (sandbox, client) = start().await;
    let request = client
        .document(soap::Request::GetRoomStatus(soap::GetRoomStatus {
            room_no: "999",
        }))
        .unwrap();
    recorded("room_status_unknown.request.xml", &request);
    let (status, answer) = post(&sandbox, "GetRoomStatus", request).await;
    assert_eq!(status, 500, "a SOAP 1.1 fault comes with 500");
    recorded("room_status_unknown.response.xml", &answer);
    let error = client.room_status("999").await.unwrap_err();
    assert_eq!(error.outcome(), Outcome::Permanent);
    let step = StepError::from(error);
    assert_eq!(step.class, ErrorClass::Permanent);
    assert_eq!(step.code, "room_not_found");
}

fn classified(error: ConnectorError) -> StepError {
    StepError::from(error)
}

#[tokio::test]
async fn try_again_with_200_and_the_night_batch_are_retryable_without_effect() {
    let (sandbox, client) = start().await;
    sandbox
        .set_legacy(LegacySettings {
            latency_ms: [0, 0],
            try_again_next: 1,
            busy_next: 1,
            busy_retry_after_s: 3,
        })
        .unwrap();
    let again = classified(
        client
            .create_task(&cleaning("104"), "k/1")
            .await
            .unwrap_err(),
    );
    assert_eq!(again.class, ErrorClass::Retryable);
    assert_eq!(again.code, "housekeeping_unavailable");
    assert!(again.message.contains("HK-200"), "{}", again.message);
    let busy = classified(
        client
            .create_task(&cleaning("104"), "k/1")
            .await
            .unwrap_err(),
    );
    assert_eq!(busy.class, ErrorClass::Retryable);
    assert_eq!(
        busy.retry_after(),
        Some(Duration::from_secs(3)),
        "RetryAfter is the hint"
    );
    assert!(tasks(&sandbox).is_empty(), "neither took effect");
    let task = client.create_task(&cleaning("104"), "k/1").await.unwrap();
    assert_eq!(tasks(&sandbox).len(), 1);
    assert_eq!(task.room_number, "104");
}

#[tokio::test]
async fn an_internal_error_makes_a_write_unknown_and_a_read_retryable() {
    let (sandbox, client) = start().await;
    let faults = json!({"error_rate": 1.0, "services": ["legacy"]});
    lock(&sandbox.state())
        .faults
        .set(serde_json::from_value(faults).unwrap())
        .unwrap();
    let write = client
        .create_task(&cleaning("104"), "k/2")
        .await
        .unwrap_err();
    assert_eq!(write.code(), Some("HK-999"));
    assert_eq!(classified(write).class, ErrorClass::Unknown);
    let read = client.room_status("104").await.unwrap_err();
    assert_eq!(classified(read).class, ErrorClass::Retryable);
}

#[tokio::test]
async fn a_timeout_after_the_task_was_made_is_unknown_and_the_retry_finds_it() {
    let (sandbox, client) =
        start_with(|config| config.with_timeout(Duration::from_millis(300))).await;
    let faults = json!({"effect_then_timeout_rate": 1.0, "services": ["legacy"],
                        "max_faults": 1, "timeout_ms": 2000});
    lock(&sandbox.state())
        .faults
        .set(serde_json::from_value(faults).unwrap())
        .unwrap();
    let lost = client
        .create_task(&cleaning("104"), "k/3")
        .await
        .unwrap_err();
    assert_eq!(classified(lost).class, ErrorClass::Unknown);
    assert_eq!(tasks(&sandbox).len(), 1, "it was made");
    // The same sequence number is answered from the journal; the reference finds it too.
    let again = client.create_task(&cleaning("104"), "k/3").await.unwrap();
    let found = client.find_tasks("k/3").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].task_no, again.task_no);
    assert_eq!(tasks(&sandbox).len(), 1, "still one task");
    let ledger = lock(&sandbox.state()).ledger();
    let replayed = ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["service"] == "legacy" && r["replayed"] == true)
        .count();
    assert_eq!(replayed, 1, "the retry was answered from the journal");
}

#[tokio::test]
async fn a_sequence_number_reused_for_other_content_is_refused() {
    let (_sandbox, client) = start().await;
    client.create_task(&cleaning("104"), "k/4").await.unwrap();
    let other = client
        .create_task(&cleaning("105"), "k/4")
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some("HK-105"));
    assert_eq!(classified(other).code, "housekeeping_rejected");
}

#[tokio::test]
async fn bad_credentials_are_permanent() {
    let (_sandbox, client) = start_with(|mut config| {
        config.housekeeping.credential = String::new();
        config
    })
    .await;
    let error = client.room_status("104").await.unwrap_err();
    assert_eq!(error.code(), Some("HK-001"));
    let step = classified(error);
    assert_eq!(step.class, ErrorClass::Permanent);
    assert_eq!(step.code, "connector_setup");
}

#[tokio::test]
async fn a_request_over_the_session_limit_is_refused_with_a_retry_hint() {
    let (sandbox, client) = start().await;
    sandbox
        .set_limits(LimitConfig {
            legacy: Some(SessionLimit { sessions: 1 }),
            ..LimitConfig::default()
        })
        .unwrap();
    sandbox
        .set_legacy(LegacySettings {
            latency_ms: [300, 300],
            ..LegacySettings::default()
        })
        .unwrap();
    let (first, second) = tokio::join!(client.room_status("104"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.room_status("105").await
    });
    assert!(first.is_ok());
    let refused = second.unwrap_err();
    assert_eq!(refused.code(), Some("HK-429"));
    let step = classified(refused);
    assert_eq!(step.class, ErrorClass::Retryable);
    assert_eq!(step.code, "rate_limited");
    assert_eq!(step.retry_after(), Some(Duration::from_secs(1)));
    let ledger = lock(&sandbox.state()).ledger();
    assert_eq!(ledger["limit_breaches"]["legacy"], 1);
}

#[tokio::test]
async fn room_codes_are_read_as_the_crm_statuses() {
    let (_sandbox, client) = start().await;
    for (room, status, code) in [
        ("102", "Vacant", "VC"),
        ("104", "Occupied", "OC"),
        ("106", "Cleaning", "VD"),
        ("205", "Maintenance", "OOO"),
        ("305", "Out of Service", "OOS"),
    ] {
        let reading = client.room_status(room).await.unwrap();
        assert_eq!(
            (reading.status.as_str(), reading.code.as_str()),
            (status, code),
            "{room}"
        );
    }
    client.create_task(&cleaning("104"), "k/5").await.unwrap();
    let dirty = client.room_status("104").await.unwrap();
    assert_eq!(
        (dirty.status.as_str(), dirty.code.as_str()),
        ("Occupied", "OD")
    );
    assert_eq!(dirty.open_tasks, 1);
}

#[tokio::test]
async fn a_cancel_runs_once_and_a_second_cancel_is_not_an_error() {
    let (sandbox, client) = start().await;
    let task = client.create_task(&cleaning("104"), "k/6").await.unwrap();
    let first = client
        .cancel_task(&task.task_no, "undone", "k/6/compensate")
        .await
        .unwrap();
    assert!(!first.already);
    // A retried undo with the same key is answered from the journal.
    let replay = client
        .cancel_task(&task.task_no, "undone", "k/6/compensate")
        .await
        .unwrap();
    assert!(!replay.already);
    // Another undo of the same task finds it cancelled.
    let other = client
        .cancel_task(&task.task_no, "undone", "k/7/compensate")
        .await
        .unwrap();
    assert!(other.already);
    assert_eq!(tasks(&sandbox)[0]["Status"], "CAN");
}
