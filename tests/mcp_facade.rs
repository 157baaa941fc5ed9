//! The MCP facade through an in-process rmcp client: tools per role, saga calls end to end,
//! failures with what was undone, idempotency, guests confined to their own data, malformed
//! arguments, tasks, progress, the saga:// resource, and the audit.
#![allow(clippy::unwrap_used)]

mod mcp_support;

use mcp_support::*;
use rmcp::model::{
    CallToolResponse, GetTaskParams, ReadResourceRequestParams, ResourceContents, TaskStatus,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

async fn tool_names(client: &Client) -> BTreeSet<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[sqlx::test(migrations = false)]
async fn tools_list_shows_each_role_only_its_tools(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool, WAIT);
    let guest = connect(&h.facade, "guest:ana@example.com").await;
    assert_eq!(
        tool_names(&guest).await,
        set(&[
            "cancel_saga",
            "find_notes",
            "get_saga_status",
            "guest_note",
            "list_sagas",
            "provide_input"
        ])
    );
    let staff = connect(&h.facade, "staff:frontdesk").await;
    assert_eq!(
        tool_names(&staff).await,
        set(&[
            "find_notes",
            "get_saga_status",
            "guest_note",
            "list_sagas",
            "provide_input"
        ])
    );
    let manager = connect(&h.facade, "manager:mia").await;
    assert_eq!(
        tool_names(&manager).await,
        set(&[
            "cancel_saga",
            "find_notes",
            "get_saga_status",
            "guest_note",
            "list_sagas",
            "provide_input",
            "risky_refund"
        ])
    );
    let operator = connect(&h.facade, "operator:local").await;
    let names = tool_names(&operator).await;
    assert!(
        names.contains("synthetic_chain") && names.contains("risky_refund"),
        "{names:?}"
    );
    for replay in ["retry_saga", "restart_saga", "fork_saga", "cancel_saga"] {
        assert!(names.contains(replay), "{names:?}");
    }

    // Schemas and annotations as clients need them.
    let tools = operator.list_all_tools().await.unwrap();
    let chain = tools.iter().find(|t| t.name == "synthetic_chain").unwrap();
    let schema = Value::Object(chain.input_schema.as_ref().clone());
    assert_eq!(schema["type"], "object");
    assert!(!schema.to_string().contains("$ref"), "{schema}");
    assert_eq!(
        schema["properties"]["fail_kind"]["enum"],
        json!(["permanent", "transient"])
    );
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&json!("idempotency_key")));
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&json!("steps")));
    let output = Value::Object(chain.output_schema.as_ref().unwrap().as_ref().clone());
    assert_eq!(output["type"], "object");
    assert!(output["required"]
        .as_array()
        .unwrap()
        .contains(&json!("saga_id")));

    let refund = tools.iter().find(|t| t.name == "risky_refund").unwrap();
    let a = refund.annotations.as_ref().unwrap();
    assert_eq!(
        (
            a.read_only_hint,
            a.destructive_hint,
            a.idempotent_hint,
            a.open_world_hint
        ),
        (Some(false), Some(true), Some(true), Some(true))
    );
    let find = tools.iter().find(|t| t.name == "find_notes").unwrap();
    let a = find.annotations.as_ref().unwrap();
    assert_eq!(
        (
            a.read_only_hint,
            a.destructive_hint,
            a.idempotent_hint,
            a.open_world_hint
        ),
        (Some(true), Some(false), Some(true), Some(false))
    );
    for tool in &tools {
        let a = tool.annotations.as_ref().unwrap();
        assert!(
            a.read_only_hint.is_some()
                && a.destructive_hint.is_some()
                && a.idempotent_hint.is_some()
                && a.open_world_hint.is_some(),
            "{} lacks an annotation",
            tool.name
        );
    }

    // A guest's own-data field is filled in by the facade, so it is not required of the guest.
    let guest_tools = guest.list_all_tools().await.unwrap();
    let note = guest_tools.iter().find(|t| t.name == "guest_note").unwrap();
    let required = Value::Object(note.input_schema.as_ref().clone())["required"].clone();
    assert!(
        !required.as_array().unwrap().contains(&json!("guest_email")),
        "{required}"
    );
    let staff_tools = staff.list_all_tools().await.unwrap();
    let note = staff_tools.iter().find(|t| t.name == "guest_note").unwrap();
    let required = Value::Object(note.input_schema.as_ref().clone())["required"].clone();
    assert!(
        required.as_array().unwrap().contains(&json!("guest_email")),
        "{required}"
    );

    // A tool the role does not have is refused as a tool error, and audited.
    let refused = call(
        &staff,
        "risky_refund",
        json!({"amount_cents": 1, "idempotency_key": "r"}),
    )
    .await;
    assert!(is_error(&refused));
    assert_eq!(structured(&refused)["error"]["code"], "forbidden");
}

#[sqlx::test(migrations = false)]
async fn a_saga_tool_runs_end_to_end_and_is_audited(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let operator = connect(&h.facade, "operator:local").await;
    let result = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 3, "idempotency_key": "e2e-1"}),
    )
    .await;
    assert!(!is_error(&result), "{}", text(&result));
    let s = structured(&result);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["skill"], "synthetic_chain");
    assert_eq!(s["steps_done"], 3);
    assert_eq!(s["steps_total"], 3);
    assert!(s["output"].is_object(), "{s}");
    assert!(s.get("error").is_none());
    let id: Uuid = s["saga_id"].as_str().unwrap().parse().unwrap();
    let detail = h.engine.detail(id).await.unwrap().unwrap();
    assert_eq!(detail.started_by, "operator:local");
    // Stored in the caller's scope; shown back to the caller as its own key.
    assert_eq!(
        detail.idempotency_key.as_deref(),
        Some("operator:local/e2e-1")
    );
    assert!(text(&result).contains("completed"));

    let audit = audit_rows(&pool).await;
    assert_eq!(
        audit,
        vec![(
            "operator:local".to_string(),
            "synthetic_chain".to_string(),
            Some(id),
            "ok".to_string(),
            None
        )]
    );
    // Status, list and resource agree.
    let status = call(
        &operator,
        "get_saga_status",
        json!({"saga_id": id.to_string()}),
    )
    .await;
    assert_eq!(structured(&status)["status"], "completed");
    assert_eq!(structured(&status)["started_by"], "operator:local");
    assert_eq!(structured(&status)["idempotency_key"], "e2e-1");
    let list = call(&operator, "list_sagas", json!({})).await;
    assert_eq!(structured(&list)["sagas"][0]["id"], id.to_string());
    let templates = operator.list_all_resource_templates().await.unwrap();
    assert!(templates.iter().any(|t| t.uri_template == "saga://{id}"));
    let read = operator
        .read_resource(ReadResourceRequestParams::new(format!("saga://{id}")))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("text contents expected");
    };
    let value: Value = serde_json::from_str(text).unwrap();
    assert_eq!(value["status"], "completed");
}

#[sqlx::test(migrations = false)]
async fn a_failed_saga_is_a_tool_error_that_says_what_was_undone(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool, WAIT);
    let operator = connect(&h.facade, "operator:local").await;
    let result = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 3, "fail_at": 3, "idempotency_key": "fail-1"}),
    )
    .await;
    assert!(is_error(&result), "{}", text(&result));
    let s = structured(&result);
    assert_eq!(s["status"], "compensated");
    assert_eq!(s["error"]["step"], "step_3");
    assert_eq!(s["error"]["undone"], json!(["step_2", "step_1"]));
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Undone") && message.contains("`step_2`, `step_1`"),
        "{message}"
    );
    assert!(s["error"]["action"].is_string());
    assert!(text(&result).contains("step_2"));

    // A business failure keeps the skill's code and its action hint.
    let manager = connect(&h.facade, "manager:mia").await;
    let declined = call(
        &manager,
        "risky_refund",
        json!({"amount_cents": 1200, "decline": true, "idempotency_key": "refund-1"}),
    )
    .await;
    assert!(is_error(&declined));
    let e = &structured(&declined)["error"];
    assert_eq!(e["code"], "card_declined");
    assert_eq!(e["action"], "Ask the guest for another payment method.");
    assert_eq!(e["undone"], json!(["reserve"]));
}

#[sqlx::test(migrations = false)]
async fn one_key_gives_one_saga_and_other_input_conflicts(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let operator = connect(&h.facade, "operator:local").await;
    let args = json!({"steps": 2, "idempotency_key": "same"});
    let first = call(&operator, "synthetic_chain", args.clone()).await;
    let again = call(&operator, "synthetic_chain", args).await;
    assert_eq!(structured(&first)["saga_id"], structured(&again)["saga_id"]);
    assert_eq!(structured(&again)["status"], "completed");
    assert_eq!(structured(&first)["output"], structured(&again)["output"]);
    assert_eq!(saga_count(&pool).await, 1);

    let conflict = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 3, "idempotency_key": "same"}),
    )
    .await;
    assert!(is_error(&conflict));
    let e = &structured(&conflict)["error"];
    assert_eq!(e["code"], "idempotency_conflict");
    assert_eq!(e["saga_id"], structured(&first)["saga_id"]);
    assert_eq!(saga_count(&pool).await, 1);
    let outcomes: Vec<String> = audit_rows(&pool).await.into_iter().map(|r| r.3).collect();
    assert_eq!(outcomes, vec!["ok", "ok", "conflict"]);
}

#[sqlx::test(migrations = false)]
async fn two_principals_with_the_same_key_for_the_same_tool_get_two_sagas_each_seeing_only_its_own(
    pool: PgPool,
) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let ana = connect(&h.facade, "guest:ana@example.com").await;
    let bob = connect(&h.facade, "guest:bob@example.com").await;
    let args = json!({"note": "late checkout", "idempotency_key": "k-1"});
    let saga_of = |result: &rmcp::model::CallToolResult| -> Uuid {
        structured(result)["saga_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    let first = call(&ana, "guest_note", args.clone()).await;
    assert!(!is_error(&first), "{}", text(&first));
    let other = call(&bob, "guest_note", args.clone()).await;
    assert!(
        !is_error(&other),
        "bob is not in ana's key space: {}",
        text(&other)
    );
    let (ana_saga, bob_saga) = (saga_of(&first), saga_of(&other));
    assert_ne!(ana_saga, bob_saga);
    assert_eq!(saga_count(&pool).await, 2);
    let bobs = h.engine.detail(bob_saga).await.unwrap().unwrap();
    assert_eq!(bobs.started_by, "guest:bob@example.com");
    assert_eq!(bobs.input["guest_email"], "bob@example.com");

    // The same key and input from the same caller is still the same saga.
    let again = call(&ana, "guest_note", args).await;
    assert_eq!(saga_of(&again), ana_saga);
    assert_eq!(saga_count(&pool).await, 2);

    // Each sees only its own saga, under the key it chose.
    for (client, own, theirs) in [(&ana, ana_saga, bob_saga), (&bob, bob_saga, ana_saga)] {
        let list = call(client, "list_sagas", json!({})).await;
        let sagas = structured(&list)["sagas"].as_array().unwrap().clone();
        assert_eq!(sagas.len(), 1, "{sagas:?}");
        assert_eq!(sagas[0]["id"], own.to_string());
        assert_eq!(sagas[0]["idempotency_key"], "k-1");
        let status = call(
            client,
            "get_saga_status",
            json!({"saga_id": own.to_string()}),
        )
        .await;
        assert_eq!(structured(&status)["idempotency_key"], "k-1");
        let hidden = call(
            client,
            "get_saga_status",
            json!({"saga_id": theirs.to_string()}),
        )
        .await;
        assert_eq!(structured(&hidden)["error"]["code"], "not_found");
    }

    // Two operators sending the very same arguments get a saga each, too.
    let one = connect(&h.facade, "operator:one").await;
    let two = connect(&h.facade, "operator:two").await;
    let chain = json!({"steps": 1, "idempotency_key": "k-1"});
    let a = call(&one, "synthetic_chain", chain.clone()).await;
    let b = call(&two, "synthetic_chain", chain).await;
    assert_ne!(saga_of(&a), saga_of(&b));
    assert_eq!(saga_count(&pool).await, 4);
    // Staff see whose key a saga was started under.
    let staff = connect(&h.facade, "staff:frontdesk").await;
    let status = call(
        &staff,
        "get_saga_status",
        json!({"saga_id": ana_saga.to_string()}),
    )
    .await;
    assert_eq!(
        structured(&status)["idempotency_key"],
        "guest:ana@example.com/k-1"
    );
}

#[sqlx::test(migrations = false)]
async fn a_guest_acts_only_on_its_own_data_and_sagas(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let ana = connect(&h.facade, "guest:ana@example.com").await;
    let bob = connect(&h.facade, "guest:bob@example.com").await;

    // Naming another guest is refused, and nothing is written.
    let refused = call(
        &ana,
        "guest_note",
        json!({"guest_email": "bob@example.com", "note": "hi", "idempotency_key": "n1"}),
    )
    .await;
    assert!(is_error(&refused));
    assert_eq!(structured(&refused)["error"]["code"], "forbidden");
    assert_eq!(structured(&refused)["error"]["field"], "guest_email");
    let refused = call(
        &ana,
        "find_notes",
        json!({"guest_email": "bob@example.com"}),
    )
    .await;
    assert_eq!(structured(&refused)["error"]["code"], "forbidden");
    assert_eq!(saga_count(&pool).await, 0);

    // Leaving it out acts on the guest's own data.
    let own = call(
        &ana,
        "guest_note",
        json!({"note": "late checkout", "idempotency_key": "n1"}),
    )
    .await;
    assert!(!is_error(&own), "{}", text(&own));
    let id: Uuid = structured(&own)["saga_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let detail = h.engine.detail(id).await.unwrap().unwrap();
    assert_eq!(detail.input["guest_email"], "ana@example.com");
    assert_eq!(detail.started_by, "guest:ana@example.com");
    let notes = call(&ana, "find_notes", json!({})).await;
    assert_eq!(structured(&notes)["guest_email"], "ana@example.com");

    // Another guest cannot see, list, read or cancel it.
    let status = call(&bob, "get_saga_status", json!({"saga_id": id.to_string()})).await;
    assert!(is_error(&status));
    assert_eq!(structured(&status)["error"]["code"], "not_found");
    let cancel = call(&bob, "cancel_saga", json!({"saga_id": id.to_string()})).await;
    assert_eq!(structured(&cancel)["error"]["code"], "not_found");
    let list = call(&bob, "list_sagas", json!({})).await;
    assert_eq!(structured(&list)["sagas"], json!([]));
    let read = bob
        .read_resource(ReadResourceRequestParams::new(format!("saga://{id}")))
        .await;
    assert!(read.is_err());
    // Its owner can.
    let status = call(&ana, "get_saga_status", json!({"saga_id": id.to_string()})).await;
    assert_eq!(structured(&status)["status"], "completed");
    let list = call(&ana, "list_sagas", json!({})).await;
    assert_eq!(structured(&list)["sagas"][0]["id"], id.to_string());
    // Staff see every saga.
    let staff = connect(&h.facade, "staff:frontdesk").await;
    let status = call(
        &staff,
        "get_saga_status",
        json!({"saga_id": id.to_string()}),
    )
    .await;
    assert_eq!(structured(&status)["status"], "completed");

    let refusals: Vec<_> = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.0 == "guest:ana@example.com" && r.3 == "refused")
        .collect();
    assert_eq!(refusals.len(), 2);
}

#[sqlx::test(migrations = false)]
async fn malformed_arguments_name_the_field_and_write_nothing(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let operator = connect(&h.facade, "operator:local").await;
    let cases = [
        (json!({"steps": "three", "idempotency_key": "m"}), "steps"),
        (json!({"steps": 0, "idempotency_key": "m"}), "steps"),
        (
            json!({"steps": 2, "fail_at": 5, "idempotency_key": "m"}),
            "fail_at",
        ),
        (
            json!({"steps": 2, "colour": "red", "idempotency_key": "m"}),
            "colour",
        ),
        (json!({"idempotency_key": "m"}), "steps"),
        (json!({"steps": 2}), "idempotency_key"),
        (
            json!({"steps": 2, "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"steps": 2, "fail_kind": "sometimes", "idempotency_key": "m"}),
            "fail_kind",
        ),
    ];
    for (args, field) in cases {
        let result = call(&operator, "synthetic_chain", args.clone()).await;
        assert!(is_error(&result), "{args} was accepted");
        let e = &structured(&result)["error"];
        assert_eq!(e["code"], "invalid_input", "{args}: {e}");
        assert_eq!(e["field"], field, "{args}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{args}: {e}"
        );
    }
    let bad_id = call(&operator, "get_saga_status", json!({"saga_id": "nope"})).await;
    assert_eq!(structured(&bad_id)["error"]["field"], "saga_id");
    assert_eq!(saga_count(&pool).await, 0);
    let audit = audit_rows(&pool).await;
    assert_eq!(audit.len(), 9);
    assert!(audit
        .iter()
        .all(|r| r.3 == "invalid" && r.4.as_deref() == Some("invalid_input")));

    // An unknown tool is a protocol error.
    assert!(operator
        .call_tool(params("no_such_tool", json!({})))
        .await
        .is_err());
}

#[sqlx::test(migrations = false)]
async fn clients_declaring_tasks_get_the_saga_as_a_task_that_outlives_the_facade(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    // A short wait bound: the saga below outlasts it, so the call answers with a task.
    let h = harness(pool.clone(), Duration::from_millis(200));
    let client = connect_with(
        &h.facade,
        "operator:local",
        TestClient {
            tasks: true,
            ..TestClient::default()
        },
    )
    .await;
    let response = client
        .call_tool_once(params(
            "synthetic_chain",
            json!({"steps": 3, "step_sleep_ms": 150, "idempotency_key": "task-1"}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("a task was expected, got {response:?}");
    };
    assert_eq!(created.task.status, TaskStatus::Working);
    let task_id = created.task.task_id.clone();
    let saga: Uuid = task_id.parse().expect("the task id is the saga id");
    assert!(h.engine.detail(saga).await.unwrap().is_some());

    // A brand-new facade (as after a restart) answers for the task from PostgreSQL.
    drop(client);
    let restarted = stepwise_mcp::Facade::new(h.engine.clone(), WAIT);
    let client = connect_with(
        &restarted,
        "operator:local",
        TestClient {
            tasks: true,
            ..TestClient::default()
        },
    )
    .await;
    let done = task_reaching(&client, &task_id, TaskStatus::Completed).await;
    let wire = serde_json::to_value(&done).unwrap();
    assert_eq!(wire["taskId"], task_id);
    assert_eq!(wire["result"]["structuredContent"]["status"], "completed");
    assert_eq!(wire["result"]["structuredContent"]["saga_id"], task_id);
    assert_eq!(wire["result"]["isError"], false);

    // Another guest's view: no such task.
    let guest = connect_with(
        &restarted,
        "guest:ana@example.com",
        TestClient {
            tasks: true,
            ..TestClient::default()
        },
    )
    .await;
    assert!(guest
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .is_err());

    // A saga that ends within the wait bound is answered directly, task or not.
    let quick = client
        .call_tool_once(params(
            "synthetic_chain",
            json!({"steps": 1, "idempotency_key": "quick"}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Complete(quick) = quick else {
        panic!("a plain result was expected, got {quick:?}");
    };
    assert_eq!(structured(&quick)["status"], "completed");

    // Clients that do not declare tasks get the plain result.
    let plain = connect(&restarted, "operator:local").await;
    let result = call(
        &plain,
        "synthetic_chain",
        json!({"steps": 1, "idempotency_key": "plain"}),
    )
    .await;
    assert_eq!(structured(&result)["status"], "completed");
}

#[sqlx::test(migrations = false)]
async fn progress_is_notified_while_waiting_and_a_slow_saga_reports_running(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), Duration::from_millis(700));
    let handler = TestClient::default();
    let progress = handler.progress.clone();
    let client = connect_with(&h.facade, "operator:local", handler).await;
    let mut p = params(
        "synthetic_chain",
        json!({"steps": 4, "step_sleep_ms": 300, "idempotency_key": "slow"}),
    );
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::Number(7),
    ));
    p.meta = Some(meta);
    let result = client.call_tool(p).await.unwrap();
    // The wait bound (700 ms) is shorter than the saga (~1.2 s): a running result, not an error.
    assert!(!is_error(&result));
    let s = structured(&result);
    assert!(
        matches!(s["status"].as_str(), Some("running") | Some("pending")),
        "{s}"
    );
    assert!(text(&result).contains("get_saga_status"));
    // Notifications precede the response on the wire; give the client a moment to handle them.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = progress.lock().unwrap().clone();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!seen.is_empty(), "no progress notification");
    assert!(seen.iter().all(|n| n.total == Some(4.0)));
    let id: Uuid = s["saga_id"].as_str().unwrap().parse().unwrap();
    let audit = audit_rows(&pool).await;
    assert_eq!(audit[0].3, "pending");

    // Cancelling it undoes what was done.
    let cancel = call(
        &client,
        "cancel_saga",
        json!({"saga_id": id.to_string(), "reason": "test"}),
    )
    .await;
    assert!(!is_error(&cancel), "{}", text(&cancel));
    assert_eq!(structured(&cancel)["cancel_requested"], true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let detail = h.engine.detail(id).await.unwrap().unwrap();
        if detail.status.is_terminal() {
            assert_eq!(detail.status.as_str(), "compensated");
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn operators_retry_restart_and_fork_through_tools(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let operator = connect(&h.facade, "operator:ops").await;
    // The undo of step_1 fails twice in total; with two attempts per round the saga ends
    // `failed`, waiting for an operator.
    let failed = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 2, "fail_at": 2, "compensation_failures": 2, "max_attempts": 2, "idempotency_key": "ops-1"}),
    )
    .await;
    assert!(is_error(&failed));
    let s = structured(&failed);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"]["not_undone"], json!(["step_1"]));
    assert!(s["error"]["action"]
        .as_str()
        .unwrap()
        .contains("stepwise sagas retry"));
    let id = s["saga_id"].as_str().unwrap().to_string();

    let retried = call(
        &operator,
        "retry_saga",
        json!({"saga_id": id, "reason": "api back"}),
    )
    .await;
    let s = structured(&retried);
    assert_eq!(s["saga_id"], id);
    assert_eq!(s["status"], "compensated", "{s}");
    assert_eq!(s["error"]["undone"], json!(["step_1"]));
    let detail = h.engine.detail(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(detail
        .events
        .iter()
        .any(|e| e.kind.as_str() == "operator_retry" && e.actor == "operator:ops"));

    // Retrying a compensated saga is refused; restart makes a new, linked saga.
    let refused = call(&operator, "retry_saga", json!({"saga_id": id})).await;
    assert_eq!(structured(&refused)["error"]["code"], "replay_refused");
    let ok = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 3, "idempotency_key": "ops-2"}),
    )
    .await;
    let done_id = structured(&ok)["saga_id"].as_str().unwrap().to_string();
    let restarted = call(&operator, "restart_saga", json!({"saga_id": id})).await;
    let new_id = structured(&restarted)["saga_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", text(&restarted)))
        .to_string();
    assert_ne!(new_id, id);
    // The same input fails the same way in the new saga.
    assert_eq!(structured(&restarted)["status"], "failed");
    let detail = h
        .engine
        .detail(new_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.replay_of.map(|r| r.to_string()), Some(id.clone()));
    let refused = call(&operator, "restart_saga", json!({"saga_id": done_id})).await;
    assert_eq!(structured(&refused)["error"]["code"], "replay_refused");
    let forked = call(
        &operator,
        "fork_saga",
        json!({"saga_id": done_id, "from_step": "step_3"}),
    )
    .await;
    assert_eq!(
        structured(&forked)["status"],
        "completed",
        "{}",
        text(&forked)
    );
    let unknown = call(
        &operator,
        "fork_saga",
        json!({"saga_id": done_id, "from_step": "step_9"}),
    )
    .await;
    assert_eq!(structured(&unknown)["error"]["field"], "from_step");

    // Nobody else has these tools.
    let manager = connect(&h.facade, "manager:mia").await;
    let refused = call(&manager, "restart_saga", json!({"saga_id": done_id})).await;
    assert_eq!(structured(&refused)["error"]["code"], "forbidden");
}

#[sqlx::test(migrations = false)]
async fn tasks_cancel_compensates_the_saga_and_the_task_ends_cancelled(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), Duration::from_millis(200));
    let tasks_client = TestClient {
        tasks: true,
        ..TestClient::default()
    };
    let client = connect_with(&h.facade, "operator:local", tasks_client.clone()).await;
    let response = client
        .call_tool_once(params(
            "synthetic_chain",
            json!({"steps": 5, "step_sleep_ms": 200, "idempotency_key": "to-cancel"}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("a task was expected, got {response:?}");
    };
    let task_id = created.task.task_id.clone();

    // Staff may not cancel sagas; an operator may.
    let staff = connect_with(&h.facade, "staff:frontdesk", tasks_client).await;
    assert!(staff
        .cancel_task(rmcp::model::CancelTaskParams::new(task_id.clone()))
        .await
        .is_err());
    client
        .cancel_task(rmcp::model::CancelTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    task_reaching(&client, &task_id, TaskStatus::Cancelled).await;
    let detail = h
        .engine
        .detail(task_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.status.as_str(), "compensated");
    assert!(detail
        .events
        .iter()
        .any(|e| e.kind.as_str() == "cancel_requested" && e.actor == "operator:local"));
    // Polls are audited too (`tasks/get`), as many as the loop made.
    let tools: Vec<String> = audit_rows(&pool)
        .await
        .into_iter()
        .map(|r| r.1)
        .filter(|tool| tool != "tasks/get")
        .collect();
    assert_eq!(
        tools,
        vec!["synthetic_chain", "tasks/cancel", "tasks/cancel"]
    );
}

#[sqlx::test(migrations = false)]
async fn reading_a_saga_as_a_resource_or_a_task_is_audited_like_a_tool_call(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), WAIT);
    let with_tasks = TestClient {
        tasks: true,
        ..TestClient::default()
    };
    let operator = connect_with(&h.facade, "operator:local", with_tasks.clone()).await;
    let ana = connect_with(&h.facade, "guest:ana@example.com", with_tasks).await;
    let done = call(
        &operator,
        "synthetic_chain",
        json!({"steps": 1, "idempotency_key": "read-me"}),
    )
    .await;
    let id: Uuid = structured(&done)["saga_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let uri = format!("saga://{id}");
    operator
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    assert!(ana
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .is_err());
    assert!(operator
        .read_resource(ReadResourceRequestParams::new("saga://nope"))
        .await
        .is_err());
    operator
        .get_task(GetTaskParams::new(id.to_string()))
        .await
        .unwrap();
    assert!(ana
        .get_task(GetTaskParams::new(id.to_string()))
        .await
        .is_err());
    assert!(ana
        .cancel_task(rmcp::model::CancelTaskParams::new(id.to_string()))
        .await
        .is_err());

    let row =
        |principal: &str, tool: &str, saga: Option<Uuid>, outcome: &str, code: Option<&str>| {
            (
                principal.to_string(),
                tool.to_string(),
                saga,
                outcome.to_string(),
                code.map(str::to_string),
            )
        };
    // Someone else's saga, like a malformed URI, is "not found": the guest learns nothing,
    // and the audit keeps that it asked.
    assert_eq!(
        audit_rows(&pool).await,
        vec![
            row("operator:local", "synthetic_chain", Some(id), "ok", None),
            row("operator:local", "resources/read", Some(id), "ok", None),
            row(
                "guest:ana@example.com",
                "resources/read",
                None,
                "invalid",
                Some("not_found")
            ),
            row(
                "operator:local",
                "resources/read",
                None,
                "invalid",
                Some("not_found")
            ),
            row("operator:local", "tasks/get", Some(id), "ok", None),
            row(
                "guest:ana@example.com",
                "tasks/get",
                None,
                "invalid",
                Some("not_found")
            ),
            row(
                "guest:ana@example.com",
                "tasks/cancel",
                None,
                "invalid",
                Some("not_found")
            ),
        ]
    );
}

/// A client polling a task (as `tasks/get` every 500 ms for ten minutes would: 1,200 polls)
/// writes one audit row for its first read and one for each read whose answer changed, the
/// last one (the saga completed) included; polls answering what the last row answered write
/// nothing (docs/mcp.md, Audit).
#[sqlx::test(migrations = false)]
async fn polling_a_task_audits_the_first_read_and_each_change_not_every_poll(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness(pool.clone(), Duration::from_millis(100));
    let with_tasks = TestClient {
        tasks: true,
        ..TestClient::default()
    };
    let client = connect_with(&h.facade, "operator:local", with_tasks.clone()).await;
    let response = client
        .call_tool_once(params(
            "synthetic_chain",
            json!({"steps": 3, "step_sleep_ms": 400, "idempotency_key": "polled"}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("a task was expected, got {response:?}");
    };
    let task_id = created.task.task_id.clone();
    type Row = (String, String, Option<Uuid>, String, Option<String>);
    let polls_rows = |rows: &[Row]| rows.iter().filter(|r| r.1 == "tasks/get").count();

    let mut polls = 0;
    let mut answers = Vec::new();
    let mut completed_at_poll = None;
    while polls < 1_200 || completed_at_poll.is_none() {
        let got = client
            .get_task(GetTaskParams::new(task_id.clone()))
            .await
            .unwrap();
        polls += 1;
        let answer = (got.task.status(), got.task.task.status_message.clone());
        if answers.last() != Some(&answer) {
            answers.push(answer);
        }
        if got.task.status() == TaskStatus::Completed && completed_at_poll.is_none() {
            completed_at_poll = Some(polls);
        }
        assert!(polls < 100_000, "the saga never completed");
    }
    let rows = audit_rows(&pool).await;
    let written = polls_rows(&rows);
    eprintln!(
        "{polls} polls of tasks/get ({} distinct answers seen, completed at poll {completed_at_poll:?}) wrote {written} audit rows",
        answers.len()
    );
    // At least the first read and the completed one; at most one per change of the saga
    // (3 steps, each begun and done, and the end), never one per poll.
    assert!(written >= 2, "{written} rows for {polls} polls");
    assert!(written <= 8, "{written} rows for {polls} polls");
    assert!(written >= answers.len().min(2));
    let id: Uuid = task_id.parse().unwrap();
    assert!(rows
        .iter()
        .filter(|r| r.1 == "tasks/get")
        .all(|r| r.2 == Some(id) && r.3 == "ok"));

    // The saga has ended: more polls of the same answer write nothing more.
    for _ in 0..300 {
        client
            .get_task(GetTaskParams::new(task_id.clone()))
            .await
            .unwrap();
    }
    assert_eq!(polls_rows(&audit_rows(&pool).await), written);

    // Another caller's first read is its own row; a read of an unknown task is recorded once
    // per answer too, and a resource read like a task read.
    let staff = connect_with(&h.facade, "staff:frontdesk", with_tasks).await;
    for _ in 0..50 {
        staff
            .get_task(GetTaskParams::new(task_id.clone()))
            .await
            .unwrap();
        assert!(client
            .get_task(GetTaskParams::new("no-such-task".to_string()))
            .await
            .is_err());
        client
            .read_resource(ReadResourceRequestParams::new(format!("saga://{id}")))
            .await
            .unwrap();
    }
    let rows = audit_rows(&pool).await;
    let count = |principal: &str, tool: &str, outcome: &str| {
        rows.iter()
            .filter(|r| r.0 == principal && r.1 == tool && r.3 == outcome)
            .count()
    };
    assert_eq!(count("staff:frontdesk", "tasks/get", "ok"), 1);
    assert_eq!(count("operator:local", "tasks/get", "invalid"), 1);
    assert_eq!(count("operator:local", "resources/read", "ok"), 1);
}
