//! The task queue in PostgreSQL: the engine's queue conformance suite, and what only a queue
//! shared by several nodes promises (two `PgQueue`s on one database stand for two nodes).
//!
//! Each case keeps its tables in schemas of its own, dropped at its end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{EventKind, Format, Plan, PlanStatus};
use cairn_engine::executor::Registry;
use cairn_engine::queue::conformance::{self, task};
use cairn_engine::queue::{RemoteError, Stopped, TaskQueue};
use cairn_engine::remote::RemoteQueue;
use cairn_engine::{Engine, EngineOptions};
use cairn_store_postgres::{PgQueue, PgQueueOptions};
use serde_json::json;

use crate::{database_url, open, unique_schema};

/// The longest any case waits for something that must happen.
const BOUND: Duration = Duration::from_secs(20);

async fn queue(url: &str, schema: &str, lease_ms: u64, poll_ms: u64) -> PgQueue {
    PgQueue::with_options(
        &open(url, schema).await,
        PgQueueOptions { lease_ms, poll_ms },
    )
    .await
    .expect("a queue")
}

async fn drop_schemas(url: &str, schemas: &[String]) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let driver = tokio::spawn(conn);
    for schema in schemas {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .expect("drop a test schema");
    }
    drop(client);
    let _ = driver.await;
}

fn types(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_queue_passes_the_task_queue_conformance_suite() {
    let Some(url) = database_url() else { return };
    let schemas = Arc::new(Mutex::new(Vec::new()));
    conformance::run_all(|lease_ms| {
        let url = url.clone();
        let schemas = schemas.clone();
        async move {
            let schema = unique_schema();
            schemas.lock().unwrap().push(schema.clone());
            queue(&url, &schema, lease_ms, 100).await
        }
    })
    .await;
    let schemas = schemas.lock().unwrap().clone();
    drop_schemas(&url, &schemas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_racing_on_two_nodes_hand_each_task_out_once() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = Arc::new(queue(&url, &schema, 30_000, 100).await);
    let b = Arc::new(queue(&url, &schema, 30_000, 100).await);
    const TASKS: u32 = 300;
    let mut queued = HashSet::new();
    for n in 0..TASKS {
        // Half enqueued through each node.
        let q = if n % 2 == 0 { &a } else { &b };
        let agent = if n % 3 == 0 { "write" } else { "research" };
        queued.insert(q.enqueue(task(agent, &format!("s{n}"), 1)).await.unwrap());
    }
    assert_eq!(queued.len(), TASKS as usize);
    // Eight workers, four on each node, claim until both nodes say nothing is left.
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let q: Arc<dyn TaskQueue> = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.spawn(async move {
            let mut got = Vec::new();
            let worker = format!("w{w}");
            while let Some(lease) = q
                .claim(&worker, &types(&["research", "write"]), Duration::ZERO)
                .await
                .unwrap()
            {
                got.push((worker.clone(), lease.task_id));
            }
            got
        });
    }
    let mut claimed = Vec::new();
    while let Some(got) = tokio::time::timeout(BOUND * 3, workers.join_next())
        .await
        .expect("the claims end")
    {
        claimed.extend(got.unwrap());
    }
    let ids: HashSet<&String> = claimed.iter().map(|(_, id)| id).collect();
    assert_eq!(claimed.len(), TASKS as usize, "each task handed out once");
    assert_eq!(ids.len(), TASKS as usize, "no task handed out twice");
    assert!(ids.iter().all(|id| queued.contains(*id)));
    // Every claim holds: its worker may complete it through either node.
    for (n, (worker, id)) in claimed.iter().enumerate() {
        let q = if n % 2 == 0 { &a } else { &b };
        q.complete(id, worker).await.unwrap();
    }
    assert!(a.queued_by_type().await.unwrap().is_empty());
    drop((a, b));
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_swept_by_two_nodes_at_once_hands_each_task_to_one() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let lease_ms = 300;
    let a = Arc::new(queue(&url, &schema, lease_ms, 100).await);
    let b = Arc::new(queue(&url, &schema, lease_ms, 100).await);
    const TASKS: usize = 120;
    let mut keys = HashSet::new();
    for n in 0..TASKS {
        let t = task("research", &format!("s{n}"), 1);
        keys.insert(t.step_id.clone());
        a.enqueue(t).await.unwrap();
    }
    for _ in 0..TASKS {
        a.claim("w", &types(&["research"]), Duration::ZERO)
            .await
            .unwrap()
            .expect("a task");
    }
    // Both nodes sweep, over and over and at the same moments, until every task came back (or
    // the bound passed: then the count below fails).
    let total = Arc::new(AtomicUsize::new(0));
    let sweeper = |q: Arc<PgQueue>| {
        let total = total.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let until = tokio::time::Instant::now() + BOUND;
            while tokio::time::Instant::now() < until && total.load(Ordering::SeqCst) < TASKS {
                let expired = q.expire().await.unwrap();
                total.fetch_add(expired.len(), Ordering::SeqCst);
                got.extend(expired);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        })
    };
    let (mut all, mut other) = tokio::try_join!(sweeper(a.clone()), sweeper(b.clone())).unwrap();
    eprintln!("node A expired {}, node B {}", all.len(), other.len());
    all.append(&mut other);
    let steps: Vec<String> = all.iter().map(|t| t.step_id.clone()).collect();
    let unique: HashSet<&String> = steps.iter().collect();
    assert_eq!(unique.len(), steps.len(), "no task expired twice");
    assert_eq!(
        unique,
        keys.iter().collect::<HashSet<_>>(),
        "every task expired"
    );
    assert!(a.expire().await.unwrap().is_empty());
    assert!(b.expire().await.unwrap().is_empty());
    drop((a, b));
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_claimed_through_one_node_is_reported_through_another() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = queue(&url, &schema, 30_000, 100).await;
    let b = queue(&url, &schema, 30_000, 100).await;
    let queued = task("research", "s", 1);
    let id = a.enqueue(queued.clone()).await.unwrap();
    let lease = a
        .claim("w1", &types(&["research"]), Duration::ZERO)
        .await
        .unwrap()
        .expect("the task");
    assert_eq!(
        (lease.task_id.as_str(), &lease.task),
        (id.as_str(), &queued)
    );
    // Both nodes see the worker and what it holds, and what waits.
    b.claim("w2", &types(&["write"]), Duration::ZERO)
        .await
        .unwrap();
    for q in [&a, &b] {
        let workers = q.workers().await.unwrap();
        let listed: Vec<(&str, &[String])> = workers
            .iter()
            .map(|w| (w.worker_id.as_str(), w.tasks.as_slice()))
            .collect();
        assert_eq!(listed, [("w1", &[id.clone()][..]), ("w2", &[][..])]);
    }
    // The holder heartbeats through B; another worker is refused there as on A.
    assert!(!b.heartbeat(&id, "w1").await.unwrap().stop);
    assert!(matches!(
        b.heartbeat(&id, "w2").await,
        Err(RemoteError::WrongWorker { .. })
    ));
    // A stop sent through A reaches the heartbeat through B.
    assert_eq!(a.stop(&id).await.unwrap(), Stopped::Flagged);
    assert!(b.heartbeat(&id, "w1").await.unwrap().stop);
    // The report through B ends the task everywhere.
    assert_eq!(b.fail(&id, "w1").await.unwrap(), queued);
    assert!(matches!(
        a.complete(&id, "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert!(matches!(
        a.heartbeat(&id, "w1").await,
        Err(RemoteError::UnknownTask(_))
    ));
    assert_eq!(b.stop(&id).await.unwrap(), Stopped::Gone);
    drop((a, b));
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_sent_again_by_another_node_answers_its_live_task() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = queue(&url, &schema, 30_000, 100).await;
    let b = queue(&url, &schema, 30_000, 100).await;
    let attempt = task("research", "s", 1);
    let id = a.enqueue(attempt.clone()).await.unwrap();
    // Node A "died"; node B recovered the plan and sends the attempt again: the same task.
    assert_eq!(b.enqueue(attempt.clone()).await.unwrap(), id);
    assert_eq!(
        b.queued_by_type().await.unwrap(),
        vec![("research".to_owned(), 1)]
    );
    // A worker took it through A before; still the same task once claimed, and the worker's
    // report through B hands back the attempt for B to record.
    let lease = a
        .claim("w", &types(&["research"]), Duration::ZERO)
        .await
        .unwrap()
        .expect("the task");
    assert_eq!(lease.task_id, id);
    assert_eq!(b.enqueue(attempt.clone()).await.unwrap(), id);
    assert!(b
        .claim("w2", &types(&["research"]), Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    assert_eq!(b.complete(&id, "w").await.unwrap(), attempt);
    // Racing re-sends from both nodes of a new attempt agree on one task.
    let next = task("research", "s", 2);
    let (x, y) = tokio::join!(a.enqueue(next.clone()), b.enqueue(next.clone()));
    assert_eq!(x.unwrap(), y.unwrap());
    drop((a, b));
    drop_schemas(&url, &[schema]).await;
}

/// The backend pid of the queue's listening connection, once there is one.
async fn listener_pid(client: &tokio_postgres::Client, name: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_from_another_node_wakes_a_waiting_claim_and_the_listener_reconnects() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = queue(&url, &schema, 30_000, 100).await;
    // B looks for tasks only on a hint: its poll period is far beyond the bound.
    let b = Arc::new(queue(&url, &schema, 30_000, 3_600_000).await);
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let waiting = |b: Arc<PgQueue>| {
        tokio::spawn(async move { b.claim("w", &types(&["research"]), BOUND * 3).await })
    };

    let claim = waiting(b.clone());
    let first = a.enqueue(task("research", "s1", 1)).await.unwrap();
    let lease = tokio::time::timeout(BOUND, claim)
        .await
        .expect("the hint woke the claim")
        .unwrap()
        .unwrap()
        .expect("the task");
    assert_eq!(lease.task_id, first);

    // Kill B's listening connection: it reconnects and listens again.
    let until = tokio::time::Instant::now() + BOUND;
    let old = loop {
        if let Some(pid) = listener_pid(&admin, b.listener_name()).await {
            break pid;
        }
        assert!(tokio::time::Instant::now() < until, "B never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    loop {
        if listener_pid(&admin, b.listener_name())
            .await
            .is_some_and(|pid| pid != old)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "B never listened again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let claim = waiting(b.clone());
    let second = a.enqueue(task("research", "s2", 1)).await.unwrap();
    let lease = tokio::time::timeout(BOUND, claim)
        .await
        .expect("the reconnected listener woke the claim")
        .unwrap()
        .unwrap()
        .expect("the task");
    assert_eq!(lease.task_id, second);

    // Closing B wakes its waiting claim with nothing, and closes its listening connection.
    let claim = waiting(b.clone());
    tokio::task::yield_now().await;
    b.close();
    let after_close = tokio::time::timeout(BOUND, claim)
        .await
        .expect("woken by the close")
        .unwrap()
        .unwrap();
    assert!(after_close.is_none());
    loop {
        if listener_pid(&admin, b.listener_name()).await.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "B still listens after its close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    drop(admin);
    let _ = driver.await;
    drop_schemas(&url, &[schema]).await;
}

/// A hint wakes one waiting claim of its agent type, not all; no task is left waiting while a
/// claim that could take it sleeps: claims waiting on a node that never polls all get one of
/// the tasks queued through another node, whatever types they asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_reaches_a_waiting_claim_on_hints_alone() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = queue(&url, &schema, 30_000, 100).await;
    let b = Arc::new(queue(&url, &schema, 30_000, 3_600_000).await);
    // Wait until B listens (a hint sent before would be lost, and B never polls).
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let until = tokio::time::Instant::now() + BOUND;
    while admin
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            &[&b.listener_name()],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < until, "B never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Five claims for research, three for write, two for either.
    let mut claims = tokio::task::JoinSet::new();
    let asks: Vec<&[&str]> = [&["research"][..]; 5]
        .into_iter()
        .chain([&["write"][..]; 3])
        .chain([&["write", "research"][..]; 2])
        .collect();
    for (n, asked) in asks.into_iter().enumerate() {
        let b = b.clone();
        let asked = types(asked);
        claims.spawn(async move { b.claim(&format!("w{n}"), &asked, BOUND * 3).await });
    }
    // Let them all start waiting: each has looked once (and recorded its worker) by then.
    while b.workers().await.unwrap().len() < 10 {
        assert!(
            tokio::time::Instant::now() < until,
            "the claims never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Enough of each type that every claim can have one whichever the two claims asking for
    // either take: seven for research (five plus two), five for write (three plus two).
    let mut queued = HashSet::new();
    for (agent, n) in [("research", 7), ("write", 5)] {
        for i in 0..n {
            let t = task(agent, &format!("{agent}{i}"), 1);
            queued.insert(a.enqueue(t).await.unwrap());
        }
    }
    let mut got = HashSet::new();
    while let Some(claim) = tokio::time::timeout(BOUND, claims.join_next())
        .await
        .unwrap_or_else(|_| panic!("only {} waiting claims got a task", got.len()))
    {
        let lease = claim
            .unwrap()
            .unwrap()
            .expect("a task, not the end of the wait");
        assert!(got.insert(lease.task_id), "a task handed out twice");
    }
    assert_eq!(got.len(), 10, "ten claims, ten tasks");
    assert!(got.is_subset(&queued));
    let left: usize = a
        .queued_by_type()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(left, 2);
    drop((a, b));
    drop(admin);
    let _ = driver.await;
    drop_schemas(&url, &[schema]).await;
}

/// A queue whose database fails its statements says so: every call is `Unavailable` naming the
/// database's complaint, and a waiting claim keeps looking until its wait is over before it
/// answers (a worker told at once would poll again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_is_an_unavailable_queue_not_a_panic() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let q = queue(&url, &schema, 30_000, 20).await;
    q.enqueue(task("research", "a", 1)).await.unwrap();
    drop_schemas(&url, std::slice::from_ref(&schema)).await;
    let unavailable = |e: RemoteError| match e {
        RemoteError::Unavailable(why) => assert!(why.contains("database"), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    };
    unavailable(q.enqueue(task("research", "b", 1)).await.unwrap_err());
    unavailable(q.heartbeat("task_x", "w").await.unwrap_err());
    unavailable(q.expire().await.unwrap_err());
    unavailable(q.workers().await.unwrap_err());
    let wait = Duration::from_millis(300);
    let asked = tokio::time::Instant::now();
    let claimed = q.claim("w", &types(&["research"]), wait).await;
    assert!(asked.elapsed() >= wait, "answered before its wait was over");
    unavailable(claimed.unwrap_err());
}

/// An engine process on `schema`: its own store (connections) and task queue.
async fn engine_on(url: &str, schema: &str) -> (Engine, RemoteQueue) {
    let store = Arc::new(open(url, schema).await);
    let remote = RemoteQueue::with_queue(Arc::new(PgQueue::new(&store, 30_000).await.unwrap()));
    let engine = Engine::open(
        store,
        Registry::with_builtins(),
        EngineOptions {
            node_id: "n1".into(),
            remote: Some(remote.clone()),
            ..EngineOptions::default()
        },
    )
    .await
    .expect("an engine");
    (engine, remote)
}

/// An engine over PostgreSQL hands a remote step to the queue and stops; another engine process
/// (its own store and queue on the same database) recovers the plan, sends the attempt again
/// and is answered the task the worker still holds, whose report settles the step: run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_takes_the_report_of_a_task_its_predecessor_queued() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let (first, q1) = engine_on(&url, &schema).await;
    let plan = Plan::parse(
        "plan_id: r1\nsteps:\n  - {step_id: a, action: search, agent_type: research}\n  - {step_id: b, action: echo, agent_type: builtin.echo, params: {n: '{{ steps.a.output.found }}'}}\n",
        Format::Yaml,
    )
    .unwrap();
    first.register(plan, "t").await.unwrap();
    first.start("r1", "t", None).await.unwrap();
    let lease = q1
        .poll("w", &types(&["research"]), BOUND)
        .await
        .expect("a task");
    assert_eq!((lease.task.step_id.as_str(), lease.task.attempt), ("a", 1));
    first.shutdown().await;
    drop((first, q1));

    let (second, q2) = engine_on(&url, &schema).await;
    let until = tokio::time::Instant::now() + BOUND;
    loop {
        let events = second.events("r1", 0, 1_000).await.unwrap();
        if events
            .iter()
            .any(|e| matches!(e.kind, EventKind::StepRecovered { attempt: 1, .. }))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the plan was never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!q2.heartbeat(&lease.task_id, "w").await.unwrap().stop);
    assert!(q2.queued_by_type().await.is_empty(), "no second task");
    q2.complete_recorded(&lease.task_id, "w", json!({"found": 3}), None)
        .await
        .unwrap();
    let done = tokio::time::timeout(BOUND, second.wait_settled("r1"))
        .await
        .expect("the plan settles")
        .unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.attempts, 1, "the step ran once");
    assert_eq!(done.steps[1].rec.output, Some(json!({"n": 3})));
    second.shutdown().await;
    drop((second, q2));
    drop_schemas(&url, &[schema]).await;
}
