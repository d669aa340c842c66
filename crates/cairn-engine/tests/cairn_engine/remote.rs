//! The remote task queue driven by a real engine over SQLite: agent types with no local executor
//! go to the queue; workers' reports settle steps; an expired lease is a retryable failure.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{EventKind, PlanStatus, StepStatus};
use cairn_engine::executor::Registry;
use cairn_engine::remote::{MemoryQueue, RemoteError, RemoteQueue, TaskQueue};
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

use crate::common::{open_engine, settled, start_plan, within};

async fn engine(dir: &tempfile::TempDir, queue: &RemoteQueue) -> Engine {
    let opts = EngineOptions {
        remote: Some(queue.clone()),
        ..EngineOptions::default()
    };
    open_engine(dir, Registry::with_builtins(), opts).await
}

fn types() -> Vec<String> {
    vec!["research".to_owned()]
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_worker_completes_the_step_and_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000);
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r1\nquery: q\nsteps:\n  - {step_id: a, action: search, agent_type: research, params: {topic: rust}}\n  - {step_id: b, action: echo, agent_type: builtin.echo, params: {n: '{{ steps.a.output.found }}'}}\n", "t").await;
    let lease = q.poll("w1", &types(), WAIT).await.expect("a task");
    assert_eq!(lease.task.plan_id, "r1");
    assert_eq!(lease.task.step_id, "a");
    assert_eq!(lease.task.params, json!({"topic": "rust"}));
    assert_eq!(lease.task.attempt, 1);
    assert_eq!(
        q.heartbeat(&lease.task_id, "w2").await,
        Err(RemoteError::WrongWorker {
            task_id: lease.task_id.clone(),
            worker_id: "w2".into()
        })
    );
    assert!(!q.heartbeat(&lease.task_id, "w1").await.unwrap().stop);
    q.complete(&lease.task_id, "w1", json!({"found": 3}), None)
        .await
        .unwrap();
    let done = settled(&engine, "r1").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[1].rec.output, Some(json!({"n": 3})));
}

#[tokio::test]
async fn a_fatal_failure_fails_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000);
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r2\nsteps:\n  - {step_id: a, action: search, agent_type: research, retry: {max_attempts: 3, backoff_ms: 1}}\n", "t").await;
    let lease = q.poll("w", &types(), WAIT).await.unwrap();
    q.fail(&lease.task_id, "w", "bad input".into(), false)
        .await
        .unwrap();
    let done = settled(&engine, "r2").await;
    assert_eq!(done.status, PlanStatus::Failed);
    assert_eq!(done.steps[0].rec.status, StepStatus::Failed);
    assert_eq!(done.steps[0].rec.attempts, 1);
    assert!(done.steps[0]
        .rec
        .error
        .as_deref()
        .unwrap()
        .contains("bad input"));
}

#[tokio::test]
async fn an_expired_lease_is_retried_with_the_same_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(100);
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r3\nsteps:\n  - {step_id: a, action: search, agent_type: research, retry: {max_attempts: 2, backoff_ms: 1}}\n", "t").await;
    let first = q.poll("w1", &types(), WAIT).await.unwrap();
    assert_eq!(first.task.attempt, 1);
    // w1 never heartbeats: the lease expires and the step is tried again.
    let second = q.poll("w2", &types(), WAIT).await.unwrap();
    assert_eq!(second.task.attempt, 2);
    assert_eq!(second.task.idempotency_key, first.task.idempotency_key);
    assert_ne!(second.task_id, first.task_id);
    assert!(matches!(
        q.complete(&first.task_id, "w1", json!(0), None).await,
        Err(RemoteError::UnknownTask(_))
    ));
    q.complete(&second.task_id, "w2", json!({"ok": true}), None)
        .await
        .unwrap();
    let done = settled(&engine, "r3").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.attempts, 2);
}

#[tokio::test]
async fn cancel_reaches_the_worker_through_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000);
    let engine = engine(&dir, &q).await;
    start_plan(
        &engine,
        "plan_id: r4\nsteps:\n  - {step_id: a, action: search, agent_type: research}\n",
        "t",
    )
    .await;
    let lease = q.poll("w", &types(), WAIT).await.unwrap();
    engine.cancel("r4", "t", None).await.unwrap();
    // The engine signals the attempt before it answers the cancel.
    assert!(q.heartbeat(&lease.task_id, "w").await.unwrap().stop);
    q.fail(&lease.task_id, "w", "stopped".into(), true)
        .await
        .unwrap();
    let done = settled(&engine, "r4").await;
    assert_eq!(done.status, PlanStatus::Cancelled);
}

#[tokio::test]
async fn without_a_queue_unknown_agent_types_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    let engine = Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions::default(),
    )
    .await
    .unwrap();
    start_plan(
        &engine,
        "plan_id: r5\nsteps:\n  - {step_id: a, action: search, agent_type: research}\n",
        "t",
    )
    .await;
    let done = settled(&engine, "r5").await;
    assert_eq!(done.status, PlanStatus::Failed);
}

/// A gate retry handed to a worker carries the gate's feedback, as its start recorded it.
#[tokio::test]
async fn a_gate_retry_reaches_the_worker_with_the_recorded_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000);
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r6\nsteps:\n  - {step_id: a, action: write, agent_type: research, quality_gate: {min_scores: {q: 0.8}, on_fail: retry}}\n", "t").await;
    let first = q.poll("w", &types(), WAIT).await.unwrap();
    assert_eq!(first.task.gate_feedback, None);
    let low = json!({"q": 0.5}).as_object().cloned();
    q.complete(&first.task_id, "w", json!("draft"), low)
        .await
        .unwrap();
    let second = q.poll("w", &types(), WAIT).await.unwrap();
    assert_eq!(second.task.attempt, 2);
    let feedback = second
        .task
        .gate_feedback
        .clone()
        .expect("the retry's feedback");
    assert_eq!(feedback.failed[0].criterion, "min_scores.q");
    let events = engine.events("r6", 0, 1_000).await.unwrap();
    let recorded = events.iter().find_map(|e| match &e.kind {
        EventKind::StepStarted {
            attempt: 2,
            invocation: Some(i),
            ..
        } => i.gate_feedback.clone(),
        _ => None,
    });
    assert_eq!(recorded, Some(feedback));
    let high = json!({"q": 0.9}).as_object().cloned();
    q.complete(&second.task_id, "w", json!("final"), high)
        .await
        .unwrap();
    assert_eq!(settled(&engine, "r6").await.status, PlanStatus::Completed);
}

/// Another engine that recovers a plan (a node that took it over after its owner stopped)
/// sends the running attempt again: the queue answers the task a worker still holds, and the
/// worker's report, made to the new engine's queue, settles the step: run once, not twice.
#[tokio::test]
async fn a_recovered_plan_takes_the_report_of_the_task_a_worker_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let shared: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::new(30_000));
    let q1 = RemoteQueue::with_queue(shared.clone());
    let first = engine(&dir, &q1).await;
    start_plan(
        &first,
        "plan_id: r7\nsteps:\n  - {step_id: a, action: search, agent_type: research}\n",
        "t",
    )
    .await;
    let lease = q1.poll("w", &types(), WAIT).await.expect("a task");
    // The first engine stops driving the plan; its attempt's task stays with the worker.
    first.shutdown().await;
    drop(first);

    let q2 = RemoteQueue::with_queue(shared);
    let second = engine(&dir, &q2).await;
    within("the attempt to be sent again", async {
        loop {
            let events = second.events("r7", 0, 1_000).await.unwrap();
            if events
                .iter()
                .any(|e| matches!(e.kind, EventKind::StepRecovered { attempt: 1, .. }))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!q2.heartbeat(&lease.task_id, "w").await.unwrap().stop);
    q2.complete_recorded(&lease.task_id, "w", json!({"found": 7}), None)
        .await
        .unwrap();
    let done = settled(&second, "r7").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.output, Some(json!({"found": 7})));
    assert_eq!(done.steps[0].rec.attempts, 1, "the step ran once");
    assert!(q2.queued_by_type().await.is_empty(), "no second task");
}

/// A task that leaves the queue without its result reaching the plan (the node that expired it
/// died before delivering the expiry) fails its attempt retryably once `lost_after` has passed,
/// and the step runs again.
#[tokio::test]
async fn an_attempt_whose_task_left_the_queue_unreported_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000).lost_after(Duration::from_millis(200));
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r8\nsteps:\n  - {step_id: a, action: search, agent_type: research, retry: {max_attempts: 2, backoff_ms: 1}}\n", "t").await;
    let first = q.poll("w", &types(), WAIT).await.expect("a task");
    assert_eq!(first.task.attempt, 1);
    // What a sweeper that died after taking the expired task leaves behind.
    q.queue().remove(&first.task_id).await.unwrap();
    let second = q.poll("w", &types(), WAIT).await.expect("the retry");
    assert_eq!(second.task.attempt, 2);
    assert_eq!(second.task.idempotency_key, first.task.idempotency_key);
    q.complete_recorded(&second.task_id, "w", json!({"ok": 1}), None)
        .await
        .unwrap();
    let done = settled(&engine, "r8").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.attempts, 2);
    let events = engine.events("r8", 0, 1_000).await.unwrap();
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::StepFailed { attempt: 1, error, .. } if error.contains("never came"))));
}

/// A task whose claim the plan refuses because its attempt no longer waits for a worker is
/// dropped, not handed out again; its attempt fails retryably and the retry is the next task.
/// (Here the claim was recorded but its answer lost, so the task went back to the queue.)
#[tokio::test]
async fn a_task_whose_claim_the_plan_refuses_is_dropped_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let q = RemoteQueue::new(30_000);
    let engine = engine(&dir, &q).await;
    start_plan(&engine, "plan_id: r9\nsteps:\n  - {step_id: a, action: search, agent_type: research, retry: {max_attempts: 2, backoff_ms: 1}}\n", "t").await;
    let first = q.poll("w1", &types(), WAIT).await.expect("a task");
    engine.claim("r9", "a", 1, "w1", "t").await.unwrap();
    q.unclaim(&first.task_id).await;
    let again = q.poll("w2", &types(), WAIT).await.expect("the task again");
    assert_eq!(again.task_id, first.task_id);
    let refusal = engine.claim("r9", "a", 1, "w2", "t").await.unwrap_err();
    assert!(refusal.is_client_error(), "{refusal}");
    q.refused(&again.task_id, &refusal).await;
    let retry = q.poll("w2", &types(), WAIT).await.expect("the retry");
    assert_eq!(retry.task.attempt, 2);
    engine.claim("r9", "a", 2, "w2", "t").await.unwrap();
    q.complete_recorded(&retry.task_id, "w2", json!({"ok": 1}), None)
        .await
        .unwrap();
    let done = settled(&engine, "r9").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.attempts, 2);
}
