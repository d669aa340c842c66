//! No outcome is lost when the store fails to write: the real SQLite store, wrapped in a store
//! that fails chosen appends (the Nth, every other one, a burst with failing reads after it, or
//! those that carry a given event kind), under plans with many parallel steps. (`Faulty` also
//! serves other modules: `ForkFenced` has the store itself refuse a fork's second half.) Every attempt's
//! outcome must end durable, every plan must reach its end, and the log must have no seq gap,
//! all checked in the store's own log, not in the engine's memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{Format, Plan, PlanStatus};
use cairn_engine::executor::{ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::{Engine, EngineError, EngineOptions};
use cairn_store::{
    Append, CheckpointRow, CreatePlan, Cursors, EventLog, Fence, LeaseRow, Leases, Micros, NodeRow,
    Nodes, OpenReviews, Page, PlanIndex, PlanRow, ReviewRow, Snapshots, StoreError, StoreResult,
    StoreStats, StoredEvent, TemplateRow, Templates, TokenRow, Tokens,
};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

/// Which appends fail.
#[derive(Clone, Debug)]
pub(crate) enum Rule {
    /// The appends with these (1-based) numbers.
    Nth(Vec<usize>),
    /// Every second append, until `until` appends were seen.
    EveryOther { until: usize },
    /// Appends `from..from + len`; after each, the next `reads` log reads fail too, so the
    /// actor's reload fails and it must wait, stale, until one succeeds.
    Burst {
        from: usize,
        len: usize,
        reads: usize,
    },
    /// The first `times` appends that carry an event of this kind.
    Kind { kind: &'static str, times: usize },
    /// Every append, and every log read, while the switch is on (a store that is down).
    Down(Arc<AtomicBool>),
    /// While the switch is on, the append half of a `create_plan_with` (a fork) carries a
    /// fence no node holds, so the store itself refuses it after running the create half in
    /// the same request. Plain appends never fail.
    ForkFenced(Arc<AtomicBool>),
    /// Every other one of the first `times` appends that carry an event of this kind is
    /// refused with a seq conflict (what an append answers when another actor committed first),
    /// so the batch decided once more after it is usually committed.
    Conflict { kind: &'static str, times: usize },
}

/// The real store, failing the appends its rule picks with `Unavailable` (what a full disk
/// answers), or with a seq conflict for [`Rule::Conflict`]. Everything else is delegated
/// unchanged.
pub(crate) struct Faulty {
    inner: Arc<SqliteStore>,
    rule: Rule,
    appends: AtomicUsize,
    /// How many appends carrying the rule's kind were seen.
    kind_seen: AtomicUsize,
    injected: AtomicUsize,
    reads_to_fail: AtomicUsize,
    failed_reads: AtomicUsize,
    log: Mutex<Vec<String>>,
}

impl Faulty {
    pub(crate) fn new(inner: Arc<SqliteStore>, rule: Rule) -> Faulty {
        Faulty {
            inner,
            rule,
            appends: AtomicUsize::new(0),
            kind_seen: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            reads_to_fail: AtomicUsize::new(0),
            failed_reads: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        }
    }

    fn fails(&self, req: &Append) -> bool {
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        match &self.rule {
            Rule::Nth(which) => which.contains(&n),
            Rule::EveryOther { until } => n <= *until && n.is_multiple_of(2),
            Rule::Burst { from, len, reads } => {
                let hit = (*from..from + len).contains(&n);
                if hit {
                    self.reads_to_fail.store(*reads, Ordering::SeqCst);
                }
                hit
            }
            Rule::Kind { kind, times } => {
                req.events.iter().any(|e| e.kind == *kind)
                    && self.kind_seen.fetch_add(1, Ordering::SeqCst) < *times
            }
            Rule::Conflict { kind, times } => {
                req.events.iter().any(|e| e.kind == *kind) && {
                    let seen = self.kind_seen.fetch_add(1, Ordering::SeqCst);
                    seen < *times && seen.is_multiple_of(2)
                }
            }
            Rule::Down(down) => down.load(Ordering::SeqCst),
            Rule::ForkFenced(_) => false,
        }
    }

    fn read_fails(&self) -> bool {
        if let Rule::Down(down) = &self.rule {
            let failed = down.load(Ordering::SeqCst);
            if failed {
                self.failed_reads.fetch_add(1, Ordering::SeqCst);
            }
            return failed;
        }
        let failed = self
            .reads_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            self.failed_reads.fetch_add(1, Ordering::SeqCst);
        }
        failed
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::Unavailable(format!("injected failure of {what}"))
}

#[async_trait]
impl EventLog for Faulty {
    async fn create_plan(&self, req: CreatePlan) -> StoreResult<Vec<StoredEvent>> {
        self.inner.create_plan(req).await
    }

    async fn append(&self, req: Append) -> StoreResult<Vec<StoredEvent>> {
        if self.fails(&req) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let kinds: Vec<&str> = req.events.iter().map(|e| e.kind.as_str()).collect();
            self.log.lock().unwrap().push(format!(
                "{} after {}: {kinds:?}",
                req.plan_id, req.expected_seq
            ));
            if let Rule::Conflict { .. } = self.rule {
                return Err(StoreError::SeqConflict {
                    plan_id: req.plan_id,
                    expected: req.expected_seq,
                    actual: req.expected_seq,
                });
            }
            return Err(injected("an append"));
        }
        self.inner.append(req).await
    }

    async fn create_plan_with(
        &self,
        create: CreatePlan,
        mut append: Append,
    ) -> StoreResult<(Vec<StoredEvent>, Vec<StoredEvent>)> {
        if let Rule::ForkFenced(on) = &self.rule {
            if on.load(Ordering::SeqCst) {
                self.injected.fetch_add(1, Ordering::SeqCst);
                append.fence = Some(Fence {
                    node: "nobody".into(),
                    token: u64::MAX,
                });
            }
        }
        if self.fails(&append) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected("a fork's append"));
        }
        self.inner.create_plan_with(create, append).await
    }

    async fn read_events(
        &self,
        plan_id: &str,
        after_seq: u64,
        until_seq: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        if self.read_fails() {
            return Err(injected("a read"));
        }
        self.inner
            .read_events(plan_id, after_seq, until_seq, limit)
            .await
    }

    async fn read_events_of_kind(
        &self,
        plan_id: &str,
        kinds: &[&str],
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.inner
            .read_events_of_kind(plan_id, kinds, after_seq, limit)
            .await
    }

    async fn read_all_events(&self, after_id: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.inner.read_all_events(after_id, limit).await
    }

    async fn last_event_id(&self) -> StoreResult<u64> {
        self.inner.last_event_id().await
    }

    async fn list_checkpoints(
        &self,
        plan_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<CheckpointRow>> {
        self.inner.list_checkpoints(plan_id, after_seq, limit).await
    }

    async fn get_checkpoint(&self, plan_id: &str, seq: u64) -> StoreResult<Option<CheckpointRow>> {
        self.inner.get_checkpoint(plan_id, seq).await
    }

    async fn delete_plan(&self, plan_id: &str) -> StoreResult<bool> {
        self.inner.delete_plan(plan_id).await
    }

    fn stats(&self) -> Option<StoreStats> {
        EventLog::stats(&*self.inner)
    }

    fn unavailable(&self) -> Option<String> {
        self.inner.unavailable()
    }

    fn commit_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.inner.commit_hint()
    }

    fn want_commit_hints(&self, on: bool) {
        self.inner.want_commit_hints(on);
    }
}

#[async_trait]
impl PlanIndex for Faulty {
    async fn get_plan(&self, plan_id: &str) -> StoreResult<Option<PlanRow>> {
        self.inner.get_plan(plan_id).await
    }

    async fn list_plans(
        &self,
        state: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<PlanRow>> {
        self.inner.list_plans(state, limit, cursor).await
    }

    async fn plans_in_states(&self, states: &[&str]) -> StoreResult<Vec<String>> {
        self.inner.plans_in_states(states).await
    }

    async fn count_plans_by_state(&self) -> StoreResult<Vec<(String, u64)>> {
        self.inner.count_plans_by_state().await
    }

    async fn list_reviews(
        &self,
        state: Option<&str>,
        plan_id: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<ReviewRow>> {
        self.inner.list_reviews(state, plan_id, limit, cursor).await
    }

    async fn open_reviews(&self) -> StoreResult<OpenReviews> {
        self.inner.open_reviews().await
    }
}

#[async_trait]
impl Leases for Faulty {
    async fn claim(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Fence> {
        self.inner.claim(plan_id, node, ttl_ms, now).await
    }

    async fn claim_incarnation(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<(Fence, Option<u64>)> {
        self.inner
            .claim_incarnation(plan_id, node, ttl_ms, now)
            .await
    }

    async fn release(&self, plan_id: &str, fence: &Fence) -> StoreResult<()> {
        self.inner.release(plan_id, fence).await
    }

    async fn lease(&self, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
        self.inner.lease(plan_id).await
    }

    async fn take_over(
        &self,
        node: &str,
        ttl_ms: u64,
        states: &[&str],
        limit: usize,
        now: Micros,
    ) -> StoreResult<Vec<(String, Fence)>> {
        self.inner.take_over(node, ttl_ms, states, limit, now).await
    }
}

#[async_trait]
impl Snapshots for Faulty {
    async fn put_snapshot(&self, plan_id: &str, seq: u64, data: Vec<u8>) -> StoreResult<()> {
        self.inner.put_snapshot(plan_id, seq, data).await
    }

    async fn get_snapshot(
        &self,
        plan_id: &str,
        at_or_before: u64,
    ) -> StoreResult<Option<(u64, Vec<u8>)>> {
        if self.read_fails() {
            return Err(injected("a snapshot read"));
        }
        self.inner.get_snapshot(plan_id, at_or_before).await
    }
}

#[async_trait]
impl Tokens for Faulty {
    async fn create_token(&self, token: TokenRow) -> StoreResult<()> {
        self.inner.create_token(token).await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRow>> {
        self.inner.list_tokens().await
    }

    async fn revoke_token(&self, id: &str, at: Micros) -> StoreResult<bool> {
        self.inner.revoke_token(id, at).await
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        self.inner.token_by_hash(hash).await
    }
}

#[async_trait]
impl Cursors for Faulty {
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>> {
        self.inner.get_cursor(name).await
    }

    async fn set_cursor(&self, name: &str, value: u64) -> StoreResult<()> {
        self.inner.set_cursor(name, value).await
    }

    async fn lease_cursor(&self, name: &str, node: &str, ttl_ms: u64) -> StoreResult<bool> {
        self.inner.lease_cursor(name, node, ttl_ms).await
    }
}

#[async_trait]
impl Nodes for Faulty {
    async fn heartbeat(
        &self,
        node_id: &str,
        address: Option<&str>,
        started_at: Micros,
    ) -> StoreResult<()> {
        self.inner.heartbeat(node_id, address, started_at).await
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRow>> {
        self.inner.list_nodes().await
    }

    async fn cluster_secret(&self) -> StoreResult<String> {
        self.inner.cluster_secret().await
    }
}

#[async_trait]
impl Templates for Faulty {
    async fn put_template_version(
        &self,
        new: cairn_store::NewTemplateVersion,
    ) -> StoreResult<(TemplateRow, bool)> {
        self.inner.put_template_version(new).await
    }

    async fn get_template(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<TemplateRow>> {
        self.inner.get_template(name, version).await
    }

    async fn list_templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<TemplateRow>> {
        self.inner.list_templates(limit, cursor).await
    }

    async fn template_versions(&self, name: &str) -> StoreResult<Vec<TemplateRow>> {
        self.inner.template_versions(name).await
    }

    async fn delete_template(&self, name: &str, at: Micros) -> StoreResult<bool> {
        self.inner.delete_template(name, at).await
    }
}

/// An agent that answers at once; a step with `flaky: true` fails its first attempt
/// retryably, so failures are recorded (and retried) under the faults too.
struct Work;

#[async_trait]
impl Executor for Work {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        tokio::task::yield_now().await;
        if task.params.get("flaky") == Some(&Value::Bool(true)) && task.attempt == 1 {
            return Err(ExecError::retryable("flaky on its first attempt"));
        }
        Ok(ExecOutput {
            output: json!({"step": task.step_id, "attempt": task.attempt}),
            scores: None,
        })
    }
}

const PLANS: usize = 4;
const STEPS: usize = 12;
/// Every test's bound: a regression fails here instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

fn plan(plan_id: &str) -> Plan {
    let steps: String = (0..STEPS)
        .map(|i| {
            format!(
                "  - {{step_id: s{i}, action: x, agent_type: work, depends_on: [], params: {{flaky: {}}}, retry: {{max_attempts: 3, backoff_ms: 1}}}}\n",
                i % 3 == 0
            )
        })
        .collect();
    Plan::parse(
        &format!("plan_id: {plan_id}\nmax_parallel: {STEPS}\nsteps:\n{steps}"),
        Format::Yaml,
    )
    .unwrap()
}

/// Runs `PLANS` plans of `STEPS` parallel steps over a store failing by `rule`, then checks
/// the store's log.
async fn runs_every_plan_to_its_end_under(rule: Rule) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
    );
    let faulty = Arc::new(Faulty::new(sqlite.clone(), rule.clone()));
    let registry = Registry::with_builtins();
    registry.register("work", Arc::new(Work));
    let engine = Engine::open(faulty.clone(), registry, EngineOptions::default())
        .await
        .unwrap();
    let ids: Vec<String> = (0..PLANS).map(|i| format!("p{i}")).collect();
    tokio::time::timeout(DEADLINE, async {
        for id in &ids {
            engine.register(plan(id), "tester").await.unwrap();
        }
        for id in &ids {
            // A start whose append was refused is answered with the store's error: the
            // caller tries again, as a client would.
            loop {
                match engine.start(id, "tester", None).await {
                    Ok(_) => break,
                    Err(EngineError::StorageUnavailable(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("start {id}: {e}"),
                }
            }
        }
        for id in &ids {
            wait_completed(&engine, id).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the plans did not end within {DEADLINE:?} under {rule:?}; failed appends: {:#?}",
            faulty.log.lock().unwrap()
        )
    });
    let injected = faulty.injected.load(Ordering::SeqCst);
    assert!(injected > 0, "{rule:?} injected no failure");
    if let Rule::Burst { .. } = rule {
        assert!(
            faulty.failed_reads.load(Ordering::SeqCst) > 0,
            "no reload met a failing read"
        );
    }
    engine.shutdown().await;
    for id in &ids {
        check_log(&sqlite, id).await;
    }
    eprintln!(
        "{rule:?}: {injected} appends failed of {}",
        faulty.appends.load(Ordering::SeqCst)
    );
}

/// Waits for the plan to complete, asking again while the store refuses reads.
async fn wait_completed(engine: &Engine, plan_id: &str) {
    loop {
        match engine.wait_settled(plan_id).await {
            Ok(state) => {
                assert_eq!(state.status, PlanStatus::Completed, "{plan_id}");
                return;
            }
            Err(EngineError::StorageUnavailable(_)) => tokio::task::yield_now().await,
            Err(e) => panic!("waiting for {plan_id}: {e}"),
        }
    }
}

/// The attempt an event's data names: a number, or an attempt id's `number`.
fn attempt_of(data: &Value) -> Option<u64> {
    match data.get("attempt")? {
        Value::Object(id) => id.get("number")?.as_u64(),
        n => n.as_u64(),
    }
}

/// What the store itself says: seqs 1..=n with no gap, the plan completed in its log and its
/// index row, every step completed, and every attempt that started (or was sent again) has
/// an outcome recorded.
async fn check_log(store: &SqliteStore, plan_id: &str) {
    let events = store
        .read_events(plan_id, 0, None, 1_000_000)
        .await
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{plan_id}: a gap in the log"
    );
    let row = store.get_plan(plan_id).await.unwrap().unwrap();
    assert_eq!(row.state, "completed", "{plan_id}: index row");
    assert_eq!(row.last_seq, events.len() as u64);
    assert_eq!(events.last().unwrap().kind, "plan_completed", "{plan_id}");
    let mut started: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut ended: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut completed: BTreeSet<String> = BTreeSet::new();
    for e in &events {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        let Some(step) = data.get("step_id").and_then(Value::as_str) else {
            continue;
        };
        let key = || (step.to_owned(), attempt_of(&data).unwrap());
        match e.kind.as_str() {
            "step_started" | "step_recovered" => {
                started.insert(key());
            }
            "step_completed" | "step_failed" | "step_interrupted" | "step_result_ignored" => {
                ended.insert(key(), e.kind.clone());
                if e.kind == "step_completed" {
                    completed.insert(step.to_owned());
                }
            }
            _ => {}
        }
    }
    for attempt in &started {
        assert!(
            ended.contains_key(attempt),
            "{plan_id}: attempt {attempt:?} started but no outcome is recorded"
        );
    }
    assert_eq!(completed.len(), STEPS, "{plan_id}: {completed:?}");
    let flaky_failures = ended.values().filter(|k| *k == "step_failed").count();
    assert!(
        flaky_failures >= STEPS / 3,
        "{plan_id}: the flaky steps' first attempts are recorded as failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_appends_fail_and_no_outcome_is_lost() {
    runs_every_plan_to_its_end_under(Rule::Nth(vec![3, 7, 8, 15, 22, 23, 24, 40])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_append_fails_and_no_outcome_is_lost() {
    runs_every_plan_to_its_end_under(Rule::EveryOther { until: 400 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_failures_with_failing_reloads_loses_no_outcome() {
    runs_every_plan_to_its_end_under(Rule::Burst {
        from: 6,
        len: 12,
        reads: 3,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_record_completions_fail_and_no_outcome_is_lost() {
    runs_every_plan_to_its_end_under(Rule::Kind {
        kind: "step_completed",
        times: 20,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_record_failures_fail_and_no_outcome_is_lost() {
    runs_every_plan_to_its_end_under(Rule::Kind {
        kind: "step_failed",
        times: 6,
    })
    .await;
}

/// Holds each attempt until the test lets one finish; says when one started.
struct Latch {
    started: tokio::sync::mpsc::UnboundedSender<String>,
    permits: tokio::sync::Semaphore,
}

#[async_trait]
impl Executor for Latch {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let _ = self.started.send(task.step_id.clone());
        self.permits.acquire().await.unwrap().forget();
        Ok(ExecOutput {
            output: json!({"done": task.step_id}),
            scores: None,
        })
    }
}

/// A store that goes down (writes and reads) while an attempt runs: its outcome cannot be
/// recorded and the plan cannot even be reloaded. The actor holds the outcome, refuses
/// commands with the store's error instead of deciding from a state that drifted, and once the
/// store is back the outcome is recorded once and the plan runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_down_during_an_attempt_keeps_its_outcome_and_refuses_commands() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
    );
    let down = Arc::new(AtomicBool::new(false));
    let faulty = Arc::new(Faulty::new(sqlite.clone(), Rule::Down(down.clone())));
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let latch = Arc::new(Latch {
        started,
        permits: tokio::sync::Semaphore::new(0),
    });
    let registry = Registry::with_builtins();
    registry.register("latch", latch.clone());
    let engine = Engine::open(faulty.clone(), registry, EngineOptions::default())
        .await
        .unwrap();
    let doc = "plan_id: d\nsteps:\n  - {step_id: a, action: x, agent_type: latch}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n";
    tokio::time::timeout(DEADLINE, async {
        engine
            .register(Plan::parse(doc, Format::Yaml).unwrap(), "tester")
            .await
            .unwrap();
        engine.start("d", "tester", None).await.unwrap();
        assert_eq!(starts.recv().await.as_deref(), Some("a"));
        down.store(true, Ordering::SeqCst);
        latch.permits.add_permits(1);
        // The outcome's append fails, then the reload's read: the actor is stale.
        while faulty.failed_reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let paused = engine
            .pause("d", cairn_core::PauseMode::Boundary, None, "op", None)
            .await;
        assert!(
            matches!(paused, Err(EngineError::StorageUnavailable(_))),
            "{paused:?}"
        );
        // The log still shows `a` running: nothing was recorded, and nothing was lost.
        let kinds: Vec<String> = sqlite
            .read_events("d", 0, None, 1_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(!kinds.iter().any(|k| k == "step_completed"), "{kinds:?}");
        down.store(false, Ordering::SeqCst);
        wait_completed(&engine, "d").await;
    })
    .await
    .expect("the plan ends once the store is back");
    engine.shutdown().await;
    let events = sqlite.read_events("d", 0, None, 1_000).await.unwrap();
    let completed_a = events
        .iter()
        .filter(|e| e.kind == "step_completed" && e.data.contains("\"a\""))
        .count();
    assert_eq!(completed_a, 1, "a's outcome recorded once");
    assert!(
        !events.iter().any(|e| e.kind == "step_recovered"),
        "the attempt was never sent again: its outcome was held"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().kind, "plan_completed");
}

/// A seq conflict makes the actor reload the plan and decide the same batch once more: the
/// outcomes in it are decided again from the copies it kept, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_record_completions_meet_a_seq_conflict_and_no_outcome_is_lost() {
    runs_every_plan_to_its_end_under(Rule::Conflict {
        kind: "step_completed",
        times: 20,
    })
    .await;
}
