//! cairn's engine: drives plans durably over a [`cairn_store::Store`].
//!
//! - [`Engine`]: the library's entry point (register, start, pause, resume, cancel, intervene,
//!   checkpoints, restore, fork, snapshots, subscriptions, the review inbox).
//! - [`templates`]: pushing, reading and instantiating versioned plan templates.
//! - [`executor`]: what runs a step, and the registry of agent types.
//! - [`config`], which reads `cairn.toml`.
//! - [`queue`]: the [`queue::TaskQueue`] contract of remote workers and its in-memory
//!   implementation; [`remote`]: the engine's side of it.
//!
//! Architecture invariants: the engine knows no SQL and no HTTP; every decision is made by
//! `cairn_core`; nothing is answered, published or executed before the store has committed it.
#![doc = include_str!("doc_example.md")]

mod actor;
pub mod clock;
pub mod cluster;
pub mod config;
mod convert;
mod engine;
mod error;
pub mod executor;
mod folds;
mod node;
pub mod observe;
mod publish;
pub mod queue;
pub mod remote;
mod reviews;
pub mod snapshot;
pub mod templates;

pub use cairn_core::view::{CheckpointSummary, Page, PlanSummary, Progress, Snapshot};
pub use cluster::NodeStats;
pub use engine::{
    may_settle, now, now_micros, CheckpointExport, Engine, EngineOptions,
    DEFAULT_MAX_QUEUED_COMMANDS,
};
pub use error::EngineError;
pub use publish::{Notice, Subscription};
pub use reviews::ReviewFilter;
pub use templates::{Instantiate, TemplateError};
