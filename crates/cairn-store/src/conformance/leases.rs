//! Conformance of leases: claims, renewals, takeovers and the fences appends carry ([`crate::Leases`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("leases::leases", Arc::new(make().await), leases).await;
    case(
        "leases::a_plan_created_with_its_lease",
        Arc::new(make().await),
        a_plan_created_with_its_lease,
    )
    .await;
    case("leases::renewals", Arc::new(make().await), renewals).await;
    case(
        "leases::a_claim_tells_the_plans_incarnation",
        Arc::new(make().await),
        a_claim_tells_the_plans_incarnation,
    )
    .await;
}

/// `claim_incarnation`: the claim answers the id of the plan's first event besides the fence
/// (the same fence a plain claim takes), and a plan deleted and created again under the same
/// id answers another, although its lease's first claim looks just like the old one's.
pub async fn a_claim_tells_the_plans_incarnation(store: Arc<dyn Store>) {
    let t = wall_clock();
    let created = store.create_plan(create("p", 1, 2)).await.unwrap();
    store.append(append("p", 2, 1)).await.unwrap();
    let (fence, first) = store
        .claim_incarnation("p", "node-a", 60_000, t)
        .await
        .unwrap();
    assert_eq!(first, Some(created[0].id));
    assert_eq!(fence.token, 1);
    // A renewal by the holder answers the same fence and the same plan.
    assert_eq!(
        store
            .claim_incarnation("p", "node-a", 60_000, t)
            .await
            .unwrap(),
        (fence.clone(), Some(created[0].id))
    );
    assert_eq!(store.claim("p", "node-a", 60_000, t).await.unwrap(), fence);

    assert!(store.delete_plan("p").await.unwrap());
    let again = store.create_plan(create("p", 2, 1)).await.unwrap();
    let (fence2, first2) = store
        .claim_incarnation("p", "node-a", 60_000, t)
        .await
        .unwrap();
    assert_eq!(
        fence2, fence,
        "the new plan's first claim looks like the old one's"
    );
    assert_eq!(first2, Some(again[0].id));
    assert_ne!(
        first2, first,
        "a new plan under the same id, the same incarnation"
    );

    assert!(matches!(
        store.claim_incarnation("nope", "node-a", 60_000, t).await,
        Err(StoreError::NotFound(_))
    ));
}

/// `renew`: one call renews every lease the node still holds under the token it names, and
/// leaves out the leases that moved to another node, were released, carry another token, or
/// whose plan is unknown; a lease that ran out and that nobody took over is renewed.
pub async fn renewals(store: Arc<dyn Store>) {
    let t = wall_clock();
    for id in ["p", "q", "r", "s"] {
        store.create_plan(create(id, 1, 1)).await.unwrap();
    }
    assert!(store
        .renew("node-a", &[], 60_000, t)
        .await
        .unwrap()
        .is_empty());
    let p = store.claim("p", "node-a", 60_000, t).await.unwrap();
    let q = store.claim("q", "node-a", 60_000, t).await.unwrap();
    let r = store.claim("r", "node-b", 60_000, t).await.unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let asked = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(id, t)| ((*id).to_owned(), *t)).collect()
    };
    let renewed = store
        .renew(
            "node-a",
            &asked(&[("p", p.token), ("q", q.token), ("r", r.token), ("nope", 1)]),
            60_000,
            t,
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(renewed),
        ["p", "q"],
        "node-b's lease and an unknown plan left out"
    );
    // The leases renewed are the node's, tokens kept: its fences still append.
    assert_eq!(store.claim("p", "node-a", 60_000, t).await.unwrap(), p);
    let mut req = append("p", 1, 1);
    req.fence = Some(p.clone());
    store.append(req).await.unwrap();
    // Another token than the lease's is not renewed.
    assert!(store
        .renew("node-a", &asked(&[("p", p.token + 1)]), 60_000, t)
        .await
        .unwrap()
        .is_empty());
    // A released lease is not renewed (its holder gave it up).
    store.release("q", &q).await.unwrap();
    assert!(store
        .renew("node-a", &asked(&[("q", q.token)]), 60_000, t)
        .await
        .unwrap()
        .is_empty());
    // A lease that ran out (a zero ttl) and that nobody took over is renewed, and runs again:
    // another node cannot take it.
    store.claim("p", "node-a", 0, t).await.unwrap();
    let renewed = store
        .renew("node-a", &asked(&[("p", p.token)]), 60_000, t)
        .await
        .unwrap();
    assert_eq!(renewed, ["p"]);
    assert!(matches!(
        store.claim("p", "node-b", 60_000, t).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    // Once another node took the lease over, the old holder's renewal leaves it out and the
    // new holder's fence still appends.
    store.claim("p", "node-a", 0, t).await.unwrap();
    let b = store.claim("p", "node-b", 60_000, t).await.unwrap();
    assert!(b.token > p.token);
    assert!(store
        .renew("node-a", &asked(&[("p", p.token)]), 60_000, t)
        .await
        .unwrap()
        .is_empty());
    let mut req = append("p", 2, 1);
    req.fence = Some(b);
    store.append(req).await.unwrap();
    // A deleted plan is left out, not an error.
    let s = store.claim("s", "node-a", 60_000, t).await.unwrap();
    store.delete_plan("s").await.unwrap();
    assert!(store
        .renew("node-a", &asked(&[("s", s.token)]), 60_000, t)
        .await
        .unwrap()
        .is_empty());
}

/// `create_plan_leased`: the plan exists, and when the store took the lease with it, that lease
/// is the node's (a claim by the node keeps its token), its fence is good for appends, and
/// another node meets it held.
pub async fn a_plan_created_with_its_lease(store: Arc<dyn Store>) {
    let t = wall_clock();
    let (events, fence) = store
        .create_plan_leased(create("p", 1, 2), "node-a", 60_000, t)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let fence = match fence {
        Some(f) => f,
        // Not taken with it: the caller claims.
        None => store.claim("p", "node-a", 60_000, t).await.unwrap(),
    };
    assert_eq!(fence.node, "node-a");
    assert_eq!(store.claim("p", "node-a", 60_000, t).await.unwrap(), fence);
    let mut req = append("p", 2, 1);
    req.fence = Some(fence);
    store.append(req).await.unwrap();
    assert!(matches!(
        store.claim("p", "node-b", 60_000, t).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    assert!(matches!(
        store
            .create_plan_leased(create("p", 1, 1), "node-a", 60_000, t)
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
}

/// Claims, renewals, takeovers after expiry and after release, and the fences appends carry.
/// Leases run out by a zero ttl (the store's clock may not be the caller's).
pub async fn leases(store: Arc<dyn Store>) {
    const S: Micros = 1_000_000;
    let t = wall_clock();
    store.create_plan(create("p", 1, 1)).await.unwrap();

    let a = store.claim("p", "node-a", 60_000, t).await.unwrap();
    assert_eq!(a.node, "node-a");
    let renewed = store.claim("p", "node-a", 60_000, t + S).await.unwrap();
    assert_eq!(renewed, a, "renewal keeps the token");

    // A's lease runs for a minute.
    match store.claim("p", "node-b", 60_000, t + 2 * S).await {
        Err(StoreError::LeaseHeld {
            plan_id,
            owner,
            until,
        }) => {
            assert_eq!((plan_id.as_str(), owner.as_str()), ("p", "node-a"));
            assert!(until > t, "the lease runs until {until}, claimed at {t}");
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }

    // A appends under its fence.
    let mut req = append("p", 1, 1);
    req.fence = Some(a.clone());
    store.append(req).await.unwrap();

    // A renews with no time left: its lease has run out by any clock.
    let expired = store.claim("p", "node-a", 0, t + 3 * S).await.unwrap();
    assert_eq!(expired, a, "renewal keeps the token");
    // After expiry B takes over with a larger token.
    let b = store.claim("p", "node-b", 60_000, t + 4 * S).await.unwrap();
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
        store.claim("p", "node-a", 60_000, t + 5 * S).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    // B releases; A can claim at once, with a token larger than B's.
    store.release("p", &b).await.unwrap();
    let a2 = store.claim("p", "node-a", 60_000, t + 5 * S).await.unwrap();
    assert!(a2.token > b.token, "{a2:?} vs {b:?}");
    // Releasing a plan that is gone is not an error.
    store.delete_plan("p").await.unwrap();
    store.release("p", &a2).await.unwrap();
    // Claiming a plan that is gone is.
    assert!(matches!(
        store.claim("p", "node-a", 60_000, t + 6 * S).await,
        Err(StoreError::NotFound(_))
    ));

    // A fence on a plan that was never claimed is refused.
    store.create_plan(create("q", 1, 1)).await.unwrap();
    let mut req = append("q", 1, 1);
    req.fence = Some(a);
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Fenced { .. })
    ));
}
