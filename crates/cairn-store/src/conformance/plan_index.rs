//! Conformance of the plan index: rows kept by the log's writes, listing with cursors, recovery's query ([`crate::PlanIndex`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("plan_index::plan_row", Arc::new(make().await), plan_row).await;
    case("plan_index::list_plans", Arc::new(make().await), list_plans).await;
    case("plan_index::bad_cursor", Arc::new(make().await), bad_cursor).await;
    case(
        "plan_index::search_plans",
        Arc::new(make().await),
        search_plans,
    )
    .await;
    case(
        "plan_index::plans_in_states",
        Arc::new(make().await),
        plans_in_states,
    )
    .await;
    case("plan_index::reviews", Arc::new(make().await), reviews).await;
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

pub async fn search_plans(store: Arc<dyn Store>) {
    // Ids with characters LIKE would read as wildcards: a search matches them literally.
    let ids = [
        "night-1", "day-1", "night-2", "night_3", "nightXly", "morning", "a%b", "NIGHT-9",
    ];
    for (i, id) in ids.iter().enumerate() {
        let mut req = create(id, i as Micros, 1);
        if i % 2 == 1 {
            req.state = "done".into();
        }
        store.create_plan(req).await.unwrap();
    }
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = store
            .search_plans(None, "night", 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        found.extend(page.items.into_iter().map(|r| r.plan_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // Newest first, case-sensitive, anywhere in the id.
    assert_eq!(found, ["nightXly", "night_3", "night-2", "night-1"]);
    let one = store.search_plans(None, "_", 10, None).await.unwrap();
    let one: Vec<&str> = one.items.iter().map(|r| r.plan_id.as_str()).collect();
    assert_eq!(one, ["night_3"]);
    let pct = store.search_plans(None, "%", 10, None).await.unwrap();
    assert_eq!(pct.items.len(), 1, "{pct:?}");
    let done = store
        .search_plans(Some("done"), "night", 10, None)
        .await
        .unwrap();
    let done: Vec<&str> = done.items.iter().map(|r| r.plan_id.as_str()).collect();
    assert_eq!(done, ["night_3"]);
    let none = store.search_plans(None, "zzz", 10, None).await.unwrap();
    assert!(none.items.is_empty() && none.next_cursor.is_none());
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
    // Counted by state (states with no plan left out), whichever order the backend answers in.
    let mut counts = store.count_plans_by_state().await.unwrap();
    counts.retain(|(_, n)| *n > 0);
    counts.sort();
    assert_eq!(
        counts,
        [
            ("done".to_owned(), 1),
            ("paused".to_owned(), 1),
            ("running".to_owned(), 2)
        ]
    );
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
