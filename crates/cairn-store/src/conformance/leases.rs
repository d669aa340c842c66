//! Conformance of leases: claims, renewals, takeovers and the fences appends carry ([`crate::Leases`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store>(make: impl Fn() -> S) {
    case("leases::leases", Arc::new(make()), leases).await;
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
