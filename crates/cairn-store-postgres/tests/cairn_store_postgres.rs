//! The PostgreSQL store: one test binary, one module per area. Every test needs a server and
//! reads its URL from `CAIRN_TEST_DATABASE_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); without it each test says so and passes.
//!
//! - `task_queue`: the task queue conformance suite on PostgreSQL, and two queues on one
//!   database as two nodes.

#[path = "cairn_store_postgres/task_queue.rs"]
mod task_queue;
