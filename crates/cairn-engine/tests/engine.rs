//! The engine end to end over a real SQLite store.

use std::sync::Arc;

use cairn_core::{Format, PauseMode, Plan, PlanStatus, StepStatus};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};

fn plan(yaml: &str) -> Plan {
    Plan::parse(yaml, Format::Yaml).unwrap()
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_plan_runs_to_completion_with_three_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = plan(
        "plan_id: p1\nquery: q\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {v: 1}}\n  - {step_id: b, action: y, agent_type: builtin.echo, params: {from_a: '{{ steps.a.output.v }}'}}\n",
    );
    engine.register(p, "tester").await.unwrap();
    engine.start("p1", "tester", None).await.unwrap();
    let state = engine.wait_settled("p1").await.unwrap();
    assert_eq!(state.status, PlanStatus::Completed);
    assert_eq!(
        state.steps[1].rec.output,
        Some(serde_json::json!({"from_a": 1}))
    );
    assert_eq!(engine.checkpoints("p1").await.unwrap().len(), 3);
    assert!(state
        .steps
        .iter()
        .all(|s| s.rec.status == StepStatus::Completed));
}

#[tokio::test]
async fn pause_stops_new_steps_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = plan(
        "plan_id: p2\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.sleep, params: {ms: 200}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n",
    );
    engine.register(p, "tester").await.unwrap();
    engine.start("p2", "tester", None).await.unwrap();
    let paused = engine
        .pause("p2", PauseMode::Boundary, None, "op", Some("coffee".into()))
        .await
        .unwrap();
    assert_eq!(paused.status, PlanStatus::Paused);
    let settled = engine.wait_settled("p2").await.unwrap();
    assert_eq!(settled.status, PlanStatus::Paused);
    assert_eq!(settled.steps[0].rec.status, StepStatus::Completed);
    assert_eq!(settled.steps[1].rec.status, StepStatus::Pending);
    engine.resume("p2", "op", None).await.unwrap();
    let done = engine.wait_settled("p2").await.unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
}
