//! The `cairn` binary. The only crate that reads argv and the environment; everything it does
//! goes through `cairn_engine::Engine`.
//!
//! Exit codes: 0 success (a plan completed), 1 a plan failed or the store (or stdout) could not be
//! used, 2 bad input (usage, an invalid plan, a refused request), 3 the plan is paused, 4 the plan
//! was cancelled.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

// Every module's `println!` and `print!` (these shadow the standard ones crate-wide, being
// defined before the modules) go through `stdout::write`, which treats a closed stdout (`cairn
// … | head -1`) as the reader having seen enough instead of panicking.
macro_rules! println {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

macro_rules! print {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

mod bench;
mod bench_cluster;
mod bench_http;
mod nodes;
mod operator;
mod ops;
mod progress;
mod render;
mod reviews;
mod run;
mod serve;
mod store;
mod templates;
mod worker;
mod workers;

/// A durable orchestrator for multi-step agent research plans.
#[derive(Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The name recorded as the actor of what this command changes on a local store
    /// (default: the operating-system user). Over --server, the token's user is recorded.
    #[arg(long, global = true, env = "CAIRN_USER", value_name = "NAME")]
    user: Option<String>,
}

/// The actor this process records: `--user`, else the operating-system user.
static USER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The name recorded as the actor of local commands (see `--user`).
pub fn user() -> String {
    USER.get().cloned().unwrap_or_else(os_user)
}

/// The operating-system user: `$USER` (or `$LOGNAME`, `$USERNAME`), else what `id -un` says.
fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|u| u.trim().to_owned())
        .find(|u| cairn_server::auth::valid_user(u))
        .or_else(|| {
            let out = std::process::Command::new("id").arg("-un").output().ok()?;
            let name = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            cairn_server::auth::valid_user(&name).then_some(name)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a plan embedded, with live progress on stderr. Ctrl-C pauses it durably.
    Run(run::RunArgs),
    /// Check a plan file: exit 0, or print every fault and exit 2.
    ///
    /// Each fault names the step (`steps.<id>`, or `steps[N]` counting from 0 when it has no
    /// valid id) and the field, with its line and column and a suggestion for a likely typo.
    Validate {
        /// The plan document (JSON or YAML).
        plan_file: PathBuf,
    },
    /// Serve the HTTP API on the local store.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API tokens (on the store directly).
    #[command(subcommand)]
    Token(serve::TokenCmd),
    /// A remote worker: long-poll a server for tasks and run a command per task.
    Worker(worker::WorkerArgs),
    /// Run the benchmark workloads; one JSON object per line on stdout.
    Bench(bench::BenchArgs),
    /// List, inspect and control plans in a local store, or on a server with --server.
    #[command(subcommand)]
    Plans(ops::PlansCmd),
    /// Interventions on a plan's steps (skip, retry, modify, add, remove, reorder, rerun).
    #[command(subcommand)]
    Steps(ops::StepsCmd),
    /// The review inbox of quality gates: list reviews, approve or reject a held step.
    #[command(subcommand)]
    Reviews(reviews::ReviewsCmd),
    /// Versioned plan templates: push, list, show, run (make a plan of one), delete.
    #[command(subcommand)]
    Templates(templates::TemplatesCmd),
    /// Checkpoints: list, show, create, restore, fork, export to and import from JSON files.
    #[command(subcommand)]
    Checkpoints(ops::CheckpointsCmd),
    /// The remote workers a server has seen (needs --server).
    #[command(subcommand)]
    Workers(workers::WorkersCmd),
    /// The engine nodes sharing the store: heartbeats, liveness, plans owned (--server URL).
    Nodes(nodes::NodesArgs),
    /// Copy the database to a new file, consistently, even while `cairn run` or `cairn serve`
    /// is writing it.
    Backup(BackupArgs),
}

#[derive(Args, Debug)]
struct BackupArgs {
    /// The SQLite database file to copy.
    #[arg(long, default_value = "cairn.db", env = "CAIRN_DB")]
    db: PathBuf,
    /// The new file to write (refused if it exists).
    out: PathBuf,
}

/// `cairn backup`: SQLite's online backup, without the engine lock, so it runs beside the
/// process that drives the file.
fn backup(args: BackupArgs) -> Result<u8, Fail> {
    store::must_exist(&args.db)?;
    let report = cairn_store_sqlite::backup(&args.db, &args.out).map_err(|e| Fail {
        code: match e {
            cairn_store::StoreError::Invalid(_) => exit::BAD_INPUT,
            _ => exit::FAILED,
        },
        message: format!(
            "cannot back {} up to {}: {}",
            args.db.display(),
            args.out.display(),
            match e {
                cairn_store::StoreError::Invalid(m) => m,
                other => other.to_string(),
            }
        ),
    })?;
    eprintln!(
        "backed up {} to {}: {} plans, {} events, {} bytes",
        args.db.display(),
        args.out.display(),
        report.plans,
        report.events,
        report.bytes
    );
    Ok(exit::OK)
}

/// Where the local store is.
#[derive(Args, Clone, Debug)]
pub struct DbArgs {
    /// The SQLite database file.
    #[arg(long, default_value = "cairn.db", env = "CAIRN_DB")]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Talk to this cairn server (http://HOST:PORT) instead of opening the store.
    #[arg(long, env = "CAIRN_SERVER")]
    pub server: Option<String>,
    /// The API token for --server (sent as `Authorization: Bearer …`).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Standard output that a reader may close early.
///
/// Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and the standard
/// `println!` panics on it (exit 101). Resetting SIGPIPE to its default would need `unsafe`
/// code and would kill the process mid-command (a `plans start … | head -1` between its commit
/// and its last line), so instead a closed stdout drops the rest of the output and the command
/// ends as it would have, with its usual exit code.
pub mod stdout {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    static CLOSED: AtomicBool = AtomicBool::new(false);
    static FAILED: AtomicBool = AtomicBool::new(false);

    /// Writes to stdout unless it was found closed.
    pub fn write(args: std::fmt::Arguments<'_>) {
        if CLOSED.load(Ordering::Relaxed) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_fmt(args) {
            CLOSED.store(true, Ordering::Relaxed);
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                // A full disk or a revoked terminal: the output is incomplete, which the exit
                // code must say.
                FAILED.store(true, Ordering::Relaxed);
                eprintln!("error: cannot write to stdout: {e}");
            }
        }
    }

    /// Whoever read stdout has gone: a command that would print for ever may stop.
    pub fn closed() -> bool {
        CLOSED.load(Ordering::Relaxed)
    }

    /// Flushes what is buffered; false when stdout failed other than by being closed.
    pub fn finish() -> bool {
        if !CLOSED.load(Ordering::Relaxed) {
            if let Err(e) = std::io::stdout().lock().flush() {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("error: cannot write to stdout: {e}");
                    return false;
                }
            }
        }
        !FAILED.load(Ordering::Relaxed)
    }
}

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const PAUSED: u8 = 3;
    pub const CANCELLED: u8 = 4;
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn input(message: impl Into<String>) -> Fail {
        Fail {
            code: exit::BAD_INPUT,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        Fail {
            code: exit::FAILED,
            message: format!("{e:#}"),
        }
    }
}

impl From<cairn_engine::EngineError> for Fail {
    fn from(e: cairn_engine::EngineError) -> Self {
        Fail {
            code: if e.is_client_error() {
                exit::BAD_INPUT
            } else {
                exit::FAILED
            },
            message: e.to_string(),
        }
    }
}

/// Logs to stderr, filtered by `CAIRN_LOG` (default `warn`; `cairn serve` also logs its
/// requests at info), as text or, with `CAIRN_LOG_FORMAT=json`, one JSON object per line.
fn init_logging(serving: bool) {
    let default = if serving {
        "warn,cairn_server=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour escapes only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| QuietStderr);
    if std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Standard error for logs, where a failed write (a full disk under a redirected stderr, a
/// closed pipe) loses the line and nothing else: logging never stops or panics the process.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Threads of the runtime's blocking pool at most.
const BLOCKING_THREADS: usize = 8;

/// `CAIRN_MALLOC_ARENAS=N`: at most N malloc arenas, traded for speed (see [`tune_malloc`]).
///
/// glibc gives each thread that allocates an arena of its own (up to eight per core), and
/// memory freed in one arena serves only that arena again: with the runtime's workers, the
/// SQLite writer and the blocking pool each holding on to what it freed, `bench --workload
/// plans` peaked 2–10 MB higher than with one arena shared by all (depending on the build:
/// see BENCHMARKS.md); but one arena serialises every allocation on its lock, and the same
/// workload then ran a fifth to a third slower on two cores. So the default is glibc's, and
/// an operator short of memory can ask for fewer.
/// The limit can only be set before glibc's allocator starts (`mallopt` would need unsafe
/// code, which the workspace forbids), so the process then executes itself again, once, with
/// `GLIBC_TUNABLES` set: same pid, arguments and environment. The second start takes both
/// variables it was given out of its environment again (still single-threaded), so the
/// processes it starts (a `command` agent, a bench child) inherit nothing of it. Nothing is
/// done when `CAIRN_MALLOC_ARENAS` is unset or `default`, when `GLIBC_TUNABLES` is already set
/// (the operator's choice stands), or when the executable cannot be executed again (it was
/// replaced or deleted): the process then just runs as is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    use std::os::unix::process::CommandExt;
    const TUNABLES: &str = "GLIBC_TUNABLES";
    // Set for the second start only: it tells that start the tunables are ours (to take out of
    // the environment) and keeps a process whose tunables glibc ignored (a setuid binary) from
    // executing itself again and again.
    const DONE: &str = "CAIRN_MALLOC_TUNED";
    if std::env::var_os(DONE).is_some() {
        std::env::remove_var(DONE);
        std::env::remove_var(TUNABLES);
        return;
    }
    if std::env::var_os(TUNABLES).is_some() {
        return;
    }
    let arenas = match std::env::var("CAIRN_MALLOC_ARENAS") {
        Ok(v) if v.trim() == "default" => return,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return,
        },
        Err(_) => return,
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        again.arg0(arg0);
    }
    // `exec` returns only if it failed; the process then carries on untuned.
    let _ = again
        .args(args)
        .env(TUNABLES, format!("glibc.malloc.arena_max={arenas}"))
        .env(DONE, "1")
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Cmd::Serve(_)));
    if let Some(name) = cli.user.as_deref() {
        if !cairn_server::auth::valid_user(name) {
            eprintln!(
                "error: --user {name:?} must be 1 to 128 printable characters without spaces"
            );
            return ExitCode::from(exit::BAD_INPUT);
        }
        let _ = USER.set(name.to_owned());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The blocking pool runs SQLite's reads (four at a time) and little else. Uncapped, a
        // burst of plan loads grew it to twenty threads, each with a malloc arena of its own
        // holding freed memory.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run::run(args).await,
            Cmd::Validate { plan_file } => run::validate(&plan_file),
            Cmd::Bench(args) => bench::bench(args).await,
            Cmd::Serve(args) => serve::serve(args).await,
            Cmd::Token(cmd) => serve::token(cmd).await,
            Cmd::Worker(args) => worker::worker(args).await,
            Cmd::Plans(cmd) => ops::plans(cmd).await,
            Cmd::Steps(cmd) => ops::steps(cmd).await,
            Cmd::Reviews(cmd) => reviews::run(cmd).await,
            Cmd::Templates(cmd) => templates::run(cmd).await,
            Cmd::Checkpoints(cmd) => ops::checkpoints(cmd).await,
            Cmd::Backup(args) => backup(args),
            Cmd::Workers(cmd) => workers::workers(cmd).await,
            Cmd::Nodes(args) => nodes::nodes(args).await,
        }
    });
    // Dropping the tasks still running kills what they own (an agent's process group); give
    // that a moment, but never wait long for a socket or a blocking read.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    // A clean exit leaves the database file complete on its own (nothing only in `-wal`).
    store::close_all();
    let written = stdout::finish();
    match result {
        Ok(_) if !written => ExitCode::from(exit::FAILED),
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
