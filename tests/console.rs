//! The operator console's routes over real HTTP and a real database (docs/console.md): sign-in
//! and roles, every page, the CSRF and reason rules of actions, each action's effect in the
//! saga's history, keyset paging and filters, bulk actions after a dry run, and the live event
//! stream fed by LISTEN/NOTIFY.
#![allow(clippy::unwrap_used)]

mod common;
mod console_support;

use common::{detail, drive_with_retries, start, worker};
use console_support::*;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise::http::proxy::TrustProxy;
use stepwise_engine::{Engine, EventKind, ManualClock, PgStore, SagaStatus};
use uuid::Uuid;

const SYN: &str = "synthetic_chain";

/// The built-in skills with the hotel's roles (guest, staff, manager) declared.
async fn setup(pool: &PgPool) -> (Engine, ManualClock) {
    stepwise::app::migrate(pool)
        .await
        .expect("migrations apply");
    let clock = ManualClock::starting_now();
    let mut registry = stepwise_skills::registry().unwrap();
    stepwise_skills::hotel::roles::declare(&mut registry).unwrap();
    let engine = Engine::new(
        PgStore::new(pool.clone()),
        Arc::new(registry),
        Arc::new(clock.clone()),
    );
    (engine, clock)
}

/// A saga that ends `failed`: its second step fails for good and the first compensation
/// fails twice (its two attempts per round); a retry's round succeeds.
async fn failed_saga(engine: &Engine, clock: &ManualClock) -> Uuid {
    let id = start(
        engine,
        SYN,
        json!({"steps": 2, "fail_at": 2, "compensation_failures": 2, "max_attempts": 2}),
        None,
    )
    .await;
    drive_with_retries(clock, &worker(engine, "w1"), 6).await;
    assert_eq!(detail(engine, id).await.status, SagaStatus::Failed);
    id
}

#[sqlx::test(migrations = false)]
async fn pages_without_a_session_redirect_to_sign_in_and_the_rest_is_401(pool: PgPool) {
    let (engine, _) = setup(&pool).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let http = client();
    for page in [
        "/console",
        "/console/sagas",
        "/console/audit",
        "/console/bulk",
    ] {
        let answer = http
            .get(format!("{}{page}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "{page}");
        assert_eq!(location(&answer), "/console/signin", "{page}");
    }
    for fragment in ["/console/overview/live", "/console/events"] {
        let answer = http
            .get(format!("{}{fragment}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{fragment}");
    }
    let id = Uuid::now_v7();
    let post = http
        .post(format!("{}/console/sagas/{id}/retry", served.base))
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401);
    let asset = http
        .get(format!("{}/console/assets/htmx.min.js", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200, "the vendored script needs no session");
    assert!(asset.text().await.unwrap().contains("htmx"));
}

#[sqlx::test(migrations = false)]
async fn sign_in_refuses_unknown_tokens_guests_and_forms_without_their_cookie(pool: PgPool) {
    let (engine, _) = setup(&pool).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let unknown = post_sign_in(&served.base, "swt_nope").await;
    assert_eq!(unknown.status(), 401);
    assert!(set_cookie(&unknown, "stepwise_console").is_none());

    let guest = token(&pool, &engine, "guest:ana@example.com").await;
    let refused = post_sign_in(&served.base, &guest).await;
    assert_eq!(refused.status(), 403, "guests may not enter");
    assert!(set_cookie(&refused, "stepwise_console").is_none());

    // A sign-in form posted from elsewhere has no sign-in cookie (login CSRF).
    let operator = token(&pool, &engine, "operator:alice").await;
    let forged = client()
        .post(format!("{}/console/signin", served.base))
        .form(&[("token", operator.as_str()), ("signin_csrf", "abc")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let ok = post_sign_in(&served.base, &operator).await;
    assert_eq!(ok.status(), 303);
    let cookie = set_cookie(&ok, "stepwise_console").unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
}

#[sqlx::test(migrations = false)]
async fn cookies_are_secure_when_a_trusted_proxy_says_https(pool: PgPool) {
    let (engine, _) = setup(&pool).await;
    let operator = token(&pool, &engine, "operator:alice").await;
    for (trust, secure) in [(TrustProxy::Everyone, true), (TrustProxy::Nobody, false)] {
        let served = serve_console(&engine, trust).await;
        let form = client()
            .get(format!("{}/console/signin", served.base))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let cookie = set_cookie(&form, "stepwise_console_signin").unwrap();
        let html = form.text().await.unwrap();
        let answer = client()
            .post(format!("{}/console/signin", served.base))
            .header("x-forwarded-proto", "https")
            .header("cookie", cookie.split(';').next().unwrap())
            .form(&[
                ("token", operator.as_str()),
                (
                    "signin_csrf",
                    hidden(&html, "signin_csrf").unwrap().as_str(),
                ),
            ])
            .send()
            .await
            .unwrap();
        let session = set_cookie(&answer, "stepwise_console").unwrap();
        assert_eq!(session.contains("; Secure"), secure, "{session}");
    }
}

#[sqlx::test(migrations = false)]
async fn readers_see_every_page_but_no_action_and_posting_one_is_forbidden(pool: PgPool) {
    let (engine, clock) = setup(&pool).await;
    let failed = failed_saga(&engine, &clock).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    for role in ["staff:frontdesk", "manager:maria"] {
        let reader = sign_in(&served.base, &token(&pool, &engine, role).await).await;
        let overview = reader.get_ok("/console").await;
        assert!(
            overview.contains(&failed.to_string()),
            "the failed saga is listed"
        );
        assert!(overview.contains("(read only)"));
        assert!(
            !overview.contains("/console/bulk"),
            "no bulk link for readers"
        );
        reader.get_ok("/console/sagas").await;
        reader.get_ok("/console/audit").await;
        let page = reader.get_ok(&format!("/console/sagas/{failed}")).await;
        assert!(
            !page.contains("data-action="),
            "{role} sees no action buttons"
        );
        assert_eq!(
            reader
                .get(&format!("/console/sagas/{failed}/retry"))
                .await
                .status(),
            403
        );
        assert_eq!(reader.get("/console/bulk").await.status(), 403);
        let posted = reader
            .post(
                &format!("/console/sagas/{failed}/retry"),
                &[("reason", "let me")],
            )
            .await;
        assert_eq!(posted.status(), 403, "{role}");
        assert_eq!(
            detail(&engine, failed).await.status,
            SagaStatus::Failed,
            "nothing changed"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn actions_need_the_sessions_csrf_token_and_a_reason_and_record_the_principal(pool: PgPool) {
    let (engine, clock) = setup(&pool).await;
    let failed = failed_saga(&engine, &clock).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let operator = sign_in(&served.base, &token(&pool, &engine, "operator:alice").await).await;
    let page = operator.get_ok(&format!("/console/sagas/{failed}")).await;
    assert!(
        page.contains("data-action=\"retry\""),
        "the operator is offered a retry"
    );
    let confirm = operator
        .get_ok(&format!("/console/sagas/{failed}/retry"))
        .await;
    assert!(confirm.contains("name=\"reason\"") && confirm.contains("required"));

    let path = format!("/console/sagas/{failed}/retry");
    let missing = operator.post_raw(&path, &[("reason", "prod outage")]).await;
    assert_eq!(missing.status(), 403, "no CSRF token");
    let wrong = operator
        .post_raw(&path, &[("reason", "prod outage"), ("csrf", "0000")])
        .await;
    assert_eq!(wrong.status(), 403, "another CSRF token");
    // Another session's token is not this session's.
    let other = sign_in(&served.base, &token(&pool, &engine, "operator:bob").await).await;
    assert_ne!(other.csrf, operator.csrf);
    let crossed = operator
        .post_raw(
            &path,
            &[("reason", "prod outage"), ("csrf", other.csrf.as_str())],
        )
        .await;
    assert_eq!(crossed.status(), 403);
    let no_reason = operator.post(&path, &[("reason", " ")]).await;
    assert_eq!(no_reason.status(), 422);
    assert_eq!(detail(&engine, failed).await.status, SagaStatus::Failed);

    let done = operator
        .post(&path, &[("reason", "payments back up")])
        .await;
    assert_eq!(done.status(), 303);
    assert_eq!(
        location(&done),
        format!("/console/sagas/{failed}?done=retry")
    );
    let saga = detail(&engine, failed).await;
    let retry = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::OperatorRetry)
        .expect("the retry is in the history");
    assert_eq!(retry.actor, "operator:alice");
    assert_eq!(retry.detail.as_ref().unwrap()["reason"], "payments back up");
    // Applied again, the engine refuses: 409 with its reason.
    let again = operator.post(&path, &[("reason", "twice")]).await;
    assert_eq!(again.status(), 409);

    // Signing out ends the session: its cookie no longer opens pages.
    let out = operator.post("/console/signout", &[]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(operator.get("/console").await.status(), 303);
}

#[sqlx::test(migrations = false)]
async fn restart_fork_cancel_and_send_go_through_the_operator_api(pool: PgPool) {
    let (engine, clock) = setup(&pool).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let operator = sign_in(&served.base, &token(&pool, &engine, "operator:alice").await).await;
    let w = worker(&engine, "w1");

    // Restart a compensated saga: a new saga linked to it.
    let compensated = start(&engine, SYN, json!({"steps": 3, "fail_at": 3}), Some("k-1")).await;
    drive_with_retries(&clock, &w, 3).await;
    assert_eq!(
        detail(&engine, compensated).await.status,
        SagaStatus::Compensated
    );
    let restarted = operator
        .post(
            &format!("/console/sagas/{compensated}/restart"),
            &[("reason", "try again")],
        )
        .await;
    assert_eq!(restarted.status(), 303);
    let new_id = redirected_saga(&restarted);
    assert_eq!(detail(&engine, new_id).await.replay_of, Some(compensated));
    let original = operator
        .get_ok(&format!("/console/sagas/{compensated}"))
        .await;
    assert!(
        original.contains(&new_id.to_string()),
        "the replay is linked from the original"
    );

    // Fork from a step: the picker lists the steps; the fork reuses the earlier outputs.
    let completed = start(&engine, SYN, json!({"steps": 3}), None).await;
    drive_with_retries(&clock, &w, 2).await;
    let picker = operator
        .get_ok(&format!("/console/sagas/{completed}/fork"))
        .await;
    assert!(picker.contains("name=\"from_step\"") && picker.contains("step_2"));
    let forked = operator
        .post(
            &format!("/console/sagas/{completed}/fork"),
            &[("reason", "rerun the tail"), ("from_step", "step_2")],
        )
        .await;
    assert_eq!(forked.status(), 303);
    let fork_id = redirected_saga(&forked);
    let fork = detail(&engine, fork_id).await;
    assert_eq!(fork.replay_of, Some(completed));
    assert!(fork
        .events
        .iter()
        .any(|e| e.kind == EventKind::OperatorFork && e.actor == "operator:alice"));

    // Send the awaited event: the form comes from the wait's schema.
    let waiting = start(&engine, SYN, json!({"steps": 2, "wait_at": 2}), None).await;
    drive_with_retries(&clock, &w, 1).await;
    assert_eq!(detail(&engine, waiting).await.status, SagaStatus::Waiting);
    let form = operator
        .get_ok(&format!("/console/sagas/{waiting}/send"))
        .await;
    assert!(form.contains("name=\"event\" value=\"go\""), "{form}");
    let sent = operator
        .post(
            &format!("/console/sagas/{waiting}/send"),
            &[
                ("reason", "approved by phone"),
                ("event", "go"),
                ("payload_json", "{\"ok\":true}"),
            ],
        )
        .await;
    assert_eq!(sent.status(), 303);
    let saga = detail(&engine, waiting).await;
    let received = saga
        .events
        .iter()
        .find(|e| e.kind == EventKind::EventReceived)
        .expect("the event was delivered");
    assert_eq!(received.actor, "operator:alice");
    assert!(received.detail.as_ref().unwrap()["key"]
        .as_str()
        .unwrap()
        .contains("approved by phone"));
    let bad = operator
        .post(
            &format!("/console/sagas/{waiting}/send"),
            &[
                ("reason", "again"),
                ("event", "go"),
                ("payload_json", "not json"),
            ],
        )
        .await;
    assert_eq!(bad.status(), 422);

    // Cancel a running saga (a long wait keeps it unfinished).
    let long = start(&engine, SYN, json!({"steps": 2, "wait_at": 1}), None).await;
    drive_with_retries(&clock, &w, 1).await;
    let cancelled = operator
        .post(
            &format!("/console/sagas/{long}/cancel"),
            &[("reason", "guest called")],
        )
        .await;
    assert_eq!(cancelled.status(), 303);
    let saga = detail(&engine, long).await;
    assert!(saga.cancel_requested_at.is_some());
    assert!(saga
        .events
        .iter()
        .any(|e| e.kind == EventKind::CancelRequested && e.actor == "operator:alice"));
    let unknown = operator
        .post(
            &format!("/console/sagas/{long}/explode"),
            &[("reason", "x y z")],
        )
        .await;
    assert_eq!(unknown.status(), 404);
}

#[sqlx::test(migrations = false)]
async fn the_saga_list_pages_by_keyset_and_filters(pool: PgPool) {
    let (engine, _) = setup(&pool).await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let key = format!("booking-{i:03}");
        ids.push(start(&engine, SYN, json!({"steps": 1}), Some(&key)).await);
    }
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let staff = sign_in(
        &served.base,
        &token(&pool, &engine, "staff:frontdesk").await,
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut path = "/console/sagas".to_string();
    let mut sizes = Vec::new();
    loop {
        let page = staff.get_ok(&path).await;
        let rows: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| page.contains(&format!("/console/sagas/{id}\"")))
            .collect();
        sizes.push(rows.len());
        for id in rows {
            assert!(seen.insert(id), "{id} is on two pages");
        }
        match page.split("rel=\"next\" href=\"").nth(1) {
            Some(rest) => path = rest.split('"').next().unwrap().replace("&amp;", "&"),
            None => break,
        }
    }
    assert_eq!(sizes, vec![50, 50, 20]);
    assert_eq!(seen.len(), 120);

    let by_key = staff.get_ok("/console/sagas?q=booking-007").await;
    assert!(by_key.contains(&ids[7].to_string()));
    assert!(!by_key.contains(&ids[8].to_string()));
    let by_id = staff.get_ok(&format!("/console/sagas?q={}", ids[42])).await;
    assert!(by_id.contains(&format!("/console/sagas/{}\"", ids[42])));
    assert!(!by_id.contains(&format!("/console/sagas/{}\"", ids[41])));
    let none = staff.get_ok("/console/sagas?status=failed").await;
    assert!(none.contains("No saga matches."));
    let future = staff.get_ok("/console/sagas?from=2999-01-01").await;
    assert!(future.contains("No saga matches."));
    assert_eq!(
        staff.get("/console/sagas?from=yesterday").await.status(),
        400
    );
    assert_eq!(staff.get("/console/sagas?status=lost").await.status(), 400);
    assert_eq!(
        staff.get("/console/sagas?after=garbage").await.status(),
        400
    );
    assert_eq!(
        staff
            .get(&format!("/console/sagas/{}", Uuid::now_v7()))
            .await
            .status(),
        404
    );
    assert_eq!(staff.get("/console/sagas/not-a-uuid").await.status(), 404);
}

#[sqlx::test(migrations = false)]
async fn bulk_retry_counts_first_and_applies_only_the_counted_set(pool: PgPool) {
    let (engine, clock) = setup(&pool).await;
    let a = failed_saga(&engine, &clock).await;
    let b = failed_saga(&engine, &clock).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let operator = sign_in(&served.base, &token(&pool, &engine, "operator:alice").await).await;
    let dry = operator
        .get_ok(&format!(
            "/console/bulk?action=retry&status=failed&skill={SYN}"
        ))
        .await;
    assert!(
        dry.contains("data-matched=\"2\" data-accepted=\"2\""),
        "{dry}"
    );
    assert_eq!(
        detail(&engine, a).await.status,
        SagaStatus::Failed,
        "a dry run changes nothing"
    );
    let fields = [
        ("action", "retry"),
        ("status", "failed"),
        ("skill", SYN),
        ("since", ""),
        ("reason", "bulk after outage"),
    ];
    let mut stale = fields.to_vec();
    stale.push(("expected", "3"));
    assert_eq!(operator.post("/console/bulk", &stale).await.status(), 409);
    let mut counted = fields.to_vec();
    counted.push(("expected", "2"));
    let applied = operator.post("/console/bulk", &counted).await;
    assert_eq!(applied.status(), 200);
    assert!(applied
        .text()
        .await
        .unwrap()
        .contains("2 applied, 0 refused"));
    for id in [a, b] {
        assert_eq!(detail(&engine, id).await.status, SagaStatus::Compensating);
    }
}

#[sqlx::test(migrations = false)]
async fn the_event_stream_reports_a_status_change_from_notify(pool: PgPool) {
    let (engine, clock) = setup(&pool).await;
    let failed = failed_saga(&engine, &clock).await;
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let staff = sign_in(
        &served.base,
        &token(&pool, &engine, "staff:frontdesk").await,
    )
    .await;
    let mut stream = staff.get(&format!("/console/events?saga={failed}")).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The listener announces itself with a refresh once it listens; then the retry.
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retried = false;
    while Instant::now() < deadline && !received.contains(&format!("{failed} compensat")) {
        if !retried && received.contains("refresh") {
            engine
                .retry(
                    failed,
                    &stepwise_engine::OperatorRequest::new("operator:test"),
                )
                .await
                .unwrap();
            retried = true;
        }
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await
        {
            received.push_str(&String::from_utf8_lossy(&chunk));
        } else if !retried {
            // No refresh seen yet (the listener may have started before the stream opened).
            received.push_str("refresh");
        }
    }
    assert!(
        received.contains(&format!("event: saga\ndata: {failed} compensating")),
        "{received}"
    );
}

/// The saga list with 100,000 sagas (docs/console.md states the measured times): the first
/// page, a page deep in the keyset, and filtered pages each stay well under a second.
#[sqlx::test(migrations = false)]
async fn the_saga_list_stays_fast_with_100000_sagas(pool: PgPool) {
    let (engine, _) = setup(&pool).await;
    let made = Instant::now();
    sqlx::query(
        "INSERT INTO stepwise.sagas (id, skill, skill_version, status, idempotency_key, input,
                                     started_by, cursor, step_count, wake_at, created_at, updated_at)
         SELECT gen_random_uuid(), 'synthetic_chain', 1,
                (ARRAY['completed','completed','completed','compensated','failed'])[1 + i % 5],
                'key-' || i, jsonb_build_object('steps', 1), 'staff:frontdesk', 1, 1, NULL,
                now() - make_interval(secs => i), now() - make_interval(secs => i)
         FROM generate_series(1, 100000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE stepwise.sagas")
        .execute(&pool)
        .await
        .unwrap();
    eprintln!("100000 sagas inserted in {:?}", made.elapsed());
    let served = serve_console(&engine, TrustProxy::Nobody).await;
    let staff = sign_in(
        &served.base,
        &token(&pool, &engine, "staff:frontdesk").await,
    )
    .await;
    let mut path = "/console/sagas".to_string();
    let mut first = None;
    for page in 0..40 {
        let started = Instant::now();
        let html = staff.get_ok(&path).await;
        let took = started.elapsed();
        if page == 0 {
            first = Some(took);
        }
        path = html
            .split("rel=\"next\" href=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .replace("&amp;", "&");
        if page == 39 {
            eprintln!("page 1: {:?}, page 40: {took:?}", first.unwrap());
            assert!(took < Duration::from_secs(1), "page 40 took {took:?}");
        }
    }
    for filter in [
        "status=failed",
        "status=failed&skill=synthetic_chain&from=2000-01-01",
        "q=key-99999",
        "q=staff%3Afrontdesk",
    ] {
        let started = Instant::now();
        staff.get_ok(&format!("/console/sagas?{filter}")).await;
        let took = started.elapsed();
        eprintln!("{filter}: {took:?}");
        assert!(took < Duration::from_secs(1), "{filter} took {took:?}");
    }
    let started = Instant::now();
    staff.get_ok("/console").await;
    eprintln!("overview: {:?}", started.elapsed());
}

#[sqlx::test(migrations = false)]
async fn stepwise_console_serves_the_console_alone(pool: PgPool) {
    setup(&pool).await;
    let url = common::database_url(&pool).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["console", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("stepwise console: listening on ") {
                return rest.trim_end_matches("/console").to_string();
            }
        }
        panic!("stepwise console exited before listening");
    })
    .await
    .expect("the console listens");
    let http = client();
    let page = http.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(location(&page), "/console/signin");
    let form = http
        .get(format!("{base}/console/signin"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let mcp = http.post(format!("{base}/mcp")).send().await.unwrap();
    assert_eq!(
        mcp.status(),
        404,
        "the console alone serves no MCP endpoint"
    );
    child.kill().await.unwrap();
}
