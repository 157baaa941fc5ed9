//! The command line (README, "Command line"): argument parsing and dispatch.

mod audit;
mod bench;
mod console;
mod doctor;
mod embedded_pg;
mod mcp;
mod sagas;
mod sandbox;
mod serve;
mod skills;
mod start;
mod tokens;
mod worker;

use crate::exit::CliError;
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "stepwise",
    version = env!("STEPWISE_VERSION"),
    about = "Durable sagas on PostgreSQL, served to AI agents as MCP tools",
    long_about = "Stepwise runs skills: sagas of persisted steps with compensations, executed by \
                  PostgreSQL-backed workers.\n\nDATABASE_URL selects PostgreSQL; when unset, a \
                  server on 127.0.0.1:5432 is used, or a private one is started from the \
                  machine's PostgreSQL binaries under $STEPWISE_HOME/pg."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Run a worker that claims and drives sagas until Ctrl-C or SIGTERM.
    Worker(worker::WorkerArgs),
    /// List the registered skills with their input schemas.
    Skills {
        #[arg(long)]
        json: bool,
    },
    /// Start a saga.
    Start(start::StartArgs),
    /// Inspect and control sagas.
    #[command(subcommand)]
    Sagas(sagas::SagasCommand),
    /// Run the whole story end to end on the embedded default.
    Demo,
    /// Benchmark the executor against PostgreSQL's own ceiling (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// The chaos suite (docs/reliability.md): hotel and synthetic sagas under sandbox faults,
    /// killed and stopped workers, PostgreSQL restarts and a rolling restart, on a throwaway
    /// cluster; prints one JSON line of checks and exits 1 if one fails (scripts/chaos).
    #[command(hide = true)]
    Chaos(crate::chaos::ChaosArgs),
    /// The failover drill (docs/operations.md): a primary and a streaming standby on throwaway
    /// clusters, sagas running, the primary killed and the standby promoted; prints one JSON
    /// line (sagas, terminal, lost, duplicated_effects, downtime_s) (scripts/failover-drill).
    #[command(hide = true)]
    FailoverDrill(crate::chaos::failover::FailoverArgs),
    /// The restore drill (docs/operations.md): a base backup and WAL archiving on a throwaway
    /// cluster, sagas running, point-in-time recovery into a new cluster where workers finish
    /// the sagas in flight; prints one JSON line (sagas, terminal, lost, duplicated_effects,
    /// recovery_s) (scripts/restore-drill).
    #[command(hide = true)]
    RestoreDrill(crate::chaos::restore::RestoreArgs),
    /// Serve the skills as MCP tools over stdio (acting as STEPWISE_PRINCIPAL); `--http ADDR`
    /// is `serve --addr ADDR`. Runs a worker in-process unless --no-worker.
    Mcp(mcp::McpArgs),
    /// The HTTP server: /mcp (bearer tokens), /metrics, /healthz, /readyz, with in-process
    /// workers unless --no-worker; drains requests in flight on Ctrl-C/SIGTERM.
    Serve(serve::ServeArgs),
    /// The operator console alone (web pages at /console; `serve` includes it).
    Console(console::ConsoleArgs),
    /// Bearer tokens for `stepwise serve` (and `stepwise mcp --http`).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// The audit of MCP tool calls, newest first; `audit prune --older-than 90d` removes old
    /// rows.
    Audit(audit::AuditArgs),
    /// Serve the external-systems sandbox (Stripe, Salesforce and Twilio stand-ins) until
    /// Ctrl-C or SIGTERM.
    Sandbox(sandbox::SandboxArgs),
    /// Check the database, the migrations, the clock, the external services and the webhook
    /// secret; print each finding with what to do (exit 0 healthy, 2 something to fix).
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script: `stepwise completions bash > /etc/bash_completion.d/stepwise`.
    Completions {
        /// bash, zsh, fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// The database rule and the embedded PostgreSQL, for scripts (scripts/test).
    #[command(subcommand, hide = true, name = "embedded-pg")]
    EmbeddedPg(embedded_pg::EmbeddedPgCommand),
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Migrate => {
            let app = crate::app::App::open(2).await?;
            eprintln!("migrations applied to {}", redact(&app.database_url));
            app.close().await;
            Ok(())
        }
        Command::Worker(args) => worker::run(args).await,
        Command::Skills { json } => skills::run(json).await,
        Command::Start(args) => start::run(args).await,
        Command::Sagas(command) => sagas::run(command).await,
        Command::Demo => crate::demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::Chaos(args) => crate::chaos::run(args).await,
        Command::FailoverDrill(args) => crate::chaos::failover::run(args).await,
        Command::RestoreDrill(args) => crate::chaos::restore::run(args).await,
        Command::Mcp(args) => mcp::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Tokens(command) => tokens::run(command).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::EmbeddedPg(command) => embedded_pg::run(command).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics when a write fails (a closed pipe).
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "stepwise", &mut script);
            let mut out = std::io::stdout().lock();
            match std::io::Write::write_all(&mut out, &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::failed(
                    format!("cannot write the completion script: {e}"),
                )),
                _ => Ok(()),
            }
        }
    }
}

/// Prints one JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("could not encode JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    crate::db_login::redact(url)
}

/// Parses a saga id argument.
pub fn parse_saga_id(text: &str) -> Result<uuid::Uuid, CliError> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| CliError::usage(format!("`{text}` is not a saga id (a UUID)")))
}
