//! The `cluster` workload of `cairn bench --database-url URL`: `cairn serve` nodes as child
//! processes of this one, on 127.0.0.1, each measurement on a fresh PostgreSQL database of its
//! own (and one SQLite node for comparison), driven over HTTP by a load generator that shares
//! the machine with them (so the figures are a floor).
//!
//! - `cluster_plans`: the many-plans workload over HTTP: every plan registered, then started
//!   through node `k % nodes` (which then drives it), timed until the all-plans stream of node 0
//!   has carried every plan's `plan_completed`. On one SQLite node, one PostgreSQL node, and
//!   `--nodes` PostgreSQL nodes.
//! - `cluster_control`: pause, intervention and resume latency for plans another node owns
//!   (the request is carried out by the owner), beside the same requests sent to the owner.
//! - `failover`: `kill -9` of the node driving 100 plans: how long until another node holds
//!   each plan's lease (read from the database) and until each plan's first event committed
//!   after the kill reaches a surviving node's stream.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::bench::{pg_connect, FreshDb};
use crate::Fail;

fn err(e: impl std::fmt::Display) -> Fail {
    Fail::from(anyhow::anyhow!("{e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The load generator's own peak RSS (the nodes are other processes).
fn peak_rss() -> f64 {
    crate::bench::rss_mb("VmHWM:")
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat` (0 when it
/// cannot be read: another OS, or the process is gone).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count the fields after its closing paren,
    // from field 3; utime and stime are fields 14 and 15, in USER_HZ ticks (100 a second on
    // Linux, whatever the kernel's own tick).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The CPU time the PostgreSQL backends serving one database used, and that database's
/// transaction and row counters: what the nodes cost the database server. (The server's shared
/// processes, the WAL writer among them, are not counted.)
struct PgCost {
    db: tokio_postgres::Client,
    me: i32,
    /// CPU seconds of each backend at the start.
    start: HashMap<i32, f64>,
    counters: [i64; 4],
    /// Sequential scans and index scans of each table at the start.
    scans: HashMap<String, [i64; 2]>,
}

impl PgCost {
    async fn start(url: &str) -> Result<PgCost, Fail> {
        let db = pg_connect(url).await?;
        let me: i32 = db
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(err)?
            .get(0);
        let mut cost = PgCost {
            db,
            me,
            start: HashMap::new(),
            counters: [0; 4],
            scans: HashMap::new(),
        };
        cost.start = cost.backends().await?;
        cost.counters = cost.counters().await?;
        cost.scans = cost.scans().await?;
        Ok(cost)
    }

    /// Sequential and index scans of each table so far: which statements a workload runs how
    /// often, and which of them read whole tables. (An index scan repeated for each row of a
    /// nested loop counts once per row.)
    async fn scans(&self) -> Result<HashMap<String, [i64; 2]>, Fail> {
        let rows = self
            .db
            .query(
                "SELECT relname::text, seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables",
                &[],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), [r.get(1), r.get(2)]))
            .collect())
    }

    async fn backends(&self) -> Result<HashMap<i32, f64>, Fail> {
        let rows = self
            .db
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .filter(|pid| *pid != self.me)
            .map(|pid| (pid, cpu_s(pid as u32)))
            .collect())
    }

    /// Transactions, rows read (returned by scans and fetched by index), rows written.
    async fn counters(&self) -> Result<[i64; 4], Fail> {
        let r = self
            .db
            .query_one(
                "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched,
                        tup_inserted + tup_updated + tup_deleted
                 FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(err)?;
        Ok([r.get(0), r.get(1), r.get(2), r.get(3)])
    }

    /// CPU seconds the database's backends used since the start (a backend that ended in
    /// between is not counted).
    async fn cpu_s(&self) -> Result<f64, Fail> {
        Ok(self
            .backends()
            .await?
            .iter()
            .map(|(pid, now)| now - self.start.get(pid).copied().unwrap_or(0.0))
            .sum())
    }

    /// The counters' growth since the start, read once no node is connected any more (a
    /// backend reports its last counts as it ends).
    async fn finish(self) -> Result<([i64; 4], HashMap<String, [i64; 2]>), Fail> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.backends().await?.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let end = self.counters().await?;
        let scans = self
            .scans()
            .await?
            .into_iter()
            .map(|(t, [seq, idx])| {
                let [seq0, idx0] = self.scans.get(&t).copied().unwrap_or([0, 0]);
                (t, [seq - seq0, idx - idx0])
            })
            .filter(|(_, [seq, idx])| *seq > 0 || *idx > 0)
            .collect();
        Ok((std::array::from_fn(|i| end[i] - self.counters[i]), scans))
    }
}

/// The sizes the workloads use.
pub struct Sizes {
    pub plans: usize,
    pub steps: usize,
    pub nodes: usize,
    pub lease_ms: u64,
    pub requests: usize,
    /// See plans end by counting them in the database rather than through node 0's stream.
    pub observe_database: bool,
}

/// One `cairn serve` child, killed when dropped.
struct Node {
    child: tokio::process::Child,
    base: String,
}

/// A port nothing listens on now.
fn free_port() -> Result<u16, Fail> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    Ok(l.local_addr().map_err(err)?.port())
}

/// Where the nodes keep their plans.
enum Store<'a> {
    Sqlite(&'a Path),
    Postgres(&'a str),
}

impl Node {
    /// `cairn serve --no-auth` on 127.0.0.1 as node `id`, waiting until it listens.
    async fn start(exe: &Path, store: &Store<'_>, id: &str, lease_ms: u64) -> Result<Node, Fail> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["serve", "--no-auth", "--bind", &format!("127.0.0.1:{port}")]);
        match store {
            Store::Sqlite(db) => {
                cmd.arg("--db").arg(db);
            }
            Store::Postgres(url) => {
                cmd.args(["--database-url", url, "--node-id", id]).args([
                    "--lease-ms",
                    &lease_ms.to_string(),
                    "--advertise",
                    &base,
                ]);
            }
        }
        let mut child = cmd
            .env("CAIRN_LOG", "error")
            .env_remove("CAIRN_DB")
            .env_remove("CAIRN_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("cannot start cairn serve: {e}")))?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("cairn listening on ") {
                    return true;
                }
            }
            false
        })
        .await;
        if listening != Ok(true) {
            return Err(err(format!("node {id} never said it listens")));
        }
        // The rest of its stdout is read and dropped, so that it never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Node { child, base })
    }

    /// CPU seconds the node used so far.
    fn cpu_s(&self) -> f64 {
        self.child.id().map_or(0.0, cpu_s)
    }

    /// `kill -9`, and reaps it.
    async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn client() -> Result<reqwest::Client, Fail> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(err)
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value), Fail> {
    let r = c.post(url).json(body).send().await.map_err(err)?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// Runs `f(k)` for k in 0..n, `width` at a time.
async fn each<F, Fut>(n: usize, width: usize, f: F) -> Result<(), Fail>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Fail>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut set: tokio::task::JoinSet<Result<(), Fail>> = tokio::task::JoinSet::new();
    for _ in 0..width.min(n).max(1) {
        let (next, f) = (next.clone(), f.clone());
        set.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    return Ok(());
                }
                f(k).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(err)??;
    }
    Ok(())
}

fn echo_plan(id: &str, steps: usize) -> Value {
    json!({"plan_id": id, "query": "bench", "max_parallel": 8,
           "steps": (0..steps).map(|j| json!({"step_id": format!("s{j}"), "action": "bench",
                                              "agent_type": "builtin.echo", "params": {"n": j}}))
                              .collect::<Vec<_>>()})
}

/// A chain of `steps` sleeping steps of `ms` each: a plan that stays busy.
fn busy_plan(id: &str, steps: usize, ms: u64) -> Value {
    json!({"plan_id": id, "query": "bench",
           "steps": (0..steps).map(|j| {
               let mut s = json!({"step_id": format!("s{j}"), "action": "bench",
                                  "agent_type": "builtin.sleep", "params": {"ms": ms}});
               if j > 0 { s["depends_on"] = json!([format!("s{}", j - 1)]); }
               s
           }).collect::<Vec<_>>()})
}

/// Follows `GET /v1/events/stream` of `base` after global id `after` (live events only when
/// `None`), calling `on` with each event (its data) as it arrives, until `on` answers `true`.
/// Answers once the stream is open.
async fn follow(
    c: &reqwest::Client,
    base: &str,
    after: Option<u64>,
    mut on: impl FnMut(Value) -> bool + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), Fail>>, Fail> {
    let mut req = c
        .get(format!("{base}/v1/events/stream"))
        .timeout(Duration::from_secs(24 * 3600));
    if let Some(after) = after {
        req = req.header("Last-Event-ID", after.to_string());
    }
    let mut resp = req.send().await.map_err(err)?;
    if resp.status().as_u16() != 200 {
        return Err(err(format!("event stream: {}", resp.status())));
    }
    Ok(tokio::spawn(async move {
        let mut buf = String::new();
        loop {
            let Some(chunk) = resp.chunk().await.map_err(err)? else {
                return Err(err("the event stream ended"));
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok());
                if let Some(event) = data {
                    if frame.lines().any(|l| l.starts_with("id:")) && on(event) {
                        return Ok(());
                    }
                }
            }
        }
    }))
}

/// The many-plans workload over HTTP on `nodes` nodes of `store`.
async fn plans(exe: &Path, store: Store<'_>, nodes: usize, s: &Sizes) -> Result<Value, Fail> {
    let mut running = Vec::new();
    for i in 0..nodes {
        running.push(Node::start(exe, &store, &format!("bench-{i}"), s.lease_ms).await?);
    }
    let bases: Arc<Vec<String>> = Arc::new(running.iter().map(|n| n.base.clone()).collect());
    let c = client()?;
    let steps = s.steps;
    // What every process spends, from the first request to the last plan's end.
    let pg = match &store {
        Store::Postgres(url) => Some(PgCost::start(url).await?),
        Store::Sqlite(_) => None,
    };
    let cpu_nodes = |running: &[Node]| running.iter().map(Node::cpu_s).sum::<f64>();
    let nodes_cpu0 = cpu_nodes(&running);
    let client_cpu0 = cpu_s(std::process::id());
    let t = Instant::now();
    {
        let (c, bases) = (c.clone(), bases.clone());
        each(s.plans, 64, move |k| {
            let (c, bases) = (c.clone(), bases.clone());
            async move {
                let base = &bases[k % bases.len()];
                let (st, v) = post(
                    &c,
                    &format!("{base}/v1/plans"),
                    &echo_plan(&format!("p{k}"), steps),
                )
                .await?;
                if st != 201 {
                    return Err(err(format!("register p{k}: {st} {v}")));
                }
                Ok(())
            }
        })
        .await?;
    }
    let register_s = t.elapsed().as_secs_f64();
    // Every plan's end: as node 0's all-plans stream carries it (live events only), or as the
    // bench's own PostgreSQL connection counts ended plans (which costs the nodes nothing).
    let by_database = s.observe_database && pg.is_some();
    let want = s.plans;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let stream = if by_database {
        None
    } else {
        let mut done_tx = Some(done_tx);
        let mut ended: HashSet<String> = HashSet::new();
        Some(
            follow(&c, &bases[0], None, move |e| {
                let kind = e["type"].as_str().unwrap_or("");
                if ["plan_completed", "plan_failed"].contains(&kind) {
                    ended.insert(e["plan_id"].as_str().unwrap_or("").to_owned());
                    if ended.len() == want {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Instant::now());
                        }
                        return true;
                    }
                }
                false
            })
            .await?,
        )
    };
    let t = Instant::now();
    let mut starts = {
        let (c, bases, n) = (c.clone(), bases.clone(), s.plans);
        tokio::spawn(async move {
            each(n, 64, move |k| {
                let (c, bases) = (c.clone(), bases.clone());
                async move {
                    let base = &bases[k % bases.len()];
                    let (st, v) =
                        post(&c, &format!("{base}/v1/plans/p{k}/start"), &json!({})).await?;
                    if st != 200 {
                        return Err(err(format!("start p{k}: {st} {v}")));
                    }
                    Ok(())
                }
            })
            .await?;
            Ok::<f64, Fail>(t.elapsed().as_secs_f64())
        })
    };
    let limit = Duration::from_secs(1800);
    let mut polls = 0i64;
    let mut start_s = None;
    let finished = match (&stream, &pg) {
        (None, Some(pg)) => loop {
            // The poller's backend is the one `PgCost` leaves out of the CPU figures.
            let ended: i64 = pg
                .db
                .query_one(
                    "SELECT count(*) FROM plans WHERE state IN ('completed', 'failed', 'cancelled')",
                    &[],
                )
                .await
                .map_err(err)?
                .get(0);
            polls += 1;
            if ended as usize >= want {
                break Instant::now();
            }
            if t.elapsed() > limit {
                return Err(err("the plans did not all end within 30 minutes"));
            }
            if start_s.is_none() && starts.is_finished() {
                // A start that failed: its error, rather than a wait for plans that never run.
                start_s = Some((&mut starts).await.map_err(err)??);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
        _ => tokio::time::timeout(limit, done_rx)
            .await
            .map_err(|_| err("the plans did not all end within 30 minutes"))?
            .map_err(|_| match stream.as_ref().is_some_and(|s| s.is_finished()) {
                true => err("the event stream ended before every plan did"),
                false => err("the stream reader stopped"),
            })?,
    };
    let start_s = match start_s {
        Some(s) => s,
        None => starts.await.map_err(err)??,
    };
    let wall = finished.duration_since(t).as_secs_f64();
    let nodes_cpu = cpu_nodes(&running) - nodes_cpu0;
    let client_cpu = cpu_s(std::process::id()) - client_cpu0;
    let pg_cpu = match &pg {
        Some(pg) => pg.cpu_s().await?,
        None => 0.0,
    };
    if let Some(stream) = stream {
        stream.abort();
    }
    for mut n in running {
        n.kill9().await;
    }
    let total = s.plans * s.steps;
    let per_step = |cpu: f64| round(cpu * 1e6 / total as f64, 1);
    let mut line = json!({
        "workload": "cluster_plans", "nodes": nodes, "plans": s.plans, "steps": total,
        "wall_s": round(wall, 3), "steps_per_sec": round(total as f64 / wall, 0),
        "peak_rss_mb": peak_rss(),
        "register_s": round(register_s, 3), "start_requests_s": round(start_s, 3),
        "observe": if by_database { "database" } else { "stream" },
        // CPU from the first register request to the last plan's end, per step: the nodes,
        // the database's backends, the load generator (this process), and their sum.
        "cpu_us_per_step": {
            "nodes": per_step(nodes_cpu), "postgres": per_step(pg_cpu),
            "client": per_step(client_cpu), "all": per_step(nodes_cpu + pg_cpu + client_cpu),
        },
    });
    if let Some(pg) = pg {
        let ([xacts, returned, fetched, written], scans) = pg.finish().await?;
        // The bench's own polls (one transaction each) are not the nodes' work; the rows they
        // read are counted in, see `observer_polls`.
        let xacts = xacts - polls;
        let per = |n: i64| round(n as f64 / total as f64, 3);
        if by_database {
            line["observer_polls"] = json!(polls);
        }
        line["postgres_per_step"] = json!({
            "transactions": per(xacts), "rows_returned": per(returned),
            "rows_fetched": per(fetched), "rows_written": per(written),
            "seq_scans": scans.iter().filter(|(_, [n, _])| *n > 0)
                .map(|(t, [n, _])| (t.clone(), json!(per(*n))))
                .collect::<serde_json::Map<_, _>>(),
            "index_scans": scans.iter().filter(|(_, [_, n])| *n > 0)
                .map(|(t, [_, n])| (t.clone(), json!(per(*n))))
                .collect::<serde_json::Map<_, _>>(),
        });
    }
    Ok(line)
}

/// Pause, intervention and resume, each timed alone, for plans node 0 drives: sent to node 1
/// (another node) for half of them and to node 0 (the owner) for the other half.
async fn control(exe: &Path, url: &str, s: &Sizes) -> Result<Vec<Value>, Fail> {
    let mut running = Vec::new();
    for i in 0..2 {
        running.push(
            Node::start(
                exe,
                &Store::Postgres(url),
                &format!("bench-{i}"),
                s.lease_ms,
            )
            .await?,
        );
    }
    let (owner, other) = (running[0].base.clone(), running[1].base.clone());
    let c = client()?;
    let n = s.requests.clamp(2, 200);
    {
        let (c, owner) = (c.clone(), owner.clone());
        each(n, 32, move |k| {
            let (c, owner) = (c.clone(), owner.clone());
            async move {
                let id = format!("busy{k}");
                let (st, v) =
                    post(&c, &format!("{owner}/v1/plans"), &busy_plan(&id, 50, 200)).await?;
                if st != 201 {
                    return Err(err(format!("register {id}: {st} {v}")));
                }
                let (st, v) = post(&c, &format!("{owner}/v1/plans/{id}/start"), &json!({})).await?;
                if st != 200 {
                    return Err(err(format!("start {id}: {st} {v}")));
                }
                Ok(())
            }
        })
        .await?;
    }
    let mut times: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for k in 0..n {
        let (via, base) = if k % 2 == 0 {
            ("other_node", &other)
        } else {
            ("owner", &owner)
        };
        let id = format!("busy{k}");
        let requests = [
            ("pause", format!("{base}/v1/plans/{id}/pause"), json!({})),
            (
                "intervention",
                format!("{base}/v1/plans/{id}/interventions"),
                json!({"type": "add_step", "step": {"step_id": "extra", "action": "bench", "agent_type": "builtin.echo"}}),
            ),
            ("resume", format!("{base}/v1/plans/{id}/resume"), json!({})),
        ];
        for (what, url, body) in requests {
            let t = Instant::now();
            let (st, v) = post(&c, &url, &body).await?;
            times.entry((what, via)).or_default().push(ms(t));
            if !(200..300).contains(&st) {
                return Err(err(format!("{what} {id} via {via}: {st} {v}")));
            }
        }
    }
    for mut node in running {
        node.kill9().await;
    }
    let mut out = Vec::new();
    for what in ["pause", "intervention", "resume"] {
        for via in ["other_node", "owner"] {
            let mut v = times.remove(&(what, via)).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            out.push(json!({
                "workload": format!("cluster_control_{what}"), "via": via, "nodes": 2,
                "steps": 0, "wall_s": round(v.iter().sum::<f64>() / 1e3, 3), "steps_per_sec": 0,
                "peak_rss_mb": peak_rss(),
                "requests": v.len(), "running_plans": n,
                "p50_ms": round(percentile(&v, 0.5), 3), "p99_ms": round(percentile(&v, 0.99), 3),
            }));
        }
    }
    Ok(out)
}

/// `kill -9` of the node driving 100 busy plans, among `nodes`.
async fn failover(exe: &Path, url: &str, s: &Sizes) -> Result<Value, Fail> {
    let mut running = Vec::new();
    for i in 0..s.nodes {
        running.push(
            Node::start(
                exe,
                &Store::Postgres(url),
                &format!("bench-{i}"),
                s.lease_ms,
            )
            .await?,
        );
    }
    let victim = running[0].base.clone();
    let c = client()?;
    let plans = 100usize;
    // Long enough to outlive two lease periods with time to spare.
    let steps = (4 * s.lease_ms / 200 + 50) as usize;
    {
        let (c, victim) = (c.clone(), victim.clone());
        each(plans, 32, move |k| {
            let (c, victim) = (c.clone(), victim.clone());
            async move {
                let id = format!("f{k}");
                let (st, v) = post(
                    &c,
                    &format!("{victim}/v1/plans"),
                    &busy_plan(&id, steps, 200),
                )
                .await?;
                if st != 201 {
                    return Err(err(format!("register {id}: {st} {v}")));
                }
                let (st, v) =
                    post(&c, &format!("{victim}/v1/plans/{id}/start"), &json!({})).await?;
                if st != 200 {
                    return Err(err(format!("start {id}: {st} {v}")));
                }
                Ok(())
            }
        })
        .await?;
    }
    let db = pg_connect(url).await?;
    let owned_by = |node: String| {
        let db = &db;
        async move {
            db.query(
                "SELECT p.plan_id FROM leases l JOIN plans p ON p.pk = l.plan_pk \
                 WHERE l.node = $1 AND NOT l.released",
                &[&node],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<HashSet<_>>()
            })
            .map_err(err)
        }
    };
    // Held, not necessarily unexpired at this instant: on a loaded machine one of 100 renewals
    // is often a little late, and the lease is still node 0's until another node takes it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while owned_by("bench-0".into()).await?.len() < plans {
        if Instant::now() > deadline {
            return Err(err("node 0 never held the lease of every plan"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_id: i64 = db
        .query_one("SELECT last_id FROM cairn_counter", &[])
        .await
        .map_err(err)?
        .get(0);
    // The first event of each plan that a survivor's stream carries after the kill.
    let first_event: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let stream = {
        let first_event = first_event.clone();
        follow(&c, &running[1].base, Some(last_id as u64), move |e| {
            let mut m = first_event.lock().unwrap();
            let id = e["plan_id"].as_str().unwrap_or("").to_owned();
            m.entry(id).or_insert_with(Instant::now);
            m.len() >= plans
        })
        .await?
    };
    let killed = Instant::now();
    running[0].kill9().await;
    let mut moved: HashMap<String, f64> = HashMap::new();
    let limit = Duration::from_millis(4 * s.lease_ms) + Duration::from_secs(60);
    while moved.len() < plans {
        if killed.elapsed() > limit {
            return Err(err(format!(
                "only {} of {plans} plans were taken over within {limit:?}",
                moved.len()
            )));
        }
        let now_ms = killed.elapsed().as_secs_f64() * 1e3;
        for i in 1..s.nodes {
            for id in owned_by(format!("bench-{i}")).await? {
                moved.entry(id).or_insert(now_ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + limit;
    while first_event.lock().unwrap().len() < plans && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.abort();
    let mut taken: Vec<f64> = moved.into_values().collect();
    taken.sort_by(f64::total_cmp);
    let mut first: Vec<f64> = first_event
        .lock()
        .unwrap()
        .values()
        .map(|t| t.duration_since(killed).as_secs_f64() * 1e3)
        .collect();
    first.sort_by(f64::total_cmp);
    for mut n in running {
        n.kill9().await;
    }
    Ok(json!({
        "workload": "failover", "nodes": s.nodes, "plans": plans, "lease_ms": s.lease_ms,
        "steps": 0, "wall_s": round(percentile(&taken, 1.0) / 1e3, 3), "steps_per_sec": 0,
        "peak_rss_mb": peak_rss(),
        "takeover_ms_p50": round(percentile(&taken, 0.5), 0),
        "takeover_ms_max": round(percentile(&taken, 1.0), 0),
        "first_event_plans": first.len(),
        "first_event_ms_p50": round(percentile(&first, 0.5), 0),
        "first_event_ms_max": round(percentile(&first, 1.0), 0),
    }))
}

/// Every cluster measurement, each on a fresh database; prints each line as it is measured.
/// With `plans_only`, the many-plans workload on PostgreSQL alone.
pub async fn run(exe: &Path, url: &str, s: &Sizes, plans_only: bool) -> Result<(), Fail> {
    if !plans_only {
        // The same workload on one SQLite node, for comparison.
        let dir = tempfile::Builder::new()
            .prefix(".cairn-bench-")
            .tempdir_in(".")
            .map_err(err)?;
        let db = dir.path().join("cluster.db");
        let mut line = plans(exe, Store::Sqlite(&db), 1, s).await?;
        line["store"] = json!("sqlite");
        println!("{line}");
    }
    for nodes in [1, s.nodes] {
        let fresh = FreshDb::create(url, &format!("plans{nodes}")).await?;
        let r = plans(exe, Store::Postgres(&fresh.url), nodes, s).await;
        fresh.drop_now().await;
        let mut line = r?;
        line["store"] = json!("postgres");
        println!("{line}");
    }
    if plans_only {
        return Ok(());
    }
    let fresh = FreshDb::create(url, "control").await?;
    let r = control(exe, &fresh.url, s).await;
    fresh.drop_now().await;
    for mut line in r? {
        line["store"] = json!("postgres");
        println!("{line}");
    }
    let fresh = FreshDb::create(url, "failover").await?;
    let r = failover(exe, &fresh.url, s).await;
    fresh.drop_now().await;
    let mut line = r?;
    line["store"] = json!("postgres");
    println!("{line}");
    Ok(())
}

/// A process's resident memory now, in MB (`VmRSS`, or `VmHWM` for its peak).
fn rss_of(pid: Option<u32>, field: &str) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| round(kb / 1024.0, 1))
}

/// The `idle` workload: a `cairn serve` child on the store of `target`; its RSS fresh (after
/// one request), then after `plans` three-step plans were registered over HTTP (64 at a time)
/// and left idle until the server unloaded them. The server's memory should follow live work,
/// not how many plans it has seen.
pub async fn idle(plans: usize, target: &crate::bench::Target) -> Result<Vec<Value>, Fail> {
    let exe = std::env::current_exe().map_err(err)?;
    let store = match target {
        crate::bench::Target::Sqlite(db) => Store::Sqlite(db),
        crate::bench::Target::Postgres(url) => Store::Postgres(url),
    };
    let node = Node::start(&exe, &store, "bench-idle", 10_000).await?;
    let pid = node.child.id();
    let c = client()?;
    let base = node.base.clone();
    let r = c
        .get(format!("{base}/v1/plans?limit=1"))
        .send()
        .await
        .map_err(err)?;
    if !r.status().is_success() {
        return Err(err(format!("GET /v1/plans: {}", r.status())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = rss_of(pid, "VmRSS:");
    let t = Instant::now();
    {
        let (c, base) = (c.clone(), base.clone());
        each(plans, 64, move |k| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                let (st, v) = post(
                    &c,
                    &format!("{base}/v1/plans"),
                    &echo_plan(&format!("idle-{k}"), 3),
                )
                .await?;
                if st != 201 {
                    return Err(err(format!("register idle-{k}: {st} {v}")));
                }
                Ok(())
            }
        })
        .await?;
    }
    let register_s = t.elapsed().as_secs_f64();
    let peak = rss_of(pid, "VmHWM:");
    // The server unloads a quiet plan after 2 s (`idle_unload_ms`): wait that out, then read
    // its memory until it stops falling (bounded: 20 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = rss_of(pid, "VmRSS:");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_of(pid, "VmRSS:");
        if now >= after {
            after = now;
            break;
        }
        after = now;
    }
    // Still serving: a read of one of the plans.
    let r = c
        .get(format!("{base}/v1/plans/idle-0"))
        .send()
        .await
        .map_err(err)?;
    if !r.status().is_success() {
        return Err(err(format!("GET /v1/plans/idle-0: {}", r.status())));
    }
    let mut node = node;
    node.kill9().await;
    Ok(vec![json!({
        "workload": "idle", "plans": plans, "steps": 0, "wall_s": round(register_s, 3),
        "steps_per_sec": 0, "peak_rss_mb": crate::bench::rss_mb("VmHWM:"),
        "register_per_sec": round(plans as f64 / register_s, 0),
        "server_rss_fresh_mb": fresh, "server_rss_after_mb": after,
        "server_rss_growth_mb": round(after - fresh, 1), "server_peak_rss_mb": peak,
    })])
}
