//! What every module of this test binary shares: running the `cairn` binary with a clean
//! environment ([`cairn_command`], [`Run`]), starting `cairn serve` and stopping it ([`Server`]),
//! tokens ([`make_token`]), talking HTTP to it ([`Api`], [`Auth`], [`http_once`]), and waiting on
//! any child process.
//!
//! Waiting on a child process is always bounded: a `cairn` that hangs fails its test with the
//! stderr it wrote instead of hanging the suite. The bound is generous ([`LIMIT`]) because it
//! only exists to turn a hang into a failure, never to judge speed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// The user every child process runs as (local commands record it).
pub const USER: &str = "tester";

/// How long any one child process may take before its test gives up on it.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` as [`Command::output`] does (stdin empty, stdout and stderr captured), but kills
/// it and panics with its stderr if it has not exited within `limit`. Panics if it cannot start.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    try_output_within(cmd, limit).unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)))
}

/// [`output_within`], answering the error when the program cannot be started at all (a tool
/// that is not installed), so that a test can skip.
pub fn try_output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(wait_with_output_within(child, limit, &describe(cmd)))
}

/// [`Child::wait_with_output`], bounded: reads whichever of stdout and stderr were piped while
/// waiting; if `child` has not exited within `limit`, kills it and panics with its stderr.
pub fn wait_with_output_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    match exit_by(&mut child, deadline) {
        Some(status) => Output {
            status,
            // The pipes end with the process, unless a process it started holds them open.
            stdout: collect(stdout, deadline, what, "stdout"),
            stderr: collect(stderr, deadline, what, "stderr"),
        },
        None => {
            kill_and_reap(&mut child);
            let grace = Instant::now() + Duration::from_secs(5);
            let stderr = stderr.and_then(|rx| rx.recv_timeout(left(grace)).ok());
            panic!(
                "{what} (pid {}) did not exit within {limit:?}; killed it. Its stderr:\n{}",
                child.id(),
                stderr.map_or("(not captured)".into(), |e| String::from_utf8_lossy(&e)
                    .into_owned())
            );
        }
    }
}

/// [`Child::wait`], bounded: if `child` has not exited within `limit`, kills it and panics with
/// its stderr (when it is piped and not already taken by a reader).
pub fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    if let Some(status) = exit_by(child, Instant::now() + limit) {
        return status;
    }
    kill_and_reap(child);
    let stderr = child
        .stderr
        .take()
        .map(drain)
        .and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok());
    panic!(
        "pid {} did not exit within {limit:?}; killed it. Its stderr:\n{}",
        child.id(),
        stderr.map_or("(not captured)".into(), |e| String::from_utf8_lossy(&e)
            .into_owned())
    );
}

/// SIGKILL (an error when it has exited already is ignored), then reaps it: prompt after a
/// SIGKILL, and bounded all the same.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    if exit_by(child, Instant::now() + LIMIT).is_none() {
        panic!("pid {} survived SIGKILL for {LIMIT:?}", child.id());
    }
}

/// Polls until the child exits: its status, or `None` once `limit` has passed (the child is left
/// running, for callers that kill it and report what they captured themselves).
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    exit_by(child, Instant::now() + limit)
}

fn exit_by(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pipe to its end on a thread of its own; the bytes arrive on the receiver.
fn drain(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

fn collect(pipe: Option<Receiver<Vec<u8>>>, deadline: Instant, what: &str, name: &str) -> Vec<u8> {
    let Some(rx) = pipe else {
        return Vec::new();
    };
    // A few seconds even past the deadline: the process has exited, its pipe is about to end.
    let wait = left(deadline).max(Duration::from_secs(5));
    rx.recv_timeout(wait).unwrap_or_else(|_| {
        panic!("{what} exited but its {name} stayed open for {wait:?} (a process it started?)")
    })
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `kill -SIGNAL -- TARGET`: a pid, or `-PGID` for a process group. Panics unless it worked.
pub fn signal(target: &str, signal: &str) {
    let out = output_within(
        Command::new("kill").args([&format!("-{signal}"), "--", target]),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "kill -{signal} -- {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- running the binary ----------------------------------------------------------------------

/// `cairn ARGS` with stdin empty and a clean environment: none of the `CAIRN_*` variables of the
/// shell that runs the tests, and `USER` set to [`USER`]. Callers add what they mean to pass.
pub fn cairn_command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("USER", USER)
        .env_remove("CAIRN_DB")
        .env_remove("CAIRN_CONFIG")
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_LOG")
        .env_remove("CAIRN_DATABASE_URL")
        .env_remove("CAIRN_NODE_ID")
        .env_remove("CAIRN_LEASE_MS")
        .env_remove("CAIRN_ADVERTISE")
        .env_remove("CAIRN_MALLOC_ARENAS")
        .env_remove("GLIBC_TUNABLES")
        .stdin(Stdio::null());
    c
}

/// What a finished `cairn` process left.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` (bounded by [`LIMIT`]) and prints what it did, `shown` standing for its
    /// arguments, so that a failing test's output tells the story.
    pub fn of(cmd: &mut Command, shown: &[&str]) -> Run {
        let out = output_within(cmd, LIMIT);
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ cairn {}\n  -> exit {}\n  stderr: {}",
            shown.join(" "),
            run.code,
            run.stderr.trim_end().replace('\n', "\n          ")
        );
        run
    }

    pub fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(
            self.code, code,
            "{what}: expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// `(exit code, stdout, stderr)`, for tests that match on all three.
    pub fn parts(self) -> (i32, String, String) {
        (self.code, self.stdout, self.stderr)
    }
}

/// `cairn ARGS` in client mode: `CAIRN_SERVER` is `server`, `CAIRN_TOKEN` is `token` if any.
pub fn remote(args: &[&str], server: &str, token: Option<&str>) -> Run {
    let mut c = cairn_command(args);
    c.env("CAIRN_SERVER", server);
    if let Some(t) = token {
        c.env("CAIRN_TOKEN", t);
    }
    Run::of(&mut c, args)
}

/// `cairn ARGS --db DB` on the store itself (no server).
pub fn local(args: &[&str], db: &Path) -> Run {
    let mut shown = args.to_vec();
    shown.extend(["--db", "…"]);
    Run::of(cairn_command(args).arg("--db").arg(db), &shown)
}

/// `cairn token create --user U --role R --db DB`: the token.
pub fn make_token(db: &Path, user: &str, role: &str) -> String {
    local(&["token", "create", "--user", user, "--role", role], db)
        .expect(0, "cairn token create")
        .stdout
        .trim()
        .to_owned()
}

/// The path of `examples/NAME` in the repository.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

// ---- PostgreSQL ------------------------------------------------------------------------------

/// A database of its own on the test server (`CAIRN_TEST_DATABASE_URL`), dropped (connections
/// and all) when this value is.
pub struct TestDatabase {
    /// `postgres://…/cairn_t_<random>`
    pub url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (after saying the test is skipped) without
    /// `CAIRN_TEST_DATABASE_URL`.
    pub fn create() -> Option<TestDatabase> {
        let admin = match std::env::var("CAIRN_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                eprintln!(
                    "skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)"
                );
                return None;
            }
        };
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).unwrap();
        let name = format!(
            "cairn_t_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let mut url = reqwest::Url::parse(&admin).expect("CAIRN_TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        pg_execute(&admin, format!("CREATE DATABASE {name}"));
        Some(TestDatabase {
            url: url.to_string(),
            admin,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        pg_execute(
            &self.admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs one statement on the database at `url`, on a thread of its own (callers may be inside
/// a runtime), bounded by [`LIMIT`].
fn pg_execute(url: &str, sql: String) {
    let url = url.to_owned();
    let shown = sql.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let done = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect to {url}: {e}"))?;
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        });
        let _ = tx.send(done);
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("{shown}: no answer within {LIMIT:?}"),
    }
}

// ---- the server process ----------------------------------------------------------------------

/// A running `cairn serve --bind 127.0.0.1:0`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The one-time admin token it printed, if it made one (a fresh database, auth on).
    pub admin: Option<String>,
    /// Its stderr so far (empty when it goes to a file).
    pub stderr: Arc<Mutex<String>>,
}

/// How to start a [`Server`]: `cairn serve --bind 127.0.0.1:0 --db DB ARGS…` in the database's
/// directory, its `builtin.latch` steps released by files in [`latch_dir`]; or, made with
/// [`Server::options_pg`], `--database-url URL` in a directory of the test's.
pub struct Serve {
    store: StoreArg,
    bind: String,
    args: Vec<String>,
    dir: PathBuf,
    latches: PathBuf,
    log: Option<PathBuf>,
}

/// Which database a [`Serve`] opens.
enum StoreArg {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Serve {
    /// More arguments (`--no-auth`, `--config FILE`, …).
    pub fn args(mut self, args: &[&str]) -> Serve {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs it in `dir` instead of the database's directory.
    pub fn in_dir(mut self, dir: &Path) -> Serve {
        self.dir = dir.to_owned();
        self
    }

    /// Listens on `addr` (`127.0.0.1:PORT`) instead of a port the system picks.
    pub fn bind(mut self, addr: &str) -> Serve {
        self.bind = addr.to_owned();
        self
    }

    /// Sends its stderr to the file `log` instead of the test.
    pub fn log_to(mut self, log: &Path) -> Serve {
        self.log = Some(log.to_owned());
        self
    }

    /// Starts it and waits (bounded) for the address it listens on.
    pub fn start(self) -> Server {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Serve::start`], answering why when the server exited (or never said where it listens)
    /// instead of panicking, for a caller that may try again.
    pub fn try_start(self) -> Result<Server, String> {
        let err = match &self.log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log")),
            None => Stdio::piped(),
        };
        let mut cmd = cairn_command(&["serve", "--bind", &self.bind]);
        match &self.store {
            StoreArg::Sqlite(db) => cmd.arg("--db").arg(db),
            StoreArg::Postgres(url) => cmd.arg("--database-url").arg(url),
        };
        let mut child = cmd
            .args(&self.args)
            .env("CAIRN_LOG", "warn")
            .env("CAIRN_LATCH_DIR", &self.latches)
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn cairn serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let token = Arc::new(Mutex::new(None::<String>));
        if let Some(pipe) = child.stderr.take() {
            let (stderr, token) = (stderr.clone(), token.clone());
            std::thread::spawn(move || {
                let mut err = BufReader::new(pipe);
                let mut line = String::new();
                while err.read_line(&mut line).unwrap_or(0) > 0 {
                    let t = line.trim();
                    if t.starts_with("cairn_") {
                        *token.lock().unwrap() = Some(t.to_owned());
                    }
                    stderr.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        // Its first line names the address; the rest of stdout is drained so that the server
        // never blocks on it.
        let (tx, listening) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(rest) = line.trim().strip_prefix("cairn listening on http://") {
                    let _ = tx.send(rest.to_owned());
                }
                line.clear();
            }
        });
        let addr = match listening.recv_timeout(LIMIT) {
            Ok(addr) => addr,
            Err(e) => {
                kill_and_reap(&mut child);
                // Let the stderr reader catch up with what the process wrote before it went.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "cairn serve never said where it listens ({}); stderr:\n{}",
                    match e {
                        mpsc::RecvTimeoutError::Timeout => "not within the limit",
                        mpsc::RecvTimeoutError::Disconnected => "it exited",
                    },
                    stderr.lock().unwrap()
                ));
            }
        };
        // The admin token is printed before the address; give the stderr reader a moment.
        let mut admin = None;
        if self.log.is_none() && !self.args.iter().any(|a| a == "--no-auth") {
            for _ in 0..50 {
                admin = token.lock().unwrap().clone();
                if admin.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(addr.starts_with("127.0.0.1:"), "loopback only: {addr}");
        Ok(Server {
            child,
            base: format!("http://{addr}"),
            addr,
            admin,
            stderr,
        })
    }
}

impl Server {
    /// A server to be started, of the database `db`.
    pub fn options(db: &Path) -> Serve {
        let dir = db.parent().unwrap().to_owned();
        Serve {
            store: StoreArg::Sqlite(db.to_owned()),
            bind: "127.0.0.1:0".into(),
            args: Vec::new(),
            latches: dir.join("latches"),
            dir,
            log: None,
        }
    }

    /// A server to be started on the PostgreSQL database `url`, in `dir`, its latches released
    /// by files in `dir/latches` (shared by every node started in `dir`).
    pub fn options_pg(url: &str, dir: &Path) -> Serve {
        Serve {
            store: StoreArg::Postgres(url.to_owned()),
            bind: "127.0.0.1:0".into(),
            args: Vec::new(),
            latches: dir.join("latches"),
            dir: dir.to_owned(),
            log: None,
        }
    }

    /// A server to be started on the PostgreSQL database `url`, in `dir` (its latches there).
    pub fn postgres(dir: &Path, url: &str) -> Serve {
        Server::options_pg(url, dir)
    }

    /// `cairn serve … --db DB EXTRA…` in the database's directory.
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        Server::options(db).args(extra).start()
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// SIGTERM, then its exit code (bounded: 60 s, then it is killed and the test fails).
    pub fn term(&mut self) -> Option<i32> {
        signal(&self.child.id().to_string(), "TERM");
        if let Some(s) = exit_within(&mut self.child, Duration::from_secs(60)) {
            return s.code();
        }
        kill_and_reap(&mut self.child);
        panic!(
            "cairn serve did not exit within 60 s of SIGTERM; stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill_and_reap(&mut self.child);
        }
    }
}

/// Where a server's `builtin.latch` steps look for their release files: beside the database,
/// so that a restarted server finds the same latches.
pub fn latch_dir(db: &Path) -> PathBuf {
    let dir = db.parent().unwrap().join("latches");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- HTTP ------------------------------------------------------------------------------------

/// The HTTP API of one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// An answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn expect(self, status: u16, what: &str) -> Resp {
        assert_eq!(
            self.status, status,
            "{what}: expected {status}, got {}: {}",
            self.status, self.text
        );
        if status >= 400 {
            self.error_shape(what);
        }
        self
    }

    /// Errors are `{"error": {"code": "snake_case", "message": "…"}}`.
    pub fn error_shape(&self, what: &str) {
        let code = self.body["error"]["code"].as_str().unwrap_or_else(|| {
            panic!("{what}: error without a code: {}", self.text);
        });
        assert!(
            !code.is_empty()
                && code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "{what}: code {code:?} is not snake_case"
        );
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: error without a message: {}",
            self.text
        );
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// The API under `base` (`http://127.0.0.1:PORT`); paths are appended to it. With an empty
    /// base, paths are whole URLs.
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Resp, reqwest::Error> {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some((ct, bytes)) = body {
            r = r.header("content-type", ct).body(bytes);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Resp { status, body, text })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        self.raw(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// The API as one caller (a token, or none).
#[derive(Clone, Copy)]
pub struct Auth<'a>(pub &'a Api, pub Option<&'a str>);

impl Auth<'_> {
    pub async fn get(&self, path: &str) -> Resp {
        self.0.call(Method::GET, path, self.1, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.0.call(Method::POST, path, self.1, Some(body)).await
    }
    pub async fn post_empty(&self, path: &str) -> Resp {
        self.0.call(Method::POST, path, self.1, None).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.0.call(Method::DELETE, path, self.1, None).await
    }

    pub async fn plan(&self, id: &str) -> Value {
        self.get(&format!("/v1/plans/{id}"))
            .await
            .expect(200, "get plan")
            .body
    }

    pub async fn register(&self, plan: Value) -> Value {
        self.post("/v1/plans", plan)
            .await
            .expect(201, "register")
            .body
    }

    /// Polls the plan until `pred` holds (bounded).
    pub async fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..1200 {
            let p = self.plan(id).await;
            if pred(&p) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("plan {id}: never {what}: {}", self.plan(id).await);
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_for(id, state, |p| p["state"] == state).await
    }

    /// Every event of a plan, paging with after/next_cursor.
    pub async fn all_events(&self, id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let page = self
                .get(&format!("/v1/plans/{id}/events?after={after}&limit=100"))
                .await
                .expect(200, "events")
                .body;
            let items = page["items"].as_array().unwrap().clone();
            if let Some(last) = items.last() {
                after = last["seq"].as_u64().unwrap();
            }
            out.extend(items);
            if page["next_cursor"].is_null() {
                return out;
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection, without a token and without async (for plain
/// `#[test]`s against a `--no-auth` server): `(status, JSON body or Null)`.
pub fn http_once(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.set_write_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body.as_bytes()).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

#[test]
#[should_panic(expected = "did not exit within 300ms; killed it. Its stderr:\nstill here")]
fn a_child_that_hangs_is_killed_and_its_stderr_shown() {
    output_within(
        Command::new("sh").args(["-c", "echo still here >&2; exec sleep 600"]),
        Duration::from_millis(300),
    );
}
