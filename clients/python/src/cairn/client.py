"""The low-level clients: every route of the cairn HTTP API (the WebSocket's events come by SSE), sync (`Client`) and async
(`AsyncClient`), with the same methods and the same typed answers.

    from cairn import Client
    with Client("http://127.0.0.1:8080", token="cairn_…") as c:
        plan = c.create_plan({"plan_id": "p1", "steps": [...]})
        c.start_plan("p1")

Errors the server answers are raised as `ApiError` subclasses carrying `status`, `code` and
`message`. Requests are retried only where that is safe: any request whose connection could not
be opened (nothing was sent), and reads (GET) whose connection broke or that were answered 429,
502, 503 or 504. Timeouts are the client's `timeout` (seconds, or an `httpx.Timeout`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Optional,
    TypeVar,
    Union,
    overload,
)

import httpx

from . import _http as h
from ._http import Req, compact, seg
from .errors import ApiError, TransportError
from .types import (
    TERMINAL_STATES,
    CheckpointSummary,
    CheckpointView,
    Event,
    HeartbeatAnswer,
    InterventionRecord,
    NewToken,
    Page,
    PlanSummary,
    PlanView,
    Review,
    RollbackAnswer,
    SnapshotView,
    Task,
    TemplateDetail,
    TemplateVersion,
    TokenInfo,
    WhoAmI,
)

if TYPE_CHECKING:
    from typing_extensions import Concatenate, ParamSpec

    P = ParamSpec("P")

T = TypeVar("T")
JSON = Any
USER_AGENT = "cairn-python/0.1.0"
DEFAULT_TIMEOUT = 30.0

# ---------------------------------------------------------------------------------------------
# The endpoints, as request builders. The first parameter is the client (unused: a request is a
# value), so that each builder becomes a method of both clients below.
# ---------------------------------------------------------------------------------------------


def _healthz(_: Any, /) -> Req[Dict[str, JSON]]:
    """`GET /healthz`: the process answers."""
    return h.get("/healthz", h._json)


def _readyz(_: Any, /) -> Req[Dict[str, JSON]]:
    """`GET /readyz`: the store can write (raises `UnavailableError` when it cannot)."""
    return h.get("/readyz", h._json)


def _whoami(_: Any, /) -> Req[WhoAmI]:
    """The user and role of the token this client sends."""
    return h.get("/v1/whoami", h._json)


def _openapi(_: Any, /) -> Req[Dict[str, JSON]]:
    """The server's OpenAPI document."""
    return h.get("/openapi.json", h._json)


def _metrics(_: Any, /) -> Req[str]:
    """The Prometheus metrics, as text."""
    return h.get("/metrics", h._text)


# Plans ---------------------------------------------------------------------------------------


def _create_plan(_: Any, /, plan: Dict[str, JSON]) -> Req[PlanView]:
    """Registers a plan document (201); `ConflictError` (`plan_exists`) when its id is taken,
    `UnprocessableError` (`invalid_plan`, with `faults`) when it is invalid."""
    return h.post("/v1/plans", h._json, plan)


def _list_plans(
    _: Any,
    /,
    *,
    state: Optional[str] = None,
    limit: Optional[int] = None,
    cursor: Optional[str] = None,
    id_contains: Optional[str] = None,
) -> Req[Page[PlanSummary]]:
    """One page of plans, newest first; pass `next_cursor` back as `cursor`."""
    return h.get(
        "/v1/plans", h._page, state=state, limit=limit, cursor=cursor, id_contains=id_contains
    )


def _get_plan(_: Any, /, plan_id: str) -> Req[PlanView]:
    """A plan's state: state, pause_reason, version, progress and every step."""
    return h.get(f"/v1/plans/{seg(plan_id)}", h._json)


def _delete_plan(_: Any, /, plan_id: str) -> Req[None]:
    """Deletes a plan that is not running (admin)."""
    return h.delete(f"/v1/plans/{seg(plan_id)}")


def _start_plan(_: Any, /, plan_id: str, *, reason: Optional[str] = None) -> Req[PlanView]:
    """idle → running."""
    return h.post(f"/v1/plans/{seg(plan_id)}/start", h._json, compact(reason=reason))


def _pause_plan(
    _: Any,
    /,
    plan_id: str,
    *,
    reason: Optional[str] = None,
    mode: Optional[str] = None,
    resume_at: Optional[str] = None,
) -> Req[PlanView]:
    """running → paused, durable before it answers. `mode="immediate"` also interrupts the
    running steps; `resume_at` (RFC 3339) resumes it by itself later."""
    body = compact(reason=reason, mode=mode, resume_at=resume_at)
    return h.post(f"/v1/plans/{seg(plan_id)}/pause", h._json, body)


def _resume_plan(_: Any, /, plan_id: str, *, reason: Optional[str] = None) -> Req[PlanView]:
    """paused → running."""
    return h.post(f"/v1/plans/{seg(plan_id)}/resume", h._json, compact(reason=reason))


def _cancel_plan(
    _: Any,
    /,
    plan_id: str,
    *,
    reason: Optional[str] = None,
    rollback: bool = False,
    dry_run: bool = False,
) -> Req[Union[PlanView, RollbackAnswer]]:
    """idle, running or paused → cancelled; answers the plan's state. `rollback=True` rolls
    back what the plan did first (steps still running are told to stop, then the compensations
    run, newest start first) and answers a `RollbackAnswer`; with `dry_run=True` too, the
    compensations it would run, changing nothing (`dry_run` without `rollback` is refused,
    422)."""
    body: Dict[str, JSON] = compact(reason=reason)
    if rollback:
        body["rollback"] = True
    if dry_run:
        body["dry_run"] = True
    return h.post(f"/v1/plans/{seg(plan_id)}/cancel", h._json, body)


def _rollback_plan(
    _: Any, /, plan_id: str, *, dry_run: bool = False, reason: Optional[str] = None
) -> Req[RollbackAnswer]:
    """Rolls back a failed or cancelled plan (its compensations, one at a time, newest start
    first), or continues a rollback that failed; answers the compensations in order and the
    plan's state. `dry_run=True` answers the compensations it would run and changes nothing.
    A plan already rolled back, or not failed or cancelled, is refused (`ConflictError`)."""
    body: Dict[str, JSON] = compact(reason=reason)
    if dry_run:
        body["dry_run"] = True
    return h.post(f"/v1/plans/{seg(plan_id)}/rollback", h._json, body)


def _snapshot(_: Any, /, plan_id: str) -> Req[SnapshotView]:
    """Everything about a plan in one document, with the prototype's names (`plan`, `state`,
    `completed_steps`, `checkpoints`, `interventions`, …)."""
    return h.get(f"/v1/plans/{seg(plan_id)}/snapshot", h._json)


def _get_step(_: Any, /, plan_id: str, step_id: str) -> Req[Dict[str, JSON]]:
    """One step in full: definition, record, idempotency key and every attempt."""
    return h.get(f"/v1/plans/{seg(plan_id)}/steps/{seg(step_id)}", h._json)


def _list_attempts(
    _: Any,
    /,
    plan_id: str,
    *,
    limit: Optional[int] = None,
    cursor: Optional[str] = None,
    steps: Optional[str] = None,
) -> Req[Page[Dict[str, JSON]]]:
    """Attempts of a plan's steps (`steps`: a comma-separated list of step ids), paged."""
    return h.get(
        f"/v1/plans/{seg(plan_id)}/attempts", h._page, limit=limit, cursor=cursor, steps=steps
    )


# Interventions -------------------------------------------------------------------------------


def _intervene(
    _: Any,
    /,
    plan_id: str,
    type: str,
    *,
    step_id: Optional[str] = None,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
    **fields: JSON,
) -> Req[InterventionRecord]:
    """Sends an intervention of any type (`skip_step`, `retry_step`, `modify_step`, `add_step`,
    `remove_step`, `reorder_steps`, `rerun_from`, `approve_step`, `reject_step`,
    `complete_step`, `upgrade`) with its fields (`patch`, `step`, `after`, `before`, `order`,
    `attempt`, `output`, `retry`, `compensation`, `template_version`). Answers its record;
    a refusal raises `ConflictError` (409) or `UnprocessableError` (422) whose `intervention`
    is the recorded refusal. `expected_version` refuses unless the plan is at that version;
    `dry_run` answers the diff it would make and changes nothing."""
    body: Dict[str, JSON] = {"type": type}
    body.update(compact(step_id=step_id, reason=reason, expected_version=expected_version))
    if dry_run:
        body["dry_run"] = True
    body.update({k: v for k, v in fields.items() if v is not None})
    return h.post(f"/v1/plans/{seg(plan_id)}/interventions", h._json, body)


def _iv_kw(
    reason: Optional[str], expected_version: Optional[int], dry_run: bool
) -> Dict[str, Any]:
    return {"reason": reason, "expected_version": expected_version, "dry_run": dry_run}


def _skip_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    *,
    compensation: bool = False,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """A pending, failed or awaiting_review step → skipped. `compensation=True` skips the
    step's compensation instead, in a rollback that stopped on it (someone undid it by hand):
    the rollback goes on with the next one."""
    return _intervene(
        c, plan_id, "skip_step", step_id=step_id, compensation=compensation or None,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _retry_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    *,
    compensation: bool = False,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """A failed, cancelled or completed step → pending (a new run, attempts keep counting).
    `compensation=True` runs the step's failed compensation again instead (a fresh try of its
    retry policy) and the rollback it stopped goes on."""
    return _intervene(
        c, plan_id, "retry_step", step_id=step_id, compensation=compensation or None,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _modify_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    patch: Dict[str, JSON],
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Merge-patches a pending, failed or awaiting_review step's definition (action,
    agent_type, params, retry, timeout_ms, when, depends_on, quality_gate, compensate)."""
    return _intervene(
        c, plan_id, "modify_step", step_id=step_id, patch=patch,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _add_step(
    c: Any,
    /,
    plan_id: str,
    step: Dict[str, JSON],
    *,
    after: Optional[str] = None,
    before: Optional[str] = None,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Inserts a step after or before another one, or at the end."""
    return _intervene(
        c, plan_id, "add_step", step=step, after=after, before=before,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _remove_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Removes a pending step that no other step explicitly depends on."""
    return _intervene(
        c, plan_id, "remove_step", step_id=step_id, **_iv_kw(reason, expected_version, dry_run)
    )


def _reorder_steps(
    c: Any,
    /,
    plan_id: str,
    order: List[str],
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Puts the pending steps in a new order (a permutation of their ids)."""
    return _intervene(
        c, plan_id, "reorder_steps", order=list(order), **_iv_kw(reason, expected_version, dry_run)
    )


def _rerun_from(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """An ended step and everything downstream of it → pending."""
    return _intervene(
        c, plan_id, "rerun_from", step_id=step_id, **_iv_kw(reason, expected_version, dry_run)
    )


def _approve_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    *,
    attempt: Optional[int] = None,
    output: JSON = None,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """A vote to accept the attempt under review (`output` replaces its output; a reason is
    then required)."""
    return _intervene(
        c, plan_id, "approve_step", step_id=step_id, attempt=attempt, output=output,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _reject_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    reason: str,
    *,
    attempt: Optional[int] = None,
    retry: bool = False,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Rejects the attempt under review: the step fails, or with `retry` runs again with the
    reason as its `gate_feedback`."""
    return _intervene(
        c, plan_id, "reject_step", step_id=step_id, attempt=attempt, retry=retry or None,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _complete_step(
    c: Any,
    /,
    plan_id: str,
    step_id: str,
    output: JSON = None,
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Completes a pending, queued, running or failed step with `output`, as if its agent had
    answered."""
    return _intervene(
        c, plan_id, "complete_step", step_id=step_id, output=output,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _upgrade(
    c: Any,
    /,
    plan_id: str,
    template_version: int,
    *,
    reason: Optional[str] = None,
    expected_version: Optional[int] = None,
    dry_run: bool = False,
) -> Req[InterventionRecord]:
    """Moves a plan made from a template to another version of it."""
    return _intervene(
        c, plan_id, "upgrade", template_version=template_version,
        **_iv_kw(reason, expected_version, dry_run),
    )


def _list_interventions(
    _: Any, /, plan_id: str, *, limit: Optional[int] = None, cursor: Optional[str] = None
) -> Req[Page[InterventionRecord]]:
    """The plan's interventions, applied and refused, oldest first."""
    return h.get(
        f"/v1/plans/{seg(plan_id)}/interventions", h._page, limit=limit, cursor=cursor
    )


# Checkpoints ---------------------------------------------------------------------------------


def _list_checkpoints(
    _: Any, /, plan_id: str, *, limit: Optional[int] = None, cursor: Optional[str] = None
) -> Req[Page[CheckpointSummary]]:
    """The plan's checkpoints, oldest first."""
    return h.get(f"/v1/plans/{seg(plan_id)}/checkpoints", h._page, limit=limit, cursor=cursor)


def _get_checkpoint(_: Any, /, plan_id: str, checkpoint_id: str) -> Req[CheckpointView]:
    """A checkpoint with the state it implies (step index, step lists, definition, outputs)."""
    return h.get(f"/v1/plans/{seg(plan_id)}/checkpoints/{seg(checkpoint_id)}", h._json)


def _create_checkpoint(
    _: Any, /, plan_id: str, *, label: Optional[str] = None, reason: Optional[str] = None
) -> Req[CheckpointSummary]:
    """Takes a manual checkpoint."""
    body = compact(label=label, reason=reason)
    return h.post(f"/v1/plans/{seg(plan_id)}/checkpoints", h._json, body)


def _restore_checkpoint(
    _: Any, /, plan_id: str, checkpoint_id: str, *, reason: Optional[str] = None
) -> Req[PlanView]:
    """Rewinds a plan that is not running to a checkpoint; the plan is then paused
    (`restored`)."""
    path = f"/v1/plans/{seg(plan_id)}/checkpoints/{seg(checkpoint_id)}/restore"
    return h.post(path, h._json, compact(reason=reason))


def _fork_checkpoint(
    _: Any,
    /,
    plan_id: str,
    checkpoint_id: str,
    *,
    new_plan_id: Optional[str] = None,
    reason: Optional[str] = None,
) -> Req[PlanView]:
    """A new plan, paused, whose state is the checkpoint's."""
    path = f"/v1/plans/{seg(plan_id)}/checkpoints/{seg(checkpoint_id)}/fork"
    return h.post(path, h._json, compact(new_plan_id=new_plan_id, reason=reason))


# Events and history --------------------------------------------------------------------------


def _list_events(
    _: Any, /, plan_id: str, *, after: Optional[int] = None, limit: Optional[int] = None
) -> Req[Page[Event]]:
    """One page of the plan's log after `after` (a seq); `next_cursor` is the next `after`."""
    return h.get(f"/v1/plans/{seg(plan_id)}/events", h._page, after=after, limit=limit)


def _versions(resp: httpx.Response) -> List[Dict[str, JSON]]:
    return list(resp.json().get("versions") or [])


def _nodes(resp: httpx.Response) -> List[Dict[str, JSON]]:
    return list(resp.json().get("nodes") or [])


def _list_versions(_: Any, /, plan_id: str) -> Req[List[Dict[str, JSON]]]:
    """Every version of the plan's definition (version, seq, at, user, cause), oldest first."""
    return h.get(f"/v1/plans/{seg(plan_id)}/versions", _versions)


def _get_version(_: Any, /, plan_id: str, version: int) -> Req[Dict[str, JSON]]:
    """The plan's definition at a version."""
    return h.get(f"/v1/plans/{seg(plan_id)}/versions/{int(version)}", h._json)


def _diff_versions(
    _: Any, /, plan_id: str, from_version: int, to_version: Optional[int] = None
) -> Req[Dict[str, JSON]]:
    """The structural diff between two versions of the plan's definition."""
    return h.get(
        f"/v1/plans/{seg(plan_id)}/diff", h._json, **compact(**{"from": from_version, "to": to_version})
    )


# Reviews, templates, tokens, workers, nodes --------------------------------------------------


def _list_reviews(
    _: Any,
    /,
    *,
    state: Optional[str] = None,
    plan_id: Optional[str] = None,
    limit: Optional[int] = None,
    cursor: Optional[str] = None,
) -> Req[Page[Review]]:
    """The review inbox across plans (`state`: `open` or `closed`)."""
    return h.get(
        "/v1/reviews", h._page, state=state, plan_id=plan_id, limit=limit, cursor=cursor
    )


def _push_template(
    _: Any,
    /,
    name: str,
    plan: Dict[str, JSON],
    *,
    parameters: Optional[Dict[str, JSON]] = None,
    description: Optional[str] = None,
) -> Req[TemplateVersion]:
    """Stores a new version of template `name` (or answers the latest when it is identical:
    `created` is then false)."""
    body = compact(name=name, plan=plan, parameters=parameters, description=description)
    return h.post("/v1/templates", h._json, body)


def _list_templates(
    _: Any, /, *, limit: Optional[int] = None, cursor: Optional[str] = None
) -> Req[Page[TemplateVersion]]:
    """The latest version of each template."""
    return h.get("/v1/templates", h._page, limit=limit, cursor=cursor)


def _get_template(_: Any, /, name: str) -> Req[TemplateDetail]:
    """A template's latest version and the list of its versions."""
    return h.get(f"/v1/templates/{seg(name)}", h._json)


def _get_template_version(_: Any, /, name: str, version: int) -> Req[TemplateVersion]:
    """One version of a template."""
    return h.get(f"/v1/templates/{seg(name)}/versions/{int(version)}", h._json)


def _delete_template(_: Any, /, name: str) -> Req[None]:
    """Hides a template from new instantiations (admin); its versions are kept."""
    return h.delete(f"/v1/templates/{seg(name)}")


def _instantiate_template(
    _: Any,
    /,
    name: str,
    *,
    inputs: Optional[Dict[str, JSON]] = None,
    version: Optional[int] = None,
    plan_id: Optional[str] = None,
    start: Optional[bool] = None,
) -> Req[PlanView]:
    """Makes a plan of a template (started unless `start=False`); `UnprocessableError`
    (`invalid_inputs`) names each input that does not fit the parameters."""
    body = compact(inputs=inputs, version=version, plan_id=plan_id, start=start)
    return h.post(f"/v1/templates/{seg(name)}/instantiate", h._json, body)


def _create_token(
    _: Any, /, user: str, role: str, *, expires_in: Optional[int] = None
) -> Req[NewToken]:
    """Creates a token (admin); its secret is in `token`, shown this once."""
    return h.post("/v1/tokens", h._json, compact(user=user, role=role, expires_in=expires_in))


def _list_tokens(_: Any, /) -> Req[Page[TokenInfo]]:
    """Every token (never their secrets)."""
    return h.get("/v1/tokens", h._page)


def _delete_token(_: Any, /, token_id: str) -> Req[None]:
    """Revokes a token."""
    return h.delete(f"/v1/tokens/{seg(token_id)}")


def _list_workers(_: Any, /) -> Req[Page[Dict[str, JSON]]]:
    """The remote workers seen, and the tasks waiting for one by agent type (`raw["queued"]`)."""
    return h.get("/v1/workers", h._page)


def _list_nodes(_: Any, /) -> Req[List[Dict[str, JSON]]]:
    """The nodes serving the store (one, unless several share a PostgreSQL database)."""
    return h.get("/v1/nodes", _nodes)


# Tasks (remote workers) ----------------------------------------------------------------------


def _optional_task(resp: httpx.Response) -> Optional[Task]:
    if resp.status_code == 204:
        return None
    task: Task = resp.json()
    return task


def _poll_task(
    _: Any,
    /,
    worker_id: str,
    agent_types: List[str],
    *,
    wait_ms: int = 0,
    plan_ids: Optional[List[str]] = None,
) -> Req[Optional[Task]]:
    """Long-polls for a task of one of `agent_types` (None when none came within `wait_ms`,
    at most 60 000), of the plans `plan_ids` names when it names some. Hold its lease with
    `heartbeat` every `lease_ms / 3`."""
    body: Dict[str, JSON] = {
        "worker_id": worker_id,
        "agent_types": list(agent_types),
        "wait_ms": int(wait_ms),
    }
    if plan_ids is not None:
        body["plan_ids"] = list(plan_ids)
    req = h.post("/v1/tasks/poll", _optional_task, body)
    req.extra_timeout = min(int(wait_ms), 60_000) / 1000.0
    return req


def _heartbeat(_: Any, /, task_id: str, worker_id: str) -> Req[HeartbeatAnswer]:
    """Extends the task's lease; `stop` true means the plan no longer wants the attempt."""
    return h.post(f"/v1/tasks/{seg(task_id)}/heartbeat", h._json, {"worker_id": worker_id})


def _complete_task(
    _: Any,
    /,
    task_id: str,
    worker_id: str,
    *,
    output: JSON = None,
    scores: Optional[Dict[str, float]] = None,
) -> Req[None]:
    """Reports the task's result; answers once it is durable in the plan's log."""
    body: Dict[str, JSON] = {"worker_id": worker_id, "output": output}
    if scores is not None:
        body["scores"] = scores
    return h.post(f"/v1/tasks/{seg(task_id)}/complete", h._json, body)


def _fail_task(
    _: Any, /, task_id: str, worker_id: str, error: str, *, retryable: bool = True
) -> Req[None]:
    """Reports the attempt failed; with `retryable` the step's retry policy may try again."""
    body = {"worker_id": worker_id, "error": error or "failed", "retryable": bool(retryable)}
    return h.post(f"/v1/tasks/{seg(task_id)}/fail", h._json, body)


# ---------------------------------------------------------------------------------------------
# The two clients.
# ---------------------------------------------------------------------------------------------


def _sync(build: Callable[Concatenate[Any, P], Req[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(build(self, *args, **kwargs))

    functools.update_wrapper(method, build)
    method.__name__ = build.__name__.lstrip("_")
    return method


def _async(
    build: Callable[Concatenate[Any, P], Req[T]],
) -> Callable[Concatenate[AsyncClient, P], Awaitable[T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(build(self, *args, **kwargs))

    functools.update_wrapper(method, build)
    method.__name__ = build.__name__.lstrip("_")
    return method


TimeoutArg = Union[float, httpx.Timeout, None]


def _timeout(value: TimeoutArg) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(DEFAULT_TIMEOUT if value is None else value)


def _with_extra(t: httpx.Timeout, extra: float) -> httpx.Timeout:
    if not extra:
        return t
    return httpx.Timeout(
        connect=t.connect,
        read=None if t.read is None else t.read + extra,
        write=t.write,
        pool=t.pool,
    )


class _Base:
    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_backoff: float = 0.2,
        stream_read_timeout: float = 45.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = _timeout(timeout)
        self.retries = max(0, int(retries))
        self.retry_backoff = retry_backoff
        #: Longest silence on an event stream before it is taken as broken (the server sends a
        #: keep-alive comment at least every 15 s).
        self.stream_read_timeout = stream_read_timeout
        self._headers = h.headers(token, USER_AGENT)

    def _request_kwargs(self, req: Req[Any]) -> Dict[str, Any]:
        kw: Dict[str, Any] = {
            "params": req.query(),
            "headers": req.headers or None,
            "timeout": _with_extra(self.timeout, req.extra_timeout),
        }
        if req.has_body:
            kw["json"] = req.body
        return kw

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.timeout.connect,
            read=self.stream_read_timeout,
            write=self.timeout.write,
            pool=self.timeout.pool,
        )


class Client(_Base):
    """The blocking client. Use as a context manager, or call `close()`."""

    def __init__(self, base_url: str, token: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(base_url, token, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, req: Req[T]) -> T:
        """Sends a request, retrying where that is safe; answers its decoded body."""
        attempt = 0
        while True:
            try:
                resp = self._http.request(req.method, req.path, **self._request_kwargs(req))
            except httpx.TransportError as e:
                if attempt < self.retries and h.should_retry(req, e, None):
                    time.sleep(h.backoff(attempt, self.retry_backoff))
                    attempt += 1
                    continue
                raise TransportError(f"{req.method} {self.base_url}{req.path}: {e!r}") from e
            if attempt < self.retries and h.should_retry(req, None, resp.status_code):
                time.sleep(h.backoff(attempt, self.retry_backoff))
                attempt += 1
                continue
            h.check(resp, req)
            return req.decode(resp)

    def stream_events(
        self,
        plan_id: Optional[str] = None,
        *,
        after: Optional[int] = None,
        follow: bool = False,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """The events of one plan (`plan_id`; `after` a seq, default its first event; the
        stream ends after an ended plan's last event unless `follow`) or of all plans (`after` a
        global id, default only new events), as they are committed. A broken connection is
        resumed after the last event received (`Last-Event-ID`) when `reconnect`."""
        last: Optional[int] = None
        failures = 0
        while True:
            req = h.stream_request(plan_id, after, follow, last)
            try:
                with self._http.stream(
                    "GET",
                    req.path,
                    params=req.query(),
                    headers=req.headers,
                    timeout=self._stream_timeout(),
                ) as resp:
                    if not resp.is_success:
                        resp.read()
                        if reconnect and resp.status_code in h.RETRY_STATUSES:
                            raise httpx.ConnectError("server unavailable")
                        h.check(resp, req)
                    failures = 0
                    for frame in h.frames(resp.iter_lines()):
                        event = h.decode_frame(frame)
                        if event is None:
                            continue
                        if frame.get("id"):
                            last = int(frame["id"] or 0)
                        yield event
                if plan_id is not None and not follow:
                    return
            except httpx.TransportError as e:
                if not reconnect:
                    raise TransportError(f"event stream {req.path}: {e!r}") from e
                time.sleep(h.backoff(failures, self.retry_backoff))
                failures += 1

    @overload
    def cancel_plan(
        self, plan_id: str, *, reason: Optional[str] = None, rollback: Literal[False] = False
    ) -> PlanView: ...

    @overload
    def cancel_plan(
        self,
        plan_id: str,
        *,
        reason: Optional[str] = None,
        rollback: Literal[True],
        dry_run: bool = False,
    ) -> RollbackAnswer: ...

    @overload
    def cancel_plan(
        self, plan_id: str, *, reason: Optional[str] = None, rollback: bool, dry_run: bool = False
    ) -> Union[PlanView, RollbackAnswer]: ...

    def cancel_plan(
        self,
        plan_id: str,
        *,
        reason: Optional[str] = None,
        rollback: bool = False,
        dry_run: bool = False,
    ) -> Union[PlanView, RollbackAnswer]:
        return self.send(
            _cancel_plan(self, plan_id, reason=reason, rollback=rollback, dry_run=dry_run)
        )

    cancel_plan.__doc__ = _cancel_plan.__doc__

    def wait_for_state(
        self, plan_id: str, states: Any = TERMINAL_STATES, *, timeout: float = 60.0
    ) -> PlanView:
        """Waits (bounded by `timeout` seconds) until the plan is in one of `states`, reading
        its event stream; answers its state then. Raises `TimeoutError` past the deadline."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            view = self.get_plan(plan_id)
            if view.get("state") in wanted:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"plan {plan_id} is {view.get('state')}, not {sorted(wanted)}")
            time.sleep(0.05)

    healthz = _sync(_healthz)
    readyz = _sync(_readyz)
    whoami = _sync(_whoami)
    openapi = _sync(_openapi)
    metrics = _sync(_metrics)
    create_plan = _sync(_create_plan)
    list_plans = _sync(_list_plans)
    get_plan = _sync(_get_plan)
    delete_plan = _sync(_delete_plan)
    start_plan = _sync(_start_plan)
    pause_plan = _sync(_pause_plan)
    resume_plan = _sync(_resume_plan)
    rollback_plan = _sync(_rollback_plan)
    snapshot = _sync(_snapshot)
    get_step = _sync(_get_step)
    list_attempts = _sync(_list_attempts)
    intervene = _sync(_intervene)
    skip_step = _sync(_skip_step)
    retry_step = _sync(_retry_step)
    modify_step = _sync(_modify_step)
    add_step = _sync(_add_step)
    remove_step = _sync(_remove_step)
    reorder_steps = _sync(_reorder_steps)
    rerun_from = _sync(_rerun_from)
    approve_step = _sync(_approve_step)
    reject_step = _sync(_reject_step)
    complete_step = _sync(_complete_step)
    upgrade = _sync(_upgrade)
    list_interventions = _sync(_list_interventions)
    list_checkpoints = _sync(_list_checkpoints)
    get_checkpoint = _sync(_get_checkpoint)
    create_checkpoint = _sync(_create_checkpoint)
    restore_checkpoint = _sync(_restore_checkpoint)
    fork_checkpoint = _sync(_fork_checkpoint)
    list_events = _sync(_list_events)
    list_versions = _sync(_list_versions)
    get_version = _sync(_get_version)
    diff_versions = _sync(_diff_versions)
    list_reviews = _sync(_list_reviews)
    push_template = _sync(_push_template)
    list_templates = _sync(_list_templates)
    get_template = _sync(_get_template)
    get_template_version = _sync(_get_template_version)
    delete_template = _sync(_delete_template)
    instantiate_template = _sync(_instantiate_template)
    create_token = _sync(_create_token)
    list_tokens = _sync(_list_tokens)
    delete_token = _sync(_delete_token)
    list_workers = _sync(_list_workers)
    list_nodes = _sync(_list_nodes)
    poll_task = _sync(_poll_task)
    heartbeat = _sync(_heartbeat)
    complete_task = _sync(_complete_task)
    fail_task = _sync(_fail_task)


class AsyncClient(_Base):
    """The asyncio client. Use as an async context manager, or call `await aclose()`."""

    def __init__(self, base_url: str, token: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(base_url, token, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def send(self, req: Req[T]) -> T:
        """Sends a request, retrying where that is safe; answers its decoded body."""
        attempt = 0
        while True:
            try:
                resp = await self._http.request(req.method, req.path, **self._request_kwargs(req))
            except httpx.TransportError as e:
                if attempt < self.retries and h.should_retry(req, e, None):
                    await asyncio.sleep(h.backoff(attempt, self.retry_backoff))
                    attempt += 1
                    continue
                raise TransportError(f"{req.method} {self.base_url}{req.path}: {e!r}") from e
            if attempt < self.retries and h.should_retry(req, None, resp.status_code):
                await asyncio.sleep(h.backoff(attempt, self.retry_backoff))
                attempt += 1
                continue
            h.check(resp, req)
            return req.decode(resp)

    async def stream_events(
        self,
        plan_id: Optional[str] = None,
        *,
        after: Optional[int] = None,
        follow: bool = False,
        reconnect: bool = True,
        on_reconnect: Optional[Callable[[BaseException], Any]] = None,
    ) -> AsyncIterator[Event]:
        """The events of one plan (`plan_id`; `after` a seq, default its first event; the
        stream ends after an ended plan's last event unless `follow`) or of all plans (`after` a
        global id, default only new events), as they are committed. A broken connection (the
        server restarted, a proxy dropped it) is resumed after the last event received
        (`Last-Event-ID`) when `reconnect`: nothing is skipped or repeated."""
        last: Optional[int] = None
        failures = 0
        while True:
            req = h.stream_request(plan_id, after, follow, last)
            try:
                async with self._http.stream(
                    "GET",
                    req.path,
                    params=req.query(),
                    headers=req.headers,
                    timeout=self._stream_timeout(),
                ) as resp:
                    if not resp.is_success:
                        await resp.aread()
                        if reconnect and resp.status_code in h.RETRY_STATUSES:
                            raise httpx.ConnectError("server unavailable")
                        h.check(resp, req)
                    failures = 0
                    parser = h.SseParser()
                    async for line in resp.aiter_lines():
                        frame = parser.feed(line)
                        if frame is None:
                            continue
                        event = h.decode_frame(frame)
                        if event is None:
                            continue
                        if frame.get("id"):
                            last = int(frame["id"] or 0)
                        yield event
                if plan_id is not None and not follow:
                    return
            except httpx.TransportError as e:
                if not reconnect:
                    raise TransportError(f"event stream {req.path}: {e!r}") from e
                if on_reconnect is not None:
                    on_reconnect(e)
                await asyncio.sleep(h.backoff(failures, self.retry_backoff))
                failures += 1

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
        return await self.send(
            _cancel_plan(self, plan_id, reason=reason, rollback=rollback, dry_run=dry_run)
        )

    cancel_plan.__doc__ = _cancel_plan.__doc__

    async def wait_for_state(
        self, plan_id: str, states: Any = TERMINAL_STATES, *, timeout: float = 60.0
    ) -> PlanView:
        """Waits (bounded by `timeout` seconds) until the plan is in one of `states`; answers
        its state then. Raises `TimeoutError` past the deadline."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            view = await self.get_plan(plan_id)
            if view.get("state") in wanted:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"plan {plan_id} is {view.get('state')}, not {sorted(wanted)}")
            await asyncio.sleep(0.05)

    healthz = _async(_healthz)
    readyz = _async(_readyz)
    whoami = _async(_whoami)
    openapi = _async(_openapi)
    metrics = _async(_metrics)
    create_plan = _async(_create_plan)
    list_plans = _async(_list_plans)
    get_plan = _async(_get_plan)
    delete_plan = _async(_delete_plan)
    start_plan = _async(_start_plan)
    pause_plan = _async(_pause_plan)
    resume_plan = _async(_resume_plan)
    rollback_plan = _async(_rollback_plan)
    snapshot = _async(_snapshot)
    get_step = _async(_get_step)
    list_attempts = _async(_list_attempts)
    intervene = _async(_intervene)
    skip_step = _async(_skip_step)
    retry_step = _async(_retry_step)
    modify_step = _async(_modify_step)
    add_step = _async(_add_step)
    remove_step = _async(_remove_step)
    reorder_steps = _async(_reorder_steps)
    rerun_from = _async(_rerun_from)
    approve_step = _async(_approve_step)
    reject_step = _async(_reject_step)
    complete_step = _async(_complete_step)
    upgrade = _async(_upgrade)
    list_interventions = _async(_list_interventions)
    list_checkpoints = _async(_list_checkpoints)
    get_checkpoint = _async(_get_checkpoint)
    create_checkpoint = _async(_create_checkpoint)
    restore_checkpoint = _async(_restore_checkpoint)
    fork_checkpoint = _async(_fork_checkpoint)
    list_events = _async(_list_events)
    list_versions = _async(_list_versions)
    get_version = _async(_get_version)
    diff_versions = _async(_diff_versions)
    list_reviews = _async(_list_reviews)
    push_template = _async(_push_template)
    list_templates = _async(_list_templates)
    get_template = _async(_get_template)
    get_template_version = _async(_get_template_version)
    delete_template = _async(_delete_template)
    instantiate_template = _async(_instantiate_template)
    create_token = _async(_create_token)
    list_tokens = _async(_list_tokens)
    delete_token = _async(_delete_token)
    list_workers = _async(_list_workers)
    list_nodes = _async(_list_nodes)
    poll_task = _async(_poll_task)
    heartbeat = _async(_heartbeat)
    complete_task = _async(_complete_task)
    fail_task = _async(_fail_task)


__all__ = ["Client", "AsyncClient", "ApiError", "DEFAULT_TIMEOUT"]
