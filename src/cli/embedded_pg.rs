//! `stepwise embedded-pg` (hidden): the database rule and the embedded PostgreSQL for scripts.
//! `scripts/test` uses it so the tests choose their server exactly as every command does, with
//! the embedded cluster's data under `target/`.

use crate::embedded_pg::{self, EmbeddedPostgres};
use crate::exit::CliError;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum EmbeddedPgCommand {
    /// Apply the database rule (DATABASE_URL; else the server on 127.0.0.1:5432 if it lets user
    /// postgres in; else the embedded server of --home, left running) and print the URL.
    Resolve {
        /// Where the embedded cluster lives (as STEPWISE_HOME).
        #[arg(long)]
        home: PathBuf,
        /// The database the printed URL names (created if missing).
        #[arg(long, default_value = "postgres")]
        database: String,
    },
    /// Start (or join) the embedded server of --home, leave it running and print its URL.
    Start {
        #[arg(long)]
        home: PathBuf,
        #[arg(long, default_value = "postgres")]
        database: String,
    },
    /// Stop the embedded server of --home unless a stepwise process still uses it.
    Stop {
        #[arg(long)]
        home: PathBuf,
    },
}

pub async fn run(command: EmbeddedPgCommand) -> Result<(), CliError> {
    match command {
        EmbeddedPgCommand::Resolve { home, database } => {
            let target = embedded_pg::resolve_database_with(Some(&home), &database).await?;
            println!("{}", target.url);
            if let Some(embedded) = target.embedded {
                embedded.detach();
            }
            Ok(())
        }
        EmbeddedPgCommand::Start { home, database } => {
            let embedded = EmbeddedPostgres::start(&home).await?;
            let url = embedded.url(&database);
            embedded_pg::ensure_database_exists(&url).await?;
            println!("{url}");
            embedded.detach();
            Ok(())
        }
        EmbeddedPgCommand::Stop { home } => {
            if embedded_pg::stop_embedded(&home).await? {
                eprintln!("stopped the embedded PostgreSQL of {}", home.display());
            }
            Ok(())
        }
    }
}
