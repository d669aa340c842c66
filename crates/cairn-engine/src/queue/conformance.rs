//! The behaviour every [`TaskQueue`] must show, as plain async functions any implementation's
//! tests run with a factory that makes a fresh, empty queue with the given lease (ms):
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     cairn_engine::queue::conformance::run_all(|lease_ms| async move { MyQueue::new(lease_ms) })
//!         .await;
//! }
//! ```
//!
//! Cases panic with a message on failure. Every wait is bounded. Leases are real time, kept
//! short (tens to hundreds of ms) with margins that a loaded machine still meets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{RemoteError, Stopped, TaskQueue};
use crate::executor::Task;

/// The longest any case waits for something that must happen.
const BOUND: Duration = Duration::from_secs(10);

/// Runs every case, each against a fresh queue from `make(lease_ms)` (a queue kept in a
/// database may need a connection first, so the factory is async).
pub async fn run_all<Q, F, Fut>(make: F)
where
    Q: TaskQueue,
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Q>,
{
    let fresh = |lease_ms: u64| {
        let made = make(lease_ms);
        async move { Arc::new(made.await) as Arc<dyn TaskQueue> }
    };
    eprintln!("task queue conformance: claim_is_exclusive_and_oldest_first");
    claim_is_exclusive_and_oldest_first(fresh(30_000).await).await;
    eprintln!("task queue conformance: heartbeat_extends_the_lease");
    heartbeat_extends_the_lease(fresh(400).await).await;
    eprintln!("task queue conformance: expiry_hands_the_task_back_with_the_same_key");
    expiry_hands_the_task_back_with_the_same_key(fresh(50).await).await;
    eprintln!("task queue conformance: only_the_holder_may_report");
    only_the_holder_may_report(fresh(30_000).await).await;
    eprintln!("task queue conformance: stop_drops_a_queued_task_and_flags_a_claimed_one");
    stop_drops_a_queued_task_and_flags_a_claimed_one(fresh(30_000).await).await;
    eprintln!("task queue conformance: unclaim_puts_the_task_back");
    unclaim_puts_the_task_back(fresh(30_000).await).await;
    eprintln!("task queue conformance: a_waiting_claim_wakes_on_enqueue_and_on_close");
    a_waiting_claim_wakes_on_enqueue_and_on_close(fresh(30_000).await).await;
    eprintln!("task queue conformance: workers_are_listed_with_their_tasks");
    workers_are_listed_with_their_tasks(fresh(30_000).await).await;
    eprintln!("task queue conformance: enqueue_is_idempotent_per_attempt");
    enqueue_is_idempotent_per_attempt(fresh(30_000).await).await;
    eprintln!("task queue conformance: a_task_comes_back_as_it_was_queued");
    a_task_comes_back_as_it_was_queued(fresh(30_000).await).await;
    eprintln!("task queue conformance: a_claim_of_plans_takes_only_their_tasks");
    a_claim_of_plans_takes_only_their_tasks(fresh(30_000).await).await;
}

/// A task of `agent_type` for attempt `attempt` of step `step_id`.
pub fn task(agent_type: &str, step_id: &str, attempt: u32) -> Task {
    Task {
        plan_id: "p".into(),
        step_id: step_id.into(),
        kind: cairn_core::AttemptKind::Step,
        action: "search".into(),
        agent_type: agent_type.into(),
        params: json!({"q": 1}),
        attempt,
        run: 1,
        idempotency_key: format!("p/{step_id}/1"),
        timeout_ms: None,
        query: "q".into(),
        gate_feedback: None,
    }
}

fn types(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

const NOW: Duration = Duration::ZERO;

pub async fn claim_is_exclusive_and_oldest_first(q: Arc<dyn TaskQueue>) {
    let a = q.enqueue(task("research", "a", 1)).await.unwrap();
    let b = q.enqueue(task("write", "b", 1)).await.unwrap();
    let c = q.enqueue(task("research", "c", 1)).await.unwrap();
    assert!(a != b && b != c && a != c, "task ids are unique");
    // Ten workers race for the three tasks: each is handed out exactly once, oldest first.
    let mut claims = tokio::task::JoinSet::new();
    for w in 0..10 {
        let q = q.clone();
        claims.spawn(async move {
            q.claim(&format!("w{w}"), &types(&["research", "write"]), NOW)
                .await
                .unwrap()
        });
    }
    let mut got = Vec::new();
    while let Some(r) = claims.join_next().await {
        got.extend(r.unwrap());
    }
    let mut ids: Vec<&str> = got.iter().map(|l| l.task_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str(), c.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "each task claimed once");
    assert!(got.iter().all(|l| l.lease_ms == q.lease_ms()));
    // Oldest first across the asked types, and only the asked types.
    let q2 = q.clone();
    let d = q2.enqueue(task("write", "d", 1)).await.unwrap();
    let e = q2.enqueue(task("research", "e", 1)).await.unwrap();
    let only_research = q.claim("x", &types(&["research"]), NOW).await.unwrap();
    assert_eq!(only_research.map(|l| l.task_id), Some(e));
    let next = q
        .claim("x", &types(&["research", "write"]), NOW)
        .await
        .unwrap();
    assert_eq!(next.map(|l| l.task_id), Some(d));
    assert!(q
        .claim("x", &types(&["research", "write"]), NOW)
        .await
        .unwrap()
        .is_none());
}

pub async fn heartbeat_extends_the_lease(q: Arc<dyn TaskQueue>) {
    let lease_ms = q.lease_ms();
    q.enqueue(task("research", "a", 1)).await.unwrap();
    let lease = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .expect("a task");
    // Two waits of 5/8 of the lease each: past the first lease's end only if a heartbeat
    // extended it in between.
    let part = Duration::from_millis(lease_ms * 5 / 8);
    tokio::time::sleep(part).await;
    let answer = q.heartbeat(&lease.task_id, "w").await.unwrap();
    assert_eq!((answer.lease_ms, answer.stop), (lease_ms, false));
    tokio::time::sleep(part).await;
    assert!(
        q.expire().await.unwrap().is_empty(),
        "the heartbeat extended the lease"
    );
    q.heartbeat(&lease.task_id, "w").await.unwrap();
    q.complete(&lease.task_id, "w").await.unwrap();
}

pub async fn expiry_hands_the_task_back_with_the_same_key(q: Arc<dyn TaskQueue>) {
    let queued = task("research", "a", 1);
    q.enqueue(queued.clone()).await.unwrap();
    let lease = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .expect("a task");
    // Nothing expires before the lease has run.
    let deadline = tokio::time::Instant::now() + BOUND;
    let expired = loop {
        let expired = q.expire().await.unwrap();
        if !expired.is_empty() {
            break expired;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a lease of {} ms never expired",
            q.lease_ms()
        );
        tokio::time::sleep(Duration::from_millis(q.lease_ms() / 2 + 1)).await;
    };
    assert_eq!(expired, vec![queued.clone()], "the same task comes back");
    assert!(!q.is_live(&lease.task_id).await.unwrap());
    assert_eq!(expired[0].idempotency_key, queued.idempotency_key);
    // The old holder can do nothing with it any more; it is expired once only.
    assert!(matches!(
        q.heartbeat(&lease.task_id, "w").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert!(matches!(
        q.complete(&lease.task_id, "w").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert!(q.expire().await.unwrap().is_empty());
    // A queued task never expires: only claims have leases.
    q.enqueue(task("research", "b", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(q.lease_ms() * 2)).await;
    assert!(q.expire().await.unwrap().is_empty());
    assert!(q
        .claim("w2", &types(&["research"]), NOW)
        .await
        .unwrap()
        .is_some());
}

pub async fn only_the_holder_may_report(q: Arc<dyn TaskQueue>) {
    let queued = task("research", "a", 1);
    q.enqueue(queued.clone()).await.unwrap();
    q.enqueue(task("research", "b", 2)).await.unwrap();
    let first = q
        .claim("w1", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    let second = q
        .claim("w2", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    let wrong = |e: Result<_, RemoteError>| {
        matches!(e, Err(RemoteError::WrongWorker { ref task_id, ref worker_id })
            if *task_id == first.task_id && worker_id == "w2")
    };
    assert!(wrong(q.heartbeat(&first.task_id, "w2").await.map(|_| ())));
    assert!(wrong(q.complete(&first.task_id, "w2").await.map(|_| ())));
    assert!(wrong(q.fail(&first.task_id, "w2").await.map(|_| ())));
    assert!(matches!(
        q.complete("task_nope", "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    // The holder's report ends the task and hands back what was queued.
    assert!(q.is_live(&first.task_id).await.unwrap());
    assert_eq!(q.complete(&first.task_id, "w1").await.unwrap(), queued);
    assert!(!q.is_live(&first.task_id).await.unwrap());
    assert!(!q.is_live("task_nope").await.unwrap());
    assert!(matches!(
        q.complete(&first.task_id, "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert!(matches!(
        q.fail(&first.task_id, "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert_eq!(q.fail(&second.task_id, "w2").await.unwrap().attempt, 2);
    assert!(matches!(
        q.heartbeat(&second.task_id, "w2").await,
        Err(RemoteError::UnknownTask(_))
    ));
}

pub async fn stop_drops_a_queued_task_and_flags_a_claimed_one(q: Arc<dyn TaskQueue>) {
    let queued = task("research", "a", 1);
    let a = q.enqueue(queued.clone()).await.unwrap();
    assert!(q.is_live(&a).await.unwrap(), "a queued task is live");
    assert_eq!(
        q.stop(&a).await.unwrap(),
        Stopped::Dropped(Box::new(queued))
    );
    assert!(!q.is_live(&a).await.unwrap());
    assert!(q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .is_none());
    assert_eq!(q.stop(&a).await.unwrap(), Stopped::Gone);

    q.enqueue(task("research", "b", 1)).await.unwrap();
    let lease = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    assert!(!q.heartbeat(&lease.task_id, "w").await.unwrap().stop);
    assert_eq!(q.stop(&lease.task_id).await.unwrap(), Stopped::Flagged);
    assert!(q.heartbeat(&lease.task_id, "w").await.unwrap().stop);
    // The holder still reports (a failure, usually) and that ends it.
    q.fail(&lease.task_id, "w").await.unwrap();
    assert_eq!(q.stop(&lease.task_id).await.unwrap(), Stopped::Gone);
}

pub async fn unclaim_puts_the_task_back(q: Arc<dyn TaskQueue>) {
    q.enqueue(task("research", "a", 1)).await.unwrap();
    let lease = q
        .claim("w1", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.unclaim(&lease.task_id).await.unwrap(), None);
    assert!(matches!(
        q.heartbeat(&lease.task_id, "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    let again = q
        .claim("w2", &types(&["research"]), NOW)
        .await
        .unwrap()
        .expect("handed out again");
    assert_eq!(again.task_id, lease.task_id);
    assert_eq!(again.task, lease.task);
    // A task stopped while claimed is dropped, not put back.
    assert_eq!(q.stop(&again.task_id).await.unwrap(), Stopped::Flagged);
    assert_eq!(q.unclaim(&again.task_id).await.unwrap(), Some(lease.task));
    assert!(q
        .claim("w3", &types(&["research"]), NOW)
        .await
        .unwrap()
        .is_none());
    assert_eq!(q.unclaim("task_nope").await.unwrap(), None);
}

pub async fn a_waiting_claim_wakes_on_enqueue_and_on_close(q: Arc<dyn TaskQueue>) {
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.claim("w", &types(&["research"]), BOUND).await })
    };
    tokio::task::yield_now().await;
    let id = q.enqueue(task("research", "a", 1)).await.unwrap();
    let lease = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("woken by the enqueue")
        .unwrap()
        .unwrap()
        .expect("the task");
    assert_eq!(lease.task_id, id);
    // A claim with nothing to take answers None once its wait is over.
    assert!(q
        .claim("w", &types(&["research"]), Duration::from_millis(10))
        .await
        .unwrap()
        .is_none());
    // However long it was asked to wait (here: longer than the clock can count).
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.claim("w", &types(&["research"]), Duration::MAX).await })
    };
    tokio::task::yield_now().await;
    q.close();
    let after_close = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("woken by the close")
        .unwrap()
        .unwrap();
    assert!(after_close.is_none());
    // A claimed task may still be reported after the close.
    q.complete(&lease.task_id, "w").await.unwrap();
}

pub async fn workers_are_listed_with_their_tasks(q: Arc<dyn TaskQueue>) {
    assert!(q.workers().await.unwrap().is_empty());
    q.enqueue(task("research", "a", 1)).await.unwrap();
    q.enqueue(task("research", "b", 1)).await.unwrap();
    let lease = q
        .claim("w2", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    assert!(q
        .claim("w1", &types(&["write"]), NOW)
        .await
        .unwrap()
        .is_none());
    let workers = q.workers().await.unwrap();
    let ids: Vec<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    assert_eq!(workers[1].tasks, vec![lease.task_id.clone()]);
    assert_eq!(workers[1].agent_types, types(&["research"]));
    assert!(workers[0].tasks.is_empty());
    let queued = q.queued_by_type().await.unwrap();
    assert_eq!(queued, vec![("research".to_owned(), 1)]);
}

pub async fn enqueue_is_idempotent_per_attempt(q: Arc<dyn TaskQueue>) {
    let a = q.enqueue(task("research", "a", 1)).await.unwrap();
    assert_eq!(
        q.enqueue(task("research", "a", 1)).await.unwrap(),
        a,
        "the same attempt again answers its live task"
    );
    // Another attempt number, run or kind of the same step is another task.
    let mut others = vec![task("research", "a", 2), task("research", "b", 1)];
    others.push(Task {
        run: 2,
        ..task("research", "a", 1)
    });
    others.push(Task {
        kind: cairn_core::AttemptKind::Compensation,
        ..task("research", "a", 1)
    });
    let mut ids = vec![a.clone()];
    for t in others {
        ids.push(q.enqueue(t).await.unwrap());
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 5, "five attempts, five tasks: {ids:?}");
    assert_eq!(
        q.queued_by_type().await.unwrap(),
        vec![("research".to_owned(), 5)]
    );
    // Claimed, it is still the attempt's task, and its holder keeps it.
    let lease = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .expect("a task");
    assert_eq!(lease.task_id, a, "the oldest first");
    assert_eq!(q.enqueue(task("research", "a", 1)).await.unwrap(), a);
    assert!(!q.heartbeat(&a, "w").await.unwrap().stop);
    assert_eq!(
        q.queued_by_type().await.unwrap(),
        vec![("research".to_owned(), 4)]
    );
    // Once it ended, the attempt may be queued anew: a new task.
    q.complete(&a, "w").await.unwrap();
    let again = q.enqueue(task("research", "a", 1)).await.unwrap();
    assert!(!ids.contains(&again), "a new task once the old one ended");
    assert_eq!(
        q.queued_by_type().await.unwrap(),
        vec![("research".to_owned(), 5)]
    );
}

/// Whatever a task carries comes back the same, down to its JSON text: the worker is sent what
/// the attempt recorded, byte for byte.
pub async fn a_task_comes_back_as_it_was_queued(q: Arc<dyn TaskQueue>) {
    let queued = Task {
        kind: cairn_core::AttemptKind::Compensation,
        params: serde_json::from_str(
            r#"{"z": 1, "a": [1.5, 1.0, 12345678901234567890, -0.0], "nul": "a\u0000b", "text": "héllo \"you\" 🦀", "deep": {"b": null, "a": {}}}"#,
        )
        .unwrap(),
        timeout_ms: Some(1_500),
        query: "line 1\nline 2\t'quoted'".into(),
        ..task("research", "a", 3)
    };
    let text = serde_json::to_string(&queued).unwrap();
    q.enqueue(queued.clone()).await.unwrap();
    let lease = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .expect("the task");
    assert_eq!(lease.task, queued);
    assert_eq!(serde_json::to_string(&lease.task).unwrap(), text);
    let back = q.complete(&lease.task_id, "w").await.unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
}

/// A claim that names plans takes the oldest task of those plans only, and a waiting one wakes
/// for a task of its plans.
pub async fn a_claim_of_plans_takes_only_their_tasks(q: Arc<dyn TaskQueue>) {
    let of = |plan: &str, step: &str| Task {
        plan_id: plan.into(),
        idempotency_key: format!("{plan}/{step}/1"),
        ..task("research", step, 1)
    };
    q.enqueue(of("a", "s1")).await.unwrap();
    q.enqueue(of("b", "s1")).await.unwrap();
    q.enqueue(of("a", "s2")).await.unwrap();
    let b = types(&["b"]);
    let got = q
        .claim_of_plans("w", &types(&["research"]), Some(&b), NOW)
        .await
        .unwrap()
        .expect("b's task");
    assert_eq!(got.task.plan_id, "b");
    assert!(q
        .claim_of_plans("w", &types(&["research"]), Some(&b), NOW)
        .await
        .unwrap()
        .is_none());
    let first = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.task.plan_id.as_str(), first.task.step_id.as_str()),
        ("a", "s1")
    );
    // A claim waiting for plan c is not handed a's task; it wakes for c's.
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            let c = types(&["c"]);
            q.claim_of_plans("w2", &types(&["research"]), Some(&c), BOUND)
                .await
        })
    };
    q.enqueue(of("c", "s1")).await.unwrap();
    let got = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the waiting claim woke")
        .unwrap()
        .unwrap()
        .expect("c's task");
    assert_eq!(got.task.plan_id, "c");
    let last = q
        .claim("w", &types(&["research"]), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.task.plan_id.as_str(), last.task.step_id.as_str()),
        ("a", "s2")
    );
}
