//! Time-driven behaviour on paused tokio time: the engine reads a [`TokioClock`], so an hour of
//! backoff or a `resume_at` an hour away passes as soon as the runtime has nothing else to do,
//! and the test checks the recorded times rather than waiting in real time. (The tests' own
//! deadlines are real time: see `common::within_for`.)

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{EventKind, Format, PauseMode, Plan, PlanStatus, Timestamp};
use cairn_engine::clock::{Clock, TokioClock};
use cairn_engine::executor::{latch, Registry};
use cairn_engine::{Engine, EngineOptions};

use crate::common::{open_engine, wait_event, within};

const HOUR_US: i64 = 3_600_000_000;
const MINUTE_US: i64 = 60_000_000;

async fn engine_on(dir: &tempfile::TempDir, clock: TokioClock) -> Engine {
    let opts = EngineOptions {
        clock: Arc::new(clock),
        ..EngineOptions::default()
    };
    open_engine(dir, Registry::with_builtins(), opts).await
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_out_an_hour_of_backoff_on_the_engines_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TokioClock::starting_at(Timestamp::from_micros(1_700_000_000_000_000));
    let engine = engine_on(&dir, clock).await;
    let real_start = std::time::Instant::now();
    let p = Plan::parse(
        "plan_id: b\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 1}, retry: {max_attempts: 2, backoff_ms: 3600000}}\n",
        Format::Yaml,
    )
    .unwrap();
    engine.register(p, "op").await.unwrap();
    engine.start("b", "op", None).await.unwrap();

    let failed = wait_event(&engine, "b", |e| {
        matches!(e.kind, EventKind::StepFailed { .. })
    })
    .await;
    let EventKind::StepFailed {
        retry_at: Some(retry_at),
        ..
    } = failed.kind
    else {
        panic!("the first failure must schedule a retry: {failed:?}");
    };
    assert_eq!(retry_at - failed.at, HOUR_US, "backoff_ms from the failure");

    let settled = within("the retried plan to complete", engine.wait_settled("b"))
        .await
        .unwrap();
    assert_eq!(settled.status, PlanStatus::Completed);
    let second = wait_event(&engine, "b", |e| {
        matches!(e.kind, EventKind::StepStarted { attempt: 2, .. })
    })
    .await;
    assert!(
        second.at >= retry_at,
        "attempt 2 started at {:?}, before its retry time {retry_at:?}",
        second.at
    );
    assert!(
        second.at - retry_at < MINUTE_US,
        "attempt 2 started at {:?}, long after its retry time {retry_at:?}",
        second.at
    );
    assert!(
        clock.now() - failed.at >= HOUR_US,
        "the engine's clock moved on by the backoff"
    );
    assert!(
        real_start.elapsed() < Duration::from_secs(60),
        "an hour of backoff took {:?} of real time",
        real_start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_with_resume_at_resumes_by_itself_at_that_time_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TokioClock::starting_at(Timestamp::from_micros(1_700_000_000_000_000));
    let engine = engine_on(&dir, clock).await;
    let p = Plan::parse(
        "plan_id: r\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.latch, params: {name: paused-time-resume-at}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n",
        Format::Yaml,
    )
    .unwrap();
    engine.register(p, "op").await.unwrap();
    engine.start("r", "op", None).await.unwrap();
    within(
        "step a to hold on its latch",
        latch::held("paused-time-resume-at"),
    )
    .await;

    // Pause at the boundary while a runs, to resume by itself an hour from the engine's now.
    let resume_at = clock.now() + HOUR_US;
    let paused = engine
        .pause("r", PauseMode::Boundary, Some(resume_at), "op", None)
        .await
        .unwrap();
    assert_eq!(paused.status, PlanStatus::Paused);
    assert_eq!(paused.resume_at, Some(resume_at));
    latch::release("paused-time-resume-at");

    let resumed = wait_event(&engine, "r", |e| {
        matches!(e.kind, EventKind::PlanResumed { .. })
    })
    .await;
    assert!(
        resumed.at >= resume_at,
        "resumed at {:?}, before resume_at {resume_at:?}",
        resumed.at
    );
    assert!(
        resumed.at - resume_at < MINUTE_US,
        "resumed at {:?}, long after resume_at {resume_at:?}",
        resumed.at
    );
    assert!(clock.now() >= resume_at);
    assert_eq!(resumed.actor, cairn_core::decide::SYSTEM_ACTOR);
    let done = within("the resumed plan to complete", engine.wait_settled("r"))
        .await
        .unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    // Step b started only after the resume.
    let b = wait_event(
        &engine,
        "r",
        |e| matches!(&e.kind, EventKind::StepStarted { step_id, .. } if step_id == "b"),
    )
    .await;
    assert!(b.seq > resumed.seq);
}
