//! Callbacks on what happens to plans: state changes, checkpoints and interventions, the
//! monitoring hooks of the Python prototype (`on_state_change`, `on_checkpoint`,
//! `on_intervention`), built on [`Engine::subscribe`].
//!
//! An observer is a task of its own reading a resumable subscription: a slow callback makes the
//! observer lag behind the live stream and then catch up from the store. It never blocks a plan.
//! Callbacks run one at a time, in event order, each awaited before the next.
//!
//! ```no_run
//! # async fn demo(engine: cairn_engine::Engine) -> Result<(), cairn_engine::EngineError> {
//! use cairn_engine::observe::{observe, Callbacks};
//!
//! let callbacks = Callbacks::new()
//!     .on_state_change(|plan_id, old, new| println!("{plan_id}: {old:?} -> {new:?}"))
//!     .on_checkpoint(|cp| println!("checkpoint {}", cp.checkpoint_id))
//!     .on_intervention_async(|iv| async move {
//!         // e.g. write to an audit service
//!         println!("{} by {}", iv.kind, iv.user);
//!     });
//! let handle = observe(&engine, callbacks).await?;
//! // ... run plans ...
//! handle.stop();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_core::event::checkpoint_id;
use cairn_core::status::PLAN_STATUS_EVENTS;
use cairn_core::{Event, EventKind, Intervention, PlanStatus};
use cairn_store::EventLog;

use crate::convert::from_stored;
use crate::{CheckpointSummary, Engine, EngineError, Notice};

/// A boxed callback future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

type StateFn = Box<dyn Fn(String, PlanStatus, PlanStatus) -> BoxFuture + Send + Sync>;
type CheckpointFn = Box<dyn Fn(CheckpointSummary) -> BoxFuture + Send + Sync>;
type InterventionFn = Box<dyn Fn(Intervention) -> BoxFuture + Send + Sync>;

/// The callbacks of an observer; every one is optional. Each comes in a plain (sync) form and an
/// `_async` form whose closure returns a future.
#[derive(Default)]
pub struct Callbacks {
    state_change: Option<StateFn>,
    checkpoint: Option<CheckpointFn>,
    intervention: Option<InterventionFn>,
}

impl Callbacks {
    pub fn new() -> Callbacks {
        Callbacks::default()
    }

    /// Called with `(plan_id, old, new)` whenever a plan's status changes.
    pub fn on_state_change<F>(self, f: F) -> Callbacks
    where
        F: Fn(&str, PlanStatus, PlanStatus) + Send + Sync + 'static,
    {
        self.on_state_change_async(move |plan_id, old, new| {
            f(&plan_id, old, new);
            std::future::ready(())
        })
    }

    pub fn on_state_change_async<F, Fut>(mut self, f: F) -> Callbacks
    where
        F: Fn(String, PlanStatus, PlanStatus) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state_change = Some(Box::new(move |p, o, n| Box::pin(f(p, o, n))));
        self
    }

    /// Called for every checkpoint taken (automatic or manual).
    pub fn on_checkpoint<F>(self, f: F) -> Callbacks
    where
        F: Fn(CheckpointSummary) + Send + Sync + 'static,
    {
        self.on_checkpoint_async(move |cp| {
            f(cp);
            std::future::ready(())
        })
    }

    pub fn on_checkpoint_async<F, Fut>(mut self, f: F) -> Callbacks
    where
        F: Fn(CheckpointSummary) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.checkpoint = Some(Box::new(move |cp| Box::pin(f(cp))));
        self
    }

    /// Called for every recorded intervention, applied or refused (dry runs are not recorded).
    pub fn on_intervention<F>(self, f: F) -> Callbacks
    where
        F: Fn(Intervention) + Send + Sync + 'static,
    {
        self.on_intervention_async(move |iv| {
            f(iv);
            std::future::ready(())
        })
    }

    pub fn on_intervention_async<F, Fut>(mut self, f: F) -> Callbacks
    where
        F: Fn(Intervention) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.intervention = Some(Box::new(move |iv| Box::pin(f(iv))));
        self
    }
}

/// A running observer. Dropping the handle (or calling [`ObserverHandle::stop`]) stops it.
pub struct ObserverHandle {
    task: tokio::task::JoinHandle<()>,
    last_id: Arc<AtomicU64>,
}

impl ObserverHandle {
    /// Stops the observer (a callback in progress is abandoned).
    pub fn stop(self) {}

    /// The global id of the last event the observer has fully handled: persist it and pass it
    /// to [`observe_from`] to resume later without missing or repeating anything.
    pub fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Acquire)
    }

    /// True once the observer has ended (the engine is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ObserverHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an observer that sees everything that happens from now on.
pub async fn observe(engine: &Engine, callbacks: Callbacks) -> Result<ObserverHandle, EngineError> {
    let after = engine.store().last_event_id().await?;
    Ok(observe_from(engine, after, callbacks))
}

/// Starts an observer at the events after global id `after` (0 = from the very beginning).
pub fn observe_from(engine: &Engine, after: u64, callbacks: Callbacks) -> ObserverHandle {
    let sub = engine.subscribe(Some(after));
    let store = engine.store().clone();
    let last_id = Arc::new(AtomicU64::new(after));
    let progress = last_id.clone();
    let task = tokio::spawn(async move {
        let mut sub = sub;
        let mut statuses: HashMap<String, PlanStatus> = HashMap::new();
        while let Some(notice) = sub.next().await {
            // A lag notice needs nothing: the subscription catches up from the store by itself.
            let Notice::Event(e) = notice else { continue };
            handle(&callbacks, &*store, &mut statuses, &e).await;
            progress.store(e.id, Ordering::Release);
        }
    });
    ObserverHandle { task, last_id }
}

async fn handle(
    callbacks: &Callbacks,
    store: &dyn EventLog,
    statuses: &mut HashMap<String, PlanStatus>,
    e: &Event,
) {
    if let Some(f) = &callbacks.intervention {
        if let EventKind::InterventionApplied { intervention, .. }
        | EventKind::InterventionFailed { intervention } = &e.kind
        {
            f((**intervention).clone()).await;
        }
    }
    if let Some(f) = &callbacks.state_change {
        if let Some(new) = e.kind.plan_status_after() {
            // A registration (also of a fork or an import) starts a plan's history: no change
            // to report. For a plan not seen yet, its log says what it was.
            let old = match statuses.get(&e.plan_id) {
                _ if matches!(e.kind, EventKind::PlanRegistered { .. }) => None,
                Some(&s) => Some(s),
                None => status_before(store, &e.plan_id, e.seq).await,
            };
            // Finished plans are forgotten (they rarely change again), so the map only holds
            // live ones.
            if new.is_terminal() {
                statuses.remove(&e.plan_id);
            } else {
                statuses.insert(e.plan_id.clone(), new);
            }
            if let Some(old) = old.filter(|&old| old != new) {
                f(e.plan_id.clone(), old, new).await;
            }
        }
    }
    if let (Some(f), Some(mark)) = (&callbacks.checkpoint, &e.checkpoint) {
        f(CheckpointSummary {
            checkpoint_id: checkpoint_id(e.seq),
            plan_id: e.plan_id.clone(),
            seq: e.seq,
            trigger: mark.trigger,
            label: mark.label.clone(),
            created_at: e.at,
        })
        .await;
    }
}

/// The status of a plan just before event `seq`, from the status-changing events of its log
/// (for a plan the observer has not seen before).
async fn status_before(store: &dyn EventLog, plan_id: &str, seq: u64) -> Option<PlanStatus> {
    const PAGE: usize = 1_000;
    let mut status = None;
    let mut after = 0;
    loop {
        let rows = store
            .read_events_of_kind(plan_id, PLAN_STATUS_EVENTS, after, PAGE)
            .await
            .ok()?;
        let n = rows.len();
        for row in rows {
            if row.seq >= seq {
                return status;
            }
            after = row.seq;
            if let Ok(e) = from_stored(row) {
                if let Some(s) = e.kind.plan_status_after() {
                    status = Some(s);
                }
            }
        }
        if n < PAGE {
            return status;
        }
    }
}
