//! Positions of a plan's steps by id: what makes [`PlanState::step`] and the fold's lookups
//! constant instead of a scan of every step (a replay of `n` events over a plan of `m` steps
//! was `n × m` string comparisons).
//!
//! The index is a cache beside `PlanState::steps`, never stored, compared or sent. `steps` is
//! a public field that code all over the crate changes (interventions insert, remove and move
//! steps, a restore rebuilds them), so the index is not kept in step by those changes: every
//! position it gives is checked against `steps` before it is used, and a step found by a scan
//! instead (the index is missing, stale, or the id's hash collided) makes a lookup that can
//! change the state rebuild it. A stale index therefore costs one rebuild, never a wrong
//! step. Step ids are unique in a plan (a definition with a repeated id is refused, and an
//! intervention never adds an id the plan has), so the step with an id is the one step found.
//!
//! Plans of at most [`MIN_STEPS`] steps have no index: a scan of so few is as fast as a hash,
//! and an idle plan keeps one pointer-sized empty field.
//!
//! [`PlanState::step`]: crate::state::PlanState::step

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::state::Step;

/// Plans of more steps than this get an index.
pub(crate) const MIN_STEPS: usize = 16;

/// Positions of steps by id (see the module's documentation).
#[derive(Clone, Default)]
pub(crate) struct StepIndex(Option<Box<Positions>>);

#[derive(Clone, Default)]
struct Positions {
    /// Hashes step ids (keyed per index, so ids chosen to collide cannot be prepared).
    hasher: RandomState,
    /// A step id's hash → its position when the index was built.
    at: HashMap<u64, usize, BuildHasherDefault<Prehashed>>,
}

/// The keys are hashes already: used as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else is folded in (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The first step with `step_id`, by a scan.
fn scan(steps: &[Step], step_id: &str) -> Option<usize> {
    steps.iter().position(|s| s.def.step_id == step_id)
}

impl StepIndex {
    /// The position of `step_id` when the index has one and `steps` holds that step there.
    fn known(&self, steps: &[Step], step_id: &str) -> Option<usize> {
        let p = self.0.as_deref()?;
        let i = *p.at.get(&p.hasher.hash_one(step_id))?;
        steps
            .get(i)
            .is_some_and(|s| s.def.step_id == step_id)
            .then_some(i)
    }

    /// The position of `step_id` in `steps`: from the index when it is right, else by a scan.
    pub(crate) fn find(&self, steps: &[Step], step_id: &str) -> Option<usize> {
        self.known(steps, step_id).or_else(|| scan(steps, step_id))
    }

    /// As [`StepIndex::find`], and an index found stale (or missing) is rebuilt, so the next
    /// lookups are constant again.
    pub(crate) fn find_mut(&mut self, steps: &[Step], step_id: &str) -> Option<usize> {
        if let Some(i) = self.known(steps, step_id) {
            return Some(i);
        }
        let found = scan(steps, step_id)?;
        self.rebuild(steps);
        Some(found)
    }

    /// Indexes `steps` afresh (or drops the index of a plan too small for one).
    pub(crate) fn rebuild(&mut self, steps: &[Step]) {
        if steps.len() <= MIN_STEPS {
            self.0 = None;
            return;
        }
        let p = self.0.get_or_insert_with(Box::default);
        p.at.clear();
        p.at.reserve(steps.len());
        for (i, s) in steps.iter().enumerate() {
            // The first of two ids whose hashes collide is indexed; the other is found by a
            // scan (and a collision of 64-bit keyed hashes is not expected in practice).
            p.at.entry(p.hasher.hash_one(s.def.step_id.as_str()))
                .or_insert(i);
        }
    }

    /// Is there an index (a plan of more than [`MIN_STEPS`] steps looked a step up)?
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.0.is_some()
    }
}

/// A cache: every state's index equals every other's.
impl PartialEq for StepIndex {
    fn eq(&self, _: &StepIndex) -> bool {
        true
    }
}

impl std::fmt::Debug for StepIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepIndex")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StepDef;
    use crate::state::{PlanState, StepRecord};
    use proptest::prelude::*;

    fn step(id: &str) -> Step {
        Step {
            def: std::sync::Arc::new(StepDef::new(id, "echo", "builtin")),
            rec: StepRecord::new(),
        }
    }

    /// What may happen to a plan's steps between lookups.
    #[derive(Debug, Clone)]
    enum Op {
        /// A new step at a position (an intervention's `add`).
        Add(usize),
        /// The step at a position removed.
        Remove(usize),
        /// Two steps swapped (a reorder).
        Swap(usize, usize),
        /// The steps reversed (a restore to another order).
        Reverse,
        /// Every step replaced by `n` others, some ids old (a restore or a snapshot read).
        Replace(usize),
        /// Lookups of an id by number (may be absent), through `&self` and `&mut self`.
        Find(usize),
        /// A copy of the state carries on (the fold cache's clone).
        Clone,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..80usize).prop_map(Op::Add),
            (0..80usize).prop_map(Op::Remove),
            (0..80usize, 0..80usize).prop_map(|(a, b)| Op::Swap(a, b)),
            Just(Op::Reverse),
            (0..60usize).prop_map(Op::Replace),
            (0..120usize).prop_map(Op::Find),
            (0..120usize).prop_map(Op::Find),
            (0..120usize).prop_map(Op::Find),
            Just(Op::Clone),
        ]
    }

    /// Every id a lookup may ask for, present or not, agrees with a scan.
    fn agrees(state: &mut PlanState, ids: usize) -> Result<(), TestCaseError> {
        for n in 0..ids {
            let id = format!("s{n}");
            let expected = scan(&state.steps, &id);
            prop_assert_eq!(state.index_of(&id), expected, "index_of {}", id);
            prop_assert_eq!(
                state.step(&id).map(|s| s.def.step_id.clone()),
                expected.map(|i| state.steps[i].def.step_id.clone())
            );
            let got = state.step_mut(&id).map(|s| s.def.step_id.clone());
            prop_assert_eq!(got, expected.map(|_| id.clone()), "step_mut {}", id);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// After any sequence of adds, removes, reorders, restores and copies, a lookup by id
        /// through the index finds what a linear scan finds.
        #[test]
        fn lookups_agree_with_a_scan(
            start in 0..60usize,
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut state = PlanState::empty("p");
            state.steps = (0..start).map(|n| step(&format!("s{n}"))).collect();
            // Fresh ids for added steps, so ids stay unique.
            let mut next = 1_000usize;
            for op in ops {
                match op {
                    Op::Add(at) => {
                        let at = at.min(state.steps.len());
                        state.steps.insert(at, step(&format!("s{next}")));
                        next += 1;
                    }
                    Op::Remove(at) => {
                        if !state.steps.is_empty() {
                            let at = at % state.steps.len();
                            state.steps.remove(at);
                        }
                    }
                    Op::Swap(a, b) => {
                        if !state.steps.is_empty() {
                            let n = state.steps.len();
                            state.steps.swap(a % n, b % n);
                        }
                    }
                    Op::Reverse => state.steps.reverse(),
                    Op::Replace(n) => {
                        // Every other old id kept, in another order, beside new ones.
                        state.steps = (0..n)
                            .map(|k| {
                                if k % 2 == 0 {
                                    step(&format!("s{}", n - k))
                                } else {
                                    // Used, then counted: an add after this takes the next.
                                    next += 1;
                                    step(&format!("s{}", next - 1))
                                }
                            })
                            .collect();
                    }
                    Op::Find(n) => {
                        let id = format!("s{n}");
                        let expected = scan(&state.steps, &id);
                        prop_assert_eq!(state.index_of(&id), expected);
                        prop_assert_eq!(state.step_mut(&id).is_some(), expected.is_some());
                    }
                    Op::Clone => state = state.clone(),
                }
                agrees(&mut state, next + 1)?;
            }
        }
    }

    #[test]
    fn small_plans_have_no_index_and_large_ones_build_one_on_a_lookup() {
        let mut state = PlanState::empty("p");
        state.steps = (0..MIN_STEPS).map(|n| step(&format!("s{n}"))).collect();
        assert!(state.step_mut("s3").is_some());
        assert!(!state.step_index.is_built());
        state.steps.push(step("s99"));
        assert!(state.step_mut("s99").is_some());
        assert!(state.step_index.is_built());
        // Moved under the index: still the right step, and the index is built afresh.
        state.steps.reverse();
        assert_eq!(state.index_of("s99"), Some(0));
        assert_eq!(
            state.step_mut("s0").map(|s| s.def.step_id.as_str()),
            Some("s0")
        );
        assert_eq!(state.index_of("s0"), Some(MIN_STEPS));
        assert_eq!(state.index_of("absent"), None);
        // Shrunk to a small plan: the index goes with the next rebuild.
        state.steps.truncate(3);
        state.steps.reverse();
        assert_eq!(
            state.step_mut("s99").map(|s| s.def.step_id.as_str()),
            Some("s99")
        );
        assert!(!state.step_index.is_built());
    }

    #[test]
    fn a_state_read_from_its_serialised_form_finds_its_steps() {
        let mut state = PlanState::empty("p");
        state.steps = (0..40).map(|n| step(&format!("s{n}"))).collect();
        assert!(state.step_mut("s7").is_some());
        let json = serde_json::to_string(&state).unwrap();
        assert!(
            !json.contains("step_index"),
            "the index is never serialised"
        );
        let mut back: PlanState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.index_of("s39"), Some(39));
        assert_eq!(
            back.step_mut("s21").map(|s| s.def.step_id.as_str()),
            Some("s21")
        );
    }
}
