//! Basic orchestration: register a plan and execute it with your own agent.
//!
//! `cargo run -p cairn-engine --example basic`

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{Format, Plan};
use cairn_engine::executor::{ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

/// A tiny "research agent": computes its output from the step's action and params.
struct ResearchAgent;

#[async_trait]
impl Executor for ResearchAgent {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let output = match task.action.as_str() {
            "search" => {
                let topic = task.params["topic"].as_str().unwrap_or(&task.query);
                let sources: Vec<String> = topic
                    .split_whitespace()
                    .map(|w| format!("https://example.org/{}", w.to_lowercase()))
                    .collect();
                json!({"hits": sources.len(), "sources": sources})
            }
            "analyze" => {
                let hits = task.params["hits"].as_u64().unwrap_or(0);
                json!({"confidence": (hits as f64 / 10.0).min(1.0), "themes": hits * 2})
            }
            "synthesize" => json!({
                "summary": format!("{}: {} themes, confidence {}",
                    task.query, task.params["themes"], task.params["confidence"]),
            }),
            other => return Err(ExecError::fatal(format!("unknown action {other}"))),
        };
        Ok(ExecOutput {
            output,
            scores: None,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An engine over a SQLite file (a temporary one here), with our agent registered.
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default())?;
    let registry = Registry::with_builtins();
    let agent = Arc::new(ResearchAgent);
    for agent_type in ["registry", "environmental", "social"] {
        registry.register(agent_type, agent.clone());
    }
    let engine = Engine::open(Arc::new(store), registry, EngineOptions::default()).await?;

    // Steps run in list order; `{{ }}` templates read earlier steps' outputs.
    let plan = Plan::parse(
        r#"
plan_id: research_001
query: Market analysis
steps:
  - {step_id: step_1, action: search, agent_type: registry, params: {topic: "EV charging market Europe"}}
  - {step_id: step_2, action: analyze, agent_type: environmental, params: {hits: "{{ steps.step_1.output.hits }}"}}
  - step_id: step_3
    action: synthesize
    agent_type: social
    params:
      themes: "{{ steps.step_2.output.themes }}"
      confidence: "{{ steps.step_2.output.confidence }}"
"#,
        Format::Yaml,
    )?;
    engine.register(plan, "example").await?;
    println!("registered research_001");

    engine.start("research_001", "example", None).await?;
    let state = engine.wait_settled("research_001").await?;
    println!("plan is {}", state.status.as_str());
    for step in &state.steps {
        println!(
            "  {} ({}): {}",
            step.def.step_id,
            step.def.action,
            step.rec.output.clone().unwrap_or_default()
        );
    }
    anyhow::ensure!(state.status == cairn_core::PlanStatus::Completed);
    Ok(())
}
