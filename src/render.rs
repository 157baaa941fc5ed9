//! Human-readable output: tables and saga timelines. JSON output bypasses this module.

use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, ContentArrangement, Table};
use serde_json::Value;
use stepwise_engine::{CompensationStatus, SagaDetail, SagaStatus, SagaSummary};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().map(Cell::new));
    t
}

fn millis_between(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let ms = (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

fn short_error(error: &Option<Value>) -> String {
    error
        .as_ref()
        .map(|e| {
            let code = e.get("code").and_then(Value::as_str).unwrap_or("error");
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            format!("{code}: {message}")
        })
        .unwrap_or_default()
}

/// One line per saga.
pub fn saga_list(sagas: &[SagaSummary]) -> String {
    let mut t = table(&["id", "skill", "v", "status", "key", "created", "updated"]);
    for s in sagas {
        t.add_row(vec![
            s.id.to_string(),
            s.skill.clone(),
            s.skill_version.to_string(),
            s.status.to_string(),
            s.idempotency_key.clone().unwrap_or_default(),
            s.created_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            s.updated_at.format("%H:%M:%S%.3f").to_string(),
        ]);
    }
    t.to_string()
}

/// `pending 2 · running 1 · completed 10`
pub fn status_counts(counts: &[(SagaStatus, i64)]) -> String {
    SagaStatus::all()
        .iter()
        .filter_map(|status| {
            counts
                .iter()
                .find(|(s, _)| s == status)
                .map(|(_, n)| format!("{status} {n}"))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A one-line account of a saga for `start` and the operator commands.
pub fn summary_line(s: &SagaSummary) -> String {
    format!(
        "saga {} ({} v{}) is {}{}",
        s.id,
        s.skill,
        s.skill_version,
        s.status,
        s.idempotency_key
            .as_ref()
            .map(|k| format!(", idempotency key {k:?}"))
            .unwrap_or_default()
    )
}

/// An event's detail as `key: value` pairs, nulls left out.
fn event_detail(detail: &Value) -> String {
    match detail.as_object() {
        Some(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => detail.to_string(),
    }
}

/// The readable timeline of `sagas show`: header, steps, history.
pub fn timeline(saga: &SagaDetail) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Saga {}  {} v{}  {}\n",
        saga.id,
        saga.skill,
        saga.skill_version,
        saga.status.to_string().to_uppercase()
    ));
    out.push_str(&format!(
        "  started by {} at {}{}{}\n",
        saga.started_by,
        saga.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        saga.idempotency_key
            .as_ref()
            .map(|k| format!(", idempotency key {k:?}"))
            .unwrap_or_default(),
        saga.replay_of
            .map(|r| format!(", replay of {r}"))
            .unwrap_or_default(),
    ));
    if let Some(error) = &saga.error {
        let step = error
            .get("step")
            .and_then(Value::as_str)
            .map(|s| format!(" at {s}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  error{step}: {}\n",
            short_error(&Some(error.clone()))
        ));
    }
    if let Some(at) = saga.cancel_requested_at {
        out.push_str(&format!(
            "  cancel requested at {}\n",
            at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        ));
    }
    if let Some(owner) = &saga.lease_owner {
        out.push_str(&format!("  held by {owner}\n"));
    }
    if let Some(waiting) = &saga.waiting_for {
        let until = waiting["until"].as_str().unwrap_or("?");
        match waiting["event"].as_str() {
            Some(event) => out.push_str(&format!(
                "  waiting for event `{event}` until {until}{}; `stepwise sagas send {} {event} --data JSON` delivers it\n",
                waiting["prompt"]
                    .as_str()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                saga.id
            )),
            None => out.push_str(&format!("  sleeping until {until}\n")),
        }
    }
    let replays: Vec<String> = saga
        .events
        .iter()
        .filter_map(|e| {
            let d = e.detail.as_ref()?;
            let (how, id) = match (d.get("restarted_as"), d.get("forked_as")) {
                (Some(id), _) => ("restarted as", id),
                (_, Some(id)) => ("forked as", id),
                _ => return None,
            };
            Some(format!(
                "{how} {} by {}",
                id.as_str().unwrap_or("?"),
                e.actor
            ))
        })
        .collect();
    for replay in &replays {
        out.push_str(&format!("  {replay}\n"));
    }
    match saga.status {
        SagaStatus::Failed => out.push_str(&format!(
            "  needs an operator: a compensation exhausted its attempts; once its cause is fixed, \
             `stepwise sagas retry {}` resumes the compensation\n",
            saga.id
        )),
        SagaStatus::Compensated if replays.is_empty() => out.push_str(&format!(
            "  undone; `stepwise sagas restart {}` runs it again as a new saga\n",
            saga.id
        )),
        _ => {}
    }

    let mut steps = table(&[
        "#",
        "step",
        "status",
        "attempts",
        "took",
        "error",
        "compensation",
    ]);
    for s in &saga.steps {
        let reused_from = saga.events.iter().find_map(|e| {
            (e.step.as_deref() == Some(s.name.as_str()))
                .then(|| e.detail.as_ref()?.get("reused_from")?.as_str())
                .flatten()
        });
        let took = match (reused_from, s.started_at, s.finished_at) {
            (Some(from), _, _) => format!("reused from {}", &from[..from.len().min(8)]),
            (None, Some(a), Some(b)) => millis_between(a, b),
            _ => String::new(),
        };
        let compensation = match s.compensation.status {
            CompensationStatus::NotNeeded => "-".to_string(),
            status => {
                let mut text = format!("{status} ({} attempts", s.compensation.attempts);
                if let (Some(a), Some(b)) = (s.compensation.started_at, s.compensation.finished_at)
                {
                    text.push_str(&format!(", {}", millis_between(a, b)));
                }
                text.push(')');
                if s.compensation.error.is_some() {
                    text.push_str(&format!("; {}", short_error(&s.compensation.error)));
                }
                text
            }
        };
        steps.add_row(vec![
            (s.position + 1).to_string(),
            s.name.clone(),
            if s.possibly_done {
                // README, "States": an attempt's outcome was unknown, so it is undone too.
                format!("{} (possibly done)", s.status)
            } else {
                s.status.to_string()
            },
            s.attempts.to_string(),
            took,
            short_error(&s.error),
            compensation,
        ]);
    }
    out.push_str(&steps.to_string());
    out.push('\n');

    let mut events = table(&[
        "seq", "+time", "event", "step", "attempt", "actor", "detail",
    ]);
    for e in &saga.events {
        let detail = e
            .detail
            .as_ref()
            .map(|d| match d.get("code").and_then(Value::as_str) {
                Some(code) => format!(
                    "{code}: {}",
                    d.get("message").and_then(Value::as_str).unwrap_or("")
                ),
                None => event_detail(d),
            })
            .unwrap_or_default();
        events.add_row(vec![
            e.seq.to_string(),
            millis_between(saga.created_at, e.at),
            e.kind.to_string(),
            e.step.clone().unwrap_or_default(),
            e.attempt.map(|a| a.to_string()).unwrap_or_default(),
            e.actor.clone(),
            detail,
        ]);
    }
    out.push_str(&events.to_string());
    out.push('\n');
    out
}
