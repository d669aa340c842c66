//! Conformance of the event log: creating plans, appending under `expected_seq`, reading, global ids, checkpoint marks, deleting, and appends racing each other ([`crate::EventLog`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case(
        "event_log::create_plan",
        Arc::new(make().await),
        create_plan,
    )
    .await;
    case(
        "event_log::append_contiguity",
        Arc::new(make().await),
        append_contiguity,
    )
    .await;
    case(
        "event_log::seq_conflict",
        Arc::new(make().await),
        seq_conflict,
    )
    .await;
    case(
        "event_log::create_plan_with",
        Arc::new(make().await),
        create_plan_with,
    )
    .await;
    case("event_log::not_found", Arc::new(make().await), not_found).await;
    case("event_log::global_ids", Arc::new(make().await), global_ids).await;
    case(
        "event_log::read_events",
        Arc::new(make().await),
        read_events,
    )
    .await;
    case(
        "event_log::read_events_of_kind",
        Arc::new(make().await),
        read_events_of_kind,
    )
    .await;
    case(
        "event_log::read_all_events",
        Arc::new(make().await),
        read_all_events,
    )
    .await;
    case(
        "event_log::checkpoints",
        Arc::new(make().await),
        checkpoints,
    )
    .await;
    case(
        "event_log::delete_plan",
        Arc::new(make().await),
        delete_plan,
    )
    .await;
    case(
        "event_log::concurrent_plans",
        Arc::new(make().await),
        concurrent_plans,
    )
    .await;
    case(
        "event_log::racing_appends",
        Arc::new(make().await),
        racing_appends,
    )
    .await;
    case(
        "event_log::global_order_under_concurrent_commits",
        Arc::new(make().await),
        global_order_under_concurrent_commits,
    )
    .await;
}

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

/// A create and an append in one request: both kept, or neither (whichever half is refused).
pub async fn create_plan_with(store: Arc<dyn Store>) {
    store.create_plan(create("src", 1, 2)).await.unwrap();
    let (created, appended) = store
        .create_plan_with(create("new", 2, 2), append("src", 2, 1))
        .await
        .unwrap();
    assert_eq!(created.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(created.iter().all(|e| e.plan_id == "new"));
    assert_eq!(appended.len(), 1);
    assert_eq!((appended[0].plan_id.as_str(), appended[0].seq), ("src", 3));
    assert!(
        appended[0].id > created[1].id,
        "ids follow the request's order"
    );
    assert_contiguous(&all_seqs(&*store, "new").await, 2);
    assert_contiguous(&all_seqs(&*store, "src").await, 3);

    // The append half refused (stale seq, unknown plan, stale fence): no plan is created.
    let stale = store
        .create_plan_with(create("lost1", 3, 1), append("src", 2, 1))
        .await;
    assert!(
        matches!(stale, Err(StoreError::SeqConflict { .. })),
        "{stale:?}"
    );
    let unknown = store
        .create_plan_with(create("lost2", 3, 1), append("nope", 0, 1))
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    store.claim("src", "n1", 60_000, 10).await.unwrap();
    let mut fenced = append("src", 3, 1);
    fenced.fence = Some(Fence {
        node: "n2".into(),
        token: 99,
    });
    let fenced = store.create_plan_with(create("lost3", 3, 1), fenced).await;
    assert!(fenced.is_err(), "{fenced:?}");
    for id in ["lost1", "lost2", "lost3"] {
        assert!(store.get_plan(id).await.unwrap().is_none(), "{id} was kept");
        assert!(
            matches!(
                store.read_events(id, 0, None, 10).await,
                Err(StoreError::NotFound(_))
            ),
            "{id} has events"
        );
    }
    assert_contiguous(&all_seqs(&*store, "src").await, 3);

    // The create half refused (the id is taken): nothing is appended.
    let taken = store
        .create_plan_with(create("new", 3, 1), append("src", 3, 1))
        .await;
    assert!(
        matches!(taken, Err(StoreError::AlreadyExists(ref id)) if id == "new"),
        "{taken:?}"
    );
    assert_contiguous(&all_seqs(&*store, "src").await, 3);
    assert_contiguous(&all_seqs(&*store, "new").await, 2);
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
    assert_eq!(evs[0].format, 2);

    // Each event keeps the log format it was written in, whatever its neighbours'.
    let mut mixed = append("p", 10, 2);
    mixed.events[0].format = 1;
    mixed.events[1].format = 7;
    let stored = store.append(mixed).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.format).collect::<Vec<_>>(), [1, 7]);
    let formats =
        |evs: Vec<crate::StoredEvent>| evs.into_iter().map(|e| e.format).collect::<Vec<_>>();
    assert_eq!(
        formats(store.read_events("p", 9, None, 10).await.unwrap()),
        [2, 1, 7]
    );
    let all = store.read_all_events(0, 1_000).await.unwrap();
    let of_p: Vec<u32> = all
        .iter()
        .filter(|e| e.plan_id == "p" && e.seq > 10)
        .map(|e| e.format)
        .collect();
    assert_eq!(of_p, [1, 7]);
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

/// Many tasks append to their own plans while a reader tails `read_all_events`: the ids the
/// reader sees strictly increase, and in the end it has seen exactly the events committed (an
/// event committed late with an id below one already read would be missed, and caught here).
pub async fn global_order_under_concurrent_commits(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const WRITERS: usize = 16;
    const EACH: u64 = 25;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut last = 0;
            loop {
                // Read `done` before reading events: once set, one more empty read is the end.
                let finished = done.load(Ordering::SeqCst);
                let batch = store.read_all_events(last, 37).await.unwrap();
                for e in &batch {
                    assert!(e.id > last, "id {} read after id {last}", e.id);
                    last = e.id;
                    seen.push(e.id);
                }
                if batch.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let id = format!("g{w}");
            let mut ids: Vec<u64> = store
                .create_plan(create(&id, 1, 1))
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect();
            let mut seq = 1;
            for round in 0..EACH {
                // Two events in one append every other round.
                let n = 1 + round % 2;
                ids.extend(
                    store
                        .append(append(&id, seq, n))
                        .await
                        .unwrap()
                        .iter()
                        .map(|e| e.id),
                );
                seq += n;
            }
            ids
        });
    }
    let committed = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        let mut committed = Vec::new();
        while let Some(r) = writers.join_next().await {
            committed.extend(r.unwrap());
        }
        committed
    })
    .await
    .expect("the writers finished");
    done.store(true, Ordering::SeqCst);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(120), reader)
        .await
        .expect("the reader finished")
        .unwrap();
    let mut committed = committed;
    committed.sort_unstable();
    let per_plan: u64 = 1 + (0..EACH).map(|r| 1 + r % 2).sum::<u64>();
    assert_eq!(committed.len() as u64, WRITERS as u64 * per_plan);
    assert_eq!(
        seen, committed,
        "the tail saw every committed event, in id order"
    );
}
