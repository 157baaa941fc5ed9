//! Recovery speed after a PostgreSQL restart (issue 13 item 4): a worker whose statements were
//! cut off by the restart takes its own sagas back as soon as it reconnects, instead of
//! leaving them to its own leases' expiry (30 s here). The test runs its own throwaway
//! PostgreSQL cluster (`stepwise::throwaway_pg`), so it can restart it without touching the
//! server the other tests use; it restarts it twice during a run, once with `pg_ctl stop -m
//! fast` and once with `-m immediate` (a crash), and prints how long after the server's return
//! the first step was committed and every saga had moved on (docs/reliability.md,
//! "PostgreSQL restarts").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepwise::throwaway_pg::{Cluster, StopMode};
use stepwise_engine::{
    Engine, JitterSource, PgStore, Registry, StartRequest, SystemClock, WorkerConfig,
};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);
const SAGAS: usize = 16;

/// A pool of the test's own, to watch the run from outside the worker.
async fn observer(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        .unwrap()
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Restarts the cluster while the worker commits steps; returns (first step committed,
/// every saga moved on) after the server's return.
async fn restart_during_run(cluster: &Cluster, mode: StopMode) -> (Duration, Duration) {
    tokio::task::block_in_place(|| cluster.stop(mode)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| cluster.start()).unwrap();
    let back = Instant::now();
    let back_at = Utc::now();
    // A fresh connection: the observer's old ones died with the server.
    let watch = observer(&cluster.url()).await;
    // Counted in the sagas' histories (a step's success is on its row, docs/storage.md).
    let history = PgStore::new(watch.clone());
    let mut first_commit = None;
    loop {
        let elapsed = back.elapsed();
        if first_commit.is_none() && history.steps_succeeded(Some(back_at)).await.unwrap() > 0 {
            first_commit = Some(elapsed);
        }
        if let Some(first) = first_commit {
            // Every saga not yet completed has moved (a step began or ended) since.
            if history.stalled_since(back_at).await.unwrap() == 0 {
                watch.close().await;
                return (first, elapsed);
            }
        }
        assert!(
            elapsed < LEASE / 3,
            "after the {} restart some sagas did not move for {elapsed:?}: they waited for \
             their lease to expire",
            mode.as_str()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_resumes_its_sagas_as_soon_as_postgresql_is_back_not_at_lease_expiry() {
    let cluster = Cluster::create().expect("a throwaway PostgreSQL cluster");
    let store = PgStore::connect(&cluster.url(), 10).await.unwrap();
    store.migrate().await.unwrap();
    let mut registry = Registry::new();
    registry
        .register(stepwise_engine::synthetic::skill().unwrap())
        .unwrap();
    let engine = Engine::new(store, Arc::new(registry), Arc::new(SystemClock));
    for _ in 0..SAGAS {
        engine
            .start(StartRequest {
                skill: "synthetic_chain".into(),
                input: json!({"steps": 250, "step_sleep_ms": 2}),
                idempotency_key: None,
                started_by: "test:reconnect".into(),
            })
            .await
            .unwrap();
    }
    let worker = engine.worker(WorkerConfig {
        worker_id: "reconnecting".into(),
        concurrency: SAGAS,
        lease: LEASE,
        jitter: JitterSource::Fixed(1.0),
        ..WorkerConfig::default()
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });

    let mut figures = Vec::new();
    for (mode, after_steps) in [(StopMode::Fast, 200), (StopMode::Immediate, 1500)] {
        // Every saga is mid-run, committing steps continuously, when the server goes away.
        let watch = observer(&cluster.url()).await;
        let history = PgStore::new(watch.clone());
        while history.steps_succeeded(None).await.unwrap() < after_steps {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watch.close().await;
        let (first, all) = restart_during_run(&cluster, mode).await;
        println!(
            "{} restart: first step committed {} ms after the server was back, every saga \
             moved on after {} ms (lease {} s)",
            mode.as_str(),
            first.as_millis(),
            all.as_millis(),
            LEASE.as_secs()
        );
        figures.push((mode, first, all));
    }

    let watch = observer(&cluster.url()).await;
    let finished = Instant::now();
    while scalar(
        &watch,
        "SELECT count(*) FROM stepwise.sagas WHERE status <> 'completed'",
    )
    .await
        > 0
    {
        assert!(
            finished.elapsed() < Duration::from_secs(120),
            "the sagas did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // Nothing waited for a lease to expire, and at least one saga was taken back by its own
    // worker (a claim of a saga held by nobody bumps the token once; a take-back once more).
    let expired = scalar(
        &watch,
        "SELECT count(*) FROM stepwise.events WHERE kind = 'lease_expired'",
    )
    .await;
    assert_eq!(expired, 0, "no lease had to expire");
    let taken_back = scalar(
        &watch,
        "SELECT count(*) FROM stepwise.sagas WHERE fencing_token > 1",
    )
    .await;
    assert!(
        taken_back > 0,
        "the restarts cut off no commit: nothing was taken back"
    );
    // Fencing held: no step succeeded twice, every saga ran every step once.
    let history = PgStore::new(watch.clone());
    let twice = history.steps_succeeded_twice().await.unwrap();
    assert_eq!(twice, 0, "a step succeeded twice");
    let succeeded = history.steps_succeeded(None).await.unwrap();
    assert_eq!(succeeded, (SAGAS * 250) as i64);
    println!("{taken_back} of {SAGAS} sagas were taken back by their worker after a restart");
    watch.close().await;
    for (mode, first, all) in figures {
        assert!(
            all < LEASE / 3,
            "{}: {all:?} to resume is not well before the lease",
            mode.as_str()
        );
        assert!(first <= all);
    }
}
