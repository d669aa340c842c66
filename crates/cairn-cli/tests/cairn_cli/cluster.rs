//! Several `cairn serve` nodes on one PostgreSQL database, end to end: the real binary, a
//! database of the test's own (`CREATE DATABASE cairn_e2e_…` on the server named by
//! `CAIRN_TEST_DATABASE_URL`, dropped at the end; every test skips with a message when the
//! variable is unset), nodes on loopback ports of their own, killed with `kill -9` and started
//! again on the same port.
//!
//! The agents are the test's own: an HTTP agent ([`Agent`]) served by the test process counts
//! every run by its idempotency key and answers the count, so a completed step run again is
//! seen (its recorded output says `n` runs while the agent counted more); it also receives the
//! webhooks and counts each delivery by event id. Steps that must stay running use
//! `builtin.latch`, released by a file in the directory every node of a cluster shares.
//!
//! Every wait is a bounded poll; nothing sleeps to prove that something did not happen. The
//! only sleeps choose random moments at which to kill a node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{cairn_command, Api, Auth, Resp, Run, Server};

/// The PostgreSQL server the tests may create databases on.
const DB_VAR: &str = "CAIRN_TEST_DATABASE_URL";

/// A bound on every wait for a cluster to get somewhere (plans finishing after kills included):
/// it only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(180);

// ---- the database ----------------------------------------------------------------------------

/// A fresh database on the test server, dropped (connections and all) when this is.
struct TestDb {
    admin: String,
    name: String,
    /// The URL of the database itself.
    url: String,
}

/// A name no other test (of this process or another) uses at the same time.
fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
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

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

impl TestDb {
    /// `None` (after saying so) when no test server is configured.
    async fn create() -> Option<TestDb> {
        let admin = match std::env::var(DB_VAR) {
            Ok(u) if !u.is_empty() => u,
            _ => {
                eprintln!("skipped: {DB_VAR} is unset (a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/test)");
                return None;
            }
        };
        let name = format!("cairn_e2e_{}", unique());
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_database(&admin, &name);
        Some(TestDb { admin, name, url })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Dropped inside the test's runtime, which cannot be blocked on: a runtime of its own,
        // on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    if let Err(e) = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("could not drop the test database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

// ---- the test's agent and webhook receiver ---------------------------------------------------

/// What the agent and the webhook receiver saw.
#[derive(Default)]
struct Seen {
    /// Runs of each idempotency key.
    runs: HashMap<String, u32>,
    /// Deliveries of each event (by its global id, `X-Cairn-Delivery`).
    hooks: BTreeMap<u64, u32>,
}

/// An HTTP agent (`POST /run`) and webhook receiver (`POST /hook`) on 127.0.0.1, served by the
/// test process for as long as the test's runtime runs.
#[derive(Clone)]
struct Agent {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

/// Counts the run and answers `{"key", "n"}` (the runs of this key so far, this one included),
/// after `params.ms` milliseconds if given.
async fn run_step(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    Json(task): Json<Value>,
) -> Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let n = {
        let mut s = seen.lock().unwrap();
        let c = s.runs.entry(key.clone()).or_default();
        *c += 1;
        *c
    };
    if let Some(ms) = task["params"]["ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Json(json!({"output": {"key": key, "n": n}}))
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap) -> &'static str {
    let id = headers
        .get("x-cairn-delivery")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("a webhook delivery names its event in X-Cairn-Delivery");
    *seen.lock().unwrap().hooks.entry(id).or_default() += 1;
    "ok"
}

impl Agent {
    async fn start() -> Agent {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/run", post(run_step))
            .route("/hook", post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Agent { base, seen }
    }

    fn runs(&self, key: &str) -> u32 {
        self.seen
            .lock()
            .unwrap()
            .runs
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn hooks(&self) -> BTreeMap<u64, u32> {
        self.seen.lock().unwrap().hooks.clone()
    }
}

/// The `cairn.toml` of every node: the `counter` agent is [`Agent`]; with `webhooks`, every
/// event is POSTed to it as well.
fn config_text(agent: &Agent, webhooks: bool) -> String {
    let mut t = format!(
        "[agents.counter]\nexecutor = \"http\"\nurl = \"{}/run\"\ntimeout_ms = 60000\n",
        agent.base
    );
    if webhooks {
        t.push_str(&format!("\n[[webhooks]]\nurl = \"{}/hook\"\n", agent.base));
    }
    t
}

// ---- the cluster -----------------------------------------------------------------------------

/// `n` nodes of `cairn serve --database-url` on one fresh database, node `i` named `n{i}` and
/// listening on a port of its own that it keeps across restarts.
struct Cluster {
    /// `None` while killed.
    nodes: Vec<Option<Server>>,
    ports: Vec<u16>,
    dir: TempDir,
    config: PathBuf,
    lease_ms: u64,
    /// An admin token (made with `cairn token create --database-url` before any node started).
    admin: String,
    agent: Agent,
    db: TestDb,
}

/// Ports nothing listens on now (all held at once while chosen, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Cluster {
    /// `None` when there is no test database server. Leases of `lease_ms`; webhooks to the
    /// test's receiver when `webhooks`.
    async fn start(n: usize, lease_ms: u64, webhooks: bool) -> Option<Cluster> {
        let db = TestDb::create().await?;
        let agent = Agent::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("latches")).unwrap();
        let config = dir.path().join("cairn.toml");
        std::fs::write(&config, config_text(&agent, webhooks)).unwrap();
        let args = [
            "token",
            "create",
            "--user",
            "tester",
            "--role",
            "admin",
            "--database-url",
            &db.url,
        ];
        let admin = Run::of(&mut cairn_command(&args), &args[..6])
            .expect(0, "cairn token create --database-url")
            .stdout
            .trim()
            .to_owned();
        let mut c = Cluster {
            nodes: (0..n).map(|_| None).collect(),
            ports: free_ports(n),
            dir,
            config,
            lease_ms,
            admin,
            agent,
            db,
        };
        for i in 0..n {
            c.up(i);
        }
        Some(c)
    }

    fn node_id(i: usize) -> String {
        format!("n{i}")
    }

    /// Starts node `i` (again), waiting until it listens. Right after a `kill -9` the database
    /// may not have noticed yet that the killed process's session (which held the node id) is
    /// gone, and the new process is refused the id: it is started again, a bounded number of
    /// times.
    fn up(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running already");
        let port = self.ports[i];
        let lease = self.lease_ms.to_string();
        let mut tries = 0;
        let server = loop {
            let started = Server::options_pg(&self.db.url, self.dir.path())
                .bind(&format!("127.0.0.1:{port}"))
                .args(&[
                    "--node-id",
                    &Cluster::node_id(i),
                    "--lease-ms",
                    &lease,
                    "--advertise",
                    &format!("http://127.0.0.1:{port}"),
                    "--config",
                    self.config.to_str().unwrap(),
                ])
                .try_start();
            match started {
                Ok(server) => break server,
                Err(e) if tries < 50 => {
                    eprintln!("node {i} did not start (trying again): {e}");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("node {i} never started: {e}"),
            }
        };
        assert!(
            server.admin.is_none(),
            "a token existed: no admin token made"
        );
        self.nodes[i] = Some(server);
    }

    /// `kill -9` of node `i`.
    fn kill9(&mut self, i: usize) {
        let mut server = self.nodes[i].take().expect("the node runs");
        server.kill9();
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    fn api(&self, i: usize) -> Api {
        Api::new(&format!("http://127.0.0.1:{}", self.ports[i]))
    }

    /// The node holding a live lease on `plan`, if any, as `GET /v1/plans/{id}` does not say:
    /// read from the database.
    async fn owner(&self, plan: &str) -> Option<usize> {
        let client = connect(&self.db.url).await;
        let row = client
            .query_opt(
                "SELECT l.node FROM leases l JOIN plans p ON p.pk = l.plan_pk \
                 WHERE p.plan_id = $1 AND NOT l.released AND l.expires_at > cairn_now()",
                &[&plan],
            )
            .await
            .unwrap_or_else(|e| panic!("read the lease of {plan}: {e}"));
        let owner: String = row?.get(0);
        (0..self.nodes.len()).find(|&i| Cluster::node_id(i) == owner)
    }

    /// A live node that does not own `plan` (the `k`-th of them, round robin), and whether the
    /// plan had an owner to avoid.
    async fn not_owner(&self, plan: &str, k: usize) -> (usize, bool) {
        let owner = self.owner(plan).await;
        let others: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| Some(i) != owner)
            .collect();
        assert!(!others.is_empty(), "no live node but the owner of {plan}");
        (others[k % others.len()], owner.is_some())
    }
}

/// Is the plan in a final state?
fn ended(p: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&p["state"].as_str().unwrap_or(""))
}

fn step<'a>(p: &'a Value, id: &str) -> &'a Value {
    p["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == id))
        .unwrap_or(&Value::Null)
}

/// Every event of `plan` has seq 1, 2, 3, … with no gap and no repeat.
fn assert_no_seq_gap(plan: &str, events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "plan {plan}: seqs with a gap or a repeat");
}

/// No completed step of the plan ran after it completed: the output it recorded (the agent's
/// count of runs of its key when it answered) is every run the agent saw of that key.
fn assert_no_completed_step_ran_twice(agent: &Agent, plan: &Value) {
    for s in plan["steps"].as_array().unwrap() {
        if s["status"] != "completed" {
            continue;
        }
        let Some(key) = s["output"]["key"].as_str() else {
            continue;
        };
        let recorded = s["output"]["n"].as_u64().unwrap();
        assert_eq!(
            u64::from(agent.runs(key)),
            recorded,
            "plan {}: step {} ({key}) ran again after it completed",
            plan["plan_id"],
            s["step_id"]
        );
    }
}

// ---- every request kind, sent to a node that does not own the plan -------------------------

/// Where a [`Script`] sends each request.
enum Target<'a> {
    /// One server (a single SQLite node: what the owner answers).
    One(Api),
    /// A cluster: each request about a plan to a node that does not own it.
    Cluster(&'a Cluster),
}

/// One run of the same sequence of requests, recording what each one answered in a form that
/// two runs can be compared in (statuses, error codes, states; never ids or times).
struct Script<'a> {
    target: Target<'a>,
    token: String,
    latches: PathBuf,
    agent: Agent,
    transcript: Vec<(String, u16, Value)>,
    /// Requests that went to a node other than the plan's owner while it had one.
    routed_past_owner: usize,
    turn: usize,
}

/// The fields of an answer that do not depend on which node, when or with which ids.
fn summary(v: &Value) -> Value {
    const KEEP: &[&str] = &[
        "state",
        "pause_reason",
        "version",
        "plan_version",
        "status",
        "type",
        "code",
        "error",
        "label",
        "trigger",
        "plan_id",
        "outcome",
        "attempt",
        "step_id",
        "items",
        "steps",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| KEEP.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), summary(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(summary).collect()),
        other => other.clone(),
    }
}

impl Script<'_> {
    async fn api(&mut self, plan: &str) -> Api {
        self.turn += 1;
        match &self.target {
            Target::One(api) => api.clone(),
            Target::Cluster(c) => {
                let (i, had_owner) = c.not_owner(plan, self.turn).await;
                if had_owner {
                    self.routed_past_owner += 1;
                }
                c.api(i)
            }
        }
    }

    /// Sends the request to the node [`Script::api`] picks and records the answer as `what`.
    async fn call(
        &mut self,
        what: &str,
        method: Method,
        plan: &str,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let api = self.api(plan).await;
        let r = api.call(method, path, Some(&self.token), body).await;
        assert!(
            r.status < 500,
            "{what}: {} answered {}: {}",
            api.base,
            r.status,
            r.text
        );
        assert_ne!(r.code(), "not_owner", "{what}: a user saw not_owner");
        eprintln!("{what}: {} {}", r.status, r.text);
        self.transcript
            .push((what.to_owned(), r.status, summary(&r.body)));
        r
    }

    async fn post(&mut self, what: &str, plan: &str, path: &str, body: Value) -> Resp {
        self.call(what, Method::POST, plan, path, Some(body)).await
    }

    async fn get(&mut self, what: &str, plan: &str, path: &str) -> Resp {
        self.call(what, Method::GET, plan, path, None).await
    }

    async fn intervene(&mut self, what: &str, plan: &str, body: Value) -> Resp {
        self.post(what, plan, &format!("/v1/plans/{plan}/interventions"), body)
            .await
    }

    /// Polls the plan (through any node) until `pred` holds; bounded.
    async fn wait(&mut self, plan: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let api = self.api(plan).await;
            let p = Auth(&api, Some(&self.token)).plan(plan).await;
            if pred(&p) {
                return p;
            }
            assert!(Instant::now() < deadline, "plan {plan}: never {what}: {p}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The SSE frames of `path` (id and event type), read until one with id `last` (bounded).
    async fn stream(
        &mut self,
        what: &str,
        plan: &str,
        path: &str,
        last_event_id: Option<u64>,
        last: u64,
    ) -> Vec<(u64, String)> {
        let api = self.api(plan).await;
        let mut req = api
            .http
            .get(format!("{}{path}", api.base))
            .bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let read = async {
            let mut resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{what}");
            let mut frames = Vec::new();
            let mut buf = String::new();
            while frames.last().is_none_or(|(id, _)| *id < last) {
                let Some(chunk) = resp.chunk().await.unwrap() else {
                    break;
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    let field = |name: &str| {
                        frame
                            .lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    };
                    if let (Some(id), Some(kind)) = (field("id:"), field("event:")) {
                        frames.push((id.parse::<u64>().unwrap(), kind));
                    }
                }
            }
            frames
        };
        let frames = tokio::time::timeout(PATIENCE, read)
            .await
            .unwrap_or_else(|_| panic!("{what}: the stream never reached id {last}"));
        self.transcript.push((
            what.to_owned(),
            200,
            json!(frames.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()),
        ));
        frames
    }

    fn release(&self, name: &str) {
        std::fs::write(self.latches.join(name), b"").unwrap();
    }

    /// The sequence: every control request and intervention kind, a refused one of each
    /// refusal, checkpoints, restore, fork, a review rejected then approved, event pages and
    /// streams resumed by id. `id` names the plan (each run its own, and its own latch).
    async fn run(&mut self, id: &str) {
        let latch = format!("{id}-a");
        let p = |rest: &str| format!("/v1/plans/{id}{rest}");
        self.post(
            "register",
            id,
            "/v1/plans",
            json!({"plan_id": id, "query": "every request kind", "steps": [
                {"step_id": "a", "action": "hold", "agent_type": "builtin.latch", "params": {"name": latch}},
                {"step_id": "g", "action": "write", "agent_type": "counter", "depends_on": ["a"],
                 "quality_gate": {"always_review": true}},
                {"step_id": "b", "action": "echo", "agent_type": "builtin.echo", "depends_on": ["g"]},
                {"step_id": "c", "action": "echo", "agent_type": "builtin.echo", "depends_on": ["b"]}
            ]}),
        )
        .await
        .expect(201, "register");
        self.post("start", id, &p("/start"), json!({"reason": "go"}))
            .await
            .expect(200, "start");
        self.wait(id, "running a", |p| p["running_steps"] == json!(["a"]))
            .await;
        self.post("pause", id, &p("/pause"), json!({"reason": "look"}))
            .await
            .expect(200, "pause");
        self.post("pause again", id, &p("/pause"), json!({}))
            .await
            .expect(409, "pause paused");

        // Each intervention kind, applied, while a is held running and the plan paused.
        let echo =
            |sid: &str| json!({"step_id": sid, "action": "echo", "agent_type": "builtin.echo"});
        self.intervene(
            "add_step x",
            id,
            json!({"type": "add_step", "step": echo("x")}),
        )
        .await
        .expect(201, "add_step");
        self.intervene(
            "modify_step x",
            id,
            json!({"type": "modify_step", "step_id": "x", "patch": {"params": {"v": 2}}}),
        )
        .await
        .expect(201, "modify_step");
        self.intervene(
            "add_step y",
            id,
            json!({"type": "add_step", "step": echo("y")}),
        )
        .await
        .expect(201, "add_step");
        self.intervene(
            "reorder_steps",
            id,
            json!({"type": "reorder_steps", "order": ["g", "b", "c", "y", "x"]}),
        )
        .await
        .expect(201, "reorder_steps");
        self.intervene(
            "remove_step y",
            id,
            json!({"type": "remove_step", "step_id": "y"}),
        )
        .await
        .expect(201, "remove_step");
        self.intervene(
            "complete_step x",
            id,
            json!({"type": "complete_step", "step_id": "x", "output": {"by": "hand"}}),
        )
        .await
        .expect(201, "complete_step");
        self.intervene(
            "skip_step c",
            id,
            json!({"type": "skip_step", "step_id": "c"}),
        )
        .await
        .expect(201, "skip_step");
        // Refused: the owner's refusals, kinds intact.
        self.intervene(
            "retry_step a (running)",
            id,
            json!({"type": "retry_step", "step_id": "a"}),
        )
        .await;
        self.intervene(
            "rerun_from a (running)",
            id,
            json!({"type": "rerun_from", "step_id": "a"}),
        )
        .await
        .expect(409, "rerun_from a running step");
        self.intervene(
            "stale version",
            id,
            json!({"type": "skip_step", "step_id": "b", "expected_version": 1}),
        )
        .await
        .expect(409, "stale expected_version");
        self.intervene(
            "approve without review",
            id,
            json!({"type": "approve_step", "step_id": "g"}),
        )
        .await;
        self.intervene(
            "remove unknown",
            id,
            json!({"type": "remove_step", "step_id": "nope"}),
        )
        .await;
        self.intervene(
            "dry run",
            id,
            json!({"type": "add_step", "step": echo("z"), "dry_run": true}),
        )
        .await
        .expect(200, "dry run");
        self.get("interventions", id, &p("/interventions?limit=100"))
            .await
            .expect(200, "interventions");

        // A checkpoint, then the review: rejected with a retry, then approved.
        let cp = self
            .post(
                "checkpoint",
                id,
                &p("/checkpoints"),
                json!({"label": "mine"}),
            )
            .await
            .expect(201, "checkpoint")
            .body;
        let cid = cp["checkpoint_id"].as_str().unwrap().to_owned();
        self.get("get checkpoint", id, &p(&format!("/checkpoints/{cid}")))
            .await
            .expect(200, "get checkpoint");
        self.release(&latch);
        self.wait(id, "a completed", |p| step(p, "a")["status"] == "completed")
            .await;
        self.post("resume", id, &p("/resume"), json!({}))
            .await
            .expect(200, "resume");
        self.wait(id, "g awaiting review", |p| {
            p["state"] == "paused" && step(p, "g")["status"] == "awaiting_review"
        })
        .await;
        self.get(
            "open reviews",
            id,
            &format!("/v1/reviews?state=open&plan_id={id}"),
        )
        .await
        .expect(200, "reviews");
        self.intervene(
            "reject g, retry",
            id,
            json!({"type": "reject_step", "step_id": "g", "attempt": 1, "retry": true, "reason": "again"}),
        )
        .await
        .expect(201, "reject_step");
        self.wait(id, "g's second attempt awaiting review", |p| {
            p["state"] == "paused"
                && step(p, "g")["status"] == "awaiting_review"
                && step(p, "g")["run"] == 2
        })
        .await;
        self.intervene(
            "approve g",
            id,
            json!({"type": "approve_step", "step_id": "g", "attempt": 2}),
        )
        .await
        .expect(201, "approve_step");
        let done = self.wait(id, "completed", ended).await;
        assert_eq!(done["state"], "completed", "{done}");
        self.transcript.push(("final".into(), 200, summary(&done)));
        assert_no_completed_step_ran_twice(&self.agent, &done);
        self.get(
            "closed reviews",
            id,
            &format!("/v1/reviews?state=closed&plan_id={id}"),
        )
        .await
        .expect(200, "reviews");

        // Restore and fork from the checkpoint; cancel both.
        self.post(
            "restore",
            id,
            &p(&format!("/checkpoints/{cid}/restore")),
            json!({}),
        )
        .await
        .expect(200, "restore");
        let fork = format!("{id}_fork");
        self.post(
            "fork",
            id,
            &p(&format!("/checkpoints/{cid}/fork")),
            json!({"new_plan_id": fork}),
        )
        .await
        .expect(201, "fork");
        self.post(
            "fork again",
            id,
            &p(&format!("/checkpoints/{cid}/fork")),
            json!({"new_plan_id": fork}),
        )
        .await
        .expect(409, "fork onto an existing id");
        self.post(
            "cancel fork",
            &fork.clone(),
            &format!("/v1/plans/{fork}/cancel"),
            json!({}),
        )
        .await
        .expect(200, "cancel the fork");
        self.post("cancel", id, &p("/cancel"), json!({}))
            .await
            .expect(200, "cancel");
        self.post("start cancelled", id, &p("/start"), json!({}))
            .await
            .expect(409, "start a cancelled plan");

        // The log: pages, then the plan's stream resumed by seq and the global one by id.
        let api = self.api(id).await;
        let events = Auth(&api, Some(&self.token)).all_events(id).await;
        assert_no_seq_gap(id, &events);
        let last_seq = events.last().unwrap()["seq"].as_u64().unwrap();
        self.transcript.push((
            "events".into(),
            200,
            json!(events.iter().map(|e| e["type"].clone()).collect::<Vec<_>>()),
        ));
        let frames = self
            .stream(
                "plan stream from seq 3",
                id,
                &p("/events/stream"),
                Some(3),
                last_seq,
            )
            .await;
        let seqs: Vec<u64> = frames.iter().map(|f| f.0).collect();
        assert_eq!(
            seqs,
            (4..=last_seq).collect::<Vec<_>>(),
            "resumed after seq 3"
        );
        let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        let (first_id, last_id) = (ids[0], *ids.last().unwrap());
        let frames = self
            .stream(
                "global stream",
                id,
                "/v1/events/stream",
                Some(first_id - 1),
                last_id,
            )
            .await;
        let got: Vec<u64> = frames.iter().map(|f| f.0).collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "ids in order: {got:?}");
        let ours: BTreeSet<u64> = ids.iter().copied().collect();
        let seen: BTreeSet<u64> = got.iter().copied().filter(|i| ours.contains(i)).collect();
        assert_eq!(seen, ours, "the global stream carries every event of {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_sent_to_a_node_that_does_not_own_the_plan_is_answered_as_the_owner_would() {
    let Some(c) = Cluster::start(3, 2000, false).await else {
        return;
    };
    // What one node answers: a single SQLite server with the same agents.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, config_text(&c.agent, false)).unwrap();
    let single = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let mut one = Script {
        target: Target::One(Api::new(&single.base)),
        token: single.admin.clone().expect("an admin token"),
        latches: crate::common::latch_dir(&db),
        agent: c.agent.clone(),
        transcript: Vec::new(),
        routed_past_owner: 0,
        turn: 0,
    };
    one.run("k1").await;

    let mut many = Script {
        target: Target::Cluster(&c),
        token: c.admin.clone(),
        latches: c.dir.path().join("latches"),
        agent: c.agent.clone(),
        transcript: Vec::new(),
        routed_past_owner: 0,
        turn: 0,
    };
    many.run("k2").await;

    // The same answers, request by request (the plan ids aside).
    let rename = |t: Vec<(String, u16, Value)>, from: &str| -> Vec<(String, u16, String)> {
        t.into_iter()
            .map(|(w, s, v)| (w, s, v.to_string().replace(from, "K")))
            .collect()
    };
    let (want, got) = (rename(one.transcript, "k1"), rename(many.transcript, "k2"));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "the cluster answered {} otherwise than one node", w.0);
    }
    // Most of them went past an owner: the plan ran (or held a lease) for all but a few.
    assert!(
        many.routed_past_owner >= 20,
        "only {} requests went to a node other than a live owner",
        many.routed_past_owner
    );
}

// ---- under load, with nodes killed -----------------------------------------------------------

/// A small random generator (xorshift), seeded from the clock; the seed is printed so that a
/// failing run's moments can be told apart.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A chain of `steps` `counter` steps of `ms` each; with `reviewed`, the middle one waits for a
/// person's approval.
fn chain(id: &str, steps: usize, ms: u64, reviewed: bool) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|j| {
            let mut s = json!({"step_id": format!("s{j}"), "action": "work", "agent_type": "counter",
                               "params": {"ms": ms}});
            if j > 0 {
                s["depends_on"] = json!([format!("s{}", j - 1)]);
            }
            if reviewed && j == steps / 2 {
                s["quality_gate"] = json!({"always_review": true});
            }
            s
        })
        .collect();
    json!({"plan_id": id, "query": "load", "max_parallel": 2, "steps": steps})
}

/// Registers and starts each plan, plan `k` through node `k % live nodes`.
async fn start_all(c: &Cluster, plans: &[Value]) {
    let live = c.live();
    for (k, plan) in plans.iter().enumerate() {
        let api = c.api(live[k % live.len()]);
        let a = Auth(&api, Some(&c.admin));
        let id = plan["plan_id"].as_str().unwrap();
        a.register(plan.clone()).await;
        a.post_empty(&format!("/v1/plans/{id}/start"))
            .await
            .expect(200, "start");
    }
}

/// What the operators' side of a load test had acknowledged.
#[derive(Default)]
struct Acked {
    /// `(plan, step)` of each `add_step` answered 201.
    added: Vec<(String, String)>,
    /// `(plan, step, attempt)` of each approval answered 201.
    approved: Vec<(String, String, u64)>,
    /// Answers that were neither acknowledged nor refused (connection errors aside).
    bad: Vec<String>,
    /// Refusals (409), by their message's first words, and requests that got no answer (their
    /// node was killed).
    refused: BTreeMap<String, u32>,
    unanswered: u32,
}

impl Acked {
    /// Records an answer; `true` when it acknowledged the request.
    fn answer(&mut self, r: Result<Resp, reqwest::Error>, what: &str) -> bool {
        match r {
            Ok(r) if r.status == 201 => return true,
            Ok(r) if r.status == 409 => {
                let m = r.body["error"]["message"].as_str().unwrap_or("");
                let short = m.split_whitespace().skip(2).take(4).collect::<Vec<_>>();
                *self.refused.entry(short.join(" ")).or_default() += 1;
            }
            Ok(r) => self.bad.push(format!("{what}: {} {}", r.status, r.text)),
            Err(_) => self.unanswered += 1,
        }
        false
    }
}

/// `POST` of JSON, answered or not.
async fn try_post(
    api: &Api,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<Resp, reqwest::Error> {
    let bytes = serde_json::to_vec(body).unwrap();
    api.raw(
        Method::POST,
        path,
        Some(token),
        Some(("application/json", bytes)),
    )
    .await
}

/// Until `stop`: adds a step to a random running plan and approves every open review, each
/// request to a random port of `ports`. A request that gets no answer (its node was killed) is
/// not acknowledged and counts for nothing; any 5xx or `not_owner` is recorded as bad.
async fn operate(
    ports: Vec<u16>,
    token: String,
    ids: Vec<String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = Rng::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let port = ports[rng.below(ports.len() as u64) as usize];
        let api = Api::new(&format!("http://127.0.0.1:{port}"));
        let plan = &ids[rng.below(ids.len() as u64) as usize];
        k += 1;
        let extra = format!("extra{k}");
        let body = json!({"type": "add_step", "step": {"step_id": extra, "action": "work",
                          "agent_type": "counter", "params": {"ms": 20}}});
        let path = format!("/v1/plans/{plan}/interventions");
        let r = try_post(&api, &token, &path, &body).await;
        {
            let mut a = acked.lock().unwrap();
            if a.answer(r, &format!("add_step {path} on :{port}")) {
                a.added.push((plan.clone(), extra));
            }
        }
        let open = api
            .raw(
                Method::GET,
                "/v1/reviews?state=open&limit=100",
                Some(&token),
                None,
            )
            .await;
        for rv in open
            .map(|r| r.body["items"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
        {
            let (plan, step, attempt) = (
                rv["plan_id"].as_str().unwrap().to_owned(),
                rv["step_id"].as_str().unwrap().to_owned(),
                rv["attempt"].as_u64().unwrap(),
            );
            let body = json!({"type": "approve_step", "step_id": step, "attempt": attempt});
            let path = format!("/v1/plans/{plan}/interventions");
            let r = try_post(&api, &token, &path, &body).await;
            let mut a = acked.lock().unwrap();
            if a.answer(r, &format!("approve_step {path} on :{port}")) {
                a.approved.push((plan, step, attempt));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until every plan has ended, through any live node; answers them.
async fn wait_all_ended(c: &Cluster, ids: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    for id in ids {
        loop {
            let live = c.live();
            let api = c.api(live[0]);
            let p = Auth(&api, Some(&c.admin)).plan(id).await;
            if ended(&p) {
                out.push(p);
                break;
            }
            assert!(Instant::now() < deadline, "plan {id} never ended: {p}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Every plan completed, with no seq gap and no completed step run again; answers each plan's
/// events.
async fn check_finished(c: &Cluster, plans: &[Value]) -> Vec<Vec<Value>> {
    let api = c.api(c.live()[0]);
    let a = Auth(&api, Some(&c.admin));
    let mut logs = Vec::new();
    for p in plans {
        let id = p["plan_id"].as_str().unwrap();
        assert_eq!(p["state"], "completed", "plan {id}: {p}");
        assert_no_completed_step_ran_twice(&c.agent, p);
        let events = a.all_events(id).await;
        assert_no_seq_gap(id, &events);
        logs.push(events);
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_nodes_at_random_moments_under_load_loses_nothing_and_reruns_no_completed_step() {
    let Some(mut c) = Cluster::start(3, 1000, false).await else {
        return;
    };
    let plans: Vec<Value> = (0..30)
        .map(|k| {
            chain(
                &format!("load{k}"),
                20,
                100 + 50 * (k as u64 % 5),
                k % 3 == 0,
            )
        })
        .collect();
    let ids: Vec<String> = plans
        .iter()
        .map(|p| p["plan_id"].as_str().unwrap().to_owned())
        .collect();
    start_all(&c, &plans).await;

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let operator = tokio::spawn(operate(
        c.ports.clone(),
        c.admin.clone(),
        ids.clone(),
        acked.clone(),
        stop.clone(),
    ));
    let mut rng = Rng::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
        let live = c.live();
        let victim = live[rng.below(live.len() as u64) as usize];
        eprintln!("round {round}: kill -9 of node {victim}");
        c.kill9(victim);
        // Down for a while (up to two lease periods: its plans are taken over, or not yet).
        tokio::time::sleep(Duration::from_millis(rng.below(2 * c.lease_ms))).await;
        c.up(victim);
    }
    let done = wait_all_ended(&c, &ids).await;
    stop.store(true, Ordering::Relaxed);
    operator.await.unwrap();
    check_finished(&c, &done).await;

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.bad.is_empty(),
        "answers a user must never see: {:#?}",
        acked.bad
    );
    let by_id: HashMap<&str, &Value> = done
        .iter()
        .map(|p| (p["plan_id"].as_str().unwrap(), p))
        .collect();
    for (plan, extra) in &acked.added {
        assert_eq!(
            step(by_id[plan.as_str()], extra)["status"],
            "completed",
            "plan {plan}: the acknowledged add_step {extra} was lost"
        );
    }
    let api = c.api(c.live()[0]);
    let a = Auth(&api, Some(&c.admin));
    for (plan, s, attempt) in &acked.approved {
        let list = a
            .get(&format!("/v1/plans/{plan}/interventions?limit=100"))
            .await
            .expect(200, "interventions")
            .body;
        let applied = list["items"].as_array().unwrap().iter().any(|i| {
            i["type"] == "approve_step"
                && i["step_id"] == s.as_str()
                && i["status"] == "applied"
                && i["payload"]["attempt"] == *attempt
        });
        assert!(
            applied,
            "plan {plan}: the acknowledged approval of {s} was lost: {list}"
        );
    }
    eprintln!(
        "{} steps added and {} reviews approved under kills; refused: {:?}; unanswered: {}",
        acked.added.len(),
        acked.approved.len(),
        acked.refused,
        acked.unanswered
    );
    assert!(!acked.added.is_empty(), "steps were added under load");
    assert!(
        !acked.approved.is_empty(),
        "reviews were approved under load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_storm_of_every_node_finishes_every_plan() {
    let Some(mut c) = Cluster::start(3, 1000, false).await else {
        return;
    };
    let plans: Vec<Value> = (0..20)
        .map(|k| chain(&format!("storm{k}"), 5, 100, false))
        .collect();
    let ids: Vec<String> = plans
        .iter()
        .map(|p| p["plan_id"].as_str().unwrap().to_owned())
        .collect();
    start_all(&c, &plans).await;
    let mut rng = Rng::new();
    for storm in 0..2 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
        eprintln!("storm {storm}: kill -9 of every node");
        for i in 0..3 {
            c.kill9(i);
        }
        for i in 0..3 {
            c.up(i);
        }
    }
    let done = wait_all_ended(&c, &ids).await;
    check_finished(&c, &done).await;
}

// ---- one global order, webhooks, remote workers -----------------------------------------------

/// Reads `GET /v1/events/stream` of `api` after global id `after` until `last` or until `stop`
/// frames were read; answers the ids in the order they came.
async fn global_ids(api: &Api, token: &str, after: u64, last: u64, stop: usize) -> Vec<u64> {
    let read = async {
        let mut resp = api
            .http
            .get(format!("{}/v1/events/stream", api.base))
            .bearer_auth(token)
            .header("Last-Event-ID", after.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut ids = Vec::new();
        let mut buf = String::new();
        while ids.last().is_none_or(|id| *id < last) && ids.len() < stop {
            let Some(chunk) = resp.chunk().await.unwrap() else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id:")) {
                    ids.push(id.trim().parse::<u64>().unwrap());
                }
            }
        }
        ids
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("{}: the all-plans stream never reached id {last}", api.base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_all_plans_stream_of_every_node_carries_every_nodes_events_in_id_order() {
    let Some(c) = Cluster::start(3, 2000, false).await else {
        return;
    };
    // Plans started through every node at once, so the nodes commit concurrently.
    let plans: Vec<Value> = (0..15)
        .map(|k| chain(&format!("order{k}"), 4, 5, false))
        .collect();
    let ids: Vec<String> = plans
        .iter()
        .map(|p| p["plan_id"].as_str().unwrap().to_owned())
        .collect();
    let mut starts = Vec::new();
    for (n, part) in plans.chunks(5).enumerate() {
        let (api, token, part) = (c.api(n), c.admin.clone(), part.to_vec());
        starts.push(tokio::spawn(async move {
            for plan in part {
                let a = Auth(&api, Some(&token));
                let id = plan["plan_id"].as_str().unwrap().to_owned();
                a.register(plan).await;
                a.post_empty(&format!("/v1/plans/{id}/start"))
                    .await
                    .expect(200, "start");
            }
        }));
    }
    for s in starts {
        s.await.unwrap();
    }
    let done = wait_all_ended(&c, &ids).await;
    let logs = check_finished(&c, &done).await;
    let all: Vec<u64> = {
        let mut v: Vec<u64> = logs
            .iter()
            .flatten()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    let last = *all.last().unwrap();
    // Every node's stream, from the beginning: every event of every node, in id order, once.
    for i in 0..3 {
        let got = global_ids(&c.api(i), &c.admin, 0, last, usize::MAX).await;
        assert_eq!(got, all, "node {i}'s all-plans stream");
    }
    // Resumed by id on another node half way: the rest, nothing skipped or repeated.
    let first = global_ids(&c.api(0), &c.admin, 0, last, all.len() / 2).await;
    let rest = global_ids(
        &c.api(1),
        &c.admin,
        *first.last().unwrap(),
        last,
        usize::MAX,
    )
    .await;
    assert_eq!([first, rest].concat(), all, "resumed on another node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_delivered_once_per_event_across_the_cluster() {
    let Some(c) = Cluster::start(3, 2000, true).await else {
        return;
    };
    let plans: Vec<Value> = (0..12)
        .map(|k| chain(&format!("hook{k}"), 3, 5, false))
        .collect();
    let ids: Vec<String> = plans
        .iter()
        .map(|p| p["plan_id"].as_str().unwrap().to_owned())
        .collect();
    start_all(&c, &plans).await;
    let done = wait_all_ended(&c, &ids).await;
    let logs = check_finished(&c, &done).await;
    let all: BTreeSet<u64> = logs
        .iter()
        .flatten()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    let deadline = Instant::now() + PATIENCE;
    let hooks = loop {
        let hooks = c.agent.hooks();
        if all.iter().all(|id| hooks.contains_key(id)) {
            break hooks;
        }
        assert!(
            Instant::now() < deadline,
            "events never delivered: {:?}",
            all.iter()
                .filter(|id| !hooks.contains_key(id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let twice: Vec<(&u64, &u32)> = hooks.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        hooks.keys().copied().collect::<BTreeSet<_>>(),
        all,
        "deliveries of events no plan has"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_worker_polling_a_node_that_does_not_own_the_plan_runs_its_steps() {
    let Some(c) = Cluster::start(3, 2000, false).await else {
        return;
    };
    let args = [
        "token",
        "create",
        "--user",
        "wanda",
        "--role",
        "worker",
        "--database-url",
        &c.db.url,
    ];
    let worker = Run::of(&mut cairn_command(&args), &args[..6])
        .expect(0, "cairn token create --role worker")
        .stdout
        .trim()
        .to_owned();
    // `research` has no executor on any node: its steps wait for a remote worker.
    let a0 = c.api(0);
    let op = Auth(&a0, Some(&c.admin));
    op.register(json!({"plan_id": "remote", "query": "q", "steps": [
        {"step_id": "r1", "action": "search", "agent_type": "research", "params": {"n": 1}},
        {"step_id": "r2", "action": "search", "agent_type": "research", "params": {"n": 2}, "depends_on": ["r1"]},
        {"step_id": "r3", "action": "search", "agent_type": "research", "params": {"n": 3}, "depends_on": ["r2"]}
    ]}))
    .await;
    op.post_empty("/v1/plans/remote/start")
        .await
        .expect(200, "start");
    let deadline = Instant::now() + PATIENCE;
    let mut done = 0;
    let mut past_owner = 0;
    while done < 3 {
        assert!(
            Instant::now() < deadline,
            "the worker, polling nodes that do not own the plan, got {done} of its 3 tasks: {}",
            op.plan("remote").await
        );
        // Poll one node that does not own the plan, report to the other.
        let (poll_at, had_owner) = c.not_owner("remote", done).await;
        let (report_at, _) = c.not_owner("remote", done + 1).await;
        let api = c.api(poll_at);
        let r = api
            .call(
                Method::POST,
                "/v1/tasks/poll",
                Some(&worker),
                Some(json!({"worker_id": "w1", "agent_types": ["research"], "wait_ms": 1000})),
            )
            .await;
        if r.status == 204 {
            continue;
        }
        let lease = r.expect(200, "poll").body;
        if had_owner {
            past_owner += 1;
        }
        let task_id = lease["task_id"].as_str().unwrap();
        let n = lease["params"]["n"].clone();
        c.api(report_at)
            .call(
                Method::POST,
                &format!("/v1/tasks/{task_id}/complete"),
                Some(&worker),
                Some(json!({"worker_id": "w1", "output": {"found": n}})),
            )
            .await
            .expect(204, "complete");
        done += 1;
    }
    let p = op.wait_for("remote", "ended", ended).await;
    assert_eq!(p["state"], "completed", "{p}");
    let snap = op
        .get("/v1/plans/remote/snapshot")
        .await
        .expect(200, "snapshot")
        .body;
    for (k, s) in ["r1", "r2", "r3"].into_iter().enumerate() {
        assert_eq!(step(&snap, s)["output"]["found"], k + 1, "{snap}");
    }
    assert!(
        past_owner >= 2,
        "only {past_owner} polls went past a live owner"
    );
    let events = op.all_events("remote").await;
    assert_no_seq_gap("remote", &events);
}

// ---- cairn bench on PostgreSQL ---------------------------------------------------------------

#[test]
fn bench_with_a_database_url_measures_both_stores_and_the_cluster() {
    let Ok(url) = std::env::var(DB_VAR) else {
        eprintln!("skipped: {DB_VAR} is unset");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--workload",
        // Not one_plan: its restores on PostgreSQL meet a known race (a plan reloaded by the
        // node that just unloaded it can lose the lease it claimed to the old actor's release).
        "plans,cluster",
        "--plans",
        "20",
        "--steps",
        "3",
        "--long-steps",
        "20",
        "--requests",
        "6",
        "--nodes",
        "2",
        "--lease-ms",
        "1000",
        "--database-url",
        &url,
    ];
    let run = Run::of(
        cairn_command(&args).current_dir(dir.path()),
        &args[..args.len() - 1],
    )
    .expect(0, "cairn bench --database-url");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        for key in [
            "workload",
            "store",
            "steps",
            "wall_s",
            "steps_per_sec",
            "peak_rss_mb",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
    let find = |workload: &str, store: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["workload"] == workload && l["store"] == store)
            .collect()
    };
    for store in ["sqlite", "postgres"] {
        let plans = find("plans", store);
        assert_eq!(plans.len(), 1, "plans on {store}: {lines:?}");
        assert_eq!(plans[0]["steps"], 60);
    }
    assert!(find("plans", "postgres")[0]["durability"]
        .as_str()
        .unwrap()
        .starts_with("synchronous_commit="));
    let nodes: Vec<(String, u64)> = lines
        .iter()
        .filter(|l| l["workload"] == "cluster_plans")
        .map(|l| {
            (
                l["store"].as_str().unwrap().to_owned(),
                l["nodes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("sqlite".into(), 1),
            ("postgres".into(), 1),
            ("postgres".into(), 2)
        ]
    );
    for what in ["pause", "intervention", "resume"] {
        let vias: BTreeSet<&str> = find(&format!("cluster_control_{what}"), "postgres")
            .iter()
            .map(|l| l["via"].as_str().unwrap())
            .collect();
        assert_eq!(vias, BTreeSet::from(["other_node", "owner"]), "{what}");
    }
    let failover = find("failover", "postgres");
    assert_eq!(failover.len(), 1, "{lines:?}");
    assert_eq!(failover[0]["first_event_plans"], 100, "{}", failover[0]);
}
