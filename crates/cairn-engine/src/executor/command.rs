//! The `command` executor: runs a program per attempt, the task JSON on stdin, the output JSON on
//! stdout; a non-zero exit is a failure.
//!
//! The contract with the program:
//! - stdin: the [`Task`] as one JSON document, then end of file;
//! - environment: a clean one, not cairn's own (which may hold a token): `PATH` and `HOME` as
//!   cairn has them, the variables the configuration names ([`CommandExecutor::env`]), and
//!   `CAIRN_PLAN_ID`, `CAIRN_STEP_ID`, `CAIRN_AGENT_TYPE`, `CAIRN_ATTEMPT`, `CAIRN_RUN` and
//!   `CAIRN_IDEMPOTENCY_KEY`;
//! - process group: the program leads a group of its own, so a terminal's Ctrl-C (sent to cairn's
//!   group) never reaches it and only cairn decides when it stops; a stop or a timeout kills the
//!   whole group, including what the program started (the children of `sh -c`);
//! - stdout, on exit 0: either `{"output": …, "scores": {"name": number, …}}` (exactly those keys,
//!   `scores` optional) or any other JSON document, which is then the output as a whole; nothing at
//!   all means `null`;
//! - a non-zero exit is a failure that may be retried; the end of stderr is its message.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// The most stdout an agent may print (and an `http` agent may reply): 16 MiB.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// How much of the end of stderr is kept for the failure message.
const STDERR_TAIL_BYTES: usize = 2048;

/// How much of stderr is kept in memory while the program runs (the rest is read and dropped).
const STDERR_KEEP_BYTES: usize = 64 * 1024;

/// Runs `argv` per attempt.
#[derive(Debug, Clone)]
pub struct CommandExecutor {
    /// Program and arguments. A bare program name is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Kills the program after this long; the step's own `timeout_ms`, when smaller, wins.
    pub timeout_ms: Option<u64>,
    /// Working directory of the program (`None`: cairn's own). `cairn.toml` agents run in the
    /// directory of the configuration file.
    pub cwd: Option<PathBuf>,
    /// Names of cairn's environment variables the program also gets (besides `PATH`, `HOME` and
    /// the task's `CAIRN_*` variables); a name cairn does not have is left out.
    pub env: Vec<String>,
}

/// The variables of cairn's environment every program gets.
const BASE_ENV: [&str; 2] = ["PATH", "HOME"];

impl CommandExecutor {
    pub fn new(argv: Vec<String>) -> CommandExecutor {
        CommandExecutor {
            argv,
            timeout_ms: None,
            cwd: None,
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, env: Vec<String>) -> CommandExecutor {
        self.env = env;
        self
    }

    pub fn with_timeout_ms(mut self, timeout_ms: Option<u64>) -> CommandExecutor {
        self.timeout_ms = timeout_ms;
        self
    }

    pub fn with_cwd(mut self, cwd: Option<PathBuf>) -> CommandExecutor {
        self.cwd = cwd;
        self
    }
}

/// The smaller of two optional timeouts.
pub(crate) fn effective_timeout(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Resolves after `ms` milliseconds, or never.
pub(crate) async fn deadline(ms: Option<u64>) {
    match ms {
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => std::future::pending().await,
    }
}

/// The first `n` characters of `s`, with an ellipsis when cut.
pub(crate) fn first_chars(s: &str, n: usize) -> String {
    let mut it = s.char_indices();
    match it.nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Turns what an agent produced (stdout or a response body) into an [`ExecOutput`]:
/// empty → `null`; `{"output": …, "scores"?: {…numbers}}` → output and scores; any other JSON →
/// the output as a whole. `what` names the producer in the error ("printed", "replied with").
pub fn parse_agent_output(bytes: &[u8], what: &str) -> Result<ExecOutput, ExecError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ExecOutput {
            output: Value::Null,
            scores: None,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|_| {
        let text = String::from_utf8_lossy(bytes);
        ExecError::fatal(format!(
            "agent {what} non-JSON output: {}",
            first_chars(text.trim(), 200)
        ))
    })?;
    match value {
        Value::Object(mut map)
            if map.contains_key("output") && map.keys().all(|k| k == "output" || k == "scores") =>
        {
            let scores = match map.remove("scores") {
                None | Some(Value::Null) => None,
                Some(Value::Object(scores)) => {
                    if let Some((name, v)) = scores.iter().find(|(_, v)| !v.is_number()) {
                        return Err(ExecError::fatal(format!(
                            "agent {what} scores that are not all numbers: `{name}` is {v}"
                        )));
                    }
                    Some(scores)
                }
                Some(other) => {
                    return Err(ExecError::fatal(format!(
                        "agent {what} `scores` that is not an object of numbers: {}",
                        first_chars(&other.to_string(), 200)
                    )))
                }
            };
            let output = map.remove("output").unwrap_or(Value::Null);
            Ok(ExecOutput { output, scores })
        }
        other => Ok(ExecOutput {
            output: other,
            scores: None,
        }),
    }
}

/// Why reading a pipe stopped short.
enum PipeError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads all of `r`, failing past `cap` bytes.
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, cap: usize) -> Result<Vec<u8>, PipeError> {
    let Some(r) = r else { return Ok(Vec::new()) };
    let mut buf = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(PipeError::Io)?;
    if buf.len() > cap {
        return Err(PipeError::TooLarge);
    }
    Ok(buf)
}

/// Reads all of `r`, keeping only about the last `keep` bytes.
async fn read_tail<R: AsyncRead + Unpin>(r: Option<R>, keep: usize) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 2 * keep {
                    buf.drain(..buf.len() - keep);
                }
            }
        }
    }
    if buf.len() > keep {
        buf.drain(..buf.len() - keep);
    }
    buf
}

/// The last ~`n` bytes of stderr as trimmed text.
fn stderr_tail(stderr: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= n {
        return text.to_owned();
    }
    let mut start = text.len() - n;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", text[start..].trim_start())
}

/// "exit code 3", "killed by signal 9 (SIGKILL)".
fn describe_status(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                3 => " (SIGQUIT)",
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    format!("ended abnormally ({status})")
}

/// The process group an agent program leads (it was spawned with `process_group(0)`).
///
/// Killing the group reaches what the program started too (`sh -c` children, a pool of
/// workers), which killing the program alone would leave running. Dropping an armed group kills
/// it, so an attempt abandoned half-way (its future dropped on a timeout or at shutdown) leaves
/// nothing behind.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Option<Pid>,
}

impl ProcessGroup {
    /// The group led by `child`, which must have been spawned with `process_group(0)`.
    pub fn led_by(child: &Child) -> ProcessGroup {
        ProcessGroup {
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        }
    }

    /// Sends SIGKILL to every process of the group (once).
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH: every member has exited already, which is what we want.
            if let Err(e) = killpg(pgid, Signal::SIGKILL) {
                if e != nix::errno::Errno::ESRCH {
                    tracing::warn!(error = %e, pgid = pgid.as_raw(), "could not kill an agent's process group");
                }
            }
        }
    }

    /// The program ended by itself: leave what it may have left running alone.
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the program's whole group (if it still runs) and reaps the program.
async fn kill(child: &mut Child, group: &mut ProcessGroup) {
    group.kill();
    if let Err(e) = child.kill().await {
        tracing::warn!(error = %e, "command executor: could not kill the agent process");
    }
}

enum Outcome {
    Done(Vec<u8>, Vec<u8>, std::io::Result<ExitStatus>),
    Failed(PipeError),
    TimedOut(u64),
    Stopped,
}

#[async_trait]
impl Executor for CommandExecutor {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let Some(program) = self.argv.first() else {
            return Err(ExecError::fatal(
                "command executor: the command is empty (no program to run)",
            ));
        };
        if stop.is_stopped() {
            return Err(ExecError::retryable("stopped"));
        }
        let input = serde_json::to_vec(&task)
            .map_err(|e| ExecError::fatal(format!("cannot serialise the task: {e}")))?;
        let timeout = effective_timeout(self.timeout_ms, task.timeout_ms);

        let mut cmd = Command::new(program);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: the terminal's Ctrl-C goes to cairn's group only, and cairn
            // decides whether the attempt finishes (a pause) or is stopped.
            .process_group(0)
            .env_clear();
        for name in BASE_ENV
            .iter()
            .copied()
            .chain(self.env.iter().map(String::as_str))
        {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.env("CAIRN_PLAN_ID", &task.plan_id)
            .env("CAIRN_STEP_ID", &task.step_id)
            .env("CAIRN_AGENT_TYPE", &task.agent_type)
            .env("CAIRN_ATTEMPT", task.attempt.to_string())
            .env("CAIRN_RUN", task.run.to_string())
            .env("CAIRN_IDEMPOTENCY_KEY", &task.idempotency_key);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            let message = format!("cannot run `{program}`: {e}");
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    ExecError::fatal(message)
                }
                // Out of processes, file descriptors, memory: may pass.
                _ => ExecError::retryable(message),
            }
        })?;
        let mut group = ProcessGroup::led_by(&child);

        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let outcome = {
            let run = async {
                let write = async {
                    if let Some(mut stdin) = stdin {
                        // A program that does not read its input (or exits early) closes the
                        // pipe: not an error of ours; its exit status tells the story.
                        let _ = stdin.write_all(&input).await;
                        let _ = stdin.shutdown().await;
                    }
                    Ok::<(), PipeError>(())
                };
                let out = read_capped(stdout, MAX_OUTPUT_BYTES);
                let err = async { Ok::<_, PipeError>(read_tail(stderr, STDERR_KEEP_BYTES).await) };
                match tokio::try_join!(write, out, err) {
                    Ok(((), out, err)) => {
                        let status = child.wait().await;
                        Outcome::Done(out, err, status)
                    }
                    Err(e) => Outcome::Failed(e),
                }
            };
            tokio::select! {
                outcome = run => outcome,
                _ = deadline(timeout) => Outcome::TimedOut(timeout.unwrap_or_default()),
                _ = stop.stopped() => Outcome::Stopped,
            }
        };

        match outcome {
            Outcome::TimedOut(ms) => {
                kill(&mut child, &mut group).await;
                Err(ExecError::retryable(format!("timed out after {ms} ms")))
            }
            Outcome::Stopped => {
                kill(&mut child, &mut group).await;
                Err(ExecError::retryable("stopped"))
            }
            Outcome::Failed(PipeError::TooLarge) => {
                kill(&mut child, &mut group).await;
                Err(ExecError::fatal(format!(
                    "`{program}` printed more than the {} MiB output cap",
                    MAX_OUTPUT_BYTES / (1024 * 1024)
                )))
            }
            Outcome::Failed(PipeError::Io(e)) => {
                kill(&mut child, &mut group).await;
                Err(ExecError::retryable(format!(
                    "cannot read the output of `{program}`: {e}"
                )))
            }
            Outcome::Done(_, _, Err(e)) => {
                kill(&mut child, &mut group).await;
                Err(ExecError::retryable(format!(
                    "cannot wait for `{program}`: {e}"
                )))
            }
            Outcome::Done(stdout, stderr, Ok(status)) => {
                group.disarm();
                if status.success() {
                    if !stderr.is_empty() {
                        tracing::debug!(
                            plan_id = %task.plan_id,
                            step_id = %task.step_id,
                            stderr = %stderr_tail(&stderr, STDERR_TAIL_BYTES),
                            "agent stderr"
                        );
                    }
                    return parse_agent_output(&stdout, "printed");
                }
                let tail = stderr_tail(&stderr, STDERR_TAIL_BYTES);
                let mut message = format!("`{program}` {}", describe_status(&status));
                if tail.is_empty() {
                    message.push_str(" (stderr was empty)");
                } else {
                    message.push_str(": ");
                    message.push_str(&tail);
                }
                Err(ExecError::retryable(message))
            }
        }
    }
}
