//! Operator actions (docs/console.md, "Actions"), each confirmed on a page of its own with a
//! required reason, and applied through the engine's operator API so the history records the
//! signed-in principal as the actor and the reason: retry, restart, fork from a step, cancel,
//! send the awaited event (a form built from the wait's schema), and bulk retry/restart over a
//! filter after a dry-run count. Only viewers who may act reach them (`403` otherwise), and
//! every POST must carry the session's CSRF token (`403` otherwise).

use crate::console::layout::{self, html_response, Nav};
use crate::console::pages::detail::{available_actions, load};
use crate::console::pages::list::{encode, parse_time};
use crate::console::session::{same_secret, SignedIn, Viewer};
use crate::console::view::{json_block, saga_link, status};
use crate::console::Console;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde_json::{Map, Value};
use std::collections::HashMap;
use stepwise_engine::{
    BulkFilter, DeliverError, OperatorError, OperatorRequest, SagaDetail, SagaStatus,
};
use uuid::Uuid;

/// The actions on one saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Restart,
    Fork,
    Cancel,
    Send,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "retry" => Self::Retry,
            "restart" => Self::Restart,
            "fork" => Self::Fork,
            "cancel" => Self::Cancel,
            "send" => Self::Send,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Restart => "restart",
            Self::Fork => "fork",
            Self::Cancel => "cancel",
            Self::Send => "send",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Self::Retry => "Resume this failed saga's compensation with a fresh round of attempts for the compensations that gave up.",
            Self::Restart => "Start a new saga with the same input, linked to this one, under its own idempotency key.",
            Self::Fork => "Start a new saga that takes over the outputs of the steps before the chosen step and runs from there.",
            Self::Cancel => "Ask this saga to stop; it is compensated after its running step.",
            Self::Send => "Deliver the event this saga awaits; the waiting step continues with it.",
        }
    }
}

fn forbidden(viewer: &Viewer) -> Response {
    layout::message(
        StatusCode::FORBIDDEN,
        Some(viewer),
        "Read only",
        "Your role may read the console but not act; ask an operator.",
    )
}

fn bad_csrf(viewer: &Viewer) -> Response {
    layout::message(
        StatusCode::FORBIDDEN,
        Some(viewer),
        "Refused",
        "The form's CSRF token does not match this session; reload the page and try again.",
    )
}

/// The refusal of a POST whose viewer may not act or whose CSRF token is not the session's.
fn refusal(viewer: &Viewer, form: &HashMap<String, String>) -> Option<Response> {
    if !viewer.may_act() {
        return Some(forbidden(viewer));
    }
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if !same_secret(&viewer.csrf, sent) {
        return Some(bad_csrf(viewer));
    }
    None
}

fn reason_field() -> Markup {
    html! {
        label for="reason" { "Reason (recorded in the saga's history)" }
        input #reason type="text" name="reason" required minlength="3" maxlength="500" autocomplete="off";
    }
}

/// `GET /console/sagas/{id}/{action}`: the confirmation page.
pub async fn confirm(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return layout::message(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            "Not found",
            "No such action.",
        );
    };
    if !viewer.may_act() {
        return forbidden(&viewer);
    }
    let saga = match load(&console, &viewer, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let offered = available_actions(&console, &viewer, &saga)
        .iter()
        .any(|(a, _)| *a == action.name());
    let body = html! {
        h1 { "Confirm: " (action.name()) " saga " span.mono { (saga.id) } }
        p { (saga.skill) " v" (saga.skill_version) ", " (status(saga.status.as_str())) ". " (action.explain()) }
        @if !offered {
            p.notice.error role="alert" { "This action does not apply to the saga in its current state; submitting it will be refused with the engine's reason." }
        }
        form.action method="post" action=(format!("/console/sagas/{}/{}", saga.id, action.name())) {
            input type="hidden" name="csrf" value=(viewer.csrf);
            @match action {
                Action::Fork => { (fork_picker(&console, &viewer, &saga)) }
                Action::Send => { (event_form(&saga)) }
                _ => {}
            }
            (reason_field())
            div.actions {
                button type="submit" data-confirm=(action.name()) { "Confirm " (action.name()) }
                a.button.secondary href=(format!("/console/sagas/{}", saga.id)) { "Back" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout::page(
            &format!("Confirm {}", action.name()),
            Some(&viewer),
            Nav::Sagas,
            body,
        ),
    )
}

/// The step picker of a fork: every step, those the engine would refuse disabled with why.
fn fork_picker(console: &Console, viewer: &Viewer, saga: &SagaDetail) -> Markup {
    let request = OperatorRequest::new(viewer.principal.clone());
    let choices: Vec<(String, Result<usize, String>)> = saga
        .steps
        .iter()
        .map(|s| {
            let check = console
                .engine
                .check_fork(saga, &s.name, &request)
                .map(|plan| plan.reused_outputs.len())
                .map_err(|e| e.to_string());
            (s.name.clone(), check)
        })
        .collect();
    let first_ok = choices.iter().position(|(_, c)| c.is_ok());
    html! {
        label for="from_step" { "Fork from step" }
        select #from_step name="from_step" required {
            @for (i, (name, check)) in choices.iter().enumerate() {
                @match check {
                    Ok(reused) => option value=(name) selected[Some(i) == first_ok] { (i + 1) ". " (name) " (reuses " (reused) " earlier outputs)" },
                    Err(why) => option value=(name) disabled title=(why) { (i + 1) ". " (name) " — not possible" },
                }
            }
        }
        @if first_ok.is_none() { p.notice.error { "No step of this saga can be forked from (see each step's reason on hover, or restart it instead)." } }
    }
}

/// The awaited event's form, built from its JSON Schema: one field per top-level property
/// (text, number, checkbox or choice), or a JSON editor when the schema says nothing more.
fn event_form(saga: &SagaDetail) -> Markup {
    let Some(wait) = &saga.waiting_for else {
        return html! { p.notice.error { "The saga is not waiting." } };
    };
    let event = wait["event"].as_str().unwrap_or("");
    let schema = &wait["schema"];
    let properties = schema["properties"].as_object();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        input type="hidden" name="event" value=(event);
        p { "Event " code { (event) } " for step " code { (wait["step"].as_str().unwrap_or("")) } "." }
        @if let Some(prompt) = wait["prompt"].as_str() { p { em { (prompt) } } }
        @match properties.filter(|p| !p.is_empty()) {
            Some(props) => {
                fieldset {
                    legend { "Payload" }
                    @for (name, prop) in props {
                        @let id = format!("field-{name}");
                        @let kind = prop["type"].as_str().unwrap_or("string");
                        @let needed = required.contains(&name.as_str());
                        div {
                            label for=(id) { (name) @if needed { " (required)" } @if let Some(d) = prop["description"].as_str() { " — " (d) } }
                            @if let Some(choices) = prop["enum"].as_array() {
                                select id=(id) name=(format!("field.{name}")) required[needed] {
                                    @if !needed { option value="" { "—" } }
                                    @for c in choices { @let c = c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string()); option value=(c) { (c) } }
                                }
                            } @else if kind == "boolean" {
                                input id=(id) type="checkbox" name=(format!("field.{name}")) value="true";
                            } @else if kind == "integer" || kind == "number" {
                                input id=(id) type="number" step=(if kind == "integer" { "1" } else { "any" }) name=(format!("field.{name}")) required[needed];
                            } @else if kind == "string" {
                                input id=(id) type="text" name=(format!("field.{name}")) required[needed];
                            } @else {
                                textarea id=(id) name=(format!("json.{name}")) required[needed] placeholder="JSON" {}
                            }
                        }
                    }
                }
            }
            None => {
                label for="payload_json" { "Payload (JSON)" }
                textarea #payload_json name="payload_json" required { "{}" }
                details { summary { "Schema" } (json_block("schema", Some(schema))) }
            }
        }
    }
}

/// The payload of a submitted event form (see [`event_form`]).
fn payload_from(form: &HashMap<String, String>, schema: &Value) -> Result<Value, String> {
    if let Some(text) = form.get("payload_json") {
        return serde_json::from_str(text).map_err(|e| format!("the payload is not JSON: {e}"));
    }
    let mut payload = Map::new();
    let props = schema["properties"].as_object();
    for (key, value) in form {
        if let Some(name) = key.strip_prefix("field.") {
            if value.is_empty() {
                continue;
            }
            let kind = props
                .and_then(|p| p.get(name))
                .and_then(|p| p["type"].as_str())
                .unwrap_or("string");
            let v = match kind {
                "boolean" => Value::Bool(value == "true" || value == "on"),
                "integer" => value
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("`{name}` must be a whole number"))?,
                "number" => value
                    .parse::<f64>()
                    .map(Value::from)
                    .map_err(|_| format!("`{name}` must be a number"))?,
                _ => Value::String(value.clone()),
            };
            payload.insert(name.to_string(), v);
        } else if let Some(name) = key.strip_prefix("json.") {
            if value.trim().is_empty() {
                continue;
            }
            let v =
                serde_json::from_str(value).map_err(|e| format!("`{name}` is not JSON: {e}"))?;
            payload.insert(name.to_string(), v);
        }
    }
    // An unchecked checkbox is absent from the form: it means false.
    if let Some(props) = props {
        for (name, prop) in props {
            if prop["type"] == "boolean" && !payload.contains_key(name) {
                payload.insert(name.clone(), Value::Bool(false));
            }
        }
    }
    Ok(Value::Object(payload))
}

fn operator_error(viewer: &Viewer, e: OperatorError) -> Response {
    let status = if e.is_conflict() {
        StatusCode::CONFLICT
    } else if e.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        tracing::warn!(error = %e, "console: an action failed");
        StatusCode::SERVICE_UNAVAILABLE
    };
    layout::message(status, Some(viewer), "Not applied", &e.to_string())
}

/// The reason of a submitted form, or the page that asks for one.
fn reason_of(viewer: &Viewer, form: &HashMap<String, String>) -> Result<String, Box<Response>> {
    let reason = form.get("reason").map(|r| r.trim()).unwrap_or("");
    if reason.chars().count() < 3 {
        return Err(Box::new(layout::message(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(viewer),
            "A reason is required",
            "Say why (at least 3 characters): it is recorded in the saga's history.",
        )));
    }
    Ok(reason.chars().take(500).collect())
}

/// `POST /console/sagas/{id}/{action}`.
pub async fn apply(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&viewer, &form) {
        return refused;
    }
    let Some(action) = Action::parse(&action) else {
        return layout::message(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            "Not found",
            "No such action.",
        );
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return layout::message(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            "Not found",
            "That is not a saga id.",
        );
    };
    let reason = match reason_of(&viewer, &form) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let request = OperatorRequest::new(viewer.principal.clone()).reason(reason.clone());
    let engine = &console.engine;
    tracing::info!(saga_id = %id, action = action.name(), actor = %viewer.principal, reason = %reason, "console action");
    let result = match action {
        Action::Retry => engine.retry(id, &request).await.map(|s| s.id),
        Action::Restart => engine.restart(id, &request).await.map(|s| s.id),
        Action::Fork => {
            let step = form.get("from_step").map(String::as_str).unwrap_or("");
            engine.fork(id, step, &request).await.map(|s| s.id)
        }
        Action::Cancel => engine.cancel_saga(id, &request).await.map(|s| s.id),
        Action::Send => return send(&console, &viewer, id, &reason, &form).await,
    };
    match result {
        Ok(target) => {
            Redirect::to(&format!("/console/sagas/{target}?done={}", action.name())).into_response()
        }
        Err(e) => operator_error(&viewer, e),
    }
}

/// Delivers the awaited event. The engine's deliveries carry no reason, so the delivery key
/// carries it: `console: <reason> (<random>)`, recorded in the history's `event_received`
/// with the principal as actor.
async fn send(
    console: &Console,
    viewer: &Viewer,
    id: Uuid,
    reason: &str,
    form: &HashMap<String, String>,
) -> Response {
    let saga = match load(console, viewer, &id.to_string()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let event = form.get("event").map(String::as_str).unwrap_or("");
    let schema = saga
        .waiting_for
        .as_ref()
        .filter(|w| w["event"] == event)
        .map(|w| w["schema"].clone())
        .unwrap_or(Value::Null);
    let payload = match payload_from(form, &schema) {
        Ok(p) => p,
        Err(e) => {
            return layout::message(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(viewer),
                "Invalid payload",
                &e,
            )
        }
    };
    let key = format!(
        "console: {reason} ({})",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    match console
        .engine
        .deliver(id, event, payload, &key, &viewer.principal)
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/sagas/{id}?done=send")).into_response(),
        Err(e) => {
            let status = match &e {
                DeliverError::NotFound(_) => StatusCode::NOT_FOUND,
                DeliverError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                DeliverError::Invalid { .. } | DeliverError::UnknownEvent { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                _ => StatusCode::CONFLICT,
            };
            layout::message(status, Some(viewer), "Not delivered", &e.to_string())
        }
    }
}

/// The filter of a bulk action.
#[derive(Debug, Default, serde::Deserialize)]
pub struct BulkParams {
    #[serde(default)]
    action: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    skill: String,
    #[serde(default)]
    since: String,
}

struct Bulk {
    retry: bool,
    filter: BulkFilter,
}

fn bulk_of(p: &BulkParams) -> Result<Option<Bulk>, String> {
    if p.action.is_empty() && p.status.is_empty() && p.skill.is_empty() {
        return Ok(None);
    }
    let retry = match p.action.as_str() {
        "retry" => true,
        "restart" => false,
        other => return Err(format!("unknown bulk action `{other}` (retry or restart)")),
    };
    let status = p
        .status
        .parse::<SagaStatus>()
        .map_err(|_| "choose a status".to_string())?;
    if p.skill.trim().is_empty() {
        return Err("choose a skill".into());
    }
    Ok(Some(Bulk {
        retry,
        filter: BulkFilter {
            status: Some(status),
            skill: Some(p.skill.trim().to_string()),
            since: parse_time(&p.since)?,
        },
    }))
}

/// The sagas of `bulk`'s filter and how many of them the engine would accept.
async fn dry_run(
    console: &Console,
    viewer: &Viewer,
    bulk: &Bulk,
) -> Result<(usize, usize), OperatorError> {
    let matches = console.engine.bulk_matches(&bulk.filter).await?;
    let request = OperatorRequest::new(viewer.principal.clone());
    let mut accepted = 0;
    for saga in &matches {
        let Some(detail) = console.engine.detail(saga.id).await? else {
            continue;
        };
        let ok = if bulk.retry {
            console.engine.check_retry(&detail, &request).is_ok()
        } else {
            console.engine.check_restart(&detail, &request).is_ok()
        };
        accepted += usize::from(ok);
    }
    Ok((matches.len(), accepted))
}

fn bulk_filter_form(viewer: &Viewer, p: &BulkParams, skills: &[String]) -> Markup {
    let _ = viewer;
    html! {
        form.filters method="get" action="/console/bulk" {
            label { "Action" select name="action" {
                option value="retry" selected[p.action == "retry"] { "retry (failed sagas)" }
                option value="restart" selected[p.action == "restart"] { "restart (compensated sagas)" }
            } }
            label { "Status" select name="status" required {
                @for s in [SagaStatus::Failed, SagaStatus::Compensated] {
                    option value=(s.as_str()) selected[p.status == s.as_str()] { (s.as_str()) }
                }
            } }
            label { "Skill" select name="skill" required {
                @for s in skills { option value=(s) selected[&p.skill == s] { (s) } }
            } }
            label { "Created since (UTC, optional)" input type="text" name="since" value=(p.since) placeholder="2026-12-01T00:00" size="16"; }
            button type="submit" { "Count matches (dry run)" }
        }
    }
}

/// `GET /console/bulk`: the filter, and with one, the dry-run count and the confirmation.
pub async fn bulk_form(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Query(params): Query<BulkParams>,
) -> Response {
    if !viewer.may_act() {
        return forbidden(&viewer);
    }
    let mut skills: Vec<String> = console
        .engine
        .registry()
        .latest_skills()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    skills.sort();
    let bulk = match bulk_of(&params) {
        Ok(b) => b,
        Err(e) => {
            return layout::message(StatusCode::BAD_REQUEST, Some(&viewer), "Invalid filter", &e)
        }
    };
    let counted = match &bulk {
        Some(b) => match dry_run(&console, &viewer, b).await {
            Ok(c) => Some(c),
            Err(e) => return operator_error(&viewer, e),
        },
        None => None,
    };
    let body = html! {
        h1 { "Bulk retry or restart" }
        p { "Choose a filter; the dry run counts the matching sagas and how many the engine would accept. Nothing changes until you confirm with a reason." }
        (bulk_filter_form(&viewer, &params, &skills))
        @if let Some((matched, accepted)) = counted {
            section aria-labelledby="h-dry" {
                h2 #h-dry { "Dry run" }
                p #dry-run role="status" data-matched=(matched) data-accepted=(accepted) {
                    (matched) " sagas match; " (accepted) " would be accepted by " (params.action) "."
                    " " a href=(format!("/console/sagas?status={}&skill={}&from={}", encode(&params.status), encode(&params.skill), encode(&params.since))) { "See them" }
                }
                @if accepted > 0 {
                    form.action method="post" action="/console/bulk" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        input type="hidden" name="action" value=(params.action);
                        input type="hidden" name="status" value=(params.status);
                        input type="hidden" name="skill" value=(params.skill);
                        input type="hidden" name="since" value=(params.since);
                        input type="hidden" name="expected" value=(matched);
                        (reason_field())
                        div { button.danger type="submit" { "Confirm: " (params.action) " " (accepted) " sagas" } }
                    }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout::page("Bulk", Some(&viewer), Nav::Bulk, body),
    )
}

/// `POST /console/bulk`: applies the confirmed bulk action, if the matches did not change
/// since the dry run (`409` otherwise).
pub async fn bulk_apply(
    State(console): State<Console>,
    SignedIn(viewer, _): SignedIn,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&viewer, &form) {
        return refused;
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let params = BulkParams {
        action: field("action"),
        status: field("status"),
        skill: field("skill"),
        since: field("since"),
    };
    let bulk = match bulk_of(&params) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return layout::message(
                StatusCode::BAD_REQUEST,
                Some(&viewer),
                "Invalid filter",
                "choose an action, a status and a skill",
            )
        }
        Err(e) => {
            return layout::message(StatusCode::BAD_REQUEST, Some(&viewer), "Invalid filter", &e)
        }
    };
    let reason = match reason_of(&viewer, &form) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let matches = match console.engine.bulk_matches(&bulk.filter).await {
        Ok(m) => m,
        Err(e) => return operator_error(&viewer, e.into()),
    };
    if field("expected") != matches.len().to_string() {
        return layout::message(
            StatusCode::CONFLICT,
            Some(&viewer),
            "The matches changed",
            &format!(
                "{} sagas match now, not {} as in the dry run; count again before applying.",
                matches.len(),
                field("expected")
            ),
        );
    }
    let request = OperatorRequest::new(viewer.principal.clone()).reason(reason);
    let mut results = Vec::with_capacity(matches.len());
    for saga in &matches {
        let outcome = if bulk.retry {
            console.engine.retry(saga.id, &request).await.map(|_| None)
        } else {
            console
                .engine
                .restart(saga.id, &request)
                .await
                .map(|s| Some(s.id))
        };
        match outcome {
            Err(OperatorError::Store(e)) => {
                return operator_error(&viewer, OperatorError::Store(e))
            }
            other => results.push((saga.id, other)),
        }
    }
    let applied = results.iter().filter(|(_, r)| r.is_ok()).count();
    let body = html! {
        h1 { "Bulk " (params.action) ": " (applied) " applied, " (results.len() - applied) " refused" }
        div.table-wrap { table.responsive #bulk-results {
            thead { tr { th { "Saga" } th { "Outcome" } } }
            tbody { @for (id, r) in &results { tr {
                td data-label="Saga" { (saga_link(*id)) }
                td data-label="Outcome" { @match r {
                    Ok(Some(new)) => { "restarted as " (saga_link(*new)) }
                    Ok(None) => { "retried" }
                    Err(e) => { "refused: " (e.to_string()) }
                } }
            } } }
        } }
    };
    html_response(
        StatusCode::OK,
        layout::page("Bulk", Some(&viewer), Nav::Bulk, body),
    )
}
