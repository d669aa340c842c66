//! The conformance suite: the behaviour every backend must show, as plain async functions so
//! each backend's own tests can run it from whatever runtime they use. One module per trait
//! ([`event_log`], [`plan_index`], [`leases`], [`snapshots`], [`tokens`], [`cursors`],
//! [`nodes`], [`templates`]), each with its own `run_all`, so a backend of one concern runs that
//! module alone. Behind the
//! `conformance` feature: backends enable it in their dev-dependencies.
//!
//! A backend's test calls [`run_all`] with an async factory that yields a fresh, empty store
//! per case:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn conformance() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let n = std::sync::atomic::AtomicUsize::new(0);
//!     cairn_store::conformance::run_all(|| {
//!         let path = dir.path().join(format!("{}.db", n.fetch_add(1, Relaxed)));
//!         async move { open(path) }
//!     })
//!     .await;
//! }
//! ```
//!
//! [`cluster`] holds what a store shared by several processes must also do (takeovers, the
//! lease rows, cursor leases); a backend opened by one process only may skip it.
//!
//! Each case is also public on its own (taking an `Arc<dyn Store>`) so a failing one can be run
//! alone. Cases panic with a message on failure, like any test. They need a tokio runtime
//! (the concurrency cases spawn tasks) but use no tokio test macros themselves.
//!
//! Where the trait leaves a corner open, the suite pins one answer so backends agree:
//! - `create_plan` with no events, or events not starting at seq 1, is `Invalid`.
//! - Every per-plan call except `get_plan` answers `NotFound` for an unknown plan.
//! - `list_plans` with `limit == 0` is `Invalid`.
//! - A plan's `updated_at` is the `at` of its newest event.
//! - A lease is renewed (token kept) when the same node claims again, even after expiry; another
//!   node's claim after expiry (or after a release) takes over with a larger token.
//! - Lease expiry is judged by the store's clock, which may be the database's rather than the
//!   caller's `now`: cases make a lease run out with a zero ttl, never by moving `now` alone.
//! - `append` checks the fence against the current lease's node and token (expiry is the
//!   claimant's business); a fence on a plan that was never claimed is `Fenced`. In
//!   [`cluster`]: a fence whose lease was released is `Fenced` too.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use crate::{
    Append, CheckpointMark, CreatePlan, Fence, Micros, NewEvent, OpenReviews, ReviewRow, Store,
    StoreError, TokenRow,
};

pub mod cluster;
pub mod cursors;
pub mod event_log;
pub mod leases;
pub mod nodes;
pub mod plan_index;
pub mod snapshots;
pub mod templates;
pub mod tokens;

/// Runs every case of every module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    event_log::run_all(&make).await;
    plan_index::run_all(&make).await;
    leases::run_all(&make).await;
    snapshots::run_all(&make).await;
    tokens::run_all(&make).await;
    cursors::run_all(&make).await;
    nodes::run_all(&make).await;
    templates::run_all(&make).await;
}

async fn case<F, Fut>(name: &str, store: Arc<dyn Store>, f: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    eprintln!("conformance: {name}");
    f(store).await;
}

// ---- helpers -------------------------------------------------------------------------------

/// A plain event at `seq`, its `at` derived from the seq so tests can predict `updated_at`.
pub fn ev(seq: u64, kind: &str) -> NewEvent {
    NewEvent {
        seq,
        at: 1_000_000 + seq as Micros,
        actor: "test".into(),
        kind: kind.into(),
        data: format!("{{\"n\":{seq}}}"),
        format: 2,
        checkpoint: None,
    }
}

fn cp(seq: u64, trigger: &str, label: Option<&str>) -> NewEvent {
    NewEvent {
        checkpoint: Some(CheckpointMark {
            trigger: trigger.into(),
            label: label.map(Into::into),
        }),
        ..ev(seq, "checkpointed")
    }
}

/// A plan created at `created_at` with `n` events.
pub fn create(plan_id: &str, created_at: Micros, n: u64) -> CreatePlan {
    CreatePlan {
        plan_id: plan_id.into(),
        created_at,
        state: "running".into(),
        events: (1..=n).map(|s| ev(s, "created")).collect(),
        reviews: Vec::new(),
    }
}

/// `n` events appended after `expected_seq`, without a fence.
pub fn append(plan_id: &str, expected_seq: u64, n: u64) -> Append {
    Append {
        plan_id: plan_id.into(),
        expected_seq,
        fence: None,
        state: None,
        events: (expected_seq + 1..=expected_seq + n)
            .map(|s| ev(s, "step"))
            .collect(),
        reviews: Vec::new(),
    }
}

fn review(plan_id: &str, review_id: &str, state: &str, opened_at: Micros) -> ReviewRow {
    ReviewRow {
        plan_id: plan_id.into(),
        review_id: review_id.into(),
        state: state.into(),
        opened_at,
        data: format!("{{\"review_id\":\"{review_id}\",\"state\":\"{state}\"}}"),
    }
}

/// The wall clock in microseconds (the `now` a node would pass).
pub fn wall_clock() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

async fn all_seqs(store: &dyn Store, plan_id: &str) -> Vec<u64> {
    let events = store.read_events(plan_id, 0, None, 100_000).await.unwrap();
    events.iter().map(|e| e.seq).collect()
}

fn assert_contiguous(seqs: &[u64], n: u64) {
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "log must be 1..={n}");
}
