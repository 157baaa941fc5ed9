//! The hotel's 3-D Secure checkout: the saga waits for `payment_authenticated`, which Stripe's
//! signed webhook delivers through `POST /webhooks/stripe` (served here on a loopback port over
//! the test's engine; the sandbox posts to it over HTTP). Real PostgreSQL, the sandbox over
//! HTTP; the saga's clock is the test's manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod hotel_support;

use common::database_url;
use hotel_support::{booking, checkout_input, error_code, objects, status, World};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::Stdio;
use std::time::{Duration, Instant};
use stepwise::http::stripe_webhook::{self, ACTOR};
use stepwise_engine::{Clock, EventKind, SagaDetail, SagaStatus};
use stepwise_sandbox::WebhookConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "whsec_hotel_waits_test_secret";
const GUEST: &str = "emma.johnson@example.com";
const THREE_DS: &str = "pm_card_threeDSecure2Required";

/// The webhook endpoint over the world's engine, on a loopback port; returns its URL.
async fn endpoint(w: &World, stop: &CancellationToken) -> String {
    stripe_webhook::serve_loopback(w.engine.clone(), SECRET.into(), stop.clone())
        .await
        .unwrap()
}

/// Points the sandbox's webhooks at `url`.
fn send_webhooks_to(w: &World, url: &str) {
    w.sandbox
        .set_webhooks(Some(WebhookConfig {
            url: url.into(),
            secret: SECRET.into(),
        }))
        .unwrap();
}

async fn detail(w: &World, id: Uuid) -> SagaDetail {
    w.engine.detail(id).await.unwrap().unwrap()
}

/// Starts a 3-D Secure checkout and runs it until it waits; returns the saga and its
/// `waiting_for`.
async fn waiting_checkout(w: &World, key: &str) -> (Uuid, Value) {
    let id = w
        .start(
            "process_guest_checkout",
            checkout_input(key, GUEST, THREE_DS),
        )
        .await
        .unwrap();
    w.worker.run_until_idle().await.unwrap();
    let saga = detail(w, id).await;
    assert_eq!(saga.status, SagaStatus::Waiting, "{:?}", saga.error);
    (id, saga.waiting_for.clone().expect("waiting_for"))
}

fn received(saga: &SagaDetail) -> Vec<Value> {
    saga.events
        .iter()
        .filter(|e| e.kind == EventKind::EventReceived)
        .map(|e| {
            let mut detail = e.detail.clone().unwrap_or(Value::Null);
            detail["actor_column"] = json!(e.actor);
            detail
        })
        .collect()
}

/// Polls until the saga has received `n` events (the sandbox's webhook is asynchronous).
async fn until_received(w: &World, id: Uuid, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(&detail(w, id).await).len() < n {
        assert!(Instant::now() < deadline, "no event reached saga {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Plays the guest on the sandbox's 3-D Secure page.
async fn guest_authenticates(w: &World, url: &str, outcome: &str) {
    let response = w
        .http
        .post(format!("{url}?outcome={outcome}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn intent_of(ledger: &Value, id: &str) -> Value {
    objects(ledger, "payment_intent")
        .into_iter()
        .find(|p| p["id"] == id)
        .expect("the payment intent")
}

/// A signed webhook post of `event` to `url`, as Stripe sends it.
async fn post_event(w: &World, url: &str, event: &Value, secret: &str, at: i64) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let signature = stepwise_sandbox::webhooks::signature_header(secret, at, &body);
    let response = w
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn succeeded_event(event_id: &str, intent: &Value) -> Value {
    json!({"id": event_id, "object": "event", "type": "payment_intent.succeeded",
           "created": chrono::Utc::now().timestamp(), "data": {"object": intent}})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test(migrations = false)]
async fn a_3ds_checkout_waits_for_the_guest_and_completes_through_the_signed_webhook(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let stop = CancellationToken::new();
    send_webhooks_to(&w, &endpoint(&w, &stop).await);

    let (id, waiting) = waiting_checkout(&w, "3ds-ok").await;
    assert_eq!(waiting["event"], "payment_authenticated");
    assert_eq!(waiting["step"], "authenticate_payment");
    let url = waiting["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/_sandbox/3ds/pi_", w.sandbox.base_url())));
    let prompt = waiting["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("authenticate") && prompt.contains(&url),
        "{prompt}"
    );
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(waiting["until"].clone()).unwrap();
    let minutes = (until - w.clock.now()).num_minutes();
    assert!(
        (14..=15).contains(&minutes),
        "default deadline 15 min: {minutes}"
    );
    let pi = url.rsplit('/').next().unwrap().to_string();
    let ledger = w.ledger().await;
    assert_eq!(intent_of(&ledger, &pi)["status"], "requires_action");
    assert_eq!(
        intent_of(&ledger, &pi)["metadata"]["saga_id"],
        id.to_string()
    );

    guest_authenticates(&w, &url, "succeed").await;
    until_received(&w, id, 1).await;
    let done = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&done), SagaStatus::Completed, "{:?}", done.error);
    let events = received(&done);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "payment_authenticated");
    assert_eq!(events[0]["actor"], ACTOR);
    assert!(events[0]["key"].as_str().unwrap().starts_with("evt_"));
    let ledger = w.ledger().await;
    assert_eq!(intent_of(&ledger, &pi)["status"], "succeeded");
    let output = done.output.clone().unwrap();
    assert_eq!(output["payment_intent_id"], pi.as_str());
    assert_eq!(
        booking(&ledger, output["booking_number"].as_str().unwrap())["Status__c"],
        "Checked Out"
    );
    assert!(objects(&ledger, "refund").is_empty());
    stop.cancel();
}

#[sqlx::test(migrations = false)]
async fn a_failed_authentication_compensates_and_charges_nothing(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let stop = CancellationToken::new();
    send_webhooks_to(&w, &endpoint(&w, &stop).await);
    let before = w.ledger().await;
    let (id, waiting) = waiting_checkout(&w, "3ds-fail").await;
    let url = waiting["url"].as_str().unwrap().to_string();
    let pi = url.rsplit('/').next().unwrap().to_string();

    guest_authenticates(&w, &url, "fail").await;
    until_received(&w, id, 1).await;
    let done = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&done), SagaStatus::Compensated);
    assert_eq!(error_code(&done), "payment_authentication_failed");
    let ledger = w.ledger().await;
    let intent = intent_of(&ledger, &pi);
    assert_eq!(
        intent["status"], "canceled",
        "a failed payment is cancelled"
    );
    assert_eq!(intent["amount_received"], 0);
    assert!(objects(&ledger, "refund").is_empty(), "nothing to refund");
    assert_eq!(
        objects(&ledger, "Payment_Transaction__c"),
        objects(&before, "Payment_Transaction__c"),
        "no payment recorded"
    );
    assert_eq!(
        objects(&ledger, "Booking__c"),
        objects(&before, "Booking__c"),
        "the stay is untouched"
    );
    stop.cancel();
}

#[sqlx::test(migrations = false)]
async fn a_3ds_checkout_past_its_deadline_cancels_the_payment_and_keeps_the_stay(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::with_payment_auth_timeout(pool, Duration::from_secs(90)).await;
    let before = w.ledger().await;
    let (id, waiting) = waiting_checkout(&w, "3ds-late").await;
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(waiting["until"].clone()).unwrap();
    assert_eq!(
        (until - w.clock.now()).num_seconds(),
        90,
        "the configured deadline"
    );
    let pi = waiting["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    w.clock.advance(Duration::from_secs(60));
    w.worker.run_until_idle().await.unwrap();
    assert_eq!(detail(&w, id).await.status, SagaStatus::Waiting, "not yet");
    w.clock.advance(Duration::from_secs(31));
    let done = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&done), SagaStatus::Compensated);
    assert_eq!(error_code(&done), "wait_timed_out");
    assert!(done
        .events
        .iter()
        .any(|e| e.kind == EventKind::WaitTimedOut));
    let ledger = w.ledger().await;
    let intent = intent_of(&ledger, &pi);
    assert_eq!(intent["status"], "canceled");
    assert_eq!(intent["amount_received"], 0);
    assert!(
        objects(&ledger, "refund").is_empty(),
        "cancelled, not refunded"
    );
    assert_eq!(
        objects(&ledger, "Booking__c"),
        objects(&before, "Booking__c"),
        "the stay is untouched"
    );
}

#[sqlx::test(migrations = false)]
async fn a_forged_or_stale_signature_is_refused_and_nothing_is_delivered(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let stop = CancellationToken::new();
    let url = endpoint(&w, &stop).await;
    // The sandbox does not send: the test posts every webhook itself.
    let (id, waiting) = waiting_checkout(&w, "3ds-forged").await;
    let pi = waiting["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    guest_authenticates(&w, waiting["url"].as_str().unwrap(), "succeed").await;
    let intent = intent_of(&w.ledger().await, &pi);
    let event = succeeded_event("evt_forged", &intent);

    let (code, body) = post_event(&w, &url, &event, "whsec_someone_else", now()).await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = post_event(&w, &url, &event, SECRET, now() - 301).await;
    assert_eq!(code, 400, "older than five minutes");
    let unsigned = w.http.post(&url).json(&event).send().await.unwrap();
    assert_eq!(unsigned.status(), 400);
    // A body changed after signing.
    let body = serde_json::to_vec(&event).unwrap();
    let signature = stepwise_sandbox::webhooks::signature_header(SECRET, now(), &body);
    let mut changed = event.clone();
    changed["data"]["object"]["amount"] = json!(1);
    let tampered = w
        .http
        .post(&url)
        .header("stripe-signature", signature)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 400);

    let saga = detail(&w, id).await;
    assert!(received(&saga).is_empty(), "nothing delivered");
    assert_eq!(saga.status, SagaStatus::Waiting);

    // Well signed but not for us: 200 and ignored (Stripe would retry anything else).
    let mut stranger = intent.clone();
    stranger["metadata"] = json!({});
    for ignored in [
        succeeded_event("evt_no_saga", &stranger),
        json!({"id": "evt_other_type", "type": "charge.refunded", "data": {"object": intent}}),
        {
            let mut unknown = intent.clone();
            unknown["metadata"]["saga_id"] = json!(Uuid::now_v7().to_string());
            succeeded_event("evt_unknown_saga", &unknown)
        },
    ] {
        let (code, body) = post_event(&w, &url, &ignored, SECRET, now()).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["outcome"], "ignored", "{body}");
    }
    assert!(received(&detail(&w, id).await).is_empty());
    stop.cancel();
}

#[sqlx::test(migrations = false)]
async fn a_webhook_delivered_three_times_is_one_event(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let stop = CancellationToken::new();
    let url = endpoint(&w, &stop).await;
    let (id, waiting) = waiting_checkout(&w, "3ds-thrice").await;
    let pi = waiting["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    guest_authenticates(&w, waiting["url"].as_str().unwrap(), "succeed").await;
    let event = succeeded_event("evt_thrice", &intent_of(&w.ledger().await, &pi));

    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let (code, body) = post_event(&w, &url, &event, SECRET, now()).await;
        assert_eq!(code, 200, "{body}");
        outcomes.push(body["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes, ["delivered", "duplicate", "duplicate"]);
    let done = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&done), SagaStatus::Completed, "{:?}", done.error);
    // Stripe may redeliver after the saga moved on: still one event.
    let (code, body) = post_event(&w, &url, &event, SECRET, now()).await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("duplicate")));
    let events = received(&detail(&w, id).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["key"], "evt_thrice");
    stop.cancel();
}

#[sqlx::test(migrations = false)]
async fn without_a_secret_the_endpoint_refuses_every_event_with_503(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let app = stripe_webhook::router(w.engine.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}{}", stripe_webhook::PATH);
    let event = succeeded_event("evt_x", &json!({"id": "pi_x", "metadata": {}}));
    let (code, body) = post_event(&w, &url, &event, SECRET, now()).await;
    assert_eq!(code, 503);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("STEPWISE_STRIPE_WEBHOOK_SECRET"));
}

/// The real binary: `stepwise serve` mounts `/webhooks/stripe`, verifies with
/// STEPWISE_STRIPE_WEBHOOK_SECRET, and its own worker finishes the checkout once the sandbox's
/// webhook arrives.
#[sqlx::test(migrations = false)]
async fn stepwise_serve_receives_the_sandbox_webhook_and_finishes_the_checkout(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let db = database_url(&pool).await;
    let w = World::new(pool).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db)
        .env("RUST_LOG", "warn")
        .env("STEPWISE_SANDBOX_URL", w.sandbox.base_url())
        .env("STEPWISE_STRIPE_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("stepwise serve: listening on ") {
                return rest.split(' ').next().unwrap().to_string();
            }
        }
        panic!("stepwise exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("{base}{}", stripe_webhook::PATH);
    send_webhooks_to(&w, &url);

    // The server's worker runs it (the saga's clock is the wall clock there).
    let id = w
        .start(
            "process_guest_checkout",
            checkout_input("3ds-serve", GUEST, THREE_DS),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let saga = detail(&w, id).await;
        if saga.status == SagaStatus::Waiting {
            break saga.waiting_for.unwrap();
        }
        assert!(Instant::now() < deadline, "never waited: {:?}", saga.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pi = waiting["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let intent = intent_of(&w.ledger().await, &pi);
    let (code, _) = post_event(
        &w,
        &url,
        &succeeded_event("evt_forged", &intent),
        "whsec_bad",
        now(),
    )
    .await;
    assert_eq!(code, 400, "the server checks signatures");

    guest_authenticates(&w, waiting["url"].as_str().unwrap(), "succeed").await;
    let done = w.engine.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    let saga = detail(&w, id).await;
    let events = received(&saga);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], ACTOR);
    // The sandbox records the attempt once it has the answer, which may be a little later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sent = w.ledger().await["webhooks"].clone();
        if sent
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["type"] == "payment_intent.succeeded" && h["delivered"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{sent}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_checkout_that_waits_for_3ds_cancels_the_payment(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let (id, waiting) = waiting_checkout(&w, "3ds-cancel").await;
    let pi = waiting["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(w
        .engine
        .cancel(id, "operator:test", Some("guest left"))
        .await
        .unwrap());
    let done = w.settle(&[id]).await.remove(0);
    assert_eq!(status(&done), SagaStatus::Compensated);
    let ledger = w.ledger().await;
    assert_eq!(
        intent_of(&ledger, &pi)["status"],
        "canceled",
        "the guest can no longer pay for a checkout that did not happen"
    );
    assert!(objects(&ledger, "refund").is_empty());
}

/// `stepwise serve` without external services or a secret: its in-process sandbox is wired to
/// its own `/webhooks/stripe` with a generated secret, so a 3-D Secure checkout completes with
/// nothing configured.
#[sqlx::test(migrations = false)]
async fn stepwise_serve_wires_its_in_process_sandbox_to_its_own_webhook_endpoint(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let db = database_url(&pool).await;
    let w = World::new(pool).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db)
        .env("RUST_LOG", "warn")
        .env_remove("STEPWISE_SANDBOX_URL")
        .env_remove("STEPWISE_STRIPE_WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("stepwise serve: listening on ") {
                return;
            }
        }
        panic!("stepwise exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let id = w
        .start(
            "process_guest_checkout",
            checkout_input("3ds-in-process", GUEST, THREE_DS),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let saga = detail(&w, id).await;
        if saga.status == SagaStatus::Waiting {
            break saga.waiting_for.unwrap();
        }
        assert!(Instant::now() < deadline, "never waited: {:?}", saga.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let page = waiting["url"].as_str().unwrap();
    assert!(
        !page.starts_with(&w.sandbox.base_url()),
        "the server's own sandbox took the payment: {page}"
    );
    guest_authenticates(&w, page, "succeed").await;
    let done = w.engine.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    let events = received(&detail(&w, id).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], ACTOR);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn stepwise_sandbox_takes_its_webhook_endpoint_from_the_command_line() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let alone = run(&[
        "sandbox",
        "--addr",
        "127.0.0.1:0",
        "--webhook-url",
        "http://x/hook",
    ]);
    assert_eq!(
        alone.status.code(),
        Some(2),
        "the secret is required with the URL"
    );
    let bad = run(&[
        "sandbox",
        "--addr",
        "127.0.0.1:0",
        "--webhook-url",
        "ftp://x/hook",
        "--webhook-secret",
        "whsec_x",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("http://"));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "sandbox",
            "--addr",
            "127.0.0.1:0",
            "--webhook-url",
            "http://127.0.0.1:9/webhooks/stripe",
        ])
        .args(["--webhook-secret", SECRET])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let base = first
        .strip_prefix("sandbox listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();
    let settings: Value = reqwest::get(format!("{base}/_sandbox/webhooks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["url"], "http://127.0.0.1:9/webhooks/stripe");
    assert_eq!(settings["secret_set"], true);
    child.kill().await.unwrap();
}

/// Skills that cannot wait (a booking's deposit) still refuse a card that needs 3-D Secure,
/// and cancel its payment so the guest cannot complete it for a booking that failed.
#[sqlx::test(migrations = false)]
async fn a_deposit_that_needs_3ds_fails_and_its_payment_is_cancelled(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let w = World::new(pool).await;
    let ledger = w.ledger().await;
    let room = hotel_support::free_vacant_rooms(&ledger, 30, 32).remove(0);
    let mut input =
        hotel_support::booking_input("3ds-deposit", "new.guest@example.com", &room, 30, 32);
    input["payment_method_id"] = json!("pm_card_authenticationRequired");
    let done = w.run("create_booking", input).await;
    assert_eq!(status(&done), SagaStatus::Compensated);
    assert_eq!(error_code(&done), "payment_requires_action");
    let intents = objects(&w.ledger().await, "payment_intent");
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "canceled");
    assert_eq!(intents[0]["amount_received"], 0);
}
