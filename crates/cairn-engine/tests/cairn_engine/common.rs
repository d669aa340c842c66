//! Helpers every module of this test binary shares: an engine over a fresh database, plans read
//! from YAML, and bounded waits that fail naming what did not happen, instead of hanging the
//! suite.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use cairn_core::{Event, Format, Plan, PlanState};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions, Notice};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};

/// A plan read from a test's YAML (valid, or the test is wrong).
pub fn plan(yaml: &str) -> Plan {
    Plan::parse(yaml, Format::Yaml).unwrap()
}

/// Registers the plan of `yaml` and starts it, both as `user`.
pub async fn start_plan(engine: &Engine, yaml: &str, user: &str) {
    let plan = plan(yaml);
    let id = plan.plan_id.clone().expect("the plan names its id");
    engine.register(plan, user).await.unwrap();
    engine.start(&id, user, None).await.unwrap();
}

/// An engine with `registry` and `opts` over the database `cairn.db` in `dir`, created when
/// missing (opening it again is a restart).
pub async fn open_engine(
    dir: &tempfile::TempDir,
    registry: Registry,
    opts: EngineOptions,
) -> Engine {
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    Engine::open(Arc::new(store), registry, opts).await.unwrap()
}

/// How long a test waits for something the engine should do promptly. Generous: a failure is a
/// hang caught, not a slow machine.
pub const PROMPTLY: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing the test if it takes longer than [`PROMPTLY`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(PROMPTLY, what, fut).await
}

/// Awaits `fut`, failing the test naming `what` if it takes longer than `limit` of real time.
///
/// The limit is kept by a thread, not by a tokio timer: on paused tokio time the runtime jumps to
/// its next timer whenever it waits for something outside it (the SQLite writer thread), so a
/// tokio timeout there would fire at the first store write.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    let deadline = real_deadline(limit);
    tokio::select! {
        value = fut => value,
        _ = deadline => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Every pending deadline of the process, kept by one thread.
#[derive(Default)]
struct Deadlines {
    next_id: u64,
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    senders: HashMap<u64, oneshot::Sender<()>>,
}

/// A receiver that resolves once `limit` of real time has passed.
fn real_deadline(limit: Duration) -> oneshot::Receiver<()> {
    static KEEPER: OnceLock<Arc<(Mutex<Deadlines>, Condvar)>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let keeper: Arc<(Mutex<Deadlines>, Condvar)> = Arc::default();
        let kept = keeper.clone();
        std::thread::Builder::new()
            .name("test deadlines".into())
            .spawn(move || {
                let (deadlines, wake) = &*kept;
                let mut d = deadlines.lock().unwrap();
                loop {
                    let now = Instant::now();
                    match d.due.peek().copied() {
                        Some(Reverse((at, id))) if at <= now => {
                            d.due.pop();
                            if let Some(tx) = d.senders.remove(&id) {
                                let _ = tx.send(());
                            }
                        }
                        Some(Reverse((at, _))) => d = wake.wait_timeout(d, at - now).unwrap().0,
                        None => d = wake.wait(d).unwrap(),
                    }
                }
            })
            .expect("the deadline thread");
        keeper
    });
    let (tx, rx) = oneshot::channel();
    let (deadlines, wake) = &**keeper;
    let mut d = deadlines.lock().unwrap();
    d.next_id += 1;
    let id = d.next_id;
    d.senders.insert(id, tx);
    d.due.push(Reverse((Instant::now() + limit, id)));
    drop(d);
    wake.notify_one();
    rx
}

/// The plan's state once it has settled (ended, or paused with nothing running), bounded.
pub async fn settled(engine: &Engine, plan_id: &str) -> Arc<PlanState> {
    within(
        &format!("plan {plan_id} to settle"),
        engine.wait_settled(plan_id),
    )
    .await
    .unwrap_or_else(|e| panic!("waiting for plan {plan_id} to settle: {e}"))
}

/// The first event of a plan, past or future, that matches (from the live stream, no polling),
/// bounded.
pub async fn wait_event(
    engine: &Engine,
    plan_id: &str,
    pred: impl Fn(&Event) -> bool,
) -> Arc<Event> {
    wait_event_for(PROMPTLY, engine, plan_id, pred).await
}

/// [`wait_event`] with its own limit (paused-time tests wait in virtual time).
pub async fn wait_event_for(
    limit: Duration,
    engine: &Engine,
    plan_id: &str,
    pred: impl Fn(&Event) -> bool,
) -> Arc<Event> {
    let mut sub = engine.subscribe_plan(plan_id, Some(0));
    within_for(
        limit,
        &format!("a matching event of plan {plan_id}"),
        async {
            loop {
                match sub.next().await.expect("the engine is gone") {
                    Notice::Event(e) if pred(&e) => return e,
                    _ => {}
                }
            }
        },
    )
    .await
}

/// The test database's URL and a fresh schema name for one test on it, or `None` (saying so)
/// when `CAIRN_TEST_DATABASE_URL` is unset.
pub fn postgres_schema() -> Option<(String, String)> {
    let url = match std::env::var("CAIRN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)");
            return None;
        }
    };
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).unwrap();
    let schema: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    Some((url, format!("cairn_t_{schema}")))
}

/// A PostgreSQL store on `schema` of the test database at `url` (migrated on first use).
pub async fn postgres_store(url: &str, schema: &str) -> Arc<dyn cairn_store::Store> {
    let opts = cairn_store_postgres::PgOptions {
        pool_size: 4,
        schema: Some(schema.to_owned()),
        ..Default::default()
    };
    let store = cairn_store_postgres::PgStore::connect(url, opts)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Arc::new(store)
}
