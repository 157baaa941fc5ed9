//! `stepwise demo`: the story end to end on the embedded default. It migrates, starts an
//! in-process sandbox for the hotel's external systems and a worker, and runs the Dewy Resort
//! story (book, check in, a service request, a checkout whose card is declined, a checkout that
//! succeeds with its bill, an urgent maintenance request), the front desk (a booking's no-show
//! timer included), a checkout that waits for 3-D
//! Secure, a refund that waits for a manager's approval, then the durability story (retries at
//! persisted times, a worker killed with SIGKILL), printing every saga's timeline.

use crate::app::{in_process_sandbox_notice, App};
use crate::exit::CliError;
use crate::render;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepwise_engine::{Engine, SagaStatus, StartRequest, StepStatus, WorkerConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SYN: &str = stepwise_skills::synthetic::NAME;

pub async fn run() -> Result<(), CliError> {
    let app = App::open_with_sandbox(12).await?;
    if let Some(url) = &app.sandbox_url {
        tracing::info!("{}", in_process_sandbox_notice(url));
    }
    // The sandbox's Stripe webhooks (3-D Secure) come to a loopback /webhooks/stripe.
    let webhooks = CancellationToken::new();
    app.serve_sandbox_webhooks(webhooks.clone()).await;
    let result = story(&app).await;
    webhooks.cancel();
    app.close().await;
    result
}

/// An in-process worker running in the background until stopped.
struct Background {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(engine: &Engine, id: &str, lease: Duration) -> Self {
        let worker = engine.worker(WorkerConfig {
            worker_id: id.to_string(),
            concurrency: 8,
            lease,
            poll_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = worker.run(token).await {
                tracing::error!(error = %e, "demo worker failed");
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn start(engine: &Engine, input: Value, label: &str) -> Result<Uuid, CliError> {
    start_skill(engine, SYN, input, label).await
}

async fn start_skill(
    engine: &Engine,
    skill: &str,
    mut input: Value,
    label: &str,
) -> Result<Uuid, CliError> {
    let key = format!("demo-{label}-{}", Uuid::new_v4().simple());
    if skill != SYN {
        input["idempotency_key"] = json!(key);
    }
    let outcome = engine
        .start(StartRequest {
            skill: skill.into(),
            input,
            idempotency_key: Some(key),
            started_by: "staff:frontdesk@dewy.example".into(),
        })
        .await?;
    Ok(outcome.saga.id)
}

async fn finish(engine: &Engine, id: Uuid, within: Duration) -> Result<SagaStatus, CliError> {
    let summary = engine.wait(id, within).await?;
    if !summary.status.is_terminal() {
        return Err(CliError::failed(format!(
            "saga {id} did not finish within {} s",
            within.as_secs()
        )));
    }
    Ok(summary.status)
}

async fn show(engine: &Engine, id: Uuid, title: &str) -> Result<(), CliError> {
    let saga = engine
        .detail(id)
        .await?
        .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
    println!("\n━━ {title} ━━");
    print!("{}", render::timeline(&saga));
    Ok(())
}

/// The task a checkout or maintenance saga created in the legacy housekeeping system (SOAP), if
/// it did: the skill turned the system's codes, dates and charset into these typed fields.
async fn legacy_task(engine: &Engine, id: Uuid) -> Result<(), CliError> {
    let saga = engine
        .detail(id)
        .await?
        .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
    let task = saga
        .steps
        .iter()
        .filter(|s| s.name == "create_housekeeping_task" || s.name == "create_repair_task")
        .find_map(|s| s.output.clone());
    if let Some(task) = task {
        let text = |key: &str| task[key].as_str().unwrap_or("-").to_string();
        println!(
            "  legacy housekeeping system (SOAP): task {} ({} room {}, priority {}, due {}) {}{}",
            text("task_no"),
            text("kind"),
            text("room_number"),
            text("priority"),
            text("due_date"),
            text("status"),
            match saga.steps.iter().find(|s| s.output.as_ref() == Some(&task)) {
                Some(step) if step.compensation.status.to_string() == "compensated" =>
                    ", cancelled by the undo",
                _ => "",
            }
        );
    }
    Ok(())
}

async fn story(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!(
        "Stepwise demo — database {}",
        crate::cli::redact(&app.database_url)
    );
    if let Some(url) = &app.sandbox_url {
        println!(
            "External systems (payments, CRM/PMS, SMS, the legacy housekeeping system): sandbox at {url}"
        );
    }
    println!("Skills: sagas of persisted steps; each step's result is committed before the next.");

    let lease = Duration::from_secs(2);
    let worker = Background::start(engine, "demo-worker-1", lease);
    let hotel = match hotel_story(app).await {
        Ok(()) => front_desk(app).await,
        Err(e) => Err(e),
    };
    let hotel = match hotel {
        Ok(()) => three_d_secure_checkout(app).await,
        Err(e) => Err(e),
    };
    let hotel = match hotel {
        Ok(()) => refund_approval(app).await,
        Err(e) => Err(e),
    };
    let retried = match hotel {
        Ok(()) => start(
            engine,
            json!({"steps": 3, "fail_at": 2, "fail_kind": "transient", "transient_failures": 2}),
            "retry",
        )
        .await,
        Err(e) => Err(e),
    };
    let retried = match retried {
        Ok(id) => finish(engine, id, Duration::from_secs(30))
            .await
            .map(|_| id),
        Err(e) => Err(e),
    };
    worker.stop().await;
    let retried = retried?;

    println!("\n━━━━ Durability ━━━━");
    let survived = survive_killed_worker(app, lease).await?;
    show(
        engine,
        retried,
        "A step that fails twice with a retryable error, retried at persisted times",
    )
    .await?;
    show(
        engine,
        survived,
        "A saga whose worker was killed with SIGKILL mid-run, resumed by another worker",
    )
    .await?;

    throughput(engine).await?;
    println!("\nInspect any saga with `stepwise sagas show ID` (add --json for the full record).");
    Ok(())
}

const GUEST: &str = "grace.hopper@example.com";

/// The Dewy Resort: a guest books, checks in, asks for towels, has a card declined at
/// checkout (compensated, nothing charged), pays with another card, and the room then needs
/// urgent maintenance.
async fn hotel_story(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!("\n━━━━ The Dewy Resort ━━━━");
    let room = free_room_for_tonight(app).await?;
    let chapters: [(&str, &str, Value); 6] = [
        (
            "1. Book a room for two nights, with a deposit",
            "create_booking",
            json!({"guest_email": GUEST, "guest_first_name": "Grace", "guest_last_name": "Hopper",
                   "guest_phone": "+15550142424", "room_number": room,
                   "check_in_date": today(0), "check_out_date": today(2),
                   "number_of_guests": 1, "payment_method_id": "pm_card_visa"}),
        ),
        (
            "2. Check in",
            "check_in_guest",
            json!({"guest_email": GUEST}),
        ),
        (
            "3. A service request from the room",
            "submit_guest_service_request",
            json!({"guest_email": GUEST, "room_number": room, "type": "Housekeeping",
                   "priority": "Medium", "description": "Two extra towels, please"}),
        ),
        (
            "4. Checkout with a card that is declined: nothing is charged, the stay is untouched",
            "process_guest_checkout",
            json!({"guest_email": GUEST, "payment_method_id": "pm_card_chargeDeclined"}),
        ),
        (
            "5. Checkout with another card: charged from the stay, room to Cleaning, receipt texted",
            "process_guest_checkout",
            json!({"guest_email": GUEST, "payment_method_id": "pm_card_visa"}),
        ),
        (
            "6. An urgent maintenance request: room to Maintenance, a plumber texted",
            "submit_maintenance_request",
            json!({"room_number": room, "type": "Plumbing", "priority": "Urgent",
                   "description": "Water leaking under the sink",
                   "reported_by": "manager@dewy.example"}),
        ),
    ];
    for (i, (title, skill, input)) in chapters.into_iter().enumerate() {
        let id = start_skill(engine, skill, input, &format!("hotel-{i}")).await?;
        let status = finish(engine, id, Duration::from_secs(60)).await?;
        show(engine, id, title).await?;
        legacy_task(engine, id).await?;
        let expected = if skill == "process_guest_checkout" && i == 3 {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        if skill == "process_guest_checkout" && status == SagaStatus::Completed {
            print_bill(engine, id).await?;
        }
        if status != expected {
            return Err(CliError::failed(format!(
                "demo saga {id} ({skill}) ended {status}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// The front desk: find a room for given dates, book it, list the guest's bookings, resolve a
/// case.
async fn front_desk(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!("\n━━━━ The front desk ━━━━");
    let (from, to) = (today(7), today(10));
    let found = query(
        app,
        "search_rooms",
        json!({"check_in_date": from, "check_out_date": to,
        "number_of_guests": 2, "limit": 100}),
    )
    .await?;
    let rooms = found["rooms"].as_array().cloned().unwrap_or_default();
    let room = rooms
        .first()
        .ok_or_else(|| CliError::failed(format!("no room is free from {from} to {to}")))?;
    let number = room["room_number"].as_str().unwrap_or_default().to_string();
    println!(
        "1. search_rooms {from} to {to} for two: {} rooms free; room {number} ({}) costs {} cents",
        rooms.len(),
        room["room_type"].as_str().unwrap_or_default(),
        room["total_price"]
    );
    let booking = json!({"guest_email": DESK_GUEST, "guest_first_name": "Ada",
        "guest_last_name": "Lovelace", "room_number": number, "check_in_date": from,
        "check_out_date": to, "number_of_guests": 2});
    let id = start_skill(engine, "create_booking", booking, "desk-book").await?;
    expect_completed(engine, id, "create_booking").await?;
    show(engine, id, "2. Book it").await?;
    print_no_show_timer(engine, id).await?;
    let listed = query(app, "list_bookings", json!({"guest_email": DESK_GUEST})).await?;
    println!("\n3. list_bookings for {DESK_GUEST}:");
    for b in listed["bookings"].as_array().into_iter().flatten() {
        println!(
            "   {} {} room {} {} -> {}",
            b["booking_number"].as_str().unwrap_or_default(),
            b["stay"].as_str().unwrap_or_default(),
            b["room_number"].as_str().unwrap_or_default(),
            b["check_in_date"].as_str().unwrap_or_default(),
            b["check_out_date"].as_str().unwrap_or_default()
        );
    }
    let working = query(
        app,
        "search_cases",
        json!({"status": "Working", "limit": 1}),
    )
    .await?;
    let Some(case_number) = working["cases"][0]["case_number"]
        .as_str()
        .map(str::to_string)
    else {
        return Err(CliError::failed("no case being worked on to resolve"));
    };
    let resolve = json!({"case_number": case_number, "status": "Resolved",
        "note": "Fixed and checked with the guest."});
    let id = start_skill(engine, "manage_case", resolve, "desk-case").await?;
    expect_completed(engine, id, "manage_case").await?;
    show(
        engine,
        id,
        &format!("4. Resolve case {case_number}, with a note"),
    )
    .await?;
    Ok(())
}

const DESK_GUEST: &str = "ada.lovelace@example.com";

/// The checkout's bill: one line per run of nights in one room at one rate, extras, and what was
/// paid before (docs/skills.md, "Fair bills").
async fn print_bill(engine: &Engine, id: Uuid) -> Result<(), CliError> {
    let output = engine
        .detail(id)
        .await?
        .and_then(|saga| saga.output)
        .unwrap_or_default();
    println!(
        "   Bill: total {} cents, charged now {} cents",
        output["total"], output["amount"]
    );
    for line in output["lines"].as_array().into_iter().flatten() {
        println!(
            "   {:>8} {}",
            line["amount"],
            line["description"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// The booking's no-show timer: a `mark_no_show` saga waiting, durably, for the cutoff on the
/// arrival day (docs/skills.md, "No-shows").
async fn print_no_show_timer(engine: &Engine, booking: Uuid) -> Result<(), CliError> {
    let saga = engine.detail(booking).await?;
    let timer = saga
        .iter()
        .flat_map(|s| s.steps.iter())
        .find(|s| s.name == "arm_no_show")
        .and_then(|s| s.output.as_ref())
        .and_then(|o| o["no_show_saga_id"].as_str())
        .and_then(|id| id.parse::<Uuid>().ok());
    let Some(timer) = timer else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Some(saga) = engine.detail(timer).await? else {
            return Ok(());
        };
        if saga.status == SagaStatus::Waiting || Instant::now() > deadline {
            let until = saga
                .waiting_for
                .as_ref()
                .and_then(|w| w["until"].as_str().map(str::to_string))
                .unwrap_or_default();
            println!(
                "   Its no-show timer, saga {timer} (mark_no_show), is {} until {until}: the cutoff on the arrival day; a check-in or cancellation disarms it.",
                saga.status
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A seeded checked-in guest whose card needs 3-D Secure.
const THREE_DS_GUEST: &str = "sophia.wilson@example.com";

/// A checkout whose card needs 3-D Secure: the saga waits (no worker holds it) until the
/// guest authenticates on the bank's page, which the sandbox plays; Stripe's signed webhook
/// then reaches `/webhooks/stripe` and the checkout goes on.
async fn three_d_secure_checkout(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!("\n━━━━ A checkout that waits for 3-D Secure ━━━━");
    if app.sandbox_url.is_none() {
        println!("(skipped: the external systems are not this process's sandbox, so it cannot play the guest)");
        return Ok(());
    }
    let input = json!({"guest_email": THREE_DS_GUEST,
                       "payment_method_id": "pm_card_threeDSecure2Required"});
    let id = start_skill(engine, "process_guest_checkout", input, "3ds").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let saga = engine
            .detail(id)
            .await?
            .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
        if saga.status == SagaStatus::Waiting {
            break saga.waiting_for.unwrap_or_default();
        }
        if saga.status.is_terminal() || Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "the 3-D Secure checkout {id} did not wait (status {})",
                saga.status
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = |key: &str| waiting[key].as_str().unwrap_or_default().to_string();
    let url = text("url");
    println!(
        "Saga {id} is waiting (status waiting: no lease, no worker memory) for event `{}` until {}:\n  {}",
        text("event"),
        text("until"),
        text("prompt")
    );
    println!(
        "The guest opens {url} and completes the challenge (here the sandbox plays the guest);"
    );
    println!("Stripe then posts a signed payment_intent.succeeded to /webhooks/stripe, which delivers the event.");
    let answer = reqwest::Client::new()
        .post(format!("{url}?outcome=succeed"))
        .send()
        .await
        .map_err(|e| {
            CliError::failed(format!("cannot reach the sandbox's 3-D Secure page: {e}"))
        })?;
    if !answer.status().is_success() {
        return Err(CliError::failed(format!(
            "the sandbox's 3-D Secure page answered {}",
            answer.status()
        )));
    }
    let status = finish(engine, id, Duration::from_secs(30)).await?;
    show(
        engine,
        id,
        "Checkout with a card that needs 3-D Secure: it waited for the guest, then went on",
    )
    .await?;
    if status != SagaStatus::Completed {
        return Err(CliError::failed(format!(
            "demo saga {id} (3-D Secure checkout) ended {status}, expected completed"
        )));
    }
    Ok(())
}

/// The seeded guest staying five nights in Penthouse 403: a refund of that stay is above the
/// default approval threshold.
const PENTHOUSE_GUEST: &str = "mason.anderson@example.com";
const APPROVER: &str = "manager:ann@dewy.example";

/// A refund that waits for a manager: a guest checks out, a manager reverses the checkout, and
/// the refund, above `STEPWISE_REFUND_APPROVAL_CENTS`, waits until another manager approves it
/// (delivered here as `stepwise sagas send ID approval ... --actor manager:...` would).
async fn refund_approval(app: &App) -> Result<(), CliError> {
    let engine = &app.engine;
    println!("\n━━━━ A refund that needs a manager ━━━━");
    let checkout = json!({"guest_email": PENTHOUSE_GUEST, "payment_method_id": "pm_card_visa"});
    let id = start_skill(
        engine,
        "process_guest_checkout",
        checkout,
        "approval-checkout",
    )
    .await?;
    expect_completed(engine, id, "process_guest_checkout").await?;
    let charged = engine
        .detail(id)
        .await?
        .and_then(|saga| saga.output)
        .unwrap_or_default();
    let number = charged["booking_number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let amount = charged["amount"].as_i64().unwrap_or_default();
    show(engine, id, "1. A guest in the Penthouse checks out").await?;

    let reverse = json!({"guest_email": PENTHOUSE_GUEST, "booking_number": number,
        "reason": "nights already paid by the company"});
    let id = start_skill(engine, "compensate_checkout", reverse, "approval-reverse").await?;
    let settings = app.hotel.refund_approval();
    if !settings.needed_for(amount) {
        expect_completed(engine, id, "compensate_checkout").await?;
        return show(
            engine,
            id,
            &format!(
                "2. A manager reverses it: {} is not above the approval threshold ({} cents), so no approval is needed",
                stepwise_skills::hotel::records::money(amount),
                settings.threshold_cents
            ),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.saga_statuses(&[id]).await?.get(&id) != Some(&SagaStatus::Waiting) {
        if Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "saga {id} (compensate_checkout) did not wait for an approval"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    show(
        engine,
        id,
        "2. A manager reverses it: the refund waits for another manager (nothing changes meanwhile)",
    )
    .await?;

    let answer = json!({"approved": true, "note": "company invoice checked"});
    let key = format!("demo-approval-{}", Uuid::new_v4().simple());
    engine
        .deliver(id, "approval", answer.clone(), &key, APPROVER)
        .await
        .map_err(|e| CliError::failed(format!("cannot deliver the approval: {e}")))?;
    println!("\n$ stepwise sagas send {id} approval --data '{answer}' --actor {APPROVER}");
    expect_completed(engine, id, "compensate_checkout").await?;
    show(
        engine,
        id,
        "3. The manager approves: booking and room restored, the refund made, the approver recorded",
    )
    .await
}

async fn query(app: &App, name: &str, input: Value) -> Result<Value, CliError> {
    app.engine
        .registry()
        .query(name)
        .ok_or_else(|| CliError::failed(format!("{name} is not registered")))?
        .call(input)
        .await
        .map_err(|e| CliError::failed(format!("{name}: {e}")))
}

async fn expect_completed(engine: &Engine, id: Uuid, skill: &str) -> Result<(), CliError> {
    let status = finish(engine, id, Duration::from_secs(60)).await?;
    if status != SagaStatus::Completed {
        return Err(CliError::failed(format!(
            "demo saga {id} ({skill}) ended {status}, expected completed"
        )));
    }
    Ok(())
}

fn today(offset: i64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Duration::days(offset)).to_string()
}

/// A vacant room with no booking tonight or tomorrow night.
async fn free_room_for_tonight(app: &App) -> Result<String, CliError> {
    use stepwise_skills::hotel::records;
    let crm = &app.hotel.connectors.crm;
    let rooms = app
        .engine
        .registry()
        .query("search_rooms")
        .ok_or_else(|| CliError::failed("search_rooms is not registered"))?
        .call(json!({"status": "Vacant", "limit": 100}))
        .await
        .map_err(|e| CliError::failed(format!("cannot list rooms: {e}")))?;
    let from = chrono::Utc::now().date_naive();
    let numbers: Vec<String> = rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["room_number"].as_str().map(str::to_string))
        .collect();
    for number in numbers {
        let room = records::room(crm, &number)
            .await
            .map_err(|e| CliError::failed(format!("cannot read room {number}: {e}")))?;
        let taken = records::overlapping_bookings(
            crm,
            &room.id,
            from,
            from + chrono::Duration::days(2),
            None,
        )
        .await
        .map_err(|e| CliError::failed(format!("cannot read bookings: {e}")))?;
        if taken.is_empty() {
            return Ok(number);
        }
    }
    Err(CliError::failed(
        "no vacant room is free for the next two nights",
    ))
}

/// Runs a saga on a child `stepwise worker` process, kills it with SIGKILL after two steps,
/// and lets an in-process worker take over once the lease expires.
async fn survive_killed_worker(app: &App, lease: Duration) -> Result<Uuid, CliError> {
    let engine = &app.engine;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the stepwise binary: {e}")))?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "worker",
            "--worker-id",
            "demo-worker-doomed",
            "--concurrency",
            "2",
        ])
        .arg("--lease-ms")
        .arg(lease.as_millis().to_string())
        .env("DATABASE_URL", &app.database_url)
        .envs(
            app.sandbox_url
                .iter()
                .map(|url| ("STEPWISE_SANDBOX_URL", url)),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::failed(format!("cannot start a worker process: {e}")))?;
    let id = start(
        engine,
        json!({"steps": 6, "step_sleep_ms": 300}),
        "survivor",
    )
    .await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let saga = engine
            .detail(id)
            .await?
            .ok_or_else(|| CliError::not_found(format!("saga {id} vanished")))?;
        let done = saga
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .count();
        if done >= 2 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(CliError::failed("the worker process made no progress"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    child
        .kill()
        .await
        .map_err(|e| CliError::failed(format!("cannot kill the worker process: {e}")))?;
    println!(
        "\nKilled worker process {} (SIGKILL) after two steps of saga {id}; another worker takes over when its {} s lease expires…",
        pid,
        lease.as_secs()
    );
    let rescuer = Background::start(engine, "demo-worker-2", lease);
    let status = finish(engine, id, Duration::from_secs(60)).await;
    rescuer.stop().await;
    status?;
    Ok(id)
}

/// A rough throughput figure: 200 sagas of 10 no-op steps on 8 in-process workers.
async fn throughput(engine: &Engine) -> Result<(), CliError> {
    let (sagas, steps) = (200, 10);
    let began = Instant::now();
    let mut ids = Vec::with_capacity(sagas);
    for _ in 0..sagas {
        ids.push(start(engine, json!({"steps": steps}), "throughput").await?);
    }
    let worker = Background::start(engine, "demo-worker-throughput", Duration::from_secs(30));
    for id in &ids {
        finish(engine, *id, Duration::from_secs(120)).await?;
    }
    worker.stop().await;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "\nThroughput check: {sagas} sagas × {steps} steps in {secs:.2} s ≈ {:.0} durable steps/s (rough; `stepwise bench` measures properly)",
        (sagas * steps) as f64 / secs
    );
    Ok(())
}
