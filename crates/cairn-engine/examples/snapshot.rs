//! A complete snapshot of a plan, for audit and debugging.
//!
//! `cargo run -p cairn-engine --example snapshot`

use std::sync::Arc;

use cairn_core::{Format, InterventionRequest, Plan};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

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
    let plan = Plan::parse(
        r#"
plan_id: research_001
query: Market analysis
steps:
  - {step_id: step_1, action: search, agent_type: builtin.echo, params: {q: "{{ query }}"}}
  - {step_id: step_2, action: analyze, agent_type: builtin.echo}
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "example").await?;
    let modify =
        json!({"type": "modify_step", "step_id": "step_2", "patch": {"params": {"depth": 3}}});
    engine
        .intervene(
            "research_001",
            InterventionRequest::from_body(modify)?,
            "admin@veritas.com",
        )
        .await?;
    engine.start("research_001", "example", None).await?;
    engine.wait_settled("research_001").await?;

    let snapshot = engine.snapshot("research_001").await?;
    println!("{}", serde_json::to_string_pretty(&snapshot)?);
    println!("Snapshot captured:");
    println!("  State: {}", snapshot.state.as_str());
    println!(
        "  Progress: {}/{} (current step index {})",
        snapshot.completed_steps.len(),
        snapshot.plan.steps.len(),
        snapshot.current_step_index
    );
    for step in &snapshot.steps {
        println!(
            "  {:<8} {:<10} attempts {}  output {}",
            step.step_id,
            format!("{:?}", step.status).to_lowercase(),
            step.attempts,
            step.output.clone().unwrap_or_default()
        );
    }
    println!("  Checkpoints: {}", snapshot.checkpoints.len());
    println!("  Interventions: {}", snapshot.interventions.len());
    println!("  Events: {}", snapshot.event_count);
    Ok(())
}
