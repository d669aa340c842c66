//! What the SQLite store tells metrics: plan counts by state and writer counters, through the
//! `Store` trait.

use std::sync::Arc;

use cairn_store::conformance::ev;
use cairn_store::{Append, CreatePlan, EventLog, Store};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};

fn create(plan_id: &str, state: &str) -> CreatePlan {
    CreatePlan {
        plan_id: plan_id.into(),
        created_at: 1,
        state: state.into(),
        events: vec![ev(1, "created")],
        reviews: Vec::new(),
    }
}

#[tokio::test]
async fn counts_plans_by_state_and_reports_writer_stats() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).unwrap());
    assert!(store.count_plans_by_state().await.unwrap().is_empty());
    assert_eq!(store.stats().unwrap().commits, 0);

    for (id, state) in [("a", "running"), ("b", "running"), ("c", "idle")] {
        store.create_plan(create(id, state)).await.unwrap();
    }
    store
        .append(Append {
            plan_id: "c".into(),
            expected_seq: 1,
            fence: None,
            state: Some("completed".into()),
            events: vec![ev(2, "done"), ev(3, "done")],
            reviews: Vec::new(),
        })
        .await
        .unwrap();
    let counts = store.count_plans_by_state().await.unwrap();
    assert_eq!(
        counts,
        vec![("completed".to_owned(), 1), ("running".to_owned(), 2)]
    );

    let s = store.stats().unwrap();
    assert_eq!(s.requests, 4);
    assert_eq!(s.events, 5);
    assert!(s.commits >= 1 && s.commits <= 4, "{s:?}");
    assert!(s.max_batch >= 1);
    assert!(s.busy_seconds > 0.0);
}

fn append(plan_id: &str, seq: u64) -> Append {
    Append {
        plan_id: plan_id.into(),
        expected_seq: seq - 1,
        fence: None,
        state: None,
        events: vec![ev(seq, "step")],
        reviews: Vec::new(),
    }
}

/// One request at a time: each finds the writer idle and is committed by its caller, in a
/// transaction of its own.
#[tokio::test]
async fn a_request_that_finds_the_writer_idle_is_committed_by_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).unwrap();
    store.create_plan(create("a", "running")).await.unwrap();
    for seq in 2..=20 {
        store.append(append("a", seq)).await.unwrap();
    }
    let s = store.stats();
    assert_eq!((s.requests, s.commits, s.inline_commits), (20, 20, 20));
    let seqs: Vec<u64> = store
        .read_events("a", 0, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

/// Callers committing inline and requests queued for the writer thread, interleaved by a burst
/// on two runtime threads: every request is answered, every plan's log is whole, and event ids
/// (the global order) follow each plan's seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_commits_interleave_without_loss() {
    const PLANS: usize = 16;
    const EACH: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PLANS {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("p{p}");
            store.create_plan(create(&id, "running")).await.unwrap();
            for seq in 2..=EACH {
                store.append(append(&id, seq)).await.unwrap();
            }
        });
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the burst was answered");
    let s = store.stats();
    assert_eq!(s.requests, PLANS as u64 * EACH, "{s:?}");
    assert_eq!(s.events, PLANS as u64 * EACH, "{s:?}");
    let all = store.read_all_events(0, 10_000).await.unwrap();
    assert_eq!(all.len(), PLANS * EACH as usize);
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for e in &all {
        let seen = last.entry(e.plan_id.clone()).or_default();
        assert_eq!(e.seq, *seen + 1, "{} out of order", e.plan_id);
        *seen = e.seq;
    }
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
}
