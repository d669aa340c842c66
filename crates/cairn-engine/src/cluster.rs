//! Several engine nodes sharing one store: how a node reaches the node that owns a plan.
//!
//! A plan is driven by the node holding its lease. A command for a plan another node owns is
//! carried out by that node and answered with its result: the engine turns it into a
//! forwarding request (a JSON document it alone reads and writes), hands it to [`Peers`], and
//! the owner's engine answers it with [`crate::Engine::serve_forwarded`]. How the bytes travel
//! (HTTP between `cairn serve` nodes, a channel between two engines in one test process) is
//! the transport's business, never the engine's.
//!
//! The owner carries a request out only if it owns the plan or can claim it; otherwise it
//! answers "not owner, the owner is X" and the requester tries again, at X or here. When the
//! owner cannot be reached, the requester waits for its lease to run out, claims the plan itself
//! (recovering it as after a restart) and carries the request out: a caller never hears "not
//! owner". That wait is bounded by two lease periods and a margin; past it the caller hears
//! `StorageUnavailable`, naming the node that could not be reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::view::CheckpointSummary;
use cairn_core::{AttemptId, Command, Intervention, Invalid, PlanState, Refusal, StepResult};
use cairn_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Why a forwarding request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The node is not known, or cannot be reached now (gone, restarting, a timeout). The
    /// engine waits for its lease to run out and takes the plan over.
    #[error("node {node} cannot be reached: {reason}")]
    Unreachable { node: String, reason: String },
    /// The node answered but refused to serve the request (a bad secret, a build that does
    /// not know the request).
    #[error("node {node} refused a forwarded request: {reason}")]
    Refused { node: String, reason: String },
}

/// The way to the other nodes of a cluster.
#[async_trait]
pub trait Peers: Send + Sync + std::fmt::Debug + 'static {
    /// Delivers `request` (made by the engine) to node `owner`, whose engine answers it with
    /// [`crate::Engine::serve_forwarded`], and returns the bytes it answered.
    async fn forward(&self, owner: &str, request: Vec<u8>) -> Result<Vec<u8>, PeerError>;
}

/// What a node does for the cluster, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    /// Plans this node drives now (live actors; each holds the plan's lease).
    pub leases_held: u64,
    /// Plans this node took over after their owner's lease ran out.
    pub takeovers_total: u64,
    /// Requests this node forwarded to the owner of their plan and got an answer for.
    pub forwarded_total: u64,
    /// Forwarding attempts that got no answer (the owner unreachable or refusing).
    pub forward_failures_total: u64,
    /// Messages waiting in the mailboxes of this node's plan actors.
    pub inbox_depth: u64,
    /// Commands (and reads of live plans) admitted and not yet answered; at most
    /// [`crate::EngineOptions::max_queued_commands`].
    pub commands_queued: u64,
    /// Commands refused because that many were waiting already (`overloaded`, HTTP 429).
    pub overloaded_total: u64,
    /// Plans loaded from the store to be driven here (snapshot and log read), not counting
    /// takeovers nor plans started moments after their registration here, whose state was
    /// kept.
    pub plan_loads_total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) takeovers: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_failures: AtomicU64,
    pub(crate) loads: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The format name of forwarding requests; a node refuses any other.
const FORMAT: &str = "cairn.forward.v1";

/// A forwarding request as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    request: Request,
}

/// What a node asks the owner of a plan to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// A command for the plan's actor (start, pause, an intervention, a checkpoint, a claim …).
    Command {
        plan_id: String,
        /// Boxed (as `result` below): a request is held by every layer of its caller's
        /// future while it is carried out, and a command is 264 bytes. The wire form is the
        /// same (serde writes a box as its content).
        command: Box<Command>,
        actor: String,
    },
    /// An attempt's result that ran outside the engine (a remote worker's report). With
    /// `wait`, answered once it is committed.
    Outcome {
        plan_id: String,
        attempt: AttemptId,
        result: Box<StepResult>,
        wait: bool,
    },
    /// A fork of the plan from one of its checkpoints.
    Fork {
        plan_id: String,
        fork: Box<crate::actor::Fork>,
    },
    /// The deletion of the plan (refused while it runs).
    Delete { plan_id: String },
}

impl Request {
    pub(crate) fn plan_id(&self) -> &str {
        match self {
            Request::Command { plan_id, .. }
            | Request::Outcome { plan_id, .. }
            | Request::Fork { plan_id, .. }
            | Request::Delete { plan_id } => plan_id,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct EnvelopeRef<'a> {
            format: &'a str,
            request: &'a Request,
        }
        serde_json::to_vec(&EnvelopeRef {
            format: FORMAT,
            request: self,
        })
        .unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Request, String> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
        }
        let unreadable =
            |e: serde_json::Error| format!("the forwarded request is not readable: {e}");
        // The format first: a newer node's request is refused by its format, not its fields.
        let head: Head = serde_json::from_slice(bytes).map_err(unreadable)?;
        if head.format != FORMAT {
            return Err(format!(
                "the forwarded request's format is {:?}, this node reads {FORMAT}",
                head.format
            ));
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(unreadable)?;
        Ok(envelope.request)
    }
}

/// The owner's answer to a forwarded request, and the local result the requester hands on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Reply {
    /// A command's committed result.
    Done {
        #[serde(with = "shared")]
        state: Arc<PlanState>,
        intervention: Option<Box<Intervention>>,
        refusal: Option<Refusal>,
        /// The checkpoint the command took, if it took one.
        checkpoint: Option<CheckpointSummary>,
    },
    /// An outcome was committed (or, not waited for, handed to the plan's actor).
    Recorded,
    /// An outcome could not be committed now.
    NotRecorded { reason: String },
    /// An outcome was dropped: its plan is no longer driven (deleted).
    Dropped,
    /// The new plan of a fork.
    Forked { state: Box<PlanState> },
    /// The plan was deleted.
    Deleted,
    /// This node does not own the plan; `owner` does, as far as this node can tell.
    NotOwner { owner: String },
    /// The request was carried out and failed.
    Error { error: WireError },
}

impl Reply {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn of(result: Result<Reply, EngineError>) -> Reply {
        match result {
            Ok(reply) => reply,
            Err(EngineError::NotOwner { owner, .. }) => Reply::NotOwner { owner },
            Err(e) => Reply::Error {
                error: WireError::from(e),
            },
        }
    }
}

/// An [`EngineError`] as it travels between nodes: the same variant, refusal kind and recorded
/// intervention on both sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum WireError {
    PlanNotFound {
        plan_id: String,
    },
    CheckpointNotFound {
        plan_id: String,
        checkpoint_id: String,
    },
    PlanExists {
        plan_id: String,
    },
    VersionNotFound {
        plan_id: String,
        version: u64,
        known: String,
    },
    Invalid {
        invalid: Invalid,
    },
    Refused {
        refusal: Refusal,
        intervention: Option<Box<Intervention>>,
    },
    ShuttingDown,
    Corrupt {
        message: String,
    },
    StorageUnavailable {
        message: String,
    },
    /// The owner had too many commands waiting (see [`EngineError::Overloaded`]).
    Overloaded {
        limit: usize,
        retry_after_ms: u64,
    },
    Store {
        message: String,
    },
}

impl From<EngineError> for WireError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::PlanNotFound(plan_id) => WireError::PlanNotFound { plan_id },
            EngineError::CheckpointNotFound {
                plan_id,
                checkpoint_id,
            } => WireError::CheckpointNotFound {
                plan_id,
                checkpoint_id,
            },
            EngineError::PlanExists(plan_id) => WireError::PlanExists { plan_id },
            EngineError::VersionNotFound {
                plan_id,
                version,
                known,
            } => WireError::VersionNotFound {
                plan_id,
                version,
                known,
            },
            EngineError::Invalid(invalid) => WireError::Invalid { invalid },
            EngineError::Refused {
                refusal,
                intervention,
            } => WireError::Refused {
                refusal,
                intervention,
            },
            EngineError::ShuttingDown => WireError::ShuttingDown,
            EngineError::Corrupt(message) => WireError::Corrupt { message },
            EngineError::StorageUnavailable(message) => WireError::StorageUnavailable { message },
            EngineError::Overloaded {
                limit,
                retry_after_ms,
            } => WireError::Overloaded {
                limit,
                retry_after_ms,
            },
            // Handled by `Reply::of`; kept readable should it travel anyway.
            e @ EngineError::NotOwner { .. } => WireError::Store {
                message: e.to_string(),
            },
            EngineError::Store(e) => WireError::Store {
                message: e.to_string(),
            },
        }
    }
}

impl From<WireError> for EngineError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::PlanNotFound { plan_id } => EngineError::PlanNotFound(plan_id),
            WireError::CheckpointNotFound {
                plan_id,
                checkpoint_id,
            } => EngineError::CheckpointNotFound {
                plan_id,
                checkpoint_id,
            },
            WireError::PlanExists { plan_id } => EngineError::PlanExists(plan_id),
            WireError::VersionNotFound {
                plan_id,
                version,
                known,
            } => EngineError::VersionNotFound {
                plan_id,
                version,
                known,
            },
            WireError::Invalid { invalid } => EngineError::Invalid(invalid),
            WireError::Refused {
                refusal,
                intervention,
            } => EngineError::Refused {
                refusal,
                intervention,
            },
            WireError::ShuttingDown => EngineError::ShuttingDown,
            WireError::Corrupt { message } => EngineError::Corrupt(message),
            WireError::StorageUnavailable { message } => EngineError::StorageUnavailable(message),
            WireError::Overloaded {
                limit,
                retry_after_ms,
            } => EngineError::Overloaded {
                limit,
                retry_after_ms,
            },
            WireError::Store { message } => EngineError::Store(StoreError::Backend(message)),
        }
    }
}

/// A shared state travels as the state itself.
mod shared {
    use std::sync::Arc;

    use cairn_core::PlanState;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        state: &Arc<PlanState>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        (**state).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<PlanState>, D::Error> {
        PlanState::deserialize(d).map(Arc::new)
    }
}

/// How long a requester keeps trying to get a request carried out when the owner cannot be
/// reached: two lease periods (the owner's lease runs out within one, the takeover needs at
/// most one more) and a margin of at least 5 s (a node restarting under the same id, on a busy
/// machine, renews its leases only once it is up).
pub(crate) fn give_up_after(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms.saturating_mul(2) + (lease_ms / 2).max(5_000))
}

/// How often a requester looks at a lease it waits for, or asks again after a "not owner".
pub(crate) fn poll_period(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::RefusalKind;

    #[test]
    fn a_request_reads_back_as_written() {
        let request = Request::Command {
            plan_id: "p".into(),
            command: Box::new(Command::Pause {
                mode: cairn_core::PauseMode::Immediate,
                resume_at: Some(cairn_core::Timestamp::from_micros(5)),
                reason: Some("why".into()),
            }),
            actor: "ann".into(),
        };
        let back = Request::decode(&request.encode()).unwrap();
        match back {
            Request::Command {
                plan_id,
                command,
                actor,
            } => {
                assert_eq!(plan_id, "p");
                assert_eq!(actor, "ann");
                assert_eq!(
                    *command,
                    Command::Pause {
                        mode: cairn_core::PauseMode::Immediate,
                        resume_at: Some(cairn_core::Timestamp::from_micros(5)),
                        reason: Some("why".into()),
                    }
                );
            }
            other => panic!("read back as {other:?}"),
        }
    }

    /// Every command the engine sends, every intervention kind among them, reads back equal
    /// to what was written: what the owner decides is what the requester asked.
    #[test]
    fn every_command_kind_reads_back_as_written() {
        use serde_json::json;
        let definition = cairn_core::Plan::parse(
            "plan_id: p\nquery: q\nsteps:\n  - {step_id: a, action: x, agent_type: t, params: {n: 1.5}}\n",
            cairn_core::Format::Yaml,
        )
        .unwrap();
        let mut state = PlanState::empty("p");
        let ctx = cairn_core::Ctx {
            now: cairn_core::Timestamp::from_micros(1),
            actor: "ann",
        };
        let register = Command::Register {
            definition: definition.clone(),
            origin: None,
        };
        cairn_core::handle(&mut state, register.clone(), ctx).unwrap();
        let bodies = [
            json!({"type": "skip_step", "step_id": "a"}),
            json!({"type": "retry_step", "step_id": "a"}),
            json!({"type": "modify_step", "step_id": "a", "patch": {"params": {"n": 2}}}),
            json!({"type": "add_step", "step": {"step_id": "b", "action": "y", "agent_type": "t"}, "after": "a"}),
            json!({"type": "remove_step", "step_id": "a"}),
            json!({"type": "reorder_steps", "order": ["a"]}),
            json!({"type": "rerun_from", "step_id": "a"}),
            json!({"type": "approve_step", "step_id": "a", "attempt": 2, "output": {"ok": true}}),
            json!({"type": "reject_step", "step_id": "a", "attempt": 1, "retry": true, "reason": "no", "expected_version": 3, "dry_run": true}),
            json!({"type": "complete_step", "step_id": "a", "output": [1, "two", null]}),
        ];
        let mut commands: Vec<Command> = bodies
            .into_iter()
            .map(|b| Command::Intervene(cairn_core::InterventionRequest::from_body(b).unwrap()))
            .collect();
        commands.extend([
            register,
            Command::Register {
                definition,
                origin: Some(Box::new(cairn_core::event::Origin {
                    how: "fork".into(),
                    plan_id: "src".into(),
                    checkpoint_id: "cp-3".into(),
                    state: state.materialize(),
                })),
            },
            Command::Start { reason: None },
            Command::Resume {
                reason: Some("r".into()),
            },
            Command::Cancel {
                reason: None,
                rollback: false,
            },
            Command::Interrupt { reason: None },
            Command::Checkpoint {
                label: Some("l".into()),
                reason: None,
            },
            Command::Restore {
                checkpoint_id: "cp-1".into(),
                seq: 1,
                target: std::sync::Arc::new(state.clone()),
                reason: None,
            },
            Command::RecordFork {
                checkpoint_id: "cp-1".into(),
                new_plan_id: "q".into(),
                reason: None,
            },
            Command::Claim {
                attempt: AttemptId::step("a", 1),
                worker_id: "w".into(),
            },
            Command::Outcome {
                attempt: AttemptId::step("a", 1),
                result: StepResult::Completed {
                    output: json!({"x": 0.1, "y": [true]}),
                    scores: Some(serde_json::Map::from_iter([("q".into(), json!(0.25))])),
                },
            },
            Command::Outcome {
                attempt: AttemptId::step("a", 2),
                result: StepResult::Failed {
                    error: "boom".into(),
                    retryable: false,
                },
            },
            Command::Tick,
            Command::Recover,
        ]);
        for command in commands {
            let request = Request::Command {
                plan_id: "p".into(),
                command: Box::new(command.clone()),
                actor: "ann".into(),
            };
            match Request::decode(&request.encode()).unwrap() {
                Request::Command { command: back, .. } => assert_eq!(*back, command),
                other => panic!("read back as {other:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_format_or_garbage_is_refused_by_name() {
        let e = Request::decode(br#"{"format":"cairn.forward.v9","request":{}}"#).unwrap_err();
        assert!(e.contains("cairn.forward.v9"), "{e}");
        let e = Request::decode(b"not json").unwrap_err();
        assert!(e.contains("not readable"), "{e}");
    }

    #[test]
    fn a_refusal_keeps_its_kind_across_the_wire() {
        let err = EngineError::Refused {
            refusal: Refusal::new(RefusalKind::Invalid, "no such step"),
            intervention: None,
        };
        let reply = Reply::of(Err(err));
        let bytes = reply.encode();
        let back: Reply = serde_json::from_slice(&bytes).unwrap();
        let Reply::Error { error } = back else {
            panic!("not an error")
        };
        let e = EngineError::from(error);
        assert_eq!(e.refusal_kind(), Some(RefusalKind::Invalid));
        assert_eq!(e.to_string(), "no such step");
    }
}
