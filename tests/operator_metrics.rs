//! `stepwise worker --metrics-addr` serves Prometheus metrics that count what it ran.
#![allow(clippy::unwrap_used)]

mod common;

use common::{database_url, engine_with, start, stepwise};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_engine::ManualClock;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Parses the text exposition into `name{labels}` -> value (labels as printed).
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse::<f64>().unwrap())
        })
        .collect()
}

async fn scrape(addr: &str) -> (String, HashMap<String, f64>) {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(response.status().is_success());
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().await.unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let parsed = parse_exposition(&text);
    (text, parsed)
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[sqlx::test(migrations = false)]
async fn worker_metrics_endpoint_counts_the_sagas_it_ran(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .args(["worker", "--metrics-addr", &addr, "--concurrency", "4"])
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait for the endpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{addr}/metrics"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "metrics endpoint never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let inputs = [
        (r#"{"steps":3}"#, 0),
        (r#"{"steps":3}"#, 0),
        (r#"{"steps":2,"fail_at":2}"#, 1),
        (
            r#"{"steps":2,"fail_at":2,"fail_kind":"transient","transient_failures":1}"#,
            0,
        ),
    ];
    for (input, code) in inputs {
        let out = stepwise(
            &url,
            &[
                "start",
                "synthetic_chain",
                "--input",
                input,
                "--wait",
                "30",
                "--json",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{input}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (text, m) = scrape(&addr).await;
    let skill = r#"skill="synthetic_chain""#;
    let get = |series: &str| -> f64 {
        *m.get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(
        get(&format!("stepwise_sagas_started_total{{{skill}}}")),
        4.0
    );
    assert_eq!(
        get(&format!("stepwise_sagas_completed_total{{{skill}}}")),
        3.0
    );
    assert_eq!(
        get(&format!("stepwise_sagas_compensated_total{{{skill}}}")),
        1.0
    );
    assert!(!m.contains_key(&format!("stepwise_sagas_failed_total{{{skill}}}")));
    // step_1 ran once in each of the four sagas.
    assert_eq!(
        get(&format!(
            r#"stepwise_step_duration_seconds_count{{{skill},step="step_1",kind="action",outcome="succeeded"}}"#
        )),
        4.0
    );
    // step_2 failed once for good and once transiently (then succeeded once there, and twice
    // in the plain sagas).
    assert_eq!(
        get(&format!(
            r#"stepwise_step_duration_seconds_count{{{skill},step="step_2",kind="action",outcome="failed"}}"#
        )),
        2.0
    );
    assert_eq!(
        get(&format!(
            r#"stepwise_step_duration_seconds_count{{{skill},step="step_2",kind="action",outcome="succeeded"}}"#
        )),
        3.0
    );
    assert_eq!(
        get(&format!(
            r#"stepwise_step_retries_total{{{skill},step="step_2",kind="action"}}"#
        )),
        1.0
    );
    // The compensated saga undid step_1.
    assert_eq!(
        get(&format!(
            r#"stepwise_step_duration_seconds_count{{{skill},step="step_1",kind="compensation",outcome="succeeded"}}"#
        )),
        1.0
    );
    // Everything finished: nothing is due, nothing waits, nothing is held.
    for state in ["due", "scheduled", "leased"] {
        assert_eq!(
            get(&format!(r#"stepwise_queue_depth{{state="{state}"}}"#)),
            0.0
        );
    }
    assert_eq!(get("stepwise_queue_lag_seconds"), 0.0);
    assert!(get("stepwise_queue_sampled_at_seconds") > 1.7e9);

    // A saga waiting for a later time shows up as scheduled on the next scrape.
    // Started by an engine whose clock is an hour ahead, it is due an hour from now.
    let ahead = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    start(
        &engine_with(pool.clone(), ahead),
        "synthetic_chain",
        serde_json::json!({"steps": 1}),
        None,
    )
    .await;
    let (_, m) = scrape(&addr).await;
    assert_eq!(m[r#"stepwise_queue_depth{state="scheduled"}"#], 1.0);
    drop(worker);
}

/// Collects the bodies POSTed to `/v1/traces`, like an OTLP/HTTP collector.
async fn fake_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), bodies)
}

#[sqlx::test(migrations = false)]
async fn worker_exports_saga_and_step_spans_over_otlp_when_configured(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let (endpoint, bodies) = fake_collector().await;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["worker"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "stepwise-test")
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
            r#"{"steps":2}"#,
            "--wait",
            "30",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saga_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A graceful stop flushes the batch exporter.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    let all: Vec<u8> = bodies.lock().unwrap().concat();
    let contains = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!all.is_empty(), "nothing was exported");
    for needle in [
        "stepwise-test",
        "saga_id",
        &saga_id,
        "synthetic_chain",
        "step_1",
        "step_2",
        "attempt",
    ] {
        assert!(contains(needle), "the export lacks {needle}");
    }
}
