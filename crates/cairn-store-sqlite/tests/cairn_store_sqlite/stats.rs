//! What the SQLite store tells metrics: plan counts by state and writer counters, through the
//! `Store` trait.

use std::sync::Arc;

use cairn_store::conformance::ev;
use cairn_store::{Append, CreatePlan, Store};
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
