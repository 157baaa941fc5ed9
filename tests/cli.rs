//! The `stepwise` binary as users run it: JSON shapes and exit codes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{database_url, json_of, saga_count, stepwise};
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_engine::{PgStore, SagaStatus, StepStatus};
use uuid::Uuid;

#[sqlx::test(migrations = false)]
async fn start_is_idempotent_and_conflicts_exit_4(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let input = r#"{"steps":2}"#;
    let first = stepwise(
        &url,
        &[
            "start",
            "synthetic_chain",
            "--input",
            input,
            "--idempotency-key",
            "k1",
            "--json",
        ],
    );
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary = json_of(&first);
    for field in [
        "id",
        "skill",
        "skill_version",
        "status",
        "idempotency_key",
        "created_at",
        "updated_at",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    assert_eq!(summary["status"], "pending");
    assert_eq!(summary["idempotency_key"], "k1");

    let again = stepwise(
        &url,
        &[
            "start",
            "synthetic_chain",
            "--input",
            input,
            "--idempotency-key",
            "k1",
            "--json",
        ],
    );
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(json_of(&again)["id"], summary["id"]);

    let conflict = stepwise(
        &url,
        &[
            "start",
            "synthetic_chain",
            "--input",
            r#"{"steps":3}"#,
            "--idempotency-key",
            "k1",
            "--json",
        ],
    );
    assert_eq!(conflict.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("different input"));
}

#[sqlx::test(migrations = false)]
async fn usage_errors_exit_2_and_unknown_things_exit_3(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let bad_json = stepwise(&url, &["start", "synthetic_chain", "--input", "{nope"]);
    assert_eq!(bad_json.status.code(), Some(2));
    let bad_input = stepwise(
        &url,
        &["start", "synthetic_chain", "--input", r#"{"steps":0}"#],
    );
    assert_eq!(bad_input.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_input.stderr).contains("steps"));
    let unknown_skill = stepwise(&url, &["start", "no_such_skill", "--input", "{}"]);
    assert_eq!(unknown_skill.status.code(), Some(3));
    let unknown_saga = stepwise(
        &url,
        &["sagas", "show", "0190f6c4-1111-7000-8000-000000000000"],
    );
    assert_eq!(unknown_saga.status.code(), Some(3));
    let not_an_id = stepwise(&url, &["sagas", "show", "abc"]);
    assert_eq!(not_an_id.status.code(), Some(2));
    assert_eq!(saga_count(&pool).await, 0, "failed starts wrote nothing");
}

#[sqlx::test(migrations = false)]
async fn a_waited_saga_that_ends_compensated_exits_1_and_show_tells_the_story(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["worker", "--worker-id", "cli-test-worker"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = stepwise(
        &url,
        &[
            "start",
            "synthetic_chain",
            "--input",
            r#"{"steps":3,"fail_at":3}"#,
            "--wait",
            "20",
            "--json",
        ],
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json_of(&out);
    assert_eq!(summary["status"], "compensated");

    let id = summary["id"].as_str().unwrap();
    let show = stepwise(&url, &["sagas", "show", id, "--json"]);
    assert_eq!(show.status.code(), Some(0));
    let saga = json_of(&show);
    assert_eq!(saga["error"]["code"], "synthetic_failure");
    assert_eq!(saga["error"]["step"], "step_3");
    assert!(saga["started_by"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(saga["steps"][2]["status"], "failed");
    assert_eq!(saga["steps"][2]["error"]["retryable"], false);
    assert_eq!(saga["steps"][0]["compensation"]["status"], "compensated");
    let kinds: Vec<_> = saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().unwrap(), "saga_started");
    assert_eq!(kinds.last().unwrap(), "saga_compensated");
    assert_eq!(saga["events"][0]["seq"], 1);

    let text = stepwise(&url, &["sagas", "show", id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("COMPENSATED") && text.contains("compensation_succeeded"));

    let list = stepwise(
        &url,
        &["sagas", "list", "--status", "compensated", "--json"],
    );
    assert_eq!(json_of(&list)["sagas"][0]["id"], summary["id"]);
}

#[sqlx::test(migrations = false)]
async fn sigterm_stops_a_worker_gracefully_and_releases_its_sagas(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let start = stepwise(
        &url,
        &[
            "start",
            "synthetic_chain",
            "--input",
            r#"{"steps":20,"step_sleep_ms":200}"#,
            "--json",
        ],
    );
    let saga: Uuid = json_of(&start)["id"].as_str().unwrap().parse().unwrap();
    let store = PgStore::new(pool.clone());
    let worker = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "worker",
            "--worker-id",
            "graceful",
            "--shutdown-grace-secs",
            "5",
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let succeeded = steps_with(&store, saga, StepStatus::Succeeded).await;
        if succeeded >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "worker made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = worker.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let after = store.detail(saga).await.unwrap().expect("saga exists");
    assert_eq!(
        after.status,
        SagaStatus::Running,
        "unfinished, but not lost"
    );
    assert_eq!(
        after.lease_owner, None,
        "the lease was released, so any worker resumes it at once"
    );
    assert!(steps_with(&store, saga, StepStatus::Running).await <= 1);
}

// A time zone the IANA database does not know is a configuration error, reported before any
// database is touched (the URL below answers nothing).
#[test]
fn an_unknown_hotel_time_zone_exits_2_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .arg("migrate")
        .env("STEPWISE_HOTEL_TZ", "Mars/Olympus_Mons")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STEPWISE_HOTEL_TZ=`Mars/Olympus_Mons`"),
        "{stderr}"
    );
}

// So is an approval threshold or deadline that does not parse: no worker starts with a
// refund rule other than the one written.
#[test]
fn a_refund_approval_setting_that_does_not_parse_exits_2_naming_the_variable() {
    for (var, value) in [
        ("STEPWISE_REFUND_APPROVAL_CENTS", "$500"),
        ("STEPWISE_REFUND_APPROVAL_TIMEOUT", "tomorrow"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .arg("migrate")
            .env(var, value)
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{var}=`{value}`")), "{stderr}");
    }
}

#[tokio::test]
async fn the_sandbox_command_serves_until_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["sandbox", "--addr", "127.0.0.1:0", "--seed", "3"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stepwise runs");
    let stderr = child.stderr.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        first
    })
    .await
    .unwrap();
    let url = url
        .strip_prefix("sandbox listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {url}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with('/'),
        "{url}"
    );
    let health = reqwest::get(format!("{url}/_sandbox/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ledger: serde_json::Value = reqwest::get(format!("{url}/_sandbox/ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ledger["objects"]["Hotel_Room__c"].as_array().unwrap().len(),
        22
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// How many of the saga's steps are in `status`, read through the engine's store.
async fn steps_with(store: &PgStore, saga: Uuid, status: StepStatus) -> usize {
    let detail = store.detail(saga).await.unwrap().expect("saga exists");
    detail.steps.iter().filter(|s| s.status == status).count()
}

// Without $USER and $LOGNAME (cron, systemd, a bare container), the actors come from the OS:
// the passwd name of the uid and the host name, never a placeholder.
#[sqlx::test(migrations = false)]
async fn without_user_variables_actors_are_the_os_account_and_host(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let without_user = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .env_remove("USER")
            .env_remove("LOGNAME")
            .output()
            .unwrap()
    };
    let started = without_user(&[
        "start",
        "synthetic_chain",
        "--input",
        r#"{"steps":1}"#,
        "--json",
    ]);
    assert_eq!(
        started.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let id = json_of(&started)["id"].as_str().unwrap().to_string();
    let cancelled = without_user(&["sagas", "cancel", &id, "--json"]);
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );

    let account = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let saga = json_of(&stepwise(&url, &["sagas", "show", &id, "--json"]));
    assert_eq!(saga["started_by"], format!("cli:{account}@{host}"));
    let cancel = saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["kind"] == "cancel_requested")
        .unwrap_or_else(|| panic!("no cancel_requested event: {saga}"));
    assert_eq!(cancel["actor"], format!("operator:{account}@{host}"));
}
