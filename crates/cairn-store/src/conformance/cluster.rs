//! Conformance of a store shared by several processes: takeovers of expired leases, the lease
//! rows they leave, fences after a takeover or a release, and cursor leases
//! ([`crate::Leases::take_over`], [`crate::Leases::lease`], [`crate::Cursors::lease_cursor`]).
//!
//! Leases run out by a zero ttl, so the cases hold whether the store judges expiry by the
//! caller's `now` or by its own (a database's) clock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::LeaseRow;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case(
        "cluster::fencing_after_take_over_and_release",
        Arc::new(make().await),
        fencing_after_take_over_and_release,
    )
    .await;
    case(
        "cluster::racing_take_over",
        Arc::new(make().await),
        racing_take_over,
    )
    .await;
    case(
        "cluster::take_over_leaves_released_and_live_leases",
        Arc::new(make().await),
        take_over_leaves_released_and_live_leases,
    )
    .await;
    case(
        "cluster::lease_cursor_is_exclusive_until_expiry",
        Arc::new(make().await),
        lease_cursor_is_exclusive_until_expiry,
    )
    .await;
}

const RUNNING: &[&str] = &["running"];

/// A node whose lease was taken over can append nothing; nor can a node that released its
/// lease. The lease row says who holds the plan.
pub async fn fencing_after_take_over_and_release(store: Arc<dyn Store>) {
    let t = wall_clock();
    store.create_plan(create("p", 1, 1)).await.unwrap();
    assert_eq!(store.lease("p").await.unwrap(), None, "never claimed");
    // A's lease runs out at once (its node stopped renewing).
    let a = store.claim("p", "node-a", 0, t).await.unwrap();
    let taken = store
        .take_over("node-b", 60_000, RUNNING, 10, t + 1)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (plan, b) = &taken[0];
    assert_eq!((plan.as_str(), b.node.as_str()), ("p", "node-b"));
    assert!(b.token > a.token, "{b:?} vs {a:?}");
    let row = store.lease("p").await.unwrap().expect("a lease row");
    assert_eq!(
        (
            row.plan_id.as_str(),
            row.owner.as_str(),
            row.token,
            row.released
        ),
        ("p", "node-b", b.token, false)
    );

    // A, still believing it drives the plan, is refused; the log is untouched.
    let mut req = append("p", 1, 1);
    req.fence = Some(a.clone());
    match store.append(req).await {
        Err(StoreError::Fenced { plan_id, owner }) => {
            assert_eq!((plan_id.as_str(), owner.as_str()), ("p", "node-b"));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    // A create_plan_with carrying A's fence keeps nothing either.
    let mut req = append("p", 1, 1);
    req.fence = Some(a.clone());
    let both = store.create_plan_with(create("fork", 2, 1), req).await;
    assert!(matches!(both, Err(StoreError::Fenced { .. })), "{both:?}");
    assert!(store.get_plan("fork").await.unwrap().is_none());
    // A cannot claim it back while B's lease runs.
    assert!(matches!(
        store.claim("p", "node-a", 60_000, t + 2).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    // B appends.
    let mut req = append("p", 1, 1);
    req.fence = Some(b.clone());
    store.append(req).await.unwrap();

    // B releases: the row is kept, marked, and B's fence is refused from then on.
    store.release("p", b).await.unwrap();
    let row = store.lease("p").await.unwrap().expect("a lease row");
    assert_eq!(
        (row.owner.as_str(), row.token, row.released),
        ("node-b", b.token, true)
    );
    let mut req = append("p", 2, 1);
    req.fence = Some(b.clone());
    assert!(
        matches!(store.append(req).await, Err(StoreError::Fenced { .. })),
        "a released lease fences nothing"
    );
    assert_contiguous(&all_seqs(&*store, "p").await, 2);
    // The next claim takes it with a larger token.
    let c = store.claim("p", "node-c", 60_000, t + 3).await.unwrap();
    assert!(c.token > b.token, "{c:?} vs {b:?}");
    assert_eq!(
        store.lease("p").await.unwrap().map(|l| l.released),
        Some(false)
    );
}

/// Several nodes take over at once: every expired plan is taken by exactly one of them.
pub async fn racing_take_over(store: Arc<dyn Store>) {
    const PLANS: usize = 40;
    const NODES: usize = 6;
    let t = wall_clock();
    let mut dead = BTreeMap::new();
    for i in 0..PLANS {
        let id = format!("p{i:02}");
        store.create_plan(create(&id, 1, 1)).await.unwrap();
        dead.insert(id.clone(), store.claim(&id, "dead", 0, t).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..NODES {
        let store = store.clone();
        tasks.spawn(async move {
            let node = format!("node-{n}");
            let mut mine = Vec::new();
            // Small bites, so the nodes really interleave.
            loop {
                let got = store
                    .take_over(&node, 60_000, RUNNING, 3, t + 1)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got);
            }
            mine
        });
    }
    let mut taken: BTreeMap<String, Fence> = BTreeMap::new();
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            for (plan, fence) in r.unwrap() {
                if let Some(twice) = taken.insert(plan.clone(), fence.clone()) {
                    panic!("{plan} taken twice: {twice:?} and {fence:?}");
                }
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "takeovers did not finish");
    assert_eq!(
        taken.keys().collect::<Vec<_>>(),
        dead.keys().collect::<Vec<_>>(),
        "every expired plan is taken, once"
    );
    for (plan, fence) in &taken {
        assert_eq!(fence.token, dead[plan].token + 1, "{plan}");
        let row = store.lease(plan).await.unwrap().unwrap();
        assert_eq!(
            (&row.owner, row.token),
            (&fence.node, fence.token),
            "{plan}"
        );
    }
    // Nothing is left to take.
    assert!(store
        .take_over("late", 60_000, RUNNING, 100, t + 2)
        .await
        .unwrap()
        .is_empty());
}

/// `take_over` takes only plans in the states asked whose lease expired without a release:
/// released leases, live leases and plans never claimed are left alone.
pub async fn take_over_leaves_released_and_live_leases(store: Arc<dyn Store>) {
    let t = wall_clock();
    for id in ["released", "live", "expired", "finished", "unclaimed"] {
        store.create_plan(create(id, 1, 1)).await.unwrap();
    }
    let r = store.claim("released", "node-a", 60_000, t).await.unwrap();
    store.release("released", &r).await.unwrap();
    store.claim("live", "node-a", 60_000, t).await.unwrap();
    let e = store.claim("expired", "node-a", 0, t).await.unwrap();
    store.claim("finished", "node-a", 0, t).await.unwrap();
    let mut done = append("finished", 1, 1);
    done.state = Some("done".into());
    store.append(done).await.unwrap();

    let taken = store
        .take_over("node-b", 60_000, &["running", "paused"], 100, t + 1)
        .await
        .unwrap();
    assert_eq!(
        taken,
        vec![(
            "expired".to_owned(),
            Fence {
                node: "node-b".into(),
                token: e.token + 1
            }
        )]
    );
    let lease = |id: &'static str| {
        let store = store.clone();
        async move { store.lease(id).await.unwrap() }
    };
    assert!(matches!(
        lease("released").await,
        Some(LeaseRow { ref owner, released: true, .. }) if owner == "node-a"
    ));
    assert!(matches!(
        lease("live").await,
        Some(LeaseRow { ref owner, released: false, .. }) if owner == "node-a"
    ));
    assert_eq!(
        lease("finished").await.map(|l| l.owner),
        Some("node-a".into())
    );
    assert_eq!(lease("unclaimed").await, None);
    // No state asked, or no room: nothing taken.
    assert!(store
        .take_over("node-b", 60_000, &[], 100, t + 2)
        .await
        .unwrap()
        .is_empty());
}

/// One node at a time advances a cursor; another gets it once the lease runs out.
pub async fn lease_cursor_is_exclusive_until_expiry(store: Arc<dyn Store>) {
    assert!(store
        .lease_cursor("webhook:a", "node-a", 60_000)
        .await
        .unwrap());
    assert!(!store
        .lease_cursor("webhook:a", "node-b", 60_000)
        .await
        .unwrap());
    // Renewal by the holder; other cursors are independent.
    assert!(store
        .lease_cursor("webhook:a", "node-a", 60_000)
        .await
        .unwrap());
    assert!(store
        .lease_cursor("webhook:b", "node-b", 60_000)
        .await
        .unwrap());
    assert!(!store
        .lease_cursor("webhook:a", "node-b", 60_000)
        .await
        .unwrap());
    // A's lease runs out (renewed with no time left): B gets it, and A is refused.
    assert!(store.lease_cursor("webhook:a", "node-a", 0).await.unwrap());
    assert!(store
        .lease_cursor("webhook:a", "node-b", 60_000)
        .await
        .unwrap());
    assert!(!store
        .lease_cursor("webhook:a", "node-a", 60_000)
        .await
        .unwrap());
}
