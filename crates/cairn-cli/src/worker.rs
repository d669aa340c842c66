//! `cairn worker`: a remote worker that long-polls a cairn server for tasks of some
//! agent types and runs a command per task: the task JSON on stdin, the output JSON on stdout
//! (`{"output": …, "scores": {…}}` or any JSON as the output), a non-zero exit is a retryable
//! failure with the tail of stderr. The command leads its own process group and gets a clean
//! environment (PATH, HOME, the task's `CAIRN_*` variables and the `--env` names). It heartbeats
//! the lease while the command runs and kills the command's whole process group when the plan no
//! longer wants the attempt. Ctrl-C or SIGTERM: no new tasks; the tasks
//! in hand are finished and reported.

use std::process::Stdio;
use std::time::Duration;

use cairn_engine::executor::command::{parse_agent_output, ProcessGroup, MAX_OUTPUT_BYTES};
use clap::Args;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::{exit, Fail};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The cairn server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CAIRN_SERVER")]
    server: String,
    /// An agent type to take tasks of (repeatable).
    #[arg(long = "agent-type", required = true)]
    agent_types: Vec<String>,
    /// A token with the worker role.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This worker's name in leases (default: HOST-PID).
    #[arg(long)]
    worker_id: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// An environment variable of the worker's the command also gets (repeatable). The command
    /// runs with a clean environment: PATH, HOME, the task's CAIRN_* variables and these.
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// The command run per task, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// How long one poll waits on the server.
const POLL_WAIT_MS: u64 = 30_000;
/// Bytes of stderr kept for a failure message.
const STDERR_TAIL: usize = 2_000;

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    worker_id: String,
}

/// What a call to the server came to.
enum Reply {
    Ok(StatusCode, Value),
    /// The server could not be reached or answered 5xx: try again later.
    Down(String),
}

impl Client {
    async fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Reply, Fail> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Fail::input(format!("bad server URL: {e}")))?;
        let mut req = self.http.post(url).json(body).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Reply::Down(describe(&e))),
        };
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_server_error() {
            return Ok(Reply::Down(format!(
                "the server answered {status}: {}",
                message(&body)
            )));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Fail::input(format!(
                "the server refused the token ({status}): {}; pass a token with the worker role via --token or CAIRN_TOKEN (create one with `cairn token create --user NAME --role worker`)",
                message(&body)
            )));
        }
        Ok(Reply::Ok(status, body))
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn message(body: &Value) -> String {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 100)
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

pub async fn worker(args: WorkerArgs) -> Result<u8, Fail> {
    let mut base = Url::parse(&args.server).map_err(|e| {
        Fail::input(format!(
            "--server {:?} is not a URL like http://127.0.0.1:8080: {e}",
            args.server
        ))
    })?;
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        return Err(Fail::input(format!(
            "--server {:?} must be an http:// or https:// URL with a host",
            args.server
        )));
    }
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    for t in &args.agent_types {
        if t.is_empty() || t.len() > 128 {
            return Err(Fail::input("each --agent-type must be 1 to 128 characters"));
        }
    }
    if args.agent_types.len() > 64 {
        return Err(Fail::input("at most 64 --agent-type"));
    }
    if args.concurrency == 0 || args.concurrency > 1024 {
        return Err(Fail::input("--concurrency must be between 1 and 1024"));
    }
    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    if worker_id.is_empty() || worker_id.len() > 128 {
        return Err(Fail::input("--worker-id must be 1 to 128 characters"));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Fail::from(anyhow::anyhow!("cannot build the HTTP client: {e}")))?;
    let client = Client {
        http,
        base,
        token: args.token.clone().filter(|t| !t.is_empty()),
        worker_id,
    };
    eprintln!(
        "cairn worker {}: taking {} tasks from {} ({} at a time)",
        client.worker_id,
        args.agent_types.join(", "),
        args.server,
        args.concurrency
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("stopping: taking no new tasks; finishing those in hand");
        let _ = stop_tx.send(true);
    });

    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let types = args.agent_types.clone();
        let command = Program {
            argv: args.command.clone(),
            env: args.env.clone(),
        };
        let stop = stop_rx.clone();
        loops.spawn(async move { run_loop(client, types, command, stop).await });
    }
    let mut result = Ok(exit::OK);
    while let Some(joined) = loops.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(f)) => {
                // A refused token or a misconfigured server: every loop would say the same.
                loops.abort_all();
                result = Err(f);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => result = Err(Fail::from(anyhow::anyhow!("a worker loop crashed: {e}"))),
        }
    }
    result
}

async fn run_loop(
    client: Client,
    agent_types: Vec<String>,
    command: Program,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Fail> {
    let body = json!({
        "worker_id": client.worker_id,
        "agent_types": agent_types,
        "wait_ms": POLL_WAIT_MS,
    });
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let reply = tokio::select! {
            r = client.post("v1/tasks/poll", &body, Duration::from_millis(POLL_WAIT_MS + 15_000)) => r?,
            // A task handed out in this very moment is lost to its lease, then retried.
            _ = stop.changed() => return Ok(()),
        };
        match reply {
            Reply::Down(why) => {
                eprintln!(
                    "cairn worker: the server is unreachable ({why}); retrying in {} s",
                    backoff.as_secs_f32()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Reply::Ok(StatusCode::NO_CONTENT, _) => backoff = Duration::from_millis(500),
            Reply::Ok(StatusCode::OK, task) => {
                backoff = Duration::from_millis(500);
                run_task(&client, &command, task).await?;
            }
            Reply::Ok(StatusCode::NOT_FOUND, body) => {
                return Err(Fail::input(format!(
                    "the server does not serve /v1/tasks ({}); is --server a cairn server (`cairn serve`)?",
                    message(&body)
                )))
            }
            Reply::Ok(status, body) => {
                return Err(Fail::input(format!(
                    "the server refused the poll ({status}): {}",
                    message(&body)
                )))
            }
        }
    }
}

/// The last `n` bytes of `bytes` as trimmed text.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= n {
        return text.to_owned();
    }
    let mut start = text.len() - n;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

enum Ended {
    Exited(std::process::ExitStatus, Vec<u8>, Vec<u8>),
    Io(String),
    /// The plan no longer wants it, or the lease is lost: nothing to report.
    Stopped(&'static str),
}

async fn run_task(client: &Client, command: &Program, task: Value) -> Result<(), Fail> {
    let task_id = task
        .get("task_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let lease_ms = task
        .get("lease_ms")
        .and_then(Value::as_u64)
        .unwrap_or(30_000);
    let label = format!(
        "task {task_id} ({}/{} attempt {})",
        task.get("plan_id").and_then(Value::as_str).unwrap_or("?"),
        task.get("step_id").and_then(Value::as_str).unwrap_or("?"),
        task.get("attempt").and_then(Value::as_u64).unwrap_or(0)
    );
    eprintln!("cairn worker: {label}: running");
    let ended = run_command(client, command, &task, &task_id, lease_ms).await?;
    let (path, body, what) = match ended {
        Ended::Stopped(why) => {
            eprintln!("cairn worker: {label}: {why}");
            // Tell the server so the lease ends now (it answers 404 if it is already gone).
            let body = json!({"worker_id": client.worker_id, "error": why, "retryable": true});
            (format!("v1/tasks/{task_id}/fail"), body, "stopped")
        }
        Ended::Io(e) => (
            format!("v1/tasks/{task_id}/fail"),
            json!({"worker_id": client.worker_id, "error": e, "retryable": true}),
            "failed",
        ),
        Ended::Exited(status, stdout, _) if status.success() => {
            match parse_agent_output(&stdout, "printed") {
                Ok(out) => (
                    format!("v1/tasks/{task_id}/complete"),
                    json!({"worker_id": client.worker_id, "output": out.output, "scores": out.scores}),
                    "completed",
                ),
                Err(e) => (
                    format!("v1/tasks/{task_id}/fail"),
                    json!({"worker_id": client.worker_id, "error": e.message, "retryable": e.retryable}),
                    "failed",
                ),
            }
        }
        Ended::Exited(status, _, stderr) => {
            let how = match status.code() {
                Some(c) => format!("exited with code {c}"),
                None => format!("ended abnormally ({status})"),
            };
            let t = tail(&stderr, STDERR_TAIL);
            let error = if t.is_empty() {
                format!("the command {how}")
            } else {
                format!("the command {how}: {t}")
            };
            (
                format!("v1/tasks/{task_id}/fail"),
                json!({"worker_id": client.worker_id, "error": error, "retryable": true}),
                "failed",
            )
        }
    };
    // Report, trying again while the server is down (the lease may expire meanwhile; then the
    // server answers 404 and the step has been retried already).
    let mut backoff = Duration::from_millis(500);
    for _ in 0..8 {
        match client.post(&path, &body, Duration::from_secs(30)).await? {
            Reply::Ok(s, _) if s.is_success() => {
                eprintln!("cairn worker: {label}: {what}");
                return Ok(());
            }
            Reply::Ok(s, b) => {
                eprintln!(
                    "cairn worker: {label}: {what}, but the server refused the report ({s}): {}",
                    message(&b)
                );
                return Ok(());
            }
            Reply::Down(why) => {
                eprintln!(
                    "cairn worker: {label}: cannot report ({why}); retrying in {} s",
                    backoff.as_secs_f32()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    eprintln!("cairn worker: {label}: gave up reporting; the lease will expire");
    Ok(())
}

/// The command run per task and the names of the worker's variables it gets.
#[derive(Clone)]
struct Program {
    argv: Vec<String>,
    env: Vec<String>,
}

async fn run_command(
    client: &Client,
    command: &Program,
    task: &Value,
    task_id: &str,
    lease_ms: u64,
) -> Result<Ended, Fail> {
    let Some(program) = command.argv.first() else {
        return Err(Fail::input("no command given after --"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command.argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C meant for the worker lets the task in hand finish.
        .process_group(0)
        // A clean environment: the worker's own may hold its token.
        .env_clear();
    for name in ["PATH", "HOME"]
        .iter()
        .copied()
        .chain(command.env.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    let text = |key: &str| match task.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => String::new(),
    };
    for (var, key) in [
        ("CAIRN_PLAN_ID", "plan_id"),
        ("CAIRN_STEP_ID", "step_id"),
        ("CAIRN_AGENT_TYPE", "agent_type"),
        ("CAIRN_ATTEMPT", "attempt"),
        ("CAIRN_RUN", "run"),
        ("CAIRN_IDEMPOTENCY_KEY", "idempotency_key"),
    ] {
        cmd.env(var, text(key));
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Ended::Io(format!("cannot start {program:?}: {e}"))),
    };
    // Stopping the task kills what the command started too; so does dropping the group.
    let mut group = ProcessGroup::led_by(&child);
    let input = serde_json::to_vec(task).unwrap_or_default();
    let mut stdin = child.stdin.take();
    tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            // The command may not read its input; a broken pipe is its business.
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(s) = stdout {
            let _ = s
                .take(MAX_OUTPUT_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .await;
        }
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(4 << 20).read_to_end(&mut buf).await;
        }
        buf
    });
    let period = Duration::from_millis((lease_ms / 3).max(10));
    let hb_path = format!("v1/tasks/{task_id}/heartbeat");
    let hb_body = json!({"worker_id": client.worker_id});
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let status = loop {
        tokio::select! {
            s = child.wait() => {
                group.disarm();
                break s;
            }
            _ = ticker.tick() => {
                match client.post(&hb_path, &hb_body, period).await? {
                    Reply::Ok(StatusCode::OK, a) if a.get("stop").and_then(Value::as_bool) == Some(true) => {
                        group.kill();
                        let _ = child.kill().await;
                        return Ok(Ended::Stopped("stopped: the plan no longer wants this attempt"));
                    }
                    Reply::Ok(StatusCode::OK, _) => {}
                    Reply::Ok(s, b) => {
                        group.kill();
                        let _ = child.kill().await;
                        eprintln!("cairn worker: task {task_id}: the lease is lost ({s}: {})", message(&b));
                        return Ok(Ended::Stopped("the lease was lost"));
                    }
                    Reply::Down(why) => {
                        eprintln!("cairn worker: task {task_id}: heartbeat failed ({why}); will try again");
                    }
                }
            }
        }
    };
    let stdout = out.await.unwrap_or_default();
    let stderr = err.await.unwrap_or_default();
    match status {
        Err(e) => Ok(Ended::Io(format!("waiting for the command: {e}"))),
        Ok(_) if stdout.len() > MAX_OUTPUT_BYTES => Ok(Ended::Io(format!(
            "the command printed more than {MAX_OUTPUT_BYTES} bytes"
        ))),
        Ok(s) => Ok(Ended::Exited(s, stdout, stderr)),
    }
}
