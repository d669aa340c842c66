"""The prototype's six usage examples, run against a cairn server, one after the other.

    cairn token create --user admin@veritas.com --role admin --db demo.db   # prints TOKEN
    cairn serve --db demo.db &
    CAIRN_TOKEN=TOKEN python examples/prototype_examples.py http://127.0.0.1:8080

Each plan gets a fresh id (`research_001-<suffix>`), so the script can run again on the same
server. Its agent types (registry, environmental, social, quality) have no executor on the
server: cairn queues their steps, and the controller serves them with `my_executor`.
"""

import asyncio
import json
import os
import sys
import tempfile
import uuid

from cairn import OrchestrationController

SUFFIX = uuid.uuid4().hex[:6]


def research_plan(plan_id):
    return {
        "plan_id": plan_id,
        "query": "Market analysis",
        "steps": [
            {"step_id": "step_1", "action": "search", "agent_type": "registry"},
            {"step_id": "step_2", "action": "analyze", "agent_type": "environmental"},
            {"step_id": "step_3", "action": "synthesize", "agent_type": "social"},
        ],
    }


async def my_executor(step):
    # A real executor would call an agent here.
    await asyncio.sleep(0.2)
    return {"summary": f"{step['action']} done", "attempt": step["attempt"]}


async def example_1(controller):
    plan = research_plan(f"research_001-{SUFFIX}")
    controller.register_plan(plan["plan_id"], plan)
    result = await controller.execute_plan_async(plan["plan_id"], my_executor)
    print(f"1. {plan['plan_id']}: {result['state']}, completed {result['completed_steps']}")


async def example_2(controller):
    plan_id = f"research_002-{SUFFIX}"
    controller.register_plan(plan_id, research_plan(plan_id))
    execution_task = asyncio.create_task(controller.execute_plan_async(plan_id, my_executor))
    await asyncio.sleep(0.1)  # step_1 is running
    await controller.pause_plan(plan_id)
    print("2. Plan paused - time for coffee ☕")
    await asyncio.sleep(0.5)  # step_1 finishes; step_2 does not start
    state = controller.get_state(plan_id)
    print(f"   Completed {len(state['completed_steps'])} of {state['total_steps']} steps")
    await controller.resume_plan(plan_id)
    result = await execution_task
    print(f"   resumed: {result['state']}, completed {result['completed_steps']}")


async def example_3(controller):
    plan_id = f"research_003-{SUFFIX}"
    controller.register_plan(plan_id, research_plan(plan_id))
    await controller.skip_step(plan_id=plan_id, step_id="step_2", user="admin@veritas.com")
    validation_step = {
        "step_id": "validation_1",
        "action": "validate_results",
        "agent_type": "quality",
    }
    await controller.add_step(
        plan_id=plan_id, step=validation_step, insert_after="step_1", user="admin@veritas.com"
    )
    print(f"3. after add: {controller.get_state(plan_id)['total_steps']} steps")
    await controller.remove_step(plan_id=plan_id, step_id="step_3", user="admin@veritas.com")
    print(f"   after remove: {controller.get_state(plan_id)['total_steps']} steps")
    for i in controller.get_snapshot(plan_id).interventions:
        print(f"   {i.intervention_type} {i.step_id} by {i.user}: {i.status}")


async def example_4(controller):
    plan_id = f"research_004-{SUFFIX}"
    plan = research_plan(plan_id)
    plan["steps"] = plan["steps"][:2]
    controller.register_plan(plan_id, plan)
    await controller.execute_plan_async(plan_id, my_executor)
    checkpoints = controller.checkpoints[plan_id]
    print(f"4. {len(checkpoints)} checkpoints: {[(c.checkpoint_id, c.trigger) for c in checkpoints]}")
    last_checkpoint = checkpoints[-1]
    await controller.restore_from_checkpoint(
        plan_id=plan_id, checkpoint_id=last_checkpoint.checkpoint_id
    )
    state = controller.get_state(plan_id)
    print(f"   restored to {last_checkpoint.checkpoint_id}: {state['state']} ({state['pause_reason']})")
    await controller.resume_plan(plan_id)
    final = await controller.client.wait_for_state(plan_id, "completed", timeout=30)
    print(f"   resumed: {final['state']}")


async def example_5(controller, directory):
    plan_id = f"research_001-{SUFFIX}"
    snapshot = controller.get_snapshot(plan_id)
    snapshot_json = json.dumps(snapshot.to_dict(), indent=2)
    path = os.path.join(directory, f"{plan_id}_{snapshot.snapshot_id}.json")
    with open(path, "w") as f:
        f.write(snapshot_json)
    print("5. Snapshot captured:")
    print(f"  State: {snapshot.orchestration_state}")
    print(f"  Progress: {len(snapshot.completed_steps)}/{len(snapshot.plan['steps'])}")
    print(f"  Interventions: {len(snapshot.interventions)}")
    print(f"  Saved: {os.path.basename(path)} ({len(snapshot_json)} bytes)")


async def example_6(controller):
    async def on_state_change(plan_id, old_state, new_state):
        print(f"   Plan {plan_id}: {old_state} → {new_state.value}")

    async def on_checkpoint(checkpoint):
        print(f"   Checkpoint created: {checkpoint.checkpoint_id}")

    async def on_intervention(intervention):
        print(f"   Intervention by {intervention.user}: {intervention.intervention_type}")

    controller.on_state_change = on_state_change
    controller.on_checkpoint = on_checkpoint
    controller.on_intervention = on_intervention
    print("6. callbacks:")
    plan_id = f"research_006-{SUFFIX}"
    controller.register_plan(plan_id, research_plan(plan_id))
    await controller.skip_step(plan_id, "step_3", user="admin@veritas.com")
    await controller.execute_plan_async(plan_id, my_executor)


async def main():
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    async with OrchestrationController(url, token=os.environ.get("CAIRN_TOKEN")) as controller:
        await example_1(controller)
        await example_2(controller)
        await example_3(controller)
        await example_4(controller)
        with tempfile.TemporaryDirectory() as directory:
            await example_5(controller, directory)
        await example_6(controller)


if __name__ == "__main__":
    asyncio.run(main())
