//! `cairn bench`: the performance workloads, each in a fresh child process (so its peak RSS is
//! its own) over a fresh SQLite file with full durability. One JSON object per line on stdout,
//! each naming its store (`"store": "sqlite"` or `"postgres"`).
//!
//! With `--database-url`, every workload that measures the engine or the server runs a second
//! time on PostgreSQL, each in a fresh database created on that server (`cairn_bench_…`, dropped
//! afterwards), and the `cluster` workload runs `cairn serve` nodes as child processes on one
//! such database (see `bench_cluster`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{InterventionKind, InterventionRequest, PauseMode, Plan, PlanStatus, StepDef};
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineOptions, Notice};
use cairn_store::Store;
use cairn_store_postgres::{PgOptions, PgStore};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use clap::Args;
use serde_json::{json, Value};

use crate::{exit, Fail};

const WORKLOADS: &[&str] = &[
    "fsync",
    "plans",
    "one_plan",
    "restore",
    "big_plan",
    "paused",
    "idle",
    "control",
    "http",
    "sse",
    "rollback",
    "cluster",
    "cluster_plans",
    "templates",
];

/// The workloads that measure the disk or several processes rather than one store: never run a
/// second time on PostgreSQL (`cluster` runs on PostgreSQL only).
const NOT_PER_STORE: &[&str] = &["fsync", "cluster", "cluster_plans"];

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Plans in the many-plans workload.
    #[arg(long, default_value_t = 1000)]
    plans: usize,
    /// Steps of each of those plans.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Steps of the one long plan (also used for checkpoint size and restore time).
    #[arg(long, default_value_t = 1000)]
    long_steps: usize,
    /// Runs of the long plan (each a restore to its first checkpoint, then a resume to the end)
    /// that make the history whose oldest checkpoint the `restore` workload reads.
    #[arg(long, default_value_t = 4)]
    history_runs: usize,
    /// Plans registered and left idle in the `idle` workload (a `cairn serve` child).
    #[arg(long, default_value_t = 100_000)]
    idle_plans: usize,
    /// Steps of the large plan whose reads and interventions are timed (`big_plan`).
    #[arg(long, default_value_t = 10_000)]
    big_steps: usize,
    /// Paused plans held for the memory workload.
    #[arg(long, default_value_t = 10_000)]
    paused: usize,
    /// Control requests (pause, resume, intervention, cancel) timed in the control workload.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// SSE subscribers in the fan-out workload.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Where to put the database files (one per workload, deleted afterwards). Default: a
    /// temporary directory in the current directory, which is on the disk being measured.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Only these workloads (comma separated): fsync, plans, one_plan, restore, big_plan,
    /// paused, idle, control, http, sse, rollback, cluster, templates, cluster_plans (the
    /// many-plans part of `cluster` alone, on PostgreSQL: one node, then `--nodes`).
    #[arg(long, value_delimiter = ',')]
    workload: Vec<String>,
    /// A PostgreSQL server (`postgres://user@host:port/db`): the workloads run on it as well, each
    /// in a database of its own created there and dropped afterwards, and `cluster` runs.
    #[arg(long)]
    database_url: Option<String>,
    /// Nodes of the `cluster` workload (it measures 1 node, then this many).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The lease of the `cluster` workload's nodes, which bounds how long a killed node's plans
    /// wait (failover).
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// How `cluster_plans` sees every plan end: `stream` (node 0's all-plans event stream, as
    /// a user watching every plan would; node 0 then reads and decodes the other nodes'
    /// events) or `database` (the bench's own PostgreSQL connection counts ended plans every
    /// 20 ms, which costs the nodes nothing).
    #[arg(long, default_value = "stream", value_parser = ["stream", "database"])]
    observe: String,
    /// Run the single workload given in this process (used by the parent).
    #[arg(long, hide = true)]
    child: bool,
}

pub async fn bench(args: BenchArgs) -> Result<u8, Fail> {
    for w in &args.workload {
        if !WORKLOADS.contains(&w.as_str()) {
            return Err(Fail::input(format!(
                "unknown workload {w:?}; one of {}",
                WORKLOADS.join(", ")
            )));
        }
    }
    if args.plans == 0
        || args.steps == 0
        || args.long_steps < 2
        || args.paused == 0
        || args.requests == 0
        || args.idle_plans == 0
    {
        return Err(Fail::input("--plans, --steps, --paused, --idle-plans and --requests must be positive and --long-steps at least 2"));
    }
    if args.nodes < 2 || args.lease_ms < 500 {
        return Err(Fail::input(
            "--nodes must be at least 2 and --lease-ms at least 500 (the shortest lease cairn serve takes)",
        ));
    }
    if args.child {
        let [w] = args.workload.as_slice() else {
            return Err(Fail::input("--child takes exactly one --workload"));
        };
        let db = args
            .db
            .clone()
            .ok_or_else(|| Fail::input("--child needs --db"))?;
        let target = match &args.database_url {
            Some(url) => Target::Postgres(url.clone()),
            None => Target::Sqlite(db.clone()),
        };
        let lines = run_workload(w, &args, &db, &target).await?;
        let mut out = std::io::stdout().lock();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        return Ok(exit::OK);
    }
    let dir = match &args.db {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| Fail::input(format!("cannot create {}: {e}", d.display())))?;
            tempfile::Builder::new()
                .prefix("cairn-bench-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new()
            .prefix(".cairn-bench-")
            .tempdir_in("."),
    }
    .map_err(|e| {
        Fail::input(format!(
            "cannot create a directory for the bench databases: {e}"
        ))
    })?;
    let exe = std::env::current_exe()
        .map_err(|e| Fail::from(anyhow::anyhow!("cannot find the cairn binary: {e}")))?;
    let selected: Vec<String> = if args.workload.is_empty() {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        args.workload.clone()
    };
    for w in selected {
        if w == "cluster" || w == "cluster_plans" {
            match &args.database_url {
                Some(url) => {
                    let sizes = crate::bench_cluster::Sizes {
                        plans: args.plans,
                        steps: args.steps,
                        nodes: args.nodes,
                        lease_ms: args.lease_ms,
                        requests: args.requests,
                        observe_database: args.observe == "database",
                    };
                    crate::bench_cluster::run(&exe, url, &sizes, w == "cluster_plans").await?;
                }
                None => eprintln!("{w}: skipped (it needs --database-url)"),
            }
            continue;
        }
        let db = dir.path().join(format!("{w}.db"));
        run_child(&exe, &args, &w, &db, None).await?;
        if let (Some(url), false) = (&args.database_url, NOT_PER_STORE.contains(&w.as_str())) {
            let fresh = FreshDb::create(url, &w).await?;
            let result = run_child(&exe, &args, &w, &db, Some(&fresh.url)).await;
            fresh.drop_now().await;
            result?;
        }
    }
    Ok(exit::OK)
}

/// Runs workload `w` in a child process (on SQLite at `db`, or on the PostgreSQL database `url`)
/// and prints its lines, each marked with its store.
async fn run_child(
    exe: &Path,
    args: &BenchArgs,
    w: &str,
    db: &Path,
    url: Option<&str>,
) -> Result<(), Fail> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("bench")
        .arg("--child")
        .args(["--workload", w])
        .args(["--plans", &args.plans.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--long-steps", &args.long_steps.to_string()])
        .args(["--big-steps", &args.big_steps.to_string()])
        .args(["--paused", &args.paused.to_string()])
        .args(["--requests", &args.requests.to_string()])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--history-runs", &args.history_runs.to_string()])
        .args(["--idle-plans", &args.idle_plans.to_string()])
        .arg("--db")
        .arg(db);
    if let Some(url) = url {
        cmd.args(["--database-url", url]);
    }
    let store = if url.is_some() { "postgres" } else { "sqlite" };
    let out = cmd
        .output()
        .await
        .map_err(|e| Fail::from(anyhow::anyhow!("cannot run workload {w}: {e}")))?;
    // `output()` captures stderr whatever was asked: pass on what the child said (its error).
    let said = String::from_utf8_lossy(&out.stderr);
    if !said.trim().is_empty() {
        eprint!("{said}");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut m)) => {
                m.insert("store".into(), json!(store));
                print!("{}\n", Value::Object(m));
            }
            _ => print!("{line}\n"),
        }
    }
    if !out.status.success() {
        return Err(Fail {
            code: exit::FAILED,
            message: format!("workload {w} on {store} failed ({})", out.status),
        });
    }
    Ok(())
}

/// A database of its own for one workload, on the PostgreSQL server of `--database-url`.
pub(crate) struct FreshDb {
    admin: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

/// `url` with its database replaced by `name` (query parameters kept).
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let head = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    format!("{head}/{name}{query}")
}

/// A PostgreSQL error with the server's own message, when it sent one.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A connection to `url` outside any pool (the bench's own statements).
pub(crate) async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, Fail> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| Fail::input(format!("--database-url: cannot connect: {e}")))?;
    tokio::spawn(conn);
    Ok(client)
}

impl FreshDb {
    pub(crate) async fn create(url: &str, what: &str) -> Result<FreshDb, Fail> {
        let name = format!("cairn_bench_{what}_{}", std::process::id());
        let client = pg_connect(url).await?;
        // Two statements: CREATE DATABASE cannot run inside the transaction a batch makes.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("{sql}: {}", pg_error(&e))))?;
        }
        Ok(FreshDb {
            admin: url.to_owned(),
            url: with_database(url, &name),
            name,
        })
    }

    /// Drops it, connections and all (a failure is only reported: the figures stand).
    pub(crate) async fn drop_now(self) {
        let dropped = match pg_connect(&self.admin).await {
            Ok(c) => c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await
                .map_err(|e| pg_error(&e)),
            Err(e) => Err(e.message),
        };
        if let Err(e) = dropped {
            eprintln!("could not drop the bench database {}: {e}", self.name);
        }
    }
}

pub(crate) fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) every thread of this process has used, to the nanosecond
/// (`CLOCK_PROCESS_CPUTIME_ID`; `/proc/self/stat` counts 10 ms ticks, and a run of a few
/// milliseconds then read more CPU than its cores could give).
fn cpu_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// The whole machine's CPU ticks so far, `(busy, all)`, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// CPU used from `start` on: this process's and the machine's.
struct Usage {
    cpu: f64,
    machine: (u64, u64),
    at: Instant,
}

impl Usage {
    fn start() -> Usage {
        Usage {
            cpu: cpu_s(),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    fn cpu_s(&self) -> f64 {
        cpu_s() - self.cpu
    }

    /// How close a run of `wall` seconds that took `commits` commits came to each limit: the
    /// disk (`commits` against `fsyncs_per_sec` fsyncs a second, measured in the same run) and
    /// the CPU (this process's CPU time against every core for the whole run, and the whole
    /// machine's busy share, which includes PostgreSQL's backends and any other work), and
    /// which of the two binds.
    fn limits(&self, wall: f64, commits: u64, fsyncs_per_sec: f64) -> Value {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = self.cpu_s();
        // The CPU share over the window the CPU time was read in (a little longer than `wall`).
        let window = self.at.elapsed().as_secs_f64().max(wall);
        let (busy, all) = machine_ticks();
        let machine = (busy - self.machine.0) as f64 / (all - self.machine.1).max(1) as f64;
        let disk = commits as f64 / wall / fsyncs_per_sec.max(1.0);
        let of_cpu = cpu / window / cores;
        json!({
            "fsyncs_per_sec": round(fsyncs_per_sec, 0),
            "commits_per_sec": round(commits as f64 / wall, 0),
            "of_commit_limit": round(disk, 3),
            "cpu_s": round(cpu, 2), "cores": cores,
            "of_cpu_limit": round(of_cpu, 3),
            "machine_cpu_busy": round(machine, 3),
            "bound_by": if disk >= of_cpu.max(machine) { "commits" } else { "cpu" },
        })
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The disk's own fsync rate: 4 KiB written and fdatasync'd, `n` times.
fn fsync_rate(dir: &Path, n: usize) -> Result<(f64, f64), Fail> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)
        .map_err(|e| Fail::from(anyhow::anyhow!("create {}: {e}", path.display())))?;
    let block = [7u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&block)
            .and_then(|_| f.sync_data())
            .map_err(|e| Fail::from(anyhow::anyhow!("fsync probe: {e}")))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((n as f64 / secs, secs / n as f64 * 1e6))
}

/// Where a workload keeps its plans.
pub(crate) enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

/// An opened store of either kind, with the counters the workloads report.
pub(crate) enum Db {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Db {
    pub(crate) async fn open(target: &Target) -> Result<Db, Fail> {
        Ok(match target {
            Target::Sqlite(db) => Db::Sqlite(Arc::new(
                SqliteStore::open(
                    db,
                    SqliteOptions {
                        engine_lock: true,
                        ..SqliteOptions::default()
                    },
                )
                .map_err(|e| Fail::from(anyhow::anyhow!("open {}: {e}", db.display())))?,
            )),
            Target::Postgres(url) => Db::Postgres(Arc::new(
                PgStore::connect(url, PgOptions::default())
                    .await
                    .map_err(|e| Fail::from(anyhow::anyhow!("open the PostgreSQL store: {e}")))?,
            )),
        })
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Postgres(s) => s.clone(),
        }
    }

    /// The write counters both stores keep.
    fn stats(&self) -> cairn_store::WriterStats {
        match self {
            Db::Sqlite(s) => s.stats(),
            Db::Postgres(s) => s.writer_stats(),
        }
    }

    /// How the store makes a commit durable.
    async fn durability(&self) -> Result<String, Fail> {
        match self {
            Db::Sqlite(_) => Ok("full".into()),
            Db::Postgres(s) => {
                let client = s
                    .client()
                    .await
                    .map_err(|e| Fail::from(anyhow::anyhow!("{e}")))?;
                let row = client
                    .query_one("SHOW synchronous_commit", &[])
                    .await
                    .map_err(|e| Fail::from(anyhow::anyhow!("{e}")))?;
                Ok(format!("synchronous_commit={}", row.get::<_, String>(0)))
            }
        }
    }

    /// What checkpoints cost: `(checkpoints, bytes)`. On PostgreSQL: the partial checkpoint
    /// index plus the checkpoint columns of the event rows.
    async fn checkpoint_storage(&self) -> Result<(u64, u64), Fail> {
        match self {
            Db::Sqlite(s) => s
                .checkpoint_storage()
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("{e}"))),
            Db::Postgres(s) => {
                let client = s
                    .client()
                    .await
                    .map_err(|e| Fail::from(anyhow::anyhow!("{e}")))?;
                let row = client
                    .query_one(
                        "SELECT count(*), coalesce(sum(octet_length(cp_trigger) + coalesce(octet_length(cp_label), 0) + 1), 0)::BIGINT \
                                + pg_relation_size('checkpoints_by_plan') \
                         FROM events WHERE cp_trigger IS NOT NULL",
                        &[],
                    )
                    .await
                    .map_err(|e| Fail::from(anyhow::anyhow!("{e}")))?;
                Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
            }
        }
    }
}

async fn open(target: &Target, opts: EngineOptions) -> Result<(Engine, Db), Fail> {
    let db = Db::open(target).await?;
    let engine = Engine::open(db.store(), Registry::with_builtins(), opts).await?;
    Ok((engine, db))
}

fn echo_plan(id: String, steps: usize) -> Plan {
    Plan {
        plan_id: Some(id),
        query: "bench".into(),
        metadata: Value::Null,
        max_parallel: 8,
        steps: (0..steps)
            .map(|j| step(&format!("s{j}"), "builtin.echo", json!({"n": j})))
            .map(Arc::new)
            .collect(),
        on_failure: Default::default(),

        inputs: Value::Null,
        template: None,
    }
}

fn step(id: &str, agent: &str, params: Value) -> StepDef {
    StepDef {
        params,
        ..StepDef::new(id, "bench", agent)
    }
}

/// Registers plans concurrently.
async fn register_all(engine: &Engine, plans: Vec<Plan>) -> Result<(), Fail> {
    let mut set = tokio::task::JoinSet::new();
    for p in plans {
        let e = engine.clone();
        set.spawn(async move { e.register(p, "bench").await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| Fail::from(anyhow::anyhow!("{e}")))??;
    }
    Ok(())
}

/// Registers one plan per id concurrently, each made by its own task: like requests arriving
/// one by one, and unlike a prepared `Vec<Plan>`, no moment holds every definition at once
/// besides the engine's own copies (1,000 definitions of 10 steps were 9 MB of the process's
/// peak, on the main thread's heap).
async fn register_each(
    engine: &Engine,
    ids: &[String],
    make: impl Fn(String) -> Plan + Clone + Send + 'static,
) -> Result<(), Fail> {
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let e = engine.clone();
        let id = id.clone();
        let make = make.clone();
        set.spawn(async move { e.register(make(id), "bench").await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| Fail::from(anyhow::anyhow!("{e}")))??;
    }
    Ok(())
}

/// Starts plans concurrently and waits until `n` of them have reached a final state.
///
/// The stream is read while the plans start, as a user watching them would: a subscription
/// that is not read keeps every event since in the engine's broadcast buffer (up to
/// `stream_buffer` of them, several megabytes), which is the reader's memory, not the work's.
async fn start_and_wait(engine: &Engine, ids: &[String]) -> Result<(), Fail> {
    let mut sub = engine.subscribe(None);
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let e = engine.clone();
        let id = id.clone();
        set.spawn(async move { e.start(&id, "bench", None).await.map(|_| ()) });
    }
    let mut done = 0;
    let mut starting = true;
    let mut lagged = false;
    while starting || done < ids.len() {
        if lagged && !starting {
            // Count from the store instead (once every plan has started: a plan not started
            // yet is settled too).
            lagged = false;
            let mut settled = 0;
            for id in ids {
                if cairn_core::view::is_settled(&*engine.state(id).await?) {
                    settled += 1;
                }
            }
            done = settled;
            continue;
        }
        let next = tokio::select! {
            r = set.join_next(), if starting => {
                match r {
                    Some(r) => r.map_err(|e| Fail::from(anyhow::anyhow!("{e}")))??,
                    None => starting = false,
                }
                continue;
            }
            n = sub.next(), if done < ids.len() => n,
        };
        match next {
            Some(Notice::Event(e)) => {
                if matches!(
                    e.kind,
                    cairn_core::EventKind::PlanCompleted {}
                        | cairn_core::EventKind::PlanFailed { .. }
                        | cairn_core::EventKind::PlanDrained {}
                ) {
                    done += 1;
                }
            }
            Some(Notice::Lagged { .. }) => lagged = true,
            None => return Err(Fail::from(anyhow::anyhow!("the engine stopped"))),
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_workload(
    w: &str,
    args: &BenchArgs,
    db: &Path,
    target: &Target,
) -> Result<Vec<Value>, Fail> {
    let dir = db.parent().unwrap_or(Path::new("."));
    match w {
        "rollback" => rollback_workload(args.long_steps, target).await,
        "fsync" => {
            let (rate, us) = fsync_rate(dir, 500)?;
            Ok(vec![json!({
                "workload": "fsync", "steps": 0, "wall_s": round(500.0 / rate, 3), "steps_per_sec": 0,
                "fsyncs_per_sec": round(rate, 0), "fsync_us": round(us, 1), "peak_rss_mb": rss_mb("VmHWM:"),
            })])
        }
        "plans" => {
            let (fsyncs_per_sec, _) = fsync_rate(dir, 200)?;
            let (engine, store) = open(target, EngineOptions::default()).await?;
            let ids: Vec<String> = (0..args.plans).map(|i| format!("bench-{i}")).collect();
            let per_plan = args.steps;
            let t = Instant::now();
            register_each(&engine, &ids, move |id| echo_plan(id, per_plan)).await?;
            let register_s = t.elapsed().as_secs_f64();
            let before = store.stats();
            let usage = Usage::start();
            let t = Instant::now();
            start_and_wait(&engine, &ids).await?;
            let wall = t.elapsed().as_secs_f64();
            let after = store.stats();
            let limits = usage.limits(wall, after.commits - before.commits, fsyncs_per_sec);
            let completed = engine.list(Some(PlanStatus::Completed), 1, None).await?;
            if completed.items.is_empty() {
                return Err(Fail::from(anyhow::anyhow!("no plan completed")));
            }
            let steps = args.plans * args.steps;
            let commits = after.commits - before.commits;
            let mut line = json!({
                "workload": "plans", "plans": args.plans, "steps": steps, "wall_s": round(wall, 3),
                "steps_per_sec": round(steps as f64 / wall, 0), "peak_rss_mb": rss_mb("VmHWM:"),
                "register_s": round(register_s, 3), "commits": commits,
                "appends_per_commit": round((after.requests - before.requests) as f64 / commits.max(1) as f64, 1),
                "durability": store.durability().await?,
            });
            if let (Value::Object(line), Value::Object(limits)) = (&mut line, limits) {
                line.extend(limits);
            }
            Ok(vec![line])
        }
        "one_plan" => {
            let (_, fsync_us) = fsync_rate(dir, 200)?;
            let (engine, store) = open(target, EngineOptions::default()).await?;
            let usage = Usage::start();
            let n = args.long_steps;
            engine
                .register(echo_plan("long".into(), n), "bench")
                .await?;
            let before = store.stats();
            let t = Instant::now();
            engine.start("long", "bench", None).await?;
            let state = engine.wait_settled("long").await?;
            let wall = t.elapsed().as_secs_f64();
            let after = store.stats();
            let commits = (after.commits - before.commits).max(1);
            // Mean time of one SQLite commit (BEGIN to the end of COMMIT, its fsync included).
            let commit_us = (after.busy - before.busy).as_secs_f64() / commits as f64 * 1e6;
            if state.status != PlanStatus::Completed {
                return Err(Fail::from(anyhow::anyhow!(
                    "the long plan ended {}",
                    state.status.as_str()
                )));
            }
            let per_step_us = wall / n as f64 * 1e6;
            let (count, bytes) = store.checkpoint_storage().await?;
            let cpu = usage.cpu_s();
            Ok(vec![
                json!({
                    "workload": "one_plan", "steps": n, "wall_s": round(wall, 3),
                    "steps_per_sec": round(n as f64 / wall, 0), "peak_rss_mb": rss_mb("VmHWM:"),
                    "per_step_us": round(per_step_us, 1), "fsync_us": round(fsync_us, 1),
                    "fsyncs_per_sec": round(1e6 / fsync_us, 0),
                    "commits": commits, "commit_us": round(commit_us, 1),
                    "engine_us": round(per_step_us - commit_us * commits as f64 / n as f64, 1),
                    "overhead_us": round(per_step_us - fsync_us, 1),
                    // The limit of a sequential plan is one fsync per step: how close it is,
                    // and how much of one core it used on the way.
                    "of_fsync_limit": round(fsync_us / per_step_us, 3),
                    "commit_share": round(commit_us * commits as f64 / n as f64 / per_step_us, 3),
                    "cpu_s": round(cpu, 2), "cpu_of_one_core": round(cpu / wall, 3),
                }),
                json!({
                    "workload": "checkpoint_size", "steps": n, "wall_s": 0, "steps_per_sec": 0,
                    "peak_rss_mb": rss_mb("VmHWM:"), "checkpoints": count,
                    "bytes_per_checkpoint": round(bytes as f64 / count.max(1) as f64, 1),
                }),
            ])
        }
        "restore" => {
            let (engine, _) = open(target, EngineOptions::default()).await?;
            let n = args.long_steps;
            engine
                .register(echo_plan("long".into(), n), "bench")
                .await?;
            engine.start("long", "bench", None).await?;
            engine.wait_settled("long").await?;
            let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
            // Restore to checkpoints spread over the log, timing each call end to end, and
            // the read of the checkpoint's state before it.
            let cps = engine.checkpoints("long").await?;
            let (mut times, mut reads) = (Vec::new(), Vec::new());
            for k in 1..=9 {
                let cp = &cps[cps.len() * k / 10];
                let t = Instant::now();
                engine.checkpoint("long", &cp.checkpoint_id).await?;
                reads.push(ms(t));
                let t = Instant::now();
                engine
                    .restore("long", &cp.checkpoint_id, "bench", None)
                    .await?;
                times.push(ms(t));
            }
            // A long history: the plan restored to its first checkpoint and run to its end
            // again, `history_runs` times; then its oldest checkpoints are read.
            let first = cps[0].checkpoint_id.clone();
            for _ in 0..args.history_runs {
                engine.restore("long", &first, "bench", None).await?;
                engine.resume("long", "bench", None).await?;
                let state = engine.wait_settled("long").await?;
                if state.status != PlanStatus::Completed {
                    return Err(Fail::from(anyhow::anyhow!(
                        "the long plan ended {}",
                        state.status.as_str()
                    )));
                }
            }
            let all = engine.checkpoints("long").await?;
            let events = engine.state("long").await?.seq;
            let mut oldest = Vec::new();
            for cp in all.iter().take(5) {
                let t = Instant::now();
                engine.checkpoint("long", &cp.checkpoint_id).await?;
                oldest.push(ms(t));
            }
            let mut spread = Vec::new();
            for k in 0..10 {
                let cp = &all[all.len() * k / 10];
                let t = Instant::now();
                engine.checkpoint("long", &cp.checkpoint_id).await?;
                spread.push(ms(t));
            }
            engine.shutdown().await;
            for v in [&mut reads, &mut times, &mut oldest, &mut spread] {
                v.sort_by(f64::total_cmp);
            }
            Ok(vec![
                json!({
                    "workload": "restore", "steps": n, "wall_s": round(times.iter().sum::<f64>() / 1e3, 3), "steps_per_sec": 0,
                    "peak_rss_mb": rss_mb("VmHWM:"), "restores": times.len(),
                    "restore_ms_p50": round(percentile(&times, 0.5), 2), "restore_ms_max": round(percentile(&times, 1.0), 2),
                    "read_checkpoint_ms_p50": round(percentile(&reads, 0.5), 2),
                    "read_checkpoint_ms_max": round(percentile(&reads, 1.0), 2),
                }),
                json!({
                    "workload": "restore_history", "steps": n, "wall_s": round(oldest.iter().chain(&spread).sum::<f64>() / 1e3, 3),
                    "steps_per_sec": 0, "peak_rss_mb": rss_mb("VmHWM:"),
                    "runs": args.history_runs + 1, "events": events, "checkpoints": all.len(),
                    "read_oldest_ms_p50": round(percentile(&oldest, 0.5), 2),
                    "read_oldest_ms_max": round(percentile(&oldest, 1.0), 2),
                    "read_any_ms_p50": round(percentile(&spread, 0.5), 2),
                    "read_any_ms_max": round(percentile(&spread, 1.0), 2),
                }),
            ])
        }
        "idle" => crate::bench_cluster::idle(args.idle_plans, target).await,
        "paused" => {
            let (engine, _) = open(target, EngineOptions::default()).await?;
            let plans: Vec<Plan> = (0..args.paused)
                .map(|i| {
                    let mut p = echo_plan(format!("held-{i}"), 3);
                    Arc::make_mut(&mut p.steps[1]).pause_before = true;
                    p
                })
                .collect();
            let ids: Vec<String> = plans.iter().filter_map(|p| p.plan_id.clone()).collect();
            let t = Instant::now();
            register_all(&engine, plans).await?;
            start_and_wait(&engine, &ids).await?;
            let wall = t.elapsed().as_secs_f64();
            let paused = engine.list(Some(PlanStatus::Paused), 1000, None).await?;
            Ok(vec![json!({
                "workload": "paused", "plans": args.paused, "steps": args.paused, "wall_s": round(wall, 3),
                "steps_per_sec": round(args.paused as f64 / wall, 0), "peak_rss_mb": rss_mb("VmHWM:"),
                "rss_mb": rss_mb("VmRSS:"), "paused_listed_first_page": paused.items.len(),
            })])
        }
        "big_plan" => {
            // One plan of `big_steps` steps, idle: what an operator's reads and changes cost on
            // it (the dashboard's dry-run preview, then the change), each timed alone.
            let (engine, _) = open(target, EngineOptions::default()).await?;
            let n = args.big_steps.max(2);
            let t = Instant::now();
            register_all(&engine, vec![echo_plan("big".into(), n)]).await?;
            let register_ms = t.elapsed().as_secs_f64() * 1e3;
            let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
            let (mut read, mut preview, mut apply) = (vec![], vec![], vec![]);
            // Distinct steps spread over the plan, each skipped once.
            let rounds = args.requests.clamp(1, 50).min(n);
            for k in 0..rounds {
                let t = Instant::now();
                engine.view("big").await?;
                read.push(ms(t));
                let skip = |dry_run| InterventionRequest {
                    kind: InterventionKind::SkipStep {
                        step_id: format!("s{}", k * (n / rounds)),
                        compensation: false,
                    },
                    expected_version: None,
                    reason: Some("bench".into()),
                    dry_run,
                    upgrade: None,
                };
                let t = Instant::now();
                engine.intervene("big", skip(true), "bench").await?;
                preview.push(ms(t));
                let t = Instant::now();
                engine.intervene("big", skip(false), "bench").await?;
                apply.push(ms(t));
            }
            let mut out = Vec::new();
            for (name, mut v) in [
                ("read", read),
                ("preview", preview),
                ("intervention", apply),
            ] {
                v.sort_by(f64::total_cmp);
                out.push(json!({
                    "workload": format!("big_plan_{name}"), "steps": n, "wall_s": round(v.iter().sum::<f64>() / 1e3, 3),
                    "steps_per_sec": 0, "peak_rss_mb": rss_mb("VmHWM:"), "requests": v.len(),
                    "register_ms": round(register_ms, 1),
                    "p50_ms": round(percentile(&v, 0.5), 3), "p99_ms": round(percentile(&v, 0.99), 3),
                }));
            }
            engine.shutdown().await;
            Ok(out)
        }
        "control" => {
            let (_, fsync_us) = fsync_rate(dir, 200)?;
            let (engine, store) = open(target, EngineOptions::default()).await?;
            // Plans that stay busy while the requests are timed: sleeping steps in a chain, 30 s
            // of them (on PostgreSQL starting 1,000 plans takes seconds; 10 s were not enough).
            let plans: Vec<Plan> = (0..args.plans)
                .map(|i| Plan {
                    plan_id: Some(format!("busy-{i}")),
                    query: "bench".into(),
                    metadata: Value::Null,
                    max_parallel: 8,
                    steps: (0..150)
                        .map(|j| step(&format!("s{j}"), "builtin.sleep", json!({"ms": 200})))
                        .map(Arc::new)
                        .collect(),
                    on_failure: Default::default(),

                    inputs: Value::Null,
                    template: None,
                })
                .collect();
            let ids: Vec<String> = plans.iter().filter_map(|p| p.plan_id.clone()).collect();
            register_all(&engine, plans).await?;
            let mut set = tokio::task::JoinSet::new();
            for id in ids.clone() {
                let e = engine.clone();
                set.spawn(async move { e.start(&id, "bench", None).await.map(|_| ()) });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| Fail::from(anyhow::anyhow!("{e}")))??;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (mut pause, mut resume, mut intervene, mut cancel) =
                (vec![], vec![], vec![], vec![]);
            let n = args.requests.min(ids.len());
            let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
            // The store's commits while the requests are timed (theirs and the busy plans'):
            // a request waits for the commit in flight, then for its own.
            let writer_before = store.stats();
            for (k, id) in ids.iter().take(n).enumerate() {
                let t = Instant::now();
                engine
                    .pause(id, PauseMode::Boundary, None, "bench", None)
                    .await?;
                pause.push(ms(t));
                let t = Instant::now();
                engine
                    .intervene(
                        id,
                        InterventionRequest {
                            kind: InterventionKind::AddStep {
                                step: json!({"step_id": format!("extra-{k}"), "action": "bench", "agent_type": "builtin.echo"}),
                                after: None,
                                before: None,
                            },
                            expected_version: None,
                            reason: None,
                            dry_run: false,
                            upgrade: None,
                        },
                        "bench",
                    )
                    .await?;
                intervene.push(ms(t));
                let t = Instant::now();
                engine.resume(id, "bench", None).await?;
                resume.push(ms(t));
            }
            for id in ids.iter().take(n) {
                let t = Instant::now();
                engine.cancel(id, "bench", None).await?;
                cancel.push(ms(t));
            }
            let writer_after = store.stats();
            let commit_ms = |q: f64| {
                writer_after
                    .commit_quantile(&writer_before, q)
                    .map(|d| round(d.as_secs_f64() * 1e3, 3))
            };
            let (commit_p50, commit_p99) = (commit_ms(0.5), commit_ms(0.99));
            let mut out = Vec::new();
            for (name, mut v) in [
                ("pause", pause),
                ("intervention", intervene),
                ("resume", resume),
                ("cancel", cancel),
            ] {
                v.sort_by(f64::total_cmp);
                out.push(json!({
                    "workload": format!("control_{name}"), "steps": 0, "wall_s": round(v.iter().sum::<f64>() / 1e3, 3),
                    "steps_per_sec": 0, "peak_rss_mb": rss_mb("VmHWM:"), "requests": v.len(), "running_plans": args.plans,
                    "p50_ms": round(percentile(&v, 0.5), 3), "p99_ms": round(percentile(&v, 0.99), 3), "fsync_ms": round(fsync_us / 1e3, 3),
                    "commit_p50_ms": commit_p50, "commit_p99_ms": commit_p99,
                }));
            }
            engine.shutdown().await;
            Ok(out)
        }
        "http" => {
            crate::bench_http::run(args.plans, args.requests, target, || rss_mb("VmHWM:")).await
        }
        "sse" => crate::bench_http::sse(args.subscribers, target, || rss_mb("VmHWM:")).await,
        // Making a plan of a template and starting it (one commit), against registering and
        // starting it in two calls; and the diff of two 1,000-step definitions.
        "templates" => {
            let (_, fsync_us) = fsync_rate(dir, 200)?;
            let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
            let (engine, store) = open(target, EngineOptions::default()).await?;
            // The first step holds (a long sleep), so nothing else commits while timing.
            let template = json!({
                "name": "bench",
                "parameters": {"type": "object", "properties": {"topic": {"type": "string", "default": "t"}}},
                "plan": {"query": "bench", "steps": [
                    {"step_id": "hold", "action": "hold", "agent_type": "builtin.sleep", "params": {"ms": 3_600_000}},
                    {"step_id": "read", "action": "read", "agent_type": "builtin.echo", "params": {"q": "{{ inputs.topic }}"}}
                ]}
            });
            engine.push_template(template.clone(), "bench").await?;
            let rounds = args.requests.clamp(1, 200);
            let (mut one, mut two) = (Vec::new(), Vec::new());
            let before = store.stats();
            for k in 0..rounds {
                let t = Instant::now();
                engine
                    .instantiate(
                        "bench",
                        cairn_engine::Instantiate {
                            plan_id: Some(format!("tpl-{k}")),
                            ..Default::default()
                        },
                        "bench",
                    )
                    .await?;
                one.push(ms(t));
            }
            let after = store.stats();
            let template = cairn_core::Template::from_value(template)
                .map_err(|e| Fail::input(e.to_string()))?;
            for k in 0..rounds {
                let plan = template
                    .instantiate(1, Value::Null, Some(format!("two-{k}")))
                    .map_err(|e| Fail::input(e.to_string()))?;
                let t = Instant::now();
                engine.register(plan, "bench").await?;
                engine.start(&format!("two-{k}"), "bench", None).await?;
                two.push(ms(t));
            }
            // Two 1,000-step definitions with edits throughout: params changed on every tenth
            // step, a tenth of the steps removed, two swapped, one added.
            let steps = |edit: bool| -> Vec<Arc<StepDef>> {
                (0..1_000)
                    .map(|i| {
                        let mut params =
                            json!({"query": format!("q{i}"), "opts": {"depth": i % 7}});
                        if edit && i % 10 == 0 {
                            params["opts"]["depth"] = json!(99);
                        }
                        Arc::new(step(&format!("step_{i}"), "builtin.echo", params))
                    })
                    .collect()
            };
            let v1 = Plan {
                steps: steps(false),
                ..echo_plan("d".into(), 1)
            };
            let mut edited = steps(true);
            edited.retain(|s| !s.step_id.ends_with('3'));
            edited.swap(10, 500);
            edited.push(Arc::new(step("new", "builtin.echo", Value::Null)));
            let v2 = Plan {
                steps: edited,
                ..echo_plan("d".into(), 1)
            };
            let (t1, t2) = (
                cairn_core::Template {
                    name: "d".into(),
                    description: None,
                    parameters: json!({"type": "object"}),
                    plan: serde_json::to_value(&v1).unwrap_or_default(),
                },
                cairn_core::Template {
                    name: "d".into(),
                    description: None,
                    parameters: json!({"type": "object"}),
                    plan: serde_json::to_value(&v2).unwrap_or_default(),
                },
            );
            let (mut plan_diff, mut template_diff) = (Vec::new(), Vec::new());
            for _ in 0..rounds.min(50) {
                let t = Instant::now();
                std::hint::black_box(cairn_core::diff::Diff::between(&v1, &v2));
                plan_diff.push(ms(t));
                let t = Instant::now();
                std::hint::black_box(t1.diff(&t2));
                template_diff.push(ms(t));
            }
            for id in (0..rounds).flat_map(|k| [format!("tpl-{k}"), format!("two-{k}")]) {
                engine.cancel(&id, "bench", None).await?;
            }
            engine.shutdown().await;
            let mut out = Vec::new();
            let commits = (after.commits - before.commits) as f64 / rounds as f64;
            let requests = (after.requests - before.requests) as f64 / rounds as f64;
            two.sort_by(f64::total_cmp);
            for (name, mut v) in [
                ("instantiate_start", one),
                ("diff_plan_1000", plan_diff),
                ("diff_template_1000", template_diff),
            ] {
                v.sort_by(f64::total_cmp);
                let mut line = json!({
                    "workload": format!("templates_{name}"), "steps": if name == "instantiate_start" { 2 } else { 1_000 },
                    "wall_s": round(v.iter().sum::<f64>() / 1e3, 3), "steps_per_sec": 0,
                    "peak_rss_mb": rss_mb("VmHWM:"), "requests": v.len(),
                    "p50_ms": round(percentile(&v, 0.5), 3), "p99_ms": round(percentile(&v, 0.99), 3),
                });
                if name == "instantiate_start" {
                    line["fsync_ms"] = json!(round(fsync_us / 1e3, 3));
                    line["commits_per_call"] = json!(round(commits, 2));
                    line["writes_per_call"] = json!(round(requests, 2));
                    line["register_then_start_p50_ms"] = json!(round(percentile(&two, 0.5), 3));
                    line["register_then_start_p99_ms"] = json!(round(percentile(&two, 0.99), 3));
                }
                out.push(line);
            }
            Ok(out)
        }
        other => Err(Fail::input(format!("unknown workload {other:?}"))),
    }
}

/// `rollback`: a plan of `n` echo steps, each with an echo compensation, whose last step fails;
/// then the rollback of the `n` steps is timed: time per compensation, and store commits per
/// compensation once the rollback started (one decision records a compensation's result and
/// starts the next, so one commit each; the request that starts the rollback, and taking the
/// plan's lease again, commit on their own: `start_commits`). The engine stores no state snapshots here, and its node heartbeats (every third
/// of a lease) are an hour apart, so every commit counted is the log's.
async fn rollback_workload(n: usize, target: &Target) -> Result<Vec<Value>, Fail> {
    let opts = EngineOptions {
        snapshot_every: 0,
        lease_ms: 3 * 3_600_000,
        ..EngineOptions::default()
    };
    let (engine, store) = open(target, opts).await?;
    let mut plan = echo_plan("saga".into(), n);
    for s in &mut plan.steps {
        Arc::make_mut(s).compensate = Some(Box::new(cairn_core::plan::Compensate {
            action: "undo".into(),
            agent_type: "builtin.echo".into(),
            params: json!({"undo": "{{ this.output.n }}"}),
            retry: None,
            timeout_ms: None,
        }));
    }
    plan.steps.push(Arc::new(step(
        "last",
        "builtin.fail",
        json!({"retryable": false, "message": "the saga's last step fails"}),
    )));
    engine.register(plan, "bench").await?;
    engine.start("saga", "bench", None).await?;
    let failed = engine.wait_settled("saga").await?;
    if failed.status != PlanStatus::Failed {
        return Err(Fail::from(anyhow::anyhow!(
            "the saga ended {} before its rollback",
            failed.status.as_str()
        )));
    }
    let before = store.stats();
    let t = Instant::now();
    let (_, order) = engine.rollback("saga", "bench", false, None).await?;
    let started = store.stats();
    let state = engine.wait_settled("saga").await?;
    let wall = t.elapsed().as_secs_f64();
    let after = store.stats();
    let done = state.rollback.as_ref().map_or(0, |r| r.done.len());
    if order.len() != n || done != n {
        return Err(Fail::from(anyhow::anyhow!(
            "the rollback ran {done} of {} compensations (expected {n})",
            order.len()
        )));
    }
    let commits = after.commits - started.commits;
    Ok(vec![json!({
        "workload": "rollback", "steps": n, "compensations": n, "wall_s": round(wall, 3),
        "steps_per_sec": round(n as f64 / wall, 0),
        "per_compensation_us": round(wall / n as f64 * 1e6, 1),
        "commits": commits,
        "commits_per_compensation": round(commits as f64 / n as f64, 3),
        "start_commits": started.commits - before.commits,
        "peak_rss_mb": rss_mb("VmHWM:"),
        "durability": store.durability().await?,
    })])
}
