//! cairn's engine. See `docs/ARCHITECTURE.md`.

pub mod config;
pub mod executor;
