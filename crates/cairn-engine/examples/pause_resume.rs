//! Pause and resume a running plan.
//!
//! `cargo run -p cairn-engine --example pause_resume`

use std::sync::Arc;

use cairn_core::{EventKind, Format, PauseMode, Plan, PlanStatus};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions, Notice};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default())?;
    let engine = Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions::default(),
    )
    .await?;

    // Three slow steps (`builtin.sleep` waits params.ms, then returns its params).
    let plan = Plan::parse(
        r#"
plan_id: research_002
steps:
  - {step_id: step_1, action: search, agent_type: builtin.sleep, params: {ms: 300}}
  - {step_id: step_2, action: analyze, agent_type: builtin.sleep, params: {ms: 300}}
  - {step_id: step_3, action: synthesize, agent_type: builtin.sleep, params: {ms: 300}}
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "example").await?;

    // Start in the background and wait until the first step is running.
    let mut events = engine.subscribe_plan("research_002", Some(0));
    engine.start("research_002", "example", None).await?;
    while let Some(Notice::Event(e)) = events.next().await {
        if let EventKind::StepStarted { step_id, .. } = &e.kind {
            println!("{step_id} started");
            break;
        }
    }

    // Pause: durable at once; the running step finishes, nothing new starts.
    engine
        .pause(
            "research_002",
            PauseMode::Boundary,
            None,
            "example",
            Some("time for coffee".into()),
        )
        .await?;
    println!("plan paused - time for coffee");
    let view = engine.view("research_002").await?;
    println!(
        "completed {} of {} steps (running: {:?})",
        view.completed_steps.len(),
        view.total_steps,
        view.running_steps
    );
    let quiet = engine.wait_settled("research_002").await?;
    println!(
        "quiet: {} with {:?} completed",
        quiet.status.as_str(),
        quiet.ids_with(cairn_core::StepStatus::Completed)
    );

    // Resume when ready and wait for the end.
    engine.resume("research_002", "example", None).await?;
    println!("resumed");
    let done = engine.wait_settled("research_002").await?;
    println!("plan is {}", done.status.as_str());
    anyhow::ensure!(done.status == PlanStatus::Completed);
    Ok(())
}
