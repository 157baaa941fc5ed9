//! `GET /console/sagas`: the saga list, newest first, with filters (status, skill, creation
//! time range in UTC, and a search on saga id, idempotency key or guest email) and keyset
//! paging: "Older" carries the `(created_at, id)` of the page's last saga, so a page costs the
//! same however deep it is (no OFFSET).

use crate::console::layout::{self, html_response, Nav};
use crate::console::session::SignedIn;
use crate::console::view::{saga_link, status, time};
use crate::console::Console;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use maud::html;
use serde::Deserialize;
use std::time::Instant;
use stepwise_engine::store::SagaPageQuery;
use stepwise_engine::SagaStatus;
use uuid::Uuid;

/// Sagas per page.
pub const PAGE_SIZE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub skill: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub after: String,
}

/// Percent-encodes a query-string value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A time typed in a filter (UTC): RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` or `YYYY-MM-DD`.
pub fn parse_time(text: &str) -> Result<Option<DateTime<Utc>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(format!(
        "`{text}` is not a time (use 2026-12-01T14:30 or 2026-12-01, in UTC)"
    ))
}

/// The keyset cursor of a page: `<created_at RFC 3339>_<id>`.
pub fn cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!(
        "{}_{id}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

fn parse_cursor(text: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || "the paging cursor is malformed; start from the first page".to_string();
    let (at, id) = text.rsplit_once('_').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((at.with_timezone(&Utc), id)))
}

impl ListParams {
    /// The store query, or why the filters are invalid.
    pub fn query(&self) -> Result<SagaPageQuery, String> {
        let status = match self.status.trim() {
            "" => None,
            s => Some(
                s.parse::<SagaStatus>()
                    .map_err(|_| format!("unknown status `{s}`"))?,
            ),
        };
        Ok(SagaPageQuery {
            status,
            skill: Some(self.skill.trim().to_string()).filter(|s| !s.is_empty()),
            created_from: parse_time(&self.from)?,
            created_to: parse_time(&self.to)?,
            search: Some(self.q.trim().to_string()).filter(|s| !s.is_empty()),
            after: parse_cursor(self.after.trim())?,
            limit: PAGE_SIZE,
        })
    }

    /// The query string of these filters (without the cursor).
    pub fn filters(&self) -> String {
        format!(
            "status={}&skill={}&from={}&to={}&q={}",
            encode(self.status.trim()),
            encode(self.skill.trim()),
            encode(self.from.trim()),
            encode(self.to.trim()),
            encode(self.q.trim())
        )
    }
}

/// `GET /console/sagas`.
pub async fn page(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Query(params): Query<ListParams>,
) -> Response {
    let started = Instant::now();
    let query = match params.query() {
        Ok(q) => q,
        Err(e) => {
            return layout::message(StatusCode::BAD_REQUEST, Some(&viewer), "Invalid filter", &e)
        }
    };
    let sagas = match console
        .engine
        .store()
        .reads()
        .await
        .console_page(&query)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "console: the saga list failed");
            return layout::message(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&viewer),
                "Database unavailable",
                "The database did not answer.",
            );
        }
    };
    let elapsed = started.elapsed();
    tracing::debug!(
        ms = elapsed.as_secs_f64() * 1000.0,
        rows = sagas.len(),
        "console: saga list page"
    );
    let mut skills: Vec<String> = console
        .engine
        .registry()
        .latest_skills()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    skills.sort();
    let next = (sagas.len() as i64 == PAGE_SIZE)
        .then(|| sagas.last().map(|s| cursor(s.created_at, s.id)))
        .flatten();
    let deeper = query.after.is_some();
    html_response(
        StatusCode::OK,
        layout::page(
            "Sagas",
            Some(&viewer),
            Nav::Sagas,
            html! {
                h1 { "Sagas" }
                form.filters method="get" action="/console/sagas" role="search" {
                    label { "Status"
                        select name="status" {
                            option value="" { "any" }
                            @for s in SagaStatus::all() {
                                option value=(s.as_str()) selected[params.status == s.as_str()] { (s.as_str()) }
                            }
                        }
                    }
                    label { "Skill"
                        select name="skill" {
                            option value="" { "any" }
                            @for s in &skills {
                                option value=(s) selected[&params.skill == s] { (s) }
                            }
                        }
                    }
                    label { "Created from (UTC)" input type="text" name="from" value=(params.from) placeholder="2026-12-01T00:00" size="16"; }
                    label { "to (UTC)" input type="text" name="to" value=(params.to) placeholder="2026-12-02" size="16"; }
                    label { "Saga id, key or guest email" input type="search" name="q" value=(params.q) size="28"; }
                    button type="submit" { "Filter" }
                    a.button.secondary href="/console/sagas" { "Clear" }
                }
                div.table-wrap { table.responsive #sagas {
                    caption.skip { "Sagas, newest first" }
                    thead { tr { th { "Saga" } th { "Skill" } th { "Status" } th { "Step" } th { "Key" } th { "Started by" } th { "Created" } th { "Updated" } } }
                    tbody {
                        @for s in &sagas { tr {
                            td data-label="Saga" { (saga_link(s.id)) }
                            td data-label="Skill" { (s.skill) " v" (s.skill_version) }
                            td data-label="Status" { (status(s.status.as_str())) }
                            td data-label="Step" { (s.cursor.min(s.step_count)) "/" (s.step_count) }
                            td data-label="Key" { code { (s.idempotency_key.as_deref().unwrap_or("")) } }
                            td data-label="Started by" { (s.started_by) }
                            td data-label="Created" { (time(s.created_at)) }
                            td data-label="Updated" { (time(s.updated_at)) }
                        } }
                        @if sagas.is_empty() { tr { td colspan="8" { "No saga matches." } } }
                    }
                } }
                nav.pager aria-label="Pages" {
                    @if deeper { a href=(format!("/console/sagas?{}", params.filters())) { "« Newest" } }
                    @if let Some(next) = &next { a rel="next" href=(format!("/console/sagas?{}&after={}", params.filters(), encode(next))) { "Older »" } }
                    span.legend { (sagas.len()) " sagas on this page; read in " (format!("{:.1}", elapsed.as_secs_f64() * 1000.0)) " ms" }
                }
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_filters_encode() {
        let at = Utc::now();
        let id = Uuid::now_v7();
        let (back_at, back_id) = parse_cursor(&cursor(at, id)).unwrap().unwrap();
        assert_eq!(back_id, id);
        assert_eq!(back_at.timestamp_micros(), at.timestamp_micros());
        assert!(parse_cursor("nonsense").is_err());
        assert_eq!(encode("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }

    #[test]
    fn filter_times_are_utc_in_several_forms() {
        let t = parse_time("2026-12-01T14:30").unwrap().unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T14:30:00+00:00");
        let d = parse_time("2026-12-01").unwrap().unwrap();
        assert_eq!(d.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_time(" ").unwrap(), None);
    }
}
