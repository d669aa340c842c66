//! The encoding of store snapshots (a `PlanState` at some seq: see `Store::put_snapshot`).
//!
//! A snapshot is one tag byte, then the state. Three forms are read, one is written:
//!
//! - [`PARTS`] (written since this release): the state in parts, each part MessagePack with
//!   field names, each preceded by its length (a little-endian `u32`): the state with its
//!   steps left out, the number of steps (a `u32`), then each step's definition and record.
//!   A definition is the same bytes in every snapshot of a plan until an intervention changes
//!   it, and often in every plan made from one template: decoding looks its bytes up among the
//!   definitions decoded before that are still in use (by a loaded plan or a cached state),
//!   and shares that one instead of decoding it again. Half of decoding a large plan's
//!   snapshot was decoding its definitions (every string and `params` map allocated).
//! - [`MSGPACK`] (the release before): the whole state as one MessagePack map with field names.
//! - JSON text (releases before that), whose first byte is `{`.
//!
//! So a database written by an earlier release opens and reads its old snapshots unchanged. An
//! earlier release reading a newer snapshot fails to parse it and replays from the plan's first
//! event, which gives the same state, only slower.
//!
//! MessagePack is decoded faster than JSON (no text to scan for escapes, numbers in binary):
//! see "Binary store snapshots" in BENCHMARKS.md. Field names keep it self-describing, so the
//! `serde_json::Value` fields of a state round-trip and a field added later with a default
//! still reads.
//!
//! Timestamps are MessagePack integers (microseconds: `Timestamp` writes its integer to a
//! format that is not human-readable), not RFC 3339 text, which costs 28 bytes and a parse
//! each (two or three per step). Binary snapshots of an earlier release may hold the text; both
//! read back the same (`Timestamp` reads either).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use cairn_core::state::{Step, StepRecord};
use cairn_core::{PlanState, StepDef};

/// The first byte of a snapshot written whole as one MessagePack map (the release before
/// [`PARTS`]; never the first byte of a JSON document).
pub const MSGPACK: u8 = 0x01;

/// The first byte of a snapshot written in parts (see the module's documentation).
pub const PARTS: u8 = 0x02;

/// `state` as stored: [`PARTS`], then its parts.
pub fn encode(state: &PlanState) -> Result<Vec<u8>, String> {
    // About what the whole state takes as one map (a definition and a record are about 90
    // bytes each for a small step).
    let mut out = Vec::with_capacity(256 + state.steps.len() * 200);
    out.push(PARTS);
    part(&mut out, |out| {
        cairn_core::steps::without_steps(|| rmp_serde::encode::write_named(out, state))
    })?;
    out.extend_from_slice(&len_u32(state.steps.len())?.to_le_bytes());
    for step in state.steps.iter() {
        match DEFS.encoded(&step.def) {
            Some(bytes) => {
                out.extend_from_slice(&len_u32(bytes.len())?.to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            None => {
                let at = out.len() + 4;
                part(&mut out, |out| {
                    rmp_serde::encode::write_named(out, &*step.def)
                })?;
                DEFS.remember(&step.def, &out[at..]);
            }
        }
        part(&mut out, |out| {
            rmp_serde::encode::write_named(out, &step.rec)
        })?;
    }
    Ok(out)
}

/// `state` as [`MSGPACK`] stored it: the tag, then the whole state as one MessagePack map.
/// For tests of databases an earlier release wrote.
#[doc(hidden)]
pub fn encode_whole(state: &PlanState) -> Result<Vec<u8>, String> {
    let mut out = vec![MSGPACK];
    rmp_serde::encode::write_named(&mut out, state).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A stored snapshot read back, in any of the forms the module's documentation lists.
pub fn decode(bytes: &[u8]) -> Result<PlanState, String> {
    match bytes.split_first() {
        Some((&PARTS, rest)) => decode_parts(rest),
        Some((&MSGPACK, rest)) => rmp_serde::from_slice(rest).map_err(|e| e.to_string()),
        Some(_) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        None => Err("an empty snapshot".into()),
    }
}

fn decode_parts(bytes: &[u8]) -> Result<PlanState, String> {
    let mut rest = bytes;
    let mut state: PlanState =
        rmp_serde::from_slice(take_part(&mut rest)?).map_err(|e| e.to_string())?;
    if !state.steps.is_empty() {
        return Err("a snapshot's state holds steps outside its step parts".into());
    }
    let n = take_u32(&mut rest)? as usize;
    // Each step takes at least two lengths: a count larger than the bytes allow is refused
    // before anything is allocated for it.
    if n > rest.len() / 8 {
        return Err(format!("a snapshot of {n} steps in {} bytes", rest.len()));
    }
    let mut steps = Vec::with_capacity(n);
    for _ in 0..n {
        let def = DEFS.shared(take_part(&mut rest)?)?;
        let rec: StepRecord =
            rmp_serde::from_slice(take_part(&mut rest)?).map_err(|e| e.to_string())?;
        steps.push(Step { def, rec });
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after a snapshot's last step", rest.len()));
    }
    state.steps = steps.into();
    Ok(state)
}

/// Appends a part: its length, then what `write` writes.
fn part<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), String> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out).map_err(|e| e.to_string())?;
    let len = len_u32(out.len() - at - 4)?;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn len_u32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("a snapshot part of {n} bytes or steps"))
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, String> {
    match rest.split_first_chunk::<4>() {
        Some((n, tail)) => {
            *rest = tail;
            Ok(u32::from_le_bytes(*n))
        }
        None => Err("a snapshot cut short".into()),
    }
}

fn take_part<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let n = take_u32(rest)? as usize;
    if n > rest.len() {
        return Err("a snapshot cut short".into());
    }
    let (part, tail) = rest.split_at(n);
    *rest = tail;
    Ok(part)
}

/// Step definitions with their encoded bytes, both ways: by bytes, for decoding (a definition
/// still in use is shared instead of decoded again), and by the definition's address, for
/// encoding (a definition encoded before is copied instead of encoded again: the definitions
/// of a plan are the same in each of its snapshots until an intervention changes one).
///
/// Holds no definition alive: a weak reference each, which keeps the definition's allocation
/// (so no other definition can take its address while the entry exists), not its content.
/// When what it holds passes [`DEFS_BYTES`], the entries of definitions no longer in use are
/// dropped, and all of them when that is not enough.
static DEFS: LazyLock<Defs> = LazyLock::new(Defs::default);

/// Memory [`DEFS`] holds at most: each entry counts its bytes and [`ENTRY`].
const DEFS_BYTES: usize = 2 << 20;

/// What an entry of [`DEFS`] holds besides its bytes: the allocation its weak reference keeps
/// (a definition's own size, without what it owns), and the maps' bookkeeping.
const ENTRY: usize = std::mem::size_of::<StepDef>() + 96;

#[derive(Default)]
struct Defs {
    inner: Mutex<DefsInner>,
}

/// foldhash's seeded hash: a definition's bytes are hashed for each step of each snapshot
/// decoded, and std's SipHash took as long as a tenth of decoding the step.
type Hasher = foldhash::quality::RandomState;

/// A definition encoded, by its address: the definition (weak), and its bytes.
type Encoded = (Weak<StepDef>, Arc<[u8]>);

#[derive(Default)]
struct DefsInner {
    /// Several definitions may be encoded as the same bytes (one decoded from a snapshot, one
    /// from the plan's events): all are kept, so that any of them still in use is found.
    by_bytes: HashMap<Arc<[u8]>, Vec<Weak<StepDef>>, Hasher>,
    by_address: HashMap<usize, Encoded, Hasher>,
    /// What the entries hold (see [`DefsInner::count`]), kept as they are added.
    held: usize,
}

impl Defs {
    /// The definition `bytes` encode: one still in use when there is one, else decoded.
    fn shared(&self, bytes: &[u8]) -> Result<Arc<StepDef>, String> {
        if let Some(def) = self.lock().find(bytes) {
            return Ok(def);
        }
        let def = Arc::new(rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?);
        self.lock().add(&def, bytes);
        Ok(def)
    }

    /// The bytes `def` was encoded to before, if it was.
    fn encoded(&self, def: &Arc<StepDef>) -> Option<Arc<[u8]>> {
        let inner = self.lock();
        let (weak, bytes) = inner.by_address.get(&address(def))?;
        // The entry's weak reference keeps its allocation: the same address is the same
        // definition.
        (weak.as_ptr() == Arc::as_ptr(def)).then(|| bytes.clone())
    }

    /// Remembers that `def` was encoded as `bytes`.
    fn remember(&self, def: &Arc<StepDef>, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.add(def, bytes);
        if let Some((key, _)) = inner.by_bytes.get_key_value(bytes) {
            let key = key.clone();
            if inner
                .by_address
                .insert(address(def), (Arc::downgrade(def), key))
                .is_none()
            {
                inner.held += ENTRY;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DefsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DefsInner {
    fn find(&self, bytes: &[u8]) -> Option<Arc<StepDef>> {
        self.by_bytes.get(bytes)?.iter().find_map(Weak::upgrade)
    }

    /// Adds `def` as one definition `bytes` encode.
    fn add(&mut self, def: &Arc<StepDef>, bytes: &[u8]) {
        // Room for this entry, and for its address's when it was encoded (see `remember`).
        let needed = bytes.len() + 2 * ENTRY;
        if self.held + needed > DEFS_BYTES {
            self.by_bytes.retain(|_, defs| {
                defs.retain(|d| d.strong_count() > 0);
                !defs.is_empty()
            });
            self.by_address.retain(|_, (d, _)| d.strong_count() > 0);
            self.held = self.count();
            if self.held + needed > DEFS_BYTES {
                self.by_bytes.clear();
                self.by_address.clear();
                self.held = 0;
            }
        }
        let weak = Arc::downgrade(def);
        match self.by_bytes.get_mut(bytes) {
            Some(defs) => {
                let before = defs.len();
                defs.retain(|d| d.strong_count() > 0 && !d.ptr_eq(&weak));
                defs.push(weak);
                self.held = self.held + defs.len() * ENTRY - before * ENTRY;
            }
            None => {
                self.by_bytes.insert(bytes.into(), vec![weak]);
                self.held += bytes.len() + ENTRY;
            }
        }
    }

    /// What the entries hold, as [`DEFS_BYTES`] counts it.
    fn count(&self) -> usize {
        let by_bytes: usize = self
            .by_bytes
            .iter()
            .map(|(bytes, defs)| bytes.len() + defs.len() * ENTRY)
            .sum();
        by_bytes + self.by_address.len() * ENTRY
    }
}

fn address(def: &Arc<StepDef>) -> usize {
    Arc::as_ptr(def) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::event::Timestamp;
    use cairn_core::state::{Step, StepRecord, StepStatus};
    use serde_json::json;

    /// A state with a timestamp in every place a step and the plan keep one.
    fn state() -> PlanState {
        let mut state = PlanState::empty("p");
        state.created_at = Timestamp::from_micros(1_764_000_000_123_456);
        state.updated_at = Timestamp::from_micros(1_764_000_009_000_001);
        state.resume_at = Some(Timestamp::from_micros(1_764_000_100_000_000));
        state.seq = 7;
        state.steps = (0..20)
            .map(|n| {
                let mut rec = StepRecord::new();
                rec.status = StepStatus::Completed;
                rec.attempts = 1;
                rec.started_at = Some(Timestamp::from_micros(1_764_000_001_000_000 + n));
                rec.ended_at = Some(Timestamp::from_micros(1_764_000_002_000_000 + n));
                rec.retry_at = Some(Timestamp::from_micros(n));
                rec.output = Some(json!({"n": n}));
                Step {
                    def: serde_json::from_value(json!({
                        "step_id": format!("s{n}"), "action": "a", "agent_type": "builtin.echo",
                        "params": {"n": n}
                    }))
                    .unwrap(),
                    rec,
                }
            })
            .collect();
        state
    }

    #[test]
    fn binary_snapshots_hold_timestamps_as_integers_and_read_back_equal() {
        let state = state();
        let bytes = encode(&state).unwrap();
        assert_eq!(decode(&bytes).unwrap(), state);
        // No RFC 3339 text left in the snapshot (every timestamp above is in 2025).
        assert!(!bytes.windows(5).any(|w| w == b"2025-"));
    }

    #[test]
    fn binary_snapshots_with_timestamps_as_text_still_read() {
        // How the previous release wrote a binary snapshot: the same MessagePack map, with
        // every timestamp as its RFC 3339 text.
        let state = state();
        let as_text = serde_json::to_value(&state).unwrap();
        assert_eq!(as_text["created_at"], json!("2025-11-24T16:00:00.123456Z"));
        let mut older = vec![MSGPACK];
        rmp_serde::encode::write_named(&mut older, &as_text).unwrap();
        assert_eq!(decode(&older).unwrap(), state);
        // And JSON snapshots (releases before binary ones).
        assert_eq!(decode(&serde_json::to_vec(&state).unwrap()).unwrap(), state);
        // The integers are what makes the binary snapshot smaller.
        assert!(encode(&state).unwrap().len() < older.len());
    }

    #[test]
    fn whole_snapshots_of_the_release_before_still_read() {
        let state = state();
        let whole = encode_whole(&state).unwrap();
        assert_eq!(whole[0], MSGPACK);
        assert_eq!(decode(&whole).unwrap(), state);
        assert_eq!(encode(&state).unwrap()[0], PARTS);
    }

    #[test]
    fn definitions_are_shared_by_the_states_encoded_and_decoded() {
        // Step ids no other test uses: definitions are shared process-wide.
        let named = |prefix: &str| {
            let mut state = state();
            for step in state.steps.iter_mut() {
                let mut def = (*step.def).clone();
                def.step_id = format!("{prefix}-{}", def.step_id);
                step.def = Arc::new(def);
            }
            state
        };
        let state = named("shared");
        let bytes = encode(&state).unwrap();
        // Encoded again (its definitions copied, not encoded again): the same bytes.
        assert_eq!(encode(&state).unwrap(), bytes);
        let first = decode(&bytes).unwrap();
        let second = decode(&bytes).unwrap();
        assert_eq!(first, state);
        assert_eq!(second, state);
        for ((a, b), c) in first
            .steps
            .iter()
            .zip(second.steps.iter())
            .zip(state.steps.iter())
        {
            assert!(Arc::ptr_eq(&a.def, &b.def), "step {}", a.def.step_id);
            assert!(Arc::ptr_eq(&a.def, &c.def), "step {}", a.def.step_id);
        }
        // Once no state holds them, they are decoded afresh, equal.
        let weak: Vec<_> = state.steps.iter().map(|s| Arc::downgrade(&s.def)).collect();
        drop((first, second, state));
        assert!(weak.iter().all(|w| w.upgrade().is_none()));
        let again = decode(&bytes).unwrap();
        assert_eq!(again, named("shared"));
        // A definition changed (a new one, as an intervention makes) is encoded afresh.
        let mut changed = again.clone();
        let mut def = (*changed.steps[3].def).clone();
        def.action = "changed".into();
        changed.steps.get_mut(3).unwrap().def = Arc::new(def);
        let decoded = decode(&encode(&changed).unwrap()).unwrap();
        assert_eq!(decoded, changed);
        assert_eq!(decoded.steps[3].def.action, "changed");
    }

    #[test]
    fn the_definitions_kept_stay_within_their_bound() {
        let defs = Defs::default();
        let mut alive = Vec::new();
        for n in 0..30_000 {
            let def = Arc::new(StepDef::new(format!("bound-{n}"), "a", "builtin.echo"));
            let mut bytes = Vec::new();
            rmp_serde::encode::write_named(&mut bytes, &*def).unwrap();
            defs.remember(&def, &bytes);
            let inner = defs.lock();
            assert_eq!(inner.held, inner.count(), "after {n}");
            assert!(inner.held <= DEFS_BYTES, "after {n}");
            drop(inner);
            // One in three stays in use.
            if n % 3 == 0 {
                alive.push((def, bytes));
            }
        }
        // A definition in use whose entry survived is found by its bytes and its address.
        let inner = defs.lock();
        let kept = alive
            .iter()
            .filter(|(def, bytes)| inner.find(bytes).is_some_and(|d| Arc::ptr_eq(&d, def)))
            .count();
        assert!(kept > 0);
        drop(inner);
        let (def, bytes) = alive.last().unwrap();
        assert_eq!(defs.encoded(def).as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn snapshots_in_parts_that_do_not_add_up_are_refused() {
        let bytes = encode(&state()).unwrap();
        // Cut anywhere: an error, never a panic nor a state.
        for cut in [1, 3, 5, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A byte more after the last step.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("after"));
        // A count of steps the bytes cannot hold.
        let head = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let mut lying = bytes.clone();
        lying[5 + head..9 + head].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lying).unwrap_err().contains("steps"));
        // A state part that holds steps itself.
        let whole = encode_whole(&state()).unwrap();
        let mut inside = vec![PARTS];
        inside.extend_from_slice(&u32::try_from(whole.len() - 1).unwrap().to_le_bytes());
        inside.extend_from_slice(&whole[1..]);
        inside.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode(&inside).unwrap_err().contains("outside"));
    }
}
