"""The prototype's six usage examples, run against a real `cairn serve`.

Each example's code is the prototype's, with two changes: the import (`from cairn import
OrchestrationController`) and the controller's construction (the server's URL and a token).
Around it, the test asserts what the prototype's report says the example does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import httpx

from cairn import OrchestrationController, OrchestrationState
from conftest import USER, Server

#: Every wait in these tests is bounded by this (seconds).
BOUND = 60.0


def research_plan() -> Dict[str, Any]:
    return {
        "plan_id": "research_001",
        "query": "Market analysis",
        "steps": [
            {"step_id": "step_1", "action": "search", "agent_type": "registry"},
            {"step_id": "step_2", "action": "analyze", "agent_type": "environmental"},
            {"step_id": "step_3", "action": "synthesize", "agent_type": "social"},
        ],
    }


class Agent:
    """A stand-in for the prototype's `agent.execute_step`: records the steps it ran."""

    def __init__(self) -> None:
        self.ran: List[Dict[str, Any]] = []

    async def execute_step(self, step: Dict[str, Any]) -> Dict[str, Any]:
        self.ran.append(step)
        return {"result": f"{step['action']} done", "step": step["step_id"]}


class Latch:
    """Holds an executor inside a step until the test opens it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await asyncio.wait_for(self.open.wait(), BOUND)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, BOUND * 2))


async def events_until(server: Server, plan_id: str, kind: str) -> List[Dict[str, Any]]:
    """The plan's events up to the first of type `kind` (bounded)."""
    seen: List[Dict[str, Any]] = []
    async with OrchestrationController(server.url, token=server.token) as c:

        async def read() -> None:
            async for e in c.client.stream_events(plan_id, follow=True):
                seen.append(dict(e))
                if e["type"] == kind:
                    return

        await asyncio.wait_for(read(), BOUND)
    return seen


def test_example_1_basic_orchestration(server: Server) -> None:
    async def main() -> None:
        # Create controller
        controller = OrchestrationController(server.url, token=server.token)

        # Register plan
        plan = {
            "plan_id": "research_001",
            "query": "Market analysis",
            "steps": [
                {"step_id": "step_1", "action": "search", "agent_type": "registry"},
                {"step_id": "step_2", "action": "analyze", "agent_type": "environmental"},
                {"step_id": "step_3", "action": "synthesize", "agent_type": "social"},
            ],
        }

        controller.register_plan(plan["plan_id"], plan)

        agent = Agent()

        # Execute with custom executor
        async def my_executor(step):  # type: ignore[no-untyped-def]
            # Execute step logic
            result = await agent.execute_step(step)
            return result

        result = await controller.execute_plan_async(plan["plan_id"], my_executor)

        assert result["state"] == "completed"
        assert result["completed_steps"] == ["step_1", "step_2", "step_3"]
        assert [s["step_id"] for s in agent.ran] == ["step_1", "step_2", "step_3"]
        assert [s["action"] for s in agent.ran] == ["search", "analyze", "synthesize"]
        assert agent.ran[0]["idempotency_key"] == "research_001/step_1/1"
        snapshot = controller.get_snapshot("research_001")
        outputs = {s["step_id"]: s["output"] for s in snapshot.steps}
        assert outputs["step_2"] == {"result": "analyze done", "step": "step_2"}
        await controller.aclose()

    run(main())


def test_example_2_pause_and_resume(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        plan = research_plan()
        plan_id = plan["plan_id"]
        controller.register_plan(plan_id, plan)
        latch = Latch()
        ran: List[str] = []

        async def executor(step: Dict[str, Any]) -> Dict[str, Any]:
            ran.append(step["step_id"])
            if step["step_id"] == "step_1":
                await latch.hold()
            return {"ok": step["step_id"]}

        # Start execution in background
        execution_task = asyncio.create_task(
            controller.execute_plan_async(plan_id, executor)
        )

        # ... some time later ...
        await asyncio.wait_for(latch.entered.wait(), BOUND)

        # Pause execution
        await controller.pause_plan(plan_id)
        print("Plan paused - time for coffee ☕")

        # The step already running finishes; no step starts after the pause.
        latch.open.set()
        await events_until(server, plan_id, "plan_drained")

        # Check state
        state = controller.get_state(plan_id)
        print(f"Completed {state['completed_steps']} of {state['total_steps']} steps")
        assert state["state"] == "paused"
        assert state["pause_reason"] == "operator"
        assert state["completed_steps"] == ["step_1"]
        assert state["total_steps"] == 3
        assert ran == ["step_1"], "pause must block the next step"
        assert not execution_task.done(), "execution waits while the plan is paused"

        # Resume when ready
        await controller.resume_plan(plan_id)

        # Wait for completion
        result = await execution_task
        assert result["state"] == "completed"
        assert len(result["completed_steps"]) == 3
        assert ran == ["step_1", "step_2", "step_3"]
        await controller.aclose()

    run(main())


def test_example_3_manual_interventions(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        controller.register_plan("research_001", research_plan())

        # Skip a problematic step
        await controller.skip_step(
            plan_id="research_001",
            step_id="step_2",
            user="admin@veritas.com"
        )

        # Add emergency validation step
        validation_step = {
            "step_id": "validation_1",
            "action": "validate_results",
            "agent_type": "quality"
        }

        await controller.add_step(
            plan_id="research_001",
            step=validation_step,
            insert_after="step_1",
            user="admin@veritas.com"
        )
        assert controller.get_state("research_001")["total_steps"] == 4

        # Remove redundant step
        await controller.remove_step(
            plan_id="research_001",
            step_id="step_3",
            user="admin@veritas.com"
        )
        state = controller.get_state("research_001")
        assert state["total_steps"] == 3
        assert [s["step_id"] for s in state["steps"]] == ["step_1", "validation_1", "step_2"]
        assert state["skipped_steps"] == ["step_2"]

        snapshot = controller.get_snapshot("research_001")
        assert len(snapshot.interventions) == 3
        assert [str(i.intervention_type) for i in snapshot.interventions] == [
            "skip_step",
            "add_step",
            "remove_step",
        ]
        assert all(i.user == USER for i in snapshot.interventions)
        assert all(i.status == "applied" for i in snapshot.interventions)

        # The plan runs what the interventions left: step_1, then validation_1.
        ran: List[str] = []

        def executor(step: Dict[str, Any]) -> Dict[str, Any]:  # a plain function works too
            ran.append(step["step_id"])
            return {"validated": step["step_id"] == "validation_1"}

        result = await controller.execute_plan_async("research_001", executor)
        assert result["state"] == "completed"
        assert ran == ["step_1", "validation_1"]
        assert result["skipped_steps"] == ["step_2"]
        await controller.aclose()

    run(main())


def test_example_4_checkpoint_recovery(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        plan_id = "cp_plan"
        controller.register_plan(
            plan_id,
            {
                "query": "two steps",
                "steps": [
                    {"step_id": "step_1", "action": "search", "agent_type": "registry"},
                    {"step_id": "step_2", "action": "analyze", "agent_type": "environmental"},
                ],
            },
        )
        calls: List[str] = []

        async def executor(step: Dict[str, Any]) -> Dict[str, Any]:
            calls.append(step["step_id"])
            return {"n": len(calls)}

        # Execute plan with auto-checkpointing
        result = await controller.execute_plan_async(plan_id, executor)
        assert result["state"] == "completed"

        # If something goes wrong, restore from checkpoint
        checkpoints = controller.checkpoints[plan_id]
        assert len(checkpoints) == 3, "a 2-step plan run to the end has 3 checkpoints"
        assert [c.trigger for c in checkpoints] == ["initial", "step", "step"]

        # Restore to last good checkpoint
        last_checkpoint = checkpoints[-1]
        await controller.restore_from_checkpoint(
            plan_id=plan_id,
            checkpoint_id=last_checkpoint.checkpoint_id
        )
        state = controller.get_state(plan_id)
        assert (state["state"], state["pause_reason"]) == ("paused", "restored")
        assert state["completed_steps"] == ["step_1", "step_2"]

        # Resume execution from restored point
        await controller.resume_plan(plan_id)
        done = await controller.client.wait_for_state(plan_id, "completed", timeout=BOUND)
        assert done["completed_steps"] == ["step_1", "step_2"]
        assert calls == ["step_1", "step_2"], "nothing completed runs again"

        # State recovery to an earlier checkpoint: after step_1, step_2 runs again.
        after_step_1 = checkpoints[1]
        detail = await controller.get_checkpoint(plan_id, after_step_1.checkpoint_id)
        assert detail.completed_steps == ["step_1"]
        assert detail.context == {"step_1": {"n": 1}}
        await controller.restore_from_checkpoint(plan_id, after_step_1.checkpoint_id)
        state = controller.get_state(plan_id)
        assert state["completed_steps"] == ["step_1"]
        assert [s["status"] for s in state["steps"]] == ["completed", "pending"]
        execution = asyncio.create_task(controller.execute_plan_async(plan_id, executor))
        await controller.resume_plan(plan_id)
        result = await execution
        assert result["state"] == "completed"
        assert calls == ["step_1", "step_2", "step_2"]
        # History is never erased: the earlier checkpoints are still listed.
        assert len(controller.checkpoints[plan_id]) > 3
        await controller.aclose()

    run(main())


def test_example_5_complete_state_snapshot(server: Server, tmp_path: Path) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        plan_id = "research_001"
        controller.register_plan(plan_id, research_plan())
        await controller.skip_step(plan_id, "step_3", user=USER, reason="not needed")
        await controller.execute_plan_async(plan_id, Agent().execute_step)
        (tmp_path / "snapshots").mkdir()

        # Create snapshot for audit/debugging
        snapshot = controller.get_snapshot(plan_id)

        # Export to JSON
        snapshot_json = json.dumps(snapshot.to_dict(), indent=2)

        # Save for later analysis
        with open(tmp_path / f"snapshots/{plan_id}_{snapshot.snapshot_id}.json", 'w') as f:
            f.write(snapshot_json)

        print(f"Snapshot captured:")
        print(f"  State: {snapshot.orchestration_state}")
        print(f"  Progress: {len(snapshot.completed_steps)}/{len(snapshot.plan['steps'])}")
        print(f"  Interventions: {len(snapshot.interventions)}")

        assert snapshot.orchestration_state == OrchestrationState.COMPLETED
        assert f"{snapshot.orchestration_state}" == "completed"
        assert snapshot.completed_steps == ["step_1", "step_2"]
        assert snapshot.skipped_steps == ["step_3"]
        assert len(snapshot.plan["steps"]) == 3
        assert len(snapshot.interventions) == 1
        assert snapshot.interventions[0].reason == "not needed"
        assert "initial" in [c.trigger for c in snapshot.checkpoints]
        assert len(snapshot.checkpoints) == len(controller.checkpoints[plan_id])
        saved = json.loads((tmp_path / f"snapshots/{plan_id}_{snapshot.snapshot_id}.json").read_text())
        assert saved["state"] == "completed"
        assert saved["orchestration_state"] == "completed"
        assert saved["plan"]["steps"][0]["step_id"] == "step_1"
        assert saved["interventions"][0]["user"] == USER
        assert {s["step_id"]: s["status"] for s in saved["steps"]} == {
            "step_1": "completed",
            "step_2": "completed",
            "step_3": "skipped",
        }
        await controller.aclose()

    run(main())


def test_example_6_callbacks_for_monitoring(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        changes: List[Tuple[str, Any, str]] = []
        created: List[str] = []
        interventions: List[Tuple[str, str]] = []

        async def on_state_change(plan_id, old_state, new_state):  # type: ignore[no-untyped-def]
            print(f"Plan {plan_id}: {old_state} → {new_state.value}")
            # Send notification, log to database, etc.
            changes.append((plan_id, old_state, new_state.value))

        async def on_checkpoint(checkpoint):  # type: ignore[no-untyped-def]
            print(f"Checkpoint created: {checkpoint.checkpoint_id}")
            # Backup to cloud, trigger monitoring alert, etc.
            created.append(checkpoint.checkpoint_id)

        async def on_intervention(intervention):  # type: ignore[no-untyped-def]
            print(f"Intervention by {intervention.user}: {intervention.intervention_type}")
            # Log to audit trail, notify stakeholders, etc.
            interventions.append((intervention.user, str(intervention.intervention_type)))

        # Register callbacks
        controller.on_state_change = on_state_change
        controller.on_checkpoint = on_checkpoint
        controller.on_intervention = on_intervention

        controller.register_plan("research_001", research_plan())
        await controller.skip_step("research_001", "step_2", user=USER)
        result = await controller.execute_plan_async("research_001", Agent().execute_step)
        assert result["state"] == "completed"

        # execute_plan_async returns once the callbacks have seen the plan's whole log.
        assert changes == [
            ("research_001", OrchestrationState.IDLE, "running"),
            ("research_001", OrchestrationState.RUNNING, "completed"),
        ]
        assert created == [c.checkpoint_id for c in controller.checkpoints["research_001"]]
        assert len(created) >= 3  # started, and after each of the two steps that ran
        assert interventions == [(USER, "skip_step")]
        await controller.aclose()

    run(main())


def test_cancellation(server: Server) -> None:
    async def main() -> None:
        controller = OrchestrationController(server.url, token=server.token)
        plan = research_plan()
        controller.register_plan(plan["plan_id"], plan)
        latch = Latch()
        stopped = asyncio.Event()

        async def executor(step: Dict[str, Any]) -> Dict[str, Any]:
            try:
                await latch.hold()
            except asyncio.CancelledError:
                stopped.set()
                raise
            return {}

        # Start execution
        execution_task = asyncio.create_task(
            controller.execute_plan_async(plan["plan_id"], executor)
        )
        await asyncio.wait_for(latch.entered.wait(), BOUND)

        # Cancel mid-execution
        state = await controller.cancel_plan(plan["plan_id"], reason="no longer needed")
        assert state["state"] == "cancelled"

        # Graceful termination: execution returns, the running step is told to stop.
        result = await asyncio.wait_for(execution_task, BOUND)
        assert result["state"] == "cancelled"
        await asyncio.wait_for(stopped.wait(), BOUND)
        assert result["completed_steps"] == []

        # A cancelled plan is terminal.
        try:
            await controller.resume_plan(plan["plan_id"])
        except Exception as e:  # noqa: BLE001
            assert getattr(e, "status", None) == 409
            assert getattr(e, "code", None) == "conflict"
        else:
            raise AssertionError("resume of a cancelled plan must be refused")
        await controller.aclose()

    run(main())


def test_the_server_is_real(server: Server) -> None:
    """The plan the examples make is the server's: the CLI-facing API sees it."""
    async def main() -> None:
        async with OrchestrationController(server.url, token=server.token) as controller:
            controller.register_plan("research_001", research_plan())
    run(main())
    r = httpx.get(
        f"{server.url}/v1/plans/research_001",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["state"] == "idle"
