//! What the engine answers when it cannot do what was asked. No HTTP here: the server maps these
//! to status codes.

use cairn_core::{Intervention, Invalid, Refusal, RefusalKind};
use cairn_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("plan {0} not found")]
    PlanNotFound(String),
    #[error("checkpoint {checkpoint_id} not found in plan {plan_id}")]
    CheckpointNotFound {
        plan_id: String,
        checkpoint_id: String,
    },
    /// The plan exists but never had this version of its definition.
    #[error("plan {plan_id} has no version {version} (its versions: {known})")]
    VersionNotFound {
        plan_id: String,
        version: u64,
        /// The versions it has, e.g. `1-3, 5`.
        known: String,
    },
    #[error("plan {0} already exists")]
    PlanExists(String),
    /// The document or request is malformed (HTTP 422).
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// The plan's state does not allow it (409) or the request would make it invalid (422).
    #[error("{refusal}")]
    Refused {
        refusal: Refusal,
        /// The recorded refused intervention, when the command was one.
        intervention: Option<Box<Intervention>>,
    },
    /// Another engine node drives the plan. With [`crate::EngineOptions::peers`] the engine
    /// forwards the command to `owner` instead, so callers of a clustered engine never see this.
    #[error("plan {plan_id} is being driven by engine node {owner}")]
    NotOwner { plan_id: String, owner: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot take writes now (a full disk, an I/O error); nothing was changed. The
    /// same request may succeed once the cause is gone.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// Too many commands are waiting to be decided ([`crate::EngineOptions::max_queued_commands`]):
    /// this one was refused before it reached a plan, so nothing was changed. The same request
    /// may succeed after `retry_after_ms` (HTTP 429 with `Retry-After`).
    #[error("the engine is overloaded: {limit} commands are waiting to be decided, its limit; nothing was changed, try again in {retry_after_ms} ms")]
    Overloaded { limit: usize, retry_after_ms: u64 },
    #[error(transparent)]
    Store(StoreError),
}

impl From<Refusal> for EngineError {
    fn from(refusal: Refusal) -> Self {
        EngineError::Refused {
            refusal,
            intervention: None,
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => EngineError::PlanNotFound(id),
            StoreError::AlreadyExists(id) => EngineError::PlanExists(id),
            StoreError::Fenced { plan_id, owner }
            | StoreError::LeaseHeld { plan_id, owner, .. } => {
                EngineError::NotOwner { plan_id, owner }
            }
            StoreError::Unavailable(why) => EngineError::StorageUnavailable(why),
            other => EngineError::Store(other),
        }
    }
}

impl EngineError {
    /// Is this the caller's fault (a 4xx), rather than the engine's or the store's?
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            EngineError::Store(_)
                | EngineError::Corrupt(_)
                | EngineError::ShuttingDown
                | EngineError::StorageUnavailable(_)
                | EngineError::Overloaded { .. }
        )
    }

    pub fn refusal_kind(&self) -> Option<RefusalKind> {
        match self {
            EngineError::Refused { refusal, .. } => Some(refusal.kind),
            _ => None,
        }
    }
}
