//! `stepwise sagas list|show|cancel`.

use super::{parse_saga_id, print_json};
use crate::app::{cli_actor, App};
use crate::exit::CliError;
use crate::render;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
use stepwise_engine::{SagaFilter, SagaStatus};

#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List sagas, newest first, with counts by status.
    List(ListArgs),
    /// A saga's whole story: steps, attempts, errors, compensations, history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a pending or running saga and compensate what it did.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Recorded as the operator in the history (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = parse_status)]
    pub status: Option<SagaStatus>,
    #[arg(long)]
    pub skill: Option<String>,
    /// Only sagas created at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

fn parse_status(text: &str) -> Result<SagaStatus, String> {
    text.parse::<SagaStatus>().map_err(|_| {
        let all: Vec<_> = SagaStatus::all().iter().map(|s| s.as_str()).collect();
        format!("expected one of: {}", all.join(", "))
    })
}

pub async fn run(command: SagasCommand) -> Result<(), CliError> {
    let app = App::open(2).await?;
    let result = dispatch(&app, command).await;
    app.close().await;
    result
}

async fn dispatch(app: &App, command: SagasCommand) -> Result<(), CliError> {
    match command {
        SagasCommand::List(args) => {
            if !(1..=10_000).contains(&args.limit) {
                return Err(CliError::usage("--limit must be between 1 and 10000"));
            }
            let filter = SagaFilter {
                status: args.status,
                skill: args.skill,
                since: args.since,
                started_by: None,
                limit: args.limit,
            };
            let sagas = app.engine.list(&filter).await?;
            if args.json {
                return print_json(&json!({ "sagas": sagas }));
            }
            let counts = app.engine.store().counts_by_status().await?;
            println!("{}", render::saga_list(&sagas));
            println!("all sagas: {}", render::status_counts(&counts));
            Ok(())
        }
        SagasCommand::Show { id, json } => {
            let id = parse_saga_id(&id)?;
            let saga = app
                .engine
                .detail(id)
                .await?
                .ok_or_else(|| CliError::not_found(format!("saga {id} not found")))?;
            if json {
                print_json(&saga)
            } else {
                print!("{}", render::timeline(&saga));
                Ok(())
            }
        }
        SagasCommand::Cancel {
            id,
            reason,
            actor,
            json,
        } => {
            let id = parse_saga_id(&id)?;
            let actor = actor.unwrap_or_else(cli_actor);
            let accepted = app.engine.cancel(id, &actor, reason.as_deref()).await?;
            let summary = app
                .engine
                .store()
                .summary(id)
                .await?
                .ok_or_else(|| CliError::not_found(format!("saga {id} not found")))?;
            if !accepted {
                return Err(CliError::conflict(format!(
                    "saga {id} is {} and can no longer be cancelled",
                    summary.status
                )));
            }
            if json {
                print_json(&summary)
            } else {
                println!(
                    "cancel requested: {} (compensation runs after the current step)",
                    render::summary_line(&summary)
                );
                Ok(())
            }
        }
    }
}
