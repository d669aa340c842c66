//! Upcasters: each turns the stored data of one event from format `n` into format `n + 1`.
//!
//! An upcaster changes the shape of data, never its meaning: every old event keeps its `seq`,
//! type, actor and what it says, and no event is added or dropped. Logs of every format ever
//! written must keep reading, so an upcaster is never removed, only followed by the next one.

use serde_json::Value;

/// Upcasts `data` of an event of type `kind` from format `from` to `from + 1`.
pub fn step(from: u32, kind: &str, data: Value) -> Result<Value, String> {
    match from {
        1 => v1_to_v2(kind, data),
        _ => Err(format!("no upcaster from log format {from}")),
    }
}

/// Format 2 added the `effect` of `intervention_applied`, an optional field: a format-1 event
/// has the shape of a format-2 one without it, and the fold replays it with the frozen rules of
/// [`super::v1`]. Every other type is unchanged.
fn v1_to_v2(kind: &str, data: Value) -> Result<Value, String> {
    if kind == "intervention_applied" && data.get("effect").is_some() {
        // Nothing of format 1 had an effect; one here would be applied instead of the frozen
        // rules, so the event is not what it claims to be.
        return Err("a format-1 intervention_applied cannot carry an effect".into());
    }
    Ok(data)
}
