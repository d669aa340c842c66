//! Events between the core's types and the store's opaque rows.

use cairn_core::event::{CheckpointMark, CheckpointTrigger, Event};
use cairn_store::{NewEvent, StoredEvent};

use crate::EngineError;

pub(crate) fn to_new(e: &Event) -> NewEvent {
    let encoded = cairn_core::log::encode(&e.kind);
    NewEvent {
        seq: e.seq,
        at: e.at.as_micros(),
        actor: e.actor.clone(),
        kind: encoded.kind.to_owned(),
        data: encoded.data,
        format: encoded.format,
        checkpoint: e.checkpoint.as_ref().map(|c| cairn_store::CheckpointMark {
            trigger: c.trigger.as_str().to_owned(),
            label: c.label.clone(),
        }),
    }
}

pub(crate) fn from_stored(e: StoredEvent) -> Result<Event, EngineError> {
    // Every format this build knows is upcast to the current one; a newer one is refused by name.
    let kind = cairn_core::log::decode(&e.kind, e.format, &e.data)
        .map_err(|m| EngineError::Corrupt(format!("plan {} event {}: {m}", e.plan_id, e.seq)))?;
    let checkpoint = match e.checkpoint {
        None => None,
        Some(c) => Some(CheckpointMark {
            trigger: CheckpointTrigger::parse(&c.trigger).ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "plan {} event {}: unknown checkpoint trigger {:?}",
                    e.plan_id, e.seq, c.trigger
                ))
            })?,
            label: c.label,
        }),
    };
    Ok(Event {
        id: e.id,
        seq: e.seq,
        plan_id: e.plan_id,
        at: cairn_core::Timestamp::from_micros(e.at),
        actor: e.actor,
        kind,
        checkpoint,
    })
}
