//! States at a position of a plan's log (a checkpoint's state), and a small cache of them.
//!
//! The state right after event `seq` is folded from the nearest store snapshot at or before
//! `seq` plus the events after it. The actor stores a snapshot at a regular spacing of log
//! positions ([`snapshot_spacing`]) and the store keeps every one, so the replay is bounded
//! however old the position is.
//!
//! [`Folds`] keeps the last few states read (bounded by count and by their steps): reading a
//! checkpoint, then restoring or forking it (the dashboard's preview, then the action) folds it
//! once; a read near a cached position replays from the cached state instead of decoding a
//! store snapshot. An entry is used only when the log still has the event it was folded to
//! (same seq, same time), so a plan deleted and registered again under the same id never gets
//! another plan's state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cairn_core::PlanState;
use cairn_store::Store;

use crate::convert::from_stored;
use crate::EngineError;

/// Most states kept.
const MAX_ENTRIES: usize = 8;
/// Most steps kept over all the states (so a few very large plans cannot hold much memory).
const MAX_STEPS: usize = 16_384;

/// How many events apart the actor stores snapshots of a plan of `steps` steps: `every`
/// (the engine's `snapshot_every`), or more for a large plan, so that a snapshot (which grows
/// with the plan) costs about as much storage as a few events per event it covers.
pub(crate) fn snapshot_spacing(every: u64, steps: usize) -> u64 {
    every.max(steps as u64 / 4)
}

/// The last states folded, newest first.
#[derive(Default)]
pub(crate) struct Folds {
    entries: Mutex<VecDeque<Arc<PlanState>>>,
}

impl Folds {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<PlanState>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every state of `plan_id` (it was deleted).
    pub(crate) fn forget(&self, plan_id: &str) {
        self.lock().retain(|s| s.plan_id != plan_id);
    }

    fn remember(&self, state: Arc<PlanState>) {
        let mut entries = self.lock();
        entries.retain(|s| !(s.plan_id == state.plan_id && s.seq == state.seq));
        entries.push_front(state);
        let mut steps = 0;
        let mut keep = 0;
        for s in entries.iter() {
            steps += s.steps.len();
            if keep > 0 && (keep == MAX_ENTRIES || steps > MAX_STEPS) {
                break;
            }
            keep += 1;
        }
        entries.truncate(keep);
    }

    /// The cached state of `plan_id` nearest before or at `seq`, within `reach` events of it.
    fn nearest(&self, plan_id: &str, seq: u64, reach: u64) -> Option<Arc<PlanState>> {
        self.lock()
            .iter()
            .filter(|s| s.plan_id == plan_id && s.seq <= seq && seq - s.seq <= reach)
            .max_by_key(|s| s.seq)
            .cloned()
    }

    /// The state of `plan_id` right after event `seq`, whose time is `at` (the checkpoint's):
    /// from the cache when it holds that state, else folded from the nearest cached state or
    /// store snapshot, and remembered.
    pub(crate) async fn state_at(
        &self,
        store: &dyn Store,
        plan_id: &str,
        seq: u64,
        at: i64,
        reach: u64,
    ) -> Result<Arc<PlanState>, EngineError> {
        if let Some(hit) = self.nearest(plan_id, seq, 0) {
            if hit.updated_at.as_micros() == at {
                return Ok(hit);
            }
            self.forget(plan_id);
        }
        let state = self.fold(store, plan_id, seq, reach).await?;
        Ok(self.keep(state, seq, at))
    }

    /// Whether a state of `plan_id` right after event `seq` is cached (to be trusted only once
    /// the checkpoint's time is known: see [`Folds::state_at`]).
    pub(crate) fn holds(&self, plan_id: &str, seq: u64) -> bool {
        self.nearest(plan_id, seq, 0).is_some()
    }

    /// The state of `plan_id` right after event `seq`, folded from the nearest cached state
    /// within `reach` or from the store's nearest snapshot; not remembered (see [`Folds::keep`]).
    pub(crate) async fn fold(
        &self,
        store: &dyn Store,
        plan_id: &str,
        seq: u64,
        reach: u64,
    ) -> Result<PlanState, EngineError> {
        Ok(match self.nearest(plan_id, seq, reach) {
            Some(near) => match Self::from_cached(store, &near, seq).await? {
                Some(state) => state,
                None => {
                    self.forget(plan_id);
                    crate::engine::state_at(store, plan_id, seq).await?.0
                }
            },
            None => crate::engine::state_at(store, plan_id, seq).await?.0,
        })
    }

    /// `state`, folded by [`Folds::fold`], shared and remembered if it is the state after the
    /// event its checkpoint marks (time `at`).
    pub(crate) fn keep(&self, state: PlanState, seq: u64, at: i64) -> Arc<PlanState> {
        let state = Arc::new(state);
        if state.seq == seq && state.updated_at.as_micros() == at {
            self.remember(state.clone());
        }
        state
    }

    /// `near` folded on to `seq`, or `None` when the log no longer has the event `near` was
    /// folded to (the plan was deleted and registered again).
    async fn from_cached(
        store: &dyn Store,
        near: &PlanState,
        seq: u64,
    ) -> Result<Option<PlanState>, EngineError> {
        let rows = store
            .read_events(
                &near.plan_id,
                near.seq.saturating_sub(1),
                Some(seq),
                (seq - near.seq + 1) as usize,
            )
            .await?;
        let mut rows = rows.into_iter();
        match rows.next() {
            Some(first) if first.seq == near.seq && first.at == near.updated_at.as_micros() => {}
            _ => return Ok(None),
        }
        let mut state = near.clone();
        for row in rows {
            state.apply(&from_stored(row)?);
        }
        Ok(Some(state))
    }
}
