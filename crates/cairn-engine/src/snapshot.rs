//! The encoding of store snapshots (a `PlanState` at some seq: see `Store::put_snapshot`).
//!
//! A snapshot is written as one tag byte, [`MSGPACK`], then the state in MessagePack with
//! field names (self-describing, so the `serde_json::Value` fields of a state round-trip, and
//! a field added later with a default still reads). Releases before this one wrote the state
//! as JSON text, whose first byte is `{`; such snapshots are read as JSON, so a database
//! written by an earlier release opens and reads its old snapshots unchanged. (An earlier
//! release reading a binary snapshot fails to parse it and replays from the plan's first
//! event, which gives the same state, only slower.)
//!
//! MessagePack is decoded faster than JSON (no text to scan for escapes, numbers in binary):
//! see "Binary store snapshots" in BENCHMARKS.md.
//!
//! Timestamps are MessagePack integers (microseconds: `Timestamp` writes its integer to a
//! format that is not human-readable), not RFC 3339 text, which costs 28 bytes and a parse
//! each (two or three per step). Binary snapshots of the release before hold the text; both
//! read back the same (`Timestamp` reads either), and so does that release read these.

use cairn_core::PlanState;

/// The first byte of a MessagePack snapshot (never the first byte of a JSON document).
pub const MSGPACK: u8 = 0x01;

/// `state` as stored: the tag byte, then MessagePack with field names.
pub fn encode(state: &PlanState) -> Result<Vec<u8>, String> {
    let mut out = vec![MSGPACK];
    rmp_serde::encode::write_named(&mut out, state).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A stored snapshot read back: MessagePack after the tag byte, or JSON as earlier releases
/// wrote it.
pub fn decode(bytes: &[u8]) -> Result<PlanState, String> {
    match bytes.split_first() {
        Some((&MSGPACK, rest)) => rmp_serde::from_slice(rest).map_err(|e| e.to_string()),
        Some(_) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        None => Err("an empty snapshot".into()),
    }
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
}
