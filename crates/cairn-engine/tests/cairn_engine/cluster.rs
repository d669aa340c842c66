//! Several engines sharing one store, each with its own node id: a cluster as far as an engine
//! can tell. They reach each other through [`InProcess`] peers, which hand a forwarding request
//! to the other engine's `serve_forwarded`: the same bytes an HTTP transport would carry.
//!
//! Every case runs on SQLite (several engines of one process over one `Arc<SqliteStore>`), and
//! on PostgreSQL when `CAIRN_TEST_DATABASE_URL` is set (each node with its own `PgStore`, its own
//! connections and commit hints, on one schema of its own per case); without it the PostgreSQL
//! runs say so and pass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{
    EventKind, InterventionKind, InterventionRequest, PauseMode, PlanStatus, RefusalKind,
    StepResult, StepStatus,
};
use cairn_engine::cluster::{PeerError, Peers};
use cairn_engine::executor::{latch, ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::remote::RemoteQueue;
use cairn_engine::{Engine, EngineError, EngineOptions, Notice};
use cairn_store::Store;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

use crate::common::{plan, postgres_schema, postgres_store, settled, wait_event, within};

/// The nodes of a test cluster, by id; a node marked down is unreachable (as a killed process).
#[derive(Default)]
struct InProcess {
    nodes: Mutex<HashMap<String, Engine>>,
    down: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.lock().unwrap().keys().cloned().collect();
        f.debug_struct("InProcess")
            .field("nodes", &nodes)
            .field("down", &self.down.lock().unwrap())
            .finish()
    }
}

#[async_trait]
impl Peers for InProcess {
    async fn forward(&self, owner: &str, request: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let unreachable = |reason: &str| PeerError::Unreachable {
            node: owner.to_owned(),
            reason: reason.to_owned(),
        };
        if self.down.lock().unwrap().contains(owner) {
            return Err(unreachable("the node is down"));
        }
        let engine = self.nodes.lock().unwrap().get(owner).cloned();
        match engine {
            Some(engine) => Ok(engine.serve_forwarded(&request).await),
            None => Err(unreachable("no such node")),
        }
    }
}

/// Counts the attempts each idempotency key started, per node, and answers with the node's
/// name; with `params.latch` it holds on that latch first (the `builtin.latch` step holder).
#[derive(Debug, Clone)]
struct Counting {
    node: String,
    starts: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

#[async_trait]
impl Executor for Counting {
    async fn execute(&self, task: Task, stop: StopSignal) -> Result<ExecOutput, ExecError> {
        self.starts
            .lock()
            .unwrap()
            .entry(task.idempotency_key.clone())
            .or_default()
            .push(self.node.clone());
        if let Some(name) = task.params.get("latch").and_then(|v| v.as_str()) {
            let mut held = task.clone();
            held.params = json!({ "name": name });
            let latch = Registry::with_builtins()
                .get("builtin.latch")
                .expect("the latch");
            latch.execute(held, stop).await?;
        }
        Ok(ExecOutput {
            output: json!({ "node": self.node }),
            scores: None,
        })
    }
}

/// Where a cluster keeps its plans.
enum Backend {
    /// The directory of its database file, kept for as long as the case runs.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    /// The database URL and this case's schema.
    Postgres(String, String),
}

struct Cluster {
    backend: Backend,
    /// The store the test reads (the nodes' own, on SQLite).
    store: Arc<dyn Store>,
    peers: Arc<InProcess>,
    starts: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Names the process-wide latches of this case apart from the other backend's run.
    tag: &'static str,
}

impl Cluster {
    fn sqlite() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
        Cluster {
            backend: Backend::Sqlite(dir),
            store: Arc::new(store),
            peers: Arc::default(),
            starts: Arc::default(),
            tag: "sq",
        }
    }

    /// A cluster on a fresh schema of the test database, or `None` (saying so) without one.
    async fn postgres() -> Option<Cluster> {
        let (url, schema) = postgres_schema()?;
        let store = postgres_store(&url, &schema).await;
        Some(Cluster {
            backend: Backend::Postgres(url, schema),
            store,
            peers: Arc::default(),
            starts: Arc::default(),
            tag: "pg",
        })
    }

    /// The store a new node opens: the shared one on SQLite, its own connections on PostgreSQL.
    async fn store_for_node(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite(_) => self.store.clone(),
            Backend::Postgres(url, schema) => postgres_store(url, schema).await,
        }
    }

    fn latch(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    async fn node(&self, id: &str, lease_ms: u64) -> Engine {
        self.node_with(id, lease_ms, |_| {}).await
    }

    async fn node_with(
        &self,
        id: &str,
        lease_ms: u64,
        tune: impl FnOnce(&mut EngineOptions),
    ) -> Engine {
        let mut opts = self.options_for(id, lease_ms);
        tune(&mut opts);
        let engine = Engine::open(self.store_for_node().await, self.registry_for(id), opts)
            .await
            .unwrap();
        self.peers
            .nodes
            .lock()
            .unwrap()
            .insert(id.to_owned(), engine.clone());
        engine
    }

    /// The builtins and `count`, whose attempts answer with the node's name.
    fn registry_for(&self, id: &str) -> Registry {
        let registry = Registry::with_builtins();
        registry.register(
            "count",
            Arc::new(Counting {
                node: id.to_owned(),
                starts: self.starts.clone(),
            }),
        );
        registry
    }

    fn options_for(&self, id: &str, lease_ms: u64) -> EngineOptions {
        EngineOptions {
            node_id: id.to_owned(),
            lease_ms,
            idle_unload_ms: 600_000,
            peers: Some(self.peers.clone() as Arc<dyn Peers>),
            ..EngineOptions::default()
        }
    }

    /// Kills a node as far as the others can tell: unreachable, its actors stopped, its leases
    /// left to run out.
    async fn kill(&self, id: &str) {
        self.peers.down.lock().unwrap().insert(id.to_owned());
        let engine = self.peers.nodes.lock().unwrap().remove(id);
        if let Some(engine) = engine {
            engine.shutdown().await;
        }
    }

    async fn owner(&self, plan_id: &str) -> Option<String> {
        self.store
            .lease(plan_id)
            .await
            .unwrap()
            .filter(|l| !l.released)
            .map(|l| l.owner)
    }

    fn starts_of(&self, key: &str) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

/// A case run on both stores: `name::sqlite` and `name::postgres`.
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Cluster::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(cluster) = super::Cluster::postgres().await {
                    super::$name(cluster).await;
                }
            }
        }
    };
}

/// Every seq of the plan's log, which must run 1, 2, … with no gap.
async fn assert_no_seq_gap(store: &dyn Store, plan_id: &str) {
    let rows = store.read_events(plan_id, 0, None, 100_000).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "plan {plan_id}'s log has a gap");
}

fn intervention(kind: InterventionKind) -> InterventionRequest {
    InterventionRequest {
        kind,
        expected_version: None,
        reason: Some("test".into()),
        dry_run: false,
        upgrade: None,
    }
}

on_both_stores!(every_command_for_a_plan_another_node_drives_is_answered_with_the_owners_result);

async fn every_command_for_a_plan_another_node_drives_is_answered_with_the_owners_result(
    c: Cluster,
) {
    let a = c.node("a", 30_000).await;
    let b = c.node("b", 30_000).await;
    let held = c.latch("fw-1");
    a.register(
        plan(&format!("plan_id: fw\nsteps:\n  - {{step_id: s1, action: x, agent_type: count, params: {{latch: {held}}}}}\n  - {{step_id: s2, action: x, agent_type: builtin.echo}}\n  - {{step_id: s3, action: x, agent_type: builtin.echo}}\n")),
        "ann",
    )
    .await
    .unwrap();
    // A takes the idle plan's lease (a checkpoint loads it there); B starts it through A.
    a.create_checkpoint("fw", Some("idle".into()), "ann", None)
        .await
        .unwrap();
    assert_eq!(c.owner("fw").await.as_deref(), Some("a"));
    let started = b.start("fw", "bob", Some("go".into())).await.unwrap();
    assert_eq!(started.status, PlanStatus::Running);
    within("s1 to hold", latch::held(&held)).await;
    assert_eq!(b.node_stats().leases_held, 0, "B drives nothing");
    assert_eq!(c.owner("fw").await.as_deref(), Some("a"));

    // A refusal keeps its kind: resuming a running plan is a conflict.
    let e = b.resume("fw", "bob", None).await.unwrap_err();
    assert_eq!(e.refusal_kind(), Some(RefusalKind::Conflict), "{e}");

    // Interventions: one applied, one refused (recorded, with its record).
    let applied = b
        .intervene(
            "fw",
            intervention(InterventionKind::SkipStep {
                step_id: "s3".into(),
                compensation: false,
            }),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(applied.user, "bob");
    match b
        .intervene(
            "fw",
            intervention(InterventionKind::SkipStep {
                step_id: "nope".into(),
                compensation: false,
            }),
            "bob",
        )
        .await
    {
        Err(EngineError::Refused {
            refusal,
            intervention: Some(record),
        }) => {
            assert_eq!(refusal.kind, RefusalKind::Invalid, "{refusal}");
            assert_eq!(record.user, "bob");
        }
        other => panic!("expected a recorded refusal, got {other:?}"),
    }

    // A checkpoint taken through B is A's.
    let cp = b
        .create_checkpoint("fw", Some("mid".into()), "bob", None)
        .await
        .unwrap();
    assert_eq!(cp.label.as_deref(), Some("mid"));
    assert_eq!(cp.plan_id, "fw");

    // Pause: B answers the state A committed with the pause (the interrupted attempt's
    // report may follow it).
    let paused = b
        .pause("fw", PauseMode::Immediate, None, "bob", None)
        .await
        .unwrap();
    assert_eq!(paused.status, PlanStatus::Paused);
    let log = c
        .store
        .read_events("fw", 0, Some(paused.seq), 1000)
        .await
        .unwrap();
    assert_eq!(log.len() as u64, paused.seq);
    assert!(
        log.iter()
            .any(|e| e.kind == "plan_paused" && e.actor == "bob"),
        "{:?}",
        log.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );

    // Restore and fork from the checkpoint, through B.
    let restored = b
        .restore("fw", &cp.checkpoint_id, "bob", Some("back".into()))
        .await
        .unwrap();
    assert_eq!(restored.status, PlanStatus::Paused);
    let forked = b
        .fork("fw", &cp.checkpoint_id, Some("fw-fork".into()), "bob", None)
        .await
        .unwrap();
    assert_eq!(forked.plan_id, "fw-fork");
    assert!(b.state("fw-fork").await.is_ok());

    // Delete, through B, a plan A has loaded: A deletes it, and its actor goes with it.
    a.create_checkpoint("fw-fork", None, "ann", None)
        .await
        .unwrap();
    assert_eq!(c.owner("fw-fork").await.as_deref(), Some("a"));
    b.delete("fw-fork").await.unwrap();
    assert!(matches!(
        a.state("fw-fork").await,
        Err(EngineError::PlanNotFound(_))
    ));
    assert!(matches!(
        b.delete("fw-fork").await,
        Err(EngineError::PlanNotFound(_))
    ));

    // Resume, then cancel, through B.
    let resumed = b.resume("fw", "bob", None).await.unwrap();
    assert_eq!(resumed.status, PlanStatus::Running);
    // A running plan is not deleted; the owner's refusal keeps its kind.
    let e = b.delete("fw").await.unwrap_err();
    assert_eq!(e.refusal_kind(), Some(RefusalKind::Conflict), "{e}");
    let cancelled = b.cancel("fw", "bob", Some("done".into())).await.unwrap();
    assert_eq!(cancelled.status, PlanStatus::Cancelled);
    assert_eq!(cancelled.steps[2].rec.status, StepStatus::Skipped);

    // Errors keep their kind too.
    match b.checkpoint("fw", "cp-999999").await {
        Err(EngineError::CheckpointNotFound { .. }) => {}
        other => panic!("expected CheckpointNotFound, got {other:?}"),
    }
    assert!(b.node_stats().forwarded_total >= 10, "{:?}", b.node_stats());
    assert_eq!(b.node_stats().takeovers_total, 0);
    // Nothing B asked was carried out by B: every seq is A's, in order.
    assert_no_seq_gap(&*c.store, "fw").await;
    latch::release(&held);
}

on_both_stores!(a_remote_workers_claim_and_report_reach_the_owner_through_any_node);

async fn a_remote_workers_claim_and_report_reach_the_owner_through_any_node(c: Cluster) {
    let q = RemoteQueue::new(30_000);
    let a = c
        .node_with("a", 30_000, |o| o.remote = Some(q.clone()))
        .await;
    let b = c.node("b", 30_000).await;
    a.register(
        plan("plan_id: rw\nsteps:\n  - {step_id: r, action: search, agent_type: research}\n"),
        "ann",
    )
    .await
    .unwrap();
    a.start("rw", "ann", None).await.unwrap();
    let lease = within(
        "a queued task",
        q.poll("w1", &["research".to_owned()], Duration::from_secs(30)),
    )
    .await
    .expect("a task");
    assert_eq!(lease.task.plan_id, "rw");

    let claimed = b.claim("rw", "r", 1, "w1", "w1").await.unwrap();
    assert_eq!(claimed.steps[0].rec.status, StepStatus::Running);
    // A second claim of the same attempt is refused by the owner, as a conflict.
    let e = b.claim("rw", "r", 1, "w2", "w2").await.unwrap_err();
    assert_eq!(e.refusal_kind(), Some(RefusalKind::Conflict), "{e}");

    b.report_outcome(
        "rw",
        "r",
        1,
        StepResult::Completed {
            output: json!({"found": 2}),
            scores: None,
        },
    )
    .await
    .unwrap();
    let done = settled(&a, "rw").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.output, Some(json!({"found": 2})));
    assert_eq!(b.node_stats().leases_held, 0);
    // The plan was driven by A throughout: its lease (released or not yet, as the ended plan's
    // actor unloads at its own pace) was never B's.
    let last = c.store.lease("rw").await.unwrap().map(|l| l.owner);
    assert_eq!(last.as_deref(), Some("a"));
}

on_both_stores!(
    a_dead_nodes_plans_are_taken_over_and_finish_without_running_a_completed_step_again
);

async fn a_dead_nodes_plans_are_taken_over_and_finish_without_running_a_completed_step_again(
    c: Cluster,
) {
    const LEASE: u64 = 300;
    let a = c.node("a", LEASE).await;
    let b = c.node("b", LEASE).await;
    let ids: Vec<String> = (0..3).map(|i| format!("to-{i}")).collect();
    for id in &ids {
        a.register(
            plan(&format!(
                "plan_id: {id}\nsteps:\n  - {{step_id: s1, action: x, agent_type: count}}\n  - {{step_id: s2, action: x, agent_type: count, params: {{latch: {}}}}}\n  - {{step_id: s3, action: x, agent_type: count}}\n",
                c.latch(&format!("{id}-2"))
            )),
            "ann",
        )
        .await
        .unwrap();
        a.start(id, "ann", None).await.unwrap();
    }
    for id in &ids {
        within("s2 to hold", latch::held(&c.latch(&format!("{id}-2")))).await;
        assert_eq!(c.owner(id).await.as_deref(), Some("a"));
    }
    // A dies: unreachable, its actors gone, its leases left to run out.
    c.kill("a").await;
    drop(a);
    for id in &ids {
        wait_event(&b, id, |e| {
            matches!(e.kind, EventKind::StepRecovered { .. })
        })
        .await;
        latch::release(&c.latch(&format!("{id}-2")));
    }
    for id in &ids {
        let done = settled(&b, id).await;
        assert_eq!(done.status, PlanStatus::Completed, "{id}");
        assert_eq!(done.steps[1].rec.output, Some(json!({"node": "b"})));
        // s1 completed on A and never ran again; s2 ran again on B with the same key; s3 ran
        // on B only.
        assert_eq!(c.starts_of(&format!("{id}/s1/1")), ["a"]);
        assert_eq!(c.starts_of(&format!("{id}/s2/1")), ["a", "b"]);
        assert_eq!(c.starts_of(&format!("{id}/s3/1")), ["b"]);
        assert_no_seq_gap(&*c.store, id).await;
    }
    assert_eq!(b.node_stats().takeovers_total, 3, "{:?}", b.node_stats());
}

on_both_stores!(a_command_for_a_dead_nodes_plan_waits_for_its_lease_and_is_carried_out_here);

async fn a_command_for_a_dead_nodes_plan_waits_for_its_lease_and_is_carried_out_here(c: Cluster) {
    command_after_owner_stops(c, "dn", true).await;
}

on_both_stores!(a_command_for_a_plan_whose_node_shut_down_is_carried_out_here);

async fn a_command_for_a_plan_whose_node_shut_down_is_carried_out_here(c: Cluster) {
    command_after_owner_stops(c, "sd", false).await;
}

/// A drives plan `id` and stops: killed (`dead`: unreachable) or shut down (still answering,
/// "shutting down"). B is then sent a command for the plan.
async fn command_after_owner_stops(c: Cluster, id: &str, dead: bool) {
    const LEASE: u64 = 300;
    let held = c.latch(&format!("{id}-1"));
    let a = c.node("a", LEASE).await;
    // B takes nothing over by itself: the command it is sent claims the plan.
    let b = c.node_with("b", LEASE, |o| o.recover = false).await;
    a.register(
        plan(&format!("plan_id: {id}\nsteps:\n  - {{step_id: s1, action: x, agent_type: count, params: {{latch: {held}}}}}\n")),
        "ann",
    )
    .await
    .unwrap();
    a.start(id, "ann", None).await.unwrap();
    within("s1 to hold", latch::held(&held)).await;
    if dead {
        c.kill("a").await;
    } else {
        a.shutdown().await;
    }
    drop(a);
    // B's pause meets A's live lease, gets no answer from A, waits the lease out, claims the
    // plan, recovers it (s1 runs again here) and pauses it.
    let paused = within(
        "the pause to be carried out",
        b.pause(id, PauseMode::Boundary, None, "bob", None),
    )
    .await
    .unwrap();
    assert_eq!(paused.status, PlanStatus::Paused);
    assert_eq!(c.owner(id).await.as_deref(), Some("b"));
    assert!(b.node_stats().forward_failures_total >= 1);
    latch::release(&held);
    let done = settled(&b, id).await;
    assert_eq!(done.status, PlanStatus::Paused);
    assert_eq!(done.steps[0].rec.output, Some(json!({"node": "b"})));
    assert_eq!(c.starts_of(&format!("{id}/s1/1")), ["a", "b"]);
    assert_no_seq_gap(&*c.store, id).await;
}

/// A node on a tokio runtime of its own (one thread) that the test can freeze: a node that
/// hangs (a stop-the-world pause, a stuck host) while the others go on. Its engine's tasks run
/// on that runtime as long as its entry points are called there ([`Hangable::on`]).
struct Hangable {
    engine: Engine,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    async fn hangable_node(&self, id: &str, lease_ms: u64) -> Hangable {
        let registry = self.registry_for(id);
        let opts = self.options_for(id, lease_ms);
        let store = match &self.backend {
            Backend::Sqlite(_) => Ok(self.store.clone()),
            Backend::Postgres(url, schema) => Err((url.clone(), schema.clone())),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // A PostgreSQL node's connections live on its runtime too.
                let store = match store {
                    Ok(store) => store,
                    Err((url, schema)) => postgres_store(&url, &schema).await,
                };
                let engine = Engine::open(store, registry, opts).await.unwrap();
                let _ = ready_tx.send((engine, tokio::runtime::Handle::current()));
                let _ = stopped.await;
            });
        });
        let (engine, handle) = within("the node to open", ready_rx).await.unwrap();
        self.peers
            .nodes
            .lock()
            .unwrap()
            .insert(id.to_owned(), engine.clone());
        Hangable {
            engine,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Hangable {
    /// Runs `f` with the node's engine on the node's runtime.
    async fn on<T: Send + 'static, F>(&self, f: impl FnOnce(Engine) -> F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let run = self.handle.spawn(f(self.engine.clone()));
        within("a call on the hangable node", run).await.unwrap()
    }

    /// Freezes the node's runtime (its one thread blocks) until the returned sender is dropped.
    async fn freeze(&self) -> std::sync::mpsc::Sender<()> {
        let (thaw, frozen) = std::sync::mpsc::channel::<()>();
        let (ack, acked) = tokio::sync::oneshot::channel();
        self.handle.spawn(async move {
            let _ = ack.send(());
            let _ = frozen.recv();
        });
        within("the node to freeze", acked).await.unwrap();
        thaw
    }
}

impl Drop for Hangable {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

on_both_stores!(a_hung_owner_is_fenced_and_appends_nothing_after_a_takeover);

async fn a_hung_owner_is_fenced_and_appends_nothing_after_a_takeover(c: Cluster) {
    const LEASE: u64 = 300;
    let a = c.hangable_node("a", LEASE).await;
    let held = c.latch("fe-1");
    let yaml = format!(
        "plan_id: fe\nsteps:\n  - {{step_id: s1, action: x, agent_type: count, params: {{latch: {held}}}}}\n"
    );
    a.on(move |a| async move {
        a.register(plan(&yaml), "ann").await.unwrap();
        a.start("fe", "ann", None).await.unwrap();
    })
    .await;
    within("s1 to hold on A", latch::held(&held)).await;
    assert_eq!(c.owner("fe").await.as_deref(), Some("a"));
    // A hangs: it renews nothing, and its lease runs out. B takes the plan over.
    let thaw = a.freeze().await;
    let before = c
        .store
        .read_events("fe", 0, None, 1000)
        .await
        .unwrap()
        .len();
    let b = c.node("b", LEASE).await;
    wait_event(&b, "fe", |e| {
        matches!(e.kind, EventKind::StepRecovered { .. })
    })
    .await;
    assert_eq!(c.owner("fe").await.as_deref(), Some("b"));
    // Both attempts are let go, then A wakes up: its actor has an outcome to record and a lease
    // to renew, and may do neither.
    latch::release(&held);
    drop(thaw);
    let done = settled(&b, "fe").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.output, Some(json!({"node": "b"})));
    within("A's actor to stop", async {
        while a.engine.node_stats().leases_held > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let events = c.store.read_events("fe", 0, None, 1000).await.unwrap();
    assert!(events.len() > before);
    for e in &events[before..] {
        assert!(
            !e.data.contains(r#""node":"a""#),
            "A appended after the takeover: {} {}",
            e.kind,
            e.data
        );
    }
    assert_no_seq_gap(&*c.store, "fe").await;
    assert_eq!(c.starts_of("fe/s1/1"), ["a", "b"]);
}

on_both_stores!(an_owner_whose_lease_moved_stops_at_its_next_renewal_with_no_append);

/// The node's renewal, not an append, tells an actor that its lease moved: the lease of a plan
/// A drives (a step held open, so A has nothing to append) is released under A's fence and
/// taken by another node; A's next renewal leaves it out, and A stops driving the plan (its
/// attempt stopped) without writing anything.
async fn an_owner_whose_lease_moved_stops_at_its_next_renewal_with_no_append(c: Cluster) {
    const LEASE: u64 = 600;
    let a = c.node("a", LEASE).await;
    let held = c.latch("lm-1");
    let yaml = format!(
        "plan_id: lm\nsteps:\n  - {{step_id: s1, action: x, agent_type: count, params: {{latch: {held}}}}}\n"
    );
    a.register(plan(&yaml), "ann").await.unwrap();
    a.start("lm", "ann", None).await.unwrap();
    within("s1 to hold on A", latch::held(&held)).await;
    assert_eq!(a.node_stats().leases_held, 1);
    let lease = c.store.lease("lm").await.unwrap().expect("A's lease");
    assert_eq!(lease.owner, "a");
    let before = c.store.read_events("lm", 0, None, 1000).await.unwrap();
    // The lease moves under A: released with A's own fence, then claimed by node x.
    let fence = cairn_store::Fence {
        node: "a".into(),
        token: lease.token,
    };
    c.store.release("lm", &fence).await.unwrap();
    let x = c
        .store
        .claim("lm", "x", 60_000, cairn_engine::now_micros())
        .await
        .unwrap();
    assert!(x.token > lease.token);
    within("A's actor to stop at its next renewal", async {
        while a.node_stats().leases_held > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    latch::release(&held);
    // A's actor is gone, having renewed nothing of x's and written nothing: the lease and the
    // log are as x found them.
    let lease = c.store.lease("lm").await.unwrap().unwrap();
    assert_eq!((lease.owner.as_str(), lease.token), ("x", x.token));
    let after = c.store.read_events("lm", 0, None, 1000).await.unwrap();
    assert_eq!(
        after.len(),
        before.len(),
        "A appended after its lease moved"
    );
    assert_eq!(c.starts_of("lm/s1/1"), ["a"]);
}

on_both_stores!(every_subscriber_of_every_node_sees_every_nodes_events_in_id_order);

async fn every_subscriber_of_every_node_sees_every_nodes_events_in_id_order(c: Cluster) {
    let a = c.node("a", 30_000).await;
    let b = c.node("b", 30_000).await;
    let mut subs = [a.subscribe(None), b.subscribe(None), a.subscribe(None)];
    let steps = "steps:\n  - {step_id: s1, action: x, agent_type: builtin.echo}\n  - {step_id: s2, action: x, agent_type: builtin.echo}\n  - {step_id: s3, action: x, agent_type: builtin.echo}\n";
    let mut runs = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let yaml = format!("plan_id: pub-{i}\n{steps}");
        runs.push(tokio::spawn(async move {
            let id = format!("pub-{i}");
            node.register(plan(&yaml), "ann").await.unwrap();
            node.start(&id, "ann", None).await.unwrap();
            settled(&node, &id).await;
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
    let all = c.store.read_all_events(0, 100_000).await.unwrap();
    let want: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert!(want.len() >= 8 * 5, "{} events", want.len());
    for (n, sub) in subs.iter_mut().enumerate() {
        let mut got = Vec::with_capacity(want.len());
        within(&format!("subscriber {n} to see every event"), async {
            while got.len() < want.len() {
                match sub.next().await.expect("the engine is gone") {
                    Notice::Event(e) => got.push(e.id),
                    Notice::Lagged { .. } => panic!("subscriber {n} lagged"),
                }
            }
        })
        .await;
        assert_eq!(got, want, "subscriber {n}");
    }
    // Every message posted to an actor was taken.
    assert_eq!(a.node_stats().inbox_depth, 0, "{:?}", a.node_stats());
    assert_eq!(b.node_stats().inbox_depth, 0, "{:?}", b.node_stats());
}

/// The ids `sub` yields until it yields `last`.
async fn ids_until(sub: &mut cairn_engine::Subscription, what: &str, last: u64) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    within(what, async {
        while got.last().is_none_or(|id| *id < last) {
            match sub.next().await.expect("the engine is gone") {
                Notice::Event(e) => got.push(e.id),
                Notice::Lagged { .. } => panic!("{what}: lagged"),
            }
        }
    })
    .await;
    got
}

on_both_stores!(a_node_nobody_watched_serves_a_new_subscriber_every_event_from_then_on);

/// A node whose ordered stream nobody follows reads none of the other nodes' events; a
/// subscriber that arrives then still gets, in id order and with no gap, every event committed
/// after it subscribed (node `a`'s and `b`'s), and a subscriber resuming from id 0 gets the whole
/// log. The local stream of `b` carries exactly the events `b` committed, whoever watches.
async fn a_node_nobody_watched_serves_a_new_subscriber_every_event_from_then_on(c: Cluster) {
    let a = c.node("a", 30_000).await;
    let b = c.node("b", 30_000).await;
    let mut local_b = b.subscribe_local();
    let steps = "steps:\n  - {step_id: s1, action: x, agent_type: builtin.echo}\n  - {step_id: s2, action: x, agent_type: builtin.echo}\n";
    // Plans on both nodes while nobody follows `b`'s ordered stream: they are registered and
    // started on their node and waited for on `a`, whose stream carries them all.
    let run = |phase: &'static str, waiter: Engine| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let mut runs = Vec::new();
            for i in 0..6 {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                let waiter = waiter.clone();
                let id = format!("{phase}-{i}");
                let yaml = format!("plan_id: {id}\n{steps}");
                runs.push(tokio::spawn(async move {
                    node.register(plan(&yaml), "ann").await.unwrap();
                    node.start(&id, "ann", None).await.unwrap();
                    settled(&waiter, &id).await;
                }));
            }
            for r in runs {
                r.await.unwrap();
            }
        }
    };
    run("rest", a.clone()).await;
    let mut live = b.subscribe(None);
    run("watched", b.clone()).await;
    let mut resumed = b.subscribe(Some(0));

    let all = c.store.read_all_events(0, 100_000).await.unwrap();
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    let first_watched = all
        .iter()
        .filter(|e| e.plan_id.starts_with("watched-"))
        .map(|e| e.id)
        .min()
        .expect("events of the watched phase");
    let last = *ids.last().unwrap();
    let got = ids_until(&mut live, "the live subscriber of b", last).await;
    // A suffix of the log: nothing skipped, nothing repeated, every watched event in it (a
    // few events from before it subscribed may come first).
    let from = ids
        .iter()
        .position(|id| *id == got[0])
        .expect("a stored id");
    assert_eq!(got, ids[from..], "the live subscriber of b");
    assert!(got[0] <= first_watched, "{} > {first_watched}", got[0]);
    let got = ids_until(&mut resumed, "the subscriber of b resuming from 0", last).await;
    assert_eq!(got, ids, "the subscriber of b resuming from 0");

    // `b`'s own events: those of the plans it registered and drove (the odd ones), as each
    // plan's commits finished.
    let mine: Vec<(String, u64)> = all
        .iter()
        .filter(|e| e.plan_id.ends_with(['1', '3', '5']))
        .map(|e| (e.plan_id.clone(), e.seq))
        .collect();
    let mut got = Vec::new();
    within("b's local stream", async {
        while got.len() < mine.len() {
            match local_b.next().await.expect("the engine is gone") {
                Notice::Event(e) => got.push((e.plan_id.clone(), e.seq)),
                Notice::Lagged { .. } => panic!("b's local stream lagged"),
            }
        }
    })
    .await;
    for plan_id in mine.iter().map(|(p, _)| p).collect::<HashSet<_>>() {
        let of = |v: &[(String, u64)]| -> Vec<u64> {
            v.iter()
                .filter(|(p, _)| p == plan_id)
                .map(|(_, s)| *s)
                .collect()
        };
        assert_eq!(of(&got), of(&mine), "plan {plan_id} on b's local stream");
    }
    assert_eq!(got.len(), mine.len());
}

on_both_stores!(every_node_heartbeats_with_its_address_and_the_plans_it_owns);

async fn every_node_heartbeats_with_its_address_and_the_plans_it_owns(c: Cluster) {
    const LEASE: u64 = 300;
    let a = c
        .node_with("a", LEASE, |o| {
            o.advertise = Some("http://127.0.0.1:7001".into())
        })
        .await;
    let _b = c.node("b", LEASE).await;
    // The first heartbeat is recorded before `open` returns.
    let nodes = c.store.list_nodes().await.unwrap();
    let first = nodes
        .iter()
        .find(|n| n.node_id == "a")
        .expect("node a")
        .clone();
    assert_eq!(first.address.as_deref(), Some("http://127.0.0.1:7001"));
    assert!(nodes.iter().any(|n| n.node_id == "b"), "{nodes:?}");

    let held = c.latch("hb-1");
    a.register(
        plan(&format!("plan_id: hb\nsteps:\n  - {{step_id: s1, action: x, agent_type: count, params: {{latch: {held}}}}}\n")),
        "ann",
    )
    .await
    .unwrap();
    a.start("hb", "ann", None).await.unwrap();
    within("s1 to hold", latch::held(&held)).await;
    assert_eq!(a.node_stats().leases_held, 1);
    // Later heartbeats move on; the plan A drives is counted as its own.
    within("a later heartbeat", async {
        loop {
            let nodes = c.store.list_nodes().await.unwrap();
            let now = nodes.iter().find(|n| n.node_id == "a").expect("node a");
            if now.heartbeat_at > first.heartbeat_at {
                assert_eq!(now.started_at, first.started_at);
                assert_eq!(
                    now.address, first.address,
                    "later heartbeats keep the address"
                );
                assert_eq!(now.plans_owned, 1, "{now:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    latch::release(&held);
    settled(&a, "hb").await;
}

on_both_stores!(a_node_sharing_its_store_starts_a_plan_it_registered_without_reading_it_back);

/// A node sharing its store starts a plan it registered moments ago from the state its
/// registration decided, without reading the plan back; but not once another node deleted the
/// plan and registered a new one under the same id meanwhile (whose lease's first claim looks
/// just like the old one's): the claim shows another first event, so the node reads the new
/// plan back and runs the new definition.
async fn a_node_sharing_its_store_starts_a_plan_it_registered_without_reading_it_back(c: Cluster) {
    // Registered states kept for as long as the test may take, however slow the machine.
    let a = c
        .node_with("a", 30_000, |o| o.idle_unload_ms = 600_000)
        .await;
    let b = c.node("b", 30_000).await;
    let yaml = |id: &str, agent: &str| {
        format!("plan_id: {id}\nsteps:\n  - {{step_id: s1, action: x, agent_type: {agent}}}\n")
    };
    let loads = |e: &Engine| e.node_stats().plan_loads_total;

    a.register(plan(&yaml("kept", "builtin.echo")), "ann")
        .await
        .unwrap();
    a.start("kept", "ann", None).await.unwrap();
    assert_eq!(settled(&a, "kept").await.status, PlanStatus::Completed);
    assert_eq!(loads(&a), 0, "a read back the plan it had just registered");
    assert_no_seq_gap(&*c.store, "kept").await;

    a.register(plan(&yaml("again", "builtin.echo")), "ann")
        .await
        .unwrap();
    // b deletes it and registers a new plan under the same id, whose step fails.
    b.delete("again").await.unwrap();
    b.register(plan(&yaml("again", "builtin.fail")), "bob")
        .await
        .unwrap();
    a.start("again", "ann", None).await.unwrap();
    let done = settled(&a, "again").await;
    assert_eq!(
        done.status,
        PlanStatus::Failed,
        "ran the deleted plan's definition"
    );
    assert_eq!(
        loads(&a),
        1,
        "a started from the state of its own registration"
    );
    assert_eq!(loads(&b), 0, "b drove a plan it should not have");
    assert_no_seq_gap(&*c.store, "again").await;
}
