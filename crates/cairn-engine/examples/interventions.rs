//! Manual interventions: skip, add and remove steps, and read the recorded interventions.
//!
//! `cargo run -p cairn-engine --example interventions`

use std::sync::Arc;

use cairn_core::{Format, InterventionRequest, Plan};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineError, EngineOptions};
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
  - {step_id: step_1, action: search, agent_type: builtin.echo}
  - {step_id: step_2, action: analyze, agent_type: builtin.echo}
  - {step_id: step_3, action: synthesize, agent_type: builtin.echo}
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "admin@veritas.com").await?;

    // The same JSON bodies the HTTP API takes. The user is who calls, never a body field.
    let user = "admin@veritas.com";
    let requests = [
        // Skip a problematic step.
        json!({"type": "skip_step", "step_id": "step_2", "reason": "source is down"}),
        // Add an emergency validation step after step_1.
        json!({"type": "add_step", "after": "step_1",
               "step": {"step_id": "validation_1", "action": "validate_results", "agent_type": "builtin.echo"}}),
        // Remove a redundant step.
        json!({"type": "remove_step", "step_id": "step_3", "reason": "redundant"}),
        // Refused (and recorded): there is no such step.
        json!({"type": "skip_step", "step_id": "step_9"}),
    ];
    for body in requests {
        match engine
            .intervene("research_001", InterventionRequest::from_body(body)?, user)
            .await
        {
            Ok(i) => println!("{} applied, plan version {}", i.kind, i.plan_version),
            Err(EngineError::Refused { refusal, .. }) => println!("refused: {refusal}"),
            Err(e) => return Err(e.into()),
        }
    }

    engine.start("research_001", user, None).await?;
    let state = engine.wait_settled("research_001").await?;
    println!("plan is {}", state.status.as_str());
    for step in &state.steps {
        println!("  {:<13} {:?}", step.def.step_id, step.rec.status);
    }

    println!("recorded interventions:");
    for i in engine.interventions("research_001").await? {
        println!(
            "  {} {:<12} by {} status={:?} reason={:?} error={:?}",
            i.intervention_id, i.kind, i.user, i.status, i.reason, i.error
        );
        for change in &i.diff {
            println!(
                "      {}: {} -> {}",
                change.path, change.before, change.after
            );
        }
    }
    Ok(())
}
