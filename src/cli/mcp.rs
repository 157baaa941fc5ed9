//! `stepwise mcp [--http ADDR] [--no-worker]`: the MCP facade over the built-in skills.
//!
//! Over stdio (the default) one session acts as `STEPWISE_PRINCIPAL` (`role:subject`, default
//! `operator:local`); stdout carries the protocol and every log goes to stderr. `--http ADDR`
//! is an alias of `stepwise serve --addr ADDR`: the same HTTP server (streamable HTTP at `/mcp`
//! with bearer tokens from `stepwise tokens create`, `/metrics`, `/healthz`, `/readyz`). A
//! worker runs in the same process unless `--no-worker`, so one command serves a desktop MCP
//! client.

use super::serve::ServeArgs;
use crate::app::{in_process_sandbox_notice, shutdown_signal, App};
use crate::exit::CliError;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use stepwise_engine::WorkerConfig;
use stepwise_mcp::{Facade, Principal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Serve streamable HTTP on ADDR instead of stdio: the same as `stepwise serve --addr ADDR`
    /// (e.g. 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Run no worker in this process (for fleets of facades and `stepwise worker`s).
    #[arg(long)]
    pub no_worker: bool,
    /// Sagas the in-process worker drives at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// The line `stepwise mcp --http` prints on stderr once it listens (tests and scripts read it).
pub const LISTENING: &str = "stepwise mcp: listening on";

pub async fn run(args: McpArgs) -> Result<(), CliError> {
    if let Some(addr) = args.http {
        let serve = ServeArgs {
            addr,
            no_worker: args.no_worker,
            workers: 1,
            concurrency: args.concurrency,
            shutdown_grace_secs: 10,
        };
        return super::serve::run_announcing(serve, |bound| {
            eprintln!("{LISTENING} http://{bound}/mcp (metrics: http://{bound}/metrics)");
        })
        .await;
    }
    // Checked before connecting, against the roles of the catalog this command serves.
    let catalog = stepwise_skills::catalog()
        .map_err(|e| CliError::failed(format!("built-in skills are inconsistent: {e}")))?;
    let principal = match std::env::var("STEPWISE_PRINCIPAL") {
        Ok(text) if !text.trim().is_empty() => Principal::parse(&catalog, text.trim()),
        _ => Principal::local_operator(&catalog),
    }
    .map_err(|e| CliError::usage(format!("STEPWISE_PRINCIPAL: {e}")))?;
    let app = App::open_with_sandbox((args.concurrency as u32 / 2).clamp(2, 16) + 4).await?;
    // An agent's calls look real to it: say loudly when nothing behind them is.
    if let Some(url) = &app.sandbox_url {
        tracing::warn!("{}", in_process_sandbox_notice(url));
    }
    let facade = Facade::new(app.engine.clone(), Facade::wait_from_env());
    let shutdown = CancellationToken::new();
    // No HTTP server over stdio: the in-process sandbox's webhooks get a loopback endpoint.
    app.serve_sandbox_webhooks(shutdown.clone()).await;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });

    let worker = (!args.no_worker).then(|| {
        let worker = app.engine.worker(WorkerConfig {
            concurrency: args.concurrency.max(1),
            claim_batch: args.concurrency.clamp(1, 64),
            shutdown_grace: Duration::from_secs(5),
            ..WorkerConfig::default()
        });
        let stop = shutdown.clone();
        tokio::spawn(async move { worker.run(stop).await })
    });

    tracing::info!(principal = %principal, "serving MCP over stdio");
    let served = stepwise_mcp::serve_stdio(facade, principal, shutdown.clone())
        .await
        .map_err(|e| CliError::failed(e.to_string()));
    // The session ended (client gone, or a signal): stop the worker and let it release leases.
    shutdown.cancel();
    if let Some(worker) = worker {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the in-process worker stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the in-process worker panicked"),
        }
    }
    app.close().await;
    served
}
