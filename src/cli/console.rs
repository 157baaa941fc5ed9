//! `stepwise console --addr ADDR`: the operator console alone (docs/console.md), without the
//! MCP endpoint or workers; `stepwise serve` mounts the same console at `/console`.

use crate::app::{shutdown_signal, App};
use crate::console::{live::Live, Console};
use crate::exit::CliError;
use crate::http::proxy::TrustProxy;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Listen on ADDR (e.g. 127.0.0.1:8080; port 0 picks a free one). Plain HTTP: put a
    /// TLS-terminating proxy in front (see STEPWISE_TRUST_PROXY).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
}

/// The line `stepwise console` prints on stderr once it listens.
pub const LISTENING: &str = "stepwise console: listening on";

pub async fn run(args: ConsoleArgs) -> Result<(), CliError> {
    let trust = TrustProxy::from_env().map_err(CliError::usage)?;
    let app = App::open(6).await?;
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
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let pool = app.engine.store().pool().clone();
    let live = Live::start(app.engine.store().clone(), stop.clone());
    let router = crate::console::router(Console::new(app.engine.clone(), live))
        .merge(crate::http::health::router(pool));
    eprintln!("{LISTENING} http://{bound}/console");
    let served = crate::http::serve(listener, router, trust, stop, Duration::from_secs(5))
        .await
        .map_err(|e| CliError::failed(format!("the HTTP server failed: {e}")));
    app.close().await;
    served
}
