//! `cargo bench --bench executor`: the benchmark of `stepwise bench` (src/bench) on a small
//! workload, per-saga commits then cross-saga batched commits, one JSON report per line.
//! Needs a PostgreSQL (`DATABASE_URL`, default the local server) and pgbench for the ceiling.
//! `cargo test --all-targets` runs this binary without `--bench`: it then only says so.

use std::sync::Arc;
use stepwise::bench::{self, BenchConfig, Silent};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("executor benchmark: run it with `cargo bench --bench executor`");
        return;
    }
    let server_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("executor benchmark: no async runtime: {e}");
            std::process::exit(1);
        }
    };
    for batch_commits in [false, true] {
        let config = BenchConfig {
            sagas: 500,
            steps: 10,
            concurrency: 8,
            in_flight: if batch_commits { 64 } else { 8 },
            batch_commits,
            idle_samples: 20,
            half_load_seconds: 1.0,
            ceiling_seconds: 2,
            ceiling_runs: 1,
            server_url: server_url.clone(),
            ..BenchConfig::default()
        };
        match runtime.block_on(bench::run(config, Arc::new(Silent))) {
            Ok(report) => match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("executor benchmark: could not encode the report: {e}"),
            },
            Err(e) => {
                eprintln!("executor benchmark failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
