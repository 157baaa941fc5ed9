//! The operator console in a real browser (docs/console.md): headless Chromium from Debian's
//! `chromium` package, driven by `chromedriver` over WebDriver. An operator signs in, finds a
//! failed saga on the overview, opens it, retries it with a reason and watches it turn
//! `compensated` without a reload; forks a saga from a step; answers a waiting saga. A staff
//! member sees no action buttons and gets 403 when posting one anyway.
//!
//! Runs when `chromedriver` is on the PATH (`apt-get install chromium chromium-driver`);
//! without it the test says so and passes, unless `STEPWISE_BROWSER_TESTS=1` (set by .ci/run)
//! demands it. With `STEPWISE_CONSOLE_SCREENSHOTS=DIR` it saves a PNG of each page there
//! (docs/console/ holds the ones the docs show).
#![allow(clippy::unwrap_used)]

mod common;
mod console_support;

use common::{detail, drive_with_retries, start, worker};
use console_support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sqlx::PgPool;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use stepwise::http::proxy::TrustProxy;
use stepwise_engine::{Engine, EventKind, ManualClock, PgStore, SagaStatus};
use stepwise_mcp::{AuditEntry, AuditStore, Outcome};

const SYN: &str = "synthetic_chain";

fn chromedriver() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromedriver"))
            .find(|p| p.is_file())
    })
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser(driver: &std::path::Path) -> (tokio::process::Child, Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..50 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (child, client),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("chromedriver did not start a session: {last:?}");
}

async fn shot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("STEPWISE_CONSOLE_SCREENSHOTS") else {
        return;
    };
    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}

async fn css(client: &Client, selector: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("`{selector}` not found: {e}"))
}

async fn sign_in_as(client: &Client, base: &str, token: &str) {
    client
        .goto(&format!("{base}/console/signin"))
        .await
        .unwrap();
    css(client, "#token").await.send_keys(token).await.unwrap();
    css(client, "form.action button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    css(client, "#h-failed").await;
}

/// Fills the reason and confirms an action's page.
async fn confirm(client: &Client, reason: &str) {
    css(client, "#reason")
        .await
        .send_keys(reason)
        .await
        .unwrap();
    css(client, "button[data-confirm]")
        .await
        .click()
        .await
        .unwrap();
    css(client, "p.notice[role=status]").await;
}

#[sqlx::test(migrations = false)]
async fn an_operator_acts_in_the_browser_and_staff_only_reads(pool: PgPool) {
    let Some(driver) = chromedriver() else {
        assert!(
            std::env::var("STEPWISE_BROWSER_TESTS").as_deref() != Ok("1"),
            "STEPWISE_BROWSER_TESTS=1 but chromedriver is not installed"
        );
        eprintln!(
            "skipped: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    stepwise::app::migrate(&pool).await.unwrap();
    let clock = ManualClock::starting_now();
    let mut registry = stepwise_skills::registry().unwrap();
    stepwise_skills::hotel::roles::declare(&mut registry).unwrap();
    let engine = Engine::new(
        PgStore::new(pool.clone()),
        Arc::new(registry),
        Arc::new(clock.clone()),
    );
    let w = worker(&engine, "worker-1");
    // A failed saga (its compensation gave up; a retry's round succeeds), a completed one to
    // fork, a waiting one to answer, and some history for the overview.
    let failed = start(
        &engine,
        SYN,
        json!({"steps": 2, "fail_at": 2, "compensation_failures": 2, "max_attempts": 2}),
        Some("booking-4711"),
    )
    .await;
    for i in 0..6 {
        let input = if i % 3 == 0 {
            json!({"steps": 3, "fail_at": 3})
        } else {
            json!({"steps": 4})
        };
        start(&engine, SYN, input, Some(&format!("order-{i}"))).await;
    }
    let completed = start(&engine, SYN, json!({"steps": 4}), Some("order-fork")).await;
    drive_with_retries(&clock, &w, 8).await;
    let waiting = start(
        &engine,
        SYN,
        json!({"steps": 3, "wait_at": 2}),
        Some("approval-9"),
    )
    .await;
    drive_with_retries(&clock, &w, 1).await;
    assert_eq!(detail(&engine, failed).await.status, SagaStatus::Failed);
    assert_eq!(detail(&engine, waiting).await.status, SagaStatus::Waiting);
    let audit = AuditStore::new(pool.clone());
    for (tool, outcome, code) in [
        ("book_room", Outcome::Ok, None),
        ("saga_status", Outcome::Ok, None),
        ("cancel_saga", Outcome::Refused, Some("forbidden")),
    ] {
        audit
            .record(&AuditEntry {
                principal: "staff:frontdesk".into(),
                transport: "http",
                tool: tool.into(),
                saga_id: Some(failed),
                outcome,
                error_code: code.map(str::to_string),
                duration_ms: 12,
            })
            .await
            .unwrap();
    }

    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let base = served.base.clone();
    let operator = token(&pool, &engine, "operator:alice").await;
    let staff = token(&pool, &engine, "staff:frontdesk").await;
    let (_driver, client) = browser(&driver).await;

    // Sign in; the overview lists the failed saga under "Need an operator".
    sign_in_as(&client, &base, &operator).await;
    shot(&client, "overview").await;
    css(
        &client,
        &format!("section[aria-labelledby=h-failed] a[href='/console/sagas/{failed}']"),
    )
    .await
    .click()
    .await
    .unwrap();
    let status = css(&client, "#saga-status").await;
    assert_eq!(
        status.attr("data-status").await.unwrap().as_deref(),
        Some("failed")
    );
    shot(&client, "saga-failed").await;

    // Retry with a reason: the saga is compensating, then compensated, live.
    css(&client, "a[data-action=retry]")
        .await
        .click()
        .await
        .unwrap();
    shot(&client, "confirm-retry").await;
    confirm(&client, "payments provider is back").await;
    let status = css(&client, "#saga-status").await;
    assert_eq!(
        status.attr("data-status").await.unwrap().as_deref(),
        Some("compensating")
    );
    // A marker that a reload would erase.
    client
        .execute("window.__stayed = true; return true;", vec![])
        .await
        .unwrap();
    drive_with_retries(&clock, &w, 3).await;
    assert_eq!(
        detail(&engine, failed).await.status,
        SagaStatus::Compensated
    );
    let mut live = None;
    for _ in 0..60 {
        let now = client
            .execute(
                "return [document.querySelector('#saga-status').dataset.status, window.__stayed === true];",
                vec![],
            )
            .await
            .unwrap();
        if now[0] == "compensated" {
            live = Some(now[1].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        live,
        Some(json!(true)),
        "turned compensated live, without a reload"
    );
    let history = css(&client, "#history").await.text().await.unwrap();
    assert!(history.contains("operator_retry") && history.contains("operator:alice"));
    shot(&client, "saga-compensated").await;

    // Fork the completed saga from its third step.
    client
        .goto(&format!("{base}/console/sagas/{completed}"))
        .await
        .unwrap();
    css(&client, "a[data-action=fork]")
        .await
        .click()
        .await
        .unwrap();
    css(&client, "#from_step")
        .await
        .select_by_value("step_3")
        .await
        .unwrap();
    shot(&client, "confirm-fork").await;
    confirm(&client, "rerun the last steps").await;
    let page = client.source().await.unwrap();
    assert!(page.contains("Forked: this is the new saga."));
    assert!(
        page.contains(&format!("/console/sagas/{completed}")),
        "linked to the original"
    );

    // Answer the waiting saga from the form built from its wait's schema.
    client
        .goto(&format!("{base}/console/sagas/{waiting}"))
        .await
        .unwrap();
    shot(&client, "saga-waiting").await;
    css(&client, "a[data-action=send]")
        .await
        .click()
        .await
        .unwrap();
    let payload = css(&client, "#payload_json").await;
    payload.clear().await.unwrap();
    payload.send_keys("{\"approved\": true}").await.unwrap();
    shot(&client, "send-event").await;
    confirm(&client, "approved on the phone").await;
    let saga = detail(&engine, waiting).await;
    assert!(saga
        .events
        .iter()
        .any(|e| e.kind == EventKind::EventReceived && e.actor == "operator:alice"));

    // The list, the audit, and the overview at phone width.
    client.goto(&format!("{base}/console/sagas")).await.unwrap();
    css(&client, "#sagas").await;
    shot(&client, "sagas").await;
    client.goto(&format!("{base}/console/audit")).await.unwrap();
    css(&client, "#audit").await;
    shot(&client, "audit").await;
    client
        .goto(&format!(
            "{base}/console/bulk?action=retry&status=failed&skill={SYN}"
        ))
        .await
        .unwrap();
    css(&client, "#dry-run").await;
    shot(&client, "bulk").await;
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&format!("{base}/console")).await.unwrap();
    css(&client, "#h-failed").await;
    shot(&client, "overview-phone").await;
    client.set_window_size(1280, 1000).await.unwrap();

    // Staff: no action buttons, and 403 when posting one anyway (with a valid CSRF token).
    client.delete_all_cookies().await.unwrap();
    sign_in_as(&client, &base, &staff).await;
    client
        .goto(&format!("{base}/console/sagas/{completed}"))
        .await
        .unwrap();
    css(&client, "#saga-status").await;
    let buttons = client
        .find_all(Locator::Css("[data-action]"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "staff sees no action buttons");
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf, reason: 'trying anyway'})})
               .then(r => done(r.status));",
            vec![json!(format!("/console/sagas/{completed}/restart"))],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    client.close().await.unwrap();
}
