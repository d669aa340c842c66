//! A plan's steps, in order, and what is known of the steps at either end of the list: the
//! leading steps done for good, and the trailing steps nothing has touched yet.
//!
//! A decision asks questions of every step: which attempts are in flight, has every step
//! completed, which steps are ready, when is the next retry due. A plan of a thousand
//! sequential steps asked them of all thousand steps on every turn, to find the one or two
//! steps where anything happens: most of the engine's time per step in such a plan. The
//! steps before the first that is not *settled* (completed, with no compensation: nothing
//! in flight, nothing due, done for every step depending on it) and after the last that is not
//! *fresh* (pending, no retry due, no compensation, no dependencies named: it
//! waits for the step before it, which itself waits) answer those questions without being
//! looked at. [`Steps::live`] is the range between, which the questions scan instead.
//!
//! Both counts are hints that are only ever too small, never too large. `Steps` dereferences to
//! its `Vec` for reading; a mutable dereference (which code that changes steps in bulk uses:
//! interventions, restores, cancels) forgets both, and [`Steps::touch`] (what the fold's
//! changes to one step use) shrinks them to leave that step out. [`Steps::refresh`] grows them
//! again by looking at the steps next to the ends of the range, so over a plan's run each step
//! is looked at a few times, not once per turn.

use std::cell::Cell;
use std::ops::{Deref, DerefMut, Range};

use serde::{Deserialize, Serialize, Serializer};

use crate::state::{Step, StepStatus};

/// A plan's steps (see the module's documentation). Stored and compared as the list alone.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Steps {
    list: Vec<Step>,
    /// The first `settled` steps are settled.
    #[serde(skip)]
    settled: usize,
    /// The last `fresh` steps are fresh.
    #[serde(skip)]
    fresh: usize,
    /// Never grows the ends: every question looks at every step (what tests compare with).
    #[serde(skip)]
    blind: bool,
}

impl Steps {
    pub fn new(list: Vec<Step>) -> Steps {
        Steps {
            list,
            settled: 0,
            fresh: 0,
            blind: false,
        }
    }

    /// The step at `index`, to change it: the step is no longer counted settled or fresh.
    pub(crate) fn touch(&mut self, index: usize) -> &mut Step {
        self.settled = self.settled.min(index);
        self.fresh = self.fresh.min(self.list.len().saturating_sub(index + 1));
        &mut self.list[index]
    }

    /// From now on, knows nothing of either end: every question about the steps looks at all
    /// of them, as before the ends were kept. For tests, which compare the two.
    #[doc(hidden)]
    pub fn blind(&mut self) {
        self.settled = 0;
        self.fresh = 0;
        self.blind = true;
    }

    /// Grows the settled and fresh ends as far as the steps next to them allow.
    pub(crate) fn refresh(&mut self) {
        if self.blind {
            return;
        }
        let n = self.list.len();
        while self.settled + self.fresh < n && settled(&self.list[self.settled]) {
            self.settled += 1;
        }
        while self.settled + self.fresh < n && fresh(&self.list[n - 1 - self.fresh]) {
            self.fresh += 1;
        }
    }

    /// The steps that are neither settled nor fresh, by position. Before it: completed steps
    /// with nothing in flight or due. After it: pending steps that wait for the step before
    /// them, none of them ready, nothing in flight or due.
    pub fn live(&self) -> Range<usize> {
        let n = self.list.len();
        let end = n - self.fresh.min(n);
        self.settled.min(end)..end
    }

    /// The steps that may be ready to start: the live range and the first fresh step (whose
    /// step before may have completed).
    pub(crate) fn maybe_ready(&self) -> Range<usize> {
        let live = self.live();
        live.start..(live.end + 1).min(self.list.len())
    }
}

/// Completed, no compensation: nothing in flight or due, and done for its dependents.
fn settled(s: &Step) -> bool {
    s.rec.status == StepStatus::Completed && s.rec.compensation.is_none()
}

/// Pending, nothing due, waiting for the step before it. A step may have run before (a
/// restore or a rewind put it back to pending with its attempts counted): pending, it has
/// nothing in flight either way, so a restored plan's steps are fresh as a new plan's are.
fn fresh(s: &Step) -> bool {
    s.rec.status == StepStatus::Pending
        && s.rec.retry_at.is_none()
        && s.rec.compensation.is_none()
        && s.def.depends_on.is_none()
}

thread_local! {
    /// Set while [`without_steps`] runs on this thread.
    static LEFT_OUT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every list of steps serialized on this thread written as an empty list: how a
/// store snapshot writes the rest of a state, whose steps it then writes one by one.
pub fn without_steps<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the flag back as it was, even when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEFT_OUT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(LEFT_OUT.with(|c| c.replace(true)));
    f()
}

impl Serialize for Steps {
    /// The list alone; an empty one inside [`without_steps`].
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if LEFT_OUT.with(Cell::get) {
            return serializer.collect_seq(std::iter::empty::<&Step>());
        }
        self.list.serialize(serializer)
    }
}

impl Deref for Steps {
    type Target = Vec<Step>;

    fn deref(&self) -> &Vec<Step> {
        &self.list
    }
}

impl DerefMut for Steps {
    /// Any change through the list itself: nothing is known of its ends any more.
    fn deref_mut(&mut self) -> &mut Vec<Step> {
        self.settled = 0;
        self.fresh = 0;
        &mut self.list
    }
}

impl PartialEq for Steps {
    fn eq(&self, other: &Steps) -> bool {
        self.list == other.list
    }
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.list.fmt(f)
    }
}

impl From<Vec<Step>> for Steps {
    fn from(list: Vec<Step>) -> Steps {
        Steps::new(list)
    }
}

impl FromIterator<Step> for Steps {
    fn from_iter<I: IntoIterator<Item = Step>>(iter: I) -> Steps {
        Steps::new(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Steps {
    type Item = &'a Step;
    type IntoIter = std::slice::Iter<'a, Step>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl<'a> IntoIterator for &'a mut Steps {
    type Item = &'a mut Step;
    type IntoIter = std::slice::IterMut<'a, Step>;

    /// Through the mutable dereference: the ends are forgotten.
    fn into_iter(self) -> Self::IntoIter {
        self.deref_mut().iter_mut()
    }
}

impl IntoIterator for Steps {
    type Item = Step;
    type IntoIter = std::vec::IntoIter<Step>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plan::StepDef;
    use crate::state::StepRecord;

    fn step(n: usize, status: StepStatus, attempts: u32) -> Step {
        Step {
            def: Arc::new(StepDef::new(format!("s{n}"), "a", "builtin.echo")),
            rec: StepRecord {
                status,
                attempts,
                ..StepRecord::new()
            },
        }
    }

    #[test]
    fn steps_are_left_out_only_inside_without_steps() {
        let steps: Steps = (0..2).map(|n| step(n, StepStatus::Pending, 0)).collect();
        let all = serde_json::to_value(&steps).unwrap();
        assert_eq!(all.as_array().map(Vec::len), Some(2));
        assert_eq!(
            without_steps(|| serde_json::to_value(&steps).unwrap()),
            serde_json::json!([])
        );
        // The flag is put back, also after a panic inside.
        assert_eq!(serde_json::to_value(&steps).unwrap(), all);
        let _ = std::panic::catch_unwind(|| without_steps(|| panic!("inside")));
        assert_eq!(serde_json::to_value(&steps).unwrap(), all);
    }

    #[test]
    fn steps_a_restore_put_back_to_pending_are_fresh() {
        // Two steps done, then eight that ran before a restore put them back to pending, as
        // a plan restored to an early checkpoint has them.
        let mut steps: Steps = (0..10)
            .map(|n| match n {
                0 | 1 => step(n, StepStatus::Completed, 1),
                _ => step(n, StepStatus::Pending, 3),
            })
            .collect();
        steps.refresh();
        assert_eq!(steps.live(), 2..2);
        assert_eq!(steps.maybe_ready(), 2..3);
    }

    #[test]
    fn a_pending_step_with_a_retry_due_is_live() {
        let mut steps: Steps = (0..4)
            .map(|n| step(n, StepStatus::Pending, u32::from(n == 2)))
            .collect();
        steps[2].rec.retry_at = Some(crate::Timestamp::from_micros(5));
        steps.refresh();
        // Steps 0 to 2 are looked at: step 2's retry is due at some point, and step 1 is
        // before it.
        assert_eq!(steps.live(), 0..3);
    }
}
