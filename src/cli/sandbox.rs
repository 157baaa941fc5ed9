//! `stepwise sandbox`: the external-systems sandbox (the `stepwise-sandbox` crate; docs/skills.md,
//! "The sandbox") as a server.

use crate::app::shutdown_signal;
use crate::exit::CliError;
use clap::Args;
use std::net::SocketAddr;
use stepwise_sandbox::Sandbox;

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub addr: SocketAddr,
    /// Seed of the data and of the random parts of ids (the same seed gives the same ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn run(args: SandboxArgs) -> Result<(), CliError> {
    let sandbox = Sandbox::start(args.addr, args.seed)
        .await
        .map_err(|e| CliError::usage(e.to_string()))?;
    let url = sandbox.base_url();
    eprintln!("sandbox listening on {url} (seed {})", args.seed);
    eprintln!("  connectors: export STEPWISE_SANDBOX_URL={url}");
    eprintln!("  ledger: {url}/_sandbox/ledger   faults: {url}/_sandbox/faults   reset: POST {url}/_sandbox/reset");
    shutdown_signal().await;
    eprintln!("sandbox stopping");
    sandbox.shutdown().await;
    Ok(())
}
