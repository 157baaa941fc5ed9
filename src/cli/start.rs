//! `stepwise start SKILL --input JSON`.

use super::print_json;
use crate::actor::cli_actor;
use crate::app::App;
use crate::exit::CliError;
use crate::render;
use clap::Args;
use std::time::Duration;
use stepwise_engine::{SagaStatus, StartRequest};

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The skill to run (`stepwise skills` lists them).
    pub skill: String,
    /// The saga input, a JSON object.
    #[arg(long)]
    pub input: String,
    /// Makes the start idempotent: the same key and input return the same saga.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait up to SECS for the saga to end (a worker must be running).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StartArgs) -> Result<(), CliError> {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| CliError::usage(format!("--input is not valid JSON: {e}")))?;
    if let Some(key) = &args.idempotency_key {
        if key.trim().is_empty() {
            return Err(CliError::usage("--idempotency-key must not be empty"));
        }
    }
    let mut args = args;
    args.idempotency_key = idempotency_key(args.idempotency_key.take(), &input)?;
    let wait = match args.wait {
        Some(secs) if !(0.0..=86_400.0).contains(&secs) => {
            return Err(CliError::usage(
                "--wait must be between 0 and 86400 seconds",
            ))
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let app = App::open(2).await?;
    let result = start(&app, args, input, wait).await;
    app.close().await;
    result
}

/// Mutating hotel skills carry their key in the input (`idempotency_key`), as MCP tools do;
/// the flag may repeat it but not contradict it.
fn idempotency_key(
    flag: Option<String>,
    input: &serde_json::Value,
) -> Result<Option<String>, CliError> {
    let in_input = input.get("idempotency_key").and_then(|v| v.as_str());
    match (flag, in_input) {
        (Some(flag), Some(key)) if flag != key => Err(CliError::usage(format!(
            "--idempotency-key `{flag}` differs from the input's idempotency_key `{key}`"
        ))),
        (Some(flag), _) => Ok(Some(flag)),
        (None, key) => Ok(key.map(str::to_string)),
    }
}

/// Skills whose input declares `idempotency_key` (the hotel's mutating skills) get the flag's
/// key in their input too, so `--idempotency-key` alone is enough.
fn copy_key_into_input(app: &App, skill: &str, key: Option<&str>, input: &mut serde_json::Value) {
    let declares_key = app.engine.registry().latest(skill).is_some_and(|s| {
        s.input_schema()
            .pointer("/properties/idempotency_key")
            .is_some()
    });
    if let (true, Some(key), Some(fields)) = (declares_key, key, input.as_object_mut()) {
        fields
            .entry("idempotency_key")
            .or_insert_with(|| key.into());
    }
}

async fn start(
    app: &App,
    args: StartArgs,
    input: serde_json::Value,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let mut input = input;
    copy_key_into_input(
        app,
        &args.skill,
        args.idempotency_key.as_deref(),
        &mut input,
    );
    let outcome = app
        .engine
        .start(StartRequest {
            skill: args.skill,
            input,
            idempotency_key: args.idempotency_key,
            started_by: cli_actor(),
        })
        .await?;
    if !outcome.created && !args.json {
        eprintln!("the idempotency key matched an existing saga with the same input");
    }
    let mut summary = outcome.saga;
    if let Some(wait) = wait {
        summary = app.engine.wait(summary.id, wait).await?;
        if !summary.status.is_terminal() {
            eprintln!(
                "saga {} is still {} after {:.1} s (is a worker running? `stepwise worker`)",
                summary.id,
                summary.status,
                wait.as_secs_f64()
            );
        }
    }
    if args.json {
        print_json(&summary)?;
    } else {
        println!("{}", render::summary_line(&summary));
    }
    match summary.status {
        SagaStatus::Compensated | SagaStatus::Failed if wait.is_some() => {
            Err(CliError::failed(format!(
                "saga {} ended {} (`stepwise sagas show {}` tells why)",
                summary.id, summary.status, summary.id
            )))
        }
        _ => Ok(()),
    }
}
