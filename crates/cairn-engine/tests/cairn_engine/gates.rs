//! Quality gates end to end through the engine: a gate retry whose task carries the feedback,
//! a review that pauses the plan until a person approves it, and a review that times out.
//! Every wait is bounded, so a regression fails rather than hangs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{open_engine, plan, settled, start_plan, wait_event, within};

use async_trait::async_trait;
use cairn_core::gate::{GATE_USER, TIMEOUT_USER};
use cairn_core::{
    EventKind, InterventionRequest, PauseReason, PlanStatus, ReviewOutcome, ReviewState,
    StepStatus, Timestamp,
};
use cairn_engine::clock::TokioClock;
use cairn_engine::executor::command::CommandExecutor;
use cairn_engine::executor::{latch, ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::{Engine, EngineOptions, ReviewFilter};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

async fn engine_with(dir: &tempfile::TempDir, agent_type: &str, ex: Arc<dyn Executor>) -> Engine {
    engine_on(dir, agent_type, ex, EngineOptions::default()).await
}

async fn engine_on(
    dir: &tempfile::TempDir,
    agent_type: &str,
    ex: Arc<dyn Executor>,
    opts: EngineOptions,
) -> Engine {
    let registry = Registry::with_builtins();
    registry.register(agent_type, ex);
    open_engine(dir, registry, opts).await
}

/// Registers the plan `id` with `steps` (its YAML list) and starts it, as ann.
async fn run(engine: &Engine, id: &str, steps: &str) {
    start_plan(engine, &format!("plan_id: {id}\nsteps:\n{steps}"), "ann").await;
}

fn iv(body: Value) -> InterventionRequest {
    InterventionRequest::from_body(body).unwrap()
}

/// Scores its first attempt of a run 0.5 and any later one 0.9; keeps every task it got.
#[derive(Default)]
struct Scorer {
    tasks: Mutex<Vec<Task>>,
}

#[async_trait]
impl Executor for Scorer {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let accuracy = if task.attempt == 1 { 0.5 } else { 0.9 };
        let attempt = task.attempt;
        self.tasks.lock().unwrap().push(task);
        Ok(ExecOutput {
            output: json!({"attempt": attempt}),
            scores: json!({"accuracy": accuracy}).as_object().cloned(),
        })
    }
}

const NEXT: &str = "  - {step_id: b, action: y, agent_type: builtin.echo, params: {from_a: '{{ steps.a.output.attempt }}'}}\n";

#[tokio::test]
async fn a_gate_retry_reaches_the_executor_with_its_feedback_and_the_plan_completes() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = Arc::new(Scorer::default());
    let engine = engine_with(&dir, "scorer", scorer.clone()).await;
    run(&engine, "g1", &format!("  - {{step_id: a, action: x, agent_type: scorer, quality_gate: {{min_scores: {{accuracy: 0.8}}, on_fail: retry}}}}\n{NEXT}")).await;
    let done = settled(&engine, "g1").await;
    assert_eq!(done.status, PlanStatus::Completed);
    let tasks = scorer.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].gate_feedback, None);
    let fb = tasks[1]
        .gate_feedback
        .clone()
        .expect("the retry carries feedback");
    assert_eq!(fb.attempt, 1);
    assert_eq!(fb.failed[0].criterion, "min_scores.accuracy");
    assert_eq!(fb.failed[0].score, Some(0.5));
    assert_ne!(tasks[0].idempotency_key, tasks[1].idempotency_key);
    // The dependent saw only the accepted output.
    assert_eq!(
        done.step("b").unwrap().rec.output,
        Some(json!({"from_a": 2}))
    );
    let events = engine.events("g1", 0, 1_000).await.unwrap();
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::InterventionApplied { intervention, .. }
            if intervention.user == GATE_USER && intervention.kind == "retry_step")));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind.type_name() == "gate_evaluated")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_review_pauses_the_plan_and_an_approval_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = Arc::new(Scorer::default());
    let engine = engine_with(&dir, "scorer", scorer.clone()).await;
    run(&engine, "g2", &format!("  - {{step_id: a, action: x, agent_type: scorer, quality_gate: {{min_scores: {{accuracy: 0.8}}, review: {{reviewers: [bob], prevent_self_review: true}}}}}}\n{NEXT}")).await;
    let waiting = settled(&engine, "g2").await;
    assert_eq!(waiting.status, PlanStatus::Paused);
    assert_eq!(waiting.pause_reason, Some(PauseReason::ReviewRequired));
    assert_eq!(
        waiting.step("a").unwrap().rec.status,
        StepStatus::AwaitingReview
    );
    let review = waiting.open_review("a").unwrap().clone();
    assert_eq!(review.output, json!({"attempt": 1}));
    // Someone not among the reviewers is refused, and the refusal is in the audit trail.
    let refused = engine
        .intervene(
            "g2",
            iv(json!({"type": "approve_step", "step_id": "a"})),
            "carol",
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("its reviewers are bob"),
        "{refused}"
    );
    let record = engine
        .intervene(
            "g2",
            iv(json!({"type": "approve_step", "step_id": "a", "attempt": 1, "reason": "good enough"})),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(record.user, "bob");
    let done = settled(&engine, "g2").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(
        done.step("b").unwrap().rec.output,
        Some(json!({"from_a": 1}))
    );
    assert_eq!(done.reviews[0].outcome, Some(ReviewOutcome::Approved));
    let audit = engine.interventions("g2").await.unwrap();
    assert!(audit.iter().any(|i| i.user == "carol" && i.error.is_some()));
}

#[tokio::test]
async fn a_review_times_out_by_itself_while_the_plan_is_paused() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = Arc::new(Scorer::default());
    let engine = engine_with(&dir, "scorer", scorer.clone()).await;
    run(&engine, "g3", &format!("  - {{step_id: a, action: x, agent_type: scorer, quality_gate: {{always_review: true, review: {{timeout_ms: 300, on_timeout: approve}}}}}}\n{NEXT}")).await;
    // Nobody decides: the review's own timer does, while the plan is paused for it.
    wait_event(&engine, "g3", |e| e.kind.type_name() == "plan_completed").await;
    let done = engine.state("g3").await.unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.reviews[0].outcome, Some(ReviewOutcome::TimedOut));
    assert_eq!(done.reviews[0].votes[0].user, TIMEOUT_USER);
}

#[tokio::test]
async fn a_command_agent_reads_its_gate_feedback_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    // Scores itself low unless its task carries gate_feedback.
    let script = r#"input=$(cat); case "$input" in *'"gate_feedback"'*'min_scores.q'*) echo '{"output": "fixed", "scores": {"q": 1}}';; *) echo '{"output": "draft", "scores": {"q": 0}}';; esac"#;
    let cmd = Arc::new(CommandExecutor::new(vec![
        "sh".into(),
        "-c".into(),
        script.into(),
    ]));
    let engine = engine_with(&dir, "cmd", cmd).await;
    run(&engine, "g4", "  - {step_id: a, action: x, agent_type: cmd, quality_gate: {min_scores: {q: 1}, on_fail: retry, max_retries: 1, on_retries_exhausted: fail}}\n").await;
    let done = settled(&engine, "g4").await;
    assert_eq!(done.status, PlanStatus::Completed, "{:?}", done.failure);
    let a = &done.step("a").unwrap().rec;
    assert_eq!(a.output, Some(json!("fixed")));
    assert_eq!(a.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_review_times_out_after_an_hour_on_the_engines_clock() {
    // An hour, not a day: the plan's lease is renewed (a store write in real time) every few
    // seconds of the engine's clock while it waits.
    const HOUR_US: i64 = 3_600_000_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = TokioClock::starting_at(Timestamp::from_micros(1_700_000_000_000_000));
    let opts = EngineOptions {
        clock: Arc::new(clock),
        ..EngineOptions::default()
    };
    let engine = engine_on(&dir, "scorer", Arc::new(Scorer::default()), opts).await;
    let real_start = std::time::Instant::now();
    run(&engine, "g5", &format!("  - {{step_id: a, action: x, agent_type: scorer, quality_gate: {{always_review: true, review: {{timeout_ms: 3600000}}}}}}\n{NEXT}")).await;
    let opened = wait_event(&engine, "g5", |e| e.kind.type_name() == "review_opened").await;
    let EventKind::ReviewOpened {
        deadline: Some(deadline),
        ..
    } = opened.kind
    else {
        panic!("the review has a deadline: {opened:?}");
    };
    assert_eq!(deadline - opened.at, HOUR_US);
    let decided = wait_event(&engine, "g5", |e| {
        matches!(&e.kind, EventKind::InterventionApplied { intervention, .. }
            if intervention.user == TIMEOUT_USER && intervention.kind == "reject_step")
    })
    .await;
    assert!(decided.at >= deadline, "decided before the deadline");
    assert!(
        decided.at - deadline < 60_000_000,
        "decided long after the deadline"
    );
    let done = settled(&engine, "g5").await;
    assert_eq!(done.status, PlanStatus::Failed);
    assert_eq!(done.reviews[0].outcome, Some(ReviewOutcome::TimedOut));
    assert!(
        real_start.elapsed() < Duration::from_secs(60),
        "an hour of review took {:?} of real time",
        real_start.elapsed()
    );
}

/// The inbox (the store's review index) and the plan's state, read after every change.
async fn open_reviews(engine: &Engine, plan_id: &str) -> (usize, u64, bool) {
    let filter = ReviewFilter {
        state: Some(ReviewState::Open),
        plan_id: Some(plan_id.into()),
    };
    let inbox = engine.reviews(&filter, 100, None).await.unwrap().items;
    let counted = engine.store().open_reviews().await.unwrap().count;
    let state = engine.state(plan_id).await.unwrap();
    (inbox.len(), counted, state.has_open_review())
}

#[tokio::test]
async fn a_plan_that_fails_voids_its_open_review_and_the_inbox_agrees_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(&dir, "scorer", Arc::new(Scorer::default())).await;
    // `a` waits for a review (its deadline an hour away) while `boom`, on another branch,
    // fails the plan once the latch lets `hold` finish.
    run(&engine, "g6", "  - {step_id: a, action: x, agent_type: scorer, quality_gate: {always_review: true, review: {timeout_ms: 3600000}}}\n  - {step_id: hold, action: x, agent_type: builtin.latch, depends_on: [], params: {name: gates-g6}}\n  - {step_id: boom, action: x, agent_type: builtin.fail, depends_on: [hold], params: {retryable: false}}\n").await;
    wait_event(&engine, "g6", |e| e.kind.type_name() == "review_opened").await;
    assert_eq!(open_reviews(&engine, "g6").await, (1, 1, true));
    // The operator lets the other branch go on while the review waits.
    engine.resume("g6", "ann", None).await.unwrap();
    latch::release("gates-g6");
    let failed = settled(&engine, "g6").await;
    assert_eq!(failed.status, PlanStatus::Failed);
    assert_eq!(failed.reviews[0].outcome, Some(ReviewOutcome::Voided));
    assert_eq!(failed.step("a").unwrap().rec.status, StepStatus::Pending);
    assert_eq!(open_reviews(&engine, "g6").await, (0, 0, false));
    let closed = ReviewFilter {
        state: Some(ReviewState::Closed),
        plan_id: Some("g6".into()),
    };
    let inbox = engine.reviews(&closed, 100, None).await.unwrap().items;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].outcome, Some(ReviewOutcome::Voided));
    engine.shutdown().await;
    drop(engine);

    // After a restart (which loads no failed plan) the index and the state still agree.
    let engine = engine_with(&dir, "scorer", Arc::new(Scorer::default())).await;
    assert_eq!(open_reviews(&engine, "g6").await, (0, 0, false));
    let reloaded = engine.state("g6").await.unwrap();
    assert_eq!(reloaded.reviews, failed.reviews);
    assert_eq!(reloaded.status, PlanStatus::Failed);
}

/// Scores attempt 1 low; holds every later attempt forever, handing its task to the test.
struct HoldsTheRetry(tokio::sync::mpsc::UnboundedSender<Task>);

#[async_trait]
impl Executor for HoldsTheRetry {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        if task.attempt == 1 {
            return Ok(ExecOutput {
                output: json!("draft"),
                scores: json!({"accuracy": 0.5}).as_object().cloned(),
            });
        }
        let _ = self.0.send(task);
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_gate_retry_recovered_after_a_restart_is_sent_the_same_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let engine = engine_with(&dir, "scorer", Arc::new(HoldsTheRetry(tx))).await;
    run(&engine, "g7", "  - {step_id: a, action: x, agent_type: scorer, quality_gate: {min_scores: {accuracy: 0.8}, on_fail: retry}}\n").await;
    let first = within("the retried attempt", held.recv()).await.unwrap();
    assert_eq!(first.attempt, 2);
    let feedback = first
        .gate_feedback
        .clone()
        .expect("the retry carries feedback");
    // What was sent is what the log recorded with the start.
    let started = engine.events("g7", 0, 1_000).await.unwrap();
    let recorded = started
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepStarted {
                attempt: 2,
                invocation: Some(i),
                ..
            } => Some(i.clone()),
            _ => None,
        })
        .expect("attempt 2's start records its invocation");
    assert_eq!(recorded.gate_feedback.as_ref(), Some(&feedback));
    engine.shutdown().await;
    drop(engine);

    // The next process sends attempt 2 again, with the same feedback and key.
    let scorer = Arc::new(Scorer::default());
    let engine = engine_with(&dir, "scorer", scorer.clone()).await;
    let done = settled(&engine, "g7").await;
    assert_eq!(done.status, PlanStatus::Completed);
    let tasks = scorer.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].attempt, 2);
    assert_eq!(tasks[0].gate_feedback, Some(feedback));
    assert_eq!(tasks[0].idempotency_key, first.idempotency_key);
}

/// Scores 0.9 once the test lets it return; tells the test when it is running.
struct HeldScorer {
    running: tokio::sync::mpsc::UnboundedSender<()>,
    go: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Executor for HeldScorer {
    async fn execute(&self, _task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let _ = self.running.send(());
        self.go.notified().await;
        Ok(ExecOutput {
            output: json!({"done": true}),
            scores: json!({"accuracy": 0.9}).as_object().cloned(),
        })
    }
}

/// A step whose gate passes costs no extra commit: its `gate_evaluated` goes into the store in
/// the same transaction as its `step_completed` and the next step's start. Counted on the
/// store's own commit counter, from while the gated attempt runs to when the next step runs
/// (held on a latch, so the plan stays loaded and nothing else writes in between).
#[tokio::test]
async fn a_passing_gate_costs_no_extra_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
    );
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Notify::new());
    let registry = Registry::with_builtins();
    registry.register(
        "held",
        Arc::new(HeldScorer {
            running: running_tx,
            go: go.clone(),
        }),
    );
    let engine = Engine::open(store.clone(), registry, EngineOptions::default())
        .await
        .unwrap();
    let latch = "a-passing-gate-costs-no-extra-commit";
    engine
        .register(
            plan(&format!("plan_id: g0\nsteps:\n  - {{step_id: a, action: x, agent_type: held, quality_gate: {{min_scores: {{accuracy: 0.8}}, on_fail: retry}}}}\n  - {{step_id: b, action: y, agent_type: builtin.latch, depends_on: [a], params: {{name: {latch}}}}}\n")),
            "ann",
        )
        .await
        .unwrap();
    engine.start("g0", "ann", None).await.unwrap();
    crate::common::within("a's attempt to run", running.recv())
        .await
        .expect("the executor is gone");
    let before = store.stats().commits;
    go.notify_one();
    crate::common::within(
        "b to hold its latch",
        cairn_engine::executor::latch::held(latch),
    )
    .await;
    let after = store.stats().commits;
    assert_eq!(
        after - before,
        1,
        "a's outcome, its gate's verdict and b's start take one commit"
    );
    let kinds: Vec<&'static str> = engine
        .events("g0", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.type_name())
        .collect();
    assert!(kinds.contains(&"gate_evaluated"), "{kinds:?}");
    cairn_engine::executor::latch::release(latch);
    assert_eq!(settled(&engine, "g0").await.status, PlanStatus::Completed);
}
