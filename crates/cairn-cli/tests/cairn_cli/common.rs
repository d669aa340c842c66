//! What every module of this test binary shares.
//!
//! Waiting on a child process is always bounded: a `cairn` that hangs fails its test with the
//! stderr it wrote instead of hanging the suite. The bound is generous ([`LIMIT`]) because it
//! only exists to turn a hang into a failure, never to judge speed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

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
            reap(&mut child);
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
    reap(child);
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

/// SIGKILL, then reaps the process (which a SIGKILL makes prompt; still bounded).
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    wait_within(child, LIMIT);
}

/// Kills without asking whether that worked: for `Drop`, where the process may be gone.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let deadline = Instant::now() + LIMIT;
    if exit_by(child, deadline).is_none() {
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

#[test]
#[should_panic(expected = "did not exit within 300ms; killed it. Its stderr:\nstill here")]
fn a_child_that_hangs_is_killed_and_its_stderr_shown() {
    output_within(
        Command::new("sh").args(["-c", "echo still here >&2; exec sleep 600"]),
        Duration::from_millis(300),
    );
}
