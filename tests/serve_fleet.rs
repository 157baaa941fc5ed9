//! Two `stepwise serve` processes behind a round-robin proxy (the test's, one backend per TCP
//! connection, every request on a new connection) serve one MCP client with no sticky
//! sessions (docs/mcp.md, "Several facades"): the session begun on one is restored by the other
//! from PostgreSQL, a booking, a check-in and a 3-D Secure checkout run with consecutive
//! requests alternating between the processes, and the client's answer to an
//! `elicitation/create` that one process sent reaches it through the other. Then one process is
//! killed mid-session and the survivor serves the rest: nothing the client was told succeeded is
//! lost. Both share one sandbox and one PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;
mod http_support;

use common::{database_url, json_of, stepwise};
use http_support::{call_tool, mcp_post, serve, Server};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "whsec_serve_fleet_test_secret";
const GUEST: &str = "fleet.guest@example.com";

/// A TCP round-robin proxy: each connection goes to the next backend that accepts it.
struct Proxy {
    base: String,
    served: Arc<Vec<AtomicUsize>>,
    /// The backend of each connection, in order.
    log: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Proxy {
    async fn start(backends: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = served.clone();
        let log: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
        let order = log.clone();
        tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            while let Ok((mut inbound, _)) = listener.accept().await {
                let addrs = backends.clone();
                let start = next.fetch_add(1, Ordering::SeqCst);
                let counts = counts.clone();
                let order = order.clone();
                tokio::spawn(async move {
                    for offset in 0..addrs.len() {
                        let index = (start + offset) % addrs.len();
                        if let Ok(mut outbound) = TcpStream::connect(&addrs[index]).await {
                            counts[index].fetch_add(1, Ordering::SeqCst);
                            order.lock().unwrap().push(index);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { base, served, log }
    }

    fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

/// One connection per request, so the proxy alternates every request.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn result(body: &Value) -> &Value {
    &body["result"]["structuredContent"]
}

/// Calls `name` and asserts it answered without a tool error.
async fn ok_call(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    session: Option<&str>,
    id: u64,
    name: &str,
    arguments: Value,
) -> Value {
    let (status, body) = call_tool(http, mcp, token, session, id, name, arguments).await;
    assert_eq!(status, 200, "{name}: {body}");
    assert_eq!(body["result"]["isError"], json!(false), "{name}: {body}");
    body
}

/// Polls `get_saga_status` (each poll on the next process) until the saga is `status`.
async fn until_status(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    session: Option<&str>,
    saga: &str,
    status: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 1000;
    loop {
        id += 1;
        let (code, body) = call_tool(
            http,
            mcp,
            token,
            session,
            id,
            "get_saga_status",
            json!({"saga_id": saga}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        if result(&body)["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "saga {saga} is not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The JSON-RPC messages of a server-sent-events text so far.
fn sse_messages(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .collect()
}

async fn fleet_member(url: &str, sandbox: &str) -> Server {
    serve(
        url,
        &[],
        &[
            ("STEPWISE_SANDBOX_URL", sandbox),
            ("STEPWISE_STRIPE_WEBHOOK_SECRET", SECRET),
            ("STEPWISE_MCP_WAIT_MS", "8000"),
        ],
    )
    .await
}

#[sqlx::test(migrations = false)]
async fn two_facades_behind_a_round_robin_proxy_serve_one_session_and_survive_losing_one(
    pool: PgPool,
) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let sandbox = stepwise_sandbox::Sandbox::start(([127, 0, 0, 1], 0).into(), 7)
        .await
        .unwrap();
    let mut a = fleet_member(&url, &sandbox.base_url()).await;
    let b = fleet_member(&url, &sandbox.base_url()).await;
    let authority = |s: &Server| s.base.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(vec![authority(&a), authority(&b)]).await;
    // Stripe's webhooks go to b directly, so that the client's requests alone alternate
    // through the proxy (the answer below must reach the process that did not ask).
    sandbox
        .set_webhooks(Some(stepwise_sandbox::WebhookConfig {
            url: format!("{}/webhooks/stripe", b.base),
            secret: SECRET.into(),
        }))
        .unwrap();
    let created = stepwise(
        &url,
        &[
            "tokens",
            "create",
            "--role",
            "operator",
            "--subject",
            "fleet",
            "--json",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let token = json_of(&created)["token"].as_str().unwrap().to_string();
    let http = client();
    let mcp = format!("{}/mcp", proxy.base);

    // The session begins on one process; its next request reaches the other.
    let session = http_support::initialize(
        &http,
        &mcp,
        &token,
        json!({"elicitation": {"form": {}, "url": {}}}),
    )
    .await
    .expect("a session id");
    let session = Some(session.as_str());

    // A booking and a check-in, request by request on alternating processes.
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (
        today.to_string(),
        (today + chrono::Duration::days(2)).to_string(),
    );
    let rooms = ok_call(
        &http,
        &mcp,
        &token,
        session,
        2,
        "search_rooms",
        json!({"status": "Vacant", "check_in_date": from, "check_out_date": to}),
    )
    .await;
    let room = result(&rooms)["output"]["rooms"][0]["room_number"]
        .as_str()
        .or_else(|| result(&rooms)["rooms"][0]["room_number"].as_str())
        .unwrap_or_else(|| panic!("a vacant room in {rooms}"))
        .to_string();
    let booked = ok_call(
        &http,
        &mcp,
        &token,
        session,
        3,
        "create_booking",
        json!({
            "idempotency_key": "fleet-book", "guest_email": GUEST, "guest_first_name": "Ada",
            "guest_last_name": "Fleet", "room_number": room,
            "check_in_date": from, "check_out_date": to,
            "number_of_guests": 1,
        }),
    )
    .await;
    assert_eq!(result(&booked)["status"], "completed", "{booked}");
    let booking_number = result(&booked)["output"]["booking_number"]
        .as_str()
        .unwrap()
        .to_string();
    let checked_in = ok_call(
        &http,
        &mcp,
        &token,
        session,
        4,
        "check_in_guest",
        json!({"idempotency_key": "fleet-in", "guest_email": GUEST, "booking_number": booking_number}),
    )
    .await;
    assert_eq!(result(&checked_in)["status"], "completed", "{checked_in}");

    // A 3-D Secure checkout: the process serving the call asks for the guest's authentication
    // with elicitation/create (URL mode) on the call's stream; the guest authenticates on the
    // sandbox's page, and the client's answer, sent on a new connection, reaches the other
    // process, which relays it.
    let call = json!({
        "jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "process_guest_checkout", "arguments": {
            "idempotency_key": "fleet-out", "guest_email": GUEST,
            "payment_method_id": "pm_card_threeDSecure2Required",
            "booking_number": booking_number}}
    });
    let call_connection = proxy.log.lock().unwrap().len();
    let mut response = mcp_post(&http, &mcp, &token, session, &call)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut answered = false;
    let final_message = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the call's stream ended early");
            text.push_str(&String::from_utf8_lossy(&chunk));
            for message in sse_messages(&text) {
                if message["method"] == "elicitation/create" && !answered {
                    let params = &message["params"];
                    assert_eq!(params["mode"], "url", "{message}");
                    let page = params["url"].as_str().unwrap();
                    let authenticated = http
                        .post(format!("{page}?outcome=succeed"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(authenticated.status(), 200);
                    let answer = json!({"jsonrpc": "2.0", "id": message["id"],
                                        "result": {"action": "accept"}});
                    let relayed = mcp_post(&http, &mcp, &token, session, &answer)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(relayed.status(), 202);
                    let log = proxy.log.lock().unwrap().clone();
                    assert_ne!(
                        log[call_connection],
                        log[call_connection + 1],
                        "the answer went to the other process: {log:?}"
                    );
                    answered = true;
                }
                if message["id"] == 5 && message.get("result").is_some() {
                    return message;
                }
            }
        }
    })
    .await
    .expect("the checkout call answered once the guest authenticated");
    assert!(
        answered,
        "the checkout asked for the guest's authentication"
    );
    let checkout = result(&final_message).clone();
    let checkout_saga = checkout["saga_id"].as_str().unwrap().to_string();
    let checkout = if checkout["status"] == "completed" {
        checkout
    } else {
        result(&until_status(&http, &mcp, &token, session, &checkout_saga, "completed").await)
            .clone()
    };
    assert!(
        checkout["output"]["payment_intent_id"].is_string(),
        "{checkout}"
    );
    let served = proxy.served();
    assert!(
        served.iter().all(|n| *n >= 3),
        "every process served a good part of the session: {served:?}"
    );

    // One process dies mid-session; the survivor serves the same session on.
    a.child.kill().await.unwrap();
    let booking_saga = result(&booked)["saga_id"].as_str().unwrap().to_string();
    for (id, saga) in [(50, &booking_saga), (51, &checkout_saga)] {
        let (status, body) = call_tool(
            &http,
            &mcp,
            &token,
            session,
            id,
            "get_saga_status",
            json!({"saga_id": saga}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(result(&body)["status"], "completed", "{body}");
    }
    // The same call again answers the same saga: nothing is redone.
    let again = ok_call(
        &http,
        &mcp,
        &token,
        session,
        52,
        "check_in_guest",
        json!({"idempotency_key": "fleet-in", "guest_email": GUEST, "booking_number": booking_number}),
    )
    .await;
    assert_eq!(result(&again)["saga_id"], result(&checked_in)["saga_id"]);
    let listed = ok_call(&http, &mcp, &token, session, 53, "list_sagas", json!({})).await;
    // The client's three sagas, all completed (the hotel may have started sagas of its own).
    let mine: Vec<&Value> = result(&listed)["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["idempotency_key"]
                .as_str()
                .unwrap_or("")
                .starts_with("fleet-")
        })
        .collect();
    assert_eq!(mine.len(), 3, "{listed}");
    assert!(mine.iter().all(|s| s["status"] == "completed"), "{listed}");

    // The external systems saw each effect once.
    let ledger: Value = reqwest::get(format!("{}/_sandbox/ledger", sandbox.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bookings: Vec<&Value> = ledger["objects"]["Booking__c"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["Name"] == booking_number.as_str())
        .collect();
    assert_eq!(bookings.len(), 1, "{bookings:?}");
    assert_eq!(bookings[0]["Status__c"], "Checked Out", "{bookings:?}");
    let intents: Vec<&Value> = ledger["objects"]["payment_intent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "succeeded")
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    drop(b);
}

/// Polls `/readyz` until it answers `status`.
async fn until_ready_is(base: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz still {got} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_while_postgresql_is_stopped_and_200_once_it_is_back() {
    // A throwaway cluster of the test's own, so it can be stopped (src/throwaway_pg.rs).
    let cluster = stepwise::throwaway_pg::Cluster::create().expect("a throwaway cluster");
    let migrated = stepwise(&cluster.url(), &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let server = serve(&cluster.url(), &["--no-worker"], &[]).await;
    until_ready_is(&server.base, 200).await;

    tokio::task::block_in_place(|| cluster.stop(stepwise::throwaway_pg::StopMode::Fast)).unwrap();
    let body = until_ready_is(&server.base, 503).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    let healthz = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200, "alive while the database is away");

    tokio::task::block_in_place(|| cluster.start()).unwrap();
    until_ready_is(&server.base, 200).await;
}
