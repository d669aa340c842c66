//! Events between the core's types and the store's opaque rows.

use cairn_core::event::{CheckpointMark, CheckpointTrigger, Event, EventKind};
use cairn_store::{NewEvent, StoredEvent};

use crate::EngineError;

pub(crate) fn to_new(e: &Event) -> NewEvent {
    NewEvent {
        seq: e.seq,
        at: e.at.as_micros(),
        actor: e.actor.clone(),
        kind: e.kind.type_name().to_owned(),
        data: e.kind.data_json(),
        checkpoint: e.checkpoint.as_ref().map(|c| cairn_store::CheckpointMark {
            trigger: c.trigger.as_str().to_owned(),
            label: c.label.clone(),
        }),
    }
}

pub(crate) fn from_stored(e: StoredEvent) -> Result<Event, EngineError> {
    let kind = EventKind::from_parts(&e.kind, &e.data)
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
