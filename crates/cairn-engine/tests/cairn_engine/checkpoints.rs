//! A checkpoint's state, however it is read (from the nearest stored snapshot and the events
//! after it), equals a full replay of the log up to the checkpoint: a property checked over
//! seeded random histories (runs, restores to random checkpoints, interventions, resumes) with
//! snapshots taken every few events, on SQLite and, when `CAIRN_TEST_DATABASE_URL` is set, on
//! PostgreSQL. Also: snapshots stored as JSON (as releases before binary snapshots wrote them)
//! still read, on both stores, and snapshots that cannot be used are passed over.

use std::sync::Arc;

use cairn_core::{
    view::CheckpointView, InterventionKind, InterventionRequest, PlanState, PlanStatus, StepStatus,
};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions};
use cairn_store::Store;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

use crate::common::{plan, postgres_schema, postgres_store, settled};

/// A small deterministic generator (xorshift64*), so a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn opts() -> EngineOptions {
    EngineOptions {
        // Snapshots often, so checkpoints fall before, on and after them.
        snapshot_every: 5,
        ..EngineOptions::default()
    }
}

/// The plan's state after event `seq`, folded from its first event.
async fn replayed(engine: &Engine, plan_id: &str, seq: u64) -> PlanState {
    let events = engine.events(plan_id, 0, usize::MAX).await.unwrap();
    let mut state = PlanState::empty(plan_id);
    for e in events.iter().take_while(|e| e.seq <= seq) {
        state.apply(e);
    }
    assert_eq!(state.seq, seq, "the log of {plan_id} has event {seq}");
    state
}

/// Every checkpoint of `plan_id` read through the engine equals the full replay to it.
async fn every_checkpoint_equals_its_replay(engine: &Engine, plan_id: &str, seed: u64) {
    let cps = engine.checkpoints(plan_id).await.unwrap();
    assert!(!cps.is_empty());
    for cp in &cps {
        let export = engine
            .export_checkpoint(plan_id, &cp.checkpoint_id)
            .await
            .unwrap();
        let state = replayed(engine, plan_id, cp.seq).await;
        assert_eq!(
            export.state,
            state.materialize(),
            "seed {seed}: the state of {} differs from a full replay",
            cp.checkpoint_id
        );
        assert_eq!(
            export.checkpoint,
            CheckpointView::of(&state, cp.trigger, cp.label.clone(), cp.created_at),
            "seed {seed}: the view of {} differs from a full replay",
            cp.checkpoint_id
        );
    }
}

/// A random history of one plan: it runs, is restored to random checkpoints, changed by
/// interventions and resumed, `rounds` times.
async fn random_history(store: Arc<dyn Store>, seed: u64, rounds: usize) {
    let engine = Engine::open(store, Registry::with_builtins(), opts())
        .await
        .unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let id = format!("prop-{seed}");
    let steps = 4 + rng.below(6);
    let mut yaml = format!("plan_id: {id}\nquery: q\nsteps:\n");
    for j in 0..steps {
        yaml.push_str(&format!(
            "  - {{step_id: s{j}, action: a, agent_type: builtin.echo, params: {{n: {j}}}}}\n"
        ));
    }
    engine.register(plan(&yaml), "op").await.unwrap();
    engine.start(&id, "op", None).await.unwrap();
    settled(&engine, &id).await;
    let mut added = 0;
    for _ in 0..rounds {
        let cps = engine.checkpoints(&id).await.unwrap();
        let cp = &cps[rng.below(cps.len())];
        engine
            .restore(&id, &cp.checkpoint_id, "op", None)
            .await
            .unwrap();
        // Some changes while paused: an added step, a skipped one.
        let state = engine.state(&id).await.unwrap();
        if rng.below(2) == 0 {
            added += 1;
            let request = InterventionRequest {
                kind: InterventionKind::AddStep {
                    step: json!({"step_id": format!("x{added}"), "action": "a",
                                 "agent_type": "builtin.echo", "params": {"added": added}}),
                    after: None,
                    before: None,
                },
                expected_version: None,
                reason: None,
                dry_run: false,
                upgrade: None,
            };
            engine.intervene(&id, request, "op").await.unwrap();
        }
        let pending: Vec<String> = state
            .steps
            .iter()
            .filter(|s| s.rec.status == StepStatus::Pending)
            .map(|s| s.def.step_id.clone())
            .collect();
        if !pending.is_empty() && rng.below(3) == 0 {
            let request = InterventionRequest {
                kind: InterventionKind::SkipStep {
                    step_id: pending[rng.below(pending.len())].clone(),
                    compensation: false,
                },
                expected_version: None,
                reason: Some("random".into()),
                dry_run: false,
                upgrade: None,
            };
            engine.intervene(&id, request, "op").await.unwrap();
        }
        engine.resume(&id, "op", None).await.unwrap();
        let end = settled(&engine, &id).await;
        assert_eq!(end.status, PlanStatus::Completed, "seed {seed}");
    }
    every_checkpoint_equals_its_replay(&engine, &id, seed).await;
    // And the current state (the actor's, and loaded afresh) is the full replay too.
    let now = engine.state(&id).await.unwrap();
    assert_eq!(*now, replayed(&engine, &id, now.seq).await, "seed {seed}");
    engine.shutdown().await;
}

/// Runs `plan_id`, eight `builtin.echo` steps whose params are `{n: j<more>}`, to its end on an
/// engine of its own, then shuts that engine down: the store holds the plan's log and snapshots.
async fn run_echo_plan(store: &Arc<dyn Store>, plan_id: &str, more: &str) {
    let engine = Engine::open(store.clone(), Registry::with_builtins(), opts())
        .await
        .unwrap();
    let mut yaml = format!("plan_id: {plan_id}\nquery: q\nsteps:\n");
    for j in 0..8 {
        yaml.push_str(&format!(
            "  - {{step_id: s{j}, action: a, agent_type: builtin.echo, params: {{n: {j}{more}}}}}\n"
        ));
    }
    engine.register(plan(&yaml), "op").await.unwrap();
    engine.start(plan_id, "op", None).await.unwrap();
    assert_eq!(
        settled(&engine, plan_id).await.status,
        PlanStatus::Completed
    );
    engine.shutdown().await;
}

/// A plan's snapshots rewritten as earlier releases stored them, one in two as JSON (releases
/// before binary snapshots) and the others as one MessagePack map (the release before snapshots
/// in parts), read as the newest form is: each decodes to the same state, and every checkpoint
/// read by an engine opened afresh on the store equals the full replay to it.
async fn json_snapshots_still_read(store: Arc<dyn Store>) {
    run_echo_plan(&store, "old", ", f: 0.5").await;

    let mut rewritten = 0;
    let mut before = u64::MAX;
    while let Some((seq, bytes)) = store.get_snapshot("old", before).await.unwrap() {
        assert_eq!(
            bytes[0],
            cairn_engine::snapshot::PARTS,
            "snapshot {seq} is in parts"
        );
        let state = cairn_engine::snapshot::decode(&bytes).unwrap();
        assert_eq!(state.seq, seq);
        let older = if rewritten % 2 == 0 {
            let json = serde_json::to_vec(&state).unwrap();
            assert_eq!(json[0], b'{');
            json
        } else {
            let whole = cairn_engine::snapshot::encode_whole(&state).unwrap();
            assert_eq!(whole[0], cairn_engine::snapshot::MSGPACK);
            whole
        };
        assert_eq!(cairn_engine::snapshot::decode(&older).unwrap(), state);
        store.put_snapshot("old", seq, older).await.unwrap();
        rewritten += 1;
        if seq == 0 {
            break;
        }
        before = seq - 1;
    }
    assert!(rewritten >= 3, "only {rewritten} snapshots were stored");

    let engine = Engine::open(store.clone(), Registry::with_builtins(), opts())
        .await
        .unwrap();
    every_checkpoint_equals_its_replay(&engine, "old", 0).await;
    let now = engine.state("old").await.unwrap();
    assert_eq!(*now, replayed(&engine, "old", now.seq).await);
    engine.shutdown().await;
}

/// Snapshots that cannot be used (bytes no release wrote; a state stored under another seq
/// than its own) are passed over: a checkpoint's state, and the plan's state loaded afresh,
/// are folded from the plan's first event instead, and equal the full replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_snapshots_fall_back_to_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
    );
    run_echo_plan(&store, "bad", "").await;

    let mut snapshots = Vec::new();
    let mut before = u64::MAX;
    while let Some((seq, bytes)) = store.get_snapshot("bad", before).await.unwrap() {
        snapshots.push((seq, bytes));
        if seq == 0 {
            break;
        }
        before = seq - 1;
    }
    assert!(snapshots.len() >= 3, "only {} snapshots", snapshots.len());
    for (i, (seq, _)) in snapshots.iter().enumerate() {
        let bytes = if i % 2 == 0 {
            // 0xc1 is the one byte MessagePack never uses; and parts cut short.
            match i % 4 {
                0 => vec![cairn_engine::snapshot::MSGPACK, 0xc1, 0xc1],
                _ => snapshots[0].1[..snapshots[0].1.len() / 2].to_vec(),
            }
        } else {
            // The newest snapshot's state, at its own seq, not this one.
            snapshots[0].1.clone()
        };
        store.put_snapshot("bad", *seq, bytes).await.unwrap();
    }

    let engine = Engine::open(store.clone(), Registry::with_builtins(), opts())
        .await
        .unwrap();
    every_checkpoint_equals_its_replay(&engine, "bad", 0).await;
    let now = engine.state("bad").await.unwrap();
    assert_eq!(*now, replayed(&engine, "bad", now.seq).await);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_snapshots_still_read_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    json_snapshots_still_read(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_snapshots_still_read_on_postgres() {
    let Some((url, schema)) = postgres_schema() else {
        return;
    };
    json_snapshots_still_read(postgres_store(&url, &schema).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_states_equal_a_full_replay_on_sqlite() {
    for seed in 1..=6 {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
        random_history(Arc::new(store), seed, 6).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_states_equal_a_full_replay_on_postgres() {
    for seed in 1..=3 {
        let Some((url, schema)) = postgres_schema() else {
            return;
        };
        random_history(postgres_store(&url, &schema).await, seed, 6).await;
    }
}
