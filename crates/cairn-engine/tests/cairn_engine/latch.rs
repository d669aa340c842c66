//! `builtin.latch`: a step held open until the test releases it, in process or by a file in its
//! directory (`CAIRN_LATCH_DIR` for the binary; here a directory given to the executor, since
//! changing this process's environment would race with the other tests).

use cairn_core::{EventKind, Format, PauseMode, Plan, PlanStatus, StepStatus};
use cairn_engine::executor::{latch, Executor, Registry, StopSignal, Task};
use cairn_engine::{Engine, EngineOptions};
use serde_json::{json, Value};

use crate::common::{open_engine, settled, wait_event, within};

async fn engine(dir: &tempfile::TempDir) -> Engine {
    open_engine(dir, Registry::with_builtins(), EngineOptions::default()).await
}

fn task(params: Value) -> Task {
    Task {
        plan_id: "p".into(),
        step_id: "s".into(),
        kind: cairn_core::AttemptKind::Step,
        action: "hold".into(),
        agent_type: "builtin.latch".into(),
        params,
        attempt: 1,
        run: 1,
        idempotency_key: "p/s/1".into(),
        timeout_ms: None,
        query: String::new(),
        gate_feedback: None,
    }
}

#[tokio::test]
async fn a_latched_step_runs_until_released_and_then_completes_with_its_params() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = Plan::parse(
        "plan_id: l1\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.latch, params: {name: latch-l1, v: 7}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n",
        Format::Yaml,
    )
    .unwrap();
    engine.register(p, "op").await.unwrap();
    engine.start("l1", "op", None).await.unwrap();
    within("step a to hold on latch-l1", latch::held("latch-l1")).await;
    let state = engine.state("l1").await.unwrap();
    assert_eq!(state.status, PlanStatus::Running);
    assert_eq!(state.step("a").unwrap().rec.status, StepStatus::Running);
    assert_eq!(state.step("b").unwrap().rec.status, StepStatus::Pending);
    assert_eq!(latch::holders("latch-l1"), 1);

    latch::release("latch-l1");
    let done = settled(&engine, "l1").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(
        done.step("a").unwrap().rec.output,
        Some(json!({"name": "latch-l1", "v": 7}))
    );
    assert_eq!(latch::holders("latch-l1"), 0, "the attempt let go");
}

#[tokio::test]
async fn an_immediate_pause_stops_a_latched_step_and_it_holds_again_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = Plan::parse(
        "plan_id: l2\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.latch, params: {name: latch-l2}}\n",
        Format::Yaml,
    )
    .unwrap();
    engine.register(p, "op").await.unwrap();
    engine.start("l2", "op", None).await.unwrap();
    within("step a to hold on latch-l2", latch::held("latch-l2")).await;
    engine
        .pause("l2", PauseMode::Immediate, None, "op", None)
        .await
        .unwrap();
    wait_event(&engine, "l2", |e| {
        matches!(&e.kind, EventKind::StepInterrupted { step_id, attempt: 1, .. } if step_id == "a")
    })
    .await;
    let paused = settled(&engine, "l2").await;
    assert_eq!(paused.status, PlanStatus::Paused);
    engine.resume("l2", "op", None).await.unwrap();
    wait_event(
        &engine,
        "l2",
        |e| matches!(&e.kind, EventKind::StepStarted { step_id, attempt: 2, .. } if step_id == "a"),
    )
    .await;
    latch::release("latch-l2");
    let done = settled(&engine, "l2").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.step("a").unwrap().rec.attempts, 2);
}

#[tokio::test]
async fn a_latch_without_a_plain_name_fails_the_step_naming_the_param() {
    let exec = latch::Latch::default();
    for params in [
        json!({}),
        json!({"name": ""}),
        json!({"name": 3}),
        json!({"name": "../escape"}),
        json!({"name": ".hidden"}),
    ] {
        let err = within(
            "a refused latch",
            exec.execute(task(params.clone()), StopSignal::never()),
        )
        .await
        .expect_err("refused");
        assert!(!err.retryable, "{params}: {err:?}");
        assert!(err.message.contains("params.name"), "{params}: {err:?}");
    }
}

#[tokio::test]
async fn a_latch_is_released_by_a_file_in_the_latch_directory() {
    let dir = tempfile::tempdir().unwrap();
    let exec = latch::Latch::in_dir(dir.path());
    let held = tokio::spawn(async move {
        exec.execute(task(json!({"name": "latch-file"})), StopSignal::never())
            .await
    });
    within("the attempt to hold", latch::held("latch-file")).await;
    assert!(!held.is_finished());
    std::fs::write(dir.path().join("latch-file"), b"").unwrap();
    let out = within("the file to release the latch", held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.output, json!({"name": "latch-file"}));
}

#[tokio::test]
async fn a_stop_ends_a_held_latch_with_a_retryable_error() {
    let (stop, signal) = StopSignal::new();
    let held = tokio::spawn(async move {
        latch::Latch::default()
            .execute(task(json!({"name": "latch-stop"})), signal)
            .await
    });
    within("the attempt to hold", latch::held("latch-stop")).await;
    stop.send(true).unwrap();
    let err = within("the stop to end the latch", held)
        .await
        .unwrap()
        .expect_err("stopped");
    assert!(err.retryable);
    assert!(err.message.contains("latch-stop"), "{err:?}");
}
