//! The engine end to end over a real SQLite store: one test binary, one module per area.
//!
//! - `engine`: plans, interventions, checkpoints and observers through the library API.
//! - `gates`: quality gates and reviews, from a gate retry to a review's timeout.
//! - `executors`: the `command` and `http` executors and `cairn.toml`.
//! - `faults`: a store that fails chosen appends, and no attempt's outcome lost to it.
//! - `remote`: the remote task queue.
//! - `history`: definition history: versions, their causes, definitions and diffs.
//! - `latch`: the `builtin.latch` step holder the other tests use.
//! - `paused_time`: backoff and `resume_at` on paused tokio time with the engine's clock.
//! - `templates`: instantiate and start in one commit, template diffs, the `upgrade`
//!   intervention, on both stores.
//! - `rollback`: compensations through the engine, and a restart in the middle of a rollback.
//! - `cluster`: several engines sharing one store: forwarding, takeover, fencing, the stream.
//! - `checkpoints`: a checkpoint's state read from snapshots equals a full replay (a property
//!   over seeded random histories, on both stores).
//! - `common`: bounded waits shared by every module.

#[path = "cairn_engine/checkpoints.rs"]
mod checkpoints;
#[path = "cairn_engine/cluster.rs"]
mod cluster;
#[path = "cairn_engine/common.rs"]
mod common;
#[path = "cairn_engine/engine.rs"]
mod engine;
#[path = "cairn_engine/executors.rs"]
mod executors;
#[path = "cairn_engine/faults.rs"]
mod faults;
#[path = "cairn_engine/gates.rs"]
mod gates;
#[path = "cairn_engine/history.rs"]
mod history;
#[path = "cairn_engine/latch.rs"]
mod latch;
#[path = "cairn_engine/paused_time.rs"]
mod paused_time;
#[path = "cairn_engine/remote.rs"]
mod remote;
#[path = "cairn_engine/rollback.rs"]
mod rollback;
#[path = "cairn_engine/templates.rs"]
mod templates;
