//! The `cairn` binary. The only crate that reads argv and the environment; everything it does
//! goes through `cairn_engine::Engine`.
//!
//! Exit codes: 0 success (a plan completed), 1 a plan failed or an operation failed, 2 bad input
//! (usage, an invalid plan, a refused request), 3 the plan is paused, 4 the plan was cancelled.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_http;
mod operator;
mod ops;
mod progress;
mod render;
mod run;
mod serve;
mod worker;

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
    Validate {
        /// The plan document (JSON or YAML).
        plan_file: PathBuf,
    },
    /// Serve the HTTP API (DESIGN §4) on the local store.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API tokens (on the store directly).
    #[command(subcommand)]
    Token(serve::TokenCmd),
    /// A remote worker: long-poll a server for tasks and run a command per task.
    Worker(worker::WorkerArgs),
    /// Run the DESIGN §6 workloads; one JSON object per line on stdout.
    Bench(bench::BenchArgs),
    /// List, inspect and control plans in a local store, or on a server with --server.
    #[command(subcommand)]
    Plans(ops::PlansCmd),
    /// Interventions on a plan's steps (skip, retry, modify, add, remove, reorder, rerun).
    #[command(subcommand)]
    Steps(ops::StepsCmd),
    /// Checkpoints: list, show, create, restore, fork, export to and import from JSON files.
    #[command(subcommand)]
    Checkpoints(ops::CheckpointsCmd),
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
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
            Cmd::Checkpoints(cmd) => ops::checkpoints(cmd).await,
        }
    });
    // Executors may leave child processes or sockets behind on Ctrl-C; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
