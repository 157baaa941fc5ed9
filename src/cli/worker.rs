//! `stepwise worker`.

use crate::app::{shutdown_signal, App};
use crate::exit::CliError;
use clap::Args;
use std::time::Duration;
use stepwise_engine::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Sagas driven at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Identity recorded as the lease owner and the actor of its events.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Lease length in milliseconds: a dead worker's sagas are resumed after it.
    #[arg(long, default_value_t = 30_000, env = "STEPWISE_LEASE_MS")]
    pub lease_ms: u64,
    /// On Ctrl-C/SIGTERM, how long in-flight steps may take to finish, in seconds.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Group up to N sagas' step commits into one transaction (1: each saga commits alone).
    /// Each saga still waits for the commit holding its step before the next step starts.
    #[arg(long, default_value_t = 1, env = "STEPWISE_COMMIT_BATCH",
          value_parser = clap::value_parser!(u16).range(1..=512))]
    pub commit_batch: u16,
    /// With --commit-batch > 1: grouped commits in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub committers: u16,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "STEPWISE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerArgs {
    pub fn config(&self) -> WorkerConfig {
        let defaults = WorkerConfig::default();
        WorkerConfig {
            worker_id: self.worker_id.clone().unwrap_or(defaults.worker_id),
            concurrency: self.concurrency.max(1),
            lease: Duration::from_millis(self.lease_ms.max(100)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            claim_batch: self.concurrency.clamp(1, 64),
            commit_batch: usize::from(self.commit_batch),
            committers: usize::from(self.committers),
            ..defaults
        }
    }
}

pub async fn run(args: WorkerArgs) -> Result<(), CliError> {
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    let pool_size = (args.concurrency as u32 / 2).clamp(2, 32) + 1;
    let app = App::open(pool_size).await?;
    let worker = app.engine.worker(args.config());
    let shutdown = CancellationToken::new();
    if let Err(e) = app
        .engine
        .store()
        .ensure_history_partitions(app.engine.clock().now())
        .await
    {
        tracing::warn!(error = %e, "could not create the history partitions ahead");
    }
    if let Some(addr) = args.metrics_addr {
        if let Err(e) =
            crate::metrics_server::spawn(addr, app.engine.clone(), shutdown.clone()).await
        {
            app.close().await;
            return Err(CliError::usage(format!(
                "cannot serve metrics on {addr}: {e}"
            )));
        }
    }
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    let result = worker
        .run(shutdown)
        .await
        .map_err(|e| CliError::failed(format!("worker stopped: {e}")));
    app.close().await;
    result
}
