"""Failures: an executor that raises, a worker killed mid-step, the server killed and restarted
under a running plan and its callbacks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from cairn import OrchestrationController, OrchestrationState, StepFailed
from conftest import Server
from test_examples import BOUND, Latch, run


def test_executor_that_raises_is_retried_by_policy_then_fails(server: Server) -> None:
    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            retry = {"max_attempts": 3, "backoff_ms": 10, "backoff_factor": 1.0}
            controller.register_plan(
                "flaky",
                {"steps": [{"step_id": "s", "action": "a", "agent_type": "flaky", "retry": retry}]},
            )
            attempts: List[int] = []

            async def flaky(step: Dict[str, Any]) -> Dict[str, Any]:
                attempts.append(step["attempt"])
                if len(attempts) < 3:
                    raise RuntimeError(f"upstream timeout #{len(attempts)}")
                return {"ok": True}

            result = await controller.execute_plan_async("flaky", flaky)
            assert result["state"] == "completed"
            assert attempts == [1, 2, 3]
            step = await controller.client.get_step("flaky", "s")
            assert [a["outcome"] for a in step["attempts"]][:2] == ["failed", "failed"]
            assert "RuntimeError: upstream timeout #1" in str(step["attempts"][0].get("error"))

            controller.register_plan(
                "broken",
                {"steps": [{"step_id": "s", "action": "a", "agent_type": "broken", "retry": retry},
                           {"step_id": "t", "action": "b", "agent_type": "broken"}]},
            )
            calls: List[str] = []

            def broken(step: Dict[str, Any]) -> None:
                calls.append(step["step_id"])
                raise ValueError("bad input")

            result = await controller.execute_plan_async("broken", broken)
            assert result["state"] == "failed"
            assert result["failed_steps"] == ["s"]
            assert calls == ["s", "s", "s"], "retried by the step's policy, then failed"
            assert result["steps"][0]["attempts"] == 3
            assert "ValueError: bad input" in (result["steps"][0]["error"] or "")

            # StepFailed(retryable=False) fails for good, whatever the policy.
            controller.register_plan(
                "final",
                {"steps": [{"step_id": "s", "action": "a", "agent_type": "final", "retry": retry}]},
            )

            def final(step: Dict[str, Any]) -> None:
                raise StepFailed("the source is gone", retryable=False)

            result = await controller.execute_plan_async("final", final)
            assert result["state"] == "failed"
            assert result["steps"][0]["attempts"] == 1
            assert result["steps"][0]["error"] == "the source is gone"

    run(main())


def test_worker_killed_mid_step_is_retried_with_the_same_idempotency_key(
    server: Server, tmp_path: Path
) -> None:
    retry = {"max_attempts": 3, "backoff_ms": 10}

    async def register() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            controller.register_plan(
                "killed",
                {"steps": [{"step_id": "s1", "action": "fetch", "agent_type": "fragile", "retry": retry}]},
            )
            await controller.client.start_plan("killed")

    run(register())

    # A worker process claims the step and is killed while it works on it.
    out = tmp_path / "claimed.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "hold_worker.py"), server.url, server.token,
         "fragile", str(out)],
        env=env,
    )
    try:
        deadline = time.monotonic() + BOUND
        while not out.exists():
            assert worker.poll() is None, "the worker process exited"
            assert time.monotonic() < deadline, "the worker never got the task"
            time.sleep(0.05)
        first = json.loads(out.read_text())
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
    assert first["attempt"] == 1

    async def finish() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            seen: List[Dict[str, Any]] = []

            async def executor(step: Dict[str, Any]) -> Dict[str, Any]:
                seen.append(step)
                return {"fetched": True}

            # The lease runs out (the server's --worker-lease-ms), the attempt is failed
            # retryably and queued again, and this controller serves the retry.
            result = await controller.execute_plan_async("killed", executor)
            assert result["state"] == "completed"
            assert len(seen) == 1
            assert seen[0]["attempt"] == 2
            assert seen[0]["idempotency_key"] == first["idempotency_key"] == "killed/s1/1"
            step = await controller.client.get_step("killed", "s1")
            attempts = step["attempts"]
            assert [a["attempt"] for a in attempts] == [1, 2]
            assert attempts[0]["worker_id"] == "doomed-worker"
            assert "lease expired" in (attempts[0].get("error") or "")
            assert attempts[1]["outcome"] == "completed"
            assert {a["idempotency_key"] for a in attempts} == {"killed/s1/1"}

    run(finish())


def test_callbacks_continue_after_the_server_restarts(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        changes: List[Tuple[Any, str]] = []
        checkpoints: List[str] = []
        controller.on_state_change = lambda plan_id, old, new: changes.append((old, new.value))
        controller.on_checkpoint = lambda cp: checkpoints.append(cp.checkpoint_id)

        controller.register_plan(
            "restart",
            {"steps": [
                {"step_id": "s1", "action": "a", "agent_type": "survivor"},
                {"step_id": "s2", "action": "b", "agent_type": "survivor"},
                {"step_id": "s3", "action": "c", "agent_type": "survivor"},
            ]},
        )
        latch = Latch()
        keys: List[str] = []

        async def executor(step: Dict[str, Any]) -> Dict[str, Any]:
            keys.append(step["idempotency_key"])
            if step["step_id"] == "s2":
                await latch.hold()
            return {"step": step["step_id"]}

        execution = asyncio.create_task(controller.execute_plan_async("restart", executor))
        await asyncio.wait_for(latch.entered.wait(), BOUND)

        # The server crashes while s2 runs, and comes back on the same database and port.
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        latch.open.set()

        result = await asyncio.wait_for(execution, BOUND)
        assert result["state"] == "completed"
        assert result["completed_steps"] == ["s1", "s2", "s3"]
        # s2 was running at the crash: it ran again, with the same idempotency key.
        assert keys.count("restart/s2/1") == 2
        assert keys.count("restart/s1/1") == 1

        # The callbacks saw everything, in order, across the restart: nothing skipped or doubled.
        assert changes == [
            (OrchestrationState.IDLE, "running"),
            (OrchestrationState.RUNNING, "completed"),
        ]
        listed = [c.checkpoint_id for c in controller.checkpoints["restart"]]
        assert checkpoints == listed
        assert len(listed) >= 4
        await controller.aclose()

    run(main())


def test_two_controllers_sharing_an_agent_type_each_serve_their_own_plan(server: Server) -> None:
    """Each controller asks the server only for its plan's tasks (`plan_ids`), so two programs
    whose plans use the same agent types never take each other's steps."""

    async def main() -> None:
        steps = [{"step_id": f"s{i}", "action": "work", "agent_type": "shared",
                  "depends_on": []} for i in range(6)]
        seen: Dict[str, List[str]] = {"left": [], "right": []}

        def executor(name: str) -> Any:
            async def run_step(step: Dict[str, Any]) -> Dict[str, Any]:
                seen[name].append(step["plan_id"])
                await asyncio.sleep(0.01)
                return {"by": name}
            return run_step

        async with OrchestrationController(server.url, token=server.token) as left, \
                OrchestrationController(server.url, token=server.token) as right:
            left.register_plan("left", {"steps": steps})
            right.register_plan("right", {"steps": steps})
            results = await asyncio.gather(
                left.execute_plan_async("left", executor("left")),
                right.execute_plan_async("right", executor("right")),
            )
            assert [r["state"] for r in results] == ["completed", "completed"]
            assert seen["left"] == ["left"] * 6
            assert seen["right"] == ["right"] * 6

    run(main())
