//! `GET /console/audit`: the MCP audit, newest first: who called which tool, when, on which
//! saga, with what outcome and how long it took. Filterable by tool, principal, saga and time.

use crate::console::layout::{self, html_response, Nav};
use crate::console::pages::list::parse_time;
use crate::console::session::SignedIn;
use crate::console::view::{saga_link, time};
use crate::console::Console;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use stepwise_mcp::AuditFilter;
use uuid::Uuid;

/// Rows shown at most.
pub const ROWS: i64 = 200;
/// Calls read when filtering by outcome.
const OUTCOME_WINDOW: i64 = 10_000;

#[derive(Debug, Default, Deserialize)]
pub struct AuditParams {
    #[serde(default)]
    tool: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    saga: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    outcome: String,
}

/// `GET /console/audit`.
pub async fn page(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Query(params): Query<AuditParams>,
) -> Response {
    let saga_id = match params.saga.trim() {
        "" => None,
        s => match Uuid::parse_str(s) {
            Ok(id) => Some(id),
            Err(_) => {
                return layout::message(
                    StatusCode::BAD_REQUEST,
                    Some(&viewer),
                    "Invalid filter",
                    "The saga filter is not a saga id.",
                )
            }
        },
    };
    let since = match parse_time(&params.since) {
        Ok(t) => t,
        Err(e) => {
            return layout::message(StatusCode::BAD_REQUEST, Some(&viewer), "Invalid filter", &e)
        }
    };
    let filter = AuditFilter {
        tool: Some(params.tool.trim().to_string()).filter(|s| !s.is_empty()),
        principal: Some(params.principal.trim().to_string()).filter(|s| !s.is_empty()),
        saga_id,
        since,
        // The store filters by tool, principal, saga and time; the outcome is filtered here,
        // over a wider window so that a rare outcome still fills the page.
        limit: if params.outcome.trim().is_empty() {
            ROWS
        } else {
            OUTCOME_WINDOW
        },
    };
    let audit = stepwise_mcp::AuditStore::new(console.engine.store().reads().await.pool().clone());
    let rows = match audit.query(&filter).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "console: reading the audit failed");
            return layout::message(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&viewer),
                "Database unavailable",
                "The audit could not be read.",
            );
        }
    };
    let outcome = params.outcome.trim();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| outcome.is_empty() || r.outcome == outcome)
        .take(ROWS as usize)
        .collect();
    html_response(
        StatusCode::OK,
        layout::page(
            "MCP audit",
            Some(&viewer),
            Nav::Audit,
            html! {
                h1 { "MCP audit" }
                form.filters method="get" action="/console/audit" role="search" {
                    label { "Tool" input type="text" name="tool" value=(params.tool) size="18"; }
                    label { "Principal" input type="text" name="principal" value=(params.principal) placeholder="staff:frontdesk" size="20"; }
                    label { "Saga id" input type="text" name="saga" value=(params.saga) size="36"; }
                    label { "Since (UTC)" input type="text" name="since" value=(params.since) placeholder="2026-12-01T00:00" size="16"; }
                    label { "Outcome"
                        select name="outcome" {
                            @for o in ["", "ok", "pending", "saga_failed", "refused", "invalid", "conflict", "error"] {
                                option value=(o) selected[outcome == o] { (if o.is_empty() { "any" } else { o }) }
                            }
                        }
                    }
                    button type="submit" { "Filter" }
                    a.button.secondary href="/console/audit" { "Clear" }
                }
                p.legend { "Newest first; at most " (ROWS) " calls (narrow the filters to see older ones; an outcome filter looks at the newest " (OUTCOME_WINDOW) ")." }
                div.table-wrap { table.responsive #audit {
                    thead { tr { th { "At" } th { "Principal" } th { "Transport" } th { "Tool" } th { "Saga" } th { "Outcome" } th { "Error" } th { "ms" } } }
                    tbody {
                        @for r in &rows { tr {
                            td data-label="At" { (time(r.at)) }
                            td data-label="Principal" { (r.principal) }
                            td data-label="Transport" { (r.transport) }
                            td data-label="Tool" { code { (r.tool) } }
                            td data-label="Saga" { @if let Some(id) = r.saga_id { (saga_link(id)) } }
                            td data-label="Outcome" { span class=(format!("status s-{}", if r.outcome == "ok" { "completed" } else if r.outcome == "pending" { "running" } else { "failed" })) { (r.outcome) } }
                            td data-label="Error" { (r.error_code.as_deref().unwrap_or("")) }
                            td data-label="ms" { (r.duration_ms) }
                        } }
                        @if rows.is_empty() { tr { td colspan="8" { "No call matches." } } }
                    }
                } }
            },
        ),
    )
}
