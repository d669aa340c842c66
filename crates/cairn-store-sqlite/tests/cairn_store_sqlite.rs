//! The SQLite store: one test binary, one module per area.
//!
//! - `conformance`: the store conformance suite, plus what only this backend promises.
//! - `stats`: what the store tells metrics.

#[path = "cairn_store_sqlite/conformance.rs"]
mod conformance;
#[path = "cairn_store_sqlite/stats.rs"]
mod stats;
