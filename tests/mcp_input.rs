//! Waits for input through MCP, in every protocol era (docs/mcp.md, "Input"): the plain
//! result with `waiting_for` and the `provide_input` tool; tasks `input_required` answered by
//! `tasks/update` (across a facade restart); 2026-07-28 `InputRequiredResult` answered by
//! repeating the call; `elicitation/create` during the call for older clients. And who may
//! answer: the saga's owner, or the roles the wait names, with every refusal audited and nothing
//! delivered.
#![allow(clippy::unwrap_used)]

mod mcp_support;

use mcp_support::*;
use rmcp::model::{
    CallToolResponse, ElicitRequestParams, GetTaskParams, InputRequest, TaskPayload, TaskStatus,
    UpdateTaskParams,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use stepwise_engine::{EventKind, SagaStatus};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

async fn setup(pool: &PgPool) -> Harness {
    stepwise::app::migrate(pool)
        .await
        .expect("migrations apply");
    harness_with(pool.clone(), WAIT, input_registry())
}

fn saga_of(value: &Value) -> Uuid {
    value["saga_id"].as_str().unwrap().parse().unwrap()
}

/// How many events the saga received (its `event_received` history rows).
async fn received(h: &Harness, id: Uuid) -> usize {
    let detail = h.engine.detail(id).await.unwrap().unwrap();
    detail
        .events
        .iter()
        .filter(|e| e.kind == EventKind::EventReceived)
        .count()
}

async fn status(h: &Harness, id: Uuid) -> SagaStatus {
    h.engine.detail(id).await.unwrap().unwrap().status
}

#[sqlx::test(migrations = false)]
async fn a_waiting_saga_shows_what_it_waits_for_and_provide_input_delivers_the_answer(
    pool: PgPool,
) {
    let h = setup(&pool).await;
    let guest = connect(&h.facade, "guest:ana@example.com").await;
    let started = call(&guest, "confirm_stay", json!({"idempotency_key": "c-1"})).await;
    assert!(!is_error(&started), "{}", text(&started));
    let s = structured(&started).clone();
    assert_eq!(s["status"], "waiting", "{s}");
    let id = saga_of(&s);
    let waiting = &s["waiting_for"];
    assert_eq!(waiting["event"], "confirmed");
    assert_eq!(waiting["prompt"], "Do you confirm your stay?");
    assert_eq!(waiting["schema"], confirmed_schema());
    assert_eq!(waiting["roles"], json!([]));
    assert!(waiting["until"].is_string());
    assert!(
        text(&started).contains("provide_input"),
        "{}",
        text(&started)
    );

    // get_saga_status shows the same waiting_for.
    let shown = call(
        &guest,
        "get_saga_status",
        json!({"saga_id": id.to_string()}),
    )
    .await;
    assert_eq!(structured(&shown)["waiting_for"], *waiting);

    // Data that does not match the schema: refused, naming the field; nothing delivered.
    let invalid = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "confirmed", "data": {"ok": "yes"}, "idempotency_key": "a-1"}),
    )
    .await;
    assert!(is_error(&invalid));
    assert_eq!(structured(&invalid)["error"]["code"], "invalid_input");
    assert_eq!(structured(&invalid)["error"]["field"], "data/ok");
    assert_eq!(received(&h, id).await, 0);
    assert_eq!(status(&h, id).await, SagaStatus::Waiting);

    // An event the saga does not wait for is named as the field at fault.
    let unknown = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "approval", "data": {}, "idempotency_key": "a-0"}),
    )
    .await;
    assert_eq!(structured(&unknown)["error"]["code"], "not_waiting");
    assert_eq!(received(&h, id).await, 0);

    // The answer: delivered, and the saga goes on to the end within the call.
    let answered = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "confirmed", "data": {"ok": true}, "idempotency_key": "a-1"}),
    )
    .await;
    assert!(!is_error(&answered), "{}", text(&answered));
    let a = structured(&answered);
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["input"]["duplicate"], false);
    assert_eq!(
        a["output"]["confirm"]["confirmed"],
        json!({"ok": true}),
        "{a}"
    );
    let detail = h.engine.detail(id).await.unwrap().unwrap();
    let event = detail
        .events
        .iter()
        .find(|e| e.kind == EventKind::EventReceived)
        .unwrap();
    assert_eq!(event.actor, "guest:ana@example.com");

    // The same answer again is a duplicate; other data under the same key a conflict; a new
    // answer to the ended saga is refused. Nothing more is delivered.
    let again = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "confirmed", "data": {"ok": true}, "idempotency_key": "a-1"}),
    )
    .await;
    assert!(!is_error(&again), "{}", text(&again));
    assert_eq!(structured(&again)["input"]["duplicate"], true);
    let conflict = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "confirmed", "data": {"ok": false}, "idempotency_key": "a-1"}),
    )
    .await;
    assert_eq!(
        structured(&conflict)["error"]["code"],
        "idempotency_conflict"
    );
    let late = call(
        &guest,
        "provide_input",
        json!({"saga_id": id.to_string(), "event": "confirmed", "data": {"ok": true}, "idempotency_key": "a-2"}),
    )
    .await;
    assert_eq!(structured(&late)["error"]["code"], "saga_ended");
    assert_eq!(received(&h, id).await, 1);

    let audit: Vec<_> = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.1 == "provide_input")
        .map(|r| (r.3, r.4))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("invalid".to_string(), Some("invalid_input".to_string())),
            ("invalid".to_string(), Some("not_waiting".to_string())),
            ("ok".to_string(), None),
            ("ok".to_string(), None),
            (
                "conflict".to_string(),
                Some("idempotency_conflict".to_string())
            ),
            ("invalid".to_string(), Some("saga_ended".to_string())),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn a_guest_cannot_approve_her_own_refund_and_a_manager_can(pool: PgPool) {
    let h = setup(&pool).await;
    let guest = connect(&h.facade, "guest:ana@example.com").await;
    let started = call(
        &guest,
        "large_refund",
        json!({"amount_cents": 90000, "idempotency_key": "r-1"}),
    )
    .await;
    let s = structured(&started).clone();
    assert_eq!(s["status"], "waiting", "{s}");
    assert_eq!(s["waiting_for"]["roles"], json!(["manager"]));
    assert!(
        text(&started).contains("a member of manager"),
        "{}",
        text(&started)
    );
    let id = saga_of(&s);

    let approve = json!({"saga_id": id.to_string(), "event": "approval", "data": {"approved": true}, "idempotency_key": "self"});
    let refused = call(&guest, "provide_input", approve.clone()).await;
    assert!(is_error(&refused));
    let error = &structured(&refused)["error"];
    assert_eq!(error["code"], "forbidden");
    assert!(
        error["message"].as_str().unwrap().contains("`manager`"),
        "{error}"
    );
    // Staff may see every saga, but the wait names managers.
    let staff = connect(&h.facade, "staff:sam").await;
    let refused_staff = call(&staff, "provide_input", approve.clone()).await;
    assert_eq!(structured(&refused_staff)["error"]["code"], "forbidden");
    assert_eq!(received(&h, id).await, 0);
    assert_eq!(status(&h, id).await, SagaStatus::Waiting);

    let manager = connect(&h.facade, "manager:bob").await;
    let approved = call(&manager, "provide_input", approve).await;
    assert!(!is_error(&approved), "{}", text(&approved));
    assert_eq!(structured(&approved)["status"], "completed");
    assert_eq!(
        structured(&approved)["output"]["refund"]["refunded_cents"],
        90000
    );
    let detail = h.engine.detail(id).await.unwrap().unwrap();
    let event = detail
        .events
        .iter()
        .find(|e| e.kind == EventKind::EventReceived)
        .unwrap();
    assert_eq!(event.actor, "manager:bob");

    let audit: Vec<_> = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.1 == "provide_input")
        .map(|r| (r.0, r.3, r.4))
        .collect();
    assert_eq!(
        audit,
        vec![
            (
                "guest:ana@example.com".to_string(),
                "refused".to_string(),
                Some("forbidden".to_string())
            ),
            (
                "staff:sam".to_string(),
                "refused".to_string(),
                Some("forbidden".to_string())
            ),
            ("manager:bob".to_string(), "ok".to_string(), None),
        ]
    );
}

fn tasks_client() -> TestClient {
    TestClient {
        tasks: true,
        ..TestClient::default()
    }
}

#[sqlx::test(migrations = false)]
async fn a_task_is_input_required_and_tasks_update_answers_it_after_a_restart(pool: PgPool) {
    let h = setup(&pool).await;
    let client = connect_with(&h.facade, "guest:ana@example.com", tasks_client()).await;
    let response = client
        .call_tool_once(params("confirm_stay", json!({"idempotency_key": "t-1"})))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("a task was expected, got {response:?}");
    };
    assert_eq!(created.task.status, TaskStatus::InputRequired);
    let task_id = created.task.task_id.clone();
    let id: Uuid = task_id.parse().unwrap();

    // A brand-new facade (as after a restart) asks for the input from PostgreSQL.
    drop(client);
    let restarted = stepwise_mcp::Facade::new(h.engine.clone(), WAIT);
    let client = connect_with(&restarted, "guest:ana@example.com", tasks_client()).await;
    let got = client
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let TaskPayload::InputRequired { input_requests } = &got.task.payload else {
        panic!("input_required was expected, got {got:?}");
    };
    assert_eq!(input_requests.len(), 1);
    let (key, request) = input_requests.iter().next().unwrap();
    assert!(key.starts_with("confirmed@"), "{key}");
    let InputRequest::Elicitation(elicit) = request else {
        panic!("an elicitation was expected");
    };
    let ElicitRequestParams::FormElicitationParams {
        message,
        requested_schema,
        ..
    } = &elicit.params
    else {
        panic!("a form was expected");
    };
    assert_eq!(message, "Do you confirm your stay?");
    assert!(requested_schema.properties.contains_key("ok"));

    // Another guest sees no such task, and cannot answer it.
    let other = connect_with(&restarted, "guest:eve@example.com", tasks_client()).await;
    let answer = json!({"action": "accept", "content": {"ok": true}});
    let mut responses = rmcp::model::InputResponses::new();
    responses.insert(key.clone(), answer);
    assert!(other
        .update_task(UpdateTaskParams::new(task_id.clone(), responses.clone()))
        .await
        .is_err());
    assert_eq!(received(&h, id).await, 0);

    client
        .update_task(UpdateTaskParams::new(task_id.clone(), responses.clone()))
        .await
        .unwrap();
    let done = task_reaching(&client, &task_id, TaskStatus::Completed).await;
    let wire = serde_json::to_value(&done).unwrap();
    assert_eq!(wire["result"]["structuredContent"]["status"], "completed");
    // The same update again is a duplicate, not a second event.
    client
        .update_task(UpdateTaskParams::new(task_id.clone(), responses))
        .await
        .unwrap();
    assert_eq!(received(&h, id).await, 1);
    let audit: Vec<_> = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.1 == "tasks/update")
        .map(|r| (r.0, r.3))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("guest:eve@example.com".to_string(), "invalid".to_string()),
            ("guest:ana@example.com".to_string(), "ok".to_string()),
            ("guest:ana@example.com".to_string(), "ok".to_string()),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn a_task_waiting_for_a_manager_asks_only_managers(pool: PgPool) {
    let h = setup(&pool).await;
    let guest = connect_with(&h.facade, "guest:ana@example.com", tasks_client()).await;
    let response = guest
        .call_tool_once(params(
            "large_refund",
            json!({"amount_cents": 70000, "idempotency_key": "t-2"}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("a task was expected, got {response:?}");
    };
    // The guest is not asked: she may not answer.
    assert_eq!(created.task.status, TaskStatus::Working);
    let task_id = created.task.task_id.clone();
    let id: Uuid = task_id.parse().unwrap();
    let manager = connect_with(&h.facade, "manager:bob", tasks_client()).await;
    let got = manager
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let TaskPayload::InputRequired { input_requests } = &got.task.payload else {
        panic!("input_required was expected for a manager, got {got:?}");
    };
    let key = input_requests.keys().next().unwrap().clone();
    let mut responses = rmcp::model::InputResponses::new();
    responses.insert(
        key,
        json!({"action": "accept", "content": {"approved": false, "note": "not eligible"}}),
    );
    // The guest answering her own refund's approval is refused; nothing is delivered.
    let refused = guest
        .update_task(UpdateTaskParams::new(task_id.clone(), responses.clone()))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(received(&h, id).await, 0);
    manager
        .update_task(UpdateTaskParams::new(task_id.clone(), responses))
        .await
        .unwrap();
    let ended = h.engine.wait(id, WAIT).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Compensated);
}

#[sqlx::test(migrations = false)]
async fn a_2026_client_gets_input_required_and_answers_by_repeating_the_call(pool: PgPool) {
    let h = setup(&pool).await;
    let client = connect_modern(&h.facade, "guest:ana@example.com", TestClient::default()).await;
    let call_params = params("confirm_stay", json!({"idempotency_key": "m-1"}));
    let response = client.call_tool_once(call_params.clone()).await.unwrap();
    let CallToolResponse::InputRequired(asked) = response else {
        panic!("InputRequiredResult was expected, got {response:?}");
    };
    let state = asked.request_state.clone().unwrap();
    let requests = asked.input_requests.clone().unwrap();
    let (key, request) = requests.iter().next().unwrap();
    assert!(matches!(request, InputRequest::Elicitation(_)));
    let id = h
        .engine
        .list(&stepwise_engine::SagaFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.skill == "confirm_stay")
        .unwrap()
        .id;

    let mut responses = rmcp::model::InputResponses::new();
    responses.insert(
        key.clone(),
        json!({"action": "accept", "content": {"ok": true}}),
    );
    // A forged requestState is no handle of this saga's wait: nothing is delivered and the
    // client is asked again.
    let forged = client
        .call_tool_once(
            call_params
                .clone()
                .with_input_responses(responses.clone())
                .with_request_state(format!("{state}x")),
        )
        .await
        .unwrap();
    assert!(
        matches!(forged, CallToolResponse::InputRequired(_)),
        "{forged:?}"
    );
    assert_eq!(received(&h, id).await, 0);

    let done = client
        .call_tool_once(
            call_params
                .with_input_responses(responses)
                .with_request_state(state),
        )
        .await
        .unwrap();
    let CallToolResponse::Complete(done) = done else {
        panic!("a result was expected, got {done:?}");
    };
    assert_eq!(structured(&done)["status"], "completed", "{}", text(&done));
    assert_eq!(received(&h, id).await, 1);

    // rmcp's own client drives the rounds through its elicitation handler.
    let driven = connect_modern(
        &h.facade,
        "guest:ana@example.com",
        TestClient::accepting(Some(json!({"ok": true}))),
    )
    .await;
    let result = call(&driven, "confirm_stay", json!({"idempotency_key": "m-2"})).await;
    assert_eq!(
        structured(&result)["status"],
        "completed",
        "{}",
        text(&result)
    );
    let rows = audit_rows(&pool).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.1 == "tools/call inputResponses" && r.3 == "ok")
            .count(),
        2
    );
}

#[sqlx::test(migrations = false)]
async fn an_older_client_is_asked_by_elicitation_during_the_call(pool: PgPool) {
    let h = setup(&pool).await;
    let handler = TestClient::accepting(Some(json!({"ok": true})));
    let elicited = handler.elicited.clone();
    let client = connect_with(&h.facade, "guest:ana@example.com", handler).await;
    let result = call(&client, "confirm_stay", json!({"idempotency_key": "e-1"})).await;
    assert!(!is_error(&result), "{}", text(&result));
    assert_eq!(
        structured(&result)["status"],
        "completed",
        "{}",
        text(&result)
    );
    {
        let asked = elicited.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert!(matches!(
            asked[0],
            ElicitRequestParams::FormElicitationParams { .. }
        ));
    }

    // A wait answered on a web page is offered in URL mode; accepting it delivers nothing (the
    // answer comes from the page), so the call reports the saga waiting.
    let result = call(
        &client,
        "confirm_stay",
        json!({"idempotency_key": "e-2", "url": "https://pay.example/3ds/abc"}),
    )
    .await;
    assert_eq!(
        structured(&result)["status"],
        "waiting",
        "{}",
        text(&result)
    );
    assert_eq!(
        structured(&result)["waiting_for"]["url"],
        "https://pay.example/3ds/abc"
    );
    let id = saga_of(structured(&result));
    assert_eq!(received(&h, id).await, 0);
    {
        let asked = elicited.lock().unwrap();
        assert_eq!(asked.len(), 2);
        let ElicitRequestParams::UrlElicitationParams { url, .. } = &asked[1] else {
            panic!("a URL elicitation was expected");
        };
        assert_eq!(url, "https://pay.example/3ds/abc");
    }

    // A client that declines: the saga stays waiting, nothing delivered.
    let decliner = connect_with(
        &h.facade,
        "guest:ana@example.com",
        TestClient {
            elicit: Some(rmcp::model::ElicitResult::new(
                rmcp::model::ElicitationAction::Decline,
            )),
            ..TestClient::default()
        },
    )
    .await;
    let result = call(&decliner, "confirm_stay", json!({"idempotency_key": "e-3"})).await;
    assert_eq!(structured(&result)["status"], "waiting");
    assert_eq!(received(&h, saga_of(structured(&result))).await, 0);

    // A guest with elicitation is not asked for a manager's approval.
    let refund = call(
        &client,
        "large_refund",
        json!({"amount_cents": 60000, "idempotency_key": "e-4"}),
    )
    .await;
    assert_eq!(structured(&refund)["status"], "waiting");
    assert_eq!(elicited.lock().unwrap().len(), 2);
    let elicitation_rows = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.1 == "elicitation/create")
        .count();
    assert_eq!(elicitation_rows, 1);
}
