//! `stepwise`: the composition root's entry point. Logs go to stderr; data to stdout.

use clap::Parser;
use stepwise::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    // Logs to stderr, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = stepwise::telemetry::init();
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
    telemetry.shutdown();
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(error.code());
    }
}
