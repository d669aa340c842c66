//! Two stores on one database, as two nodes would hold them: fences across processes, node
//! ids held by one live process, commit hints, migrations racing, and what is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::conformance::{ev, wall_clock};
use cairn_store::{Append, CreatePlan, EventLog, Leases, Nodes, PlanIndex, StoreError};
use cairn_store_postgres::{PgOptions, PgStore};

use crate::{database_url, open, unique_schema};

const WAIT: Duration = Duration::from_secs(15);

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

/// A plain connection to the test database, for what the store does not do (terminate a
/// backend, tamper with the migrations table).
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_by_the_node_whose_lease_the_other_took_is_refused() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = open(&url, &schema).await;
    let b = open(&url, &schema).await;
    let t = wall_clock();
    a.create_plan(create("p")).await.unwrap();
    // A's lease runs out (it stopped renewing); B takes the plan over.
    let fa = a.claim("p", "node-a", 0, t).await.unwrap();
    let taken = b
        .take_over("node-b", 60_000, &["running"], 10, t)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let fb = taken[0].1.clone();
    // A, through its own store, is refused; B appends; both see the same log.
    let mut stale = append("p", 1);
    stale.fence = Some(fa);
    match a.append(stale).await {
        Err(StoreError::Fenced { owner, .. }) => assert_eq!(owner, "node-b"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    let mut ok = append("p", 1);
    ok.fence = Some(fb);
    let written = b.append(ok).await.unwrap();
    let seen = a.read_events("p", 0, None, 10).await.unwrap();
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(seen[1].id, written[0].id);
    assert_eq!(a.last_event_id().await.unwrap(), written[0].id);
}

/// Ids stay in commit order when two stores (each with its own writer) commit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_commit_ids_in_order_for_a_tailing_reader() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = Arc::new(open(&url, &schema).await);
    let b = Arc::new(open(&url, &schema).await);
    const PLANS: usize = 20;
    const EACH: u64 = 20;
    let mut writers = tokio::task::JoinSet::new();
    for p in 0..PLANS {
        let store = if p % 2 == 0 { a.clone() } else { b.clone() };
        writers.spawn(async move {
            let id = format!("p{p}");
            let mut ids = vec![store.create_plan(create(&id)).await.unwrap()[0].id];
            for seq in 1..=EACH {
                ids.push(store.append(append(&id, seq)).await.unwrap()[0].id);
            }
            ids
        });
    }
    let tail = {
        let reader = a.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = 0;
            while seen.len() < PLANS * (EACH as usize + 1) {
                let batch = reader.read_all_events(last, 50).await.unwrap();
                for e in &batch {
                    assert!(e.id > last);
                    last = e.id;
                    seen.push(e.id);
                }
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut committed = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = writers.join_next().await {
            committed.extend(r.unwrap());
        }
    })
    .await
    .expect("writers finished");
    let seen = tokio::time::timeout(Duration::from_secs(120), tail)
        .await
        .expect("the tail saw every event")
        .unwrap();
    committed.sort_unstable();
    assert_eq!(seen, committed);
    // Gapless: ids are 1..=n.
    assert_eq!(committed, (1..=committed.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_is_held_by_one_live_store_at_a_time() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = open(&url, &schema).await;
    let b = open(&url, &schema).await;
    a.hold_node("n1").await.unwrap();
    a.hold_node("n1").await.unwrap();
    match b.hold_node("n1").await {
        Err(StoreError::Locked(msg)) => {
            assert_eq!(msg, "node id n1 is in use by another live node")
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    b.hold_node("n2").await.unwrap();
    // A store in another schema (another cluster) may use the same id.
    let other = open(&url, &unique_schema()).await;
    other.hold_node("n1").await.unwrap();
    // A's process is gone: its connection closes and B gets the id.
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        match b.hold_node("n1").await {
            Ok(()) => break,
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("the id was not freed: {other:?}"),
        }
    }
}

/// Takes a wake-up already stored (the hint keeps one for the next waiter), so the next wait
/// only ends by a new one. Polls once; never waits.
async fn drain(hint: &tokio::sync::Notify) {
    let _ = tokio::time::timeout(Duration::ZERO, hint.notified()).await;
}

/// The backend pids of the dedicated connections of the stores in `schema`.
async fn session_pids(admin: &tokio_postgres::Client, schema: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("cairn-session:{schema}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_hints_arrive_from_another_store_and_survive_a_reconnect() {
    let Some(url) = database_url() else { return };
    let listener_schema = unique_schema();
    let writer_schema = listener_schema.clone();
    let listener = open(&url, &listener_schema).await;
    let hint = listener.commit_hint().expect("a shared store gives hints");
    listener.hold_node("listener").await.unwrap();
    // Its dedicated connection, found while it is the only store of the schema.
    let admin = admin(&url).await;
    let pids = session_pids(&admin, &listener_schema).await;
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    // The writer is another store on the same database, in the same schema, named apart.
    let writer = PgStore::connect(
        &url,
        PgOptions {
            pool_size: 2,
            schema: Some(writer_schema),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let notified = hint.notified();
    writer.create_plan(create("p")).await.unwrap();
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("a hint for the other store's commit");

    drain(&hint).await;

    // The listener's connection is cut: it reconnects, listens again (waking its waiters,
    // since hints may have been lost) and retakes its node id.
    let notified = hint.notified();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("a wake-up after reconnecting");
    // Hints are namespaced by schema, so nothing else could have woken it: it is back.
    let now = session_pids(&admin, &listener_schema).await;
    assert!(!now.contains(&pid), "the old connection is gone: {now:?}");
    assert_eq!(
        now.len(),
        2,
        "the listener's new connection and the writer's: {now:?}"
    );
    assert_eq!(listener.unavailable(), None);
    match writer.hold_node("listener").await {
        Err(StoreError::Locked(_)) => {}
        other => panic!("the node id was not retaken after the reconnect: {other:?}"),
    }
    drain(&hint).await;
    let notified = hint.notified();
    writer.append(append("p", 1)).await.unwrap();
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("hints arrive after the reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_connecting_together_migrate_once() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move {
                PgStore::connect(
                    &url,
                    PgOptions {
                        pool_size: 1,
                        schema: Some(schema),
                        ..PgOptions::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every store opens"));
    }
    let admin = admin(&url).await;
    let rows = admin
        .query(
            &format!("SELECT version FROM {schema}.cairn_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        [1, 2, 10],
        "every migration this build knows, once"
    );
    // They all work on the one schema.
    stores[0].create_plan(create("p")).await.unwrap();
    assert_eq!(
        stores[3].read_events("p", 0, None, 10).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_is_refused_by_name() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    drop(open(&url, &schema).await);
    let admin = admin(&url).await;
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.cairn_migrations (version, name) VALUES (99, 'from the future')"
            ),
            &[],
        )
        .await
        .unwrap();
    let refused = PgStore::connect(
        &url,
        PgOptions {
            schema: Some(schema),
            ..PgOptions::default()
        },
    )
    .await;
    match refused {
        Err(StoreError::Invalid(msg)) => {
            assert!(msg.contains("schema version 99"), "{msg}");
            assert!(msg.contains("from the future"), "{msg}");
            assert!(msg.contains("upgrade cairn"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_bad_options_are_named() {
    // Port 1 on loopback: nothing listens there.
    match PgStore::connect("postgres://postgres@127.0.0.1:1/test", PgOptions::default()).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("database"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    match PgStore::connect("postgres://[nope", PgOptions::default()).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("database url"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a bad url connected"),
    }
    let bad_schema = PgOptions {
        schema: Some("x; DROP TABLE plans".into()),
        ..PgOptions::default()
    };
    match PgStore::connect("postgres://postgres@127.0.0.1:1/test", bad_schema).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("schema name"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a bad schema name was taken"),
    }
}

/// Not a timed assertion: prints how many steps per second one store commits, 1,000 plans
/// each appending 10 steps (two events each) at once. Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn throughput_of_1000_plans_of_10_steps() {
    let Some(url) = database_url() else { return };
    let store = Arc::new(
        PgStore::connect(
            &url,
            PgOptions {
                schema: Some(unique_schema()),
                ..PgOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    const PLANS: usize = 1000;
    const STEPS: u64 = 10;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PLANS {
        let id = format!("p{p}");
        store.create_plan(create(&id)).await.unwrap();
    }
    let started = Instant::now();
    for p in 0..PLANS {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("p{p}");
            let mut seq = 1;
            for _ in 0..STEPS {
                let mut req = append(&id, seq);
                req.events = vec![ev(seq + 1, "step_started"), ev(seq + 2, "step_completed")];
                store.append(req).await.unwrap();
                seq += 2;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let steps = (PLANS as u64 * STEPS) as f64;
    let stats = store.writer_stats();
    eprintln!(
        "{steps} steps in {secs:.2} s: {:.0} steps/s; {} commits, mean batch {:.1}, max {}, \
         writer busy {:.2} s",
        steps / secs,
        stats.commits,
        stats.mean_batch(),
        stats.max_batch,
        stats.busy.as_secs_f64()
    );
}

/// The writer's connection is cut between two appends: the next append reconnects and
/// succeeds (nothing of a batch is kept until its commit, so a batch whose connection died
/// before `COMMIT` is simply run again), and reads through the pool come back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_reopened_for_the_next_write() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let store = open(&url, &schema).await;
    store.create_plan(create("p")).await.unwrap();
    let admin = admin(&url).await;
    let cut = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("cairn-writer:{schema}")],
        )
        .await
        .unwrap();
    assert_eq!(cut, 1, "the writer's connection was found");
    let written = store.append(append("p", 1)).await.unwrap();
    assert_eq!(written[0].seq, 2);
    assert_eq!(store.unavailable(), None);
    // The pool's connections go too.
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("cairn-pool:{schema}")],
        )
        .await
        .unwrap();
    // A read may hear `Unavailable` once per dead pooled connection; never anything else.
    let mut tries = 0;
    let events = loop {
        tries += 1;
        match store.read_events("p", 0, None, 10).await {
            Ok(events) => break events,
            Err(StoreError::Unavailable(_)) if tries <= 8 => continue,
            Err(e) => panic!("read failed with {e}"),
        }
    };
    assert_eq!(events.len(), 2);
    store.append(append("p", 2)).await.unwrap();
}

/// The writes of a batch go with its `COMMIT` in one round trip: when one of them fails, the
/// commit rolls the whole batch back (the event ids it took included), the caller hears the
/// error, and the next batch runs in a transaction of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_beside_the_commit_leaves_nothing_behind() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let store = open(&url, &schema).await;
    let first = store.create_plan(create("p")).await.unwrap();
    admin(&url)
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".events ADD CONSTRAINT no_boom CHECK (kind <> 'boom')"
        ))
        .await
        .unwrap();
    let mut boom = append("p", 1);
    boom.events = vec![ev(2, "boom"), ev(3, "step")];
    match store.append(boom).await {
        Err(StoreError::Backend(e)) => assert!(e.contains("no_boom"), "{e}"),
        other => panic!("expected the check's error, got {other:?}"),
    }
    let written = store.append(append("p", 1)).await.unwrap();
    assert_eq!(written[0].seq, 2);
    assert_eq!(
        written[0].id,
        first[0].id + 1,
        "the failed batch's ids were given back"
    );
    let seen = store.read_events("p", 0, None, 10).await.unwrap();
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "step"]);
    assert_eq!(seen[1].id, written[0].id);
    assert_eq!(store.last_event_id().await.unwrap(), written[0].id);
    // A statement that fails before the commit is sent (a plan's row refused) leaves the
    // transaction aborted: it is rolled back before the next batch begins.
    admin(&url)
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".plans ADD CONSTRAINT no_bad CHECK (plan_id <> 'bad')"
        ))
        .await
        .unwrap();
    match store.create_plan(create("bad")).await {
        Err(StoreError::Backend(e)) => assert!(e.contains("no_bad"), "{e}"),
        other => panic!("expected the check's error, got {other:?}"),
    }
    // And a batch of several requests after it: each gets its own ids, in order.
    store.create_plan(create("q")).await.unwrap();
    let (a, b) = tokio::join!(store.append(append("p", 2)), store.append(append("q", 1)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a[0].id, b[0].id);
    let last = store.last_event_id().await.unwrap();
    assert_eq!(last, a[0].id.max(b[0].id));
    assert_eq!(last, written[0].id + 3);
}

/// Concurrent appends share transactions: far fewer commits than requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let Some(url) = database_url() else { return };
    let store = Arc::new(open(&url, &unique_schema()).await);
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
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the appends finished");
    let stats = store.writer_stats();
    eprintln!("{stats:?} mean batch {:.1}", stats.mean_batch());
    let requests = PLANS as u64 * (EACH + 1);
    assert_eq!((stats.requests, stats.events), (requests, requests));
    assert!(
        stats.commits < requests / 2,
        "group commit should batch requests: {stats:?}"
    );
    assert!(stats.max_batch > 1, "{stats:?}");
    let all = store.read_all_events(0, 10_000).await.unwrap();
    assert_eq!(all.len() as u64, requests);
}

/// Node A keeps appending under a lease that has run out while node B takes the plan over and
/// appends too: the log holds A's events, then B's, never A's after B's first; once A hears
/// `Fenced` it never writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_during_appends_cuts_the_old_owner_off_cleanly() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let a = Arc::new(open(&url, &schema).await);
    let b = Arc::new(open(&url, &schema).await);
    let t = wall_clock();
    a.create_plan(create("p")).await.unwrap();
    let fa = a.claim("p", "node-a", 0, t).await.unwrap();
    let writer = |store: Arc<PgStore>, fence: cairn_store::Fence, actor: &'static str| async move {
        let mut written = 0u32;
        loop {
            let last = store.get_plan("p").await.unwrap().unwrap().last_seq;
            let mut req = append("p", last);
            req.fence = Some(fence.clone());
            req.events[0].actor = actor.into();
            match store.append(req).await {
                Ok(_) => {
                    written += 1;
                    if actor == "b" && written == 20 {
                        return written;
                    }
                }
                Err(StoreError::SeqConflict { .. }) => {}
                Err(StoreError::Fenced { owner, .. }) => {
                    assert_eq!((actor, owner.as_str()), ("a", "node-b"));
                    return written;
                }
                Err(e) => panic!("{actor}: {e}"),
            }
        }
    };
    let a_task = tokio::spawn(writer(a.clone(), fa, "a"));
    // Let A get some appends in before the takeover: wait (bounded) for its first.
    let deadline = Instant::now() + WAIT;
    while a.get_plan("p").await.unwrap().unwrap().last_seq < 3 {
        assert!(Instant::now() < deadline, "A never appended");
        tokio::task::yield_now().await;
    }
    // An append in flight holds the lease row, and a takeover skips rows it cannot lock at
    // once: B tries until it lands between two of A's transactions.
    let fb = loop {
        let taken = b
            .take_over("node-b", 60_000, &["running"], 1, t)
            .await
            .unwrap();
        if let Some((_, fence)) = taken.into_iter().next() {
            break fence;
        }
        assert!(Instant::now() < deadline, "B never took the plan over");
        tokio::task::yield_now().await;
    };
    let b_task = tokio::spawn(writer(b.clone(), fb, "b"));
    let (a_written, b_written) = tokio::time::timeout(Duration::from_secs(120), async {
        (a_task.await.unwrap(), b_task.await.unwrap())
    })
    .await
    .expect("both writers finished");
    assert!(a_written >= 2, "{a_written}");
    assert_eq!(b_written, 20);
    let log = a.read_events("p", 1, None, 1000).await.unwrap();
    let actors: String = log.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        actors,
        format!("{}{}", "a".repeat(a_written as usize), "b".repeat(20)),
        "A's events, then B's"
    );
}

/// Expiry is judged by the database's clock: a node whose clock is far off (the `now` it
/// passes) neither cuts another's lease short nor stretches its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_run_by_the_database_clock_whatever_now_the_caller_passes() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &unique_schema()).await;
    store.create_plan(create("p")).await.unwrap();
    let t = wall_clock();
    const YEAR: i64 = 365 * 24 * 3600 * 1_000_000;
    store.claim("p", "node-a", 60_000, t - YEAR).await.unwrap();
    // B's clock is a year ahead: A's lease still runs.
    match store.claim("p", "node-b", 60_000, t + YEAR).await {
        Err(StoreError::LeaseHeld { owner, until, .. }) => {
            assert_eq!(owner, "node-a");
            let row = store.lease("p").await.unwrap().unwrap();
            assert_eq!(until, row.expires_at);
            // Set by the database's clock, not the year-old `now` A passed.
            assert!(until > t, "{until} vs {t}");
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(store
        .take_over("node-b", 60_000, &["running"], 10, t + YEAR)
        .await
        .unwrap()
        .is_empty());
    // A's lease with no time left runs out whatever A's clock says.
    store.claim("p", "node-a", 0, t + YEAR).await.unwrap();
    let taken = store
        .take_over("node-b", 60_000, &["running"], 10, t - YEAR)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
}

/// A heartbeat that does not know the node's address keeps the one a heartbeat gave before
/// (one node's engine and HTTP server both beat; only the server knows its address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_without_an_address_keeps_the_known_one() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &unique_schema()).await;
    store
        .heartbeat("n", Some("http://127.0.0.1:7"), 1)
        .await
        .unwrap();
    store.heartbeat("n", None, 2).await.unwrap();
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].address.as_deref(), Some("http://127.0.0.1:7"));
    assert_eq!(nodes[0].started_at, 2);
    store
        .heartbeat("n", Some("http://127.0.0.1:8"), 2)
        .await
        .unwrap();
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes[0].address.as_deref(), Some("http://127.0.0.1:8"));
}

/// A store whose engine wants no commit hints stops listening (every listening backend is
/// woken by every commit of every node otherwise); wanted again, it listens again, wakes the
/// hint once for what it did not hear, and hints arrive as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_listens_for_commit_hints_only_while_they_are_wanted() {
    let Some(url) = database_url() else { return };
    let schema = unique_schema();
    let listener = open(&url, &schema).await;
    let hint = listener.commit_hint().expect("a shared store gives hints");
    let admin = admin(&url).await;
    let pids = session_pids(&admin, &schema).await;
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    let writer = PgStore::connect(
        &url,
        PgOptions {
            pool_size: 2,
            schema: Some(schema.clone()),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();

    listener.want_commit_hints(false);
    tokio::time::timeout(WAIT, async {
        while !last_statement(&admin, pid).await.starts_with("UNLISTEN") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session stops listening");
    writer.create_plan(create("p")).await.unwrap();
    drain(&hint).await;

    let notified = hint.notified();
    listener.want_commit_hints(true);
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("a wake-up once it listens again");
    assert!(last_statement(&admin, pid).await.starts_with("LISTEN"));
    drain(&hint).await;
    let notified = hint.notified();
    writer.append(append("p", 1)).await.unwrap();
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("hints arrive again");
}

/// The last statement the backend `pid` ran.
async fn last_statement(admin: &tokio_postgres::Client, pid: i32) -> String {
    admin
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}
