//! `stepwise sandbox`: the external-systems sandbox (the `stepwise-sandbox` crate; docs/skills.md,
//! "The sandbox") as a server.

use crate::app::shutdown_signal;
use crate::exit::CliError;
use clap::Args;
use std::net::SocketAddr;
use stepwise_sandbox::{Sandbox, WebhookConfig};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub addr: SocketAddr,
    /// Seed of the data and of the random parts of ids (the same seed gives the same ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Send Stripe-style webhooks (payment_intent.succeeded, ...) to URL, e.g.
    /// http://127.0.0.1:8080/webhooks/stripe (the sandbox crate documents the retries).
    #[arg(long, value_name = "URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The endpoint secret that signs them (whsec_...): the receiver's
    /// STEPWISE_STRIPE_WEBHOOK_SECRET.
    #[arg(long, value_name = "SECRET", requires = "webhook_url")]
    pub webhook_secret: Option<String>,
}

pub async fn run(args: SandboxArgs) -> Result<(), CliError> {
    let webhooks = match (args.webhook_url, args.webhook_secret) {
        (Some(url), Some(secret)) => {
            let config = WebhookConfig { url, secret };
            config.validate().map_err(CliError::usage)?;
            Some(config)
        }
        _ => None,
    };
    let sandbox = Sandbox::start(args.addr, args.seed)
        .await
        .map_err(|e| CliError::usage(e.to_string()))?;
    let url = sandbox.base_url();
    let webhook_url = webhooks.as_ref().map(|config| config.url.clone());
    // Settings first: a client that reads "listening" may call at once.
    sandbox.set_webhooks(webhooks).map_err(CliError::usage)?;
    eprintln!("sandbox listening on {url} (seed {})", args.seed);
    if let Some(webhook_url) = webhook_url {
        eprintln!("  webhooks: Stripe events signed and sent to {webhook_url}");
    }
    eprintln!("  connectors: export STEPWISE_SANDBOX_URL={url}");
    eprintln!("  ledger: {url}/_sandbox/ledger   faults: {url}/_sandbox/faults   reset: POST {url}/_sandbox/reset");
    shutdown_signal().await;
    eprintln!("sandbox stopping");
    sandbox.shutdown().await;
    Ok(())
}
