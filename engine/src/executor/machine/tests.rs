//! Every transition of the machine, without a database.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::model::EventKind;
use crate::retry::Jitter;
use crate::skill::{SkillInput, Step};
use chrono::TimeZone;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

#[derive(Deserialize, JsonSchema)]
struct Empty {}
impl SkillInput for Empty {}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_delay: Duration::from_millis(100),
        multiplier: 2.0,
        max_delay: Duration::from_secs(10),
        jitter: Jitter::None,
    }
}

/// Four steps: `a`, `c` and `d` have compensations, `b` has none. Actions get three
/// attempts, compensations two.
fn skill() -> Arc<Skill> {
    let step = |name: &'static str, compensable: bool| {
        let step = Step::new(name, |_| async { Ok::<_, StepError>(()) })
            .retry(policy(3))
            .compensation_retry(policy(2));
        if compensable {
            step.compensate(|_, _| async { Ok::<_, StepError>(()) })
        } else {
            step
        }
    };
    Arc::new(
        Skill::builder::<Empty>("trip", 1, "A test skill.")
            .step(step("a", true))
            .step(step("b", false))
            .step(step("c", true))
            .step(step("d", true))
            .build()
            .unwrap(),
    )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap()
}

fn facts() -> Facts {
    Facts {
        now: t0(),
        jitter: 0.5,
        lease_duration: Duration::from_secs(30),
        stopping: false,
    }
}

fn claimed() -> ClaimedSaga {
    let steps = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(position, name)| StepState::untouched(position as i32, name.to_string()))
        .collect();
    ClaimedSaga {
        lease: Lease {
            saga_id: Uuid::nil(),
            token: 1,
            worker: Arc::from("worker:test"),
            expires_at: t0() + chrono::Duration::seconds(30),
        },
        skill: "trip".to_string(),
        skill_version: 1,
        status: SagaStatus::Pending,
        input: json!({}),
        cursor: 0,
        cancel_requested: false,
        expired_owner: None,
        begun: false,
        resumed: false,
        in_flight: None,
        steps,
    }
}

/// An attempt in flight as a claim or a commit records it.
fn attempt(leg: Leg, position: usize, number: i32) -> Attempt {
    Attempt {
        leg,
        position,
        number,
        started_at: t0(),
        seq: 100 + number as i64,
    }
}

/// What the store answers for a committed transition, `began` telling whether its begin (if
/// any) was applied.
fn answer(t: &Transition, cancel_requested: bool, began: bool) -> Committed {
    let begun = t
        .begins()
        .filter(|_| began)
        .map(|(position, compensation, attempt, _)| InFlight {
            position,
            compensation,
            attempt,
            started_at: t0(),
            seq: 100 + attempt as i64,
        });
    Committed {
        cancel_requested,
        began_next: t.then_begin.is_some() && began,
        begun,
    }
}

fn fresh() -> Run {
    Run::new(claimed(), skill())
}

/// What the store does with a transition when no cancel came: it applies all of it.
fn commit(run: &mut Run, t: &Transition) {
    run.apply(t, &answer(t, false, true));
}

/// A run whose steps before `position` succeeded and whose step at `position` is in
/// flight with attempt `attempt`.
fn at(position: usize, attempt: i32) -> Run {
    let mut run = fresh();
    for p in 0..position {
        let s = &mut run.steps[p];
        s.status = StepStatus::Succeeded;
        s.attempts = 1;
        s.output = Some(as_json_text(&json!(format!("out-{}", s.name))));
    }
    run.cursor = position;
    run.status = SagaStatus::Running;
    let s = &mut run.steps[position];
    s.status = StepStatus::Running;
    s.attempts = attempt;
    run.in_flight = Some(self::attempt(Leg::Action, position, attempt));
    run
}

/// The run's compensation of step `position` in flight with attempt `attempt`, every step
/// up to `last` succeeded and those with a compensation waiting for it.
fn compensating(last: usize, position: usize, attempt: i32) -> Run {
    let mut run = fresh();
    let skill = run.skill.clone();
    for p in 0..=last {
        let s = &mut run.steps[p];
        s.status = StepStatus::Succeeded;
        s.attempts = 1;
        s.output = Some(as_json_text(&json!(p)));
        if skill.steps()[p].is_compensable() {
            s.compensation_status = CompensationStatus::Pending;
        }
    }
    run.status = SagaStatus::Compensating;
    run.cursor = last + 1;
    let s = &mut run.steps[position];
    s.compensation_status = CompensationStatus::Running;
    s.compensation_attempts = attempt;
    run.in_flight = Some(self::attempt(Leg::Compensation, position, attempt));
    run
}

/// Step changes in short form.
fn changes(t: &Transition) -> Vec<String> {
    t.steps
        .iter()
        .map(|c| match c {
            StepChange::Begin { position, .. } => format!("begin {position}"),
            StepChange::Succeeded { attempt, .. } => format!("succeeded {}", attempt.position),
            StepChange::Failed { position, last, .. } => {
                format!("failed {position}{}", if *last { " last" } else { "" })
            }
            StepChange::PossiblyDone { position } => format!("possibly_done {position}"),
            StepChange::CompensationPending { positions } => {
                format!("compensation_pending {positions:?}")
            }
            StepChange::CompensationBegin { position, .. } => {
                format!("compensation_begin {position}")
            }
            StepChange::CompensationSucceeded { attempt, .. } => {
                format!("compensation_succeeded {}", attempt.position)
            }
            StepChange::CompensationFailed { position, last, .. } => format!(
                "compensation_failed {position}{}",
                if *last { " last" } else { "" }
            ),
            StepChange::SkipUnreached => "skip_unreached".to_string(),
            StepChange::WaitDeadlines { position, .. } => format!("wait_deadlines {position}"),
            StepChange::ConsumeDeliveries { position, ids, .. } => {
                format!("consume {position} {ids:?}")
            }
            StepChange::ReleaseAttempt => "release".to_string(),
            StepChange::AbandonAttempt => "abandon".to_string(),
        })
        .collect()
}

/// History rows in short form (kind, step, attempt).
fn events(t: &Transition) -> Vec<String> {
    t.events
        .iter()
        .map(|e| match (&e.step, e.attempt) {
            (Some(step), Some(attempt)) => format!("{} {step} {attempt}", e.kind.as_str()),
            _ => e.kind.as_str().to_string(),
        })
        .collect()
}

fn detail(t: &Transition, kind: EventKind) -> &Value {
    t.events
        .iter()
        .find(|e| e.kind == kind)
        .and_then(|e| e.detail.as_ref())
        .unwrap()
}

fn next_commit(run: &Run) -> Transition {
    match run.next(&facts()) {
        Next::Commit(t) => t,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn next_begin(run: &Run) -> Transition {
    match run.next(&facts()) {
        Next::Begin(t) => t,
        other => panic!("expected a begin, got {other:?}"),
    }
}

fn succeeded(output: Value) -> Outcome {
    Outcome::Succeeded {
        output,
        taken: Vec::new(),
        events: Vec::new(),
    }
}

fn failed(error: StepError) -> Outcome {
    Outcome::Failed {
        error,
        events: Vec::new(),
    }
}

#[test]
fn the_first_attempt_begins() {
    let mut run = fresh();
    let t = next_begin(&run);
    assert_eq!(t.status, Some(SagaStatus::Running));
    assert_eq!(changes(&t), ["begin 0"]);
    assert!(
        t.events.is_empty(),
        "a start is recorded on the saga row, not in the history"
    );
    assert_eq!(t.wake, WakeChange::Keep);
    assert!(!t.release_lease);
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Running);
    assert_eq!(run.steps[0].status, StepStatus::Running);
    assert_eq!(run.steps[0].attempts, 1);
    let attempt = attempt(Leg::Action, 0, 1);
    assert_eq!(run.in_flight, Some(attempt));
    assert!(matches!(run.next(&facts()), Next::Run(a) if a == attempt));
    assert!(run.held);
}

#[test]
fn a_claim_that_began_the_attempt_runs_it_and_a_woken_saga_goes_on_with_its_attempt() {
    let mut claim = claimed();
    claim.begun = true;
    claim.status = SagaStatus::Running;
    claim.steps[0].status = StepStatus::Running;
    claim.steps[0].attempts = 1;
    claim.in_flight = Some(attempt(Leg::Action, 0, 1).recorded());
    let run = Run::new(claim.clone(), skill());
    assert!(matches!(run.next(&facts()), Next::Run(a) if a.position == 0 && a.number == 1));

    claim.begun = false;
    claim.resumed = true;
    claim.status = SagaStatus::Waiting;
    let run = Run::new(claim, skill());
    assert_eq!(
        run.in_flight.map(|a| (a.leg, a.position, a.number)),
        Some((Leg::Action, 0, 1))
    );
}

#[test]
fn a_success_starts_the_next_step_in_the_same_commit() {
    let mut run = at(0, 1);
    let t = decide(&run, succeeded(json!({"id": 7})), &facts());
    assert_eq!(t.cursor, Some(1));
    assert_eq!(changes(&t), ["succeeded 0"]);
    assert!(t.events.is_empty(), "the step's row keeps its success");
    assert_eq!(t.then_begin, Some((1, 1)));
    assert_eq!(t.status, None);
    assert_eq!(
        t.wake,
        WakeChange::Keep,
        "the lease has more than half left"
    );
    assert!(!t.release_lease);
    commit(&mut run, &t);
    assert_eq!(run.cursor, 1);
    assert_eq!(run.steps[0].status, StepStatus::Succeeded);
    assert_eq!(
        run.steps[0].output.as_deref().and_then(output_value),
        Some(json!({"id": 7}))
    );
    assert_eq!(run.steps[1].status, StepStatus::Running);
    assert_eq!(run.steps[1].attempts, 1);
    assert_eq!(run.in_flight.map(|a| (a.position, a.number)), Some((1, 1)));
    assert!(run.held);
}

#[test]
fn a_cancel_seen_by_the_success_commit_stops_the_next_start_and_compensates() {
    let mut run = at(0, 1);
    let t = decide(&run, succeeded(json!(1)), &facts());
    run.apply(&t, &answer(&t, true, false));
    assert_eq!(run.steps[1].status, StepStatus::Pending);
    assert_eq!(run.in_flight, None);
    assert!(run.cancel_requested);
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Compensating));
    assert_eq!(changes(&t), ["compensation_pending [0]"]);
    assert_eq!(t.error.as_ref().unwrap()["code"], "cancelled");
}

#[test]
fn the_last_step_completes_the_saga() {
    let mut run = at(3, 1);
    let t = decide(&run, succeeded(json!("out-d")), &facts());
    assert_eq!(t.status, Some(SagaStatus::Completed));
    assert_eq!(t.wake, WakeChange::Clear);
    assert!(t.release_lease);
    assert!(t.then_begin.is_none());
    assert_eq!(changes(&t), ["succeeded 3"]);
    assert_eq!(events(&t), ["saga_completed"]);
    assert_eq!(
        t.output,
        Some(json!({"a": "out-a", "b": "out-b", "c": "out-c", "d": "out-d"}))
    );
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Completed);
    assert!(!run.held);
    assert_eq!(run.in_flight, None);
    assert!(matches!(run.next(&facts()), Next::Stop));
}

#[test]
fn a_fork_that_reused_every_step_completes() {
    let mut run = fresh();
    for s in &mut run.steps {
        s.status = StepStatus::Succeeded;
        s.output = Some(as_json_text(&json!(s.position)));
    }
    run.cursor = 4;
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Completed));
    assert!(t.release_lease);
    assert!(t.steps.is_empty());
    assert_eq!(events(&t), ["saga_completed"]);
    assert_eq!(t.output, Some(json!({"a": 0, "b": 1, "c": 2, "d": 3})));
}

#[test]
fn a_retryable_failure_schedules_a_durable_retry() {
    let mut run = at(1, 2);
    let error = StepError::retryable("busy", "try later");
    let t = decide(&run, failed(error), &facts());
    // Attempt 2 of the round failed: 100 ms * 2^(2-1), no jitter.
    let retry_at = t0() + chrono::Duration::milliseconds(200);
    assert_eq!(t.status, Some(SagaStatus::Pending));
    assert_eq!(t.wake, WakeChange::Set(retry_at));
    assert!(
        t.release_lease,
        "the lease is given up until the retry is due"
    );
    assert_eq!(changes(&t), ["failed 1"]);
    assert_eq!(events(&t), ["step_failed b 2", "retry_scheduled b 2"]);
    assert_eq!(detail(&t, EventKind::StepFailed)["code"], "busy");
    assert_eq!(detail(&t, EventKind::RetryScheduled)["delay_ms"], 200);
    assert_eq!(detail(&t, EventKind::RetryScheduled)["at"], json!(retry_at));
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Pending);
    assert_eq!(run.steps[1].status, StepStatus::Pending);
    assert_eq!(run.steps[1].attempts, 2);
    assert_eq!(run.in_flight, None);
    assert!(!run.held);
}

#[test]
fn a_retry_after_hint_sets_the_retry_time() {
    let run = at(0, 1);
    let error =
        StepError::retryable("rate_limited", "slow down").with_retry_after(Duration::from_secs(5));
    let t = decide(&run, failed(error), &facts());
    // 5 s plus 10% of 5 s times the jitter sample 0.5.
    assert_eq!(
        t.wake,
        WakeChange::Set(t0() + chrono::Duration::milliseconds(5250))
    );
}

#[test]
fn an_exhausted_failure_starts_compensation_in_reverse_with_possibly_done_steps() {
    let mut run = at(3, 3);
    // Step c never succeeded for sure: an attempt of it ended with an unknown outcome.
    run.steps[2].status = StepStatus::Failed;
    run.steps[2].possibly_done = true;
    let t = decide(
        &run,
        failed(StepError::retryable("busy", "still")),
        &facts(),
    );
    assert_eq!(t.status, Some(SagaStatus::Compensating));
    assert_eq!(t.wake, WakeChange::Keep);
    assert!(!t.release_lease, "the same worker goes on compensating");
    // b has no compensation; d failed for sure and is not undone.
    assert_eq!(
        changes(&t),
        ["failed 3 last", "compensation_pending [0, 2]"]
    );
    assert_eq!(events(&t), ["step_failed d 3"]);
    let error = t.error.as_ref().unwrap();
    assert_eq!(
        (error["code"].as_str(), error["step"].as_str()),
        (Some("busy"), Some("d"))
    );
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Compensating);
    assert_eq!(run.steps[3].status, StepStatus::Failed);
    assert_eq!(run.in_flight, None);
    // The highest position is undone first.
    let mut order = Vec::new();
    for _ in 0..2 {
        let t = next_begin(&run);
        commit(&mut run, &t);
        let attempt = run.in_flight.unwrap();
        order.push(attempt.position);
        if attempt.position == 2 {
            let ctx = run.context(attempt, t0(), None);
            assert!(
                ctx.possibly_done,
                "undoing a step that may have taken effect"
            );
        }
        let t = decide(&run, succeeded(json!(null)), &facts());
        commit(&mut run, &t);
    }
    assert_eq!(order, [2, 0]);
}

#[test]
fn a_permanent_failure_gives_up_at_once() {
    let run = at(1, 1);
    let t = decide(
        &run,
        failed(StepError::permanent("declined", "no")),
        &facts(),
    );
    assert_eq!(t.status, Some(SagaStatus::Compensating));
    assert_eq!(changes(&t), ["failed 1 last", "compensation_pending [0]"]);
    assert!(detail(&t, EventKind::StepFailed)
        .get("possibly_done")
        .is_none());
}

#[test]
fn an_unknown_outcome_marks_the_step_possibly_done() {
    let mut run = at(1, 1);
    let t = decide(
        &run,
        failed(StepError::unknown("timeout", "cut off")),
        &facts(),
    );
    assert_eq!(changes(&t), ["possibly_done 1", "failed 1"]);
    assert!(t.release_lease, "an unknown outcome is retried");
    commit(&mut run, &t);
    assert!(run.steps[1].possibly_done);

    // Its last attempt gives up: compensated too, though b has no compensation here.
    let mut run = at(2, 3);
    let t = decide(
        &run,
        failed(StepError::unknown("timeout", "cut off")),
        &facts(),
    );
    assert_eq!(
        changes(&t),
        [
            "possibly_done 2",
            "failed 2 last",
            "compensation_pending [0, 2]"
        ]
    );
    assert_eq!(detail(&t, EventKind::StepFailed)["possibly_done"], true);
    commit(&mut run, &t);
    assert_eq!(
        run.steps[2].compensation_status,
        CompensationStatus::Pending
    );
}

#[test]
fn an_interrupted_last_attempt_gives_up() {
    // The worker running attempt 3 of 3 died; the next claim finds it running, not begun.
    let mut claim = claimed();
    claim.status = SagaStatus::Running;
    claim.cursor = 1;
    claim.steps[0].status = StepStatus::Succeeded;
    claim.steps[0].attempts = 1;
    claim.steps[1].status = StepStatus::Running;
    claim.steps[1].attempts = 3;
    let run = Run::new(claim, skill());
    assert_eq!(run.in_flight, None);
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Compensating));
    // b has no compensation: only a is undone.
    assert_eq!(
        changes(&t),
        [
            "possibly_done 1",
            "failed 1 last",
            "compensation_pending [0]"
        ]
    );
    let failed = detail(&t, EventKind::StepFailed);
    assert_eq!(failed["code"], "attempt_interrupted");
    assert_eq!(
        (
            failed["interrupted"].clone(),
            failed["possibly_done"].clone()
        ),
        (json!(true), json!(true))
    );

    // With attempts left, the next attempt begins instead.
    let mut run = run;
    run.steps[1].attempts = 2;
    let t = next_begin(&run);
    assert_eq!(changes(&t), ["begin 1"]);
    assert!(matches!(t.steps[0], StepChange::Begin { attempt: 3, .. }));
}

#[test]
fn a_cancel_request_turns_to_compensation() {
    let mut run = at(2, 1);
    run.in_flight = None;
    run.steps[2].status = StepStatus::Pending;
    run.steps[2].attempts = 0;
    run.cancel_requested = true;
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Compensating));
    assert_eq!(changes(&t), ["compensation_pending [0]"]);
    assert!(t.events.is_empty());
    assert!(!t.release_lease);
}

#[test]
fn a_compensation_success_moves_down_and_nothing_left_means_compensated() {
    let mut run = compensating(2, 2, 1);
    let t = decide(&run, succeeded(json!("undone")), &facts());
    assert_eq!(changes(&t), ["compensation_succeeded 2"]);
    assert!(
        t.events.is_empty(),
        "the step's row keeps its compensation's success"
    );
    assert!(!t.release_lease);
    commit(&mut run, &t);
    assert_eq!(
        run.steps[2].compensation_status,
        CompensationStatus::Compensated
    );
    assert_eq!(run.in_flight, None);

    let t = next_begin(&run);
    assert_eq!(changes(&t), ["compensation_begin 0"]);
    assert!(t.events.is_empty());
    assert_eq!(t.status, None);
    commit(&mut run, &t);
    let t = decide(&run, succeeded(json!("undone")), &facts());
    commit(&mut run, &t);

    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Compensated));
    assert_eq!(t.wake, WakeChange::Clear);
    assert!(t.release_lease);
    assert_eq!(changes(&t), ["skip_unreached"]);
    assert_eq!(events(&t), ["saga_compensated"]);
    commit(&mut run, &t);
    assert_eq!(run.steps[3].status, StepStatus::Skipped);
    assert!(!run.held);
}

#[test]
fn nothing_to_undo_ends_compensated() {
    let mut run = fresh();
    run.cancel_requested = true;
    let t = next_commit(&run);
    assert_eq!(changes(&t), ["compensation_pending []"]);
    commit(&mut run, &t);
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Compensated));
    commit(&mut run, &t);
    assert!(run.steps.iter().all(|s| s.status == StepStatus::Skipped));
}

#[test]
fn a_failed_compensation_is_retried_then_the_saga_fails() {
    let mut run = compensating(2, 2, 1);
    let t = decide(
        &run,
        failed(StepError::retryable("busy", "later")),
        &facts(),
    );
    assert_eq!(t.status, None, "the saga stays compensating");
    assert_eq!(
        t.wake,
        WakeChange::Set(t0() + chrono::Duration::milliseconds(100))
    );
    assert!(t.release_lease);
    assert_eq!(changes(&t), ["compensation_failed 2"]);
    assert_eq!(
        events(&t),
        ["compensation_failed c 1", "retry_scheduled c 1"]
    );
    assert_eq!(detail(&t, EventKind::RetryScheduled)["compensation"], true);
    commit(&mut run, &t);
    assert_eq!(
        run.steps[2].compensation_status,
        CompensationStatus::Pending
    );
    assert_eq!(run.in_flight, None);

    // The second and last allowed attempt fails too.
    let mut run = compensating(2, 2, 2);
    let t = decide(
        &run,
        failed(StepError::retryable("busy", "later")),
        &facts(),
    );
    assert_eq!(t.status, Some(SagaStatus::Failed));
    assert_eq!(t.wake, WakeChange::Clear);
    assert!(t.release_lease);
    assert_eq!(
        changes(&t),
        ["compensation_failed 2 last", "skip_unreached"]
    );
    assert_eq!(events(&t), ["compensation_failed c 2", "saga_failed"]);
    assert_eq!(t.error.as_ref().unwrap()["code"], "compensation_failed");
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Failed);
    assert_eq!(run.steps[2].compensation_status, CompensationStatus::Failed);
    assert!(!run.held);

    // A permanent failure of a compensation gives up at once.
    let run = compensating(2, 2, 1);
    let t = decide(&run, failed(StepError::permanent("gone", "no")), &facts());
    assert_eq!(t.status, Some(SagaStatus::Failed));
}

#[test]
fn an_interrupted_last_compensation_attempt_gives_up() {
    let mut run = compensating(2, 2, 2);
    run.in_flight = None;
    let t = next_commit(&run);
    assert_eq!(t.status, Some(SagaStatus::Failed));
    assert_eq!(
        detail(&t, EventKind::CompensationFailed)["code"],
        "attempt_interrupted"
    );
    // With attempts left, a new one begins, renewing a lease with less than half left.
    run.steps[2].compensation_attempts = 1;
    run.lease.expires_at = t0() + chrono::Duration::seconds(10);
    let t = next_begin(&run);
    assert!(matches!(
        t.steps[0],
        StepChange::CompensationBegin {
            position: 2,
            attempt: 2
        }
    ));
    assert_eq!(
        t.wake,
        WakeChange::Set(t0() + chrono::Duration::seconds(30))
    );
}

#[test]
fn a_step_suspends_on_a_wait() {
    let mut run = at(1, 1);
    let deadline = t0() + chrono::Duration::hours(1);
    let outcome = Outcome::Suspended {
        suspension: Suspension {
            wake_at: deadline,
            waiting_for: json!({"event": "approved"}),
            event: NewEvent::step(EventKind::WaitStarted, "b", 1),
            event_name: Some("approved".to_string()),
        },
        deadlines: json!({"approved#1": deadline}),
        taken: vec![4],
        events: Vec::new(),
    };
    let t = decide(&run, outcome, &facts());
    assert_eq!(t.status, Some(SagaStatus::Waiting));
    assert_eq!(t.wake, WakeChange::Set(deadline));
    assert!(t.release_lease);
    assert_eq!(t.waiting_for, Some(json!({"event": "approved"})));
    assert_eq!(t.waiting_taken, [4]);
    assert_eq!(changes(&t), ["wait_deadlines 1"]);
    assert_eq!(events(&t), ["wait_started b 1"]);
    commit(&mut run, &t);
    assert_eq!(run.status, SagaStatus::Waiting);
    assert_eq!(
        run.steps[1].wait_deadlines.get("approved#1"),
        Some(&deadline)
    );
    assert!(
        run.in_flight.is_some(),
        "the attempt goes on when the saga is woken"
    );
    assert!(!run.held);
}

#[test]
fn a_success_after_a_wait_consumes_its_deliveries() {
    let run = at(1, 1);
    let outcome = Outcome::Succeeded {
        output: json!(1),
        taken: vec![4, 5],
        events: vec![NewEvent::step(EventKind::WaitTimedOut, "b", 1)],
    };
    let t = decide(&run, outcome, &facts());
    assert_eq!(changes(&t), ["consume 1 [4, 5]", "succeeded 1"]);
    assert_eq!(events(&t), ["wait_timed_out b 1"]);
}

#[test]
fn a_graceful_release_gives_the_attempt_back() {
    let mut run = at(1, 2);
    let t = run.release("not_run", t0());
    assert_eq!(t.status, Some(SagaStatus::Pending));
    assert_eq!(t.wake, WakeChange::Set(t0()));
    assert!(t.release_lease);
    assert_eq!(changes(&t), ["release"]);
    assert_eq!(events(&t), ["attempt_released b 2"]);
    assert_eq!(
        detail(&t, EventKind::AttemptReleased),
        &json!({"reason": "not_run", "compensation": false})
    );
    commit(&mut run, &t);
    assert_eq!(run.steps[1].status, StepStatus::Pending);
    assert_eq!(run.steps[1].attempts, 1, "the attempt is not counted");
    assert_eq!(run.in_flight, None);
    assert!(!run.held);

    // A compensation cut short by the end of the grace period is given back the same way.
    let mut run = compensating(2, 2, 1);
    let t = decide(&run, Outcome::Interrupted, &facts());
    assert_eq!(t.status, None);
    assert_eq!(changes(&t), ["release"]);
    assert_eq!(
        detail(&t, EventKind::AttemptReleased),
        &json!({"reason": "interrupted", "compensation": true})
    );
    commit(&mut run, &t);
    assert_eq!(
        run.steps[2].compensation_status,
        CompensationStatus::Pending
    );
    assert_eq!(run.steps[2].compensation_attempts, 0);

    // With nothing in flight, only the lease is given back.
    let t = fresh().release("not_run", t0());
    assert!(t.steps.is_empty() && t.events.is_empty() && t.status.is_none());
    assert!(t.release_lease);
}

#[test]
fn a_stopping_worker_gives_the_saga_back_with_the_success_instead_of_starting_the_next_step() {
    let mut run = at(0, 1);
    let stopping = Facts {
        stopping: true,
        ..facts()
    };
    let t = decide(&run, succeeded(json!(1)), &stopping);
    assert!(t.then_begin.is_none());
    assert_eq!(t.wake, WakeChange::Set(t0()));
    assert!(t.release_lease);
    commit(&mut run, &t);
    assert_eq!(run.cursor, 1);
    assert_eq!(run.steps[1].status, StepStatus::Pending);
}

#[test]
fn the_lease_is_renewed_when_less_than_half_is_left() {
    let mut run = at(0, 1);
    run.lease.expires_at = t0() + chrono::Duration::seconds(14);
    let t = decide(&run, succeeded(json!(1)), &facts());
    let renewed = t0() + chrono::Duration::seconds(30);
    assert_eq!(t.wake, WakeChange::Set(renewed));
    assert!(!t.release_lease);
    commit(&mut run, &t);
    assert_eq!(run.lease.expires_at, renewed);
    assert!(run.held);

    run.lease.expires_at = t0() + chrono::Duration::seconds(16);
    let t = decide(&run, succeeded(json!(1)), &facts());
    assert_eq!(t.wake, WakeChange::Keep);
}

#[test]
fn the_attempt_number_and_keys_reach_the_step() {
    let run = compensating(2, 0, 1);
    let ctx = run.context(run.in_flight.unwrap(), t0(), None);
    assert_eq!(ctx.attempt, 1);
    assert_eq!(ctx.idempotency_key, format!("{}/a/compensate", Uuid::nil()));
    assert!(!ctx.possibly_done);
    assert_eq!(ctx.outputs.len(), 3);
}
