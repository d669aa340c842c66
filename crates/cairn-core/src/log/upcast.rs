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
        2 => v2_to_v3(kind, data),
        _ => Err(format!("no upcaster from log format {from}")),
    }
}

/// Whether upcasting an event of type `kind` from format `from` to the current one changes its
/// data (when it does not, the data is read straight into its type).
pub fn changes(from: u32, kind: &str) -> bool {
    from < 2 || (from < 3 && kind == "checkpoint_restored")
}

/// Format 3 records in `checkpoint_restored` only what the restore changes (see
/// [`crate::state::Restored`]); format 2 carried the checkpoint's whole state. Its steps become
/// changes that give every step's definition and record in full, in the checkpoint's order
/// (`order`), which replays as format 2 did. Every other type is unchanged.
fn v2_to_v3(kind: &str, mut data: Value) -> Result<Value, String> {
    if kind != "checkpoint_restored" {
        return Ok(data);
    }
    let restored = data
        .get_mut("restored")
        .and_then(Value::as_object_mut)
        .ok_or("a checkpoint_restored without its restored state")?;
    let steps = match restored.remove("steps") {
        Some(Value::Array(steps)) => steps,
        None => Vec::new(),
        Some(_) => return Err("restored.steps is not a list".into()),
    };
    let mut order = Vec::with_capacity(steps.len());
    let mut changes = Vec::with_capacity(steps.len());
    for step in steps {
        let Value::Object(mut step) = step else {
            return Err("a restored step is not an object".into());
        };
        let id = step
            .get("def")
            .and_then(|d| d.get("step_id"))
            .cloned()
            .ok_or("a restored step without def.step_id")?;
        order.push(id.clone());
        step.insert("step_id".into(), id);
        changes.push(Value::Object(step));
    }
    restored.insert("order".into(), Value::Array(order));
    restored.insert("steps".into(), Value::Array(changes));
    Ok(data)
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
