//! `stepwise serve --addr ADDR [--no-worker] [--workers N]`: the one HTTP server of a
//! deployment. It mounts `/mcp` (bearer tokens), `/webhooks/stripe` (Stripe-signed, see
//! [`crate::http::stripe_webhook`]), `/metrics`, `/healthz`, `/readyz` and the OAuth
//! protected-resource metadata on one router ([`routes`]; other endpoints are merged there) and runs in-process workers unless
//! `--no-worker`. On Ctrl-C/SIGTERM it stops accepting, lets the requests in flight finish
//! within `--shutdown-grace-secs`, then ends the MCP sessions and stops the workers, which
//! release their sagas as `stepwise worker` does. `stepwise mcp --http ADDR` is this command.

use crate::app::{in_process_sandbox_notice, shutdown_signal, App};
use crate::exit::CliError;
use crate::http::proxy::TrustProxy;
use crate::http::stripe_webhook;
use axum::Router;
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stepwise_engine::WorkerConfig;
use stepwise_mcp::Facade;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen on ADDR (e.g. 0.0.0.0:8080; port 0 picks a free one). Plain HTTP: put a
    /// TLS-terminating proxy in front (see STEPWISE_TRUST_PROXY).
    #[arg(long, value_name = "ADDR")]
    pub addr: SocketAddr,
    /// Run no worker in this process (for fleets of servers and `stepwise worker`s).
    #[arg(long, conflicts_with = "workers")]
    pub no_worker: bool,
    /// In-process workers, each driving up to --concurrency sagas at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Sagas each in-process worker drives at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// On Ctrl-C/SIGTERM, how long requests in flight (and then the workers' steps) may take
    /// to finish, in seconds.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

/// The line `stepwise serve` prints on stderr once it listens (tests and scripts read it).
pub const LISTENING: &str = "stepwise serve: listening on";

/// The routes of one server: every part merged on one router. A new endpoint is one more
/// `merge` here.
pub fn routes(
    facade: Arc<Facade>,
    bound: SocketAddr,
    sessions: CancellationToken,
    webhook_secret: Option<String>,
    shutdown: CancellationToken,
    limits: stepwise_mcp::http::Limits,
    auth: stepwise_mcp::http::HttpAuth,
) -> Router {
    // The console's event streams end when shutdown begins, so they do not hold the drain.
    let live = crate::console::live::Live::start(facade.engine().store().clone(), shutdown);
    let hosts = stepwise_mcp::http::allowed_hosts_from_env(bound);
    let pool = facade.engine().store().pool().clone();
    let engine = facade.engine().clone();
    Router::new()
        .merge(stripe_webhook::router(engine, webhook_secret))
        .merge(stepwise_mcp::http::mcp_router(
            facade.clone(),
            hosts,
            sessions,
            limits,
            auth.clone(),
        ))
        .merge(stepwise_mcp::http::metadata_router(&facade, auth))
        .merge(stepwise_mcp::http::metrics_router(facade.clone()))
        .merge(crate::http::health::router(pool))
        .merge(crate::console::router(crate::console::Console::new(
            facade.engine().clone(),
            live,
        )))
}

/// `http://ADDR` of a bound address, with a wildcard address replaced by loopback (where this
/// process's own sandbox reaches it).
fn loopback_url(bound: SocketAddr) -> String {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    run_announcing(args, |bound| {
        eprintln!(
            "{LISTENING} http://{bound} (MCP: http://{bound}/mcp, Stripe webhooks: \
             /webhooks/stripe, console: http://{bound}/console, metrics: /metrics, health: \
             /healthz, /readyz)"
        )
    })
    .await
}

/// Runs the server; `announce` is called with the bound address once it listens.
pub async fn run_announcing(
    args: ServeArgs,
    announce: impl FnOnce(SocketAddr),
) -> Result<(), CliError> {
    // Configuration errors come before anything is started or connected.
    let trust = TrustProxy::from_env().map_err(CliError::usage)?;
    let limits = stepwise_mcp::http::Limits::from_env().map_err(CliError::usage)?;
    let auth = stepwise_mcp::http::HttpAuth::from_env().map_err(CliError::usage)?;
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    let workers = if args.no_worker { 0 } else { args.workers };
    let pool_size = (u32::from(workers) * args.concurrency as u32 / 2).clamp(2, 32) + 4;
    let app = App::open_with_sandbox(pool_size).await?;
    // An agent's calls look real to it: say loudly when nothing behind them is.
    if let Some(url) = &app.sandbox_url {
        tracing::warn!("{}", in_process_sandbox_notice(url));
    }
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            app.close().await;
            return Err(CliError::usage(format!(
                "could not serve HTTP on {}: {e}",
                args.addr
            )));
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::failed(format!("could not read the bound address: {e}")))?;

    let facade = Facade::new(app.engine.clone(), Facade::wait_from_env());
    // Three stages of stopping: HTTP stops accepting, then the MCP sessions end, then workers.
    let stop_http = CancellationToken::new();
    let stop_sessions = CancellationToken::new();
    let stop_workers = CancellationToken::new();
    let signal = stop_http.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining requests in flight");
        signal.cancel();
    });
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let running: Vec<_> = (0..workers)
        .map(|index| {
            let defaults = WorkerConfig::default();
            let worker_id = match workers {
                1 => defaults.worker_id.clone(),
                _ => format!("{}-{index}", defaults.worker_id),
            };
            let worker = app.engine.worker(WorkerConfig {
                worker_id,
                concurrency: args.concurrency,
                claim_batch: args.concurrency.clamp(1, 64),
                shutdown_grace: grace,
                ..defaults
            });
            let stop = stop_workers.clone();
            tokio::spawn(async move { worker.run(stop).await })
        })
        .collect();

    let webhook_secret = app.webhook_secret();
    if let Some(secret) = &webhook_secret {
        app.wire_sandbox_webhooks(
            &format!("{}{}", loopback_url(bound), stripe_webhook::PATH),
            secret,
        );
    }
    let router = routes(
        facade,
        bound,
        stop_sessions.clone(),
        webhook_secret,
        stop_http.clone(),
        limits,
        auth,
    );
    announce(bound);
    let served = crate::http::serve(listener, router, trust, stop_http.clone(), grace)
        .await
        .map_err(|e| CliError::failed(format!("the HTTP server failed: {e}")));
    stop_http.cancel();
    stop_sessions.cancel();
    stop_workers.cancel();
    for worker in running {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "an in-process worker stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "an in-process worker panicked"),
        }
    }
    app.close().await;
    served
}
