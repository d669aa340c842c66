//! Definition history: every version of a plan's definition with its cause, the definition at
//! each version, and diffs between versions, all folded from the log.

use cairn_core::diff::Diff;
use cairn_core::InterventionRequest;
use cairn_engine::executor::Registry;
use cairn_engine::{EngineError, EngineOptions};
use serde_json::{json, Value};

use crate::common::{open_engine, plan};

fn iv(body: Value) -> InterventionRequest {
    InterventionRequest::from_body(body).unwrap()
}

const PLAN: &str = "plan_id: h\nquery: q\nsteps:\n  - {step_id: a, action: echo, agent_type: builtin, params: {n: 1}}\n  - {step_id: b, action: echo, agent_type: builtin, params: {n: 2}}\n  - {step_id: c, action: echo, agent_type: builtin, params: {n: 3}}\n";

#[tokio::test]
async fn each_definition_change_is_a_version_with_its_cause_and_a_restore_is_one_too() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(&dir, Registry::with_builtins(), EngineOptions::default()).await;
    engine.register(plan(PLAN), "alice").await.unwrap();
    let cp = engine
        .create_checkpoint("h", Some("as registered".into()), "alice", None)
        .await
        .unwrap();
    let edits = [
        json!({"type": "modify_step", "step_id": "b", "patch": {"params": {"n": 20}}, "reason": "bigger"}),
        json!({"type": "add_step", "step": {"step_id": "d", "action": "echo", "agent_type": "builtin"}, "after": "a"}),
        json!({"type": "reorder_steps", "order": ["a", "d", "c", "b"]}),
        json!({"type": "remove_step", "step_id": "b"}),
        // Changes a step's record, not the definition: no version.
        json!({"type": "skip_step", "step_id": "c"}),
    ];
    let mut ids = Vec::new();
    for body in edits {
        ids.push(
            engine
                .intervene("h", iv(body), "bob")
                .await
                .unwrap()
                .intervention_id,
        );
    }
    engine
        .restore("h", &cp.checkpoint_id, "carol", Some("start over".into()))
        .await
        .unwrap();

    let versions = engine.plan_versions("h").await.unwrap();
    let summary: Vec<(u64, &str, &str)> = versions
        .iter()
        .map(|v| (v.version, v.cause.kind.as_str(), v.user.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "registered", "alice"),
            (2, "modify_step", "bob"),
            (3, "add_step", "bob"),
            (4, "reorder_steps", "bob"),
            (5, "remove_step", "bob"),
            (6, "restore", "carol"),
        ]
    );
    assert_eq!(
        versions[1].cause.intervention_id.as_deref(),
        Some(ids[0].as_str())
    );
    assert_eq!(versions[1].cause.step_id.as_deref(), Some("b"));
    assert_eq!(versions[1].cause.reason.as_deref(), Some("bigger"));
    assert_eq!(
        versions[5].cause.checkpoint_id.as_deref(),
        Some(cp.checkpoint_id.as_str())
    );
    assert_eq!(versions[5].cause.reason.as_deref(), Some("start over"));
    assert!(versions.windows(2).all(|w| w[0].seq < w[1].seq));
    let events = engine.events("h", 0, 10_000).await.unwrap();
    for v in &versions {
        let e = events.iter().find(|e| e.seq == v.seq).unwrap();
        assert_eq!(e.at, v.at);
    }

    // The definition at each version, as it was then.
    let ids_at = |def: &cairn_core::Plan| {
        def.steps
            .iter()
            .map(|s| s.step_id.clone())
            .collect::<Vec<_>>()
    };
    let v1 = engine.plan_version("h", 1).await.unwrap();
    assert_eq!(v1.version, versions[0]);
    assert_eq!(ids_at(&v1.definition), ["a", "b", "c"]);
    let v2 = engine.plan_version("h", 2).await.unwrap().definition;
    assert_eq!(v2.steps[1].params, json!({"n": 20}));
    let v4 = engine.plan_version("h", 4).await.unwrap().definition;
    assert_eq!(ids_at(&v4), ["a", "d", "c", "b"]);
    let v5 = engine.plan_version("h", 5).await.unwrap().definition;
    assert_eq!(ids_at(&v5), ["a", "d", "c"]);
    let v6 = engine.plan_version("h", 6).await.unwrap().definition;
    assert_eq!(
        v6, v1.definition,
        "the restore brought version 1's definition back"
    );
    assert_eq!(v6, engine.state("h").await.unwrap().definition());

    // Diffs: the defaults are the latest version against the one before.
    let last = engine.plan_diff("h", None, None).await.unwrap();
    assert_eq!((last.from, last.to), (5, 6));
    assert_eq!(last.diff, Diff::between(&v5, &v6));
    let added: Vec<&str> = last.diff.added.iter().map(|a| a.step_id.as_str()).collect();
    let removed: Vec<&str> = last
        .diff
        .removed
        .iter()
        .map(|r| r.step_id.as_str())
        .collect();
    assert_eq!((added, removed), (vec!["b"], vec!["d"]));
    let modify = engine.plan_diff("h", None, Some(2)).await.unwrap();
    assert_eq!((modify.from, modify.to), (1, 2));
    assert_eq!(modify.diff.changed[0].step_id, "b");
    assert_eq!(modify.diff.changed[0].fields[0].path, "params.n");
    assert_eq!(modify.diff.changed[0].fields[0].after, Some(json!(20)));
    let reorder = engine.plan_diff("h", Some(3), Some(4)).await.unwrap();
    assert!(reorder.diff.added.is_empty() && reorder.diff.removed.is_empty());
    assert_eq!(reorder.diff.moved.len(), 1);
    assert!(engine
        .plan_diff("h", Some(1), Some(6))
        .await
        .unwrap()
        .diff
        .is_empty());
    let first = engine.plan_diff("h", None, Some(1)).await.unwrap();
    assert_eq!((first.from, first.to, first.diff.is_empty()), (1, 1, true));
    // Every diff turns its first version into its second.
    for (from, to) in [(1, 5), (2, 4), (5, 2), (6, 3)] {
        let d = engine.plan_diff("h", Some(from), Some(to)).await.unwrap();
        let a = engine.plan_version("h", from).await.unwrap().definition;
        let b = engine.plan_version("h", to).await.unwrap().definition;
        assert_eq!(d.diff.apply(&a).unwrap(), b, "{from} → {to}");
    }

    match engine.plan_version("h", 7).await {
        Err(e @ EngineError::VersionNotFound { .. }) => {
            assert_eq!(e.to_string(), "plan h has no version 7 (its versions: 1-6)")
        }
        other => panic!("expected an unknown version, got {other:?}"),
    }
    assert!(matches!(
        engine.plan_diff("h", Some(0), None).await,
        Err(EngineError::VersionNotFound { version: 0, .. })
    ));
    assert!(matches!(
        engine.plan_versions("nope").await,
        Err(EngineError::PlanNotFound(_))
    ));
    assert!(matches!(
        engine.plan_diff("nope", None, None).await,
        Err(EngineError::PlanNotFound(_))
    ));
}

#[tokio::test]
async fn a_fork_starts_its_history_at_the_source_version() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(&dir, Registry::with_builtins(), EngineOptions::default()).await;
    engine.register(plan(PLAN), "alice").await.unwrap();
    engine
        .intervene(
            "h",
            iv(json!({"type": "remove_step", "step_id": "c"})),
            "bob",
        )
        .await
        .unwrap();
    let cp = engine
        .create_checkpoint("h", None, "alice", None)
        .await
        .unwrap();
    let fork = engine
        .fork("h", &cp.checkpoint_id, Some("f".into()), "dora", None)
        .await
        .unwrap();
    let versions = engine.plan_versions("f").await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].version, fork.version);
    assert_eq!(versions[0].version, 2);
    assert_eq!(versions[0].cause.kind, "forked");
    assert_eq!(versions[0].cause.source_plan_id.as_deref(), Some("h"));
    assert_eq!(versions[0].user, "dora");
    let at = engine.plan_version("f", 2).await.unwrap().definition;
    assert_eq!(at.steps.len(), 2);
}
