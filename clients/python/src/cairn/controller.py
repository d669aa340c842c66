"""`OrchestrationController`: the prototype's API, run by a cairn server.

The prototype kept plans in its process; here every call goes to cairn, so plans are durable,
shared with the CLI and the dashboard, and audited. Its names and signatures are kept:

    controller = OrchestrationController("http://127.0.0.1:8080", token="cairn_…")
    controller.register_plan(plan["plan_id"], plan)
    result = await controller.execute_plan_async(plan["plan_id"], my_executor)

`execute_plan_async` makes this process a remote worker for the plan: cairn queues the steps
whose agent type has no executor on the server, and the controller long-polls for them, calls
`executor(step)` (sync or async), heartbeats while it runs, and reports the result. See
`Worker` for what an executor may return and raise.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Literal, Optional, Set, Union, overload

from .client import AsyncClient, Client
from .errors import ApiError, TransportError
from .types import (
    TERMINAL_STATES,
    CheckpointSummary,
    Event,
    InterventionRecord,
    PlanView,
    RollbackAnswer,
    Task,
)
from .worker import Executor, default_worker_id, serve

log = logging.getLogger("cairn.controller")

JSON = Any

#: Agent types the server always runs itself: never polled for.
BUILTIN_PREFIX = "builtin."


class OrchestrationState(str, Enum):
    """The six plan states."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class InterventionType(str, Enum):
    """The intervention types (the prototype's six, then cairn's)."""

    RETRY_STEP = "retry_step"
    SKIP_STEP = "skip_step"
    MODIFY_STEP = "modify_step"
    ADD_STEP = "add_step"
    REMOVE_STEP = "remove_step"
    REORDER_STEPS = "reorder_steps"
    RERUN_FROM = "rerun_from"
    APPROVE_STEP = "approve_step"
    REJECT_STEP = "reject_step"
    COMPLETE_STEP = "complete_step"
    UPGRADE = "upgrade"

    def __str__(self) -> str:
        return self.value


def _state(value: Any) -> Optional[OrchestrationState]:
    try:
        return OrchestrationState(value)
    except ValueError:
        return None


@dataclass
class Checkpoint:
    """A checkpoint: a position in the plan's log and the state it implies. The state fields
    (`step_index`, `completed_steps`, …, `plan_state`, `context`) are None on a checkpoint
    read from a list; `controller.get_checkpoint` reads them."""

    checkpoint_id: str
    plan_id: str
    seq: int
    trigger: str
    label: Optional[str]
    created_at: str
    step_index: Optional[int] = None
    completed_steps: Optional[List[str]] = None
    failed_steps: Optional[List[str]] = None
    skipped_steps: Optional[List[str]] = None
    plan_state: Optional[Dict[str, JSON]] = None
    context: Optional[Dict[str, JSON]] = None

    @property
    def timestamp(self) -> str:
        return self.created_at

    @classmethod
    def from_json(cls, v: Any) -> Checkpoint:
        return cls(
            checkpoint_id=v["checkpoint_id"],
            plan_id=v["plan_id"],
            seq=v["seq"],
            trigger=v["trigger"],
            label=v.get("label"),
            created_at=v["created_at"],
            step_index=v.get("step_index"),
            completed_steps=v.get("completed_steps"),
            failed_steps=v.get("failed_steps"),
            skipped_steps=v.get("skipped_steps"),
            plan_state=v.get("plan"),
            context=v.get("context"),
        )

    def to_dict(self) -> Dict[str, JSON]:
        d = asdict(self)
        d["timestamp"] = self.created_at
        return d


@dataclass
class Intervention:
    """An intervention's record: who (`user`, the token's user), what, when, whether it was
    applied, and the `diff` it made."""

    intervention_id: str
    plan_id: str
    intervention_type: Union[InterventionType, str]
    step_id: Optional[str]
    payload: Dict[str, JSON]
    user: str
    reason: Optional[str]
    created_at: str
    status: str
    error: Optional[str]
    plan_version: int
    diff: List[Dict[str, JSON]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def timestamp(self) -> str:
        return self.created_at

    @classmethod
    def from_json(cls, v: Any) -> Intervention:
        kind: Union[InterventionType, str]
        try:
            kind = InterventionType(v["type"])
        except ValueError:
            kind = str(v["type"])
        return cls(
            intervention_id=v.get("intervention_id", ""),
            plan_id=v["plan_id"],
            intervention_type=kind,
            step_id=v.get("step_id"),
            payload=v.get("payload") or {},
            user=v.get("user", ""),
            reason=v.get("reason"),
            created_at=v.get("created_at", ""),
            status=v.get("status", ""),
            error=v.get("error"),
            plan_version=v.get("plan_version", 0),
            diff=list(v.get("diff") or []),
            dry_run=bool(v.get("dry_run", False)),
        )

    def to_dict(self) -> Dict[str, JSON]:
        d = asdict(self)
        d["intervention_type"] = str(self.intervention_type)
        d["timestamp"] = self.created_at
        return d


@dataclass
class PlanSnapshot:
    """Everything about a plan at one moment, with the prototype's names. `snapshot_id` is
    `at-N`: the snapshot reflects the plan's log up to its N-th event."""

    snapshot_id: str
    plan_id: str
    plan: Dict[str, JSON]
    orchestration_state: OrchestrationState
    pause_reason: Optional[str]
    current_step_index: int
    completed_steps: List[str]
    failed_steps: List[str]
    skipped_steps: List[str]
    running_steps: List[str]
    steps: List[Dict[str, JSON]]
    checkpoints: List[Checkpoint]
    interventions: List[Intervention]
    version: int
    event_count: int
    timestamp: str
    raw: Dict[str, JSON] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, v: Any) -> PlanSnapshot:
        return cls(
            snapshot_id=f"at-{v['event_count']}",
            plan_id=v["plan_id"],
            plan=v["plan"],
            orchestration_state=OrchestrationState(v["state"]),
            pause_reason=v.get("pause_reason"),
            current_step_index=v["current_step_index"],
            completed_steps=list(v["completed_steps"]),
            failed_steps=list(v["failed_steps"]),
            skipped_steps=list(v["skipped_steps"]),
            running_steps=list(v.get("running_steps") or []),
            steps=list(v.get("steps") or []),
            checkpoints=[Checkpoint.from_json(c) for c in v.get("checkpoints") or []],
            interventions=[Intervention.from_json(i) for i in v.get("interventions") or []],
            version=v.get("version", 0),
            event_count=v.get("event_count", 0),
            timestamp=v.get("taken_at", ""),
            raw=dict(v),
        )

    def to_dict(self) -> Dict[str, JSON]:
        """The server's snapshot document, plus `snapshot_id`, `orchestration_state` and
        `timestamp`: plain JSON."""
        d = dict(self.raw)
        d["snapshot_id"] = self.snapshot_id
        d["orchestration_state"] = self.orchestration_state.value
        d["timestamp"] = self.timestamp
        return d


StateCallback = Callable[[str, Optional[OrchestrationState], OrchestrationState], Any]
CheckpointCallback = Callable[[Checkpoint], Any]
InterventionCallback = Callable[[Intervention], Any]


def next_state(event: Event, current: Optional[str]) -> Optional[str]:
    """The plan state an event leaves the plan in (None: unchanged)."""
    kind = event.get("type")
    data = event.get("data") or {}
    simple = {
        "plan_registered": "idle",
        "plan_started": "running",
        "plan_paused": "paused",
        "plan_resumed": "running",
        "plan_completed": "completed",
        "plan_failed": "failed",
        "plan_cancelled": "cancelled",
        "checkpoint_restored": "paused",
    }
    if kind in simple:
        if kind == "plan_registered" and current is not None:
            return None
        return simple[kind]
    if kind in ("rollback_completed", "rollback_failed") and data.get("then"):
        return str(data["then"])
    if kind == "rollback_started" and current in TERMINAL_STATES:
        return "running"
    if kind == "intervention_applied":
        for change in (data.get("intervention") or {}).get("diff") or []:
            if change.get("path") == "status" and isinstance(change.get("after"), str):
                return str(change["after"])
    return None


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - a user's callback must not stop the stream
        log.exception("callback %r raised", callback)


class _Watch:
    """One plan followed through its event stream, for the callbacks."""

    def __init__(self, plan_id: str, after: int, state: Optional[str]) -> None:
        self.plan_id = plan_id
        self.seq = after
        self.state = state
        self.task: Optional[asyncio.Task[None]] = None
        self.moved = asyncio.Condition() if _loop_running() else None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


class _Checkpoints:
    """`controller.checkpoints[plan_id]`: the plan's checkpoints, oldest first (read from the
    server each time)."""

    def __init__(self, controller: OrchestrationController) -> None:
        self._c = controller

    def __getitem__(self, plan_id: str) -> List[Checkpoint]:
        out: List[Checkpoint] = []
        cursor: Optional[str] = None
        while True:
            page = self._c.sync_client.list_checkpoints(plan_id, cursor=cursor, limit=500)
            out.extend(Checkpoint.from_json(c) for c in page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    def get(self, plan_id: str, default: Any = None) -> Any:
        try:
            return self[plan_id]
        except ApiError as e:
            if e.status == 404:
                return default
            raise


class OrchestrationController:
    """The prototype's controller, backed by a cairn server.

    `token` needs the admin role to both operate plans and serve their steps, or pass a
    worker-role token as `worker_token` and an operator token as `token`.
    """

    def __init__(
        self,
        server_url: str,
        token: Optional[str] = None,
        *,
        worker_token: Optional[str] = None,
        worker_id: Optional[str] = None,
        timeout: float = 30.0,
        poll_wait_ms: int = 1000,
        max_concurrency: int = 8,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.client = AsyncClient(self.server_url, token, timeout=timeout)
        self.sync_client = Client(self.server_url, token, timeout=timeout)
        self.worker_client = (
            AsyncClient(self.server_url, worker_token, timeout=timeout)
            if worker_token
            else self.client
        )
        self.worker_id = worker_id or default_worker_id("controller")
        self.poll_wait_ms = poll_wait_ms
        self.max_concurrency = max_concurrency
        self.checkpoints = _Checkpoints(self)
        #: `on_state_change(plan_id, old_state, new_state)`: states are `OrchestrationState`
        #: (old None when unknown). Sync or async. Fed by the plan's event stream, in order.
        self.on_state_change: Optional[StateCallback] = None
        #: `on_checkpoint(checkpoint)`: every checkpoint taken (automatic and manual).
        self.on_checkpoint: Optional[CheckpointCallback] = None
        #: `on_intervention(intervention)`: every intervention, applied or refused.
        self.on_intervention: Optional[InterventionCallback] = None
        self._watches: Dict[str, _Watch] = {}
        self._executors: Dict[str, Executor] = {}
        self._user: Optional[str] = None
        self._warned_users: Set[str] = set()

    # Lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stops following plans and closes the connections."""
        for w in self._watches.values():
            if w.task is not None:
                w.task.cancel()
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        await self.client.aclose()
        if self.worker_client is not self.client:
            await self.worker_client.aclose()
        self.sync_client.close()

    async def __aenter__(self) -> OrchestrationController:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # The prototype's synchronous calls -------------------------------------------------------

    def register_plan(self, plan_id: str, plan: Dict[str, JSON]) -> PlanView:
        """Registers the plan (idle). `plan_id` wins over the document's; a document naming
        another id is refused."""
        doc = dict(plan)
        if doc.get("plan_id") not in (None, plan_id):
            raise ValueError(f"plan_id {plan_id!r} differs from the document's {doc['plan_id']!r}")
        doc["plan_id"] = plan_id
        view = self.sync_client.create_plan(doc)
        self._follow(plan_id, after=view.get("last_seq", 0), state=view.get("state"))
        return view

    def get_state(self, plan_id: str) -> PlanView:
        """The plan's state (`state`, `pause_reason`, `completed_steps`, `total_steps`, …)."""
        return self.sync_client.get_plan(plan_id)

    def get_snapshot(self, plan_id: str) -> PlanSnapshot:
        """Everything about the plan now (`.plan`, `.orchestration_state`, `.completed_steps`,
        `.checkpoints`, `.interventions`, `.to_dict()`)."""
        return PlanSnapshot.from_json(self.sync_client.snapshot(plan_id))

    # Async reads -----------------------------------------------------------------------------

    async def get_state_async(self, plan_id: str) -> PlanView:
        return await self.client.get_plan(plan_id)

    async def get_snapshot_async(self, plan_id: str) -> PlanSnapshot:
        return PlanSnapshot.from_json(await self.client.snapshot(plan_id))

    async def get_checkpoint(self, plan_id: str, checkpoint_id: str) -> Checkpoint:
        """A checkpoint with the state it implies."""
        return Checkpoint.from_json(await self.client.get_checkpoint(plan_id, checkpoint_id))

    async def list_reviews(
        self, plan_id: Optional[str] = None, state: Optional[str] = "open"
    ) -> List[Dict[str, JSON]]:
        """Reviews waiting for a decision (or `state="closed"`), of one plan or all."""
        out: List[Dict[str, JSON]] = []
        cursor: Optional[str] = None
        while True:
            page = await self.client.list_reviews(
                state=state, plan_id=plan_id, cursor=cursor, limit=500
            )
            out.extend(dict(r) for r in page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    # Execution -------------------------------------------------------------------------------

    async def execute_plan_async(
        self,
        plan_id: str,
        executor: Executor,
        *,
        start: bool = True,
        timeout: Optional[float] = None,
    ) -> PlanView:
        """Starts the plan (when idle) and serves its steps with `executor(step)` until the plan
        has ended (completed, failed or cancelled); answers its final state.

        The controller polls for the agent types of the plan's steps (all but `builtin.*`); the
        server hands it the steps it has no executor of its own for. Steps run concurrently
        up to `max_concurrency` (and the plan's `max_parallel`). A paused plan waits for its
        resume. `timeout` (seconds) bounds the whole call (`asyncio.TimeoutError`); the plan
        goes on on the server. Called on a plan already running or paused, it serves the rest.
        """
        self._executors[plan_id] = executor
        try:
            coro = self._execute(plan_id, start)
            if timeout is None:
                return await coro
            return await asyncio.wait_for(coro, timeout)
        finally:
            self._executors.pop(plan_id, None)

    async def _execute(self, plan_id: str, start: bool) -> PlanView:
        view = await self.client.get_plan(plan_id)
        self._follow(plan_id, after=view.get("last_seq", 0), state=view.get("state"))
        self._start_watches()
        if view.get("state") == "idle" and start:
            view = await self.client.start_plan(plan_id)
        types: List[str] = self._agent_types(view)
        done = asyncio.Event()

        async def watch_end() -> None:
            nonlocal types
            try:
                await follow_to_end()
            finally:
                done.set()

        async def follow_to_end() -> None:
            nonlocal types
            while True:
                try:
                    async for event in self.client.stream_events(plan_id, after=view.get("last_seq")):
                        if event.get("type") in ("intervention_applied", "plan_resumed", "checkpoint_restored"):
                            types = self._agent_types(await self.client.get_plan(plan_id))
                    latest = await self.client.get_plan(plan_id)
                except TransportError:
                    await asyncio.sleep(0.2)
                    continue
                types = self._agent_types(latest)
                if latest.get("state") in TERMINAL_STATES:
                    return

        ender = asyncio.ensure_future(watch_end())
        try:
            await serve(
                self.worker_client,
                self.worker_id,
                lambda: types,
                self._route,
                done,
                concurrency=self.max_concurrency,
                poll_wait_ms=self.poll_wait_ms,
                plan_ids=lambda: [plan_id],
            )
            await ender
        finally:
            ender.cancel()
        final = await self.client.get_plan(plan_id)
        await self._caught_up(plan_id, final.get("last_seq", 0))
        return final

    def _agent_types(self, view: PlanView) -> List[str]:
        types = {
            s["agent_type"]
            for s in view.get("steps") or []
            if not s["agent_type"].startswith(BUILTIN_PREFIX)
        }
        return sorted(types)

    def _route(self, task: Task) -> Optional[Executor]:
        return self._executors.get(task.get("plan_id", ""))

    # Control ---------------------------------------------------------------------------------

    async def pause_plan(
        self,
        plan_id: str,
        *,
        reason: Optional[str] = None,
        mode: Optional[str] = None,
        resume_at: Optional[str] = None,
    ) -> PlanView:
        """Pauses a running plan: no step starts after this returns (steps running finish,
        unless `mode="immediate"`). `ConflictError` when the plan is not running."""
        self._start_watches()
        return await self.client.pause_plan(plan_id, reason=reason, mode=mode, resume_at=resume_at)

    async def resume_plan(self, plan_id: str, *, reason: Optional[str] = None) -> PlanView:
        """Resumes a paused plan."""
        self._start_watches()
        return await self.client.resume_plan(plan_id, reason=reason)

    @overload
    async def cancel_plan(
        self, plan_id: str, *, reason: Optional[str] = None, rollback: Literal[False] = False
    ) -> PlanView: ...

    @overload
    async def cancel_plan(
        self,
        plan_id: str,
        *,
        reason: Optional[str] = None,
        rollback: Literal[True],
        dry_run: bool = False,
    ) -> RollbackAnswer: ...

    @overload
    async def cancel_plan(
        self, plan_id: str, *, reason: Optional[str] = None, rollback: bool, dry_run: bool = False
    ) -> Union[PlanView, RollbackAnswer]: ...

    async def cancel_plan(
        self,
        plan_id: str,
        *,
        reason: Optional[str] = None,
        rollback: bool = False,
        dry_run: bool = False,
    ) -> Union[PlanView, RollbackAnswer]:
        """Cancels an idle, running or paused plan; answers its state. `rollback=True` rolls
        back what it did first (compensations, newest start first; the plan ends `cancelled`)
        and answers a `RollbackAnswer` (`dry_run=True`: what it would run, nothing changed)."""
        self._start_watches()
        return await self.client.cancel_plan(
            plan_id, reason=reason, rollback=rollback, dry_run=dry_run
        )

    async def rollback_plan(
        self, plan_id: str, *, dry_run: bool = False, reason: Optional[str] = None
    ) -> RollbackAnswer:
        """Rolls back a failed or cancelled plan, or continues a rollback that failed; answers
        the compensations in order and the plan's state (`dry_run=True`: what it would run,
        nothing changed)."""
        if not dry_run:
            self._start_watches()
        return await self.client.rollback_plan(plan_id, dry_run=dry_run, reason=reason)

    async def restore_from_checkpoint(
        self, plan_id: str, checkpoint_id: str, *, reason: Optional[str] = None
    ) -> PlanView:
        """Rewinds a plan that is not running to a checkpoint; it is then paused (`restored`):
        `resume_plan` continues it (with `execute_plan_async` serving its steps)."""
        self._start_watches()
        return await self.client.restore_checkpoint(plan_id, checkpoint_id, reason=reason)

    async def create_checkpoint(self, plan_id: str, label: Optional[str] = None) -> Checkpoint:
        """Takes a manual checkpoint."""
        summary: CheckpointSummary = await self.client.create_checkpoint(plan_id, label=label)
        return Checkpoint.from_json(summary)

    async def fork_from_checkpoint(
        self, plan_id: str, checkpoint_id: str, new_plan_id: Optional[str] = None
    ) -> PlanView:
        """A new plan, paused, whose state is the checkpoint's."""
        return await self.client.fork_checkpoint(plan_id, checkpoint_id, new_plan_id=new_plan_id)

    # Interventions ---------------------------------------------------------------------------

    async def skip_step(
        self,
        plan_id: str,
        step_id: str,
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
        compensation: bool = False,
    ) -> Intervention:
        """Skips a pending, failed or awaiting_review step (`compensation=True`: the step's
        compensation, in a rollback that stopped on it; the rollback goes on)."""
        await self._check_user(user)
        rec = await self.client.skip_step(
            plan_id, step_id, compensation=compensation, reason=reason,
            expected_version=expected_version, dry_run=dry_run,
        )
        return Intervention.from_json(rec)

    async def retry_step(
        self,
        plan_id: str,
        step_id: str,
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
        compensation: bool = False,
    ) -> Intervention:
        """Runs a failed, cancelled or completed step again (a new run); `compensation=True`
        runs its failed compensation again and the rollback goes on."""
        await self._check_user(user)
        rec = await self.client.retry_step(
            plan_id, step_id, compensation=compensation, reason=reason,
            expected_version=expected_version, dry_run=dry_run,
        )
        return Intervention.from_json(rec)

    async def modify_step(
        self,
        plan_id: str,
        step_id: str,
        modifications: Dict[str, JSON],
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Merge-patches a pending, failed or awaiting_review step (`params`, `action`,
        `agent_type`, `retry`, `timeout_ms`, `when`, `depends_on`, …)."""
        await self._check_user(user)
        rec = await self.client.modify_step(
            plan_id, step_id, modifications, reason=reason,
            expected_version=expected_version, dry_run=dry_run,
        )
        return Intervention.from_json(rec)

    async def add_step(
        self,
        plan_id: str,
        step: Dict[str, JSON],
        insert_after: Optional[str] = None,
        user: Optional[str] = None,
        *,
        insert_before: Optional[str] = None,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Adds a step after `insert_after` (or before `insert_before`; neither: at the end)."""
        await self._check_user(user)
        rec = await self.client.add_step(
            plan_id, step, after=insert_after, before=insert_before, reason=reason,
            expected_version=expected_version, dry_run=dry_run,
        )
        return Intervention.from_json(rec)

    async def remove_step(
        self,
        plan_id: str,
        step_id: str,
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Removes a pending step no other step explicitly depends on."""
        await self._check_user(user)
        rec = await self.client.remove_step(
            plan_id, step_id, reason=reason, expected_version=expected_version, dry_run=dry_run
        )
        return Intervention.from_json(rec)

    async def reorder_steps(
        self,
        plan_id: str,
        new_order: List[str],
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Puts the pending steps in `new_order` (every pending step id, once)."""
        await self._check_user(user)
        rec = await self.client.reorder_steps(
            plan_id, new_order, reason=reason, expected_version=expected_version, dry_run=dry_run
        )
        return Intervention.from_json(rec)

    async def rerun_from(
        self,
        plan_id: str,
        step_id: str,
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Runs an ended step and everything downstream of it again."""
        await self._check_user(user)
        rec = await self.client.rerun_from(
            plan_id, step_id, reason=reason, expected_version=expected_version, dry_run=dry_run
        )
        return Intervention.from_json(rec)

    async def complete_step(
        self,
        plan_id: str,
        step_id: str,
        output: JSON = None,
        user: Optional[str] = None,
        *,
        reason: Optional[str] = None,
        expected_version: Optional[int] = None,
        dry_run: bool = False,
    ) -> Intervention:
        """Completes a step with `output`, as if its agent had answered."""
        await self._check_user(user)
        rec = await self.client.complete_step(
            plan_id, step_id, output, reason=reason, expected_version=expected_version,
            dry_run=dry_run,
        )
        return Intervention.from_json(rec)

    async def approve_step(
        self,
        plan_id: str,
        step_id: str,
        user: Optional[str] = None,
        *,
        attempt: Optional[int] = None,
        output: JSON = None,
        reason: Optional[str] = None,
    ) -> Intervention:
        """Approves the attempt under review (a vote, under a quorum)."""
        await self._check_user(user)
        rec = await self.client.approve_step(
            plan_id, step_id, attempt=attempt, output=output, reason=reason
        )
        return Intervention.from_json(rec)

    async def reject_step(
        self,
        plan_id: str,
        step_id: str,
        reason: str,
        user: Optional[str] = None,
        *,
        attempt: Optional[int] = None,
        retry: bool = False,
    ) -> Intervention:
        """Rejects the attempt under review: the step fails, or with `retry` runs again with
        `reason` as its feedback."""
        await self._check_user(user)
        rec = await self.client.reject_step(plan_id, step_id, reason, attempt=attempt, retry=retry)
        return Intervention.from_json(rec)

    async def _check_user(self, user: Optional[str]) -> None:
        """cairn records the token's user; a different `user=` is said once, not sent."""
        self._start_watches()
        if user is None or user in self._warned_users:
            return
        if self._user is None:
            self._user = (await self.client.whoami())["user"]
        if user != self._user:
            self._warned_users.add(user)
            warnings.warn(
                f"cairn records interventions under the token's user {self._user!r}, "
                f"not user={user!r}: create a token for that user to have it recorded",
                stacklevel=3,
            )

    # Callbacks: each known plan's event stream -----------------------------------------------

    def _follow(self, plan_id: str, *, after: int, state: Optional[str]) -> None:
        if plan_id not in self._watches:
            self._watches[plan_id] = _Watch(plan_id, after, state)
        self._start_watches()

    def _start_watches(self) -> None:
        if not _loop_running():
            return
        for w in self._watches.values():
            if w.task is None:
                if w.moved is None:
                    w.moved = asyncio.Condition()
                w.task = asyncio.ensure_future(self._watch(w))

    async def _watch(self, w: _Watch) -> None:
        while True:
            try:
                async for event in self.client.stream_events(w.plan_id, after=w.seq, follow=True):
                    await self._dispatch(w, event)
                    w.seq = int(event.get("seq", w.seq))
                    if w.moved is not None:
                        async with w.moved:
                            w.moved.notify_all()
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 404:
                    log.info("plan %s is gone; no more callbacks for it", w.plan_id)
                    return
                log.warning("event stream of plan %s refused (%s); trying again", w.plan_id, e)
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - keep following whatever broke
                log.exception("event stream of plan %s broke; resuming", w.plan_id)
                await asyncio.sleep(0.5)

    async def _dispatch(self, w: _Watch, event: Event) -> None:
        new = next_state(event, w.state)
        if new is not None and new != w.state:
            old, w.state = w.state, new
            new_state = _state(new)
            if self.on_state_change is not None and new_state is not None:
                await _call(self.on_state_change, w.plan_id, _state(old), new_state)
        if event.get("type") in ("intervention_applied", "intervention_failed"):
            record: Optional[InterventionRecord] = (event.get("data") or {}).get("intervention")
            if record and self.on_intervention is not None:
                await _call(self.on_intervention, Intervention.from_json(record))
        mark = event.get("checkpoint")
        if mark and self.on_checkpoint is not None:
            cid = f"cp-{event['seq']}"
            try:
                cp = Checkpoint.from_json(await self.client.get_checkpoint(w.plan_id, cid))
            except (ApiError, TransportError):
                cp = Checkpoint(
                    checkpoint_id=cid,
                    plan_id=w.plan_id,
                    seq=int(event["seq"]),
                    trigger=str(mark.get("trigger")),
                    label=mark.get("label"),
                    created_at=str(event.get("at", "")),
                )
            await _call(self.on_checkpoint, cp)

    async def _caught_up(self, plan_id: str, seq: int, timeout: float = 10.0) -> None:
        """Waits (bounded) until the callbacks have seen the plan's log up to `seq`."""
        w = self._watches.get(plan_id)
        if w is None or w.task is None or w.moved is None:
            return
        moved = w.moved

        async def reached() -> None:
            async with moved:
                await moved.wait_for(lambda: w.seq >= seq or (w.task is not None and w.task.done()))

        try:
            await asyncio.wait_for(reached(), timeout)
        except asyncio.TimeoutError:
            log.warning("callbacks of plan %s are behind (seq %s of %s)", plan_id, w.seq, seq)

    async def wait_for_callbacks(self, plan_id: str, timeout: float = 10.0) -> None:
        """Waits (bounded) until the callbacks have been called for everything the plan's log
        holds now."""
        self._start_watches()
        view = await self.client.get_plan(plan_id)
        if plan_id not in self._watches:
            return
        await self._caught_up(plan_id, view.get("last_seq", 0), timeout)

