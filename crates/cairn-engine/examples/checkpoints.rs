//! Checkpoints: list them, restore to one and resume, fork a new plan, export and import.
//!
//! `cargo run -p cairn-engine --example checkpoints`

use std::sync::Arc;

use cairn_core::{Format, Plan, PlanStatus};
use cairn_engine::executor::Registry;
use cairn_engine::{CheckpointExport, Engine, EngineOptions};
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
    let plan = Plan::parse(
        r#"
plan_id: research_001
steps:
  - {step_id: step_1, action: search, agent_type: builtin.echo, params: {hits: 12}}
  - {step_id: step_2, action: analyze, agent_type: builtin.echo, params: {of: "{{ steps.step_1.output.hits }}"}}
  - {step_id: step_3, action: synthesize, agent_type: builtin.echo}
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "example").await?;

    // Checkpoints are taken automatically: at start, after every step, at every pause.
    engine.start("research_001", "example", None).await?;
    engine.wait_settled("research_001").await?;
    let checkpoints = engine.checkpoints("research_001").await?;
    for cp in &checkpoints {
        let view = engine.checkpoint("research_001", &cp.checkpoint_id).await?;
        println!(
            "{:<5} {:<8} completed={:?}",
            cp.checkpoint_id,
            cp.trigger.as_str(),
            view.completed_steps
        );
    }

    // Restore to the checkpoint taken after step_1 (the plan must not be running), then resume:
    // step_2 and step_3 run again.
    let after_step_1 = &checkpoints[1];
    let restored = engine
        .restore(
            "research_001",
            &after_step_1.checkpoint_id,
            "example",
            Some("redo the analysis".into()),
        )
        .await?;
    println!(
        "restored to {}: {} ({:?})",
        after_step_1.checkpoint_id,
        restored.status.as_str(),
        restored.pause_reason
    );
    engine.resume("research_001", "example", None).await?;
    let done = engine.wait_settled("research_001").await?;
    println!("after resume: {}", done.status.as_str());

    // Fork: a new plan, paused, in the state of a checkpoint. The original is untouched.
    let forked = engine
        .fork(
            "research_001",
            &after_step_1.checkpoint_id,
            Some("research_001_b".into()),
            "example",
            None,
        )
        .await?;
    println!("forked {} ({})", forked.plan_id, forked.status.as_str());
    engine.resume("research_001_b", "example", None).await?;
    println!(
        "fork is {}",
        engine.wait_settled("research_001_b").await?.status.as_str()
    );

    // Export a checkpoint to a JSON file and import it back as a new plan.
    let file = dir.path().join("checkpoint.json");
    let export = engine
        .export_checkpoint("research_001", &checkpoints[2].checkpoint_id)
        .await?;
    std::fs::write(&file, serde_json::to_vec_pretty(&export)?)?;
    println!(
        "exported {} to {}",
        checkpoints[2].checkpoint_id,
        file.display()
    );
    let back: CheckpointExport = serde_json::from_slice(&std::fs::read(&file)?)?;
    let imported = engine
        .import_checkpoint(back, Some("research_001_c".into()), "example")
        .await?;
    engine.resume(&imported.plan_id, "example", None).await?;
    let done = engine.wait_settled(&imported.plan_id).await?;
    println!(
        "imported {} and ran it: {}",
        imported.plan_id,
        done.status.as_str()
    );
    anyhow::ensure!(done.status == PlanStatus::Completed);
    Ok(())
}
