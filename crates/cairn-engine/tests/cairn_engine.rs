//! The engine end to end over a real SQLite store: one test binary, one module per area.
//!
//! - `engine`: plans, interventions, checkpoints and observers through the library API.
//! - `gates`: quality gates and reviews, from a gate retry to a review's timeout.
//! - `executors`: the `command` and `http` executors and `cairn.toml`.
//! - `remote`: the remote task queue.

#[path = "cairn_engine/engine.rs"]
mod engine;
#[path = "cairn_engine/executors.rs"]
mod executors;
#[path = "cairn_engine/gates.rs"]
mod gates;
#[path = "cairn_engine/remote.rs"]
mod remote;
