//! The HTTP server through its real router on a loopback port over a temporary SQLite store (or,
//! with `CAIRN_TEST_STORE=postgres`, a fresh schema of `CAIRN_TEST_DATABASE_URL`: `.ci/run` runs
//! the binary both ways): one test binary, one module per area.
//!
//! - `cluster`: `/v1/nodes`, the internal forwarding endpoint and `HttpPeers`.
//! - `common`: the one server harness (the production wiring of `cairn_server::Server::build`)
//!   and bounded waits.
//! - `history`: a plan's definition versions and the diffs between them.
//! - `hostile`: bursts of concurrent writes and malformed requests.
//! - `metrics`: `/metrics`.
//! - `openapi`: the committed `docs/openapi.json` against what the code generates.
//! - `rollback`: `POST …/rollback`, cancel with rollback, and the rollback in every answer.
//! - `steps`: a step's attempts, the attempts page and the plan search the dashboard reads.
//! - `streams`: SSE, WebSocket and webhooks.
//! - `tasks`: the remote task queue under `/v1/tasks`.
//! - `templates`: `/v1/templates`, from push to instantiation and deletion.

#[path = "cairn_server/cluster.rs"]
mod cluster;
#[path = "cairn_server/common.rs"]
mod common;
#[path = "cairn_server/history.rs"]
mod history;
#[path = "cairn_server/hostile.rs"]
mod hostile;
#[path = "cairn_server/metrics.rs"]
mod metrics;
#[path = "cairn_server/openapi.rs"]
mod openapi;
#[path = "cairn_server/rollback.rs"]
mod rollback;
#[path = "cairn_server/steps.rs"]
mod steps;
#[path = "cairn_server/streams.rs"]
mod streams;
#[path = "cairn_server/tasks.rs"]
mod tasks;
#[path = "cairn_server/templates.rs"]
mod templates;
