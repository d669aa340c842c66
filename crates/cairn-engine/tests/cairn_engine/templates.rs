//! Templates through the engine, on both stores: instantiate and start in one commit, diffs of
//! template versions, and the `upgrade` intervention (dry run, refused naming a started step,
//! applied, a version of the history with its cause, replay-equal after a restart).

use std::sync::Arc;

use cairn_core::{EventKind, InterventionRequest, PlanStatus, RefusalKind, StepStatus};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineError, EngineOptions, Instantiate};
use cairn_store::Store;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

use crate::common::{postgres_schema, postgres_store, within};

fn iv(body: Value) -> InterventionRequest {
    InterventionRequest::from_body(body).unwrap()
}

/// Where the engines of a case keep their data: reopened to restart.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String, String),
}

impl Backend {
    async fn postgres() -> Option<Backend> {
        let (url, schema) = postgres_schema()?;
        Some(Backend::Postgres(url, schema))
    }

    async fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
            ),
            Backend::Postgres(url, schema) => postgres_store(url, schema).await,
        }
    }

    async fn engine(&self) -> (Engine, Arc<dyn Store>) {
        let store = self.store().await;
        let engine = Engine::open(
            store.clone(),
            Registry::with_builtins(),
            EngineOptions::default(),
        )
        .await
        .unwrap();
        (engine, store)
    }
}

macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::Backend::Sqlite(dir)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = super::Backend::postgres().await {
                    super::$name(backend).await;
                }
            }
        }
    };
}

/// A template of three steps; `a` holds (a long sleep) so the plan stays running.
fn template(version: u8) -> Value {
    let mut steps = vec![
        json!({"step_id": "a", "action": "hold", "agent_type": "builtin.sleep", "params": {"ms": 600_000}}),
        json!({"step_id": "b", "action": "read", "agent_type": "builtin.echo", "params": {"q": "{{ inputs.topic }}"}}),
        json!({"step_id": "c", "action": "write", "agent_type": "builtin.echo"}),
    ];
    match version {
        1 => {}
        // Changes b (pending), adds d at the end.
        2 => {
            steps[1]["params"]["depth"] = json!(3);
            steps.push(json!({"step_id": "d", "action": "publish", "agent_type": "builtin.echo"}));
        }
        // Changes a (running).
        _ => steps[0]["action"] = json!("hold_longer"),
    }
    json!({
        "name": "research",
        "parameters": {"type": "object", "properties": {"topic": {"type": "string", "default": "rust"}}},
        "plan": {"query": "q", "steps": steps}
    })
}

on_both_stores!(instantiate_and_start_is_one_commit_and_upgrade_moves_the_plan);

async fn instantiate_and_start_is_one_commit_and_upgrade_moves_the_plan(backend: Backend) {
    let (engine, store) = backend.engine().await;
    for v in [1, 2, 3] {
        engine.push_template(template(v), "alice").await.unwrap();
    }
    // An identical push makes no version.
    let again = engine.push_template(template(3), "alice").await.unwrap();
    assert!(!again.created);
    assert_eq!(again.version.version, 3);

    // What registering then starting writes, for comparison: a plan of the same template.
    let plan = cairn_core::Template::from_value(template(1))
        .unwrap()
        .instantiate(1, json!({}), Some("r0".into()))
        .unwrap();
    let before = store.stats().expect("the store counts its writes");
    engine.register(plan, "bob").await.unwrap();
    engine.start("r0", "bob", None).await.unwrap();
    let two_steps = store.stats().unwrap().requests - before.requests;
    let before = store.stats().unwrap();
    let state = within(
        "instantiate",
        engine.instantiate(
            "research",
            Instantiate {
                version: Some(1),
                plan_id: Some("r1".into()),
                start: Some(true),
                ..Default::default()
            },
            "bob",
        ),
    )
    .await
    .unwrap();
    let one_step = store.stats().unwrap().requests - before.requests;
    // One write: the registration, the start and the lease's claim are one
    // commit, where registering then starting takes two or three.
    assert_eq!(
        one_step, 1,
        "{one_step} writes, {two_steps} for register then start"
    );
    assert!(two_steps >= 2);
    let events = engine.events("r1", 0, 100).await.unwrap();
    assert!(
        events.windows(2).all(|w| w[1].id == w[0].id + 1),
        "one commit gives the plan's events consecutive ids"
    );
    assert_eq!(state.status, PlanStatus::Running);
    assert_eq!(state.template.as_ref().unwrap().version, 1);
    let types: Vec<&str> = events.iter().map(|e| e.kind.type_name()).collect();
    assert_eq!(types, ["plan_registered", "plan_started", "step_started"]);
    // The started attempt runs: the engine drives the plan it created.
    let st = engine.state("r1").await.unwrap();
    assert_eq!(st.step("a").unwrap().rec.status, StepStatus::Running);

    // Template diffs.
    let d = engine.template_diff("research", None, None).await.unwrap();
    assert_eq!((d.from, d.to), (2, 3));
    let d = engine
        .template_diff("research", Some(1), Some(2))
        .await
        .unwrap();
    assert_eq!(d.diff.added[0].step_id, "d");
    assert_eq!(d.diff.changed[0].step_id, "b");
    assert!(matches!(
        engine.template_diff("research", Some(9), None).await,
        Err(cairn_engine::TemplateError::VersionNotFound { version: 9, .. })
    ));

    // To version 3: a has started, so it is refused, naming a, and recorded.
    let err = engine
        .intervene(
            "r1",
            iv(json!({"type": "upgrade", "template_version": 3})),
            "bob",
        )
        .await
        .unwrap_err();
    match err {
        EngineError::Refused {
            refusal,
            intervention,
        } => {
            assert_eq!(refusal.kind, RefusalKind::Conflict);
            assert!(
                refusal
                    .message
                    .starts_with("step a is running; version 3 of template research changes it"),
                "{}",
                refusal.message
            );
            assert_eq!(intervention.unwrap().kind, "upgrade");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An unknown version: refused as malformed, recorded too.
    match engine
        .intervene(
            "r1",
            iv(json!({"type": "upgrade", "template_version": 7})),
            "bob",
        )
        .await
    {
        Err(EngineError::Refused { refusal, .. }) => {
            assert_eq!(refusal.kind, RefusalKind::Invalid);
            assert_eq!(refusal.message, "template research has no version 7");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // To version 2: a dry run first, then applied with the expected version.
    let version = engine.state("r1").await.unwrap().version;
    let dry = engine
        .intervene(
            "r1",
            iv(json!({"type": "upgrade", "template_version": 2, "dry_run": true})),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(dry.status.as_str(), "would_apply");
    assert_eq!(engine.state("r1").await.unwrap().version, version);
    let applied = engine
        .intervene(
            "r1",
            iv(json!({"type": "upgrade", "template_version": 2, "expected_version": version, "reason": "v2 reads deeper"})),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(applied.plan_version, version + 1);
    let st = engine.state("r1").await.unwrap();
    assert_eq!(st.template.as_ref().unwrap().version, 2);
    assert_eq!(st.step("b").unwrap().def.params["depth"], json!(3));
    assert!(st.step("d").is_some());
    let versions = engine.plan_versions("r1").await.unwrap();
    let last = versions.last().unwrap();
    assert_eq!(
        (last.cause.kind.as_str(), last.user.as_str()),
        ("upgrade", "bob")
    );
    assert_eq!(last.cause.reason.as_deref(), Some("v2 reads deeper"));
    let diff = engine.plan_diff("r1", None, None).await.unwrap().diff;
    assert_eq!(diff.added[0].step_id, "d");
    assert!(diff.plan.iter().any(|f| f.path == "template.version"));
    assert!(engine
        .events("r1", 0, 100)
        .await
        .unwrap()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::InterventionApplied { intervention, .. } if intervention.kind == "upgrade")));

    // A restart replays the log to the same state.
    engine.shutdown().await;
    drop(engine);
    drop(store);
    let (engine, _store) = backend.engine().await;
    let replayed = engine.state("r1").await.unwrap();
    assert_eq!(replayed.definition(), st.definition());
    assert_eq!(replayed.version, st.version);
    assert_eq!(replayed.template, st.template);
    engine.cancel("r1", "bob", None).await.unwrap();
    engine.cancel("r0", "bob", None).await.unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn a_plan_not_made_from_a_template_cannot_be_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = Backend::Sqlite(dir).engine().await;
    engine
        .register(
            crate::common::plan(
                "plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n",
            ),
            "alice",
        )
        .await
        .unwrap();
    match engine
        .intervene(
            "p",
            iv(json!({"type": "upgrade", "template_version": 2})),
            "bob",
        )
        .await
    {
        Err(EngineError::Refused { refusal, .. }) => {
            assert_eq!(refusal.kind, RefusalKind::Conflict);
            assert!(
                refusal.message.contains("was not made from a template"),
                "{}",
                refusal.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    engine.shutdown().await;
}
