//! Stepwise through PgBouncer in transaction-pooling mode (docs/operations.md, "PgBouncer"):
//! `DATABASE_URL` points at PgBouncer, LISTEN and migrations use `STEPWISE_LISTEN_URL`, and
//! `STEPWISE_PREPARED_STATEMENTS=off` keeps sqlx's statements inside transactions. Each test
//! starts its own PgBouncer (Debian's `pgbouncer` package) in front of the test server; without
//! the binary it says so and passes, unless `STEPWISE_PGBOUNCER_TESTS=1` (set by .ci/run, which
//! installs PgBouncer).
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise::pgbouncer::{Bouncer, BouncerConfig};
use stepwise_engine::{Connections, DbPool, Engine, PgStore, Pooling, SagaStatus, StartRequest};

/// The test's own PgBouncer in front of the server of `url`, or None when the binary is missing
/// outside CI.
fn bouncer_for(url: &str, config: BouncerConfig) -> Option<Bouncer> {
    if stepwise::pgbouncer::binary().is_none() {
        assert!(
            std::env::var("STEPWISE_PGBOUNCER_TESTS").as_deref() != Ok("1"),
            "STEPWISE_PGBOUNCER_TESTS=1 but pgbouncer is not installed"
        );
        eprintln!(
            "SKIPPED: pgbouncer is not installed (Debian: apt-get install pgbouncer); .ci/run \
             installs it and sets STEPWISE_PGBOUNCER_TESTS=1, which makes this test fail instead"
        );
        return None;
    }
    let options = PgConnectOptions::from_str(url).unwrap();
    Some(
        Bouncer::start(
            options.get_host(),
            options.get_port(),
            options.get_username(),
            config,
        )
        .unwrap(),
    )
}

fn database_of(url: &str) -> String {
    PgConnectOptions::from_str(url)
        .unwrap()
        .get_database()
        .unwrap()
        .to_owned()
}

/// 50 tasks × 40 parameterised statements; the errors they got.
async fn fifty_clients<F>(run: F) -> Vec<String>
where
    F: Fn(i32) -> futures::future::BoxFuture<'static, Result<i32, sqlx::Error>>
        + Send
        + Sync
        + 'static,
{
    let run = Arc::new(run);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50 {
        let run = run.clone();
        tasks.spawn(async move {
            let mut errors = Vec::new();
            for i in 0..40 {
                let n = t * 1000 + i;
                match run(n).await {
                    Ok(v) if v == n + 1 => {}
                    Ok(v) => errors.push(format!("wrong answer {v} for {n}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        });
    }
    let mut all = Vec::new();
    while let Some(errors) = tasks.join_next().await {
        all.extend(errors.unwrap());
    }
    all
}

#[sqlx::test(migrations = false)]
async fn turning_off_sqlx_statement_cache_is_not_enough_behind_transaction_pooling_but_the_setting_is(
    pool: PgPool,
) {
    let url = common::database_url(&pool).await;
    let config = BouncerConfig {
        pool_size: 5,
        max_clients: 200,
    };
    let Some(bouncer) = bouncer_for(&url, config) else {
        return;
    };
    let through = PgConnectOptions::from_str(&bouncer.url("postgres", &database_of(&url)))
        .unwrap()
        .extra_float_digits(None);

    // sqlx 0.8 with its cache off still names every statement (sqlx_s_N) and runs it in two
    // round trips: other clients' statements of the same name, or none, meet it.
    let raw = PgPoolOptions::new()
        .max_connections(50)
        .connect_with(through.clone().statement_cache_capacity(0))
        .await
        .unwrap();
    let errors = fifty_clients(move |n| {
        let raw = raw.clone();
        Box::pin(async move {
            sqlx::query_scalar("SELECT $1::int + 1")
                .bind(n)
                .fetch_one(&raw)
                .await
        })
    })
    .await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("prepared statement \"sqlx_s_")),
        "expected sqlx_s_N clashes without the setting, got {} errors: {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );

    let stepwise_pool = DbPool::connect(through, 50, Pooling::Transaction)
        .await
        .unwrap();
    let errors = fifty_clients(move |n| {
        let pool = stepwise_pool.clone();
        Box::pin(async move {
            sqlx::query_scalar("SELECT $1::int + 1")
                .bind(n)
                .fetch_one(&pool)
                .await
        })
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
}

/// `stepwise` with `DATABASE_URL` through PgBouncer and the direct URL for LISTEN.
fn stepwise(bouncer_url: &str, direct_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .env("DATABASE_URL", bouncer_url)
        .env("STEPWISE_LISTEN_URL", direct_url)
        .env("STEPWISE_PREPARED_STATEMENTS", "off")
        .env("RUST_LOG", "warn");
    command
}

fn run_ok(mut command: Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// PgBouncer's own count of client and server connections for `database`
/// (`SHOW POOLS` on its admin console).
async fn pool_counts(bouncer: &Bouncer, database: &str) -> (i64, i64) {
    let options = PgConnectOptions::from_str(&bouncer.url("postgres", "pgbouncer"))
        .unwrap()
        .extra_float_digits(None)
        .statement_cache_capacity(0);
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let rows = sqlx::raw_sql("SHOW POOLS")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    let number = |row: &sqlx::postgres::PgRow, column: &str| -> i64 {
        row.try_get_unchecked::<String, _>(column)
            .map(|s| s.parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut clients = 0;
    let mut servers = 0;
    for row in rows
        .iter()
        .filter(|r| r.try_get_unchecked::<String, _>("database").ok().as_deref() == Some(database))
    {
        clients += number(row, "cl_active") + number(row, "cl_waiting");
        servers += ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
            .iter()
            .map(|c| number(row, c))
            .sum::<i64>();
    }
    let _ = admin.close().await;
    (clients, servers)
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[sqlx::test(migrations = false)]
async fn the_hotel_story_and_a_thousand_sagas_run_through_pgbouncer_200_clients_on_20_server_connections(
    pool: PgPool,
) {
    let direct = common::database_url(&pool).await;
    let config = BouncerConfig {
        pool_size: 20,
        max_clients: 400,
    };
    let Some(bouncer) = bouncer_for(&direct, config) else {
        return;
    };
    let database = database_of(&direct);
    let through = bouncer.url("postgres", &database);

    // The CLI migrates (over the direct URL) and runs the whole hotel story through PgBouncer.
    let mut migrate = stepwise(&through, &direct);
    migrate.arg("migrate");
    run_ok(migrate);
    let mut demo = stepwise(&through, &direct);
    demo.arg("demo").stdout(Stdio::null());
    run_ok(demo);

    // 1,000 synthetic sagas, started through PgBouncer by an engine set up as the CLI is.
    let connections = Connections {
        url: through.clone(),
        listen_url: Some(direct.clone()),
        pooling: Pooling::Transaction,
        ..Connections::direct(&through)
    };
    let store = PgStore::connect_with(&connections, 16).await.unwrap();
    let registry = stepwise_skills::registry().unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(registry),
        Arc::new(stepwise_engine::SystemClock),
    );
    let mut starts = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let engine = engine.clone();
        starts.spawn(async move {
            for i in (chunk..1000).step_by(16) {
                let input = if i % 10 == 0 {
                    json!({"steps": 4, "step_sleep_ms": 5, "fail_at": 3})
                } else {
                    json!({"steps": 4, "step_sleep_ms": 5})
                };
                engine
                    .start(StartRequest {
                        skill: "synthetic_chain".into(),
                        input,
                        idempotency_key: Some(format!("pgbouncer-{i}")),
                        started_by: "test:pgbouncer".into(),
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(started) = starts.join_next().await {
        started.unwrap();
    }

    // Eight worker processes of 25 connections each: 200 clients of PgBouncer.
    let workers = Workers(
        (0..8)
            .map(|w| {
                let mut worker = stepwise(&through, &direct);
                worker
                    .args([
                        "worker",
                        "--worker-id",
                        &format!("bounced-{w}"),
                        "--concurrency",
                        "48",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                worker.spawn().unwrap()
            })
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut most_clients, mut most_servers) = (0, 0);
    loop {
        let (clients, servers) = pool_counts(&bouncer, &database).await;
        most_clients = most_clients.max(clients);
        most_servers = most_servers.max(servers);
        // The demo's bookings leave their no-show timers waiting for the arrival day
        // (docs/skills.md, "No-shows"): every other saga must finish.
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stepwise.sagas
             WHERE status NOT IN ('completed', 'compensated', 'failed')
               AND skill <> 'mark_no_show'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sagas still unfinished after 240 s through PgBouncer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A start followed by its status, through the CLI, while the workers run.
    let mut start = stepwise(&through, &direct);
    start.args([
        "start",
        "synthetic_chain",
        "--input",
        r#"{"steps": 2}"#,
        "--wait",
        "30",
        "--json",
    ]);
    let started = run_ok(start);
    assert_eq!(started["status"], "completed", "{started}");
    let mut show = stepwise(&through, &direct);
    show.args(["sagas", "show", started["id"].as_str().unwrap(), "--json"]);
    assert_eq!(run_ok(show)["status"], "completed");
    drop(workers);

    let counts = store.counts_by_status().await.unwrap();
    let count = |s: SagaStatus| counts.iter().find(|(st, _)| *st == s).map_or(0, |c| c.1);
    let synthetic: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.sagas WHERE idempotency_key LIKE 'pgbouncer-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(synthetic, 1000);
    let compensated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stepwise.sagas
         WHERE idempotency_key LIKE 'pgbouncer-%' AND status = 'compensated'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(compensated, 100, "every tenth saga fails at its third step");
    assert_eq!(count(SagaStatus::Failed), 0);
    let twice = store.steps_succeeded_twice().await.unwrap();
    assert_eq!(twice, 0, "no step succeeded twice");
    eprintln!(
        "PgBouncer: at most {most_clients} client connections on {most_servers} server connections"
    );
    assert!(
        most_servers <= 20,
        "PgBouncer opened {most_servers} server connections"
    );
    assert!(
        most_clients >= 200,
        "only {most_clients} client connections reached PgBouncer"
    );
}
