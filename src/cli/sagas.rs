//! `stepwise sagas list|show|retry|restart|fork|cancel|send|prune`: inspect sagas and act on
//! them as an operator. Every action is recorded in the saga's history with `--actor` (and
//! `--reason` where it applies).

use super::{parse_saga_id, print_json};
use crate::actor::operator_actor;
use crate::app::App;
use crate::exit::CliError;
use crate::render;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::IsTerminal;
use stepwise_engine::{
    BulkFilter, DeliverError, OperatorError, OperatorRequest, SagaFilter, SagaStatus, SagaSummary,
};
use stepwise_mcp::AuditStore;

#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List sagas, newest first, with counts by status.
    List(ListArgs),
    /// A saga's whole story: steps, attempts, durations, errors, compensations, history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a failed saga's compensation where it stopped, with a fresh round of attempts.
    /// With --status/--skill instead of an ID: every matching saga.
    Retry(ReplayArgs),
    /// Run a compensated saga again as a new saga with the same input (linked by replay_of,
    /// with its own idempotency key); one replay at a time. With --status/--skill: every
    /// matching saga.
    Restart(ReplayArgs),
    /// A new saga that reuses the outputs of the steps before --from-step and runs from there.
    Fork {
        id: String,
        /// The first step the new saga runs; the steps before it are taken over.
        #[arg(long)]
        from_step: String,
        #[command(flatten)]
        who: Who,
        /// Continue on this registered version of the skill (steps are matched by name) when
        /// the saga's own definition changed.
        #[arg(long)]
        to_version: Option<u32>,
        /// Print the new saga's summary as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop a pending or running saga after its current step and compensate what it did.
    Cancel {
        id: String,
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        json: bool,
    },
    /// Deliver event EVENT to a saga (a waiting step receives it; one that has not reached
    /// its wait yet gets it when it does). Idempotent on --key.
    Send(SendArgs),
    /// Delete completed and compensated sagas that finished more than DURATION ago, with their
    /// steps and history (failed ones wait for an operator and are kept), and the MCP audit
    /// rows older than DURATION (unless --keep-audit).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = parse_status)]
    pub status: Option<SagaStatus>,
    #[arg(long)]
    pub skill: Option<String>,
    /// Only sagas created at or after this time: RFC 3339 (2026-11-25T10:00:00Z) or an age
    /// (90m, 12h, 7d).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

/// Who acts and why, recorded in the history.
#[derive(Debug, Args)]
pub struct Who {
    /// Why, recorded in the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Recorded as the operator in the history (default: operator:$USER).
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The saga; omit it and give --status and --skill to act on every match.
    pub id: Option<String>,
    #[command(flatten)]
    pub who: Who,
    /// Continue on this registered version of the skill when the saga's own definition
    /// changed (retry: the steps still to undo must keep their name and position; restart:
    /// the input must be valid for it).
    #[arg(long)]
    pub to_version: Option<u32>,
    /// Bulk: only sagas in this status.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<SagaStatus>,
    /// Bulk: only sagas of this skill.
    #[arg(long)]
    pub skill: Option<String>,
    /// Bulk: only sagas created at or after this time (RFC 3339, or an age such as 2h, 7d).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Say what would be touched and whether it would be accepted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the saga summary (bulk: a report) as one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    pub id: String,
    pub event: String,
    /// The event's payload, a JSON document checked against the schema the step declares.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Delivery key: the same key again with the same payload is a no-op (default: a fresh
    /// UUID).
    #[arg(long)]
    pub key: Option<String>,
    /// Who delivers it, recorded in the history (default: operator:$USER).
    #[arg(long)]
    pub actor: Option<String>,
    /// Print `{"saga_id","event","key","duplicate","status"}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Age of the sagas to delete, counted from when they finished: 30d, 12h, 90m, 1w.
    #[arg(long, value_parser = parse_age)]
    pub older_than: std::time::Duration,
    /// Count what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave the MCP audit alone (`stepwise audit prune` prunes it on its own).
    #[arg(long)]
    pub keep_audit: bool,
    #[arg(long)]
    pub json: bool,
}

fn parse_status(text: &str) -> Result<SagaStatus, String> {
    text.parse::<SagaStatus>().map_err(|_| {
        let all: Vec<_> = SagaStatus::all().iter().map(|s| s.as_str()).collect();
        format!("expected one of: {}", all.join(", "))
    })
}

pub(super) fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration such as 30d, 12h or 90m: {e}"))
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = parse_age(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor an age such as 12h"))?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    Ok(Utc::now() - age)
}

impl Who {
    fn request(&self, to_version: Option<u32>) -> OperatorRequest {
        OperatorRequest {
            actor: self.actor.clone().unwrap_or_else(operator_actor),
            reason: self.reason.clone(),
            to_version,
        }
    }
}

impl From<OperatorError> for CliError {
    fn from(e: OperatorError) -> Self {
        if e.is_not_found() {
            CliError::not_found(e.to_string())
        } else if e.is_conflict() {
            CliError::conflict(e.to_string())
        } else {
            match e {
                OperatorError::Store(store) => store.into(),
                other => CliError::failed(other.to_string()),
            }
        }
    }
}

pub async fn run(command: SagasCommand) -> Result<(), CliError> {
    let app = App::open(2).await?;
    let result = dispatch(&app, command).await;
    app.close().await;
    result
}

async fn dispatch(app: &App, command: SagasCommand) -> Result<(), CliError> {
    match command {
        SagasCommand::List(args) => list(app, args).await,
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
        SagasCommand::Retry(args) => replay(app, Kind::Retry, args).await,
        SagasCommand::Restart(args) => replay(app, Kind::Restart, args).await,
        SagasCommand::Fork {
            id,
            from_step,
            who,
            to_version,
            json,
        } => {
            let id = parse_saga_id(&id)?;
            let forked = app
                .engine
                .fork(id, &from_step, &who.request(to_version))
                .await?;
            print_outcome(
                json,
                &forked,
                &format!("forked saga {id} from `{from_step}`"),
            )
        }
        SagasCommand::Cancel { id, who, json } => {
            let id = parse_saga_id(&id)?;
            let summary = app.engine.cancel_saga(id, &who.request(None)).await?;
            print_outcome(
                json,
                &summary,
                "cancel requested (compensation runs after the current step)",
            )
        }
        SagasCommand::Send(args) => send(app, args).await,
        SagasCommand::Prune(args) => prune(app, args).await,
    }
}

async fn send(app: &App, args: SendArgs) -> Result<(), CliError> {
    let id = parse_saga_id(&args.id)?;
    let payload: serde_json::Value = serde_json::from_str(&args.data)
        .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?;
    let key = args.key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let actor = args.actor.unwrap_or_else(operator_actor);
    let delivery = app
        .engine
        .deliver(id, &args.event, payload, &key, &actor)
        .await
        .map_err(deliver_error)?;
    if args.json {
        return print_json(&delivery);
    }
    println!(
        "{} `{}` to saga {} (key {:?}); the saga is {}",
        if delivery.duplicate {
            "already delivered"
        } else {
            "delivered"
        },
        delivery.event,
        delivery.saga_id,
        delivery.key,
        delivery.status
    );
    Ok(())
}

/// Exit codes of `sagas send`: 2 an invalid payload or an event the saga does not take,
/// 3 no such saga, 4 a key reused with another payload or a saga that is over.
fn deliver_error(e: DeliverError) -> CliError {
    match e {
        DeliverError::Invalid { .. } | DeliverError::UnknownEvent { .. } => {
            CliError::usage(e.to_string())
        }
        DeliverError::NotFound(_) => CliError::not_found(e.to_string()),
        DeliverError::Conflict { .. } | DeliverError::Terminal { .. } => {
            CliError::conflict(e.to_string())
        }
        DeliverError::Store(store) => store.into(),
    }
}

fn print_outcome(json: bool, summary: &SagaSummary, what: &str) -> Result<(), CliError> {
    if json {
        print_json(summary)
    } else {
        println!("{what}: {}", render::summary_line(summary));
        Ok(())
    }
}

async fn list(app: &App, args: ListArgs) -> Result<(), CliError> {
    if !(1..=10_000).contains(&args.limit) {
        return Err(CliError::usage("--limit must be between 1 and 10000"));
    }
    let filter = SagaFilter {
        status: args.status,
        skill: args.skill.clone(),
        since: args.since,
        started_by: None,
        limit: args.limit,
    };
    let sagas = app.engine.list(&filter).await?;
    let counts = app
        .engine
        .store()
        .counts_by_status_filtered(args.skill.as_deref(), args.since)
        .await?;
    if args.json {
        let counts: serde_json::Map<String, serde_json::Value> = SagaStatus::all()
            .iter()
            .map(|s| {
                let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
                (s.to_string(), json!(n))
            })
            .collect();
        return print_json(&json!({ "sagas": sagas, "counts": counts }));
    }
    println!("{}", render::saga_list(&sagas));
    let scope = match (&args.skill, args.since) {
        (None, None) => "all sagas".to_string(),
        (skill, since) => format!(
            "sagas{}{}",
            skill
                .as_ref()
                .map(|s| format!(" of {s}"))
                .unwrap_or_default(),
            since
                .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default()
        ),
    };
    println!("{scope}: {}", render::status_counts(&counts));
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Retry,
    Restart,
}

impl Kind {
    fn verb(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Restart => "restart",
        }
    }
}

/// One saga's line in a bulk report.
#[derive(Debug, Serialize)]
struct BulkItem {
    saga: SagaSummary,
    /// `retried`, `restarted`, `would_retry`, `would_restart` or `refused`.
    outcome: &'static str,
    /// The new saga of a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<SagaSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct BulkReport {
    action: &'static str,
    dry_run: bool,
    matched: usize,
    applied: usize,
    refused: usize,
    results: Vec<BulkItem>,
}

async fn replay(app: &App, kind: Kind, args: ReplayArgs) -> Result<(), CliError> {
    let request = args.who.request(args.to_version);
    let bulk = args.status.is_some() || args.skill.is_some() || args.since.is_some();
    match (&args.id, bulk) {
        (Some(_), true) => {
            return Err(CliError::usage(
                "give either a saga ID or --status/--skill/--since, not both",
            ))
        }
        (None, false) => {
            return Err(CliError::usage(format!(
                "give a saga ID, or --status and --skill to {} every match",
                kind.verb()
            )))
        }
        (None, true) if args.status.is_none() || args.skill.is_none() => {
            return Err(CliError::usage(
                "a bulk replay needs both --status and --skill",
            ))
        }
        _ => {}
    }
    if let Some(id) = &args.id {
        let id = parse_saga_id(id)?;
        if args.dry_run {
            // Check only: exit 0 and the saga's summary if it would be accepted, else the
            // refusal (exit 3 or 4) with its reason.
            let saga = app
                .engine
                .detail(id)
                .await?
                .ok_or_else(|| CliError::not_found(format!("saga {id} not found")))?;
            match kind {
                Kind::Retry => app.engine.check_retry(&saga, &request).map(|_| ())?,
                Kind::Restart => app.engine.check_restart(&saga, &request).map(|_| ())?,
            }
            return print_outcome(
                args.json,
                &saga.summary(),
                &format!("dry run: {} would be accepted", kind.verb()),
            );
        }
        return match kind {
            Kind::Retry => {
                let summary = app.engine.retry(id, &request).await?;
                print_outcome(
                    args.json,
                    &summary,
                    "compensation resumed with a fresh round of attempts",
                )
            }
            Kind::Restart => {
                let summary = app.engine.restart(id, &request).await?;
                print_outcome(args.json, &summary, &format!("restarted saga {id} as"))
            }
        };
    }

    let filter = BulkFilter {
        status: args.status,
        skill: args.skill.clone(),
        since: args.since,
    };
    let matches = app.engine.bulk_matches(&filter).await?;
    let bar = progress_bar(args.json, matches.len() as u64, kind.verb());
    let mut report = BulkReport {
        action: kind.verb(),
        dry_run: args.dry_run,
        matched: matches.len(),
        applied: 0,
        refused: 0,
        results: Vec::with_capacity(matches.len()),
    };
    for saga in matches {
        let item = bulk_one(app, kind, &request, args.dry_run, saga).await?;
        if item.outcome == "refused" {
            report.refused += 1;
        } else if !args.dry_run {
            report.applied += 1;
        }
        bar.inc(1);
        report.results.push(item);
    }
    bar.finish_and_clear();
    if args.json {
        print_json(&report)?;
    } else {
        for item in &report.results {
            let extra = match (&item.replay, &item.error) {
                (Some(new), _) => format!(" -> {}", new.id),
                (None, Some(error)) => format!(": {error}"),
                _ => String::new(),
            };
            println!("{}  {}{extra}", item.saga.id, item.outcome);
        }
        println!(
            "{} matched, {} {}, {} refused{}",
            report.matched,
            if args.dry_run {
                report.matched - report.refused
            } else {
                report.applied
            },
            if args.dry_run {
                "would be accepted"
            } else {
                "applied"
            },
            report.refused,
            if args.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
    }
    if report.refused > 0 && !args.dry_run {
        return Err(CliError::conflict(format!(
            "{} of {} matching sagas were refused (see above)",
            report.refused, report.matched
        )));
    }
    Ok(())
}

async fn bulk_one(
    app: &App,
    kind: Kind,
    request: &OperatorRequest,
    dry_run: bool,
    saga: SagaSummary,
) -> Result<BulkItem, CliError> {
    let refused = |saga: SagaSummary, e: OperatorError| BulkItem {
        saga,
        outcome: "refused",
        replay: None,
        error: Some(e.to_string()),
    };
    if dry_run {
        let Some(detail) = app.engine.detail(saga.id).await? else {
            return Ok(refused(saga.clone(), OperatorError::NotFound(saga.id)));
        };
        let checked = match kind {
            Kind::Retry => app.engine.check_retry(&detail, request).map(|_| ()),
            Kind::Restart => app.engine.check_restart(&detail, request).map(|_| ()),
        };
        return Ok(match checked {
            Ok(()) => BulkItem {
                saga,
                outcome: match kind {
                    Kind::Retry => "would_retry",
                    Kind::Restart => "would_restart",
                },
                replay: None,
                error: None,
            },
            Err(e) => refused(saga, e),
        });
    }
    let result = match kind {
        Kind::Retry => app.engine.retry(saga.id, request).await.map(|s| (s, None)),
        Kind::Restart => app
            .engine
            .restart(saga.id, request)
            .await
            .map(|new| (saga.clone(), Some(new))),
    };
    match result {
        Ok((saga, replay)) => Ok(BulkItem {
            saga,
            outcome: match kind {
                Kind::Retry => "retried",
                Kind::Restart => "restarted",
            },
            replay,
            error: None,
        }),
        Err(OperatorError::Store(e)) => Err(e.into()),
        Err(e) => Ok(refused(saga, e)),
    }
}

/// A progress bar on a terminal; nothing with --json or when stderr is not a terminal.
fn progress_bar(json: bool, total: u64, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

async fn prune(app: &App, args: PruneArgs) -> Result<(), CliError> {
    let age = chrono::Duration::from_std(args.older_than)
        .map_err(|_| CliError::usage("--older-than is too long"))?;
    let cutoff = Utc::now() - age;
    let bar = progress_bar(args.json, 0, "pruning");
    let report = app
        .engine
        .prune(cutoff, args.dry_run, |p| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        })
        .await?;
    bar.finish_and_clear();
    // The audit rows of the same age go too: the sagas they name are gone.
    let audit = if args.keep_audit {
        None
    } else {
        Some(
            AuditStore::new(app.engine.store().pool().clone())
                .prune(cutoff, args.dry_run)
                .await
                .map_err(|e| CliError::failed(format!("could not prune the audit: {e}")))?,
        )
    };
    if args.json {
        let mut value = serde_json::to_value(&report)
            .map_err(|e| CliError::failed(format!("could not print the report: {e}")))?;
        if let Value::Object(fields) = &mut value {
            fields.insert("audit".to_string(), json!(audit));
        }
        return print_json(&value);
    }
    let partitions = if report.partitions_dropped.is_empty() {
        String::new()
    } else {
        format!(
            "; history partitions {}: {}",
            if args.dry_run {
                "that would be dropped"
            } else {
                "dropped"
            },
            report.partitions_dropped.join(", ")
        )
    };
    if args.dry_run {
        println!(
            "dry run: {} finished sagas (completed or compensated) before {} would be deleted{partitions}",
            report.sagas,
            cutoff.format("%Y-%m-%d %H:%M:%S UTC")
        );
    } else {
        println!(
            "pruned {} finished sagas (completed or compensated) before {} ({} history rows deleted one by one){partitions}",
            report.sagas,
            cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
            report.events_deleted
        );
    }
    if let Some(audit) = &audit {
        println!("{}", super::audit::describe_prune(audit));
    }
    Ok(())
}
