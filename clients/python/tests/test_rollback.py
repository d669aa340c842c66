"""Rollback against a real server: a plan with `on_failure: rollback` that fails, a dry run and
a rollback of a cancelled plan, a cancel that rolls back while a step is held, and a failed
compensation retried or skipped by intervention (docs/rollback.md). Every wait is bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from cairn import Client, ConflictError, OrchestrationController, RollbackAnswer, UnprocessableError
from cairn.types import PlanView
from conftest import Server
from test_examples import BOUND, run


def undo(step_id: str, **extra: Any) -> Dict[str, Any]:
    return {
        "action": f"undo_{step_id}",
        "agent_type": "builtin.echo",
        "params": {"undo": step_id, **extra},
    }


def echo_step(step_id: str, compensate: bool = True, **params: Any) -> Dict[str, Any]:
    step: Dict[str, Any] = {
        "step_id": step_id,
        "action": f"do_{step_id}",
        "agent_type": "builtin.echo",
        "params": {"booking": f"B-{step_id}", **params},
    }
    if compensate:
        step["compensate"] = undo(step_id, booking="{{ this.output.booking }}")
    return step


def held_step(step_id: str, compensate: bool) -> Dict[str, Any]:
    """A step that runs far longer than any test: it ends only when it is told to stop."""
    step: Dict[str, Any] = {
        "step_id": step_id,
        "action": f"do_{step_id}",
        "agent_type": "builtin.sleep",
        "params": {"ms": 600_000},
    }
    if compensate:
        step["compensate"] = undo(step_id, had_output="{{ this.output }}")
    return step


def wait_until(
    c: Client, plan_id: str, ok: Callable[[PlanView], bool], what: str, timeout: float = BOUND
) -> PlanView:
    deadline = time.monotonic() + timeout
    while True:
        view = c.get_plan(plan_id)
        if ok(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"plan {plan_id}: {what} within {timeout} s; it is {view}")
        time.sleep(0.05)


def statuses(view: PlanView) -> Dict[str, str]:
    return {s["step_id"]: s["status"] for s in view.get("steps", [])}


def compensation(view: PlanView, step_id: str) -> Optional[Dict[str, Any]]:
    for s in view.get("steps", []):
        if s["step_id"] == step_id:
            comp = s.get("compensation")
            return dict(comp) if comp else None
    raise AssertionError(f"no step {step_id}")


def order(answer: RollbackAnswer) -> List[str]:
    return [c["step_id"] for c in answer["compensations"]]


def event_types(c: Client, plan_id: str) -> List[str]:
    return [e["type"] for e in c.list_events(plan_id, limit=1000).items]


def test_a_failing_plan_rolls_back(server: Server) -> None:
    plan = {
        "plan_id": "trip",
        "query": "A weekend in Lisbon",
        "on_failure": "rollback",
        "steps": [
            echo_step("flight"),
            echo_step("hotel"),
            echo_step("museum", compensate=False),
            {
                "step_id": "car",
                "action": "rent_car",
                "agent_type": "builtin.fail",
                "params": {"retryable": False, "message": "no car left at LIS"},
                "compensate": undo("car"),
            },
        ],
    }
    with Client(server.url, token=server.token) as c:
        c.create_plan(plan)
        c.start_plan("trip")
        view = c.wait_for_state("trip", "failed", timeout=BOUND)
        # The state may read failed before the rollback's end is folded in: wait for it.
        view = wait_until(
            c, "trip", lambda v: (v.get("rollback") or {}).get("status") == "completed",
            "rollback completed",
        )
        assert view["state"] == "failed"
        rb = view["rollback"]
        assert rb is not None
        assert rb["done"] == ["hotel", "flight"]
        assert rb["pending"] == []
        assert rb["then"] == "failed"
        assert statuses(view) == {
            "flight": "completed", "hotel": "completed", "museum": "completed", "car": "failed",
        }
        # Each compensation's record, with the output it answered (echo: its rendered params).
        for step_id in ("flight", "hotel"):
            comp = compensation(view, step_id)
            assert comp is not None and comp["status"] == "completed", comp
            assert comp["attempts"] == 1
            assert comp["output"] == {"undo": step_id, "booking": f"B-{step_id}"}
        # A step without compensate, and the failed step, are not compensated.
        assert compensation(view, "museum") is None
        assert compensation(view, "car") is None

        step = c.get_step("trip", "hotel")
        assert step["compensation"]["status"] == "completed"
        assert step["definition"]["compensate"]["action"] == "undo_hotel"
        snap = c.snapshot("trip")
        assert {s["step_id"]: (s.get("compensation") or {}).get("status") for s in snap["steps"]}[
            "flight"
        ] == "completed"

        kinds = event_types(c, "trip")
        assert kinds.count("rollback_started") == 1
        assert kinds.count("compensation_completed") == 2
        assert kinds.index("rollback_started") < kinds.index("rollback_completed")

        # Rolled back once: another rollback, dry run or not, is refused.
        with pytest.raises(ConflictError) as again:
            c.rollback_plan("trip", dry_run=True)
        assert again.value.code == "conflict"
        assert "rolled back" in again.value.message


def test_dry_run_then_rollback_of_a_cancelled_plan(server: Server) -> None:
    plan = {
        "plan_id": "cancelled",
        "query": "q",
        "steps": [
            echo_step("a"),
            echo_step("b"),
            echo_step("skipme"),
            held_step("held", compensate=False),
        ],
    }
    with Client(server.url, token=server.token) as c:
        c.create_plan(plan)
        c.skip_step("cancelled", "skipme")
        c.start_plan("cancelled")
        wait_until(c, "cancelled", lambda v: statuses(v)["held"] == "running", "held running")
        cancelled = c.cancel_plan("cancelled", reason="called off")
        assert cancelled["state"] == "cancelled"
        assert cancelled.get("rollback") is None

        before = c.get_plan("cancelled")
        events_before = event_types(c, "cancelled")
        dry = c.rollback_plan("cancelled", dry_run=True, reason="preview")
        assert dry["dry_run"] is True
        # Newest start first; the skipped step and the one without compensate are left out.
        assert dry["compensations"] == [
            {"step_id": "b", "action": "undo_b", "agent_type": "builtin.echo"},
            {"step_id": "a", "action": "undo_a", "agent_type": "builtin.echo"},
        ]
        assert dry["plan"]["state"] == "cancelled"
        # Nothing changed.
        after = c.get_plan("cancelled")
        assert after["version"] == before["version"]
        assert after["last_seq"] == before["last_seq"]
        assert after.get("rollback") is None
        assert all(s.get("compensation") is None for s in after["steps"])
        assert event_types(c, "cancelled") == events_before

        # Now for real: the same order, and the plan ends cancelled again.
        real = c.rollback_plan("cancelled", reason="undo it")
        assert real["dry_run"] is False
        assert order(real) == ["b", "a"]
        done = wait_until(
            c, "cancelled",
            lambda v: (v.get("rollback") or {}).get("status") == "completed"
            and v["state"] == "cancelled",
            "rolled back and cancelled",
        )
        assert done["rollback"] is not None and done["rollback"]["done"] == ["b", "a"]
        assert compensation(done, "skipme") is None

        # Not failed or cancelled: refused.
        c.create_plan({"plan_id": "idle", "query": "q", "steps": [echo_step("x")]})
        with pytest.raises(ConflictError):
            c.rollback_plan("idle", dry_run=True)


def test_cancel_with_rollback_while_a_step_is_held(server: Server) -> None:
    """Through the controller facade: the held step is told to stop, recorded with an unknown
    outcome, and compensated (seeing no output) before the step that ran before it."""
    plan = {
        "plan_id": "held",
        "query": "q",
        "steps": [echo_step("first"), held_step("held", compensate=True)],
    }

    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            client = controller.client
            await client.create_plan(plan)
            await client.start_plan("held")
            deadline = time.monotonic() + BOUND
            while statuses(await client.get_plan("held")).get("held") != "running":
                assert time.monotonic() < deadline, "held step never ran"
                await _sleep(0.05)

            # dry_run without rollback is refused; a dry run with it changes nothing.
            with pytest.raises(UnprocessableError):
                await client.cancel_plan("held", rollback=False, dry_run=True)
            preview = await controller.cancel_plan("held", rollback=True, dry_run=True)
            assert preview["dry_run"] is True
            assert order(preview) == ["held", "first"]
            assert preview["plan"]["state"] == "running"
            assert (await client.get_plan("held"))["state"] == "running"

            answer = await controller.cancel_plan("held", rollback=True, reason="stop")
            assert answer["dry_run"] is False
            assert order(answer) == ["held", "first"]

            view = await client.wait_for_state("held", "cancelled", timeout=BOUND)
            deadline = time.monotonic() + BOUND
            while (view.get("rollback") or {}).get("status") != "completed":
                assert time.monotonic() < deadline, f"rollback did not complete: {view}"
                await _sleep(0.05)
                view = await client.get_plan("held")
            assert view["state"] == "cancelled"
            rb = view["rollback"]
            assert rb is not None and rb["done"] == ["held", "first"] and rb["then"] == "cancelled"
            held = compensation(view, "held")
            assert held is not None and held["status"] == "completed"
            # The held step's outcome is unknown: its compensation saw no output.
            assert held["output"] == {"undo": "held", "had_output": None}
            assert statuses(view)["held"] != "completed"

    run(main())


async def _sleep(s: float) -> None:
    await asyncio.sleep(s)


def failing_compensation_plan(plan_id: str) -> Dict[str, Any]:
    """`b`'s compensation fails its first attempt, and has a single try per policy."""
    return {
        "plan_id": plan_id,
        "query": "q",
        "on_failure": "rollback",
        "steps": [
            echo_step("a"),
            {
                "step_id": "b",
                "action": "do_b",
                "agent_type": "builtin.echo",
                "params": {},
                "compensate": {
                    "action": "undo_b",
                    "agent_type": "builtin.fail",
                    "params": {"times": 1, "message": "undo refused"},
                    "retry": {"max_attempts": 1, "backoff_ms": 0},
                },
            },
            {
                "step_id": "boom",
                "action": "boom",
                "agent_type": "builtin.fail",
                "params": {"retryable": False},
            },
        ],
    }


@pytest.mark.parametrize("how", ["retry", "skip"])
def test_failed_compensation_retried_or_skipped(server: Server, how: str) -> None:
    plan_id = f"comp-{how}"

    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            client = controller.client
            await client.create_plan(failing_compensation_plan(plan_id))
            await client.start_plan(plan_id)
            deadline = time.monotonic() + BOUND
            view = await client.get_plan(plan_id)
            while (view.get("rollback") or {}).get("status") != "failed":
                assert time.monotonic() < deadline, f"rollback did not stop: {view}"
                await _sleep(0.05)
                view = await client.get_plan(plan_id)
            assert view["state"] == "failed"
            assert view["rollback"] is not None and view["rollback"]["pending"] == ["b", "a"]
            failed = compensation(view, "b")
            assert failed is not None and failed["status"] == "failed"
            assert "undo refused" in (failed.get("error") or "")

            if how == "retry":
                rec = await controller.retry_step(plan_id, "b", compensation=True, reason="again")
            else:
                rec = await controller.skip_step(
                    plan_id, "b", compensation=True, reason="undone by hand"
                )
            assert rec.status == "applied", rec

            deadline = time.monotonic() + BOUND
            view = await client.get_plan(plan_id)
            while (view.get("rollback") or {}).get("status") != "completed":
                assert time.monotonic() < deadline, f"rollback did not go on: {view}"
                await _sleep(0.05)
                view = await client.get_plan(plan_id)
            assert view["state"] == "failed"
            b = compensation(view, "b")
            a = compensation(view, "a")
            assert b is not None and a is not None
            assert b["status"] == ("completed" if how == "retry" else "skipped")
            assert a["status"] == "completed"

    run(main())
