//! Measurements of durable waits for BENCHMARKS.md (ignored by default; run with
//! `cargo test --release -p stepwise-engine --test waits_measure -- --ignored --nocapture`):
//! delivery -> next step started on an idle worker, the worker's load on PostgreSQL with
//! 100,000 waiting sagas against none, and the process's RSS.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise_engine::{
    Engine, PgStore, Registry, SagaStatus, StartRequest, SystemClock, WorkerConfig,
};
use tokio_util::sync::CancellationToken;

fn engine(pool: PgPool) -> Engine {
    let mut registry = Registry::new();
    registry
        .register(stepwise_engine::synthetic::skill().unwrap())
        .unwrap();
    Engine::new(
        PgStore::new(pool),
        Arc::new(registry),
        Arc::new(SystemClock),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Transactions committed in this database, and rows of `stepwise.sagas` read (by sequential
/// and index scans), per second over `window`. Vacuumed and settled first so that autovacuum
/// does not run inside the window.
async fn load(pool: &PgPool, window: Duration) -> (f64, f64) {
    for table in ["stepwise.sagas", "stepwise.steps"] {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sample = || async {
        // Statistics are cached per transaction; clear them to read fresh numbers.
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT d.xact_commit + d.xact_rollback, t.seq_tup_read,
                    COALESCE(t.idx_tup_fetch, 0)
             FROM pg_stat_database d, pg_stat_user_tables t
             WHERE d.datname = current_database()
               AND t.schemaname = 'stepwise' AND t.relname = 'sagas'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        row
    };
    let before = sample().await;
    tokio::time::sleep(window).await;
    let after = sample().await;
    let secs = window.as_secs_f64();
    (
        (after.0 - before.0) as f64 / secs,
        ((after.1 - before.1) + (after.2 - before.2)) as f64 / secs,
    )
}

/// What one durable commit costs on this server right now (the floor of every step of the
/// path: `deliver`, the claim and the step commit each end in one): a one-row insert in its own
/// transaction, `n` times, in milliseconds, sorted.
async fn commit_latencies(pool: &PgPool, n: usize) -> Vec<f64> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS public.commit_probe (id bigserial PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        sqlx::query("INSERT INTO public.commit_probe DEFAULT VALUES")
            .execute(&mut *conn)
            .await
            .unwrap();
        all.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    all.sort_by(f64::total_cmp);
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[sqlx::test(migrations = false)]
#[ignore = "a measurement for BENCHMARKS.md, not a check"]
async fn measure_waits(pool: PgPool) {
    common::migrate(&pool).await;
    let engine = engine(pool.clone());
    let stop = CancellationToken::new();
    let worker = engine.worker(WorkerConfig {
        worker_id: "measure".into(),
        ..WorkerConfig::default()
    });
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };

    // 1. delivery -> next step started, one saga at a time on an idle worker; and the part of it
    // that is the `deliver` call itself.
    let mut latencies = Vec::new();
    let mut deliver_calls = Vec::new();
    for _ in 0..200 {
        let id = engine
            .start(StartRequest {
                skill: "synthetic_chain".into(),
                input: json!({"steps": 3, "wait_at": 2}),
                idempotency_key: None,
                started_by: "measure".into(),
            })
            .await
            .unwrap()
            .saga
            .id;
        while engine.store().summary(id).await.unwrap().unwrap().status != SagaStatus::Waiting {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the worker is idle again
        let sent = chrono::Utc::now();
        engine
            .deliver(id, "go", json!({}), "k", "measure")
            .await
            .unwrap();
        deliver_calls.push((chrono::Utc::now() - sent).num_microseconds().unwrap() as f64 / 1000.0);
        engine.wait(id, Duration::from_secs(10)).await.unwrap();
        let detail = engine.detail(id).await.unwrap().unwrap();
        let started = detail
            .events
            .iter()
            .find(|e| e.kind.as_str() == "step_started" && e.step.as_deref() == Some("step_3"))
            .unwrap()
            .at;
        latencies.push((started - sent).num_microseconds().unwrap() as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    deliver_calls.sort_by(f64::total_cmp);
    let commits = commit_latencies(&pool, 200).await;
    let (p50, commit_p50) = (percentile(&latencies, 0.5), percentile(&commits, 0.5));
    println!(
        "delivery -> next step started: p50 {p50:.2} ms, p99 {:.2} ms ({} sagas); of which the \
         deliver call: p50 {:.2} ms",
        percentile(&latencies, 0.99),
        latencies.len(),
        percentile(&deliver_calls, 0.5),
    );
    println!(
        "one durable commit on this server now: p50 {commit_p50:.2} ms, p99 {:.2} ms; the path \
         is {:.1} commits' worth (it has three: deliver, claim, step)",
        percentile(&commits, 0.99),
        p50 / commit_p50,
    );

    // 2. The worker's load with nothing waiting, then with 100,000 waiting sagas.
    let window = Duration::from_secs(10);
    let (xacts_none, rows_none) = load(&pool, window).await;
    let rss_none = rss_kib();
    let made = Instant::now();
    // As the worker leaves a waiting saga (docs/storage.md): its step's attempt stays in
    // flight on the saga row; the step's row has no attempt that ended.
    sqlx::raw_sql(
        "WITH s AS (
             INSERT INTO stepwise.sagas (id, skill, skill_version, status, input, started_by,
                                         cursor, step_count, wake_at, waiting_for,
                                         attempt_position, attempt_compensation, attempt,
                                         attempt_started_at, attempt_seq, attempt_actor,
                                         created_at, updated_at)
             SELECT gen_random_uuid(), 'synthetic_chain', 1, 'waiting',
                    '{\"steps\":1,\"wait_at\":1}', 'measure', 0, 1, now() + interval '1 day',
                    jsonb_build_object('step', 'step_1', 'event', 'go'),
                    0, false, 1, now(), nextval('stepwise.events_id_seq'), 'measure',
                    now(), now()
             FROM generate_series(1, 100000)
             RETURNING id)
         INSERT INTO stepwise.steps (saga_id, position, name, status, attempts)
         SELECT id, 0, 'step_1', 'pending', 0 FROM s;",
    )
    .execute(&pool)
    .await
    .unwrap();
    println!("made 100,000 waiting sagas in {:?}", made.elapsed());
    let (xacts_many, rows_many) = load(&pool, window).await;
    let rss_many = rss_kib();
    println!(
        "worker load, nothing waiting: {xacts_none:.1} transactions/s, {rows_none:.1} saga rows read/s; RSS {rss_none} KiB"
    );
    println!(
        "worker load, 100,000 waiting: {xacts_many:.1} transactions/s, {rows_many:.1} saga rows read/s; RSS {rss_many} KiB"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
