//! `stepwise audit`: the append-only audit of MCP tool calls, newest first.

use super::{parse_saga_id, print_json};
use crate::app::App;
use crate::exit::CliError;
use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::json;
use stepwise_mcp::{AuditFilter, AuditStore};

#[derive(Debug, Args)]
pub struct AuditArgs {
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

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let saga_id = args.saga.as_deref().map(parse_saga_id).transpose()?;
    if !(1..=10_000).contains(&args.limit) {
        return Err(CliError::usage("--limit must be between 1 and 10000"));
    }
    let app = App::open(2).await?;
    let store = AuditStore::new(app.engine.store().pool().clone());
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
