//! `GET /console`: what needs an operator now. Counts by status and skill, the last hour's
//! failure and compensation rates and steps per second (with a per-minute chart), failed
//! sagas, waiting sagas with what they await and until when, and the oldest unfinished ones.
//! `GET /console/overview/live` is the same content without the shell, refetched when the
//! event stream says a saga changed.

use crate::console::layout::{self, html_response, Nav};
use crate::console::session::SignedIn;
use crate::console::timeline::activity_chart;
use crate::console::view::{json_inline, opt_time, saga_link, status, time};
use crate::console::Console;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use std::collections::BTreeMap;
use stepwise_engine::store::{AttentionList, ConsoleSaga, MinuteActivity, SkillStatusCount};
use stepwise_engine::SagaStatus;

/// How far back a saga may have been created for its last-hour activity to be counted.
const ACTIVITY_CREATED_WITHIN: i64 = 24;

struct Overview {
    counts: Vec<SkillStatusCount>,
    activity: Vec<MinuteActivity>,
    failed: Vec<ConsoleSaga>,
    waiting: Vec<ConsoleSaga>,
    oldest: Vec<ConsoleSaga>,
    now: DateTime<Utc>,
}

async fn load(console: &Console) -> Result<Overview, stepwise_engine::StoreError> {
    // Reads: from STEPWISE_READ_URL's replica once it has caught up.
    let store = console.engine.store().reads().await;
    let now = Utc::now();
    let (counts, activity, failed, waiting, oldest) = tokio::try_join!(
        store.console_counts(),
        store.console_activity(
            now - Duration::hours(1),
            Duration::hours(ACTIVITY_CREATED_WITHIN)
        ),
        store.console_attention(AttentionList::Failed, 20),
        store.console_attention(AttentionList::Waiting, 20),
        store.console_attention(AttentionList::OldestActive, 10),
    )?;
    Ok(Overview {
        counts,
        activity,
        failed,
        waiting,
        oldest,
        now,
    })
}

fn unavailable(e: stepwise_engine::StoreError) -> Response {
    tracing::warn!(error = %e, "console: a read failed");
    layout::message(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "Database unavailable",
        "The database did not answer; this page will work again when it does.",
    )
}

/// `GET /console`.
pub async fn page(State(console): State<Console>, SignedIn(viewer, _): SignedIn) -> Response {
    let overview = match load(&console).await {
        Ok(o) => o,
        Err(e) => return unavailable(e),
    };
    html_response(
        StatusCode::OK,
        layout::page(
            "Overview",
            Some(&viewer),
            Nav::Overview,
            html! {
                h1 { "Overview" }
                div #live data-live-source="/console/events"
                    hx-get="/console/overview/live" hx-trigger="saga-changed from:body delay:500ms"
                    hx-swap="innerHTML" aria-live="polite" {
                    (content(&overview))
                }
            },
        ),
    )
}

/// `GET /console/overview/live`.
pub async fn live(State(console): State<Console>, SignedIn(_, _): SignedIn) -> Response {
    match load(&console).await {
        Ok(o) => html_response(StatusCode::OK, content(&o)),
        Err(e) => unavailable(e).into_response(),
    }
}

fn rate(part: i64, whole: i64) -> String {
    if whole == 0 {
        "—".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn content(o: &Overview) -> Markup {
    let mut by_status: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_skill: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for c in &o.counts {
        *by_status.entry(c.status.as_str()).or_default() += c.count;
        *by_skill
            .entry(c.skill.as_str())
            .or_default()
            .entry(c.status.as_str())
            .or_default() += c.count;
    }
    let steps: i64 = o.activity.iter().map(|m| m.steps).sum();
    let completed: i64 = o.activity.iter().map(|m| m.completed).sum();
    let compensated: i64 = o.activity.iter().map(|m| m.compensated).sum();
    let failed: i64 = o.activity.iter().map(|m| m.failed).sum();
    let ended = completed + compensated + failed;
    html! {
        p { "As of " (time(o.now)) ". Updates live." }
        section aria-labelledby="h-counts" {
            h2 #h-counts { "Sagas by status" }
            div.cards {
                @for s in SagaStatus::all() {
                    a.card href=(format!("/console/sagas?status={}", s.as_str())) {
                        div.n data-status=(s.as_str()) { (by_status.get(s.as_str()).copied().unwrap_or(0)) }
                        div.l { (status(s.as_str())) }
                    }
                }
            }
        }
        section aria-labelledby="h-hour" {
            h2 #h-hour { "The last hour" }
            div.cards {
                div.card { div.n { (format!("{:.2}", steps as f64 / 3600.0)) } div.l { "steps/s (" (steps) " steps)" } }
                div.card { div.n { (ended) } div.l { "sagas ended" } }
                div.card { div.n { (rate(failed, ended)) } div.l { "failed (" (failed) ")" } }
                div.card { div.n { (rate(compensated, ended)) } div.l { "compensated (" (compensated) ")" } }
            }
            (activity_chart(&o.activity, o.now))
        }
        section aria-labelledby="h-failed" {
            h2 #h-failed { "Need an operator: failed (" (o.failed.len()) (if o.failed.len() == 20 { "+" } else { "" }) ")" }
            @if o.failed.is_empty() { p { "No failed sagas." } } @else {
                div.table-wrap { table.responsive {
                    thead { tr { th { "Saga" } th { "Skill" } th { "Failed at" } th { "Error" } } }
                    tbody { @for s in &o.failed { tr {
                        td data-label="Saga" { (saga_link(s.id)) }
                        td data-label="Skill" { (s.skill) " v" (s.skill_version) }
                        td data-label="Failed at" { (time(s.updated_at)) }
                        td data-label="Error" { code { (s.error.as_ref().map(|e| json_inline(e, 120)).unwrap_or_default()) } }
                    } } }
                } }
            }
        }
        section aria-labelledby="h-waiting" {
            h2 #h-waiting { "Waiting (" (o.waiting.len()) ")" }
            @if o.waiting.is_empty() { p { "No saga is waiting." } } @else {
                div.table-wrap { table.responsive {
                    thead { tr { th { "Saga" } th { "Skill" } th { "Step" } th { "Awaits" } th { "Until" } } }
                    tbody { @for s in &o.waiting {
                        @let w = s.waiting_for.as_ref();
                        tr {
                            td data-label="Saga" { (saga_link(s.id)) }
                            td data-label="Skill" { (s.skill) }
                            td data-label="Step" { (w.and_then(|w| w["step"].as_str()).unwrap_or("")) }
                            td data-label="Awaits" { (w.and_then(|w| w["event"].as_str()).map_or("a timer (sleep)".to_string(), |e| format!("event `{e}`"))) }
                            td data-label="Until" { (opt_time(w.and_then(|w| w["until"].as_str()).and_then(|t| t.parse().ok()))) }
                        }
                    } }
                } }
            }
        }
        section aria-labelledby="h-oldest" {
            h2 #h-oldest { "Oldest unfinished" }
            @if o.oldest.is_empty() { p { "Nothing is running." } } @else {
                div.table-wrap { table.responsive {
                    thead { tr { th { "Saga" } th { "Skill" } th { "Status" } th { "Step" } th { "Created" } } }
                    tbody { @for s in &o.oldest { tr {
                        td data-label="Saga" { (saga_link(s.id)) }
                        td data-label="Skill" { (s.skill) }
                        td data-label="Status" { (status(s.status.as_str())) }
                        td data-label="Step" { (s.cursor + 1) " of " (s.step_count) }
                        td data-label="Created" { (time(s.created_at)) }
                    } } }
                } }
            }
        }
        section aria-labelledby="h-skills" {
            h2 #h-skills { "By skill" }
            div.table-wrap { table.responsive {
                thead { tr { th { "Skill" } @for s in SagaStatus::all() { th { (s.as_str()) } } } }
                tbody { @for (skill, counts) in &by_skill { tr {
                    td data-label="Skill" { a href=(format!("/console/sagas?skill={skill}")) { (skill) } }
                    @for s in SagaStatus::all() { td data-label=(s.as_str()) { (counts.get(s.as_str()).copied().unwrap_or(0)) } }
                } } }
            } }
        }
    }
}
