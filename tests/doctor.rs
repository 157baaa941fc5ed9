//! `stepwise doctor` and what a refused login looks like, against real servers: the test
//! cluster (healthy), and a scram-only server as distributions install it (refused).
#![allow(clippy::unwrap_used)]

mod common;
mod fresh_support;

use common::json_of;
use serde_json::Value;
use sqlx::PgPool;
use std::process::{Command, Output};

/// Runs `stepwise` with `DATABASE_URL=url` and no external services configured.
fn stepwise(url: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("STEPWISE_") {
            command.env_remove(name);
        }
    }
    command.output().unwrap()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[sqlx::test(migrations = false)]
async fn doctor_is_healthy_on_a_migrated_database_and_sees_migrations_out_of_step(pool: PgPool) {
    let url = common::database_url(&pool).await;
    assert!(stepwise(&url, &["migrate"]).status.success());

    let out = stepwise(&url, &["doctor", "--json"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["healthy"], true);
    for name in [
        "database",
        "server_version",
        "migrations:stepwise",
        "migrations:hotel",
        "migrations:mcp",
        "synchronous_commit",
        "clock",
        "webhook_secret",
    ] {
        let found = check(&report, name);
        assert_ne!(found["status"], "fail", "{found}");
        assert!(
            found["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{found}"
        );
    }
    for schema in ["stepwise", "hotel", "mcp"] {
        let name = format!("migrations:{schema}");
        assert_eq!(check(&report, &name)["status"], "ok");
        assert_eq!(check(&report, &name)["fix"], Value::Null);
    }
    // No service configured: the services check says what commands then do.
    assert!(check(&report, "services")["detail"]
        .as_str()
        .unwrap()
        .contains("in-process sandbox"));

    // A version this binary does not know, as a newer stepwise would leave it.
    sqlx::query(
        "INSERT INTO stepwise._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = stepwise(&url, &["doctor", "--json"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert_eq!(report["healthy"], false);
    let migrations = check(&report, "migrations:stepwise");
    assert_eq!(migrations["status"], "fail");
    assert!(
        migrations["detail"]
            .as_str()
            .unwrap()
            .contains("99990101000000"),
        "{migrations}"
    );
    assert!(migrations["fix"].as_str().is_some());

    // The text form names each finding and what to do.
    let out = stepwise(&url, &["doctor"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  migrations:stepwise"), "{text}");
    assert!(text.contains("fix: run the stepwise version"), "{text}");
}

#[test]
fn a_refused_login_is_one_clear_message_and_exit_2() {
    let server = fresh_support::ScramServer::start();
    let url = server.url_without_password();

    for args in [
        &["migrate"][..],
        &["worker"],
        &["sagas", "list"],
        &["start", "synthetic_chain", "--input", r#"{"steps":1}"#],
    ] {
        let out = stepwise(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("PostgreSQL at {url} refused the login")),
            "{stderr}"
        );
        assert!(
            stderr.contains("password authentication failed for user \"postgres\""),
            "{stderr}"
        );
        assert!(
            stderr.contains("set DATABASE_URL with a password (e.g. postgres://user:pass@host/db)"),
            "{stderr}"
        );
        assert!(
            stderr.contains("or unset it to use the embedded server"),
            "{stderr}"
        );
        assert!(
            stderr.lines().count() <= 2,
            "one message, not a stack: {stderr}"
        );
    }

    // A password in the URL is never printed.
    let with_password = format!(
        "postgres://postgres:wrong-one@127.0.0.1:{}/postgres",
        server.port
    );
    let out = stepwise(&with_password, &["migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("wrong-one"), "{stderr}");

    let out = stepwise(&url, &["doctor", "--json"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert_eq!(report["healthy"], false);
    let database = check(&report, "database");
    assert_eq!(database["status"], "fail");
    assert!(
        database["detail"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{database}"
    );
    assert!(
        database["fix"]
            .as_str()
            .unwrap()
            .contains("set DATABASE_URL with a password"),
        "{database}"
    );
}
