//! The sandbox's Stripe-style webhooks over real HTTP: events posted to a receiver run by the
//! test, signed as Stripe signs, retried on non-2xx; and the 3-D Secure page that plays the
//! guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stepwise_sandbox::{Sandbox, SandboxHandle};

const SECRET: &str = "whsec_test_0123456789abcdef";

/// What the receiver got, and how many of the first requests it fails with 500.
#[derive(Default)]
struct Inbox {
    received: Vec<(Option<String>, Vec<u8>)>,
    fail_first: usize,
}

type Shared = Arc<Mutex<Inbox>>;

async fn receive(State(inbox): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut inbox = inbox.lock().unwrap();
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    inbox.received.push((signature, body.to_vec()));
    if inbox.received.len() <= inbox.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A receiver on a free port; returns its URL and its inbox.
async fn receiver(fail_first: usize) -> (String, Shared) {
    let inbox: Shared = Arc::new(Mutex::new(Inbox {
        fail_first,
        ..Inbox::default()
    }));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), inbox)
}

struct Env {
    sandbox: SandboxHandle,
    http: reqwest::Client,
}

impl Env {
    async fn new() -> Self {
        Self {
            sandbox: Sandbox::start("127.0.0.1:0".parse().unwrap(), 7)
                .await
                .unwrap(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    async fn configure(&self, url: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/_sandbox/webhooks"))
            .json(&json!({"url": url, "secret": SECRET}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn intent(&self, pm: &str) -> Value {
        self.http
            .post(self.url("/stripe/v1/payment_intents"))
            .bearer_auth("sk_test_sandbox")
            .form(&[
                ("amount", "12900"),
                ("currency", "usd"),
                ("payment_method", pm),
                ("confirm", "true"),
                ("metadata[saga_id]", "0190a0b0-0000-7000-8000-000000000001"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The ledger's webhooks once the first one has recorded `attempts` attempts (the sender
    /// records an attempt after its answer, a little after the receiver saw it).
    async fn webhooks_after(&self, attempts: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sent = self.webhooks().await;
            if sent.first().and_then(|w| w["attempts"].as_u64()) == Some(attempts) {
                return sent;
            }
            assert!(
                Instant::now() < deadline,
                "attempts never reached {attempts}: {sent:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn webhooks(&self) -> Vec<Value> {
        let ledger: Value = self
            .http
            .get(self.url("/_sandbox/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ledger["webhooks"].as_array().cloned().unwrap_or_default()
    }
}

/// Waits until `check` holds on the inbox (at most `within`).
async fn until(inbox: &Shared, within: Duration, check: impl Fn(&Inbox) -> bool) {
    let deadline = Instant::now() + within;
    while !check(&inbox.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "the webhook did not come in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test's own reading of Stripe's scheme: `t=..,v1=..` with v1 = HMAC-SHA256(t.body).
fn signed_by(header: &str, body: &[u8], secret: &str) -> bool {
    let parts: Vec<(&str, &str)> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let t = parts.iter().find(|(k, _)| *k == "t").unwrap().1;
    let v1 = parts.iter().find(|(k, _)| *k == "v1").unwrap().1;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    expected == v1 && (0..=5).contains(&age)
}

#[tokio::test]
async fn a_succeeded_payment_is_posted_as_a_stripe_event_signed_with_the_secret() {
    let env = Env::new().await;
    let (url, inbox) = receiver(0).await;
    let (status, settings) = env.configure(&url).await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["url"], url.as_str());
    assert!(
        settings.get("secret").is_none(),
        "the secret is never echoed"
    );
    let intent = env.intent("pm_card_visa").await;
    assert_eq!(intent["status"], "succeeded");

    until(&inbox, Duration::from_secs(5), |i| !i.received.is_empty()).await;
    let (signature, body) = inbox.lock().unwrap().received[0].clone();
    let signature = signature.expect("a Stripe-Signature header");
    assert!(signed_by(&signature, &body, SECRET), "{signature}");
    assert!(!signed_by(&signature, &body, "whsec_another"));
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "payment_intent.succeeded");
    assert!(event["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(event["data"]["object"]["id"], intent["id"]);
    assert_eq!(event["data"]["object"]["status"], "succeeded");
    assert_eq!(
        event["data"]["object"]["metadata"]["saga_id"],
        "0190a0b0-0000-7000-8000-000000000001"
    );

    let sent = env.webhooks_after(1).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["id"], event["id"]);
    assert_eq!(sent[0]["delivered"], true);
    assert_eq!(sent[0]["attempts"], 1);
    assert_eq!(sent[0]["last_status"], 200);
}

#[tokio::test]
async fn an_endpoint_answering_500_gets_the_same_event_again_with_backoff() {
    let env = Env::new().await;
    let (url, inbox) = receiver(2).await;
    env.configure(&url).await;
    let began = Instant::now();
    env.intent("pm_card_chargeDeclined").await;
    until(&inbox, Duration::from_secs(5), |i| i.received.len() >= 3).await;
    // 0.2 s after the first failure, 0.4 s after the second.
    assert!(began.elapsed() >= Duration::from_millis(600));
    let bodies: Vec<Value> = inbox
        .lock()
        .unwrap()
        .received
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert!(bodies.iter().all(|b| b["id"] == bodies[0]["id"]));
    assert_eq!(bodies[0]["type"], "payment_intent.payment_failed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inbox.lock().unwrap().received.len(),
        3,
        "no more after a 200"
    );
    let sent = env.webhooks_after(3).await;
    assert_eq!(sent[0]["attempts"], 3);
    assert_eq!(sent[0]["delivered"], true);
}

#[tokio::test]
async fn an_endpoint_that_never_answers_2xx_is_given_up_after_six_attempts() {
    let env = Env::new().await;
    let (url, inbox) = receiver(usize::MAX).await;
    env.configure(&url).await;
    env.intent("pm_card_visa").await;
    until(&inbox, Duration::from_secs(10), |i| i.received.len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(inbox.lock().unwrap().received.len(), 6);
    let sent = env.webhooks_after(6).await;
    assert_eq!(sent[0]["attempts"], 6);
    assert_eq!(sent[0]["delivered"], false);
    assert_eq!(sent[0]["last_status"], 500);
}

#[tokio::test]
async fn the_3d_secure_page_plays_the_guest_and_each_outcome_sends_its_event() {
    let env = Env::new().await;
    let (url, inbox) = receiver(0).await;
    env.configure(&url).await;
    let first = env.intent("pm_card_threeDSecure2Required").await;
    let second = env.intent("pm_card_authenticationRequired").await;
    for intent in [&first, &second] {
        assert_eq!(intent["status"], "requires_action");
        assert_eq!(intent["next_action"]["type"], "redirect_to_url");
    }
    let page_url = first["next_action"]["redirect_to_url"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page = env.http.get(&page_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("outcome=succeed"));

    let done: Value = env
        .http
        .post(format!("{page_url}?outcome=succeed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded");
    let second_url = second["next_action"]["redirect_to_url"]["url"]
        .as_str()
        .unwrap();
    let failed = env
        .http
        .post(format!("{second_url}?outcome=fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 200);
    let again = env
        .http
        .post(format!("{second_url}?outcome=succeed"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400, "only an intent requiring action");

    until(&inbox, Duration::from_secs(5), |i| i.received.len() >= 4).await;
    let events: Vec<(String, String)> = inbox
        .lock()
        .unwrap()
        .received
        .iter()
        .map(|(_, b)| {
            let e: Value = serde_json::from_slice(b).unwrap();
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["object"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    for expected in [
        ("payment_intent.requires_action".to_string(), id(&first)),
        ("payment_intent.requires_action".to_string(), id(&second)),
        ("payment_intent.succeeded".to_string(), id(&first)),
        ("payment_intent.payment_failed".to_string(), id(&second)),
    ] {
        assert!(events.contains(&expected), "{expected:?} in {events:?}");
    }
}

#[tokio::test]
async fn webhook_settings_are_checked_kept_across_a_reset_and_can_be_cleared() {
    let env = Env::new().await;
    let (status, body) = env.configure("ftp://example.com/hook").await;
    assert_eq!(status, 400, "{body}");
    let (url, inbox) = receiver(0).await;
    env.configure(&url).await;
    let reset = env
        .http
        .post(env.url("/_sandbox/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    let settings: Value = env
        .http
        .get(env.url("/_sandbox/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["url"], url.as_str());
    assert_eq!(settings["max_attempts"], 6);
    env.intent("pm_card_visa").await;
    until(&inbox, Duration::from_secs(5), |i| i.received.len() == 1).await;

    let cleared = env
        .http
        .post(env.url("/_sandbox/webhooks"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    env.intent("pm_card_visa").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inbox.lock().unwrap().received.len(),
        1,
        "nothing sent once cleared"
    );
    assert_eq!(env.webhooks().await.len(), 1);
}
