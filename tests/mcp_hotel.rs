//! The Dewy Resort through MCP: a guest checks out through the tool against the sandbox, a
//! declined card is a tool error that says what was undone, and guests are confined to their
//! own stays. The facade knows no hotel; it serves the registry it is given.
#![allow(clippy::unwrap_used)]

mod hotel_support;
mod mcp_support;

use hotel_support::{booking, checked_in_stays, checkout_input, objects, room};
use mcp_support::{call, connect, is_error, structured, text};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::{Engine, PgStore, SystemClock, WorkerConfig};
use stepwise_mcp::Facade;
use stepwise_sandbox::{Sandbox, SandboxHandle};
use stepwise_skills::connectors::{ConnectorConfig, Connectors};
use stepwise_skills::hotel::Hotel;
use tokio_util::sync::CancellationToken;

struct Resort {
    facade: Arc<Facade>,
    sandbox: SandboxHandle,
    stop: CancellationToken,
}

impl Drop for Resort {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Resort {
    async fn open(pool: PgPool) -> Self {
        let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), 11)
            .await
            .unwrap();
        let config =
            ConnectorConfig::sandbox(&sandbox.base_url()).with_timeout(Duration::from_secs(3));
        let hotel = Hotel::new(Connectors::new(&config).unwrap(), pool.clone());
        let registry = stepwise_skills::registry_with_hotel(&hotel).unwrap();
        let engine = Engine::new(
            PgStore::new(pool),
            Arc::new(registry),
            Arc::new(SystemClock),
        );
        let stop = CancellationToken::new();
        let worker = engine.worker(WorkerConfig {
            worker_id: "mcp-hotel-test".into(),
            concurrency: 8,
            ..WorkerConfig::default()
        });
        let token = stop.clone();
        tokio::spawn(async move { worker.run(token).await });
        Self {
            facade: Facade::new(engine, Duration::from_secs(20)),
            sandbox,
            stop,
        }
    }

    async fn ledger(&self) -> Value {
        reqwest::get(format!("{}/_sandbox/ledger", self.sandbox.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[sqlx::test(migrations = false)]
async fn a_guest_checks_out_through_the_tool_and_a_declined_card_is_undone(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let resort = Resort::open(pool.clone()).await;
    let ledger = resort.ledger().await;
    let stays = checked_in_stays(&ledger);
    assert!(stays.len() >= 2, "the seed has checked-in stays: {stays:?}");
    let (email, number, room_number) = stays[0].clone();
    let (other_email, other_number, other_room) = stays[1].clone();

    let guest = connect(&resort.facade, &format!("guest:{email}")).await;
    let names: BTreeSet<String> = guest
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for name in ["process_guest_checkout", "create_booking", "search_rooms"] {
        assert!(names.contains(name), "{names:?}");
    }
    for name in [
        "check_in_guest",
        "compensate_checkout",
        "upsert_contact",
        "synthetic_chain",
    ] {
        assert!(!names.contains(name), "{names:?}");
    }

    // Checking out someone else's stay is refused before anything happens.
    let refused = call(
        &guest,
        "process_guest_checkout",
        checkout_input("co-other", &other_email, "pm_card_visa"),
    )
    .await;
    assert!(is_error(&refused));
    assert_eq!(structured(&refused)["error"]["code"], "forbidden");

    // The guest's own checkout, without naming itself.
    let args = json!({"payment_method_id": "pm_card_visa", "idempotency_key": "co-mcp-1"});
    let done = call(&guest, "process_guest_checkout", args.clone()).await;
    assert!(!is_error(&done), "{}", text(&done));
    let s = structured(&done);
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["output"]["booking_number"], number);
    assert_eq!(s["output"]["room_number"], room_number);
    assert!(s["output"]["amount"].as_i64().unwrap() > 0);
    let ledger = resort.ledger().await;
    assert_eq!(booking(&ledger, &number)["Status__c"], "Checked Out");
    assert_eq!(room(&ledger, &room_number)["Status__c"], "Cleaning");
    let charged = objects(&ledger, "payment_intent")
        .into_iter()
        .filter(|p| p["status"] == "succeeded")
        .count();

    // Repeating the call (a client timeout, say) is the same saga and charges nothing more.
    let again = call(&guest, "process_guest_checkout", args).await;
    assert_eq!(structured(&again)["saga_id"], s["saga_id"]);
    let ledger = resort.ledger().await;
    let charged_again = objects(&ledger, "payment_intent")
        .into_iter()
        .filter(|p| p["status"] == "succeeded")
        .count();
    assert_eq!(charged, charged_again);

    // The front desk checks out the other stay with a card that is declined.
    let staff = connect(&resort.facade, "staff:frontdesk@dewy.example").await;
    let declined = call(
        &staff,
        "process_guest_checkout",
        checkout_input("co-mcp-2", &other_email, "pm_card_chargeDeclined"),
    )
    .await;
    assert!(is_error(&declined), "{}", text(&declined));
    let s = structured(&declined);
    assert_eq!(s["status"], "compensated", "{s}");
    assert_eq!(s["error"]["code"], "card_declined");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Undone") || message.contains("Nothing had to be undone"),
        "{message}"
    );
    assert!(
        s["error"]["action"]
            .as_str()
            .unwrap()
            .contains("payment method"),
        "{s}"
    );
    let ledger = resort.ledger().await;
    assert_eq!(booking(&ledger, &other_number)["Status__c"], "Checked In");
    assert_eq!(room(&ledger, &other_room)["Status__c"], "Occupied");

    // The guest cannot see the front desk's saga about someone else.
    let other_saga = s["saga_id"].as_str().unwrap();
    let hidden = call(&guest, "get_saga_status", json!({"saga_id": other_saga})).await;
    assert_eq!(structured(&hidden)["error"]["code"], "not_found");
}
