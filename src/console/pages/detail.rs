//! `GET /console/sagas/{id}`: one saga. Header (skill, version, who started it, key, replay
//! links), what it awaits, the actions the viewer may take, the timeline, the steps, the full
//! history with actors, and input/output/error with secrets redacted. `GET .../live` is the
//! same content without the shell, refetched when the event stream reports this saga.

use crate::console::layout::{self, html_response, Nav};
use crate::console::session::{SignedIn, Viewer};
use crate::console::timeline::saga_timeline;
use crate::console::view::{json_block, json_inline, opt_time, saga_link, status, time};
use crate::console::Console;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;
use stepwise_engine::{EventKind, OperatorRequest, SagaDetail, SagaStatus};
use uuid::Uuid;

/// Loads a saga for a page, or the page that says why not.
pub async fn load(console: &Console, viewer: &Viewer, id: &str) -> Result<SagaDetail, Response> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(layout::message(
            StatusCode::NOT_FOUND,
            Some(viewer),
            "Not found",
            "That is not a saga id.",
        ));
    };
    match console.engine.detail(id).await {
        Ok(Some(saga)) => Ok(saga),
        Ok(None) => Err(layout::message(
            StatusCode::NOT_FOUND,
            Some(viewer),
            "Not found",
            &format!("Saga {id} does not exist (or was pruned)."),
        )),
        Err(e) => {
            tracing::warn!(error = %e, saga_id = %id, "console: reading a saga failed");
            Err(layout::message(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(viewer),
                "Database unavailable",
                "The database did not answer.",
            ))
        }
    }
}

#[derive(Deserialize, Default)]
pub struct Flash {
    #[serde(default)]
    done: String,
}

/// `GET /console/sagas/{id}`.
pub async fn page(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    let saga = match load(&console, &viewer, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let done = match flash.done.as_str() {
        "retry" => Some("Retry recorded: the saga's compensation resumes."),
        "restart" => Some("Restarted: this is the new saga."),
        "fork" => Some("Forked: this is the new saga."),
        "cancel" => Some("Cancel requested: the saga is compensated after its running step."),
        "send" => Some("Event delivered."),
        _ => None,
    };
    html_response(
        StatusCode::OK,
        layout::page(
            &format!("Saga {}", saga.id),
            Some(&viewer),
            Nav::Sagas,
            html! {
                h1 { "Saga " span.mono { (saga.id) } }
                @if let Some(done) = done { p.notice role="status" { (done) } }
                div #live data-live-source=(format!("/console/events?saga={}", saga.id))
                    hx-get=(format!("/console/sagas/{}/live", saga.id))
                    hx-trigger="saga-changed from:body delay:300ms" hx-swap="innerHTML" {
                    (content(&console, &viewer, &saga))
                }
            },
        ),
    )
}

/// `GET /console/sagas/{id}/live`.
pub async fn live(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Path(id): Path<String>,
) -> Response {
    match load(&console, &viewer, &id).await {
        Ok(saga) => html_response(StatusCode::OK, content(&console, &viewer, &saga)),
        Err(r) => r,
    }
}

/// The actions `viewer` may take on `saga` now, as (path segment, label).
pub fn available_actions(
    console: &Console,
    viewer: &Viewer,
    saga: &SagaDetail,
) -> Vec<(&'static str, &'static str)> {
    if !viewer.may_act() {
        return Vec::new();
    }
    let request = OperatorRequest::new(viewer.principal.clone());
    let engine = &console.engine;
    let mut actions = Vec::new();
    if engine.check_retry(saga, &request).is_ok() {
        actions.push(("retry", "Retry…"));
    }
    if engine.check_restart(saga, &request).is_ok() {
        actions.push(("restart", "Restart…"));
    }
    if saga.status.is_terminal() {
        actions.push(("fork", "Fork from a step…"));
    }
    if matches!(
        saga.status,
        SagaStatus::Pending | SagaStatus::Running | SagaStatus::Waiting
    ) && saga.cancel_requested_at.is_none()
    {
        actions.push(("cancel", "Cancel…"));
    }
    if saga
        .waiting_for
        .as_ref()
        .is_some_and(|w| w["event"].is_string())
    {
        actions.push(("send", "Send the awaited event…"));
    }
    actions
}

/// Sagas made from this one by restart or fork, from its history.
fn replays(saga: &SagaDetail) -> Vec<(Uuid, &'static str)> {
    saga.events
        .iter()
        .filter_map(|e| {
            let detail = e.detail.as_ref()?;
            let (key, what) = match e.kind {
                EventKind::OperatorRestart => ("restarted_as", "restart"),
                EventKind::OperatorFork => ("forked_as", "fork"),
                _ => return None,
            };
            Some((detail[key].as_str()?.parse().ok()?, what))
        })
        .collect()
}

fn content(console: &Console, viewer: &Viewer, saga: &SagaDetail) -> Markup {
    let actions = available_actions(console, viewer, saga);
    let made = replays(saga);
    html! {
        dl.meta {
            dt { "Status" } dd #saga-status data-status=(saga.status.as_str()) { (status(saga.status.as_str()))
                @if saga.cancel_requested_at.is_some() { " (cancel requested)" } }
            dt { "Skill" } dd { (saga.skill) " version " (saga.skill_version) }
            dt { "Started by" } dd { (saga.started_by) }
            dt { "Idempotency key" } dd { code { (saga.idempotency_key.as_deref().unwrap_or("none")) } }
            dt { "Created" } dd { (time(saga.created_at)) }
            dt { "Updated" } dd { (time(saga.updated_at)) }
            @if let Some(original) = saga.replay_of { dt { "Replay of" } dd { (saga_link(original)) } }
            @for (id, what) in &made { dt { "Replayed by " (what) } dd { (saga_link(*id)) } }
            @if let Some(owner) = &saga.lease_owner { dt { "Worker" } dd { (owner) } }
            @if let Some(w) = &saga.waiting_for {
                dt { "Waiting" } dd {
                    "step " code { (w["step"].as_str().unwrap_or("")) } " awaits "
                    @match w["event"].as_str() {
                        Some(event) => { "event " code { (event) } }
                        None => { "a timer" }
                    }
                    " until " (opt_time(w["until"].as_str().and_then(|t| t.parse().ok())))
                    @if let Some(prompt) = w["prompt"].as_str() { br; em { (prompt) } }
                }
            }
        }
        @if !actions.is_empty() {
            nav.actions aria-label="Actions" {
                @for (action, label) in &actions {
                    a.button href=(format!("/console/sagas/{}/{action}", saga.id)) data-action=(action) { (label) }
                }
            }
        }
        h2 { "Timeline" }
        div.table-wrap { (saga_timeline(saga, Utc::now())) }
        h2 { "Steps" }
        div.table-wrap { table.responsive #steps {
            thead { tr { th { "#" } th { "Step" } th { "Status" } th { "Attempts" } th { "Started" } th { "Finished" } th { "Compensation" } th { "Error" } } }
            tbody { @for s in &saga.steps { tr {
                td data-label="#" { (s.position + 1) }
                td data-label="Step" { code { (s.name) } }
                td data-label="Status" { (status(s.status.as_str())) }
                td data-label="Attempts" { (s.attempts) }
                td data-label="Started" { (opt_time(s.started_at)) }
                td data-label="Finished" { (opt_time(s.finished_at)) }
                td data-label="Compensation" { (s.compensation.status.as_str())
                    @if s.compensation.attempts > 0 { " (" (s.compensation.attempts) " attempts)" } }
                td data-label="Error" { code { (s.error.as_ref().or(s.compensation.error.as_ref()).map(|e| json_inline(e, 160)).unwrap_or_default()) } }
            } } }
        } }
        h2 { "History" }
        div.table-wrap { table.responsive #history {
            thead { tr { th { "#" } th { "At" } th { "Event" } th { "Step" } th { "Attempt" } th { "Actor" } th { "Detail" } } }
            tbody { @for e in &saga.events { tr {
                td data-label="#" { (e.seq) }
                td data-label="At" { (time(e.at)) }
                td data-label="Event" { (e.kind.as_str()) }
                td data-label="Step" { (e.step.as_deref().unwrap_or("")) }
                td data-label="Attempt" { (e.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                td data-label="Actor" { (e.actor) }
                td data-label="Detail" { code { (e.detail.as_ref().map(|d| json_inline(d, 200)).unwrap_or_default()) } }
            } } }
        } }
        div.two {
            section { h2 { "Input" } (json_block("input", Some(&saga.input))) }
            section {
                h2 { "Output" } (json_block("output", saga.output.as_ref()))
                @if saga.error.is_some() { h2 { "Error" } (json_block("error", saga.error.as_ref())) }
            }
        }
    }
}
