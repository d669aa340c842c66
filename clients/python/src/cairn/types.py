"""Typed shapes of the JSON the cairn HTTP API answers (docs/openapi.json is the contract).

They are `TypedDict`s: the values are the server's JSON objects, so every field the server
adds later is still there, and `json.dumps` works on them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Generic, List, Optional, TypeVar

from typing import Literal, TypedDict

JSON = Any
T = TypeVar("T")

PlanStatus = Literal["idle", "running", "paused", "completed", "failed", "cancelled"]
PauseReason = Literal["operator", "review_required", "restored", "intervention", "breakpoint"]
StepStatus = Literal[
    "pending",
    "queued",
    "running",
    "completed",
    "failed",
    "skipped",
    "awaiting_review",
    "cancelled",
]
Role = Literal["viewer", "operator", "admin", "worker"]
CompensationStatus = Literal["pending", "running", "completed", "failed", "skipped"]
RollbackStatus = Literal["running", "completed", "failed"]

#: The states a plan never leaves by itself.
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Page(Generic[T]):
    """One page of a list: `items`, and `next_cursor` to ask for the next (None on the last)."""

    items: List[T]
    next_cursor: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


class CompensationView(TypedDict, total=False):
    """A step's compensation, once a rollback included it (`StepView.compensation`)."""

    status: CompensationStatus
    attempts: int
    output: Optional[Dict[str, JSON]]
    error: Optional[str]
    retry_at: Optional[str]


class RollbackView(TypedDict, total=False):
    """A plan's rollback (`PlanView.rollback`): steps compensated (in the order they ran),
    steps still to compensate (next first), and the state the plan takes at the end."""

    status: RollbackStatus
    done: List[str]
    pending: List[str]
    then: Literal["failed", "cancelled"]


class StepView(TypedDict, total=False):
    step_id: str
    action: str
    agent_type: str
    status: StepStatus
    attempts: int
    run: int
    depends_on: List[str]
    started_at: Optional[str]
    ended_at: Optional[str]
    error: Optional[str]
    retry_at: Optional[str]
    waiting_for: Optional[str]
    compensation: Optional[CompensationView]


class PlanView(TypedDict, total=False):
    """`GET /v1/plans/{id}`: a plan's state."""

    plan_id: str
    query: str
    state: PlanStatus
    pause_reason: Optional[PauseReason]
    version: int
    total_steps: int
    current_step_index: int
    completed_steps: List[str]
    failed_steps: List[str]
    skipped_steps: List[str]
    running_steps: List[str]
    queued_steps: List[str]
    steps: List[StepView]
    created_at: str
    updated_at: str
    resume_at: Optional[str]
    failure: Optional[str]
    last_seq: int
    inputs: Dict[str, JSON]
    template: Optional[Dict[str, JSON]]
    warnings: List[str]
    rollback: Optional[RollbackView]


class PlannedCompensation(TypedDict):
    """One compensation a rollback runs: the step it undoes, its action and agent type."""

    step_id: str
    action: str
    agent_type: str


class RollbackAnswer(TypedDict):
    """What `rollback_plan` and `cancel_plan(..., rollback=True)` answer: the compensations
    the rollback runs (a dry run: would run), in order, and the plan's state afterwards
    (unchanged by a dry run)."""

    dry_run: bool
    compensations: List[PlannedCompensation]
    plan: PlanView


class PlanSummary(TypedDict, total=False):
    """A plan as listed by `GET /v1/plans`."""

    plan_id: str
    query: str
    state: PlanStatus
    pause_reason: Optional[PauseReason]
    version: int
    progress: Dict[str, int]
    created_at: str
    updated_at: str
    resume_at: Optional[str]
    last_seq: int


class Change(TypedDict):
    path: str
    before: JSON
    after: JSON


class InterventionRecord(TypedDict, total=False):
    """An intervention as the server records it (applied, refused, or a dry run's answer)."""

    intervention_id: str
    plan_id: str
    type: str
    step_id: Optional[str]
    payload: Dict[str, JSON]
    user: str
    reason: Optional[str]
    created_at: str
    status: Literal["applied", "failed", "would_apply", "would_fail"]
    error: Optional[str]
    plan_version: int
    diff: List[Change]
    dry_run: bool


class CheckpointSummary(TypedDict, total=False):
    checkpoint_id: str
    plan_id: str
    seq: int
    trigger: Literal["initial", "step", "pause", "manual", "intervention"]
    label: Optional[str]
    created_at: str


class CheckpointView(CheckpointSummary, total=False):
    """A checkpoint with the state it implies."""

    step_index: int
    completed_steps: List[str]
    failed_steps: List[str]
    skipped_steps: List[str]
    plan: Dict[str, JSON]
    context: Dict[str, JSON]


class SnapshotView(TypedDict, total=False):
    """`GET /v1/plans/{id}/snapshot`: everything about a plan, with the prototype's names."""

    plan_id: str
    plan: Dict[str, JSON]
    version: int
    state: PlanStatus
    pause_reason: Optional[PauseReason]
    resume_at: Optional[str]
    total_steps: int
    current_step_index: int
    completed_steps: List[str]
    failed_steps: List[str]
    skipped_steps: List[str]
    running_steps: List[str]
    steps: List[Dict[str, JSON]]
    checkpoints: List[CheckpointSummary]
    interventions: List[InterventionRecord]
    event_count: int
    created_at: str
    updated_at: str
    taken_at: str


class Event(TypedDict, total=False):
    """One entry of a plan's log: `id` is global, `seq` is the plan's (contiguous from 1)."""

    id: int
    seq: int
    plan_id: str
    type: str
    at: str
    actor: str
    data: Dict[str, JSON]
    checkpoint: Optional[Dict[str, JSON]]


class Task(TypedDict, total=False):
    """One attempt of one step as a worker gets it (`POST /v1/tasks/poll`)."""

    task_id: str
    lease_ms: int
    plan_id: str
    step_id: str
    kind: str
    action: str
    agent_type: str
    params: JSON
    attempt: int
    run: int
    idempotency_key: str
    timeout_ms: Optional[int]
    query: str
    gate_feedback: Optional[Dict[str, JSON]]


class HeartbeatAnswer(TypedDict):
    lease_ms: int
    stop: bool


class Review(TypedDict, total=False):
    review_id: str
    plan_id: str
    step_id: str
    attempt: int
    scores: Dict[str, float]
    failed: List[Dict[str, JSON]]
    output: JSON
    quorum: int
    votes: List[Dict[str, JSON]]
    deadline: Optional[str]
    state: Literal["open", "closed"]
    outcome: Optional[JSON]
    opened_at: str
    closed_at: Optional[str]


class TemplateVersion(TypedDict, total=False):
    name: str
    version: int
    description: Optional[str]
    parameters: JSON
    plan: Dict[str, JSON]
    created_at: str
    created_by: str
    deleted_at: Optional[str]
    created: bool


class TemplateDetail(TypedDict, total=False):
    latest: TemplateVersion
    versions: List[Dict[str, JSON]]


class TokenInfo(TypedDict, total=False):
    id: str
    user: str
    role: Role
    created_at: str
    revoked_at: Optional[str]
    expires_at: Optional[str]


class NewToken(TokenInfo, total=False):
    token: str


class WhoAmI(TypedDict):
    user: str
    role: Role
