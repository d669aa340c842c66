"""Remote workers in Python: long-poll cairn for tasks, hold the lease by heartbeat while an
executor works, report complete or fail.

    from cairn import AsyncClient, Worker

    async def research(task):                  # sync functions work too (run in a thread)
        return {"found": 3}                    # the step's output

    async with AsyncClient(url, token=worker_token) as client:
        await Worker(client, ["research"], research).run()

An executor gets the task (`step_id`, `action`, `agent_type`, `params`, `plan_id`, `attempt`,
`run`, `idempotency_key`, `query`, `gate_feedback`, …) and returns the output: any JSON value,
or `StepResult(output, scores)` (or a dict of exactly `output` and `scores`) to feed the step's
quality gate. An exception fails the attempt (retried by the step's retry policy; raise
`StepFailed(msg, retryable=False)` to fail it for good). A heartbeat answered `stop` (the plan
cancelled or paused immediately, the step completed by hand) cancels an async executor and
reports the attempt failed; a lease that was lost (the worker stalled past it) is abandoned:
the server has already handed the attempt back to be retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Iterable, Optional, Set, Tuple, Union

from .client import AsyncClient
from .errors import ApiError, StepFailed, TransportError
from .types import Task

log = logging.getLogger("cairn.worker")

#: An executor: called with the task, sync or async, answers the output.
Executor = Callable[[Dict[str, Any]], Union[Any, Awaitable[Any]]]

#: The longest error message a worker may report (the server's limit).
MAX_ERROR = 64 * 1024


@dataclass
class StepResult:
    """What an executor may return to give scores with the output."""

    output: Any = None
    scores: Optional[Dict[str, float]] = None


def default_worker_id(prefix: str = "py") -> str:
    """`HOST-py-PID-XXXX`: unique per process and per worker."""
    return f"{socket.gethostname()}-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def split_result(value: Any) -> Tuple[Any, Optional[Dict[str, float]]]:
    """An executor's answer as (output, scores)."""
    if isinstance(value, StepResult):
        return value.output, value.scores
    if isinstance(value, dict) and "output" in value and set(value) <= {"output", "scores"}:
        return value["output"], value.get("scores")
    return value, None


def error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, StepFailed):
        text = str(e) or "failed"
    return text.encode()[:MAX_ERROR].decode(errors="ignore") or "failed"


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


async def call_executor(executor: Executor, task: Dict[str, Any]) -> Any:
    """Runs an executor: a coroutine function on the loop, anything else in a thread."""
    if _is_async(executor):
        return await executor(task)
    result = await asyncio.to_thread(executor, task)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_task(
    client: AsyncClient, worker_id: str, task: Task, executor: Executor
) -> str:
    """Runs one task to its report: `completed`, `failed`, `stopped` or `lost`."""
    task_id = task["task_id"]
    period = max(task.get("lease_ms", 30_000) / 3000.0, 0.05)
    work = asyncio.ensure_future(call_executor(executor, dict(task)))

    async def heartbeats() -> str:
        while True:
            await asyncio.sleep(period)
            try:
                answer = await client.heartbeat(task_id, worker_id)
            except ApiError as e:
                if e.status in (404, 409):
                    return "lost"
                log.warning("heartbeat of task %s refused: %s", task_id, e)
                continue
            except TransportError as e:
                log.warning("heartbeat of task %s failed (%s); trying again", task_id, e)
                continue
            if answer.get("stop"):
                return "stopped"

    beat = asyncio.ensure_future(heartbeats())
    try:
        await asyncio.wait({work, beat}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        beat.cancel()
        raise
    if not work.done():
        outcome = beat.result()
        work.cancel()
        if outcome == "lost":
            log.warning("task %s: the lease was lost; the server retries the attempt", task_id)
            return "lost"
        await _report(client, task_id, worker_id, None, "stopped: the plan no longer wants this attempt")
        return "stopped"
    beat.cancel()
    try:
        value = work.result()
    except asyncio.CancelledError:
        await _report(client, task_id, worker_id, None, "cancelled")
        return "failed"
    except Exception as e:  # noqa: BLE001 - any failure of the executor fails the attempt
        retryable = not (isinstance(e, StepFailed) and not e.retryable)
        log.info("task %s (%s/%s) failed: %s", task_id, task.get("plan_id"), task.get("step_id"), e)
        await _report(client, task_id, worker_id, None, error_text(e), retryable=retryable)
        return "failed"
    output, scores = split_result(value)
    await _report(client, task_id, worker_id, (output, scores), None)
    return "completed"


async def _report(
    client: AsyncClient,
    task_id: str,
    worker_id: str,
    result: Optional[Tuple[Any, Optional[Dict[str, float]]]],
    error: Optional[str],
    *,
    retryable: bool = True,
) -> None:
    try:
        if result is not None:
            await client.complete_task(task_id, worker_id, output=result[0], scores=result[1])
        else:
            await client.fail_task(task_id, worker_id, error or "failed", retryable=retryable)
    except ApiError as e:
        # The lease was lost meanwhile (404 / 409): the attempt has been handed back already.
        log.warning("report of task %s refused: %s", task_id, e)


class Worker:
    """Serves tasks of `agent_types` with `executor`, up to `concurrency` at once (of the plans
    `plan_ids` names, when given; of any plan otherwise)."""

    def __init__(
        self,
        client: AsyncClient,
        agent_types: Iterable[str],
        executor: Executor,
        *,
        worker_id: Optional[str] = None,
        concurrency: int = 4,
        poll_wait_ms: int = 30_000,
        plan_ids: Optional[Iterable[str]] = None,
    ) -> None:
        self.client = client
        self.agent_types = list(agent_types)
        if not self.agent_types:
            raise ValueError("a worker needs at least one agent type")
        self.executor = executor
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = max(1, concurrency)
        self.poll_wait_ms = poll_wait_ms
        #: Only these plans' tasks, when given.
        self.plan_ids = None if plan_ids is None else list(plan_ids)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stops polling; the tasks running finish and are reported."""
        self._stop.set()

    async def run(self, *, max_tasks: Optional[int] = None) -> int:
        """Serves until `stop()` (or `max_tasks` tasks); answers how many it ran."""
        return await serve(
            self.client,
            self.worker_id,
            lambda: self.agent_types,
            lambda task: self.executor,
            self._stop,
            concurrency=self.concurrency,
            poll_wait_ms=self.poll_wait_ms,
            max_tasks=max_tasks,
            plan_ids=None if self.plan_ids is None else (lambda: self.plan_ids or []),
        )


async def serve(
    client: AsyncClient,
    worker_id: str,
    agent_types: Callable[[], Iterable[str]],
    route: Callable[[Task], Optional[Executor]],
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    poll_wait_ms: int = 1000,
    max_tasks: Optional[int] = None,
    plan_ids: Optional[Callable[[], Iterable[str]]] = None,
) -> int:
    """The poll loop: claims tasks while fewer than `concurrency` run, runs each with the
    executor `route` answers for it (None: failed, retryable, as not served here), until `stop`
    is set; then waits for the tasks running. Answers how many tasks it ran. With `plan_ids`,
    it asks only for tasks of those plans (on a server too old to filter by plan, it asks for
    any and says so once)."""
    filter_plans = plan_ids is not None
    slots = asyncio.Semaphore(max(1, concurrency))
    running: Set[asyncio.Future[str]] = set()
    ran = 0
    failures = 0
    try:
        while not stop.is_set() and (max_tasks is None or ran < max_tasks):
            await slots.acquire()
            types = sorted(set(agent_types()))
            if not types or stop.is_set():
                slots.release()
                if stop.is_set():
                    break
                await _wait(stop, poll_wait_ms / 1000.0)
                continue
            plans = sorted(set(plan_ids())) if plan_ids is not None and filter_plans else None
            try:
                task = await client.poll_task(
                    worker_id, types, wait_ms=poll_wait_ms, plan_ids=plans
                )
                failures = 0
            except (TransportError, ApiError) as e:
                slots.release()
                if (
                    isinstance(e, ApiError)
                    and e.status == 422
                    and plans is not None
                    and "plan_ids" in e.message
                ):
                    log.warning(
                        "the server cannot hand out tasks by plan (%s): this worker takes any "
                        "plan's tasks of its agent types",
                        e.message,
                    )
                    filter_plans = False
                    continue
                # A refusal that asking again cannot change (a token without the worker role,
                # a server that hands out no tasks, a malformed poll) ends the loop.
                if isinstance(e, ApiError) and 400 <= e.status < 500 and e.status not in (408, 429):
                    raise
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                log.warning("poll failed (%s); trying again in %.1f s", e, delay)
                await _wait(stop, delay)
                continue
            if task is None:
                slots.release()
                continue
            ran += 1
            executor = route(task)
            fut: asyncio.Future[str]
            if executor is None:
                fut = asyncio.ensure_future(_refuse(client, worker_id, task))
            else:
                fut = asyncio.ensure_future(run_task(client, worker_id, task, executor))
            running.add(fut)

            def finished(f: asyncio.Future[str]) -> None:
                running.discard(f)
                slots.release()

            fut.add_done_callback(finished)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    finally:
        for fut in list(running):
            fut.cancel()
    return ran


async def _refuse(client: AsyncClient, worker_id: str, task: Task) -> str:
    message = (
        f"worker {worker_id} serves agent type {task.get('agent_type')} only for the plans it "
        f"executes, not {task.get('plan_id')}: give that plan's steps an agent type of their own"
    )
    await _report(client, task["task_id"], worker_id, None, message)
    return "failed"


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
