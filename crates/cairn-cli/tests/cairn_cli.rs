//! The `cairn` binary end to end: one test binary, one module per area, so the suite links once.
//!
//! - `common`: the one harness the others use: running `cairn` with a clean environment and a
//!   bounded wait, starting and stopping `cairn serve`, tokens, HTTP.
//! - `cluster`: several `cairn serve` nodes on one PostgreSQL database: requests to nodes that
//!   do not own the plan, `kill -9` under load, streams, webhooks, remote workers.
//! - `cli`: the local commands (validate, run, interventions, checkpoints, signals, the fixture
//!   database written by an earlier release).
//! - `dashboard`: the web dashboard in a real headless Chromium.
//! - `gates`: each path of a quality gate and each refused review decision, against `cairn serve`.
//! - `postgres`: `cairn serve` and `cairn token` on PostgreSQL (`--database-url`).
//! - `rollback`: rollback on failure, cancel with rollback, a failed compensation continued or
//!   skipped, `kill -9` mid-rollback, against `cairn serve` with a command agent.
//! - `server`: `cairn serve` over HTTP, and the CLI's client mode.
//! - `store`: the database file as users and disks treat it.
//! - `templates`: `cairn templates …` on a local store and over `--server`.
//! - `worker`: `cairn worker` and the example workers against a real server.

#[path = "cairn_cli/cli.rs"]
mod cli;
#[path = "cairn_cli/cluster.rs"]
mod cluster;
#[path = "cairn_cli/common.rs"]
mod common;
#[path = "cairn_cli/dashboard/mod.rs"]
mod dashboard;
#[path = "cairn_cli/gates.rs"]
mod gates;
#[path = "cairn_cli/postgres.rs"]
mod postgres;
#[path = "cairn_cli/rollback.rs"]
mod rollback;
#[path = "cairn_cli/server.rs"]
mod server;
#[path = "cairn_cli/store.rs"]
mod store;
#[path = "cairn_cli/templates.rs"]
mod templates;
#[path = "cairn_cli/worker.rs"]
mod worker;
