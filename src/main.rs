//! `stepwise`: the composition root's entry point. Logs go to stderr; data to stdout.

use clap::Parser;
use std::io::IsTerminal;
use stepwise::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("STEPWISE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Background tasks (listeners, the embedded server's watchers) must not outlive main.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(error.code());
    }
}
