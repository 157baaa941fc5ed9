//! The console's SVG charts, drawn on the server: the last hour's activity per minute, and a
//! saga's timeline (one lane per step, attempts, retries, waits and compensations on a time
//! axis, the way Temporal draws an event history).

use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use std::collections::HashMap;
use stepwise_engine::store::MinuteActivity;
use stepwise_engine::{EventKind, SagaDetail};

/// Steps per minute over the last hour, failed and compensated sagas marked.
pub fn activity_chart(activity: &[MinuteActivity], now: DateTime<Utc>) -> Markup {
    const W: f64 = 900.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 40.0;
    const BOTTOM: f64 = 20.0;
    let start = now - Duration::minutes(60);
    let max = activity.iter().map(|m| m.steps).max().unwrap_or(0).max(1) as f64;
    let bar_w = (W - LEFT) / 60.0;
    let total: i64 = activity.iter().map(|m| m.steps).sum();
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label=(format!("Steps per minute over the last hour: {total} steps in total, at most {max} in one minute")) {
            line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) stroke="#767676" {}
            text x="2" y="12" { (max) "/min" }
            text x="2" y=(H - BOTTOM) { "0" }
            text x=(LEFT) y=(H - 4.0) { "−60 min" }
            text x=(W - 30.0) y=(H - 4.0) { "now" }
            @for m in activity {
                @let minutes = (m.minute - start).num_seconds() as f64 / 60.0;
                @if (-1.0..=60.0).contains(&minutes) {
                    @let x = LEFT + minutes.max(0.0) * bar_w;
                    @let h = (m.steps as f64 / max) * (H - BOTTOM - 16.0);
                    g {
                        title { (m.minute.format("%H:%M UTC")) ": " (m.steps) " steps, " (m.completed) " completed, " (m.compensated) " compensated, " (m.failed) " failed" }
                        rect x=(format!("{x:.1}")) y=(format!("{:.1}", H - BOTTOM - h)) width=(format!("{:.1}", bar_w - 1.0)) height=(format!("{h:.1}")) fill="#0b57d0" {}
                        @if m.compensated > 0 {
                            rect x=(format!("{x:.1}")) y=(H - BOTTOM + 2.0) width=(format!("{:.1}", bar_w - 1.0)) height="4" fill="#7a4a00" {}
                        }
                        @if m.failed > 0 {
                            rect x=(format!("{x:.1}")) y=(H - BOTTOM + 7.0) width=(format!("{:.1}", bar_w - 1.0)) height="4" fill="#a50e0e" {}
                        }
                    }
                }
            }
        }
        p.legend { span { i style="background:#0b57d0" {} "steps succeeded" } span { i style="background:#7a4a00" {} "a saga compensated" } span { i style="background:#a50e0e" {} "a saga failed" } }
    }
}

/// What a bar of the timeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bar {
    Attempt,
    Wait,
    Sleep,
    Compensation,
}

#[derive(Debug, Clone)]
struct Segment {
    lane: usize,
    bar: Bar,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    colour: &'static str,
    label: String,
}

#[derive(Debug, Clone)]
struct Mark {
    lane: usize,
    at: DateTime<Utc>,
    colour: &'static str,
    label: String,
}

const OK: &str = "#146c2e";
const BAD: &str = "#a50e0e";
const RUN: &str = "#7a4a00";
const WAIT: &str = "#5b2a86";
const COMP: &str = "#c05600";
const GREY: &str = "#6b6b6b";

/// Segments and marks of a saga's history; lane 0 is the saga itself, lane k+1 step k.
fn layout(saga: &SagaDetail, end: DateTime<Utc>) -> (Vec<Segment>, Vec<Mark>) {
    let lanes: HashMap<&str, usize> = saga
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.position as usize + 1))
        .collect();
    let mut open: HashMap<(usize, Bar), (DateTime<Utc>, String)> = HashMap::new();
    let mut segments = Vec::new();
    let mut marks = Vec::new();
    let mut close = |open: &mut HashMap<(usize, Bar), (DateTime<Utc>, String)>,
                     lane: usize,
                     bar: Bar,
                     at: DateTime<Utc>,
                     colour: &'static str,
                     outcome: &str| {
        if let Some((from, label)) = open.remove(&(lane, bar)) {
            segments.push(Segment {
                lane,
                bar,
                from,
                to: at,
                colour,
                label: format!("{label}: {outcome}"),
            });
        }
    };
    for e in &saga.events {
        let lane = e
            .step
            .as_deref()
            .and_then(|s| lanes.get(s).copied())
            .unwrap_or(0);
        let attempt = e
            .attempt
            .map(|a| format!(" attempt {a}"))
            .unwrap_or_default();
        let step = e.step.clone().unwrap_or_default();
        match e.kind {
            EventKind::StepStarted => {
                open.insert((lane, Bar::Attempt), (e.at, format!("{step}{attempt}")));
            }
            EventKind::StepSucceeded => {
                if open.contains_key(&(lane, Bar::Attempt)) {
                    close(&mut open, lane, Bar::Attempt, e.at, OK, "succeeded");
                } else {
                    marks.push(Mark {
                        lane,
                        at: e.at,
                        colour: OK,
                        label: format!("{step} reused by a fork"),
                    });
                }
            }
            EventKind::StepFailed => close(&mut open, lane, Bar::Attempt, e.at, BAD, "failed"),
            EventKind::RetryScheduled => marks.push(Mark {
                lane,
                at: e.at,
                colour: RUN,
                label: format!("{step}: retry scheduled"),
            }),
            EventKind::AttemptReleased | EventKind::LeaseExpired => {
                close(&mut open, lane, Bar::Attempt, e.at, GREY, e.kind.as_str());
                close(
                    &mut open,
                    lane,
                    Bar::Compensation,
                    e.at,
                    GREY,
                    e.kind.as_str(),
                );
            }
            EventKind::WaitStarted => {
                let event = e
                    .detail
                    .as_ref()
                    .and_then(|d| d["event"].as_str())
                    .unwrap_or("an event");
                open.insert(
                    (lane, Bar::Wait),
                    (e.at, format!("{step} waits for {event}")),
                );
            }
            EventKind::EventReceived => {
                if open.contains_key(&(lane, Bar::Wait)) || lane != 0 {
                    close(&mut open, lane, Bar::Wait, e.at, WAIT, "event received");
                }
                let event = e
                    .detail
                    .as_ref()
                    .and_then(|d| d["event"].as_str())
                    .unwrap_or("event");
                marks.push(Mark {
                    lane,
                    at: e.at,
                    colour: WAIT,
                    label: format!("{event} received from {}", e.actor),
                });
            }
            EventKind::WaitTimedOut => close(&mut open, lane, Bar::Wait, e.at, BAD, "timed out"),
            EventKind::SleepStarted => {
                open.insert((lane, Bar::Sleep), (e.at, format!("{step} sleeps")));
            }
            EventKind::SleepEnded => close(&mut open, lane, Bar::Sleep, e.at, WAIT, "woke"),
            EventKind::CompensationStarted => {
                open.insert(
                    (lane, Bar::Compensation),
                    (e.at, format!("undo {step}{attempt}")),
                );
            }
            EventKind::CompensationSucceeded => close(
                &mut open,
                lane,
                Bar::Compensation,
                e.at,
                COMP,
                "compensated",
            ),
            EventKind::CompensationFailed => {
                close(&mut open, lane, Bar::Compensation, e.at, BAD, "failed")
            }
            EventKind::SagaStarted
            | EventKind::SagaCompleted
            | EventKind::SagaCompensated
            | EventKind::SagaFailed
            | EventKind::CancelRequested
            | EventKind::OperatorRetry
            | EventKind::OperatorRestart
            | EventKind::OperatorFork => {
                let colour = match e.kind {
                    EventKind::SagaCompleted => OK,
                    EventKind::SagaFailed => BAD,
                    EventKind::SagaCompensated => COMP,
                    EventKind::SagaStarted => GREY,
                    _ => WAIT,
                };
                marks.push(Mark {
                    lane: 0,
                    at: e.at,
                    colour,
                    label: format!("{} by {}", e.kind.as_str(), e.actor),
                });
            }
        }
    }
    // Still open: running up to now.
    for ((lane, bar), (from, label)) in open {
        segments.push(Segment {
            lane,
            bar,
            from,
            to: end,
            colour: RUN,
            label: format!("{label}: in progress"),
        });
    }
    (segments, marks)
}

fn offset_label(d: Duration) -> String {
    let ms = d.num_milliseconds();
    if ms < 10_000 {
        format!("+{:.2} s", ms as f64 / 1000.0)
    } else if ms < 600_000 {
        format!("+{:.0} s", ms as f64 / 1000.0)
    } else if ms < 36_000_000 {
        format!("+{:.1} min", ms as f64 / 60_000.0)
    } else {
        format!("+{:.1} h", ms as f64 / 3_600_000.0)
    }
}

/// A saga's timeline.
pub fn saga_timeline(saga: &SagaDetail, now: DateTime<Utc>) -> Markup {
    const LABEL: f64 = 150.0;
    const W: f64 = 900.0;
    const ROW: f64 = 26.0;
    const TOP: f64 = 22.0;
    let start = saga.created_at;
    let last = saga.events.last().map_or(saga.updated_at, |e| e.at);
    let end = if saga.status.is_terminal() {
        last.max(saga.updated_at)
    } else {
        now.max(last)
    };
    let span_ms = (end - start).num_milliseconds().max(1) as f64;
    let x = |at: DateTime<Utc>| {
        LABEL
            + ((at - start).num_milliseconds() as f64 / span_ms).clamp(0.0, 1.0)
                * (W - LABEL - 10.0)
    };
    let (segments, marks) = layout(saga, end);
    let lanes = saga.steps.len() + 1;
    let height = TOP + ROW * lanes as f64 + 6.0;
    let lane_name = |lane: usize| -> String {
        if lane == 0 {
            "saga".to_string()
        } else {
            saga.steps
                .get(lane - 1)
                .map(|s| s.name.clone())
                .unwrap_or_default()
        }
    };
    html! {
        svg.timeline viewBox=(format!("0 0 {W} {height}")) role="img"
            aria-label=(format!("Timeline of the saga: {} steps over {}; the steps table and the history below list the same events", saga.steps.len(), offset_label(end - start))) {
            @for i in 0..=4 {
                @let fx = LABEL + (i as f64 / 4.0) * (W - LABEL - 10.0);
                @let at = start + Duration::milliseconds((span_ms * i as f64 / 4.0) as i64);
                line x1=(format!("{fx:.1}")) y1=(TOP - 4.0) x2=(format!("{fx:.1}")) y2=(height) stroke="#dde0e4" {}
                text x=(format!("{:.1}", (fx - 14.0).max(LABEL))) y="12" { title { (at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) } (if i == 0 { "start".to_string() } else { offset_label(at - start) }) }
            }
            @for lane in 0..lanes {
                @let y = TOP + ROW * lane as f64;
                text x="4" y=(format!("{:.1}", y + 16.0)) { (lane_name(lane)) }
                line x1=(LABEL) y1=(format!("{:.1}", y + ROW)) x2=(W) y2=(format!("{:.1}", y + ROW)) stroke="#eceef1" {}
            }
            @for s in &segments {
                @let y = TOP + ROW * s.lane as f64 + match s.bar { Bar::Compensation => 14.0, _ => 4.0 };
                @let x0 = x(s.from);
                @let w = (x(s.to) - x0).max(2.0);
                rect x=(format!("{x0:.1}")) y=(format!("{y:.1}")) width=(format!("{w:.1}")) height="9" rx="2"
                    fill=(s.colour) opacity=(if s.bar == Bar::Wait || s.bar == Bar::Sleep { "0.55" } else { "1" }) {
                    title { (s.label) " (" (offset_label(s.from - start)) " → " (offset_label(s.to - start)) ")" }
                }
            }
            @for m in &marks {
                @let cx = x(m.at);
                @let cy = TOP + ROW * m.lane as f64 + 13.0;
                circle cx=(format!("{cx:.1}")) cy=(format!("{cy:.1}")) r="4" fill=(m.colour) stroke="#fff" {
                    title { (m.label) " (" (offset_label(m.at - start)) ")" }
                }
            }
        }
        p.legend {
            span { i style=(format!("background:{OK}")) {} "attempt succeeded" }
            span { i style=(format!("background:{BAD}")) {} "failed" }
            span { i style=(format!("background:{RUN}")) {} "in progress / retry" }
            span { i style=(format!("background:{WAIT};opacity:.55")) {} "waiting / sleeping" }
            span { i style=(format!("background:{COMP}")) {} "compensation (lower half)" }
        }
    }
}
