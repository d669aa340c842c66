//! The conformance suite: the behaviour every [`Store`] backend must show, as plain async
//! functions so each backend's own tests can run it from whatever runtime they use.
//!
//! A backend's test calls [`run_all`] with a factory that yields a fresh, empty store per case:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn conformance() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let n = std::sync::atomic::AtomicUsize::new(0);
//!     cairn_store::conformance::run_all(|| open(dir.path().join(format!("{}.db", n.fetch_add(1, Relaxed))))).await;
//! }
//! ```
//!
//! Each case is also public on its own (taking an `Arc<dyn Store>`) so a failing one can be run
//! alone. Cases panic with a message on failure, like any test. They need a tokio runtime
//! (the concurrency cases spawn tasks) but use no tokio test macros themselves.
//!
//! Where the trait leaves a corner open, the suite pins one answer so backends agree:
//! - `create_plan` with no events, or events not starting at seq 1, is `Invalid`.
//! - Every per-plan call except `get_plan` answers `NotFound` for an unknown plan.
//! - `list_plans` with `limit == 0` is `Invalid`.
//! - A plan's `updated_at` is the `at` of its newest event.
//! - A lease is renewed (token kept) when the same node claims again, even after expiry; another
//!   node's claim after expiry (or after a release) takes over with a larger token.
//! - `append` checks the fence against the current lease's node and token only (expiry is the
//!   claimant's business); a fence on a plan that was never claimed is `Fenced`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use crate::{
    Append, CheckpointMark, CreatePlan, Fence, Micros, NewEvent, OpenReviews, ReviewRow, Store,
    StoreError, TokenRow,
};

/// Runs every case, each against a fresh store from `make`.
pub async fn run_all<S: Store>(make: impl Fn() -> S) {
    async fn case<F, Fut>(name: &str, store: Arc<dyn Store>, f: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = ()>,
    {
        eprintln!("conformance: {name}");
        f(store).await;
    }
    let fresh = || -> Arc<dyn Store> { Arc::new(make()) };
    case("create_plan", fresh(), create_plan).await;
    case("append_contiguity", fresh(), append_contiguity).await;
    case("seq_conflict", fresh(), seq_conflict).await;
    case("not_found", fresh(), not_found).await;
    case("global_ids", fresh(), global_ids).await;
    case("read_events", fresh(), read_events).await;
    case("read_events_of_kind", fresh(), read_events_of_kind).await;
    case("read_all_events", fresh(), read_all_events).await;
    case("plan_row", fresh(), plan_row).await;
    case("list_plans", fresh(), list_plans).await;
    case("bad_cursor", fresh(), bad_cursor).await;
    case("plans_in_states", fresh(), plans_in_states).await;
    case("checkpoints", fresh(), checkpoints).await;
    case("snapshots", fresh(), snapshots).await;
    case("delete_plan", fresh(), delete_plan).await;
    case("leases", fresh(), leases).await;
    case("concurrent_plans", fresh(), concurrent_plans).await;
    case("racing_appends", fresh(), racing_appends).await;
    case("tokens", fresh(), tokens).await;
    case("cursors", fresh(), cursors).await;
    case("reviews", fresh(), reviews).await;
}

// ---- helpers -------------------------------------------------------------------------------

/// A plain event at `seq`, its `at` derived from the seq so tests can predict `updated_at`.
pub fn ev(seq: u64, kind: &str) -> NewEvent {
    NewEvent {
        seq,
        at: 1_000_000 + seq as Micros,
        actor: "test".into(),
        kind: kind.into(),
        data: format!("{{\"n\":{seq}}}"),
        checkpoint: None,
    }
}

fn cp(seq: u64, trigger: &str, label: Option<&str>) -> NewEvent {
    NewEvent {
        checkpoint: Some(CheckpointMark {
            trigger: trigger.into(),
            label: label.map(Into::into),
        }),
        ..ev(seq, "checkpointed")
    }
}

fn create(plan_id: &str, created_at: Micros, n: u64) -> CreatePlan {
    CreatePlan {
        plan_id: plan_id.into(),
        created_at,
        state: "running".into(),
        events: (1..=n).map(|s| ev(s, "created")).collect(),
        reviews: Vec::new(),
    }
}

fn append(plan_id: &str, expected_seq: u64, n: u64) -> Append {
    Append {
        plan_id: plan_id.into(),
        expected_seq,
        fence: None,
        state: None,
        events: (expected_seq + 1..=expected_seq + n)
            .map(|s| ev(s, "step"))
            .collect(),
        reviews: Vec::new(),
    }
}

fn review(plan_id: &str, review_id: &str, state: &str, opened_at: Micros) -> ReviewRow {
    ReviewRow {
        plan_id: plan_id.into(),
        review_id: review_id.into(),
        state: state.into(),
        opened_at,
        data: format!("{{\"review_id\":\"{review_id}\",\"state\":\"{state}\"}}"),
    }
}

async fn all_seqs(store: &dyn Store, plan_id: &str) -> Vec<u64> {
    let events = store.read_events(plan_id, 0, None, 100_000).await.unwrap();
    events.iter().map(|e| e.seq).collect()
}

fn assert_contiguous(seqs: &[u64], n: u64) {
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "log must be 1..={n}");
}

// ---- cases ---------------------------------------------------------------------------------

pub async fn create_plan(store: Arc<dyn Store>) {
    let stored = store.create_plan(create("p1", 10, 2)).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].plan_id, "p1");
    assert_eq!(stored[0].seq, 1);
    assert_eq!(stored[1].seq, 2);
    assert!(stored[0].id >= 1 && stored[1].id > stored[0].id);
    assert_eq!(stored[0].kind, "created");
    assert_eq!(stored[0].data, "{\"n\":1}");

    let row = store.get_plan("p1").await.unwrap().unwrap();
    assert_eq!(row.plan_id, "p1");
    assert_eq!(row.state, "running");
    assert_eq!(row.created_at, 10);
    assert_eq!(row.last_seq, 2);

    let again = store.create_plan(create("p1", 11, 1)).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(ref id)) if id == "p1"),
        "{again:?}"
    );
    assert_contiguous(&all_seqs(&*store, "p1").await, 2);

    let empty = store.create_plan(create("p2", 10, 0)).await;
    assert!(matches!(empty, Err(StoreError::Invalid(_))), "{empty:?}");
    let mut bad = create("p3", 10, 2);
    bad.events[0].seq = 2;
    bad.events[1].seq = 3;
    let bad = store.create_plan(bad).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    assert!(store.get_plan("p2").await.unwrap().is_none());
    assert!(store.get_plan("p3").await.unwrap().is_none());
}

pub async fn append_contiguity(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 1)).await.unwrap();
    let out = store.append(append("p", 1, 3)).await.unwrap();
    assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);

    // Empty batch.
    let mut req = append("p", 4, 0);
    assert!(req.events.is_empty());
    let r = store.append(req.clone()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    // First seq not expected + 1.
    req = append("p", 4, 2);
    req.events[0].seq = 6;
    req.events[1].seq = 7;
    let r = store.append(req).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    // A gap inside the batch.
    req = append("p", 4, 3);
    req.events[2].seq = 8;
    let r = store.append(req).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    assert_contiguous(&all_seqs(&*store, "p").await, 4);
    assert_eq!(store.get_plan("p").await.unwrap().unwrap().last_seq, 4);
}

pub async fn seq_conflict(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 3)).await.unwrap();
    let r = store.append(append("p", 1, 1)).await;
    match r {
        Err(StoreError::SeqConflict {
            plan_id,
            expected,
            actual,
        }) => {
            assert_eq!((plan_id.as_str(), expected, actual), ("p", 1, 3));
        }
        other => panic!("expected SeqConflict, got {other:?}"),
    }
    // Ahead of the log is a conflict too.
    let r = store.append(append("p", 5, 1)).await;
    assert!(matches!(r, Err(StoreError::SeqConflict { .. })), "{r:?}");
    assert_contiguous(&all_seqs(&*store, "p").await, 3);
    store.append(append("p", 3, 1)).await.unwrap();
    assert_contiguous(&all_seqs(&*store, "p").await, 4);
}

pub async fn not_found(store: Arc<dyn Store>) {
    fn nf<T: std::fmt::Debug>(r: Result<T, StoreError>) {
        assert!(
            matches!(r, Err(StoreError::NotFound(ref id)) if id == "nope"),
            "{r:?}"
        );
    }
    nf(store.append(append("nope", 0, 1)).await);
    nf(store.read_events("nope", 0, None, 10).await);
    nf(store.read_events_of_kind("nope", &["x"], 0, 10).await);
    nf(store.list_checkpoints("nope", 0, 10).await);
    nf(store.get_checkpoint("nope", 1).await);
    nf(store.put_snapshot("nope", 1, vec![1]).await);
    nf(store.get_snapshot("nope", 1).await);
    nf(store.claim("nope", "a", 1000, 0).await);
    assert!(store.get_plan("nope").await.unwrap().is_none());
    assert!(!store.delete_plan("nope").await.unwrap());
}

pub async fn global_ids(store: Arc<dyn Store>) {
    assert_eq!(store.last_event_id().await.unwrap(), 0);
    let mut last = 0;
    let mut check = |evs: &[crate::StoredEvent]| {
        for e in evs {
            assert!(e.id > last, "id {} after {last}", e.id);
            last = e.id;
        }
    };
    check(&store.create_plan(create("a", 1, 2)).await.unwrap());
    check(&store.create_plan(create("b", 2, 1)).await.unwrap());
    check(&store.append(append("a", 2, 2)).await.unwrap());
    check(&store.append(append("b", 1, 3)).await.unwrap());
    check(&store.append(append("a", 4, 1)).await.unwrap());
    assert_eq!(store.last_event_id().await.unwrap(), last);

    // Ids are never reused, even after the newest events are deleted.
    assert!(store.delete_plan("a").await.unwrap());
    let again = store.create_plan(create("c", 3, 1)).await.unwrap();
    assert!(
        again[0].id > last,
        "id {} reused (last was {last})",
        again[0].id
    );
}

pub async fn read_events(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 10)).await.unwrap();
    store.create_plan(create("other", 1, 3)).await.unwrap();
    let seqs = |evs: Vec<crate::StoredEvent>| evs.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read_events("p", 0, None, 100).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.read_events("p", 3, None, 100).await.unwrap()),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.read_events("p", 3, Some(6), 100).await.unwrap()),
        [4, 5, 6]
    );
    assert_eq!(
        seqs(store.read_events("p", 3, Some(6), 2).await.unwrap()),
        [4, 5]
    );
    assert_eq!(
        seqs(store.read_events("p", 0, None, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store.read_events("p", 10, None, 5).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store.read_events("p", 5, Some(5), 5).await.unwrap()),
        Vec::<u64>::new()
    );
    let evs = store.read_events("p", 0, Some(1), 1).await.unwrap();
    assert_eq!(evs[0].plan_id, "p");
    assert_eq!(evs[0].at, 1_000_001);
    assert_eq!(evs[0].actor, "test");
    assert_eq!(evs[0].checkpoint, None);
}

pub async fn read_events_of_kind(store: Arc<dyn Store>) {
    let mut req = create("p", 1, 6);
    for (i, e) in req.events.iter_mut().enumerate() {
        e.kind = ["a", "b", "c"][i % 3].into();
    }
    store.create_plan(req).await.unwrap();
    let seqs = |evs: Vec<crate::StoredEvent>| evs.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read_events_of_kind("p", &["a"], 0, 10).await.unwrap()),
        [1, 4]
    );
    assert_eq!(
        seqs(
            store
                .read_events_of_kind("p", &["a", "c"], 0, 10)
                .await
                .unwrap()
        ),
        [1, 3, 4, 6]
    );
    assert_eq!(
        seqs(
            store
                .read_events_of_kind("p", &["a", "c"], 1, 10)
                .await
                .unwrap()
        ),
        [3, 4, 6]
    );
    assert_eq!(
        seqs(
            store
                .read_events_of_kind("p", &["a", "c"], 1, 2)
                .await
                .unwrap()
        ),
        [3, 4]
    );
    assert_eq!(
        seqs(
            store
                .read_events_of_kind("p", &["zzz"], 0, 10)
                .await
                .unwrap()
        ),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store.read_events_of_kind("p", &[], 0, 10).await.unwrap()),
        Vec::<u64>::new()
    );
}

pub async fn read_all_events(store: Arc<dyn Store>) {
    store.create_plan(create("a", 1, 3)).await.unwrap();
    store.create_plan(create("b", 2, 4)).await.unwrap();
    store.append(append("a", 3, 3)).await.unwrap();
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all_events(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    let a: Vec<u64> = seen
        .iter()
        .filter(|e| e.plan_id == "a")
        .map(|e| e.seq)
        .collect();
    let b: Vec<u64> = seen
        .iter()
        .filter(|e| e.plan_id == "b")
        .map(|e| e.seq)
        .collect();
    assert_eq!(a, [1, 2, 3, 4, 5, 6]);
    assert_eq!(b, [1, 2, 3, 4]);
    assert_eq!(after, store.last_event_id().await.unwrap());
    assert!(store.read_all_events(after, 10).await.unwrap().is_empty());
    assert!(store.read_all_events(0, 0).await.unwrap().is_empty());
}

pub async fn plan_row(store: Arc<dyn Store>) {
    store.create_plan(create("p", 5, 1)).await.unwrap();
    let row = store.get_plan("p").await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.last_seq, row.created_at),
        ("running", 1, 5)
    );
    assert_eq!(row.updated_at, 1_000_001);

    // No state change: state kept, last_seq and updated_at move.
    store.append(append("p", 1, 2)).await.unwrap();
    let row = store.get_plan("p").await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.last_seq, row.created_at),
        ("running", 3, 5)
    );
    assert_eq!(row.updated_at, 1_000_003);

    let mut req = append("p", 3, 1);
    req.state = Some("paused".into());
    store.append(req).await.unwrap();
    let row = store.get_plan("p").await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.last_seq), ("paused", 4));
    assert_eq!(row.updated_at, 1_000_004);

    // A refused append changes nothing.
    let mut req = append("p", 1, 1);
    req.state = Some("done".into());
    assert!(store.append(req).await.is_err());
    assert_eq!(store.get_plan("p").await.unwrap().unwrap(), row);
}

pub async fn list_plans(store: Arc<dyn Store>) {
    // 23 plans; created_at repeats in threes so ties must be broken consistently.
    let mut expected = Vec::new();
    for i in 0..23u64 {
        let id = format!("plan-{i:02}");
        let mut req = create(&id, (i / 3) as Micros, 1);
        if i % 4 == 0 {
            req.state = "done".into();
        }
        store.create_plan(req).await.unwrap();
        expected.push(id);
    }

    let collect = |state: Option<&'static str>, limit: usize| {
        let store = store.clone();
        async move {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let page = store
                    .list_plans(state, limit, cursor.as_deref())
                    .await
                    .unwrap();
                assert!(page.items.len() <= limit);
                pages += 1;
                assert!(pages < 100, "pagination does not terminate");
                all.extend(page.items);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            all
        }
    };

    let all = collect(None, 5).await;
    let ids: Vec<&str> = all.iter().map(|r| r.plan_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 23, "{ids:?}");
    assert_eq!(unique.len(), 23, "a plan repeated: {ids:?}");
    assert!(
        all.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "not newest first: {ids:?}"
    );
    // Newest first: the last three created (created_at 7, the highest) come first.
    let head: HashSet<&str> = ids[..2].iter().copied().collect();
    assert_eq!(head, HashSet::from(["plan-21", "plan-22"]));
    // The same order whatever the page size.
    let one_page = store.list_plans(None, 100, None).await.unwrap();
    assert!(one_page.next_cursor.is_none());
    assert_eq!(one_page.items, all);
    let by_one = collect(None, 1).await;
    assert_eq!(by_one, all);

    let done = collect(Some("done"), 2).await;
    let done_ids: Vec<&str> = done.iter().map(|r| r.plan_id.as_str()).collect();
    let want: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| id[5..].parse::<u64>().unwrap() % 4 == 0)
        .collect();
    assert_eq!(done_ids, want);
    assert!(done.iter().all(|r| r.state == "done"));

    let none = store.list_plans(Some("nothing"), 5, None).await.unwrap();
    assert!(none.items.is_empty() && none.next_cursor.is_none());
    let zero = store.list_plans(None, 0, None).await;
    assert!(matches!(zero, Err(StoreError::Invalid(_))), "{zero:?}");
}

pub async fn bad_cursor(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 1)).await.unwrap();
    for garbage in ["", "garbage", "1.x", "x.1", "..", "1.2.3.4"] {
        let r = store.list_plans(None, 5, Some(garbage)).await;
        assert!(
            matches!(r, Err(StoreError::BadCursor(_))),
            "{garbage:?}: {r:?}"
        );
    }
}

pub async fn plans_in_states(store: Arc<dyn Store>) {
    for (id, state) in [
        ("a", "running"),
        ("b", "paused"),
        ("c", "done"),
        ("d", "running"),
    ] {
        let mut req = create(id, 1, 1);
        req.state = state.into();
        store.create_plan(req).await.unwrap();
    }
    let mut got = store.plans_in_states(&["running", "paused"]).await.unwrap();
    got.sort();
    assert_eq!(got, ["a", "b", "d"]);
    assert!(store.plans_in_states(&["zzz"]).await.unwrap().is_empty());
    assert!(store.plans_in_states(&[]).await.unwrap().is_empty());
}

pub async fn checkpoints(store: Arc<dyn Store>) {
    let mut req = create("p", 1, 1);
    req.events[0] = cp(1, "initial", None);
    store.create_plan(req).await.unwrap();
    let mut req = append("p", 1, 4);
    req.events[1] = cp(3, "step", Some("after build"));
    req.events[3] = cp(5, "manual", Some("before deploy"));
    let stored = store.append(req).await.unwrap();
    assert_eq!(
        stored[1].checkpoint,
        Some(CheckpointMark {
            trigger: "step".into(),
            label: Some("after build".into())
        })
    );
    store.create_plan(create("other", 1, 2)).await.unwrap();

    let all = store.list_checkpoints("p", 0, 10).await.unwrap();
    let got: Vec<(u64, &str, Option<&str>)> = all
        .iter()
        .map(|c| (c.seq, c.trigger.as_str(), c.label.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "initial", None),
            (3, "step", Some("after build")),
            (5, "manual", Some("before deploy"))
        ]
    );
    assert!(all.iter().all(|c| c.plan_id == "p"));
    assert_eq!(all[1].at, 1_000_003);
    let after: Vec<u64> = store
        .list_checkpoints("p", 1, 1)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(after, [3]);
    assert_eq!(
        store.get_checkpoint("p", 3).await.unwrap().as_ref(),
        Some(&all[1])
    );
    assert_eq!(store.get_checkpoint("p", 2).await.unwrap(), None);
    assert_eq!(store.get_checkpoint("p", 99).await.unwrap(), None);
    assert!(store
        .list_checkpoints("other", 0, 10)
        .await
        .unwrap()
        .is_empty());
    let evs = store.read_events("p", 3, Some(5), 10).await.unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0].checkpoint, None);
    assert_eq!(
        evs[1].checkpoint.as_ref().map(|c| c.trigger.as_str()),
        Some("manual")
    );
}

pub async fn snapshots(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 1)).await.unwrap();
    store.append(append("p", 1, 20)).await.unwrap();
    assert_eq!(store.get_snapshot("p", 100).await.unwrap(), None);
    store.put_snapshot("p", 10, b"ten".to_vec()).await.unwrap();
    store
        .put_snapshot("p", 15, b"fifteen".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get_snapshot("p", 9).await.unwrap(), None);
    assert_eq!(
        store.get_snapshot("p", 10).await.unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.get_snapshot("p", 14).await.unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.get_snapshot("p", 21).await.unwrap(),
        Some((15, b"fifteen".to_vec()))
    );
    // Re-saving a seq replaces it.
    store
        .put_snapshot("p", 15, b"fifteen'".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_snapshot("p", u64::MAX).await.unwrap(),
        Some((15, b"fifteen'".to_vec()))
    );
    // Backends may drop old snapshots, but the newest is always kept and answers for the head.
    for s in 16..=21 {
        store.put_snapshot("p", s, vec![s as u8]).await.unwrap();
    }
    assert_eq!(
        store.get_snapshot("p", 21).await.unwrap(),
        Some((21, vec![21]))
    );
    assert_eq!(
        store.get_snapshot("p", 20).await.unwrap(),
        Some((20, vec![20]))
    );
    if let Some((seq, _)) = store.get_snapshot("p", 12).await.unwrap() {
        assert_eq!(seq, 10);
    }
}

pub async fn delete_plan(store: Arc<dyn Store>) {
    let mut req = create("p", 1, 2);
    req.events[1] = cp(2, "step", None);
    store.create_plan(req).await.unwrap();
    store.create_plan(create("keep", 2, 2)).await.unwrap();
    store.put_snapshot("p", 2, vec![1, 2]).await.unwrap();
    store.claim("p", "node-a", 60_000, 0).await.unwrap();

    assert!(store.delete_plan("p").await.unwrap());
    assert!(store.get_plan("p").await.unwrap().is_none());
    assert!(matches!(
        store.read_events("p", 0, None, 10).await,
        Err(StoreError::NotFound(_))
    ));
    let left: Vec<String> = store
        .read_all_events(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.plan_id)
        .collect();
    assert_eq!(left, ["keep", "keep"]);
    assert!(!store.delete_plan("p").await.unwrap());

    // Recreated under the same id, it starts afresh: no checkpoints, snapshots or lease.
    store.create_plan(create("p", 3, 1)).await.unwrap();
    assert!(store.list_checkpoints("p", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.get_snapshot("p", 10).await.unwrap(), None);
    let other = store.claim("p", "node-b", 60_000, 0).await.unwrap();
    assert_eq!(other.node, "node-b");
    assert_eq!(store.plans_in_states(&["running"]).await.unwrap().len(), 2);
}

pub async fn leases(store: Arc<dyn Store>) {
    const S: Micros = 1_000_000;
    store.create_plan(create("p", 1, 1)).await.unwrap();

    let a = store.claim("p", "node-a", 10_000, 100 * S).await.unwrap();
    assert_eq!(a.node, "node-a");
    let renewed = store.claim("p", "node-a", 10_000, 105 * S).await.unwrap();
    assert_eq!(renewed, a, "renewal keeps the token");

    // A's lease runs until 115 s.
    match store.claim("p", "node-b", 10_000, 114 * S).await {
        Err(StoreError::LeaseHeld {
            plan_id,
            owner,
            until,
        }) => {
            assert_eq!(
                (plan_id.as_str(), owner.as_str(), until),
                ("p", "node-a", 115 * S)
            );
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }

    // A appends under its fence.
    let mut req = append("p", 1, 1);
    req.fence = Some(a.clone());
    store.append(req).await.unwrap();

    // After expiry B takes over with a larger token.
    let b = store.claim("p", "node-b", 10_000, 116 * S).await.unwrap();
    assert_eq!(b.node, "node-b");
    assert!(b.token > a.token, "{b:?} vs {a:?}");

    // A's stale fence is refused and leaves the log untouched.
    let mut req = append("p", 2, 1);
    req.fence = Some(a.clone());
    match store.append(req).await {
        Err(StoreError::Fenced { plan_id, owner }) => {
            assert_eq!((plan_id.as_str(), owner.as_str()), ("p", "node-b"));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_contiguous(&all_seqs(&*store, "p").await, 2);
    // A fence with B's node but a wrong token is stale too.
    let mut req = append("p", 2, 1);
    req.fence = Some(Fence {
        node: "node-b".into(),
        token: b.token + 1,
    });
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Fenced { .. })
    ));

    // B appends; an administrative append without a fence is allowed.
    let mut req = append("p", 2, 1);
    req.fence = Some(b.clone());
    store.append(req).await.unwrap();
    store.append(append("p", 3, 1)).await.unwrap();
    assert_contiguous(&all_seqs(&*store, "p").await, 4);

    // Releasing with A's stale fence is a no-op: B's lease still holds.
    store.release("p", &a).await.unwrap();
    assert!(matches!(
        store.claim("p", "node-a", 10_000, 117 * S).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    // B releases; A can claim at once, with a token larger than B's.
    store.release("p", &b).await.unwrap();
    let a2 = store.claim("p", "node-a", 10_000, 117 * S).await.unwrap();
    assert!(a2.token > b.token, "{a2:?} vs {b:?}");
    // Releasing a plan that is gone is not an error.
    store.delete_plan("p").await.unwrap();
    store.release("p", &a2).await.unwrap();

    // A fence on a plan that was never claimed is refused.
    store.create_plan(create("q", 1, 1)).await.unwrap();
    let mut req = append("q", 1, 1);
    req.fence = Some(a);
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Fenced { .. })
    ));
}

/// 50 tasks each append 20 single-event batches to their own plan, all at once.
pub async fn concurrent_plans(store: Arc<dyn Store>) {
    const PLANS: usize = 50;
    const EACH: u64 = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PLANS {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("c{p}");
            store
                .create_plan(create(&id, p as Micros, 1))
                .await
                .unwrap();
            for seq in 1..=EACH {
                store.append(append(&id, seq, 1)).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for p in 0..PLANS {
        let id = format!("c{p}");
        assert_contiguous(&all_seqs(&*store, &id).await, EACH + 1);
        assert_eq!(
            store.get_plan(&id).await.unwrap().unwrap().last_seq,
            EACH + 1
        );
    }
    let all = store.read_all_events(0, 100_000).await.unwrap();
    assert_eq!(all.len(), PLANS * (EACH as usize + 1));
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.last_event_id().await.unwrap(), all[all.len() - 1].id);
}

/// Ten tasks race to append at the same `expected_seq`: exactly one wins each seq.
pub async fn racing_appends(store: Arc<dyn Store>) {
    const TASKS: usize = 10;
    const EACH: usize = 10;
    store.create_plan(create("r", 1, 1)).await.unwrap();

    // One round, everyone at expected_seq 1.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut req = append("r", 1, 1);
            req.events[0].actor = format!("t{t}");
            store.append(req).await
        });
    }
    let (mut won, mut conflicts) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::SeqConflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((won, conflicts), (1, TASKS - 1));

    // Then each task keeps retrying until it has won EACH seqs.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut wins = Vec::new();
            while wins.len() < EACH {
                let last = store.get_plan("r").await.unwrap().unwrap().last_seq;
                let mut req = append("r", last, 1);
                req.events[0].actor = format!("t{t}");
                match store.append(req).await {
                    Ok(evs) => wins.push(evs[0].seq),
                    Err(StoreError::SeqConflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            wins
        });
    }
    let mut won_seqs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        won_seqs.extend(r.unwrap());
    }
    won_seqs.sort_unstable();
    let total = 2 + (TASKS * EACH) as u64;
    assert_eq!(
        won_seqs,
        (3..=total).collect::<Vec<_>>(),
        "each seq won exactly once"
    );
    assert_contiguous(&all_seqs(&*store, "r").await, total);
}

/// Tokens are stored by hash, listed oldest first, found by hash, revoked once.
pub async fn tokens(store: Arc<dyn Store>) {
    let token = |id: &str, hash: &str, at: Micros| TokenRow {
        id: id.into(),
        user: format!("user-{id}"),
        role: "operator".into(),
        hash: hash.into(),
        created_at: at,
        revoked_at: None,
        expires_at: None,
    };
    assert!(store.list_tokens().await.unwrap().is_empty());
    store.create_token(token("t1", "h1", 10)).await.unwrap();
    store.create_token(token("t2", "h2", 20)).await.unwrap();
    // Neither the id nor the hash may repeat.
    assert!(matches!(
        store.create_token(token("t1", "h9", 30)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_token(token("t9", "h2", 30)).await,
        Err(StoreError::Invalid(_))
    ));
    let all = store.list_tokens().await.unwrap();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert_eq!(
        store.token_by_hash("h2").await.unwrap(),
        Some(token("t2", "h2", 20))
    );
    assert_eq!(store.token_by_hash("nope").await.unwrap(), None);
    assert!(store.revoke_token("t1", 40).await.unwrap());
    assert!(!store.revoke_token("t1", 50).await.unwrap(), "revoked once");
    assert!(!store.revoke_token("unknown", 50).await.unwrap());
    let revoked = store.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(40));
    // An expiry is kept as given.
    let expiring = TokenRow {
        expires_at: Some(1_000),
        ..token("t3", "h3", 60)
    };
    store.create_token(expiring.clone()).await.unwrap();
    assert_eq!(store.token_by_hash("h3").await.unwrap(), Some(expiring));
}

/// Cursors start unset, and keep the last value set.
pub async fn cursors(store: Arc<dyn Store>) {
    assert_eq!(store.get_cursor("webhook:a").await.unwrap(), None);
    store.set_cursor("webhook:a", 7).await.unwrap();
    store.set_cursor("webhook:b", 1).await.unwrap();
    store.set_cursor("webhook:a", 42).await.unwrap();
    assert_eq!(store.get_cursor("webhook:a").await.unwrap(), Some(42));
    assert_eq!(store.get_cursor("webhook:b").await.unwrap(), Some(1));
}

/// The review index: rows written with the events, replaced by id, listed oldest first across
/// plans with filters and cursors, counted when open, refused with a refused append, removed
/// with their plan.
pub async fn reviews(store: Arc<dyn Store>) {
    let empty = store.list_reviews(None, None, 10, None).await.unwrap();
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());
    assert_eq!(store.open_reviews().await.unwrap(), OpenReviews::default());

    // A plan created with a (closed) review, as a fork or an import may be.
    let mut req = create("a", 1, 1);
    req.reviews = vec![review("a", "rv-1", "closed", 10)];
    store.create_plan(req).await.unwrap();
    store.create_plan(create("b", 2, 1)).await.unwrap();

    let mut req = append("a", 1, 1);
    req.reviews = vec![review("a", "rv-2", "open", 30)];
    store.append(req).await.unwrap();
    let mut req = append("b", 1, 1);
    req.reviews = vec![review("b", "rv-2", "open", 20)];
    store.append(req).await.unwrap();

    let ids = |page: &crate::Page<ReviewRow>| -> Vec<(String, String)> {
        page.items
            .iter()
            .map(|r| (r.plan_id.clone(), r.review_id.clone()))
            .collect()
    };
    let all = store.list_reviews(None, None, 10, None).await.unwrap();
    assert_eq!(
        ids(&all),
        [
            ("a".into(), "rv-1".into()),
            ("b".into(), "rv-2".into()),
            ("a".into(), "rv-2".into())
        ]
    );
    assert_eq!(all.items[2], review("a", "rv-2", "open", 30));
    assert_eq!(
        store.open_reviews().await.unwrap(),
        OpenReviews {
            count: 2,
            oldest_opened_at: Some(20)
        }
    );

    // Pages of one, in the same order, with no duplicates or gaps.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_reviews(None, None, 1, cursor.as_deref())
            .await
            .unwrap();
        seen.extend(ids(&page));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids(&all));

    let open = store
        .list_reviews(Some("open"), None, 10, None)
        .await
        .unwrap();
    assert_eq!(
        ids(&open),
        [("b".into(), "rv-2".into()), ("a".into(), "rv-2".into())]
    );
    let of_a = store.list_reviews(None, Some("a"), 10, None).await.unwrap();
    assert_eq!(
        ids(&of_a),
        [("a".into(), "rv-1".into()), ("a".into(), "rv-2".into())]
    );
    let open_of_b = store
        .list_reviews(Some("open"), Some("b"), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&open_of_b), [("b".into(), "rv-2".into())]);
    let none = store
        .list_reviews(None, Some("zzz"), 10, None)
        .await
        .unwrap();
    assert!(none.items.is_empty());

    // Deciding a review replaces its row.
    let mut req = append("b", 2, 1);
    req.reviews = vec![review("b", "rv-2", "closed", 20)];
    store.append(req).await.unwrap();
    let open = store
        .list_reviews(Some("open"), None, 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&open), [("a".into(), "rv-2".into())]);
    assert_eq!(
        store.open_reviews().await.unwrap(),
        OpenReviews {
            count: 1,
            oldest_opened_at: Some(30)
        }
    );

    // A refused append writes no review.
    let mut req = append("b", 1, 1);
    req.reviews = vec![review("b", "rv-9", "open", 5)];
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::SeqConflict { .. })
    ));
    assert_eq!(store.open_reviews().await.unwrap().count, 1);

    assert!(matches!(
        store.list_reviews(None, None, 10, Some("nonsense")).await,
        Err(StoreError::BadCursor(_))
    ));
    assert!(matches!(
        store.list_reviews(None, None, 0, None).await,
        Err(StoreError::Invalid(_))
    ));

    // Deleting a plan removes its reviews.
    assert!(store.delete_plan("a").await.unwrap());
    let all = store.list_reviews(None, None, 10, None).await.unwrap();
    assert_eq!(ids(&all), [("b".into(), "rv-2".into())]);
    assert_eq!(store.open_reviews().await.unwrap(), OpenReviews::default());
}
