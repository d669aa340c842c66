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
