//! The SQLite store against the conformance suite, plus what only this backend promises: the
//! engine lock, reopening, and group commit.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_store::conformance::{self, ev};
use cairn_store::{Append, CreatePlan, EventLog, Leases, PlanIndex, StoreError, Templates, Tokens};
use cairn_store_sqlite::{Durability, SqliteOptions, SqliteStore};

fn open(path: &Path, engine_lock: bool) -> SqliteStore {
    SqliteStore::open(
        path,
        SqliteOptions {
            durability: Durability::Full,
            engine_lock,
            ..SqliteOptions::default()
        },
    )
    .unwrap()
}

fn create(plan_id: &str) -> CreatePlan {
    CreatePlan {
        plan_id: plan_id.into(),
        created_at: 1,
        state: "running".into(),
        events: vec![ev(1, "created")],
        reviews: Vec::new(),
    }
}

fn append(plan_id: &str, expected_seq: u64) -> Append {
    Append {
        plan_id: plan_id.into(),
        expected_seq,
        fence: None,
        state: None,
        events: vec![ev(expected_seq + 1, "step")],
        reviews: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let store = open(&dir.path().join(format!("case{i}.db")), false);
        async move { store }
    })
    .await;
}

/// Several engines of one process may share a SQLite store (each with its own node id), so it
/// passes the lease cases of a shared store too. (Cursor leases stay the single-process
/// default: one process delivers webhooks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_cluster_lease_cases() {
    use conformance::cluster;
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| -> Arc<dyn cairn_store::Store> {
        Arc::new(open(&dir.path().join(format!("{name}.db")), false))
    };
    cluster::fencing_after_take_over_and_release(store("fencing")).await;
    cluster::racing_take_over(store("racing")).await;
    cluster::take_over_leaves_released_and_live_leases(store("leaves")).await;
}

#[tokio::test]
async fn a_second_engine_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let first = open(&path, true);
    let second = SqliteStore::open(
        &path,
        SqliteOptions {
            engine_lock: true,
            ..SqliteOptions::default()
        },
    );
    match second {
        Err(StoreError::Locked(msg)) => {
            assert!(msg.contains("drives the plans in"), "{msg}");
            assert!(msg.contains("cairn.db"), "{msg}");
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second engine opened the same file"),
    }
    // Without the engine lock (tools, readers) it opens fine.
    drop(open(&path, false));
    // Once the first is gone the lock is free again.
    drop(first);
    drop(open(&path, true));
}

#[tokio::test]
async fn the_engine_lock_takes_over_leases_of_dead_nodes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let old = {
        let store = open(&path, false);
        store.create_plan(create("p")).await.unwrap();
        let old = store.claim("p", "old-node", 60_000, 0).await.unwrap();
        // Without the lock the lease holds.
        let held = store.claim("p", "new-node", 60_000, 1).await;
        assert!(
            matches!(held, Err(StoreError::LeaseHeld { .. })),
            "{held:?}"
        );
        old
    };
    // The "old process" is gone; the restarted engine holds the lock.
    let store = open(&path, true);
    let new = store.claim("p", "new-node", 60_000, 1).await.unwrap();
    assert!(new.token > old.token);
    let mut stale = append("p", 1);
    stale.fence = Some(old);
    assert!(matches!(
        store.append(stale).await,
        Err(StoreError::Fenced { .. })
    ));
    let mut ok = append("p", 1);
    ok.fence = Some(new);
    store.append(ok).await.unwrap();
}

#[tokio::test]
async fn events_survive_reopening_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let last_id = {
        let store = open(&path, true);
        store.create_plan(create("a")).await.unwrap();
        store.create_plan(create("b")).await.unwrap();
        for seq in 1..10 {
            store.append(append("a", seq)).await.unwrap();
        }
        // The newest events are deleted: their ids must still not come back.
        let gone = store.append(append("b", 1)).await.unwrap();
        assert!(store.delete_plan("b").await.unwrap());
        assert_eq!(store.path(), path);
        gone[0].id
    };
    let store = open(&path, true);
    let evs = store.read_events("a", 0, None, 100).await.unwrap();
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(store.get_plan("a").await.unwrap().unwrap().last_seq, 10);
    assert_eq!(store.last_event_id().await.unwrap(), last_id);
    let next = store.append(append("a", 10)).await.unwrap();
    assert!(next[0].id > last_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("cairn.db"), false));
    const PLANS: usize = 200;
    const EACH: u64 = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PLANS {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("p{p}");
            store.create_plan(create(&id)).await.unwrap();
            for seq in 1..=EACH {
                store.append(append(&id, seq)).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let stats = store.stats();
    eprintln!("{stats:?} mean batch {:.1}", stats.mean_batch());
    let requests = PLANS as u64 * (EACH + 1);
    assert_eq!(stats.requests, requests);
    assert_eq!(stats.events, requests);
    assert!(
        stats.commits < requests / 2,
        "group commit should batch requests: {stats:?}"
    );
    assert!(stats.max_batch > 1, "{stats:?}");
}

#[tokio::test]
async fn the_lock_file_names_its_holder_while_it_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    assert_eq!(cairn_store_sqlite::lock_holder(&path), None);
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            engine_lock: true,
            lock_command: Some("cairn serve".into()),
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    store.announce_address("http://127.0.0.1:9");
    let holder = cairn_store_sqlite::lock_holder(&path).expect("held");
    assert_eq!(holder.pid, Some(std::process::id()));
    assert_eq!(holder.command.as_deref(), Some("cairn serve"));
    assert_eq!(holder.address.as_deref(), Some("http://127.0.0.1:9"));
    drop(store);
    assert_eq!(cairn_store_sqlite::lock_holder(&path), None, "released");
}

#[tokio::test]
async fn a_read_only_store_reads_a_locked_file_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    assert!(matches!(
        SqliteStore::open_read_only(&path),
        Err(StoreError::Unavailable(_))
    ));
    assert!(!path.exists(), "a read-only open creates nothing");
    let writer = open(&path, true);
    writer.create_plan(create("p1")).await.unwrap();
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(reader.get_plan("p1").await.unwrap().unwrap().last_seq, 1);
    writer.append(append("p1", 1)).await.unwrap();
    assert_eq!(
        reader.read_events("p1", 0, None, 10).await.unwrap().len(),
        2
    );
    match reader.append(append("p1", 2)).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("read-only"), "{msg}"),
        other => panic!("a read-only store wrote: {other:?}"),
    }
    assert_eq!(reader.unavailable(), None);
}

#[tokio::test]
async fn close_leaves_everything_in_the_database_file_and_refuses_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let store = open(&path, true);
    store.create_plan(create("p1")).await.unwrap();
    let wal = dir.path().join("cairn.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let s = Arc::new(store);
    let done = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || s.close())
            .await
            .unwrap()
            .unwrap()
    };
    assert!(done);
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    assert!(
        s.create_plan(create("p2")).await.is_err(),
        "closed for writing"
    );
    assert!(
        s.get_plan("p1").await.unwrap().is_some(),
        "reads still work"
    );
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    // Only the database file, copied elsewhere, holds the plan.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&path, copy.path().join("c.db")).unwrap();
    let reader = SqliteStore::open_read_only(&copy.path().join("c.db")).unwrap();
    assert!(reader.get_plan("p1").await.unwrap().is_some());
}

#[tokio::test]
async fn backup_copies_a_live_database_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let store = open(&path, true);
    for i in 0..20 {
        store.create_plan(create(&format!("p{i}"))).await.unwrap();
    }
    let out = dir.path().join("backup.db");
    let report = cairn_store_sqlite::backup(&path, &out).unwrap();
    assert_eq!((report.plans, report.events), (20, 20));
    assert!(report.bytes > 0);
    let copy = SqliteStore::open_read_only(&out).unwrap();
    assert_eq!(
        copy.list_plans(None, 100, None).await.unwrap().items.len(),
        20
    );
    assert!(matches!(
        cairn_store_sqlite::backup(&path, &out),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        cairn_store_sqlite::backup(&dir.path().join("nope.db"), &dir.path().join("x.db")),
        Err(StoreError::Invalid(_))
    ));
    drop(store);
}

/// A database made before tokens could expire (schema version 2) still opens; its tokens
/// read back as never expiring.
#[tokio::test]
async fn a_version_2_database_opens_and_its_tokens_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../../src/schema.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../../src/schema_v2.sql"))
            .unwrap();
        conn.execute_batch(
            "INSERT INTO tokens (id, user, role, hash, created_at, revoked_at)
             VALUES ('tok_old', 'olga', 'admin', 'h-old', 5, NULL);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = open(&path, false);
    let row = store.token_by_hash("h-old").await.unwrap().unwrap();
    assert_eq!(row.user, "olga");
    assert_eq!(row.expires_at, None);
}

/// Events stored before events carried a log format (schema version 3) read back as format 1;
/// new events beside them keep the format they are written in.
#[tokio::test]
async fn events_of_a_version_3_database_read_as_log_format_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in [
            include_str!("../../src/schema.sql"),
            include_str!("../../src/schema_v2.sql"),
            include_str!("../../src/schema_v3.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO plans (pk, plan_id, state, created_at, updated_at, last_seq)
             VALUES (1, 'p', 'running', 5, 5, 1);
             INSERT INTO events (plan_pk, seq, kind, at, actor, data)
             VALUES (1, 1, 'plan_started', 5, 'olga', '{}');
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let store = open(&path, false);
    let old = store.read_events("p", 0, None, 10).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].format, 1);
    store
        .append(cairn_store::Append {
            plan_id: "p".into(),
            expected_seq: 1,
            fence: None,
            state: None,
            events: vec![cairn_store::conformance::ev(2, "plan_paused")],
            reviews: Vec::new(),
        })
        .await
        .unwrap();
    let all = store.read_events("p", 0, None, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.format).collect::<Vec<_>>(), [1, 2]);
}

/// A database written by the release before templates (schema version 5) opens, keeps its
/// plans, and gains the template tables.
#[tokio::test]
async fn a_version_5_database_opens_and_gains_templates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in [
            include_str!("../../src/schema.sql"),
            include_str!("../../src/schema_v2.sql"),
            include_str!("../../src/schema_v3.sql"),
            include_str!("../../src/schema_v4.sql"),
            include_str!("../../src/schema_v5.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO plans (pk, plan_id, state, created_at, updated_at, last_seq)
             VALUES (1, 'p', 'running', 5, 5, 1);
             INSERT INTO events (plan_pk, seq, kind, at, actor, data, format)
             VALUES (1, 1, 'plan_started', 5, 'olga', '{}', 2);
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let store = open(&path, false);
    assert_eq!(store.read_events("p", 0, None, 10).await.unwrap().len(), 1);
    assert!(store
        .list_templates(10, None)
        .await
        .unwrap()
        .items
        .is_empty());
    let (row, created) = store
        .put_template_version(cairn_store::NewTemplateVersion {
            name: "t".into(),
            content: "{}".into(),
            created_at: 9,
            created_by: "olga".into(),
        })
        .await
        .unwrap();
    assert!(created);
    assert_eq!(row.version, 1);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 6);
}

#[tokio::test]
async fn expired_unreleased_leases_of_active_plans_are_taken_over_with_a_larger_token() {
    const S: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("cairn.db"), false);
    for id in ["dead", "released", "ended", "live"] {
        store.create_plan(create(id)).await.unwrap();
    }
    let mut ended = append("ended", 1);
    ended.state = Some("completed".into());
    store.append(ended).await.unwrap();
    assert_eq!(store.lease("dead").await.unwrap(), None, "never claimed");

    let dead = store.claim("dead", "a", 10_000, 100 * S).await.unwrap();
    let released = store.claim("released", "a", 10_000, 100 * S).await.unwrap();
    store.release("released", &released).await.unwrap();
    store.claim("ended", "a", 10_000, 100 * S).await.unwrap();
    store.claim("live", "a", 10_000, 105 * S).await.unwrap();

    let row = store.lease("dead").await.unwrap().unwrap();
    assert_eq!(
        (row.owner.as_str(), row.token, row.expires_at, row.released),
        ("a", dead.token, 110 * S, false)
    );
    assert!(store.lease("released").await.unwrap().unwrap().released);

    let states = ["running", "paused"];
    // Nothing has expired yet.
    assert!(store
        .take_over("b", 10_000, &states, 10, 109 * S)
        .await
        .unwrap()
        .is_empty());
    // At 112 s only the dead node's running plan is taken: not the released one, not the
    // completed one, not the one whose lease still runs.
    let taken = store
        .take_over("b", 10_000, &states, 10, 112 * S)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (plan_id, fence) = &taken[0];
    assert_eq!((plan_id.as_str(), fence.node.as_str()), ("dead", "b"));
    assert!(fence.token > dead.token);
    let row = store.lease("dead").await.unwrap().unwrap();
    assert_eq!((row.owner.as_str(), row.expires_at), ("b", 122 * S));
    // Taken once: B's new lease runs.
    assert!(store
        .take_over("c", 10_000, &states, 10, 112 * S)
        .await
        .unwrap()
        .is_empty());
    // The old owner is fenced.
    let mut stale = append("dead", 1);
    stale.fence = Some(dead);
    assert!(matches!(
        store.append(stale).await,
        Err(StoreError::Fenced { .. })
    ));
    // The limit holds.
    let taken = store
        .take_over("c", 10_000, &states, 1, 200 * S)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
}

/// The writer remembers each plan's index row (its pk and state) between appends. What another
/// connection commits meanwhile, a plan deleted and created again under its id, a refused
/// append and a state that changes back all leave the index row true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_index_row_stays_true_whoever_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.db");
    let a = open(&path, false);
    let b = open(&path, false);
    async fn row(store: &SqliteStore, plan_id: &str) -> (String, u64) {
        let r = store.get_plan(plan_id).await.unwrap().unwrap();
        (r.state, r.last_seq)
    }
    let with_state = |plan_id: &str, expected_seq: u64, state: &str| Append {
        state: Some(state.into()),
        ..append(plan_id, expected_seq)
    };

    a.create_plan(create("p")).await.unwrap();
    a.append(with_state("p", 1, "paused")).await.unwrap();
    // Another connection changes the row: the writer of `a` must not trust what it remembers.
    b.append(with_state("p", 2, "running")).await.unwrap();
    a.append(with_state("p", 3, "paused")).await.unwrap();
    assert_eq!(row(&b, "p").await, ("paused".to_owned(), 4));

    // Deleted and created again by the other connection: a new row under the same id.
    b.delete_plan("p").await.unwrap();
    b.create_plan(create("q")).await.unwrap();
    b.create_plan(create("p")).await.unwrap();
    a.append(with_state("p", 1, "completed")).await.unwrap();
    assert_eq!(row(&b, "p").await, ("completed".to_owned(), 2));
    assert_eq!(row(&b, "q").await, ("running".to_owned(), 1));

    // Deleted and created again through the same writer.
    a.delete_plan("p").await.unwrap();
    assert!(matches!(
        a.append(with_state("p", 2, "running")).await,
        Err(StoreError::NotFound(_))
    ));
    a.create_plan(create("p")).await.unwrap();
    // A refused append changes nothing; the next one is decided on the row as it is.
    assert!(matches!(
        a.append(with_state("p", 5, "paused")).await,
        Err(StoreError::SeqConflict { actual: 1, .. })
    ));
    a.append(with_state("p", 1, "paused")).await.unwrap();
    // No state given: the row keeps its own; then back to the state it had before.
    a.append(append("p", 2)).await.unwrap();
    a.append(with_state("p", 3, "running")).await.unwrap();
    a.append(with_state("p", 4, "paused")).await.unwrap();
    assert_eq!(row(&b, "p").await, ("paused".to_owned(), 5));
    let listed = b
        .list_plans(Some("paused"), 10, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.plan_id)
        .collect::<Vec<_>>();
    assert_eq!(listed, vec!["p".to_owned()]);
}

/// The writer inserts an append's events several rows a statement: each stored event is
/// answered with the id it was stored under, whatever the append's size, and appends of
/// several plans committed together keep their ids apart and in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ids_an_append_answers_are_those_its_events_are_stored_under() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("ids.db"), false));
    for i in 0..6 {
        store.create_plan(create(&format!("p{i}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let plan_id = format!("p{i}");
            // 1, 8, 9, 17, 3 and 24 events: one row, a full statement, a statement and a row…
            let n = [1u64, 8, 9, 17, 3, 24][i as usize];
            let mut events: Vec<_> = (2..2 + n).map(|seq| ev(seq, "step")).collect();
            events[0].checkpoint = Some(cairn_store::CheckpointMark {
                trigger: "step".into(),
                label: Some(format!("first of {plan_id}")),
            });
            let stored = store
                .append(Append {
                    plan_id: plan_id.clone(),
                    expected_seq: 1,
                    fence: None,
                    state: None,
                    events,
                    reviews: Vec::new(),
                })
                .await
                .unwrap();
            (plan_id, stored)
        }));
    }
    let mut all_ids = Vec::new();
    for task in tasks {
        let (plan_id, stored) = task.await.unwrap();
        let read = store.read_events(&plan_id, 1, None, 100).await.unwrap();
        assert_eq!(stored, read, "{plan_id}: answered as stored");
        assert!(stored.windows(2).all(|w| w[1].id == w[0].id + 1));
        assert_eq!(
            read[0].checkpoint.as_ref().and_then(|c| c.label.clone()),
            Some(format!("first of {plan_id}"))
        );
        assert!(read[1..].iter().all(|e| e.checkpoint.is_none()));
        all_ids.extend(stored.iter().map(|e| e.id));
    }
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), 1 + 8 + 9 + 17 + 3 + 24);
    let everything = store.read_all_events(0, 1_000).await.unwrap();
    assert!(everything.windows(2).all(|w| w[0].id < w[1].id));
}
