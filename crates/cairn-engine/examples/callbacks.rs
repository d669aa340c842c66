//! Callbacks for monitoring: state changes, checkpoints and interventions.
//!
//! `cargo run -p cairn-engine --example callbacks`

use std::sync::Arc;

use cairn_core::{Format, InterventionRequest, Plan, PlanStatus};
use cairn_engine::executor::Registry;
use cairn_engine::observe::{observe, Callbacks};
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;
use tokio::sync::mpsc;

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

    // Callbacks may be plain closures or return futures (`_async`). They run on the observer's
    // own task: a slow one makes the observer lag and catch up, it never slows a plan down.
    let (finished, mut finished_rx) = mpsc::unbounded_channel();
    let callbacks = Callbacks::new()
        .on_state_change_async(move |plan_id, old, new| {
            let finished = finished.clone();
            async move {
                println!("Plan {plan_id}: {} -> {}", old.as_str(), new.as_str());
                // Send a notification, log to a database, etc.
                if new.is_terminal() {
                    let _ = finished.send(new);
                }
            }
        })
        .on_checkpoint(|cp| {
            println!(
                "Checkpoint created: {} ({})",
                cp.checkpoint_id,
                cp.trigger.as_str()
            );
        })
        .on_intervention(|i| {
            println!("Intervention by {}: {} ({:?})", i.user, i.kind, i.status);
        });
    let observer = observe(&engine, callbacks).await?;

    // A plan whose first step fails once: retry it, then resume.
    let plan = Plan::parse(
        r#"
plan_id: research_001
steps:
  - {step_id: step_1, action: search, agent_type: builtin.fail, params: {times: 1}}
  - {step_id: step_2, action: analyze, agent_type: builtin.echo}
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "example").await?;
    engine.start("research_001", "example", None).await?;
    assert_eq!(finished_rx.recv().await, Some(PlanStatus::Failed));

    let retry = json!({"type": "retry_step", "step_id": "step_1", "reason": "flaky source"});
    engine
        .intervene(
            "research_001",
            InterventionRequest::from_body(retry)?,
            "admin@veritas.com",
        )
        .await?;
    engine.resume("research_001", "example", None).await?;
    assert_eq!(finished_rx.recv().await, Some(PlanStatus::Completed));

    observer.stop();
    Ok(())
}
