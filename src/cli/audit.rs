//! `stepwise audit`: the append-only audit of MCP tool calls, newest first; `stepwise audit
//! prune --older-than AGE` removes the rows older than AGE (whole monthly partitions, then the
//! older rows of the boundary month; docs/mcp.md, Audit).

use super::sagas::parse_age;
use super::{parse_saga_id, print_json};
use crate::app::App;
use crate::exit::CliError;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::json;
use stepwise_mcp::{AuditFilter, AuditPruneReport, AuditStore};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only calls of this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only calls by this principal (`role:subject`).
    #[arg(long)]
    pub principal: Option<String>,
    /// Only calls about this saga.
    #[arg(long)]
    pub saga: Option<String>,
    /// Only calls at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Remove the audit rows older than --older-than: whole monthly partitions, then the older
    /// rows of the month the cutoff falls in. Nothing else can delete an audit row.
    Prune(AuditPruneArgs),
}

#[derive(Debug, Args)]
pub struct AuditPruneArgs {
    /// Age of the rows to remove: 90d, 12w, 2160h.
    #[arg(long, value_parser = parse_age)]
    pub older_than: std::time::Duration,
    /// Count what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    if let Some(AuditCommand::Prune(prune_args)) = args.command {
        return prune(prune_args).await;
    }
    let saga_id = args.saga.as_deref().map(parse_saga_id).transpose()?;
    if !(1..=10_000).contains(&args.limit) {
        return Err(CliError::usage("--limit must be between 1 and 10000"));
    }
    let app = App::open(2).await?;
    // A read: from STEPWISE_READ_URL's replica once it has caught up.
    let store = AuditStore::new(app.engine.store().reads().await.pool().clone());
    let rows = store
        .query(&AuditFilter {
            tool: args.tool,
            principal: args.principal,
            saga_id,
            since: args.since,
            limit: args.limit,
        })
        .await
        .map_err(|e| CliError::failed(format!("could not read the audit: {e}")));
    app.close().await;
    let rows = rows?;
    if args.json {
        return print_json(&json!({ "calls": rows }));
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "at",
            "principal",
            "via",
            "tool",
            "saga",
            "outcome",
            "error",
            "ms",
        ]);
    for r in &rows {
        table.add_row(vec![
            r.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            r.principal.clone(),
            r.transport.clone(),
            r.tool.clone(),
            r.saga_id.map(|s| s.to_string()).unwrap_or_default(),
            r.outcome.clone(),
            r.error_code.clone().unwrap_or_default(),
            r.duration_ms.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn prune(args: AuditPruneArgs) -> Result<(), CliError> {
    let age = chrono::Duration::from_std(args.older_than)
        .map_err(|_| CliError::usage("--older-than is too long"))?;
    let cutoff = Utc::now() - age;
    let app = App::open(2).await?;
    let report = AuditStore::new(app.engine.store().pool().clone())
        .prune(cutoff, args.dry_run)
        .await
        .map_err(|e| CliError::failed(format!("could not prune the audit: {e}")));
    app.close().await;
    let report = report?;
    if args.json {
        return print_json(&report);
    }
    println!("{}", describe_prune(&report));
    Ok(())
}

/// One line saying what an audit prune removed (or would remove), for `audit prune` and
/// `sagas prune`.
pub fn describe_prune(report: &AuditPruneReport) -> String {
    let partitions = if report.partitions_dropped.is_empty() {
        String::new()
    } else {
        format!(
            "; partitions {}: {}",
            if report.dry_run {
                "that would be dropped"
            } else {
                "dropped"
            },
            report.partitions_dropped.join(", ")
        )
    };
    let cutoff = report.cutoff.format("%Y-%m-%d %H:%M:%S UTC");
    if report.dry_run {
        format!(
            "dry run: {} audit rows before {cutoff} would be removed{partitions}",
            report.rows
        )
    } else {
        format!(
            "removed {} audit rows before {cutoff} ({} deleted one by one){partitions}",
            report.rows, report.rows_deleted
        )
    }
}
